"""The shard file format: writing, checking and reading one immutable HDF5 shard.

A shard is one immutable HDF5 file ``<seq>-<uuid>.h5``:

- ``keys``      (n, 16) uint8 content keys
- ``features``  (n, d) little-endian float16 or float32 (contiguous, uncompressed)
- ``sources``   (n,) variable-length UTF-8 strings (path or description of each input)
- ``failures/`` group with ``keys`` (m, 16) uint8, ``sources`` (m,) and ``reasons`` (m,) strings
- attrs ``fingerprint, rows, dim, dtype, checksum, created, failures, format_version``, and
  ``row_shape`` (int array whose product is ``dim``) when each row is a flattened array such as
  a ``(C, H, W)`` feature map; shards without it hold plain ``(dim,)`` vectors

``checksum`` is the blake2b-256 hex digest of ``keys`` bytes, then ``features`` bytes (stored
dtype, little-endian, C order), then the failure keys' bytes. Reading trusts nothing a file
declares (see :mod:`featcache.cache.checks`).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import pathlib

import h5py
import numpy as np

from ..exceptions import CacheCorruptError
from ..formats import FORMAT_VERSION
from .checks import check_stored, count_attr, get_dataset, scalar_attr
from .files import (STR_DTYPE, atomic_file, atomic_h5, new_shard_name, now_iso, open_read, safe_text,
                    text_array, write_error)



KEY_BYTES = 16


DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}


_WINDOW_BYTES = 64 * 2**20  # features are streamed in windows of about this size


class ShardGone(Exception):
    """A committed shard could not be read any more (removed by a concurrent compact, I/O error).

    ``vanished`` is True when the file no longer exists (a concurrent ``compact`` merged it
    into a new shard, or it was removed): the reader lists the shards again and reads the rows
    from where they are now. It is never damage, so the shard is not re-verified.
    """

    def __init__(self, path, cause: BaseException):
        super().__init__(f"shard {path} could not be read: {cause}")
        self.path, self.cause = pathlib.Path(path), cause
        self.vanished = isinstance(cause, FileNotFoundError) or not os.path.lexists(path)


def raise_if_vanished(path, exc: BaseException) -> None:
    """Raise FileNotFoundError (from ``exc``) when ``path`` no longer exists.

    A read that failed because its file was removed meanwhile (a concurrent ``compact``, on a
    file system that does not keep a removed file readable, or between a stat and the open)
    must read as "vanished", never as damage.
    """
    if not os.path.lexists(path):
        raise FileNotFoundError(errno.ENOENT, f"the shard vanished while it was read "
                                f"({type(exc).__name__}: {exc}); a concurrent compact or "
                                "removal took it", str(path)) from exc


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
    row_shape: tuple | None = None  # the shape of one row before flattening, when recorded

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
                fail_sources: list, fail_reasons: list, dtype: str,
                row_shape: tuple | None = None) -> ShardInfo:
    """Write one new shard atomically and return its :class:`ShardInfo` (checksum known good).

    ``row_shape`` (whose product must be the feature width) is recorded when given.

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
    row_shape = check_row_shape(row_shape, feats.shape[1], shards_dir)
    final = shards_dir / new_shard_name()
    try:
        shards_dir.mkdir(parents=True, exist_ok=True)
        with atomic_h5(final) as f:
            f.create_dataset("keys", data=keys)
            f.create_dataset("features", data=feats)
            f.create_dataset("sources", data=text_array(list(sources)), dtype=STR_DTYPE)
            _write_failures(f, fail_keys, fail_sources, fail_reasons)
            _write_attrs(f, fingerprint, len(keys), feats.shape[1], dtype, checksum, created,
                         len(fail_keys))
            if row_shape is not None:
                f.attrs["row_shape"] = np.asarray(row_shape, dtype=np.int64)
    except OSError as exc:
        raise write_error(exc, shards_dir) from exc
    return ShardInfo(final, stat_key(final), len(keys), feats.shape[1], dtype, fingerprint,
                     created, checksum, keys, fail_keys, fail_sources, fail_reasons,
                     checksum_ok=True, row_shape=row_shape)


def check_row_shape(row_shape, dim: int, where) -> "tuple | None":
    """``row_shape`` as a tuple of positive ints whose product is ``dim`` (None passes)."""
    if row_shape is None:
        return None
    try:
        shape = tuple(int(n) for n in np.asarray(row_shape).reshape(-1))
    except (TypeError, ValueError):
        shape = ()
    if not shape or min(shape) < 1 or int(np.prod(shape, dtype=np.int64)) != dim:
        raise CacheCorruptError(f"{where}: row shape {row_shape!r} does not describe rows of "
                                f"{dim} values (expected positive sizes whose product is {dim})")
    return shape


def _write_failures(f, fail_keys, fail_sources, fail_reasons) -> None:
    g = f.create_group("failures")
    g.create_dataset("keys", data=fail_keys.reshape(-1, KEY_BYTES))
    g.create_dataset("sources", data=text_array(list(fail_sources)), dtype=STR_DTYPE)
    g.create_dataset("reasons", data=text_array(list(fail_reasons)), dtype=STR_DTYPE)


def _write_attrs(f, fingerprint, rows, dim, dtype, checksum, created, n_failures) -> None:
    f.attrs.update({"fingerprint": fingerprint, "rows": int(rows), "dim": int(dim),
                    "dtype": dtype, "checksum": checksum, "created": created,
                    "failures": int(n_failures), "format_version": FORMAT_VERSION})


def str_list(ds) -> list:
    return list(ds.asstr()[()]) if len(ds) else []


def load_shard(path: pathlib.Path, fingerprint: str | None, *, check_checksum: bool) -> ShardInfo:
    """Read a shard's metadata, keys and failures; check shapes (and the checksum if asked).

    Raises
    ------
    FileNotFoundError
        The shard vanished (e.g. removed by a concurrent ``compact``): before the stat, between
        the stat and the open, or while it was read (whatever error the read then met).
    CacheCorruptError
        The file, still there, cannot be opened or read, or its shapes or checksum do not match.
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
    except FileNotFoundError:
        raise
    except CacheCorruptError as exc:
        raise_if_vanished(path, exc)
        raise
    except Exception as exc:  # h5py raises OSError/KeyError/ValueError/TypeError on damage
        raise_if_vanished(path, exc)
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
    rows, dim = count_attr(a, "rows", path), count_attr(a, "dim", path)
    dtype, size = text["dtype"], key[0]
    if dtype not in DTYPES:
        raise CacheCorruptError(f"shard {path}: attribute 'dtype' is {dtype!r}, expected one "
                                f"of {sorted(DTYPES)}")
    keys = get_dataset(f, "keys", path, size, (rows, KEY_BYTES), np.dtype(np.uint8))
    get_dataset(f, "features", path, size, (rows, dim), DTYPES[dtype])
    get_dataset(f, "sources", path, size, (rows,))
    fk, fs, fr = _parse_failures(f, path, size)
    row_shape = None
    if "row_shape" in a:
        raw = a["row_shape"]
        if not isinstance(raw, np.ndarray) or raw.ndim != 1 or raw.size > 8 or raw.dtype.kind not in "iu":
            raise CacheCorruptError(f"shard {path}: attribute 'row_shape' is {raw!r}, expected "
                                    "a short 1-D integer array")
        row_shape = check_row_shape(raw, dim, f"shard {path}")
    return ShardInfo(pathlib.Path(path), key, rows, dim, dtype, text["fingerprint"],
                     text["created"], text["checksum"], keys[()], fk, fs, fr, row_shape=row_shape)


def _parse_failures(f, path, size: int) -> tuple:
    """(keys, sources, reasons) of a shard's ``failures`` group, checked before reading."""
    g = f.get("failures")
    if not isinstance(g, h5py.Group) or not isinstance(g.get("keys"), h5py.Dataset):
        raise CacheCorruptError(f"shard {path}: the 'failures' group is missing or incomplete")
    m = g["keys"].shape[0] if g["keys"].shape else -1
    declared = count_attr(f.attrs, "failures", path) if "failures" in f.attrs else m
    if declared != m:
        raise CacheCorruptError(f"shard {path}: attribute 'failures' says {declared} but "
                                f"'failures/keys' has shape {g['keys'].shape}")
    keys = get_dataset(g, "keys", path, size, (m, KEY_BYTES), np.dtype(np.uint8))
    sources = get_dataset(g, "sources", path, size, (m,))
    reasons = get_dataset(g, "reasons", path, size, (m,))
    return keys[()], str_list(sources), str_list(reasons)


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
            return str_list(ds)
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
    shapes = {i.row_shape for i in infos if i.rows}
    if len(shapes) > 1:
        raise CacheCorruptError(f"cannot merge shards of different row shapes {sorted(map(str, shapes))} "
                                f"in {final_path.parent}; run `featcache verify`")
    row_shape = shapes.pop() if shapes else None
    if dtype is None:
        dtype = "float16" if infos and all(i.dtype == "float16" for i in infos) else "float32"
    h = _hasher(keys)
    created = now_iso()
    with atomic_h5(final_path) as f:
        f.create_dataset("keys", data=keys)
        feats = f.create_dataset("features", shape=(len(keys), dim), dtype=DTYPES[dtype])
        srcs = f.create_dataset("sources", shape=(len(keys),), dtype=STR_DTYPE)
        _copy_rows(infos, keep, feats, srcs, h)
        h.update(fk.tobytes())
        _write_failures(f, fk, fs, fr)
        _write_attrs(f, fingerprint, len(keys), dim, dtype, h.hexdigest(), created, len(fk))
        if row_shape is not None:
            f.attrs["row_shape"] = np.asarray(row_shape, dtype=np.int64)
        f.attrs.update(extra_attrs or {})
    return ShardInfo(final_path, stat_key(final_path), len(keys), dim, dtype, fingerprint, created,
                     h.hexdigest(), keys, fk, fs, fr, checksum_ok=True, row_shape=row_shape)


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
