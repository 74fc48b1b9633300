"""Files of the cache: atomic writes, fsync, names, safe text (h5py + numpy only).

Every file the cache writes is created under a temporary ``.tmp-<uuid>`` name in its final
directory, flushed, fsync'ed and renamed into place (:func:`atomic_h5`, :func:`atomic_file`),
or hard-linked into place when the first writer must win (:func:`publish_once`). Existing
files are only ever opened read-only (:func:`open_read`). Strings go through
:func:`safe_text`, so any Python str (file names that are not UTF-8 included) can be stored.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import os
import pathlib
import re
import shutil
import time
import uuid

import h5py
import numpy as np

from ..exceptions import CacheError

#: The file that marks a directory as a featcache cache (JSON with its format_version).
MARKER = "featcache.json"

SHARD_RE = re.compile(r"^\d{20}-[0-9a-f]{32}\.h5$")


TMP_PREFIX = ".tmp-"


STR_DTYPE = h5py.string_dtype("utf-8")


def safe_text(value) -> str:
    """Return ``str(value)`` in a form HDF5 can store as UTF-8.

    File names that are not valid UTF-8 (legal on Linux) reach Python as strings with lone
    surrogates (``os.fsdecode(b"caf\\xe9")`` is ``"caf\\udce9"``), which cannot be encoded as
    UTF-8; NUL characters end an HDF5 string. Both are stored as readable backslash escapes
    (``"caf\\\\udce9"``, ``"\\\\x00"``); every other string is returned unchanged.

    Parameters
    ----------
    value : object
        Usually a str (a source path, a failure reason, an annotation).

    Returns
    -------
    str
        Valid UTF-8 text without NUL characters.
    """
    text = str(value)
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def text_array(values) -> np.ndarray:
    """A 1-d object array of :func:`safe_text` strings, ready for a UTF-8 string dataset."""
    out = np.empty(len(values), dtype=object)
    out[:] = [safe_text(v) for v in values]
    return out


def now_iso() -> str:
    """Return the current UTC time as an ISO 8601 string."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def new_shard_name() -> str:
    """Return ``<seq>-<uuid>.h5``: seq (zero-padded ``time_ns``) sorts in creation order."""
    return f"{time.time_ns():020d}-{uuid.uuid4().hex}.h5"


def list_shards(shards_dir: pathlib.Path) -> list[str]:
    """Sorted names of committed shards (temporary files are ignored)."""
    try:
        names = os.listdir(shards_dir)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if SHARD_RE.match(n))


def _fsync(fd: int) -> None:
    os.fsync(fd)


def fsync_path(path: pathlib.Path) -> None:
    """fsync a file, or a directory (ignored where the platform cannot, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (IsADirectoryError, PermissionError):  # pragma: no cover - Windows directories
        return
    try:
        _fsync(fd)
    except OSError as exc:
        if not path.is_dir() or exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def open_read(path) -> h5py.File:
    """Open an existing file read-only without HDF5 file locking (files are immutable)."""
    try:
        return h5py.File(path, "r", locking=False)
    except TypeError:  # pragma: no cover - h5py without the locking argument
        return h5py.File(path, "r")


def _tmp_path(directory: pathlib.Path, suffix: str = ".h5") -> pathlib.Path:
    return directory / f"{TMP_PREFIX}{uuid.uuid4().hex}{suffix}"


@contextlib.contextmanager
def atomic_h5(final_path: pathlib.Path):
    """Yield a new HDF5 file (mode ``"w-"`` on a temporary name) that becomes ``final_path``.

    On success the file is closed, fsync'ed, renamed with ``os.replace`` and the directory
    fsync'ed; on any exception the temporary file is removed and the exception re-raised.
    """
    final_path = pathlib.Path(final_path)
    tmp = _tmp_path(final_path.parent)
    f = None
    try:
        f = h5py.File(tmp, "w-")
        yield f
        f.close()
        fsync_path(tmp)
        os.replace(tmp, final_path)
        fsync_path(final_path.parent)
    except BaseException:
        if f is not None:
            with contextlib.suppress(Exception):
                f.close()
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_file(final_path: pathlib.Path):
    """Yield a binary file handle (temporary name) that becomes ``final_path`` atomically."""
    final_path = pathlib.Path(final_path)
    tmp = _tmp_path(final_path.parent, suffix=final_path.suffix)
    try:
        with open(tmp, "xb") as fh:
            yield fh
            fh.flush()
            _fsync(fh.fileno())
        os.replace(tmp, final_path)
        fsync_path(final_path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(final_path: pathlib.Path, data: bytes) -> None:
    """Write ``data`` to ``final_path`` atomically (temporary file, fsync, ``os.replace``)."""
    with atomic_file(final_path) as fh:
        fh.write(data)


def publish_once(final_path: pathlib.Path, data: bytes) -> bool:
    """Create ``final_path`` holding ``data`` unless it exists; True if this call created it.

    The bytes go to a temporary file (fsync'ed) that is hard-linked to ``final_path``, so the
    file appears complete or not at all and, when several threads or processes create it at
    once, exactly one wins and the others leave it alone. Where hard links are not supported,
    it falls back to ``os.replace`` (then the last writer wins, with equally complete content).
    """
    final_path = pathlib.Path(final_path)
    tmp = _tmp_path(final_path.parent, suffix=final_path.suffix)
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            _fsync(fh.fileno())
        try:
            os.link(tmp, final_path)
        except FileExistsError:
            return False
        except OSError:  # no hard links here (some network or FAT file systems)
            if final_path.exists():
                return False
            os.replace(tmp, final_path)
        fsync_path(final_path.parent)
        return True
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_error(exc: BaseException, directory: pathlib.Path,
                what: str = "a cache shard") -> CacheError:
    """Turn an OSError raised while writing into a CacheError that names the directory."""
    text = str(exc)
    code = getattr(exc, "errno", None)
    full = code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)) or "No space left" in text \
        or "errno = 28" in text or "quota" in text.lower()
    try:
        free = f"{shutil.disk_usage(directory).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    if full:
        msg = (f"could not write {what} in {directory}: the disk is full ({free}; {text}). "
               "Free some space or point cache= / --cache at another directory; shards "
               "committed earlier are intact and a rerun computes only the rows not saved.")
    else:
        msg = (f"could not write {what} in {directory}: the write failed ({text}). Check "
               "that the directory is writable and has space; shards committed earlier are "
               "intact and a rerun computes only the rows not saved.")
    return CacheError(msg)


def temp_files(ns_dir: pathlib.Path) -> list:
    """Temporary files (``.tmp-*``) in a namespace directory and its shards directory."""
    out = []
    for d in (ns_dir, ns_dir / "shards"):
        try:
            out += [d / n for n in os.listdir(d) if n.startswith(TMP_PREFIX)]
        except FileNotFoundError:
            pass
    return sorted(out)


def remove_stale_temp(ns_dir: pathlib.Path, older_than: float) -> int:
    """Delete temporary files not modified for ``older_than`` seconds (a live writer's are kept)."""
    removed, now = 0, time.time()
    for p in temp_files(ns_dir):
        try:
            if now - p.stat().st_mtime >= older_than:
                p.unlink()
                removed += 1
        except FileNotFoundError:
            pass
    return removed
