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
