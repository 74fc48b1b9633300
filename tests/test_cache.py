"""Tests of the HDF5 shard cache (featcache.cache): real files, real processes.

Features are synthetic and deterministic (seeded by the key bytes, see cache_writer_proc.py);
no torch, no network.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from featcache.cache import files, shards
from featcache.cache import (
    CacheMissError,
    CorruptShardWarning,
    FeatureCache,
    clear_memo,
    default_cache_dir,
    resolve_cache,
)
from featcache.cli import main as cli_main
from featcache.exceptions import CacheError

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from cache_writer_proc import CONFIG, FINGERPRINT, feature, features, key_of  # noqa: E402

from cache_helpers import (  # noqa: E402
    FAIL_EVERY,
    HELPER,
    ROOT,
    _bomb_file,
    _check_served,
    _fill,
    _flip_feature_bytes,
    _memory_probe,
    _ns,
    _run_helper,
    _shard_paths,
    _spawn,
)
from namespace_conformance import NamespaceConformance  # noqa: E402


# ---------------------------------------------------------------- 0. the namespace contract
class TestDiskNamespace(NamespaceConformance):
    """The namespace contract's conformance suite, run against the disk backend."""

    def make_namespace(self, tmp_path, dim=3, *, storage="float32", row_shape=None):
        config = {"model": "synthetic", "storage": storage}
        if dim is not None:
            config["dim"] = dim
        if row_shape is not None:
            config["row_shape"] = list(row_shape)
        return FeatureCache(tmp_path / "c").namespace("fp0", config)


# ---------------------------------------------------------------- 1. round trip
def test_round_trip_order_hits_failures_missing(tmp_path):
    ns = _ns(tmp_path)
    w = _fill(ns, range(200), commit_rows=64)
    assert len(w.shards) == 4 and w.rows_written == 194 and w.failures_written == 6
    keys = [key_of(i) for i in range(250)]
    mask = ns.lookup(keys)
    assert mask.sum() == 194 and not mask[200:].any() and not mask[0] and mask[1]
    order = np.random.default_rng(0).permutation(200)
    ok = [i for i in order if i % FAIL_EVERY]
    got = ns.read([key_of(i) for i in ok])
    np.testing.assert_array_equal(got, features([key_of(i) for i in ok]))
    assert got.dtype == np.float32 and got.shape == (194, 16)
    # failed keys read as NaN rows, and are listed with their reasons
    mixed = ns.read([key_of(1), key_of(37), key_of(2)])
    assert np.isnan(mixed[1]).all() and not np.isnan(mixed[[0, 2]]).any()
    assert ns.failures([key_of(37), key_of(1)]) == {key_of(37): ("item-37", "synthetic failure 37")}
    assert len(ns.failures()) == 6 and ns.rows() == 194 and ns.dim == 16
    # absent keys: a clear KeyError-like CacheError, or NaN on request
    with pytest.raises(CacheMissError, match=r"50 of 52 keys are not in cache namespace") as e:
        ns.read(keys[198:])
    assert isinstance(e.value, KeyError) and "missing='nan'" in str(e.value)
    assert np.isnan(ns.read(keys[198:], missing="nan")[2:]).all()
    assert ns.read([]).shape == (0, 16)


def test_float16_storage_and_writer_rules(tmp_path):
    ns = _ns(tmp_path)
    _fill(ns, range(1, 30), dtype="float16", fail_every=0)
    [shard] = _shard_paths(ns)
    with h5py.File(shard, "r") as f:
        assert f["features"].dtype == np.float16 and f.attrs["dtype"] == "float16"
    keys = [key_of(i) for i in range(1, 30)]
    got = ns.read(keys)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, features(keys).astype(np.float16).astype(np.float32))
    with pytest.raises(CacheError, match="float32' or 'float16"):
        ns.writer(dtype="int8")


def test_writer_commits_on_time_and_on_interrupt(tmp_path):
    ns = _ns(tmp_path)
    w = ns.writer(commit_rows=10_000, commit_seconds=0.05)
    w.add([key_of(1)], feature(key_of(1))[None], ["a"])
    assert not w.shards and w.pending == 1
    time.sleep(0.1)
    w.add([key_of(2)], feature(key_of(2))[None], ["b"])  # the oldest row is 0.1 s old
    assert len(w.shards) == 1 and w.pending == 0 and w.commit() is None
    with pytest.raises(KeyboardInterrupt):
        with ns.writer(commit_rows=10_000) as w2:
            w2.add([key_of(3)], feature(key_of(3))[None], ["c"])
            raise KeyboardInterrupt
    assert ns.lookup([key_of(3)]).all() and len(w2.shards) == 1


def test_first_shard_in_name_order_wins(tmp_path):
    ns = _ns(tmp_path)
    k = key_of(1)
    with ns.writer() as w:
        w.add([k, key_of(2)], np.ones((2, 16)), ["a", "a"])
    with ns.writer() as w:
        w.add([k], np.full((1, 16), 2.0), ["b"])  # a later shard repeats k: it loses
    assert ns.read([k])[0, 0] == 1
    second = _shard_paths(ns)[-1]
    early = ns.shards_dir / f"{1:020d}-{0:032x}.h5"
    shutil.copy(second, early)  # a shard sorting first arrives (incremental index update)
    assert ns.read([k, key_of(2)])[:, 0].tolist() == [2, 1] and ns.rows() == 2
    second.unlink()  # a shard disappears (full index rebuild)
    assert ns.read([k, key_of(2)])[:, 0].tolist() == [2, 1]
    clear_memo()
    assert ns.read([k, key_of(2)])[:, 0].tolist() == [2, 1]


def test_cache_directory_rules(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATCACHE_HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home"
    assert resolve_cache("auto").path == tmp_path / "home"
    assert (tmp_path / "home" / "featcache.json").exists()
    c = FeatureCache(tmp_path / "x")
    assert resolve_cache(c) is c and resolve_cache(False) is None and resolve_cache(None) is None
    assert resolve_cache(str(tmp_path / "y")).path == tmp_path / "y"
    with pytest.raises(ValueError, match="'auto'"):
        resolve_cache(3)
    with pytest.raises(CacheError, match="no featcache.json"):
        FeatureCache(tmp_path / "absent", create=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(CacheError, match="not a featcache cache directory"):
        FeatureCache(tmp_path / "busy")
    (tmp_path / "x" / "featcache.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(CacheError, match="format_version 99"):
        FeatureCache(tmp_path / "x")
    with pytest.raises(CacheError, match="not a valid fingerprint"):
        FeatureCache(tmp_path / "z").namespace("../escape")


# ---------------------------------------------------------------- 2. kill test
def _kill_rounds(tmp_path, rounds, seed):
    rng = random.Random(seed)
    cache_dir, n = tmp_path / "kill", 300 * rounds  # more rows than the killed runs can write
    for r in range(rounds):
        hit, fails = (_check_served(cache_dir, n) if cache_dir.exists()
                      else (np.zeros(n, bool), {}))
        expect_todo = n - int(hit.sum()) - len(fails)
        extra = ["--compact-every", 15] if r % 3 == 2 else []
        p = _spawn("write", cache_dir, "--stop", n, "--commit-rows", 16, "--delay", 0.002, *extra)
        if rng.random() < 0.8:  # usually wait until it is writing, sometimes kill during start-up
            line = p.stdout.readline()
            assert line == f"todo {expect_todo}\n", (line, p.stderr.read())
            time.sleep(rng.uniform(0.0, 0.35))
        else:
            time.sleep(rng.uniform(0.0, 0.3))
        p.send_signal(signal.SIGKILL)
        p.communicate()
        assert p.returncode == -signal.SIGKILL, f"round {r}: the writer ended before the kill"
        if r % 5 == 4:  # keep the shard count (and the per-round checks) small
            _check_served(cache_dir, n)
            FeatureCache(cache_dir).compact()
    hit, fails = _check_served(cache_dir, n)
    done = {i for i in range(n) if hit[i] or key_of(i) in fails}
    log = tmp_path / "computed.txt"
    _run_helper("write", cache_dir, "--stop", n, "--commit-rows", 64, "--log", log)
    computed = [int(x) for x in log.read_text().split()]
    print(f"{rounds} kills; {n - len(computed)} of {n} items were done before the rerun")
    assert sorted(computed) == sorted(set(range(n)) - done), "rerun must compute only the rest"
    hit, fails = _check_served(cache_dir, n)
    assert hit.sum() + len(fails) == n and len(fails) == len(range(0, n, FAIL_EVERY))


def test_kill_writer_20_times(tmp_path):
    _kill_rounds(tmp_path, rounds=20, seed=20)


@pytest.mark.slow
def test_kill_writer_200_times(tmp_path):
    _kill_rounds(tmp_path, rounds=200, seed=200)


# ---------------------------------------------------------------- 3./4. concurrency
def test_two_writers_with_overlapping_keys(tmp_path):
    cache_dir = tmp_path / "c"
    FeatureCache(cache_dir)
    a = _spawn("write", cache_dir, "--start", 0, "--stop", 1500, "--commit-rows", 32)
    b = _spawn("write", cache_dir, "--start", 1000, "--stop", 2500, "--commit-rows", 32)
    for p in (a, b):
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0 and out.endswith("done\n"), err
    hit, fails = _check_served(cache_dir, 2500)
    assert hit.sum() + len(fails) == 2500
    assert FeatureCache(cache_dir).namespace(FINGERPRINT).rows() == int(hit.sum())


def test_readers_while_a_writer_commits(tmp_path):
    cache_dir, stop = tmp_path / "c", tmp_path / "stop"
    _fill(FeatureCache(cache_dir).namespace(FINGERPRINT, CONFIG), range(50))
    writer = _spawn("write", cache_dir, "--stop", 2000, "--commit-rows", 16, "--delay", 0.002,
                    "--compact-every", 60)
    readers = [_spawn("read", cache_dir, "--stop", 2000, "--until", stop) for _ in range(4)]
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    stop.touch()
    expected_rows = sum(1 for i in range(2000) if i % FAIL_EVERY)
    for r in readers:
        out, err = r.communicate(timeout=60)
        assert r.returncode == 0, out + err
        status, loops, last = out.split()
        assert status == "ok" and int(loops) >= 2 and int(last) == expected_rows


def test_threads_reading_while_a_thread_writes(tmp_path):
    import threading

    ns = _ns(tmp_path)
    keys = [key_of(i) for i in range(1, 1500)]
    expect = features(keys)
    errors, done = [], threading.Event()

    def reader():
        last = 0
        while not done.is_set():
            try:
                hit = ns.lookup(keys)
                assert hit.sum() >= last
                last = int(hit.sum())
                np.testing.assert_array_equal(ns.read([k for k, h in zip(keys, hit) if h]),
                                              expect[hit])
            except Exception as exc:  # reported below
                errors.append(exc)
                return

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    with ns.writer(commit_rows=20) as w:
        for lo in range(0, len(keys), 10):
            w.add(keys[lo:lo + 10], expect[lo:lo + 10], ["s"] * len(keys[lo:lo + 10]))
            if lo % 300 == 0:
                ns.cache.compact()
    done.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    np.testing.assert_array_equal(ns.read(keys), expect)


# ---------------------------------------------------------------- 5. corruption


def test_corrupt_shards_are_reported_and_never_served(tmp_path, capsys):
    cache = FeatureCache(tmp_path / "c")
    ns = cache.namespace(FINGERPRINT, CONFIG)
    _fill(ns, range(1, 121), commit_rows=30, fail_every=0)
    flipped, truncated, good1, good2 = _shard_paths(ns)
    _flip_feature_bytes(flipped)
    with open(truncated, "r+b") as fh:
        fh.truncate(os.path.getsize(truncated) // 2)
    junk = ns.shards_dir / f"{'9' * 20}-{'a' * 32}.h5"
    junk.write_bytes(b"not an hdf5 file")
    clear_memo()
    report = cache.verify()
    assert not report.ok and report.shards_checked == 5 and len(report.problems) == 3
    for bad, what in ((flipped, "checksum mismatch"), (truncated, "cannot be read"), (junk, "")):
        assert any(str(bad) in p and what in p for p in report.problems), report.problems
    keys = [key_of(i) for i in range(1, 121)]
    clear_memo()
    with pytest.warns(CorruptShardWarning, match="featcache verify") as rec:
        mask = ns.lookup(keys)
    messages = [str(w.message) for w in rec]
    for bad in (flipped, truncated, junk):
        assert any(str(bad) in m for m in messages), messages
    assert mask.tolist() == [False] * 60 + [True] * 60  # rows 1-60 were in the damaged shards
    np.testing.assert_array_equal(ns.read(keys[60:]), features(keys[60:]))
    assert np.isnan(ns.read(keys[:60], missing="nan")).all()
    with pytest.raises(CacheMissError, match="60 of 120"):
        ns.read(keys)
    stats = cache.compact()  # damaged shards are left for the user, the good ones merged
    assert stats["corrupt_skipped"] == 3 and stats["rows"] == 60
    assert flipped.exists() and truncated.exists() and not good1.exists()
    assert cli_main(["verify", str(cache.path)]) == 1
    out = capsys.readouterr()
    assert str(flipped) in out.out and str(truncated) in out.out and "Delete" in out.err
    # the rows are recomputed after the user deletes the damaged files
    for p in (flipped, truncated, junk):
        p.unlink()
    _fill(ns, range(1, 61), fail_every=0)
    np.testing.assert_array_equal(ns.read(keys), features(keys))
    assert cache.verify().ok


def test_files_that_declare_huge_sizes_are_damaged_not_allocated(tmp_path):
    rows = 25_000_000  # reading what these files declare would take more than 2 GB
    cache = FeatureCache(tmp_path / "c")
    _fill(cache.namespace(FINGERPRINT, CONFIG), range(1, 41), fail_every=0)
    bombs = [_bomb_file(cache.path / fp / "shards" / f"{0:020d}-{'b' * 32}.h5", rows,
                        chunked=fp.endswith("chunked"), fingerprint=fp)
             for fp in ("bomb-chunked", "bomb-contiguous", FINGERPRINT)]
    notes = _bomb_file(cache.path / "annotations" / f"{0:020d}-{'c' * 32}.h5", rows,
                       fields=("keys", "label", "group", "split", "source"), failures=False)
    seen = _memory_probe(cache.path)
    assert seen["peak_mib"] < 100 and seen["rss_growth_mib"] < 200, seen
    assert seen["info"] == {"bomb-chunked": [0, 1], "bomb-contiguous": [0, 1],
                            FINGERPRINT: [40, 1]}, seen
    for bomb in bombs:
        assert any(str(bomb) in p and "bytes" in p for p in seen["problems"]), seen["problems"]
    assert str(notes) in seen["annotations"] and "delete" in seen["annotations"], seen
    assert any(str(notes) in p for p in seen["problems"]), seen["problems"]
    # the good rows are still served, and the damaged files are skipped with a warning
    clear_memo()
    with pytest.warns(CorruptShardWarning, match=str(bombs[2])):
        got = cache.namespace(FINGERPRINT).read([key_of(i) for i in range(1, 41)])
    np.testing.assert_array_equal(got, features([key_of(i) for i in range(1, 41)]))


def test_a_shard_whose_attributes_lie_is_damaged(tmp_path):
    ns = _ns(tmp_path)
    _fill(ns, range(1, 11), fail_every=0)
    [shard] = _shard_paths(ns)
    lies = {"a": ("rows", 10**8), "b": ("failures", 10**8), "c": ("dim", np.arange(1000))}
    for name, (attr, value) in lies.items():
        bad = ns.shards_dir / f"{9:020d}-{name * 32}.h5"
        shutil.copy(shard, bad)
        with h5py.File(bad, "r+") as f:
            f.attrs[attr] = value
    padded = _bomb_file(ns.shards_dir / f"{9:020d}-{'d' * 32}.h5", 1000, chunked=False)
    with h5py.File(padded, "a") as f:  # the file is big enough, but the rows are not stored
        f.create_dataset("padding", data=np.ones(2**16))
    clear_memo()
    problems = ns.cache.verify().problems
    assert len(problems) == 4, problems
    assert any("'failures' says 100000000" in p for p in problems), problems
    assert any("attribute 'dim' should be a single value" in p for p in problems), problems
    assert any(str(padded) in p and "stores only 0 bytes" in p for p in problems), problems
    clear_memo()
    quick = FeatureCache(ns.cache.path, verify_on_load=False)  # checks shapes, not checksums
    with pytest.warns(CorruptShardWarning):
        assert quick.info()[0]["bad_shards"] == 4 and quick.namespace(FINGERPRINT).rows() == 10


def test_a_shard_replaced_after_it_was_indexed_is_never_served(tmp_path):
    ns = _ns(tmp_path)
    _fill(ns, range(1, 11), fail_every=0)
    keys = [key_of(i) for i in range(1, 11)]
    assert ns.lookup(keys).all()  # the shard is in this process's key index
    [shard] = _shard_paths(ns)
    shard.unlink()
    _bomb_file(shard, 10**6, chunked=False)  # same name, rows declared but never stored
    with pytest.warns(CorruptShardWarning, match=str(shard)):
        with pytest.raises(CacheMissError, match="10 of 10 keys"):
            ns.read(keys)


def test_threads_creating_one_new_cache_directory_at_once(tmp_path):
    import threading

    n_threads, errors = 16, []

    def open_and_use(directory, barrier, i):
        try:
            barrier.wait()
            cache = FeatureCache(directory)
            if i % 2:
                cache.namespace(FINGERPRINT, CONFIG)
            else:
                cache.annotate([key_of(i)], label=[f"label-{i}"])
        except Exception as exc:  # reported below
            errors.append(f"thread {i} on {directory.name}: {exc!r}")

    for rep in range(50):
        directory, barrier = tmp_path / f"c{rep}", threading.Barrier(n_threads)
        threads = [threading.Thread(target=open_and_use, args=(directory, barrier, i))
                   for i in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[:3]
        cache = FeatureCache(directory, create=False)
        assert cache.namespaces() == [FINGERPRINT] and len(cache.annotations()) == 8
        assert not [n for n in os.listdir(directory) if n.startswith(".tmp-")]


def test_sources_and_reasons_that_are_not_utf8_are_stored_escaped(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    ns = cache.namespace(FINGERPRINT, CONFIG)
    odd = os.fsdecode(b"/data/caf\xe9.png")  # a Latin-1 file name: legal on Linux, not UTF-8
    assert odd == "/data/caf\udce9.png"
    k1, k2 = key_of(1), key_of(2)
    with ns.writer() as w:
        w.add([k1, k2], features([k1, k2]), [odd, "/data/ok.png"])
        w.add_failure(key_of(3), odd + "x", f"cannot decode {odd}: bad\x00byte")
    assert len(w.shards) == 1 and w.rows_written == 2 and w.failures_written == 1
    escaped = "/data/caf\\udce9.png"
    assert shards.read_sources(w.shards[0]) == [escaped, "/data/ok.png"]
    expect = {key_of(3): (escaped + "x", f"cannot decode {escaped}: bad\\x00byte")}
    assert ns.failures() == expect
    _fill(ns, range(10, 20))  # a second shard: compact merges what this process wrote
    assert cache.compact()["shards_after"] == 1 and ns.failures() == expect
    clear_memo()
    assert ns.failures() == expect and cache.verify().ok
    np.testing.assert_array_equal(ns.read([k1, k2]), features([k1, k2]))
    with h5py.File(cache.export(tmp_path / "out.h5"), "r") as f:
        assert escaped in list(f["sources"].asstr()[()])
        assert list(f["failures/reasons"].asstr()[()]) == [expect[key_of(3)][1]]
    with np.load(cache.export(tmp_path / "out.npz")) as z:
        assert escaped in list(z["sources"]) and list(z["failure_sources"]) == [escaped + "x"]


# ---------------------------------------------------------------- 6. no "w" on live files
def test_existing_files_are_never_opened_for_writing(tmp_path, monkeypatch):
    opened, real = [], h5py.File

    def spy(name, mode="r", *args, **kwargs):
        if isinstance(name, (str, os.PathLike)):
            opened.append((str(name), mode, os.path.exists(name)))
        return real(name, mode, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", spy)
    cache = FeatureCache(tmp_path / "c")
    ns = cache.namespace(FINGERPRINT, CONFIG)
    _fill(ns, range(100), commit_rows=16)
    _fill(ns, range(50, 150), commit_rows=16)
    ns.read([key_of(i) for i in range(1, 30)])
    cache.compact()
    cache.export(tmp_path / "out.h5")
    cache.export(tmp_path / "out.h5")  # replacing an existing export goes through a new file
    cache.verify()
    assert opened
    for name, mode, existed in opened:
        if existed:
            assert mode == "r", (name, mode)
        else:
            assert mode in ("w-", "x") and "/.tmp-" in name, (name, mode)


# ---------------------------------------------------------------- 7. disk full
def test_disk_full_during_commit(tmp_path, monkeypatch):
    ns = _ns(tmp_path)
    _fill(ns, range(1, 41), commit_rows=20, fail_every=0)
    before = _shard_paths(ns)

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "_fsync", no_space)
    w = ns.writer(commit_rows=1000)
    w.add([key_of(i) for i in range(41, 61)], features([key_of(i) for i in range(41, 61)]),
          ["s"] * 20)
    with pytest.raises(CacheError, match="disk is full") as e:
        w.commit()
    assert str(ns.shards_dir) in str(e.value) and "rerun" in str(e.value)
    assert _shard_paths(ns) == before and not files.temp_files(ns.path)
    with pytest.raises(CacheError, match="disk is full"):  # __exit__ does not retry blindly
        with ns.writer() as w2:
            w2.add([key_of(99)], feature(key_of(99))[None], ["s"])
            w2.commit()
    clear_memo()
    assert FeatureCache(ns.cache.path).verify().ok and ns.rows() == 40
    monkeypatch.undo()
    assert w.commit() is not None  # the buffer was kept: a retry completes
    keys = [key_of(i) for i in range(1, 61)]
    np.testing.assert_array_equal(ns.read(keys), features(keys))


def test_real_write_failure_with_a_file_size_limit(tmp_path):
    """A real failed write (no root needed): RLIMIT_FSIZE makes the kernel refuse to grow files
    past a limit (EFBIG), much like a full disk. With root, a tiny tmpfs does the same:
    ``mount -t tmpfs -o size=1m tmpfs /mnt/small`` and point the cache there."""
    FeatureCache(tmp_path / "c").namespace(FINGERPRINT, CONFIG)
    code = f"""
import resource, signal, sys, numpy as np
sys.path.insert(0, {str(pathlib.Path(HELPER).parent)!r})
from cache_writer_proc import import_cache, key_of, FINGERPRINT  # noqa: E402
cache = import_cache()
ns = cache.FeatureCache({str(tmp_path / 'c')!r}).namespace(FINGERPRINT)
with ns.writer() as w:
    w.add([key_of(i) for i in range(10)], np.ones((10, 16)), ['s'] * 10)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
w = ns.writer()
try:
    w.add([key_of(i) for i in range(10, 8010)], np.ones((8000, 16)), ['s'] * 8000)  # commits
except cache.CacheError as e:
    print('CacheError:', e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert "CacheError: could not write a cache shard in" in out.stdout, out.stdout + out.stderr
    ns = FeatureCache(tmp_path / "c").namespace(FINGERPRINT)
    assert ns.rows() == 10 and not files.temp_files(ns.path) and ns.cache.verify().ok


_TMPFS_SCRIPT = """
import os, sys, numpy as np
sys.path.insert(0, {helper_dir!r})
from cache_writer_proc import import_cache, key_of, FINGERPRINT  # noqa: E402
cm = import_cache()
ns = cm.FeatureCache({d!r}).namespace(FINGERPRINT, {{"model": "x"}})
with ns.writer() as w:
    w.add([key_of(i) for i in range(100)], np.ones((100, 16)), ["s"] * 100)
try:
    ns.writer().add([key_of(i) for i in range(100, 20100)], np.ones((20000, 16)), ["s"] * 20000)
except cm.CacheError as e:
    print("CacheError:", e)
print("tmp files:", len([n for n in os.listdir(ns.shards_dir) if n.startswith(".tmp")]))
print("verify:", ns.cache.verify().ok, "rows:", ns.rows())
"""


def test_real_disk_full_on_a_small_tmpfs(tmp_path):
    """A real ENOSPC: a 1 MiB tmpfs mounted in a private user+mount namespace (``unshare
    -rm``, no root needed where unprivileged user namespaces are allowed; skipped elsewhere)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    script = tmp_path / "fill.py"
    script.write_text(_TMPFS_SCRIPT.format(helper_dir=str(pathlib.Path(HELPER).parent),
                                           d=str(mnt / "c")))
    cmd = ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {shlex.quote(str(mnt))}"
           f" && exec {shlex.quote(sys.executable)} {shlex.quote(str(script))}"]
    try:
        probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("unshare is not available")
    if probe.returncode != 0:
        pytest.skip("unprivileged user namespaces are not allowed here")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if "mount:" in out.stderr:
        pytest.skip(f"cannot mount a tmpfs: {out.stderr.strip()}")
    assert "CacheError: could not write a cache shard in" in out.stdout, out.stdout + out.stderr
    assert "the disk is full" in out.stdout
    assert "tmp files: 0" in out.stdout and "verify: True rows: 100" in out.stdout


# ---------------------------------------------------------------- 8. compact / export


def test_info_and_namespaces(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    _fill(cache.namespace(FINGERPRINT, CONFIG), range(100))
    cache.namespace("otherfp", {"model": "m2"})
    assert cache.namespaces() == ["otherfp", FINGERPRINT]
    info = {e["fingerprint"]: e for e in cache.info()}
    e = info[FINGERPRINT]
    assert (e["rows"], e["failures"], e["dim"], e["shards"]) == (97, 3, 16, 2)
    assert e["config"]["model"] == "synthetic" and e["bytes"] > 0 and e["created"]
    assert info["otherfp"]["rows"] == 0 and info["otherfp"]["dim"] is None
    with pytest.raises(CacheError, match="2 namespaces"):
        cache.export(tmp_path / "x.h5")


# ---------------------------------------------------------------- 9. no torch
def test_reading_a_cache_never_imports_torch(tmp_path):
    _fill(_ns(tmp_path), range(10))
    d = str(tmp_path / "c")
    code = "\n".join([
        "import sys",
        "import featcache.cache as c",
        f"c.FeatureCache({d!r}).namespace({FINGERPRINT!r}).read([{key_of(1)!r}])",
        "from featcache.cli import main",
        f"assert main(['info', {d!r}]) == 0",
        "assert 'torch' not in sys.modules, 'torch was imported'",
    ])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr


# ---------------------------------------------------------------- 10. CLI




# ---------------------------------------------------------------- 11. compact during reads
# A concurrent compact writes the merged shard, then removes the old ones. These tests run a
# real compaction (another process, waited for) at one exact point of a read: between the
# listing of the shards and the load of one, between a stat and the open, between the index
# build and the row read. A shard that vanished is never damage: the reader lists the shards
# again and reads the rows from the merged shard.
_COMPACT = ("import sys; sys.path.insert(0, sys.argv[1]); from cache_writer_proc import "
            "import_cache; import_cache().FeatureCache(sys.argv[2]).compact(min_shards=1)")


def _compact_now(cache_dir) -> None:
    """Compact ``cache_dir`` in another process and wait for it (every shard is replaced)."""
    out = subprocess.run([sys.executable, "-c", _COMPACT, str(pathlib.Path(__file__).parent),
                          str(cache_dir)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr


def _compact_after_listing(monkeypatch, ns, names):
    """Compact right after the first listing of ``ns`` that holds one of ``names``."""
    real, fired = files.list_shards, []

    def listing(shards_dir):
        out = real(shards_dir)
        if not fired and pathlib.Path(shards_dir) == ns.shards_dir and set(out) & set(names):
            fired.append(out)
            _compact_now(ns.cache.path)
        return out

    monkeypatch.setattr(files, "list_shards", listing)
    return fired


def _compact_before_open(monkeypatch, ns, module=shards):
    """Compact right before the first open of a shard of ``ns`` (the open then fails)."""
    real, fired = module.open_read, []

    def opener(path):
        if not fired and pathlib.Path(path).parent == ns.shards_dir:
            fired.append(pathlib.Path(path).name)
            _compact_now(ns.cache.path)
        return real(path)

    monkeypatch.setattr(module, "open_read", opener)
    return fired


def _two_shards_one_new(tmp_path):
    """A namespace whose index holds shard 1 (items 1-20), then a new shard 2 (21-40)."""
    ns = _ns(tmp_path)
    _fill(ns, range(1, 21), fail_every=0)
    assert ns.lookup([key_of(i) for i in range(1, 21)]).all()  # shard 1 is indexed
    _fill(ns, range(21, 41), fail_every=7)  # shard 2: new to the index, with failures
    new = [p.name for p in _shard_paths(ns)][1:]
    return ns, new


def test_a_new_shard_compacted_between_listing_and_load_is_read_from_the_merged_one(
        tmp_path, monkeypatch, recwarn):
    ns, new = _two_shards_one_new(tmp_path)
    keys = [key_of(i) for i in range(1, 41) if i < 21 or i % 7]
    fired = _compact_after_listing(monkeypatch, ns, new)
    np.testing.assert_array_equal(ns.read(keys), features(keys))
    assert fired and len(_shard_paths(ns)) == 1  # the race really happened
    assert not [w for w in recwarn if issubclass(w.category, CorruptShardWarning)]


def test_failures_of_a_shard_compacted_while_indexed_are_still_reported(tmp_path, monkeypatch):
    ns, new = _two_shards_one_new(tmp_path)
    fired = _compact_after_listing(monkeypatch, ns, new)
    fails = ns.failures([key_of(i) for i in range(1, 41)])
    assert fired and sorted(fails) == sorted(key_of(i) for i in (21, 28, 35))
    assert fails[key_of(28)] == ("item-28", "synthetic failure 28")


def test_a_shard_compacted_between_stat_and_open_is_not_damage(tmp_path, monkeypatch, recwarn):
    from featcache.cache import memo

    ns = _ns(tmp_path)
    _fill(ns, range(1, 61), commit_rows=20, fail_every=0)
    clear_memo()  # as a fresh process: the index build opens every shard
    keys = [key_of(i) for i in range(1, 61)]
    fired = _compact_before_open(monkeypatch, ns)
    assert ns.lookup(keys).all() and ns.rows() == 60
    np.testing.assert_array_equal(ns.read(keys), features(keys))
    assert fired and len(_shard_paths(ns)) == 1
    assert not memo.BAD and not ns.key_index().bad
    assert not [w for w in recwarn if issubclass(w.category, CorruptShardWarning)]


def test_a_shard_compacted_between_index_and_row_read_is_read_again(tmp_path, monkeypatch,
                                                                    recwarn):
    ns = _ns(tmp_path)
    _fill(ns, range(1, 61), commit_rows=20, fail_every=0)
    keys = [key_of(i) for i in range(1, 61)]
    assert ns.lookup(keys).all()  # indexed: the next read opens a shard for its rows only
    fired = _compact_before_open(monkeypatch, ns)
    np.testing.assert_array_equal(ns.read(keys[::-1]), features(keys[::-1]))
    assert fired and len(_shard_paths(ns)) == 1
    assert not [w for w in recwarn if issubclass(w.category, CorruptShardWarning)]


def test_a_shard_that_vanished_while_being_read_is_not_marked_bad(tmp_path, monkeypatch,
                                                                   recwarn):
    # On file systems that do not keep a removed file readable (NFS, SMB) the read of a shard
    # compacted away under it fails with an I/O error: the file is gone, not damaged.
    from featcache.cache import memo

    ns = _ns(tmp_path)
    _fill(ns, range(1, 61), commit_rows=20, fail_every=0)
    clear_memo()
    real, fired = shards._parse, []

    def parse(f, path, key):
        if not fired:
            fired.append(path)
            _compact_now(ns.cache.path)
            raise OSError(116, "Can't read data (file read failed: Stale file handle)")
        return real(f, path, key)

    monkeypatch.setattr(shards, "_parse", parse)
    keys = [key_of(i) for i in range(1, 61)]
    np.testing.assert_array_equal(ns.read(keys), features(keys))
    assert fired and str(fired[0]) not in memo.BAD and not ns.key_index().bad
    assert ns.cache.info()[0]["bad_shards"] == 0
    assert not [w for w in recwarn if issubclass(w.category, CorruptShardWarning)]


def test_rows_that_keep_moving_raise_a_miss_that_names_the_compaction(tmp_path, monkeypatch):
    ns = _ns(tmp_path)
    _fill(ns, range(1, 11), fail_every=0)
    keys = [key_of(i) for i in range(1, 11)]
    assert ns.lookup(keys).all()
    real = shards.open_read

    def opener(path):  # every open meets a shard whose rows just moved to a new shard
        path = pathlib.Path(path)
        if path.parent == ns.shards_dir:
            os.rename(path, path.with_name(files.new_shard_name()))
        return real(path)

    monkeypatch.setattr(shards, "open_read", opener)
    monkeypatch.setattr(time, "sleep", lambda s: None)
    with pytest.raises(CacheMissError, match="concurrent .*compact"):
        ns.read(keys)
