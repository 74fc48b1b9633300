"""Tests for featcache.cache.keymemo: a rerun over unchanged files reads none of their bytes,
a memo answers only for settled identities, an InputChangedError does not stick, and a
lookup or a save costs the same whatever the memo's size."""

import hashlib
import mmap
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from featcache import FrozenBackbone, inputs
from featcache.inputs import keys
from featcache.cache import FeatureCache, keymemo
from featcache.cache.identity import identity_of
from featcache.engine.unit_of_work import content_keys

KEYS_OF = """
import sys
from featcache.cache import FeatureCache
from featcache.engine.unit_of_work import content_keys
found, _ = content_keys(sys.argv[2:], memo=FeatureCache(sys.argv[1]).key_memo())
print(" ".join(k.hex() for k in found))
"""

EMBED = """
import sys
from featcache import FrozenBackbone
b = FrozenBackbone(image_size=32, cache=sys.argv[1], on_error=sys.argv[2])
b.fit_transform(sys.argv[3:])
print(b.transform_stats_["computed"], b.transform_stats_["failed"])
"""


@pytest.fixture
def noisy_files(tmp_path):
    """20 PNG files of about 1 MB each (random noise does not compress)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "files"
    folder.mkdir()
    paths = []
    for i in range(20):
        path = folder / f"{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (580, 580, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture
def two_pngs(xray, tmp_path):
    images, _ = xray
    paths = []
    for i in (0, 40):
        path = tmp_path / f"x{i}.png"
        Image.fromarray(images[i]).save(path)
        paths.append(str(path))
    return paths


def _python(code, *args, check=True):
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, timeout=300, check=check)


def _identity(path):
    return identity_of(os.path.realpath(path), os.stat(path))


def _entry(i, path="/x/{}.png"):
    key = hashlib.blake2b(str(i).encode(), digest_size=16).digest()
    return (path.format(i), i, 1, 2, 3, 4), key


def _fill(memo, start, stop, path="/x/{}.png"):
    for i in range(start, stop):
        identity, key = _entry(i, path)
        memo[identity] = key
    memo.save()


def _segments(cache_dir):
    return sorted((cache_dir / keymemo.KEYS_DIR).glob("*/*.km"))


def test_a_new_process_over_unchanged_files_reads_almost_none_of_their_bytes(noisy_files, tmp_path):
    cache = tmp_path / "c"
    FrozenBackbone(image_size=32, cache=cache).fit_transform(noisy_files)
    total = sum(os.path.getsize(p) for p in noisy_files)
    code = f"""
import sys
from featcache import FrozenBackbone
paths = {noisy_files!r}
def rchar():
    return int(next(l for l in open('/proc/self/io') if l.startswith('rchar')).split()[1])
b = FrozenBackbone(image_size=32, cache={str(cache)!r}).fit(paths)
before = rchar()
b.transform(paths)
print(rchar() - before, b.transform_stats_['computed'])
"""
    run = _python(code)
    read, computed = map(int, run.stdout.split())
    assert computed == 0 and read < 0.05 * total, (read, total)


def test_an_edited_file_is_read_again(noisy_files, tmp_path):
    cache = tmp_path / "c"
    FrozenBackbone(image_size=32, cache=cache).fit_transform(noisy_files[:3])
    inputs.FILE_KEY_MEMO.clear()  # as a new process
    target = noisy_files[0]
    st = os.stat(target)
    data = bytearray(open(target, "rb").read())
    Image.fromarray(np.zeros((580, 580, 3), np.uint8)).save(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime restored: ctime still moves
    backbone = FrozenBackbone(image_size=32, cache=cache)
    backbone.fit_transform(noisy_files[:3])
    assert backbone.transform_stats_["computed"] == 1
    assert bytes(data) != open(target, "rb").read()


# ---------------------------------------------------------------- racily clean identities
def test_a_file_rewritten_through_its_map_is_keyed_again_by_a_new_process(tmp_path, monkeypatch):
    """The issue's reproduction: writes through a mapping that is already dirty move no
    timestamp, so the identity stays; keyed while young, it is not remembered."""
    monkeypatch.setenv("FEATCACHE_RACY_WINDOW", "600")  # inherited by the subprocesses
    cache, path = tmp_path / "c", tmp_path / "mapped.bin"
    FeatureCache(cache)
    path.write_bytes(bytes(1 << 16))
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as mapped:
        mapped[:] = b"A" * len(mapped)
        first = _python(KEYS_OF, cache, path).stdout.split()
        mapped[:] = b"B" * len(mapped)  # the same pages, already dirty: no page fault
        second = _python(KEYS_OF, cache, path).stdout.split()
    assert first == [hashlib.blake2b(b"A" * (1 << 16), digest_size=16).hexdigest()]
    assert second == [hashlib.blake2b(b"B" * (1 << 16), digest_size=16).hexdigest()]
    assert not _segments(cache)  # nothing young was remembered


def test_a_young_file_is_remembered_once_settled(tmp_path, monkeypatch):
    cache, path = tmp_path / "c", tmp_path / "a.bin"
    FeatureCache(cache)
    path.write_bytes(b"content")
    old = os.stat(path).st_mtime_ns - 7200 * 10**9
    os.utime(path, ns=(old, old))  # an old mtime; the ctime cannot be set back: still young
    monkeypatch.setenv("FEATCACHE_RACY_WINDOW", "600")
    _python(KEYS_OF, cache, path)
    assert keymemo.KeyMemo(cache).get(_identity(path)) is None
    monkeypatch.setenv("FEATCACHE_RACY_WINDOW", "0")  # now it counts as old enough
    out = _python(KEYS_OF, cache, path).stdout.split()
    assert keymemo.KeyMemo(cache).get(_identity(path)).hex() == out[0]


# ---------------------------------------------------------------- InputChangedError
def test_an_input_changed_error_does_not_stick_across_processes(two_pngs, tmp_path):
    """A memo entry whose key proved wrong (what a same-second rewrite leaves) is dropped:
    the next process hashes the file again instead of raising again."""
    cache = tmp_path / "c"
    FeatureCache(cache)
    memo = keymemo.KeyMemo(cache)
    memo[_identity(two_pngs[0])] = b"\x01" * 16
    memo.save()
    first = _python(EMBED, cache, "raise", *two_pngs, check=False)
    assert first.returncode != 0 and "changed while featcache" in first.stderr, first.stderr
    second = _python(EMBED, cache, "raise", *two_pngs, check=False)
    assert second.returncode == 0, second.stderr
    assert second.stdout.split() == ["2", "0"]


def test_an_input_changed_error_drops_the_entry_in_process_too(two_pngs, tmp_path):
    cache = tmp_path / "c"
    identity = _identity(two_pngs[0])
    keys.FILE_KEY_MEMO[identity] = b"\x02" * 16
    FeatureCache(cache).key_memo()[identity] = b"\x02" * 16
    backbone = FrozenBackbone(image_size=32, cache=cache, on_error="skip")
    backbone.fit_transform(two_pngs)
    assert "changed while featcache" in backbone.failures_[0]
    assert identity not in keys.FILE_KEY_MEMO
    assert keymemo.KeyMemo(cache).get(identity) is None
    assert FeatureCache(cache).key_memo().get(identity) is None
    backbone.transform(two_pngs)
    assert backbone.failures_ == {} and backbone.transform_stats_["computed"] == 1


# ---------------------------------------------------------------- the switch
@pytest.mark.parametrize("verify_inputs", ["stat", "hash"])
def test_verify_inputs_hash_rereads_what_the_memo_remembers(two_pngs, tmp_path, verify_inputs):
    """The residual case (a writer through a long-lived map leaves a settled identity with
    new bytes) serves a remembered row; verify_inputs="hash" reads the file's own."""
    a, b = two_pngs
    cache = tmp_path / "c"
    rows = FrozenBackbone(image_size=32, cache=cache).fit_transform([a, b])
    for memo in (keys.FILE_KEY_MEMO, FeatureCache(cache).key_memo()):
        memo[_identity(a)] = inputs.content_key(b, 1)  # a now "has" b's bytes
    backbone = FrozenBackbone(image_size=32, cache=cache, verify_inputs=verify_inputs)
    got = backbone.fit_transform([a])
    expected = rows[1] if verify_inputs == "stat" else rows[0]
    np.testing.assert_array_equal(got[0], expected)
    assert backbone.transform_stats_["computed"] == 0


# ---------------------------------------------------------------- bounded
def test_a_lookup_opens_one_bucket_whatever_the_memo_size(tmp_path):
    small, large = tmp_path / "small", tmp_path / "large"
    costs = {}
    for where, n in ((small, 300), (large, 30_000)):
        memo = keymemo.KeyMemo(where)
        _fill(memo, 0, n)
        fresh = keymemo.KeyMemo(where)
        identity, key = _entry(n // 2)
        assert fresh.get(identity) == key
        assert fresh.get(_entry(n + 1)[0]) is None  # a new file
        costs[n] = dict(fresh.reads)
        buckets = {p.parent.name for p in _segments(where)}
        assert len(buckets) > 0.6 * min(n, keymemo.BUCKETS)  # spread over the buckets
    assert costs[300]["segments"] == costs[30_000]["segments"] == 2  # one segment per bucket
    assert costs[30_000]["records"] <= 2 * 16 + 2 * 8  # binary search, not the ~117 there


def test_a_save_writes_one_small_segment_and_merges_only_a_full_bucket(tmp_path):
    memo = keymemo.KeyMemo(tmp_path)
    _fill(memo, 0, 5000)
    before = {p: p.stat().st_mtime_ns for p in _segments(tmp_path)}
    identity, key = _entry(10**6)
    memo[identity] = key
    memo.save()
    after = _segments(tmp_path)
    added = [p for p in after if p not in before]
    assert len(added) == 1 and len(after) == len(before) + 1
    assert added[0].stat().st_size < 200  # header, one record, its path
    bucket = added[0].parent
    for i in range(keymemo.MERGE_AT):  # fill that bucket up to the merge
        memo[(identity[0], 10 + i, 1, 2, 3, 4)] = key
        memo.save()
    assert len(list(bucket.glob("*.km"))) < keymemo.MERGE_AT
    untouched = [p for p in before if p.parent != bucket]
    assert all(p.exists() and p.stat().st_mtime_ns == before[p] for p in untouched)
    fresh = keymemo.KeyMemo(tmp_path)
    assert fresh.get((identity[0], 10 + keymemo.MERGE_AT - 1, 1, 2, 3, 4)) == key
    assert fresh.get(_entry(77)[0]) == _entry(77)[1]


def test_regenerated_files_leave_one_entry_per_path(tmp_path):
    """50 files regenerated 20 times: a merge keeps the last identity recorded per path."""
    memo = keymemo.KeyMemo(tmp_path)
    for generation in range(20):
        for i in range(50):
            memo[(f"/data/{i}.png", generation, 1, 2, 3, 4)] = bytes([generation]) * 16
        memo.save()
    fresh = keymemo.KeyMemo(tmp_path)
    assert all(fresh.get((f"/data/{i}.png", 19, 1, 2, 3, 4)) == bytes([19]) * 16 for i in range(50))
    bucket = max(_segments(tmp_path), key=lambda p: p.stat().st_size).parent
    assert len(keymemo._fold(bucket, keymemo._list_segments(bucket))[0]) <= 3  # one per path
    stats = keymemo.prune(tmp_path)  # and these paths do not exist: all pruned
    assert 50 <= stats["key_entries_before"] <= 1000 and stats["key_entries_after"] == 0


def test_forget_hides_a_paths_entries_elsewhere_and_a_merge_removes_them(tmp_path):
    memo = keymemo.KeyMemo(tmp_path)
    _fill(memo, 0, 100)
    identity, key = _entry(7)
    other = keymemo.KeyMemo(tmp_path)
    assert other.get(identity) == key
    memo.forget(identity[0])
    assert memo.get(identity) is None  # at once here
    memo.save()
    assert keymemo.KeyMemo(tmp_path).get(identity) is None  # and for everyone after the save
    assert keymemo.KeyMemo(tmp_path).get(_entry(8)[0]) == _entry(8)[1]
    memo[identity] = key  # recorded again later: it counts again
    memo.save()
    assert keymemo.KeyMemo(tmp_path).get(identity) == key


def test_damaged_segments_and_records_are_ignored(tmp_path):
    memo = keymemo.KeyMemo(tmp_path)
    _fill(memo, 0, 3000)
    identity, key = _entry(5)
    assert keymemo.KeyMemo(tmp_path).get(identity) == key
    bucket = tmp_path / keymemo.KEYS_DIR / keymemo._bucket(keymemo._path_hash(identity[0]))
    (segment,) = bucket.glob("*.km")
    data = bytearray(segment.read_bytes())
    pos = data.find(key)
    data[pos] ^= 0xFF  # one damaged record: its key is not served
    segment.write_bytes(bytes(data))
    assert keymemo.KeyMemo(tmp_path).get(identity) is None
    assert keymemo._read_segment(segment) == []  # a merge drops the whole damaged segment
    for body in (b"garbage", bytes(data[:-3]), b""):
        segment.write_bytes(body)
        assert keymemo.KeyMemo(tmp_path).get(identity) is None
    assert keymemo.KeyMemo(tmp_path).get(_entry(6)[0]) in (None, _entry(6)[1])


def test_memo_files_of_the_first_format_are_not_trusted(tmp_path):
    """The first memo format (keys/*.h5) may hold identities keyed while young: ignored."""
    import h5py

    from featcache.cache import files

    path = tmp_path / "a.bin"
    path.write_bytes(b"new content")
    identity = _identity(path)
    folder = tmp_path / "c" / keymemo.KEYS_DIR
    folder.mkdir(parents=True)
    with h5py.File(folder / files.new_shard_name(), "w") as f:
        f["paths"] = np.array([identity[0]], dtype=object).astype(files.STR_DTYPE)
        f["stats"] = np.array([identity[1:]], dtype=np.int64)
        f["keys"] = np.frombuffer(b"\x03" * 16, np.uint8).reshape(1, 16)
    assert keymemo.KeyMemo(tmp_path / "c").get(identity) is None
    found, _ = content_keys([path], memo=keymemo.KeyMemo(tmp_path / "c"))
    assert found[0] == hashlib.blake2b(b"new content", digest_size=16).digest()
