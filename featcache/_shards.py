"""Shard file format and key index of the feature cache (h5py + numpy only, never torch).

A shard is one immutable HDF5 file ``<seq>-<uuid>.h5``:

- ``keys``      (n, 16) uint8 content keys
- ``features``  (n, d) little-endian float16 or float32 (contiguous, uncompressed)
- ``sources``   (n,) variable-length UTF-8 strings (path or description of each input)
- ``failures/`` group with ``keys`` (m, 16) uint8, ``sources`` (m,) and ``reasons`` (m,) strings
- attrs ``fingerprint, rows, dim, dtype, checksum, created, failures, format_version``

``checksum`` is the blake2b-256 hex digest of ``keys`` bytes, then ``features`` bytes (stored
dtype, little-endian, C order), then the failure keys' bytes.

Reading trusts nothing a file declares: before a dataset is read (or anything is allocated
from its shape or from an attribute), :func:`check_stored` checks that its declared bytes fit
in the file's real size and are really stored there, so a damaged or crafted file is a
:class:`CacheCorruptError` naming it, never a memory bomb. Strings are written through
:func:`safe_text`, so any Python str (file names that are not UTF-8 included) can be stored.

Every file is written by :func:`atomic_h5`: a temporary ``.tmp-<uuid>.h5`` in the same
directory, opened with mode ``"w-"``, flushed, fsync'ed, then ``os.replace``'d into place and
the directory fsync'ed. Existing files are only ever opened with mode ``"r"``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import hashlib
import math
import os
import pathlib
import re
import shutil
import time
import uuid

import h5py
import numpy as np

from .exceptions import CacheCorruptError, CacheError

FORMAT_VERSION = 1
SHARD_RE = re.compile(r"^\d{20}-[0-9a-f]{32}\.h5$")
TMP_PREFIX = ".tmp-"
KEY_BYTES = 16
DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
_STR = h5py.string_dtype("utf-8")
_WINDOW_BYTES = 64 * 2**20  # features are streamed in windows of about this size
#: Lower bound of the bytes one variable-length string takes in a dataset's own storage
#: (its length and global heap id); bounds how many strings a file of a given size can hold.
_VLEN_MIN_BYTES = 12
_LAYOUTS = (h5py.h5d.COMPACT, h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED)


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


class ShardGone(Exception):
    """A committed shard could not be read any more (removed by a concurrent compact, I/O error)."""

    def __init__(self, path, cause: BaseException):
        super().__init__(f"shard {path} could not be read: {cause}")
        self.path, self.cause = pathlib.Path(path), cause


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


def _element_bytes(ds) -> int:
    """Bytes one element of ``ds`` takes at least in the dataset's own storage."""
    if ds.dtype.kind == "O" or h5py.check_vlen_dtype(ds.dtype) is not None:
        return _VLEN_MIN_BYTES
    return ds.dtype.itemsize


def check_stored(ds, path, size: int, what: str = "shard") -> None:
    """Check that dataset ``ds`` of file ``path`` really holds the data its shape declares.

    Run before reading ``ds`` (or allocating from its shape): a damaged or crafted file can
    declare 10**8 rows in a few kilobytes, and reading it would allocate gigabytes of fill
    values. The declared bytes must fit in the file (``size``, its real size on disk), be
    stored (not unallocated or compressed away) and lie inside the file.

    Parameters
    ----------
    ds : h5py.Dataset
    path : path-like
        The file, named in the error.
    size : int
        The file's size on disk in bytes (``os.stat(path).st_size``).
    what : str, default="shard"
        What the file is, for the error message.

    Raises
    ------
    CacheCorruptError
        When the dataset cannot hold what it declares.
    """
    if ds.shape is None:
        raise CacheCorruptError(f"{what} {path}: dataset {ds.name!r} has no shape")
    need = math.prod(ds.shape) * _element_bytes(ds)
    if need > size:
        raise CacheCorruptError(f"{what} {path}: dataset {ds.name!r} declares shape {ds.shape} "
                                f"(at least {need} bytes) but the whole file has {size} bytes")
    dcpl = ds.id.get_create_plist()
    if dcpl.get_layout() not in _LAYOUTS or dcpl.get_external_count():
        raise CacheCorruptError(f"{what} {path}: dataset {ds.name!r} keeps its data in other "
                                "files (virtual or external storage); featcache never does")
    stored = ds.id.get_storage_size()
    if stored < need:
        raise CacheCorruptError(f"{what} {path}: dataset {ds.name!r} declares shape {ds.shape} "
                                f"({need} bytes) but stores only {stored} bytes")
    offset = ds.id.get_offset()
    if offset is not None and offset + stored > size:
        raise CacheCorruptError(f"{what} {path}: dataset {ds.name!r} ends at byte "
                                f"{offset + stored}, past the end of the file ({size} bytes)")


def get_dataset(group, name: str, path, size: int, shape: tuple, dtype=None,
                what: str = "shard"):
    """The dataset ``group[name]``, checked: shape, dtype (``None``: a string) and storage.

    Raises
    ------
    CacheCorruptError
        When it is missing, has another shape or dtype, or does not store its data
        (see :func:`check_stored`).
    """
    ds = group.get(name)
    full = f"{group.name.rstrip('/')}/{name}".lstrip("/")
    ok = isinstance(ds, h5py.Dataset) and ds.shape == shape and (
        ds.dtype == dtype if dtype is not None else h5py.check_string_dtype(ds.dtype) is not None)
    if not ok:
        got = ("missing" if not isinstance(ds, h5py.Dataset)
               else f"shape {ds.shape} dtype {ds.dtype}")
        raise CacheCorruptError(f"{what} {path}: dataset {full!r} should have shape {shape} "
                                f"dtype {dtype if dtype is not None else 'string'}, found {got}")
    check_stored(ds, path, size, what)
    return ds


def scalar_attr(attrs, name: str, path, what: str = "shard"):
    """Attribute ``name`` after checking it is one value (not an array that could be huge).

    Raises
    ------
    CacheCorruptError
        When it is missing or holds more than one value.
    """
    if name not in attrs:
        raise CacheCorruptError(f"{what} {path}: attribute {name!r} is missing")
    shape = attrs.get_id(name).shape
    if shape is None or math.prod(shape) != 1:
        raise CacheCorruptError(f"{what} {path}: attribute {name!r} should be a single value, "
                                f"found shape {shape}")
    value = attrs[name]
    return value.reshape(-1)[0] if isinstance(value, np.ndarray) else value


def _count_attr(attrs, name: str, path) -> int:
    value = scalar_attr(attrs, name, path)
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise CacheCorruptError(f"shard {path}: attribute {name!r} should be a count "
                                f"(an integer >= 0), found {value!r}")
    return int(value)


@dataclasses.dataclass
class ShardInfo:
    """What the key index keeps of one shard: metadata, keys and failures (no features)."""

    path: pathlib.Path
    stat_key: tuple
    rows: int
    dim: int
    dtype: str
    fingerprint: str
    created: str
    checksum: str
    keys: np.ndarray            # (rows, 16) uint8
    fail_keys: np.ndarray       # (m, 16) uint8
    fail_sources: list
    fail_reasons: list
    checksum_ok: bool = False

    @property
    def name(self) -> str:
        return self.path.name


def stat_key(path: pathlib.Path) -> tuple:
    """(size, mtime_ns, inode): changes whenever the file is replaced or modified."""
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _hasher(keys: np.ndarray):
    h = hashlib.blake2b(digest_size=32)
    h.update(np.ascontiguousarray(keys, dtype=np.uint8).tobytes())
    return h


def _window_rows(dim: int, itemsize: int) -> int:
    return max(1, _WINDOW_BYTES // max(1, dim * itemsize))


def write_shard(shards_dir: pathlib.Path, fingerprint: str, keys: np.ndarray,
                features: np.ndarray, sources: list, fail_keys: np.ndarray,
                fail_sources: list, fail_reasons: list, dtype: str) -> ShardInfo:
    """Write one new shard atomically and return its :class:`ShardInfo` (checksum known good).

    Raises
    ------
    CacheError
        When the write fails (disk full, permissions, I/O error); no file is left behind.
    """
    feats = np.ascontiguousarray(features, dtype=DTYPES[dtype])
    keys = np.ascontiguousarray(keys, dtype=np.uint8).reshape(-1, KEY_BYTES)
    fail_keys = np.ascontiguousarray(fail_keys, dtype=np.uint8).reshape(-1, KEY_BYTES)
    fail_sources = [safe_text(s) for s in fail_sources]
    fail_reasons = [safe_text(r) for r in fail_reasons]
    h = _hasher(keys)
    h.update(feats.tobytes())
    h.update(fail_keys.tobytes())
    checksum, created = h.hexdigest(), now_iso()
    final = shards_dir / new_shard_name()
    try:
        shards_dir.mkdir(parents=True, exist_ok=True)
        with atomic_h5(final) as f:
            f.create_dataset("keys", data=keys)
            f.create_dataset("features", data=feats)
            f.create_dataset("sources", data=text_array(list(sources)), dtype=_STR)
            _write_failures(f, fail_keys, fail_sources, fail_reasons)
            _write_attrs(f, fingerprint, len(keys), feats.shape[1], dtype, checksum, created,
                         len(fail_keys))
    except OSError as exc:
        raise write_error(exc, shards_dir) from exc
    return ShardInfo(final, stat_key(final), len(keys), feats.shape[1], dtype, fingerprint,
                     created, checksum, keys, fail_keys, fail_sources, fail_reasons,
                     checksum_ok=True)


def _write_failures(f, fail_keys, fail_sources, fail_reasons) -> None:
    g = f.create_group("failures")
    g.create_dataset("keys", data=fail_keys.reshape(-1, KEY_BYTES))
    g.create_dataset("sources", data=text_array(list(fail_sources)), dtype=_STR)
    g.create_dataset("reasons", data=text_array(list(fail_reasons)), dtype=_STR)


def _write_attrs(f, fingerprint, rows, dim, dtype, checksum, created, n_failures) -> None:
    f.attrs.update({"fingerprint": fingerprint, "rows": int(rows), "dim": int(dim),
                    "dtype": dtype, "checksum": checksum, "created": created,
                    "failures": int(n_failures), "format_version": FORMAT_VERSION})


def _str_list(ds) -> list:
    return list(ds.asstr()[()]) if len(ds) else []


def load_shard(path: pathlib.Path, fingerprint: str | None, *, check_checksum: bool) -> ShardInfo:
    """Read a shard's metadata, keys and failures; check shapes (and the checksum if asked).

    Raises
    ------
    FileNotFoundError
        The shard vanished (e.g. removed by a concurrent ``compact``).
    CacheCorruptError
        The file cannot be opened or read, or its shapes or checksum do not match.
    """
    path = pathlib.Path(path)
    key = stat_key(path)
    try:
        with open_read(path) as f:
            info = _parse(f, path, key)
            if fingerprint is not None and info.fingerprint != fingerprint:
                raise CacheCorruptError(f"shard {path}: fingerprint attribute {info.fingerprint!r} "
                                        f"does not match its namespace {fingerprint!r}")
            if check_checksum:
                _check_checksum(f, info)
    except (FileNotFoundError, CacheCorruptError):
        raise
    except Exception as exc:  # h5py raises OSError/KeyError/ValueError/TypeError on damage
        raise CacheCorruptError(f"shard {path}: cannot be read ({type(exc).__name__}: {exc}); "
                                "it is truncated, damaged or not a featcache shard") from exc
    return info


def _parse(f, path, key) -> ShardInfo:
    """Check a shard's attributes, shapes and storage, then read its keys and failures.

    Every size read from the file is checked against the file's real size (``key[0]``)
    before anything is read or allocated from it.
    """
    a = f.attrs
    text = {n: str(scalar_attr(a, n, path)) for n in ("fingerprint", "dtype", "checksum",
                                                       "created")}
    rows, dim = _count_attr(a, "rows", path), _count_attr(a, "dim", path)
    dtype, size = text["dtype"], key[0]
    if dtype not in DTYPES:
        raise CacheCorruptError(f"shard {path}: attribute 'dtype' is {dtype!r}, expected one "
                                f"of {sorted(DTYPES)}")
    keys = get_dataset(f, "keys", path, size, (rows, KEY_BYTES), np.dtype(np.uint8))
    get_dataset(f, "features", path, size, (rows, dim), DTYPES[dtype])
    get_dataset(f, "sources", path, size, (rows,))
    fk, fs, fr = _parse_failures(f, path, size)
    return ShardInfo(pathlib.Path(path), key, rows, dim, dtype, text["fingerprint"],
                     text["created"], text["checksum"], keys[()], fk, fs, fr)


def _parse_failures(f, path, size: int) -> tuple:
    """(keys, sources, reasons) of a shard's ``failures`` group, checked before reading."""
    g = f.get("failures")
    if not isinstance(g, h5py.Group) or not isinstance(g.get("keys"), h5py.Dataset):
        raise CacheCorruptError(f"shard {path}: the 'failures' group is missing or incomplete")
    m = g["keys"].shape[0] if g["keys"].shape else -1
    declared = _count_attr(f.attrs, "failures", path) if "failures" in f.attrs else m
    if declared != m:
        raise CacheCorruptError(f"shard {path}: attribute 'failures' says {declared} but "
                                f"'failures/keys' has shape {g['keys'].shape}")
    keys = get_dataset(g, "keys", path, size, (m, KEY_BYTES), np.dtype(np.uint8))
    sources = get_dataset(g, "sources", path, size, (m,))
    reasons = get_dataset(g, "reasons", path, size, (m,))
    return keys[()], _str_list(sources), _str_list(reasons)


def _check_checksum(f, info: ShardInfo) -> None:
    h = _hasher(info.keys)
    ds = f["features"]
    step = _window_rows(info.dim, ds.dtype.itemsize)
    for lo in range(0, info.rows, step):
        h.update(np.ascontiguousarray(ds[lo:lo + step]).tobytes())
    h.update(info.fail_keys.tobytes())
    if h.hexdigest() != info.checksum:
        raise CacheCorruptError(f"shard {info.path}: checksum mismatch (stored "
                                f"{info.checksum[:16]}..., computed {h.hexdigest()[:16]}...); "
                                "its bytes were altered after it was written")
    info.checksum_ok = True


def read_rows(path: pathlib.Path, rows: np.ndarray) -> np.ndarray:
    """Read ``features[rows]`` as float32; ``rows`` must be sorted and unique.

    Dense runs are read as one slice (then indexed in numpy); sparse ones with h5py fancy
    indexing, which needs increasing indices. Windows bound the memory used. A shard that
    vanished or no longer matches what its index says raises :class:`ShardGone` (readers then
    refresh the index, which re-checks it).
    """
    rows = np.asarray(rows, dtype=np.int64)
    try:
        return _read_rows(path, rows)
    except (OSError, KeyError, CacheCorruptError) as exc:  # KeyError: h5py, no such dataset
        raise ShardGone(path, exc) from exc


def _read_rows(path, rows: np.ndarray) -> np.ndarray:
    size = os.stat(path).st_size
    with open_read(path) as f:
        ds = f["features"]
        check_stored(ds, path, size)
        _check_row_range(ds, path, rows)
        out = np.empty((len(rows), ds.shape[1]), dtype=np.float32)
        step = _window_rows(ds.shape[1], ds.dtype.itemsize)
        i = 0
        while i < len(rows):
            lo = rows[i]
            j = int(np.searchsorted(rows, lo + step, side="left"))
            sel = rows[i:j]
            if len(sel) * 8 >= sel[-1] - lo + 1:  # dense enough: one contiguous read
                out[i:j] = ds[lo:sel[-1] + 1][sel - lo]
            else:
                out[i:j] = ds[sel]
            i = j
    return out


def _check_row_range(ds, path, rows: np.ndarray) -> None:
    """Raise CacheCorruptError unless 2-d ``ds`` holds every row of (sorted) ``rows``."""
    if len(ds.shape) != 2 or (len(rows) and (rows[0] < 0 or rows[-1] >= ds.shape[0])):
        span = f"rows {rows[0]}..{rows[-1]}" if len(rows) else "2-d rows"
        raise CacheCorruptError(f"shard {path}: 'features' has shape {ds.shape}, which does not "
                                f"hold the {span} its index lists; the file was changed after "
                                "it was written. Run `featcache verify` and delete it")


def read_sources(path: pathlib.Path) -> list:
    """All ``sources`` strings of a shard."""
    try:
        size = os.stat(path).st_size
        with open_read(path) as f:
            ds = f["sources"]
            check_stored(ds, path, size)
            return _str_list(ds)
    except (OSError, KeyError, CacheCorruptError) as exc:
        raise ShardGone(path, exc) from exc


def merge(infos: list[ShardInfo], final_path: pathlib.Path, fingerprint: str,
          extra_attrs: dict | None = None, dtype: str | None = None) -> ShardInfo:
    """Merge shards (in the given order, first key wins) into one new file, streaming features.

    Failures whose key has a successful row are dropped; failures are deduplicated too. The
    result is itself a valid shard (``extra_attrs`` are added, e.g. the config for export).
    """
    keep = _first_occurrence([i.keys for i in infos])
    keys = np.concatenate([i.keys[k] for i, k in zip(infos, keep)] or [np.zeros((0, 16), np.uint8)])
    fk, fs, fr = _merged_failures(infos, keys)
    dims = {i.dim for i in infos if i.rows}
    if len(dims) > 1:
        raise CacheCorruptError(f"cannot merge shards of different dims {sorted(dims)} "
                                f"in {final_path.parent}; run `featcache verify`")
    dim = dims.pop() if dims else 0
    if dtype is None:
        dtype = "float16" if infos and all(i.dtype == "float16" for i in infos) else "float32"
    h = _hasher(keys)
    created = now_iso()
    with atomic_h5(final_path) as f:
        f.create_dataset("keys", data=keys)
        feats = f.create_dataset("features", shape=(len(keys), dim), dtype=DTYPES[dtype])
        srcs = f.create_dataset("sources", shape=(len(keys),), dtype=_STR)
        _copy_rows(infos, keep, feats, srcs, h)
        h.update(fk.tobytes())
        _write_failures(f, fk, fs, fr)
        _write_attrs(f, fingerprint, len(keys), dim, dtype, h.hexdigest(), created, len(fk))
        f.attrs.update(extra_attrs or {})
    return ShardInfo(final_path, stat_key(final_path), len(keys), dim, dtype, fingerprint, created,
                     h.hexdigest(), keys, fk, fs, fr, checksum_ok=True)


def _first_occurrence(key_arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Per array, the sorted row indices that hold the first occurrence of each key."""
    if not key_arrays:
        return []
    allk = np.concatenate(key_arrays).view("V16").ravel()
    first = np.zeros(len(allk), dtype=bool)
    first[np.unique(allk, return_index=True)[1]] = True
    bounds = np.cumsum([0] + [len(k) for k in key_arrays])
    return [np.flatnonzero(first[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _merged_failures(infos, ok_keys):
    fk = np.concatenate([i.fail_keys for i in infos] or [np.zeros((0, 16), np.uint8)])
    fs = [s for i in infos for s in i.fail_sources]
    fr = [r for i in infos for r in i.fail_reasons]
    v = fk.view("V16").ravel()
    ok = np.sort(ok_keys.view("V16").ravel())
    pos = np.minimum(np.searchsorted(ok, v), max(len(ok) - 1, 0))
    done = (ok[pos] == v) if len(ok) else np.zeros(len(v), bool)
    first = np.zeros(len(v), dtype=bool)
    first[np.unique(v, return_index=True)[1]] = True
    sel = np.flatnonzero(first & ~done)
    return fk[sel], [fs[i] for i in sel], [fr[i] for i in sel]


def _copy_rows(infos, keep, feats, srcs, h) -> None:
    out = 0
    for info, rows in zip(infos, keep):
        if not len(rows):
            continue
        names = read_sources(info.path)
        srcs[out:out + len(rows)] = np.array([names[r] for r in rows], dtype=object)
        step = _window_rows(info.dim, 4)
        for lo in range(0, len(rows), step):
            block = read_rows(info.path, rows[lo:lo + step]).astype(feats.dtype)
            feats[out:out + len(block)] = block
            h.update(np.ascontiguousarray(block).tobytes())
            out += len(block)


def write_index(ns_dir: pathlib.Path, infos: list[ShardInfo]) -> pathlib.Path:
    """(Re)build ``index.h5``: virtual datasets ``features``/``keys`` over the shards, atomically.

    Rows appear in shard order (duplicates are not removed: ``compact`` first). A shard that
    disappears later reads as NaN rows (the fill value), never as zeros.
    """
    infos = [i for i in infos if i.rows]
    total = sum(i.rows for i in infos)
    dim = infos[0].dim if infos else 0
    fl = h5py.VirtualLayout(shape=(total, dim), dtype="<f4")
    kl = h5py.VirtualLayout(shape=(total, KEY_BYTES), dtype=np.uint8)
    at = 0
    for i in infos:
        rel = f"shards/{i.name}"
        fl[at:at + i.rows] = h5py.VirtualSource(rel, "features", shape=(i.rows, i.dim))
        kl[at:at + i.rows] = h5py.VirtualSource(rel, "keys", shape=(i.rows, KEY_BYTES))
        at += i.rows
    final = ns_dir / "index.h5"
    with atomic_h5(final) as f:
        f.create_virtual_dataset("features", fl, fillvalue=np.nan)
        f.create_virtual_dataset("keys", kl, fillvalue=0)
        f.attrs.update({"shards": [i.name for i in infos], "rows": total, "dim": dim,
                        "created": now_iso(), "format_version": FORMAT_VERSION})
    return final


def v16(keys2d: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(keys2d).view("V16").ravel()


class KeyIndex:
    """key -> (shard, row) for one namespace, as sorted unique keys plus parallel arrays."""

    def __init__(self):
        self.listing: tuple = ()          # shard names accounted for (good and bad)
        self.shards: list = []            # good ShardInfo; position = shard id
        self.bad: dict = {}               # name -> message
        self.keys = np.empty(0, dtype="V16")
        self.sid = np.empty(0, dtype=np.int32)
        self.row = np.empty(0, dtype=np.int64)
        self.dim = None
        self._failures = None

    def copy(self) -> "KeyIndex":
        """A copy to extend (arrays are never modified in place, so they can be shared)."""
        new = KeyIndex()
        new.__dict__.update(self.__dict__)
        new.shards, new.bad = list(self.shards), dict(self.bad)
        return new

    def add(self, infos: list) -> None:
        """Merge new good shards (sorted by name); the first shard in name order wins a key."""
        infos = [i for i in infos if i.rows or len(i.fail_keys)]
        if not infos:
            return
        self._failures = None
        if self.dim is None:
            self.dim = next((i.dim for i in infos if i.rows), None)
        base = len(self.shards)
        self.shards.extend(infos)
        allk = v16(np.concatenate([i.keys for i in infos]))
        sids = np.repeat(np.arange(base, len(self.shards), dtype=np.int32), [i.rows for i in infos])
        rows = np.concatenate([np.arange(i.rows, dtype=np.int64) for i in infos])
        uk, first = np.unique(allk, return_index=True)
        ns, nr = sids[first], rows[first]
        if not len(self.keys):
            self.keys, self.sid, self.row = uk, ns, nr
            return
        pos = np.searchsorted(self.keys, uk)
        pc = np.minimum(pos, len(self.keys) - 1)
        found = self.keys[pc] == uk
        names = np.array([s.name for s in self.shards])
        f = np.flatnonzero(found)
        better = f[names[ns[f]] < names[self.sid[pc[f]]]]
        self.sid, self.row = self.sid.copy(), self.row.copy()
        self.sid[pc[better]], self.row[pc[better]] = ns[better], nr[better]
        ins = ~found
        self.keys = np.insert(self.keys, pos[ins], uk[ins])
        self.sid = np.insert(self.sid, pos[ins], ns[ins])
        self.row = np.insert(self.row, pos[ins], nr[ins])

    def locate(self, q: np.ndarray):
        """(hit mask, position in self.keys) for V16 query keys."""
        if not len(self.keys):
            return np.zeros(len(q), dtype=bool), np.zeros(len(q), dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.keys, q), len(self.keys) - 1)
        return self.keys[pos] == q, pos

    def failures(self) -> dict:
        """bytes key -> (source, reason) for failed keys that have no successful row."""
        if self._failures is None:
            out = {}
            for s in sorted(self.shards, key=lambda s: s.name):
                if not len(s.fail_keys):
                    continue
                hit = self.locate(v16(s.fail_keys))[0]
                for k, src, why, h in zip(s.fail_keys, s.fail_sources, s.fail_reasons, hit):
                    if not h:
                        out.setdefault(k.tobytes(), (src, why))
            self._failures = out
        return self._failures

    def owned(self):
        """[(ShardInfo, sorted rows)] of the rows the index serves, in shard name order."""
        order = np.lexsort((self.row, self.sid))
        sid, row = self.sid[order], self.row[order]
        cuts = np.flatnonzero(np.diff(sid)) + 1
        parts = [(self.shards[s[0]], r) for s, r in zip(np.split(sid, cuts), np.split(row, cuts))
                 if len(s)]
        return sorted(parts, key=lambda p: p[0].name)


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


def write_npz(out: pathlib.Path, keys, features, sources, failures: dict, *, fingerprint: str,
              config: str) -> None:
    """Write an export ``.npz`` atomically (no pickled objects: strings are unicode arrays)."""
    fk = np.frombuffer(b"".join(failures), dtype=np.uint8).reshape(-1, KEY_BYTES)
    arrays = {"keys": keys, "features": features, "sources": _unicode(sources),
              "failure_keys": fk,
              "failure_sources": _unicode([s for s, _ in failures.values()]),
              "failure_reasons": _unicode([r for _, r in failures.values()]),
              "config": np.array(config), "fingerprint": np.array(fingerprint)}
    with atomic_file(out) as fh:
        np.savez(fh, **arrays)


def _unicode(values) -> np.ndarray:
    """A numpy unicode array of :func:`safe_text` strings (``<U1`` when empty)."""
    return np.array([safe_text(v) for v in values], dtype=str)
