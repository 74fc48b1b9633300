"""Process-wide memo of the cache: shard metadata, damaged shards and key indices.

Shared by every :class:`~featcache.cache.Namespace` of a process (and its threads, under
:data:`LOCK`), so a shard's keys are read and its checksum verified once per process.
"""

from __future__ import annotations

import pathlib
import threading

import numpy as np

from ..exceptions import CacheCorruptError, CacheValueError
from . import shards


# ---------------------------------------------------------------- process-wide memo
LOCK = threading.RLock()


SHARD_INFO: dict = {}     # str(path) -> ShardInfo


BAD: dict = {}      # str(path) -> (stat_key, message)


INDEXES: dict = {}  # (str(namespace dir), checksum) -> KeyIndex


WARNED: set = set()  # damaged shards already warned about (once per process)


NS_LOCKS: dict = {}  # namespace key -> lock serialising its index refreshes


def clear_memo() -> None:
    """Forget memoised shard metadata and key indices (re-reads and re-verifies shards)."""
    with LOCK:
        SHARD_INFO.clear()
        BAD.clear()
        INDEXES.clear()
        WARNED.clear()


def load(path: pathlib.Path, fingerprint: str, checksum: bool):
    """Memoised :func:`shards.load_shard`: a ShardInfo, or the error message of a bad shard.

    Raises
    ------
    FileNotFoundError
        The shard vanished (a concurrent ``compact`` merged it, or it was removed): it is
        forgotten, never remembered as bad; list the shards again to find its rows.
    """
    p = str(path)
    try:
        key = shards.stat_key(path)
    except FileNotFoundError:
        forget([p])
        raise
    with LOCK:
        info, bad = SHARD_INFO.get(p), BAD.get(p)
    if info is not None and info.stat_key == key and (info.checksum_ok or not checksum):
        return info
    if bad is not None and bad[0] == key:
        return bad[1]
    try:
        info = shards.load_shard(path, fingerprint, check_checksum=checksum)
    except FileNotFoundError:
        forget([p])
        raise
    except CacheCorruptError as exc:
        with LOCK:
            BAD[p] = (key, str(exc))
        return str(exc)
    remember(info)
    return info


def forget(paths) -> None:
    """Forget what the memo holds about shards that are gone (metadata, damage, warnings)."""
    with LOCK:
        for p in map(str, paths):
            SHARD_INFO.pop(p, None)
            BAD.pop(p, None)
            WARNED.discard(p)


def remember(info) -> None:
    with LOCK:
        SHARD_INFO[str(info.path)] = info
        BAD.pop(str(info.path), None)


def as_keys(keys) -> np.ndarray:
    """Keys (sequence of 16-byte bytes, or an (n, 16) uint8 array) -> (n, 16) uint8."""
    if isinstance(keys, np.ndarray) and keys.dtype == np.uint8 and keys.ndim == 2:
        if keys.shape[1] != 16:
            raise CacheValueError(f"a key array must have shape (n, 16), got {keys.shape}")
        return np.ascontiguousarray(keys)
    if isinstance(keys, (bytes, bytearray, str)):
        raise CacheValueError("keys must be a sequence of 16-byte keys, got a single "
                              f"{type(keys).__name__}; wrap it in a list")
    keys = list(keys)
    try:
        lengths = set(map(len, keys))
        joined = b"".join(keys)
    except TypeError:
        bad = next(k for k in keys if not isinstance(k, (bytes, bytearray, memoryview)))
        raise CacheValueError(f"keys must be bytes (16-byte content keys), got {bad!r}") from None
    if lengths - {16}:
        raise CacheValueError(f"keys must be 16 bytes long (blake2b-128 content keys), got "
                              f"lengths {sorted(lengths - {16})}")
    return np.frombuffer(joined, dtype=np.uint8).reshape(-1, 16)


def mark_bad(path, message: str) -> None:
    try:
        key = shards.stat_key(path)
    except OSError:
        return
    with LOCK:
        SHARD_INFO.pop(str(path), None)
        BAD[str(path)] = (key, message)


def ns_lock(key) -> threading.RLock:
    with LOCK:
        return NS_LOCKS.setdefault(key, threading.RLock())
