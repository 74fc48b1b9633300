"""KeyMemo: the content keys of files, remembered in the cache directory across processes.

A content key is the hash of a file's bytes, so computing it reads the whole file. The memo
stores, per file, its identity — resolved path, size, mtime_ns, inode, device, ctime_ns (see
:mod:`featcache.cache.identity`) — and its key, so a rerun over unchanged files costs a
``stat`` per file and reads none of their bytes. Only *settled* identities are given to it
(:func:`featcache.cache.identity.settled`, decided by :mod:`featcache.inputs.keys`).

Layout and cost (bounded, whatever the memo's size)::

    CACHE_DIR/keys/<bb>/<seq>-<uuid>.km   immutable segments of one bucket

An entry lives in bucket ``<bb>``, two hex digits (256 buckets) of the hash of its resolved
path. A segment holds fixed-size records sorted by path hash, each with its own checksum, then
the paths; a lookup opens only the segments of its path's bucket and binary-searches each with
a few small reads (:data:`KeyMemo.reads` counts them), so it never reads the memo, nor even a
whole bucket. A save writes one small segment per bucket touched; a bucket that reaches
:data:`MERGE_AT` segments is merged into one (only that bucket is rewritten), keeping the last
entry recorded per path. ``compact`` (:func:`prune`) merges every bucket and drops the entries
whose path no longer has that identity. :meth:`KeyMemo.forget` records a tombstone: the path's
entries are dropped by readers at once and removed at the next merge (an input that raised
:class:`~featcache.exceptions.InputChangedError` is hashed again next time).

Damage is never trusted: a segment whose header, size or (per record) checksum does not match
is ignored, and its keys are computed again. Segments are written to a temporary name and
renamed; they are not fsync'ed (a torn one fails its checksums and is ignored).
Standard library and numpy only.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import struct
import threading
import time
import uuid

import numpy as np

from .identity import identity_of

__all__ = ["KeyMemo", "KEYS_DIR", "MERGE_AT", "BUCKETS", "prune"]

KEYS_DIR = "keys"
#: A bucket that holds this many segments is merged into one at the next save touching it.
MERGE_AT = 16
#: Number of buckets (two hex digits of the path hash).
BUCKETS = 256

_MAGIC = b"FCKEYS02"
_HEADER = struct.Struct("<8sQQ16s")  # magic, records, bytes of paths, blake2b of the body
_RECORD = np.dtype([("hash", ">u8"), ("hash2", ">u8"), ("stat", "<u8", (5,)), ("key", "V16"),
                    ("flag", "u1"), ("pad", "V7"), ("check", "V8")])
_CHECKED = _RECORD.itemsize - 8  # bytes each record's own checksum covers
_LIVE, _DEAD = 0, 1  # flag: an entry; a tombstone (forget the path's older entries)
_SEGMENT_RE = re.compile(r"^(\d{20})-[0-9a-f]{32}\.km$")
_TMP_PREFIX = ".tmp-"
_BUCKET_RE = re.compile(r"^[0-9a-f]{2}$")
_SMALL = 64  # segments of up to this many records are read at once, larger ones searched
_U64 = (1 << 64) - 1


def _path_hash(path: str) -> bytes:
    return hashlib.blake2b(os.fsencode(path), digest_size=16).digest()


def _bucket(phash: bytes) -> str:
    return f"{phash[0] % BUCKETS:02x}"


def _stat_words(identity) -> tuple:
    return tuple(int(v) & _U64 for v in identity[1:6])


class KeyMemo:
    """Mapping of file identity -> 16-byte content key, backed by the cache directory.

    ``get`` consults the memo's segments of the identity's bucket (a bucket's listing is read
    once, and again after each :meth:`save`); ``memo[identity] = key`` records a new key and
    :meth:`forget` drops a path's entries, which :meth:`save` writes. Thread-safe.

    Attributes
    ----------
    reads : dict
        Counts of ``"segments"`` opened and ``"records"`` read by this object's lookups
        (structural facts for tests and benchmarks): at most :data:`MERGE_AT` segments of one
        bucket per lookup, and a binary search's few records in each.
    """

    def __init__(self, cache_dir):
        self.dir = pathlib.Path(cache_dir) / KEYS_DIR
        self._new: dict = {}  # bucket -> list of (phash, stat words, key or None, path)
        self._listings: dict = {}  # bucket -> segment names, newest first
        self._lock = threading.Lock()
        self.reads = {"segments": 0, "records": 0}

    def get(self, identity, default=None):
        """The key remembered for ``identity`` (a tuple of the file's identity), or default."""
        phash, words = _path_hash(identity[0]), _stat_words(identity)
        bucket = _bucket(phash)
        with self._lock:
            for entry in reversed(self._new.get(bucket, ())):
                if entry[0] == phash and (entry[2] is None or entry[1] == words):
                    return default if entry[2] is None else entry[2]
            for attempt in range(2):
                try:
                    found = self._search_bucket(bucket, phash, words)
                except FileNotFoundError:  # merged away meanwhile: list the bucket again
                    self._listings.pop(bucket, None)
                    continue
                return default if found is None else found
        return default

    def __setitem__(self, identity, key: bytes) -> None:
        phash = _path_hash(identity[0])
        with self._lock:
            self._new.setdefault(_bucket(phash), []).append(
                (phash, _stat_words(identity), bytes(key), str(identity[0])))

    def forget(self, path) -> None:
        """Drop every entry of ``path`` (a resolved path): now here, for others at :meth:`save`."""
        phash = _path_hash(str(path))
        with self._lock:
            self._new.setdefault(_bucket(phash), []).append((phash, (0,) * 5, None, str(path)))

    def __len__(self) -> int:
        """Entries recorded here and not saved yet."""
        return sum(len(v) for v in self._new.values())

    def save(self) -> None:
        """Write what was recorded since the last save: one segment per bucket (best effort).

        A bucket that then holds :data:`MERGE_AT` segments or more is merged into one.
        """
        with self._lock:
            new, self._new = self._new, {}
            self._listings.clear()
        for bucket, entries in new.items():
            try:
                folder = self.dir / bucket
                folder.mkdir(parents=True, exist_ok=True)
                _write_segment(folder, entries)
                names = _list_segments(folder)
                if len(names) >= MERGE_AT:
                    _merge(folder, names)
            except OSError:
                pass  # a read-only or full disk: the keys are computed again next time

    def _search_bucket(self, bucket, phash, words):
        names = self._listings.get(bucket)
        if names is None:
            names = self._listings[bucket] = _list_segments(self.dir / bucket)[::-1]
        for name in names:  # newest first: the last word on a path wins
            self.reads["segments"] += 1
            try:
                records, n_read = _search_segment(self.dir / bucket / name, phash)
            except FileNotFoundError:
                raise
            except OSError:  # unreadable: as if absent (the key is computed again)
                continue
            self.reads["records"] += n_read
            for record in records[::-1]:
                if record["flag"] == _DEAD:
                    return None
                if tuple(int(v) for v in record["stat"]) == words:
                    return record["key"].tobytes()
        return None


# ---------------------------------------------------------------- segments
def _list_segments(folder) -> list:
    """Segment names of one bucket, oldest first."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if _SEGMENT_RE.match(n))


def _records(entries) -> tuple:
    """(sorted record array, paths) of ``(phash, stat words, key or None, path)`` entries."""
    n = len(entries)
    records = np.zeros(n, dtype=_RECORD)
    hashes = np.frombuffer(b"".join(e[0] for e in entries), dtype=">u8").reshape(n, 2)
    records["hash"], records["hash2"] = hashes[:, 0], hashes[:, 1]
    records["stat"] = np.array([e[1] for e in entries], dtype=np.uint64).reshape(n, 5)
    records["key"] = np.frombuffer(b"".join(e[2] or bytes(16) for e in entries),
                                   dtype="V16")
    records["flag"] = [_LIVE if e[2] is not None else _DEAD for e in entries]
    order = np.lexsort((records["hash2"], records["hash"]))  # stable: a path keeps its order
    records = records[order]
    raw = records.view(np.uint8).reshape(n, _RECORD.itemsize)
    if n:
        raw[:, _CHECKED:] = _checks(raw)
    return records, [entries[i][3] for i in order]


def _checks(raw) -> np.ndarray:
    """Each record's 8-byte blake2b of its first :data:`_CHECKED` bytes."""
    data = raw.tobytes()
    size = _RECORD.itemsize
    sums = b"".join(hashlib.blake2b(data[i:i + _CHECKED], digest_size=8).digest()
                    for i in range(0, len(data), size))
    return np.frombuffer(sums, dtype=np.uint8).reshape(len(raw), 8)


def _write_segment(folder, entries, seq=None) -> pathlib.Path:
    records, paths = _records(entries)
    blob = b"".join(os.fsencode(p) + b"\0" for p in paths)
    body = records.tobytes() + blob
    header = _HEADER.pack(_MAGIC, len(records), len(blob),
                          hashlib.blake2b(body, digest_size=16).digest())
    seq = time.time_ns() if seq is None else seq
    final = pathlib.Path(folder) / f"{seq:020d}-{uuid.uuid4().hex}.km"
    tmp = pathlib.Path(folder) / f"{_TMP_PREFIX}{uuid.uuid4().hex}.km"
    try:
        with open(tmp, "xb") as f:
            f.write(header + body)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def _header(fd, size):
    """(records, bytes of paths, body checksum) of an open segment, or None when damaged."""
    head = os.pread(fd, _HEADER.size, 0)
    if len(head) != _HEADER.size:
        return None
    magic, n, blob, check = _HEADER.unpack(head)
    if magic != _MAGIC or size != _HEADER.size + n * _RECORD.itemsize + blob:
        return None
    return n, blob, check


def _valid(records):
    """The records whose own checksum matches (a damaged record is ignored)."""
    if not len(records):
        return records
    raw = records.view(np.uint8).reshape(len(records), _RECORD.itemsize)
    return records[(_checks(raw) == raw[:, _CHECKED:]).all(axis=1)]


def _search_segment(path, phash) -> tuple:
    """(valid records of ``phash`` in segment order, records read): a few small reads."""
    with open(path, "rb") as f:
        fd = f.fileno()
        info = _header(fd, os.fstat(fd).st_size)
        if info is None:
            return np.zeros(0, _RECORD), 0
        n = info[0]

        def read(lo, hi):
            data = os.pread(fd, (hi - lo) * _RECORD.itemsize, _HEADER.size + lo * _RECORD.itemsize)
            return np.frombuffer(data, dtype=_RECORD, count=len(data) // _RECORD.itemsize)

        target = (int.from_bytes(phash[:8], "big"), int.from_bytes(phash[8:], "big"))
        if n <= _SMALL:
            chunk = read(0, n)
            match = chunk[(chunk["hash"] == target[0]) & (chunk["hash2"] == target[1])]
            return _valid(match), n
        lo, hi, reads = 0, n, 0
        while lo < hi:  # first record whose hash is >= target
            mid = (lo + hi) // 2
            rec = read(mid, mid + 1)[0]
            reads += 1
            if (int(rec["hash"]), int(rec["hash2"])) < target:
                lo = mid + 1
            else:
                hi = mid
        end = lo
        while end < n:  # the records of this path follow (a few: one after a merge)
            chunk = read(end, min(end + 8, n))
            reads += len(chunk)
            same = (chunk["hash"] == target[0]) & (chunk["hash2"] == target[1])
            end += len(chunk) if same.all() else int(np.argmin(same))
            if not same.all():
                break
        return _valid(read(lo, end)), reads


def _read_segment(path) -> list:
    """Entries ``(phash, stat words, key or None, path)`` of a whole segment; [] when damaged."""
    try:
        with open(path, "rb") as f:
            fd = f.fileno()
            info = _header(fd, os.fstat(fd).st_size)
            if info is None:
                return []
            n, blob, check = info
            body = os.pread(fd, n * _RECORD.itemsize + blob, _HEADER.size)
    except (FileNotFoundError, IsADirectoryError):
        return []
    if hashlib.blake2b(body, digest_size=16).digest() != check:
        return []
    records = np.frombuffer(body, dtype=_RECORD, count=n)
    paths = [os.fsdecode(p) for p in body[n * _RECORD.itemsize:].split(b"\0")[:n]]
    if len(paths) != n:
        return []
    return [(int(r["hash"]).to_bytes(8, "big") + int(r["hash2"]).to_bytes(8, "big"),
             tuple(int(v) for v in r["stat"]),
             r["key"].tobytes() if r["flag"] == _LIVE else None, p)
            for r, p in zip(records, paths)]


def _fold(folder, names) -> tuple:
    """(path hash -> its last live entry, entries read), over ``names`` in order.

    A tombstone drops the path's entries before it.
    """
    live: dict = {}
    read = 0
    for name in names:
        for entry in _read_segment(folder / name):
            if entry[2] is None:
                live.pop(entry[0], None)
            else:
                live[entry[0]] = entry
                read += 1
    return live, read


def _merge(folder, names, keep=None) -> tuple:
    """Replace segments ``names`` of one bucket by one; (entries read, entries kept).

    Per path only the last entry recorded is kept; ``keep(entry)`` may drop more. The merged
    segment takes the newest merged one's sequence number, so segments written meanwhile
    still sort after it.
    """
    folder = pathlib.Path(folder)
    live, read = _fold(folder, names)
    entries = [e for e in live.values() if keep is None or keep(e)]
    if entries:
        _write_segment(folder, entries, seq=int(_SEGMENT_RE.match(names[-1]).group(1)))
    for name in names:
        (folder / name).unlink(missing_ok=True)
    return read, len(entries)


def _still_there(entry) -> bool:
    """Whether the entry's path still has the entry's identity."""
    try:
        st = os.stat(entry[3])
    except OSError:
        return False
    return _stat_words(identity_of(entry[3], st)) == entry[1]


def prune(cache_dir, stale_tmp_seconds: float = 900.0) -> dict:
    """Merge every bucket of the key memo and drop entries whose path lost that identity.

    Each remembered path is ``stat``-ed: an entry is kept only when the path still has the
    recorded identity, and only the last one recorded per path. Tombstones are applied; memo
    files of older formats and temporary files older than ``stale_tmp_seconds`` are removed.
    Returns ``{"key_entries_before", "key_entries_after", "key_entries_pruned"}`` (entries
    read from every segment, entries kept, the difference).
    """
    root = pathlib.Path(cache_dir) / KEYS_DIR
    before = after = 0
    try:
        names = sorted(os.listdir(root))
    except (FileNotFoundError, NotADirectoryError):
        names = []
    now = time.time()
    for name in names:
        path = root / name
        if _BUCKET_RE.match(name) and path.is_dir():
            for tmp in path.glob(_TMP_PREFIX + "*"):
                _remove_if_old(tmp, now, stale_tmp_seconds)
            segments = _list_segments(path)
            if segments:
                b, a = _merge(path, segments, keep=_still_there)
                before, after = before + b, after + a
        elif name.endswith(".h5") and path.is_file():  # the memo's first format: never trusted
            path.unlink(missing_ok=True)
        elif name.startswith(".tmp-"):
            _remove_if_old(path, now, stale_tmp_seconds)
    return {"key_entries_before": before, "key_entries_after": after,
            "key_entries_pruned": before - after}


def _remove_if_old(path, now, older_than) -> None:
    try:
        if now - path.stat().st_mtime >= older_than:
            path.unlink()
    except OSError:
        pass
