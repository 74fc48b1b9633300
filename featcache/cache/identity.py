"""File identities, and when a memo keyed by one may trust it (git's "racily clean" rule).

A memo that maps a file's identity — resolved path, size, mtime_ns, inode, device, ctime_ns —
to something computed from its bytes (a content key, a weights digest, a resolved
configuration) is only right while every change of the bytes changes the identity. That
fails for a file changed *soon after* its identity was taken: timestamps come from a coarse
clock (1 s on FAT, HFS+ and many NFS/SMB servers, 2 s for FAT's mtime; a kernel tick on
ext4/tmpfs), so an in-place rewrite, or a delete and create that reuses the inode, within
the same tick keeps the identity. An identity is therefore trusted only once it is
**settled**: its mtime and ctime lie at least :func:`racy_window_ns` before the moment it
was taken. A memo records only settled identities; a young file is hashed again next time,
and remembered once it is old enough.

Residual case (documented in ``docs/concepts.md``): a writer that keeps a memory map open
and writes through it long after the file settled may not move its timestamps at all. Users
who have such writers pass ``verify_inputs="hash"`` (CLI ``--rehash``), which re-hashes
every file. Standard library only: no torch, no h5py.
"""

from __future__ import annotations

import os
import time

__all__ = ["RACY_WINDOW_S", "racy_window_ns", "identity_of", "settled"]

#: Default safety window, in seconds: above the 2 s of FAT's mtime granularity, with margin for
#: a file server's clock running ahead of ours. ``FEATCACHE_RACY_WINDOW`` (seconds) overrides it.
RACY_WINDOW_S = 3.0


def racy_window_ns() -> int:
    """The safety window in nanoseconds (``$FEATCACHE_RACY_WINDOW`` seconds, else 3 s)."""
    value = os.environ.get("FEATCACHE_RACY_WINDOW")
    try:
        seconds = float(value) if value else RACY_WINDOW_S
    except ValueError:
        seconds = RACY_WINDOW_S
    return int(max(seconds, 0.0) * 1e9)


def identity_of(resolved_path, st: os.stat_result) -> tuple:
    """``(resolved path, size, mtime_ns, inode, device, ctime_ns)`` of a file's ``os.stat``."""
    return (str(resolved_path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, st.st_ctime_ns)


def settled(identity: tuple, now_ns: int | None = None) -> bool:
    """Whether a memo may remember ``identity`` (taken at ``now_ns``, default: now).

    True when both its mtime and its ctime are at least :func:`racy_window_ns` older than
    ``now_ns``. A timestamp in the future (a file server's clock ahead of ours) is young.
    """
    now_ns = time.time_ns() if now_ns is None else now_ns
    newest = max(identity[2], identity[5])
    return now_ns - newest >= racy_window_ns()
