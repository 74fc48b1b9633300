"""Tests for featcache.cli: every command, exit codes, output, real processes."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from featcache.cache import FeatureCache
from featcache.cli import main as cli_main

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
