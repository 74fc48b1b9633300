"""Export one namespace to a plain ``.h5`` or ``.npz`` file, with its input records.

The operation behind :meth:`featcache.cache.FeatureCache.export` and ``featcache export``. The
file holds one entry per input **record** (see :mod:`featcache.cache.annotations`), in shard
order of their rows: ``keys`` (n, 16) uint8, ``features`` (n, d), ``sources``, and the
annotations ``labels``, ``groups``, ``splits``, ``datasets`` (UTF-8 strings, ``""`` where none
is recorded). Byte-identical inputs are several entries with one key and the same features,
each with its own source, label, split and group; a row no record names is one entry without
annotations. Then the failures (``failures/keys``, ``sources``, ``reasons`` in HDF5;
``failure_keys``, ``failure_sources``, ``failure_reasons`` in ``.npz``); and the ``config``
(JSON), ``fingerprint``, ``dataset`` (``""`` for all rows) and ``leaks`` (JSON, see
:func:`~featcache.cache.annotations.find_leaks`). The ``.h5`` is itself a valid shard (same
attributes and checksum rule), streamed shard by shard; both are written atomically. h5py +
numpy only.

With ``dataset=NAME`` only the records tagged with that dataset (``featcache extract
--dataset``) are written; without, every record of every dataset, and a
:class:`~featcache.exceptions.MixedDatasetsWarning` when they belong to several. Content
recorded in more than one split or group raises a
:class:`~featcache.exceptions.ContentLeakWarning`.
"""

from __future__ import annotations

import hashlib
import json
import pathlib

import numpy as np

from ..exceptions import CacheValueError
from ..formats import FORMAT_VERSION
from . import files, shards
from .annotations import find_leaks, select_dataset, select_records, warn_leaks
from .files import MARKER

__all__ = ["export_namespace", "namespace_rows", "export_facts", "EXPORT_SUFFIXES",
           "ANNOTATION_COLUMNS"]

#: Output extensions :func:`export_namespace` writes (compared case-insensitively).
EXPORT_SUFFIXES = (".h5", ".hdf5", ".npz")
#: Exported per-row annotation arrays -> the annotation field each holds.
ANNOTATION_COLUMNS = {"labels": "label", "groups": "group", "splits": "split",
                      "datasets": "dataset"}


def export_namespace(ns, out_path, *, dataset=None) -> pathlib.Path:
    """Write one namespace (a :class:`~featcache.cache.Namespace`) to ``out_path``.

    Raises
    ------
    CacheValueError
        When ``out_path`` lies inside the cache directory, is a directory, or does not end in
        one of :data:`EXPORT_SUFFIXES`; when ``dataset`` tags no row of the namespace.
    """
    out = _check_export_path(pathlib.Path(out_path).expanduser().absolute(), ns)
    meta = {"config": json.dumps(ns.config, sort_keys=True), "fingerprint": ns.fingerprint,
            "dataset": dataset or ""}
    try:
        if out.suffix.lower() == ".npz":
            keys, feats, sources = namespace_rows(ns)
            at, records = _entries(ns, keys, dataset, meta)
            fails = _failures(ns, dataset)
            _write_npz(out, keys[at], feats[at],
                       [r["source"] or sources[i] for i, r in zip(at, records)],
                       _columns(records), fails, meta)
        else:
            ns.retry(lambda idx: _write_h5(out, ns, idx, dataset, meta))
    except OSError as exc:
        raise files.write_error(exc, out.parent, what=f"the export {out.name}") from exc
    return out


def namespace_rows(ns) -> tuple:
    """``(keys (n, 16) uint8, float32 features (n, d), sources)`` of every row, in shard order."""
    def collect(idx):
        parts = idx.owned()
        if not parts:
            return np.zeros((0, 16), np.uint8), np.zeros((0, idx.dim or 0), np.float32), []
        sources = []
        for info, rows in parts:
            names = shards.read_sources(info.path)
            sources += [names[r] for r in rows]
        return (np.concatenate([i.keys[r] for i, r in parts]),
                np.concatenate([shards.read_rows(i.path, r) for i, r in parts]), sources)

    return ns.retry(collect)


def export_facts(path) -> dict:
    """``{"rows", "namespace"}`` of a written export file, read back from it."""
    if pathlib.Path(path).suffix.lower() == ".npz":
        with np.load(path) as z:
            return {"rows": len(z["keys"]), "namespace": str(z["fingerprint"])}
    with files.open_read(path) as f:
        return {"rows": int(f.attrs["rows"]), "namespace": str(f.attrs["fingerprint"])}


def _check_export_path(out: pathlib.Path, ns) -> pathlib.Path:
    """Refuse an export path inside the cache, a directory, or an unknown extension."""
    root, real = ns.cache.path.resolve(), out.resolve()
    if real == root or root in real.parents:
        where = ("is the cache directory" if real == root
                 else f"is inside the cache directory {root}")
        raise CacheValueError(f"export path {out} {where}; writing there could overwrite the "
                              f"cache's own files ({MARKER}, shards). Write the export outside "
                              f"it, e.g. {root.parent / (ns.fingerprint + '.h5')}")
    if out.suffix.lower() not in EXPORT_SUFFIXES:
        raise CacheValueError(f"export path {out} has the extension {out.suffix or '(none)'!r}; "
                              "expected .h5 or .hdf5 (HDF5) or .npz (NumPy). Use e.g. "
                              f"{out.with_name(out.stem + '.h5')}")
    if real.is_dir():
        raise CacheValueError(f"export path {out} is a directory; give a file name, e.g. "
                              f"{out / (ns.fingerprint + '.h5')}")
    return out


def _entries(ns, keys, dataset, meta) -> tuple:
    """``(row positions, records)``: one entry per input record of the rows ``keys``.

    In row order (records of one key together, in the order they were written); a row of
    the selection that no record names is one entry with an empty record. Warns about leaks
    and stores them in ``meta["leaks"]``.
    """
    keys = [bytes(k) for k in keys]
    keep, records = select_records(ns.cache.path, keys, dataset, what="the export",
                                   namespace=ns.fingerprint)
    of_key: dict = {}
    for record in records:
        of_key.setdefault(record["key"], []).append(record)
    at, entries = [], []
    for i, key in enumerate(keys):
        if keep[i]:
            mine = of_key.get(key) or [{"key": key, "source": None,
                                        **dict.fromkeys(ANNOTATION_COLUMNS.values())}]
            at += [i] * len(mine)
            entries += mine
    leaks = find_leaks(entries)
    warn_leaks(leaks, what="the export", stacklevel=4)
    meta["leaks"] = json.dumps(leaks, sort_keys=True)
    return np.asarray(at, dtype=np.int64), entries


def _columns(records) -> dict:
    """The exported annotation arrays of ``records``: name -> list of str ("" where none)."""
    return {name: [r.get(field) or "" for r in records]
            for name, field in ANNOTATION_COLUMNS.items()}


def _failures(ns, dataset) -> tuple:
    """(keys (m, 16), sources, reasons) of the recorded failures (of ``dataset`` when given)."""
    fails = ns.failures()
    if dataset is not None and fails:
        tagged = select_dataset(ns.cache.path, list(fails), dataset, what="the export",
                                namespace=ns.fingerprint, required=False)[1]
        fails = {k: v for k, v in fails.items() if k in tagged}
    keys = np.frombuffer(b"".join(fails), dtype=np.uint8).reshape(-1, shards.KEY_BYTES)
    return keys, [s for s, _ in fails.values()], [r for _, r in fails.values()]


def _write_h5(out, ns, idx, dataset, meta) -> None:
    """Stream the records of the rows ``idx`` serves (of ``dataset`` when given) into one .h5."""
    parts = idx.owned()
    all_keys = np.concatenate([i.keys[r] for i, r in parts] or [np.zeros((0, 16), np.uint8)])
    at, records = _entries(ns, all_keys, dataset, meta)
    bounds = np.cumsum([0] + [len(r) for _, r in parts])
    cuts = np.searchsorted(at, bounds)
    parts = [(info, rows[at[a:b] - lo], records[a:b])
             for (info, rows), lo, a, b in zip(parts, bounds[:-1], cuts[:-1], cuts[1:])]
    parts = [part for part in parts if len(part[1])]
    keys = all_keys[at]
    dtype = "float16" if parts and all(i.dtype == "float16" for i, _, _ in parts) else "float32"
    dim = parts[0][0].dim if parts else (idx.dim or 0)
    shapes = {getattr(info, "row_shape", None) for info, _, _ in parts}
    fail_keys, fail_sources, fail_reasons = _failures(ns, dataset)
    digest = hashlib.blake2b(np.ascontiguousarray(keys).tobytes(), digest_size=32)
    with files.atomic_h5(out) as f:
        f.create_dataset("keys", data=keys)
        feats = f.create_dataset("features", shape=(len(keys), dim), dtype=shards.DTYPES[dtype])
        sources = f.create_dataset("sources", shape=(len(keys),), dtype=files.STR_DTYPE)
        _copy_rows(parts, feats, sources, digest)
        for name, values in _columns(records).items():
            f.create_dataset(name, data=files.text_array(values), dtype=files.STR_DTYPE)
        digest.update(fail_keys.tobytes())
        group = f.create_group("failures")
        group.create_dataset("keys", data=fail_keys)
        group.create_dataset("sources", data=files.text_array(fail_sources), dtype=files.STR_DTYPE)
        group.create_dataset("reasons", data=files.text_array(fail_reasons), dtype=files.STR_DTYPE)
        f.attrs.update({"rows": len(keys), "dim": int(dim), "dtype": dtype,
                        "checksum": digest.hexdigest(), "created": files.now_iso(),
                        "failures": len(fail_keys), "format_version": FORMAT_VERSION,
                        "featcache_export": 1, **meta})
        if len(shapes) == 1 and None not in shapes:
            f.attrs["row_shape"] = np.asarray(shapes.pop(), dtype=np.int64)


def _copy_rows(parts, feats, sources, digest) -> None:
    """Copy ``(shard, rows, records)`` parts into ``features`` and ``sources``, in windows.

    ``rows`` are sorted and may repeat (byte-identical inputs share a row): each window reads
    its distinct rows once.
    """
    at = 0
    for info, rows, records in parts:
        names = shards.read_sources(info.path)
        sources[at:at + len(rows)] = files.text_array(
            [r.get("source") or names[row] for row, r in zip(rows, records)])
        step = max(1, (64 << 20) // max(1, info.dim * 4))
        for lo in range(0, len(rows), step):
            distinct, inverse = np.unique(rows[lo:lo + step], return_inverse=True)
            block = shards.read_rows(info.path, distinct)[inverse].astype(feats.dtype)
            feats[at:at + len(block)] = block
            digest.update(np.ascontiguousarray(block).tobytes())
            at += len(block)


def _write_npz(out, keys, features, sources, columns, fails, meta) -> None:
    """Write an export ``.npz`` atomically (no pickled objects: strings are unicode arrays)."""
    fail_keys, fail_sources, fail_reasons = fails
    arrays = {"keys": keys, "features": features, "sources": _unicode(sources),
              **{name: _unicode(values) for name, values in columns.items()},
              "failure_keys": fail_keys, "failure_sources": _unicode(fail_sources),
              "failure_reasons": _unicode(fail_reasons),
              **{name: np.array(value) for name, value in meta.items()}}
    with files.atomic_file(out) as fh:
        np.savez(fh, **arrays)


def _unicode(values) -> np.ndarray:
    """A numpy unicode array of :func:`~featcache.cache.files.safe_text` strings."""
    return np.array([files.safe_text(v) for v in values], dtype=str)
