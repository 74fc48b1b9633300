"""Tests for featcache._maintenance: verify, compact, index, export of a cache directory."""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

import h5py
import numpy as np
import pytest

from featcache.cache import CacheValueError, FeatureCache
from featcache.cli import main as cli_main
from featcache.exceptions import CacheCorruptError

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from cache_writer_proc import CONFIG, FINGERPRINT, features, key_of  # noqa: E402

from cache_helpers import (  # noqa: E402
    FAIL_EVERY,
    _check_served,
    _fill,
    _shard_paths,
    _spawn,
)


def test_compact_merges_and_dedupes_then_export(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    ns = cache.namespace(FINGERPRINT, CONFIG)
    _fill(ns, range(200), commit_rows=25)
    _fill(ns, range(100, 300), commit_rows=25)  # 100 keys written twice
    keys = [key_of(i) for i in range(300)]
    before = ns.read(keys, missing="nan")
    old = _shard_paths(ns)
    stale, live = ns.shards_dir / ".tmp-stale.h5", ns.shards_dir / ".tmp-live.h5"
    stale.write_bytes(b"left by a killed writer")
    live.write_bytes(b"being written right now")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    assert ns.rows() == 291  # readers ignore temporary files
    stats = cache.compact()
    assert stats["tmp_removed"] == 1 and not stale.exists() and live.exists()
    live.unlink()
    assert stats["shards_before"] == len(old) and stats["shards_after"] == 1
    assert stats["rows"] == ns.rows() == 291 and stats["duplicates_removed"] == 97
    assert not any(p.exists() for p in old) and cache.verify().ok
    np.testing.assert_array_equal(ns.read(keys, missing="nan"), before)
    assert len(ns.failures()) == 9
    with h5py.File(ns.path / "index.h5", "r") as f:  # virtual dataset over the shards
        assert f["features"].shape == (291, 16)
    assert cache.compact()["shards_after"] == 1  # nothing to merge

    out = cache.export(tmp_path / "exp.h5")
    with h5py.File(out, "r") as f:
        k, x = f["keys"][()], f["features"][()]
        src = f["sources"].asstr()[()]
        assert json.loads(f.attrs["config"]) == CONFIG and len(f["failures/keys"]) == 9
    assert x.shape == (291, 16) and len(src) == 291
    np.testing.assert_array_equal(x, features([bytes(r) for r in k]))
    assert all(s == f"item-{i}" for s, i in zip(src, [keys.index(bytes(r)) for r in k]))
    z = np.load(cache.export(tmp_path / "exp.npz"))
    np.testing.assert_array_equal(z["features"], x)
    np.testing.assert_array_equal(z["keys"], k)
    assert list(z["sources"]) == list(src) and len(z["failure_keys"]) == 9
    k2, x2 = cache.to_numpy(FINGERPRINT)
    np.testing.assert_array_equal(k2, k)
    np.testing.assert_array_equal(x2, x)


def test_writer_during_compaction_loses_no_rows(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    ns = cache.namespace(FINGERPRINT, CONFIG)
    _fill(ns, range(300), commit_rows=16)
    writer = _spawn("write", cache.path, "--start", 300, "--stop", 1500, "--commit-rows", 8,
                    "--delay", 0.002)
    compactions = 0
    while writer.poll() is None:
        cache.compact(min_shards=2)
        compactions += 1
        hit = ns.lookup([key_of(i) for i in range(1, 300)])
        assert hit.sum() == sum(1 for i in range(1, 300) if i % FAIL_EVERY)
    assert writer.returncode == 0, writer.stderr.read()
    assert compactions >= 2
    hit, fails = _check_served(cache.path, 1500)
    assert hit.sum() + len(fails) == 1500


def test_export_refuses_paths_inside_the_cache_and_unknown_extensions(tmp_path, capsys):
    cache = FeatureCache(tmp_path / "c")
    ns = cache.namespace(FINGERPRINT, CONFIG)
    _fill(ns, range(10))
    marker = cache.path / "featcache.json"
    before = marker.read_bytes()
    (tmp_path / "link").symlink_to(cache.path)
    inside = [marker, cache.path / "copy.h5", ns.shards_dir / "x.h5", tmp_path / "link" / "y.npz",
              cache.path, tmp_path / "link"]
    for out in inside:
        with pytest.raises(CacheValueError, match="cache directory.*outside it") as e:
            cache.export(out)
        assert str(out) in str(e.value)
    assert cli_main(["export", str(cache.path), str(marker)]) == 1
    assert "outside it" in capsys.readouterr().err
    assert marker.read_bytes() == before and FeatureCache(cache.path).namespaces() == [FINGERPRINT]
    for name in ("out.csv", "out", "out.json", "out.h5.part"):
        with pytest.raises(CacheValueError, match=r"extension .*\.h5.*\.hdf5.*\.npz") as e:
            cache.export(tmp_path / name)
        assert str(tmp_path / name) in str(e.value) and not (tmp_path / name).exists()
    assert isinstance(e.value, ValueError)
    (tmp_path / "folder.h5").mkdir()
    with pytest.raises(CacheValueError, match="is a directory"):
        cache.export(tmp_path / "folder.h5")
    for name in ("out.H5", "out.hdf5", "out.NPZ"):
        assert cache.export(tmp_path / name) == tmp_path / name and (tmp_path / name).is_file()
    with h5py.File(tmp_path / "out.hdf5", "r") as f:
        assert f["features"].shape == (9, 16)


def test_a_damaged_cache_marker_is_a_named_error(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    marker = cache.path / "featcache.json"
    bodies = (b"\xff\xfe{ not utf-8 \xe9", b"\x89HDF\r\n\x1a\n" + bytes(64), b"not json",
              b"[1, 2]", b'{"created": "today"}')
    for body in bodies:
        marker.write_bytes(body)
        with pytest.raises(CacheCorruptError, match=f"{marker} is damaged.*Restore it"):
            FeatureCache(cache.path)
        report = cache.verify()
        assert not report.ok and str(marker) in report.problems[0], report.problems


def test_a_shard_compacted_during_verify_is_not_corrupt(tmp_path, monkeypatch):
    import subprocess

    from featcache.cache import files, shards

    cache = FeatureCache(tmp_path / "c")
    ns = cache.namespace(FINGERPRINT, CONFIG)
    _fill(ns, range(1, 61), commit_rows=20, fail_every=0)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from cache_writer_proc import "
            "import_cache; import_cache().FeatureCache(sys.argv[2]).compact()")
    real, fired = shards.open_read, []

    def opener(path):  # a compaction replaces every shard just before verify opens one
        if not fired:
            fired.append(path)
            subprocess.run([sys.executable, "-c", code, str(pathlib.Path(__file__).parent),
                            str(cache.path)], check=True, timeout=60)
        return real(path)

    monkeypatch.setattr(shards, "open_read", opener)
    report = cache.verify()
    assert fired and report.ok, report.problems
    [merged] = files.list_shards(ns.shards_dir)
    assert report.shards_checked == 1  # the merged shard, listed again and checked
    assert len(_shard_paths(ns)) == 1 and pathlib.Path(fired[0]).name != merged


def test_compact_prunes_key_memo_entries_whose_file_lost_that_identity(tmp_path, capsys):
    """50 files regenerated 20 times, then 10 deleted: compact keeps one entry per live file."""
    from featcache.cache import keymemo
    from featcache.cache.identity import identity_of
    from featcache.engine.unit_of_work import content_keys

    cache = FeatureCache(tmp_path / "c")
    folder = tmp_path / "files"
    folder.mkdir()
    paths = [folder / f"{i}.bin" for i in range(50)]
    for generation in range(20):
        for i, path in enumerate(paths):
            path.write_bytes(f"{i} {generation}".encode() * (1 + generation))
        content_keys(paths, memo=keymemo.KeyMemo(cache.path))  # a new process each time
    for path in paths[40:]:
        path.unlink()
    stale = cache.path / keymemo.KEYS_DIR / "00" / ".tmp-killed.km"
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"left by a killed writer")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    stats = cache.compact()
    assert stats["key_entries_after"] == 40 and not stale.exists()
    assert stats["key_entries_pruned"] == stats["key_entries_before"] - 40 >= 10
    memo = keymemo.KeyMemo(cache.path)
    for i, path in enumerate(paths[:40]):
        assert memo.get(identity_of(path.resolve(), os.stat(path))) == \
            content_keys([path])[0][0]
    assert cli_main(["compact", str(cache.path)]) == 0
    assert "key memo: 40 -> 40 entries, 0 whose file changed or vanished removed" in \
        capsys.readouterr().out
    paths[0].write_bytes(b"edited")
    assert cache.compact()["key_entries_after"] == 39
