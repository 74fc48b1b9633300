"""Tests for featcache.probe_cache: probing a cache directory and the probe command."""

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featcache.probe
import featcache.probe_cache
from featcache import FeatureCache
from featcache.exceptions import ProbeError
from featcache.inputs import content_key
from featcache.probe import PLOTS
from featcache.probe_cache import add_probe_arguments, probe_cache, run_probe_command

ROOT = Path(__file__).resolve().parents[1]

FAST = dict(n_bootstrap=50, Cs=[0.01, 0.1, 1.0])


def _fill(cache_dir, features, keys, fingerprint="fp_a", sources=None):
    cache = FeatureCache(cache_dir)
    config = {"model": "toy", "layer": "default", "preprocessing": {"image_size": 8}}
    sources = sources or [f"row{i}" for i in range(len(keys))]
    with cache.namespace(fingerprint, config).writer() as writer:
        writer.add(keys, features, sources)
        writer.add_failure(b"\xff" * 16, "broken.png", "truncated file")
    return cache


@pytest.fixture
def toy_cache(tmp_path):
    """100 annotated rows: 70 train, 20 val, 5 test, 5 unlabelled; 25 patients."""
    rng = np.random.default_rng(0)
    y = np.tile([0, 1], 50)
    X = rng.normal(size=(100, 6)).astype(np.float32) + y[:, None]
    keys = [bytes([i]) * 16 for i in range(100)]
    cache = _fill(tmp_path / "cache", X, keys)
    split = ["train"] * 70 + ["val"] * 20 + ["test"] * 5 + [None] * 5
    labels = [str(v) for v in y[:95]] + [None] * 5
    cache.annotate(keys, label=labels, split=split, group=[f"p{i // 4}" for i in range(100)])
    return tmp_path / "cache"


def test_probe_cache_uses_annotated_labels_and_splits(toy_cache, tmp_path):
    report = probe_cache(toy_cache, labels="from-cache", val="val", out_dir=tmp_path / "o",
                         **FAST)
    assert (report.n_train, report.n_val) == (70, 20) and report.classes == [0, 1]
    assert report.info["skipped"] == {"without a label": 5, "failed": 1, "test split": 5}
    assert report.info["namespace"] == "fp_a" and report.info["image_size"] == 8
    assert "5 without a label" in str(report)
    assert (tmp_path / "o" / "report.json").is_file()


def test_probe_cache_fraction_and_cross_validation(toy_cache):
    fraction = probe_cache(toy_cache, val=0.2, groups=True, **FAST)
    assert fraction.n_train + fraction.n_val == 90 and 14 <= fraction.n_val <= 22
    assert not fraction.info["notes"]
    cv = probe_cache(toy_cache, val=None, groups=True, cv=3, **FAST)
    assert cv.n_train == cv.n_val == 90 and "StratifiedGroupKFold" in cv.selection
    ungrouped = probe_cache(toy_cache, val=None, cv=3, **FAST)
    assert "StratifiedKFold" in ungrouped.selection
    assert "note: the cache records groups but groups=None" in str(ungrouped)


def test_probe_cache_errors_name_the_fix(toy_cache, tmp_path):
    with pytest.raises(ProbeError, match="no labelled row has split 'holdout'.*val=0.2"):
        probe_cache(toy_cache, val="holdout", **FAST)
    with pytest.raises(ProbeError, match="names a CSV column"):
        probe_cache(toy_cache, groups="patient", **FAST)
    _fill(toy_cache, np.zeros((2, 6), np.float32), [b"\x01" * 16, b"\x02" * 16], "fp_b")
    with pytest.raises(ProbeError, match="holds 2 namespaces: fp_a .*toy.*pass namespace="):
        probe_cache(toy_cache, **FAST)
    with pytest.raises(ProbeError, match="'zz' matches no namespace"):
        probe_cache(toy_cache, "zz", **FAST)
    assert probe_cache(toy_cache, "fp_a", **FAST).n_val == 20


def test_probe_cache_with_a_csv_matches_by_content_key_and_source(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    y = np.tile([0, 1], 20)
    paths, keys = [], []
    for i in range(40):
        path = tmp_path / "imgs" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(path)
        paths.append(path)
        keys.append(content_key(path, i))
    X = rng.normal(size=(40, 5)).astype(np.float32) + y[:, None]
    cache = _fill(tmp_path / "cache", X, keys)
    # the last image was moved away: its row is found by its recorded source
    cache.annotate(keys[-1:], source=[str(paths[-1])])
    paths[-1].rename(tmp_path / "moved.png")
    csv = tmp_path / "labels.csv"
    lines = ["path,label,split,patient"] + [
        f"imgs/{i}.png,{'pneumonia' if y[i] else 'normal'},{'val' if i >= 30 else 'train'},"
        f"p{i // 2}" for i in range(40)] + ["imgs/unknown.png,normal,train,p99"]
    csv.write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path / "imgs")    # relative paths resolve from the CSV's folder too
    report = probe_cache(tmp_path / "cache", labels=csv, groups="patient", **FAST)
    assert (report.n_train, report.n_val) == (30, 10)
    assert report.classes == ["normal", "pneumonia"]
    assert report.info["notes"] == ["1 CSV row(s) matched no cached embedding (files not "
                                    "extracted into this namespace, or changed since)"]
    with pytest.raises(ProbeError, match=r"lacks column\(s\) \['ward'\]"):
        probe_cache(tmp_path / "cache", labels=csv, groups="ward", **FAST)


def test_probe_command_prints_the_table_and_writes_the_report(toy_cache, tmp_path, capsys):
    parser = add_probe_arguments(argparse.ArgumentParser(prog="featcache probe"))
    args = parser.parse_args([str(toy_cache), "--val", "val", "--out", str(tmp_path / "r"),
                              "--n-bootstrap", "20", "--head", "logistic"])
    assert run_probe_command(args) == 0
    out = capsys.readouterr().out
    assert "| ROC AUC |" in out and "report.json" in out
    assert {p.name for p in (tmp_path / "r").iterdir()} >= {"report.json", *PLOTS}
    assert parser.parse_args([str(toy_cache), "--val", "none"]).val is None
    assert parser.parse_args([str(toy_cache), "--val", "0.25"]).val == 0.25
    with pytest.raises(SystemExit):
        parser.parse_args([str(toy_cache), "--val", "1.5"])
    with pytest.raises(SystemExit):
        parser.parse_args([str(toy_cache), "--head", "forest"])


# ----------------------------------------------------------------------------- import paths
_LAZY_REEXPORT = """
import sys
import featcache.probe as probe
assert "featcache.probe_cache" not in sys.modules, "featcache.probe imported probe_cache eagerly"
assert {"probe_cache", "add_probe_arguments", "run_probe_command"} <= set(dir(probe))
from featcache.probe import add_probe_arguments, probe_cache, run_probe_command
import featcache.probe_cache as module
assert probe_cache is module.probe_cache and run_probe_command is module.run_probe_command
assert add_probe_arguments is module.add_probe_arguments
"""


def test_probe_reexports_the_cache_half_lazily():
    done = subprocess.run([sys.executable, "-c", _LAZY_REEXPORT], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr


def test_both_import_paths_give_the_same_names():
    for name in featcache.probe_cache.__all__:
        assert getattr(featcache.probe, name) is getattr(featcache.probe_cache, name), name
    assert set(featcache.probe_cache.__all__) <= set(featcache.probe.__all__)
    with pytest.raises(AttributeError, match="'featcache.probe' has no attribute 'nope'"):
        featcache.probe.nope
