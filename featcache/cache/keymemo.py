"""KeyMemo: the content keys of files, remembered in the cache directory across processes.

A content key is the hash of a file's bytes, so computing it reads the whole file. The memo
stores, per file, its identity — resolved path, size, mtime_ns, inode, device, ctime_ns, the
rule the in-process memo of :mod:`featcache.inputs` uses — and its key, in immutable HDF5
files ``CACHE_DIR/keys/<seq>-<uuid>.h5`` written atomically like shards. A rerun over
unchanged files then costs a ``stat`` per file and reads none of their bytes; any edit changes
the size, mtime or ctime (a user cannot set ctime), and a replaced file has another inode,
so an edited file is read and hashed again. Reading a memo file checks its sizes first (a
damaged file is ignored: keys are recomputed).
"""

from __future__ import annotations

import os
import pathlib
import threading

import numpy as np

from ..exceptions import CacheCorruptError
from . import files, shards
from .checks import get_dataset

__all__ = ["KeyMemo", "KEYS_DIR", "MERGE_AT"]

KEYS_DIR = "keys"
#: When a cache holds this many memo files, the next save merges them into one.
MERGE_AT = 16


class KeyMemo:
    """Mapping of file identity -> 16-byte content key, backed by the cache directory.

    ``get`` consults the memo files (new ones are read on the first ``get`` after each
    :meth:`save`); ``memo[identity] = key`` records a new key, which :meth:`save` writes.
    Thread-safe.
    """

    def __init__(self, cache_dir):
        self.dir = pathlib.Path(cache_dir) / KEYS_DIR
        self._known: dict = {}
        self._new: dict = {}
        self._read: set = set()
        self._fresh = False
        self._lock = threading.Lock()

    def get(self, identity, default=None):
        """The key remembered for ``identity`` (a tuple of the file's identity), or default."""
        with self._lock:
            if not self._fresh:
                self._refresh()
            return self._known.get(identity, default)

    def __setitem__(self, identity, key: bytes) -> None:
        with self._lock:
            self._known[identity] = key
            self._new[identity] = key

    def __len__(self) -> int:
        return len(self._known)

    def save(self) -> None:
        """Write the keys recorded since the last save as one new memo file (best effort)."""
        with self._lock:
            new, self._new, self._fresh = self._new, {}, False
        if not new:
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            names = files.list_shards(self.dir)
            if len(names) + 1 >= MERGE_AT:
                self._refresh_locked()
                self._write(dict(self._known))
                for name in names:
                    (self.dir / name).unlink(missing_ok=True)
            else:
                self._write(new)
        except OSError:
            pass  # a read-only or full disk: the keys are computed again next time

    def _refresh_locked(self) -> None:
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        for name in files.list_shards(self.dir):
            if name not in self._read:
                self._read.add(name)
                self._known.update(_read_file(self.dir / name))
        self._fresh = True

    def _write(self, entries: dict) -> None:
        paths = [identity[0] for identity in entries]
        stats = np.array([identity[1:] for identity in entries], dtype=np.int64).reshape(-1, 5)
        keys = np.frombuffer(b"".join(entries.values()), dtype=np.uint8).reshape(-1, 16)
        final = self.dir / files.new_shard_name()
        with files.atomic_h5(final) as f:
            f.create_dataset("paths", data=files.text_array(paths), dtype=files.STR_DTYPE)
            f.create_dataset("stats", data=stats)
            f.create_dataset("keys", data=keys)
        with self._lock:
            self._read.add(final.name)


def _read_file(path) -> dict:
    """Entries of one memo file; {} when it vanished or is damaged (never trusted blindly)."""
    try:
        size = os.stat(path).st_size
        with files.open_read(path) as f:
            n = f["keys"].shape[0] if "keys" in f and f["keys"].ndim == 2 else -1
            keys = get_dataset(f, "keys", path, size, (n, 16), np.dtype(np.uint8), "key memo")
            stats = get_dataset(f, "stats", path, size, (n, 5), np.dtype(np.int64), "key memo")
            names = get_dataset(f, "paths", path, size, (n,), None, "key memo")
            keys, stats, names = keys[()], stats[()], shards.str_list(names)
    except (OSError, CacheCorruptError, KeyError, ValueError, TypeError):
        return {}
    return {(name, *map(int, row)): key.tobytes() for name, row, key in zip(names, stats, keys)}
