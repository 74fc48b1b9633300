"""Tests for featcache.cli: every command, exit codes, output, real processes."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from featcache.cache import FeatureCache
from featcache.cli import SUBCOMMANDS, build_parser
from featcache.cli import main as cli_main
from featcache.probe.report import PLOTS

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from cache_writer_proc import CONFIG, FINGERPRINT  # noqa: E402

from cache_helpers import (  # noqa: E402
    ROOT,
    _fill,
    _flip_feature_bytes,
    _ns,
    _shard_paths,
)


def test_cli_commands(tmp_path, capsys):
    cache = FeatureCache(tmp_path / "c")
    _fill(cache.namespace(FINGERPRINT, CONFIG), range(100), commit_rows=30)
    d = str(cache.path)
    assert cli_main(["info", d]) == 0
    out = capsys.readouterr().out
    assert "synthetic" in out and "rows      97" in out and "failures  3" in out
    assert cli_main(["info", d, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["namespaces"][0]["rows"] == 97
    assert cli_main(["verify", d]) == 0 and "ok: 4 shard(s)" in capsys.readouterr().out
    assert cli_main(["compact", d]) == 0 and "4 -> 1 shard(s)" in capsys.readouterr().out
    assert cli_main(["export", d, str(tmp_path / "e.npz")]) == 0
    assert np.load(tmp_path / "e.npz")["features"].shape == (97, 16)
    assert cli_main(["info", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert "no featcache.json" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        cli_main(["export", d])
    assert e.value.code == 2


def test_cli_in_a_real_process(tmp_path):
    ns = _ns(tmp_path)
    _fill(ns, range(1, 61), commit_rows=30, fail_every=0)
    _flip_feature_bytes(_shard_paths(ns)[0])
    run = [sys.executable, "-m", "featcache.cli", "verify", str(ns.cache.path)]
    out = subprocess.run(run, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert str(_shard_paths(ns)[0]) in out.stdout and "checksum mismatch" in out.stdout
    assert "Traceback" not in out.stderr


def test_cli_extract_exit_codes_and_summary(xray_pngs, tmp_path, capsys):
    paths, _ = xray_pngs
    folder = Path(paths[0]).parent
    assert cli_main(["extract", str(folder), "--cache", str(tmp_path / "c"), "--image-size", "32",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "60 inputs: 60 computed, 0 from cache, 0 failed" in out
    (folder / "zzz_broken.png").write_text("text")
    code = cli_main(["extract", str(folder), "--cache", str(tmp_path / "c"), "--image-size", "32",
                 "--quiet", "--on-error", "skip"])
    captured = capsys.readouterr()
    assert code == 1 and "61 inputs: 0 computed, 60 from cache, 1 failed" in captured.out
    assert "1 input(s) failed" in captured.err and "zzz_broken.png" in captured.err
    assert cli_main(["extract", str(tmp_path / "nothing"), "--cache", str(tmp_path / "c")]) == 1
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        cli_main(["extract", str(folder)])
    assert usage.value.code == 2


def test_cli_extract_rehash_reads_every_input(xray_pngs, tmp_path, capsys):
    """--rehash (verify_inputs="hash") keys files by their bytes, not by what the memo says."""
    from featcache.inputs import keys
    from featcache.cache.identity import identity_of
    from featcache.cache.keymemo import KeyMemo

    paths, _ = xray_pngs
    cache = tmp_path / "c"
    args = ["extract", *paths[:4], "--cache", str(cache), "--image-size", "32", "--quiet"]
    assert cli_main(args) == 0
    capsys.readouterr()
    identity = identity_of(Path(paths[0]).resolve(), os.stat(paths[0]))
    real = keys.FILE_KEY_MEMO[identity]
    for memo in (keys.FILE_KEY_MEMO, FeatureCache(cache).key_memo()):
        memo[identity] = b"\x05" * 16  # a stale entry: the file's bytes are not that key's
    assert cli_main(args + ["--rehash"]) == 0
    assert "4 inputs: 0 computed, 4 from cache, 0 failed" in capsys.readouterr().out
    assert keys.FILE_KEY_MEMO[identity] == real and KeyMemo(cache).get(identity) == real


@pytest.mark.parametrize("args, code, words", [
    (["--batch-size", "0"], 2, "--batch-size must be an int in the range [1, inf)"),
    (["--workers", "-1"], 2, "--workers must be an int in the range [0, inf)"),
    (["--image-size", "0"], 2, "--image-size must be an int in the range [8, inf)"),
    (["--image-size", "4"], 2, "--image-size must be an int in the range [8, inf)"),
    (["--commit-seconds", "nan"], 2, "--commit-seconds must be a float"),
    (["--device", "gpu"], 2, "--device must be 'auto', 'cpu'"),
    (["--window", "nan,400"], 1, "--window 'nan,400': expected CENTER,WIDTH"),
    (["--window", "40"], 1, "--window '40': expected CENTER,WIDTH"),
    (["--shard", "3/2"], 1, "--shard '3/2'"),
])
def test_cli_refuses_what_the_api_refuses_in_one_line(tmp_path, capsys, args, code, words):
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 16, 16), np.uint8))
    assert cli_main(["extract", str(tmp_path / "d.npz"), "--cache", str(tmp_path / "c"),
                     "--quiet", *args]) == code
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").glob("*/shards/*.h5"))


@pytest.mark.parametrize("content, words", [
    (b"PK\x03\x04 not a zip", "cannot read"),
    (None, "has shape (5,)"),
])
def test_cli_names_a_malformed_npz_without_a_traceback(tmp_path, content, words):
    path = tmp_path / "d.npz"
    if content is None:
        np.savez(path, images=np.zeros(5))
    else:
        path.write_bytes(content)
    run = subprocess.run([sys.executable, "-m", "featcache.cli", "extract", str(path), "--cache",
                          str(tmp_path / "c"), "--quiet"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 1 and words in run.stderr and "Traceback" not in run.stderr


# ---------------------------------------------------------------- output piped into `head`
@pytest.mark.parametrize("command, code", [
    (["info", "{cache}"], 141), (["models"], 141), (["info", "{cache}", "--json"], 141),
    (["--help"], 0),     # argparse itself ignores write errors of its help text
])
def test_a_reader_that_went_away_gives_no_traceback(tmp_path, command, code):
    """`featcache info DIR | head -1`: the pipe's reader is gone before the output is written.

    The read end is closed before the process starts, so every write fails (no race).
    """
    cache = FeatureCache(tmp_path / "c")
    _fill(cache.namespace(FINGERPRINT, CONFIG), range(10))
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "featcache.cli",
                               *(c.format(cache=cache.path) for c in command)],
                              stdout=write, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                              timeout=300)
    finally:
        os.close(write)
    assert done.stderr == "" and done.returncode == code, done.stderr


# ---------------------------------------------------------------- help, docs, --json
def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["extract", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for words in ("(default: 64)", "(default: efficientnet_lite0)", "(default: avg)",
                  "(default: 0/1)", "(default: raise)", "(default: 30.0)"):
        assert words in out, words
    assert "(default: None)" not in out and "(default: False)" not in out
    with pytest.raises(SystemExit):
        cli_main(["probe", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: auto)" in out and "(default: 5)" in out and "--dataset NAME" in out


def test_docs_list_every_command():
    text = (ROOT / "docs" / "cli.md").read_text("utf-8")
    table = text[text.index("| command | does |"):text.index("## Exit status")]
    names = [add.__name__.removeprefix("add_") for add in SUBCOMMANDS]
    assert "probe" in names and "export" in names
    for name in names:
        assert f"[`{name}`](#featcache-{name})" in table, name
        assert f"## featcache {name}" in text, name


def test_every_result_printing_command_has_json(tmp_path, capsys):
    cache = FeatureCache(tmp_path / "c")
    _fill(cache.namespace(FINGERPRINT, CONFIG), range(100), commit_rows=30)
    d = str(cache.path)
    assert cli_main(["verify", d, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"path": d, "ok": True, "shards_checked": 4,
                                                   "problems": [], "notes": []}
    assert cli_main(["compact", d, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["shards_before"] == 4 and stats["shards_after"] == 1 and stats["rows"] == 97
    assert cli_main(["export", d, str(tmp_path / "e.h5"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 97
    assert cli_main(["models", "--json"]) == 0
    models = json.loads(capsys.readouterr().out)["featcache"]
    assert any(m["name"] == "efficientnet_lite0" and m["image_size"] == 224 for m in models)
    _fill(cache.namespace(FINGERPRINT, CONFIG), range(100, 101))
    cache.compact()
    damaged = sorted((cache.path / FINGERPRINT / "shards").glob("*.h5"))[0]
    _flip_feature_bytes(damaged)
    assert cli_main(["verify", d, "--json"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["ok"] is False and str(damaged) in report["problems"][0]
    assert "1 problem(s)" in captured.err


# ---------------------------------------------------------------- probe
def _probe_cache(tmp_path, split=True, datasets=False, group_size=4):
    rng = np.random.default_rng(0)
    y = np.tile([0, 1], 40)
    X = rng.normal(size=(80, 6)).astype(np.float32) + y[:, None]
    keys = [bytes([i]) * 16 for i in range(80)]
    cache = FeatureCache(tmp_path / "pc")
    config = {"model": "toy", "layer": "default", "preprocessing": {"image_size": 8}}
    with cache.namespace("fp_toy", config).writer() as writer:
        writer.add(keys, X, [f"/data/{i}.png" for i in range(80)])
    splits = ["train"] * 60 + ["val"] * 20 if split else None
    if datasets:
        cache.annotate(keys[:50], label=[str(v) for v in y[:50]], split=splits and splits[:50],
                       dataset="a")
        cache.annotate(keys[50:], label=[str(v) for v in y[50:]], split=splits and splits[50:],
                       dataset="b")
    else:
        cache.annotate(keys, label=[str(v) for v in y], split=splits,
                       group=[f"p{i // group_size}" for i in range(80)])
    return str(cache.path)


def test_probe_refuses_a_patient_on_both_sides_and_says_where_metrics_come_from(tmp_path,
                                                                                capsys):
    d = _probe_cache(tmp_path, group_size=7)        # p8 = rows 56..62 straddles train | val
    args = ["probe", d, "--n-bootstrap", "10", "--groups", "from-cache"]
    assert cli_main(args) == 1
    err = capsys.readouterr().err
    assert "1 group(s) have rows in both the training and the validation split (e.g. 'p8')" \
        in err and "--group-overlap warn" in err and "group_overlap=" not in err
    assert cli_main([*args, "--group-overlap", "warn", "--json"]) == 0
    captured = capsys.readouterr()
    assert "featcache: warning: 1 group(s) have rows in both" in captured.err
    report = json.loads(captured.out)
    assert report["metrics_source"]["group_overlap"] == {"count": 1, "examples": ["p8"]}
    assert report["metrics_source"]["held_out"] is False
    assert cli_main(["probe", d, "--n-bootstrap", "10", "--val", "none", "--cv", "3"]) == 0
    assert "metrics from: held-out data not used for selection (nested cross-validation" in \
        capsys.readouterr().out
    assert cli_main(["probe", d, "--n-bootstrap", "10", "--val", "none", "--cv", "3",
                     "--no-nested"]) == 0
    assert "metrics from: the data that chose the hyperparameters (optimistic)" in \
        capsys.readouterr().out


# ---------------------------------------------------------------- evaluate
def test_evaluate_a_shared_model_on_labelled_files(xray_pngs, tmp_path, capsys):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import FixedThresholdClassifier
    from sklearn.pipeline import Pipeline

    from featcache import FrozenBackbone
    from featcache.sharing import dump

    paths, labels = xray_pngs
    work = tmp_path / "work"
    work.mkdir()
    pipe = Pipeline([("backbone", FrozenBackbone(image_size=32, cache=str(work / "cache"),
                                                 progress=False)),
                     ("clf", LogisticRegression(max_iter=2000))]).fit(paths[::2], labels[::2])
    dump(FixedThresholdClassifier(pipe, threshold=0.4), work / "model.skops")
    csv = work / "labels.csv"
    csv.write_text("path,label,patient\n" + "".join(
        f"{p},{labels[i]},pt{labels[i]}-{i // 4}\n" for i, p in enumerate(paths) if i % 2))
    out = work / "out"
    args = ["evaluate", str(work / "model.skops"), *paths[1::2], paths[0], "--labels", str(csv),
            "--groups", "patient", "--n-bootstrap", "20"]
    assert cli_main([*args, "--out", str(out), "--held-out"]) == 0
    captured = capsys.readouterr()
    assert "1 of the 31 inputs have no label and are left out" in captured.err
    assert "| sensitivity |" in captured.out and "| expected calibration error" in captured.out
    assert "operating point: 1 when the probability >= 0.4 (FixedThresholdClassifier)" in \
        captured.out and "metrics from: held-out data" in captured.out
    assert {p.name for p in out.iterdir()} == {"report.json", "predictions.csv", "roc.png",
                                               "pr.png", "confusion_matrix.png",
                                               "reliability.png"}
    header = (out / "predictions.csv").read_text().splitlines()[0]
    assert header.startswith("key,source,group,y_true,y_pred,score_0,score_1")
    report = json.loads((out / "report.json").read_text())
    assert report["n_val"] == 30 and report["info"]["bootstrap"] == "groups"
    assert report["info"]["model"] == str(work / "model.skops")
    assert cli_main([*args, "--aggregate", "mean", "--json"]) == 0
    patients = json.loads(capsys.readouterr().out)
    assert patients["n_val"] == 16 and patients["metrics_source"]["held_out"] is None
    assert "pass --held-out when" in patients["metrics_source"]["metrics_from"]
    assert cli_main(["evaluate", str(work / "nope.skops"), paths[1]]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_probe_command_prints_the_table_and_writes_the_report(tmp_path, capsys):
    d = _probe_cache(tmp_path)
    out = tmp_path / "r"
    assert cli_main(["probe", d, "--out", str(out), "--n-bootstrap", "20"]) == 0
    printed = capsys.readouterr().out
    assert "| ROC AUC |" in printed and "report.json" in printed and "n_val=20" in printed
    assert {p.name for p in out.iterdir()} >= {"report.json", "predictions.csv", *PLOTS}
    header = (out / "predictions.csv").read_text().splitlines()[0]
    assert header.startswith("key,source,y_true,y_pred,score_0,score_1")
    assert cli_main(["probe", d, "--val", "none", "--cv", "3", "--n-bootstrap", "20",
                     "--json", "--groups", "from-cache"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_val"] == 80 and "StratifiedGroupKFold" in report["selection"]
    assert report["info"]["validation"] == "cross-validation" and report["out"] is None
    parser = build_parser()
    assert parser.parse_args(["probe", d, "--val", "none"]).val is None
    assert parser.parse_args(["probe", d, "--val", "0.25"]).val == 0.25
    for bad in (["--val", "1.5"], ["--head", "forest"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["probe", d, *bad])


def test_probe_without_a_val_split_runs_and_notes_it_in_cli_words(tmp_path, capsys):
    d = _probe_cache(tmp_path, split=False)
    assert cli_main(["probe", d, "--cv", "3", "--n-bootstrap", "20"]) == 0
    out = capsys.readouterr().out
    assert "3-fold StratifiedKFold" in out and "no labelled row has split 'val'" in out
    assert "(as --val none); pass --val 0.2 for a held-out" in out
    assert "val=" not in out.replace("n_val=", "")


@pytest.mark.parametrize("args, words", [
    (["--val", "holdout"], ["no labelled row has split 'holdout'", "--val 0.2", "--val none"]),
    (["--groups", "patient"], ["--groups patient names a CSV column",
                               "pass --labels labels.csv, or --groups from-cache"]),
    (["--namespace", "zz"], ["'zz' matches no namespace"]),
    (["--dataset", "c"], ["--dataset c tags no row of namespace fp_toy"]),
])
def test_probe_errors_speak_in_option_names(tmp_path, capsys, args, words):
    d = _probe_cache(tmp_path)
    assert cli_main(["probe", d, "--n-bootstrap", "10", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("featcache probe: error: ") and len(err.strip().splitlines()) == 1
    for w in words:
        assert w in err, err
    assert "=None" not in err and "val=" not in err and "groups=" not in err


def test_probe_dataset_option_and_the_mixed_warning(tmp_path, capsys):
    d = _probe_cache(tmp_path, datasets=True)
    assert cli_main(["probe", d, "--n-bootstrap", "10", "--cv", "3", "--val", "none"]) == 0
    err = capsys.readouterr().err
    assert "featcache: warning: namespace fp_toy holds rows of dataset 'a' (50 rows) and " \
           "dataset 'b' (30 rows); the probe uses all 80 of them. Pass --dataset a" in err
    assert cli_main(["probe", d, "--n-bootstrap", "10", "--dataset", "a", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert captured.err == "" and report["info"]["selection"]["dataset"] == "a"
    assert report["n_train"] == 50      # study a has no 'val' rows: cross-validation
    assert report["info"]["validation"] == "cross-validation"


# ---------------------------------------------------------------- extract
def test_extract_dataset_split_column_json_and_a_fully_cached_rerun(xray_pngs, tmp_path,
                                                                    capsys):
    paths, labels = xray_pngs
    manifest = tmp_path / "study.csv"
    manifest.write_text("file,diagnosis,phase\n" + "".join(
        f"{Path(p).name},{'pneumonia' if y else 'normal'},{'val' if i % 4 == 0 else 'train'}\n"
        for i, (p, y) in enumerate(zip(paths, labels))))
    cache = str(tmp_path / "c")
    run = ["extract", str(manifest), "--cache", cache, "--image-size", "32", "--quiet",
           "--label-column", "diagnosis", "--split-column", "phase", "--dataset", "study-a"]
    assert cli_main(run + ["--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["inputs"] == summary["computed"] == 60 and summary["failed"] == 0
    assert summary["images_per_second"] > 0 and list(summary["namespaces"]) == ["default"]
    ann = FeatureCache(cache).annotations(dataset="study-a")
    assert len(ann) == 60
    assert sorted({a["split"] for a in ann.values()}) == ["train", "val"]
    assert {a["label"] for a in ann.values()} == {"normal", "pneumonia"}
    assert cli_main(run) == 0          # everything is cached now
    out = capsys.readouterr().out
    assert "60 inputs: 0 computed, 60 from cache, 0 failed" in out and "(all from cache)" in out
    assert "images/s" not in out
    n_files = len(list((Path(cache) / "annotations").iterdir()))
    assert cli_main(run + ["--json"]) == 0     # a rerun records no new annotations
    assert json.loads(capsys.readouterr().out)["images_per_second"] is None
    assert len(list((Path(cache) / "annotations").iterdir())) == n_files
    assert cli_main(["probe", cache, "--dataset", "study-a", "--n-bootstrap", "10"]) == 0
    assert "n_train=45, n_val=15" in capsys.readouterr().out
    assert cli_main(run[:-1] + ["nope", "--split-column", "stage"]) == 1
    assert "has no split column 'stage'" in capsys.readouterr().err


# ---------------------------------------------------------------- a batch job's log
def test_extract_in_a_batch_job_prints_progress_lines_to_its_log(xray_pngs, tmp_path):
    """stderr to a file, as SLURM and nohup give it: lines (here one per batch), no bar."""
    paths, _ = xray_pngs
    log = tmp_path / "job.err"
    command = [sys.executable, "-m", "featcache.cli", "extract", *paths[:12], "--cache",
               str(tmp_path / "c"), "--image-size", "32", "--batch-size", "4", "--device", "cpu",
               "--workers", "0"]
    env = {**os.environ, "FEATCACHE_PROGRESS_INTERVAL": "0"}
    with open(log, "w") as stderr:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=stderr, text=True,
                              cwd=ROOT, timeout=300, env=env)
    assert done.returncode == 0 and "12 inputs: 12 computed" in done.stdout, log.read_text()
    lines = log.read_text().splitlines()
    assert re.fullmatch(r"featcache: loaded efficientnet_lite0 \(weights IMAGENET1K via "
                        r"featcache\) on cpu in \d+\.\d s", lines[0]), lines
    assert [line.split(" img ")[0] + " img" for line in lines[1:4]] == [
        "featcache (0 cached): 4/12 img", "featcache (0 cached): 8/12 img",
        "featcache (0 cached): 12/12 img"], lines
    assert re.fullmatch(r"featcache \(0 cached\): 12/12 img \(100%\) in \d+s, [\d.]+ img/s, "
                        r"ETA 0s", lines[3]), lines[3]
    assert lines[4].startswith("featcache (0 cached): done 12/12 img in ") and len(lines) == 5
    with open(log, "w") as stderr:  # --quiet: nothing at all, even at interval 0
        done = subprocess.run([*command, "--quiet", "--cache", str(tmp_path / "c2")],
                              stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=ROOT,
                              timeout=300, env=env)
    assert done.returncode == 0 and log.read_text() == ""


# ---------------------------------------------------------------- a namespace by what it is
def test_export_chooses_a_namespace_by_what_it_is(xray_pngs, tmp_path, capsys):
    paths, _ = xray_pngs
    cache = str(tmp_path / "c")
    for size in ("32", "48"):  # two real namespaces: efficientnet_lite0's pooled output
        assert cli_main(["extract", *paths[:4], "--cache", cache, "--image-size", size,
                         "--quiet"]) == 0
    fingerprints = {e["config"]["preprocessing"]["image_size"]: e["fingerprint"]
                    for e in FeatureCache(cache).info()}
    capsys.readouterr()
    out = str(tmp_path / "e.npz")
    assert cli_main(["export", cache, out, "--image-size", "48", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["namespace"] == fingerprints[48]
    assert np.load(out)["features"].shape == (4, 1280)
    assert cli_main(["export", cache, out, "--model", "efficientnet_lite0", "--layer", "default",
                     "--image-size", "32"]) == 0
    assert fingerprints[32] in capsys.readouterr().out

    assert cli_main(["export", cache, out, "--model", "efficientnet_lite0", "--layer",
                     "default"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"featcache export: error: 2 namespaces of cache {cache} are --model "
                          "efficientnet_lite0, --layer default: ") and err.count("\n") == 1, err
    for size in (32, 48):
        assert f"{fingerprints[size][:8]} (efficientnet_lite0, layer default, {size} px)" in err
    assert "pass --namespace FINGERPRINT (the short form shown is enough), or choose by what " \
           "it is with --model NAME, --layer NAME, --image-size PIXELS" in err
    assert "=" not in err.split(": ", 1)[1]  # every criterion in the command line's words
    assert cli_main(["export", cache, out, "--layer", "blocks.4"]) == 1
    assert f"no namespace is --layer blocks.4 of cache {cache}; it holds: " in \
        capsys.readouterr().err
    assert cli_main(["export", cache, out, "--namespace", fingerprints[32][:8], "--image-size",
                     "32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["namespace"] == fingerprints[32]


def test_compact_chooses_a_namespace_by_what_it_is(xray_pngs, tmp_path, capsys):
    """compact takes export's and probe's --model/--layer/--image-size/--namespace: the one
    namespace they choose is compacted, the other left as it was; none or several matching
    exit 1 listing the candidates; without them every namespace is compacted."""
    paths, _ = xray_pngs
    cache = str(tmp_path / "c")
    for size in ("32", "48"):  # two real namespaces, two commits (two shards) each
        for part in (paths[:2], paths[2:4]):
            assert cli_main(["extract", *part, "--cache", cache, "--image-size", size,
                             "--quiet"]) == 0
    fingerprints = {e["config"]["preprocessing"]["image_size"]: e["fingerprint"]
                    for e in FeatureCache(cache).info()}

    def shards():
        return {e["config"]["preprocessing"]["image_size"]: e["shards"]
                for e in FeatureCache(cache).info()}

    assert shards() == {32: 2, 48: 2}
    capsys.readouterr()
    assert cli_main(["compact", cache, "--image-size", "48", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert [s["fingerprint"] for s in stats["namespaces"]] == [fingerprints[48]]
    assert shards() == {32: 2, 48: 1}
    assert cli_main(["compact", cache, "--model", "efficientnet_lite0", "--layer",
                     "default"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"featcache compact: error: 2 namespaces of cache {cache} are "
                          "--model efficientnet_lite0, --layer default: "), err
    for size in (32, 48):
        assert f"{fingerprints[size][:8]} (efficientnet_lite0, layer default, {size} px)" in err
    assert "pass --namespace FINGERPRINT (the short form shown is enough), or choose by what " \
           "it is with --model NAME, --layer NAME, --image-size PIXELS" in err
    assert cli_main(["compact", cache, "--image-size", "64"]) == 1
    assert f"no namespace is --image-size 64 of cache {cache}; it holds: " in \
        capsys.readouterr().err
    assert shards() == {32: 2, 48: 1}  # a refused choice compacts nothing
    assert cli_main(["compact", cache, "--namespace", fingerprints[32][:8]]) == 0
    assert f"{fingerprints[32]}: 2 -> 1 shard(s), 4 rows" in capsys.readouterr().out
    assert shards() == {32: 1, 48: 1}
    for size in ("32", "48"):
        assert cli_main(["extract", *paths[4:6], "--cache", cache, "--image-size", size,
                         "--quiet"]) == 0
    capsys.readouterr()
    assert cli_main(["compact", cache, "--json"]) == 0  # no choice: every namespace
    assert len(json.loads(capsys.readouterr().out)["namespaces"]) == 2
    assert shards() == {32: 1, 48: 1}


def test_probe_chooses_a_namespace_by_image_size_and_groups_come_from_the_labels_csv(
        tmp_path, capsys):
    d = _probe_cache(tmp_path)
    config = {"model": "toy", "layer": "default", "preprocessing": {"image_size": 16}}
    with FeatureCache(d).namespace("fp_big", config).writer() as writer:
        writer.add([bytes([i]) * 16 for i in range(80)], np.zeros((80, 6)), ["x"] * 80)
    assert cli_main(["probe", d, "--n-bootstrap", "10", "--image-size", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["info"]["namespace"] == "fp_toy"
    assert cli_main(["probe", d, "--n-bootstrap", "10"]) == 1
    err = capsys.readouterr().err
    assert f"cache {d} holds 2 namespaces: fp_big (toy, layer default, 16 px); fp_toy (toy, " \
           "layer default, 8 px); pass --namespace FINGERPRINT" in err
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["probe"]
                         .format_help().split())
    assert "--groups COLUMN|from-cache|none group (patient) of each row, kept within one " \
           "fold: COLUMN of the --labels CSV, or from-cache" in help_text
    assert "--image-size PIXELS the input side length" in help_text
