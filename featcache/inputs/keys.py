"""Content keys: a 16-byte blake2b key of each item's content.

Moved or renamed files keep their key, edited files lose it. File keys are memoised per process
by file identity (:data:`FILE_KEY_MEMO`), and optionally in a persistent memo kept in the cache
directory, so unchanged files are not read again. Both memos follow git's racily-clean rule
(:mod:`featcache.cache.identity`): a key is remembered only for a *settled* identity, one whose
mtime and ctime lie a safety window before the moment the file was keyed; a younger file is
hashed again next time. ``verify="hash"`` re-hashes every file whatever the memos say, for
writers that change a file without moving its timestamps (through a memory map).
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
import weakref
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from ..cache.identity import identity_of, settled
from .errors import as_input_error, input_error, pil_errors

__all__ = ["content_key", "array_key", "pil_key", "bytes_key", "stat_file", "forget",
           "FILE_KEY_MEMO", "FileProbe", "HashedFile", "probe_file", "memoised_key", "hash_file",
           "remember"]

_CHUNK = 1 << 20
_MEMO_MAX = 2_000_000
#: This process's memo of file keys: (resolved path, size, mtime_ns, inode, device, ctime_ns)
#: -> key, for settled identities only. Cleared when it reaches two million entries.
FILE_KEY_MEMO: dict[tuple, bytes] = {}
#: The persistent memos this process consulted: :func:`forget` drops a path from each.
_PERSISTENT = weakref.WeakSet()


def content_key(item, index: int, memo=None, verify: str = "stat") -> bytes:
    """Return the 16-byte blake2b content key of one item.

    Parameters
    ----------
    item, index
        One item from :func:`featcache.inputs.items.as_items` and its position in ``X``, as for
        :func:`featcache.inputs.decoding.decode`.
    memo : mapping, optional
        A persistent memo of file keys (e.g. :meth:`featcache.cache.FeatureCache.key_memo`),
        keyed like the process memo: consulted before a file is read, and given every key
        computed from a file that did not change while it was read and whose identity is
        settled (:func:`featcache.cache.identity.settled`).
    verify : {"stat", "hash"}, default="stat"
        ``"stat"``: a file whose settled identity a memo remembers is not read. ``"hash"``:
        every file is read and hashed (the memos are refreshed), for files written through a
        memory map, whose timestamps may not move.

    Returns
    -------
    bytes
        ``blake2b(digest_size=16)`` of: a file's bytes (equal to ``b2sum -l 128 FILE``),
        memoised per (resolved path, size, mtime_ns, inode, device, ctime_ns) so unchanged
        files are not re-read while any edit (new size, mtime_ns or ctime_ns) re-reads, and
        remembered only once that identity is settled (an edit within the timestamps' clock
        tick keeps it: a young file is always read); an
        array's dtype string, shape and C-contiguous bytes; a PIL image's mode, size, pixel
        bytes, palette, transparency and EXIF orientation (all that decoding uses).

    Raises
    ------
    InputError
        For anything that goes wrong while reading the item, whatever raised it.
    """
    with as_input_error(item, index, "cannot be read"):
        if isinstance(item, (str, os.PathLike)):
            return _file_key(Path(item), index, memo, verify == "hash")
        if isinstance(item, np.ndarray):
            return array_key(item)
        if isinstance(item, Image.Image):
            return pil_key(item, index)
        raise input_error(item, index, "is not an item from as_items()")


def array_key(item: np.ndarray) -> bytes:
    """Key of an array: its dtype string, shape and C-contiguous bytes."""
    h = hashlib.blake2b(digest_size=16)
    arr = np.ascontiguousarray(item)
    h.update(f"ndarray|{arr.dtype.str}|{arr.shape}|".encode())
    h.update(arr.reshape(-1).view(np.uint8))
    return h.digest()


def pil_key(item, index: int) -> bytes:
    """Key of a PIL image: mode, size, pixels, palette, transparency and EXIF orientation."""
    h = hashlib.blake2b(digest_size=16)
    with pil_errors(item, index):
        pixels = item.tobytes()
        extra = (item.getpalette(), item.info.get("transparency"), item.getexif().get(0x0112))
    h.update(f"PIL|{item.mode}|{item.size}|{extra!r}|".encode())
    h.update(pixels)
    return h.digest()


def bytes_key(data: bytes) -> bytes:
    """Key of a file's bytes (the same as :func:`content_key` of the file)."""
    return hashlib.blake2b(data, digest_size=16).digest()


def stat_file(path, item, index: int) -> os.stat_result:
    """``os.stat`` of an input file; a missing file, a directory... is the input's InputError."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise input_error(item, index, "file not found.",
                          f"Check the path (relative paths resolve against {os.getcwd()})."
                          ) from None
    except OSError as exc:
        raise input_error(item, index, f"cannot be accessed ({exc.strerror or exc}).") from None
    if not stat.S_ISREG(st.st_mode):
        raise input_error(item, index, "is not a regular file (a directory?).",
                          "Pass image files; list a directory's files first.")
    return st


def forget(item) -> None:
    """Drop a file's content key from every memo of this process and the persistent ones.

    Called when a file's memoised key proved wrong (:class:`InputChangedError`): the next
    call, in this process or another, hashes the file again. Items that are not files, and
    files that vanished, are ignored.
    """
    if not isinstance(item, (str, os.PathLike)):
        return
    path = Path(item)
    try:
        resolved = path.resolve()
        FILE_KEY_MEMO.pop(identity_of(resolved, os.stat(path)), None)
    except OSError:
        return
    for memo in list(_PERSISTENT):
        memo.forget(resolved)
        memo.save()


class FileProbe(NamedTuple):
    """A file's identity as a stat saw it, and when: what a memo is keyed by."""

    now: int  # time.time_ns() taken before the stat: the identity is settled if older
    resolved: str  # os.path.realpath of the path (what Path.resolve gives)
    identity: tuple


class HashedFile(NamedTuple):
    """A file's key, the identity it was read under, and whether a memo may keep it (the file
    did not change while it was read, and its identity is settled)."""

    key: bytes
    identity: tuple
    memoizable: bool


def probe_file(path, index: int) -> FileProbe:
    """Stat an input file (its :class:`InputError` if it is missing or not a regular file)."""
    now = time.time_ns()
    st = stat_file(path, path, index)
    resolved = os.path.realpath(path)
    return FileProbe(now, resolved, identity_of(resolved, st))


def memoised_key(probe: FileProbe, persistent=None) -> "bytes | None":
    """The key a memo (this process's, then ``persistent``) holds for the probed identity."""
    if persistent is not None:
        _PERSISTENT.add(persistent)
    key = FILE_KEY_MEMO.get(probe.identity)
    if key is None and persistent is not None:
        key = persistent.get(probe.identity)
    return key


def hash_file(path, index: int, probe: FileProbe | None = None) -> HashedFile:
    """Read and hash a file; ``probe`` (:func:`probe_file`, taken just before) spares a stat.

    Touches no memo, so it may run in another process; :func:`remember` then records the
    result where the memos live.
    """
    path = Path(path)
    probe = probe or probe_file(path, index)
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as exc:
        raise input_error(path, index, f"cannot be read ({exc.strerror or exc}).") from None
    # Remembered only when unchanged meanwhile (the identity after the read differs in inode
    # or times if another file took this path) and settled: a file changed within its
    # timestamps' clock tick of being keyed would keep this identity (git's racily clean).
    unchanged = identity_of(probe.resolved, os.stat(path)) == probe.identity
    return HashedFile(h.digest(), probe.identity, unchanged and settled(probe.identity, probe.now))


def remember(hashed: HashedFile, persistent=None, rehash: bool = False) -> None:
    """Record a :class:`HashedFile` in this process's memo (and ``persistent``) when it may be
    kept; after a ``rehash`` that may not, drop what the memo held for that identity."""
    if persistent is not None:
        _PERSISTENT.add(persistent)
    if hashed.memoizable:
        if len(FILE_KEY_MEMO) >= _MEMO_MAX:
            FILE_KEY_MEMO.clear()
        FILE_KEY_MEMO[hashed.identity] = hashed.key
        if persistent is not None:
            persistent[hashed.identity] = hashed.key
    elif rehash:
        FILE_KEY_MEMO.pop(hashed.identity, None)


def _file_key(path, index, persistent=None, rehash=False):
    probe = probe_file(path, index)
    if not rehash:
        key = memoised_key(probe, persistent)
        if key is not None:
            return key
    hashed = hash_file(path, index, probe)
    remember(hashed, persistent, rehash)
    return hashed.key
