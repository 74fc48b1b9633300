"""Labels, groups, splits and dataset tags of inputs, stored beside the cache, by content key.

A label is a property of an input, not of a backbone configuration, so annotations live once
per cache directory (``CACHE_DIR/annotations/<seq>-<uuid>.h5``) and serve every namespace.
Like shards, each file is written to a temporary name, fsync'ed and renamed into place, and
never modified; when several files annotate one key, the newest wins. h5py + numpy only.

A record may carry a **dataset** tag (``featcache extract --dataset NAME``), so that one cache
directory can hold several studies: reading with ``dataset=NAME`` sees only the records of that
dataset (the newest of them wins), so each study keeps its own labels and splits even when
the same image belongs to two of them. Files written before tags existed read as untagged.
"""

from __future__ import annotations

import os
import pathlib
import warnings

import numpy as np

from ..exceptions import CacheCorruptError, CacheValueError, MixedDatasetsWarning
from . import files, shards
from .checks import get_dataset

__all__ = ["ANNOTATIONS_DIR", "write_annotations", "read_annotations", "verify_annotations",
           "dataset_counts", "select_dataset", "describe_datasets", "check_dataset", "FIELDS"]

ANNOTATIONS_DIR = "annotations"
#: Per-input fields; an empty string stands for "none". ``dataset`` is optional in a file
#: (files written before dataset tags existed have none: untagged).
FIELDS = ("label", "group", "split", "source", "dataset")
_OPTIONAL = ("dataset",)


def check_dataset(dataset, what="dataset"):
    """``dataset`` as stored (None stays None); a CacheValueError unless a non-empty str."""
    if dataset is None:
        return None
    if not isinstance(dataset, str) or not dataset.strip():
        raise CacheValueError(f"{what}={dataset!r} is not a dataset name; expected a non-empty "
                              "string such as 'study-a' (the tag given at extraction), or None")
    return files.safe_text(dataset)


def _as_str(values, n):
    if values is None:
        return [""] * n
    values = ["" if v is None else files.safe_text(v) for v in values]
    if len(values) != n:
        raise ValueError(f"expected {n} values, got {len(values)}")
    return values


def write_annotations(cache_dir, keys, *, label=None, group=None, split=None, source=None,
                      dataset=None):
    """Store per-input annotations for ``keys`` (a list of 16-byte keys); returns the file.

    Each of ``label``, ``group``, ``split``, ``source`` is a sequence aligned with ``keys``
    (None entries mean "unknown") or None for all unknown. ``dataset`` is one tag (a str) for
    every key of this call, or None (untagged).
    """
    keys = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, shards.KEY_BYTES)
    n = len(keys)
    tag = check_dataset(dataset)
    columns = dict(zip(FIELDS, (_as_str(v, n) for v in (label, group, split, source,
                                                         None if tag is None else [tag] * n))))
    directory = pathlib.Path(cache_dir) / ANNOTATIONS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / files.new_shard_name()
    with files.atomic_h5(final) as f:
        f.create_dataset("keys", data=keys)
        for name, values in columns.items():
            f.create_dataset(name, data=np.array(values, dtype=object), dtype=files.STR_DTYPE)
        f.attrs["rows"] = n
    return final


def read_annotations(cache_dir, keys=None, *, dataset=None) -> dict:
    """``key -> {"label", "group", "split", "source", "dataset"}`` (None for unknown).

    The newest record of a key wins. With ``keys``, only those keys are returned (keys never
    annotated are absent). With ``dataset``, only the records tagged with that dataset count,
    so the result holds exactly the keys of that dataset, with its own labels and splits.

    Raises
    ------
    CacheCorruptError
        When an annotations file is damaged (named in the message; ``featcache verify``
        lists it too). It is not skipped: an older label would then win without notice.
    """
    return _scan(cache_dir, keys, check_dataset(dataset))[0]


def dataset_counts(cache_dir, keys) -> dict:
    """``tag -> number of keys`` among ``keys`` with a record of that dataset tag.

    ``None`` counts the keys with an untagged record or with no record at all. A key tagged
    with two datasets counts in both, so the counts may add up to more than ``len(keys)``.
    """
    keys = [bytes(k) for k in keys]
    return _counts(keys, _scan(cache_dir, keys, None)[1])


def select_dataset(cache_dir, keys, dataset, *, what, namespace, required=True,
                   warn=True) -> tuple:
    """``(mask over keys, key -> annotation)`` of the rows a reader should use.

    With ``dataset``: the keys tagged with it, and that dataset's annotations; a
    CacheValueError naming the datasets present when none is (unless not ``required``).
    Without: every key, the newest annotations, and a :class:`MixedDatasetsWarning` when the
    keys belong to several datasets (or some are tagged and some are not; ``warn=False`` when
    the caller chose its rows otherwise). ``what`` ("the probe", "the export") and
    ``namespace`` (a fingerprint) word the messages.
    """
    keys = [bytes(k) for k in keys]
    tag = check_dataset(dataset)
    ann, members = _scan(cache_dir, keys, tag)
    if tag is not None:
        keep = np.array([k in ann for k in keys], dtype=bool)
        if required and not keep.any():
            raise CacheValueError(
                f"dataset={dataset!r} tags no row of namespace {namespace}; its rows are "
                f"{describe_datasets(_counts(keys, members))}. Pass one of those "
                "names, or tag rows at extraction with dataset='NAME'")
        return keep, ann
    counts = _counts(keys, members) if warn else {}
    if len(counts) > 1:
        example = sorted(t for t in counts if t is not None)[0]
        warnings.warn(f"namespace {namespace} holds rows of {describe_datasets(counts)}; "
                      f"{what} uses all {len(keys)} of them. Pass dataset={example!r} to use "
                      "one dataset's rows only", MixedDatasetsWarning, stacklevel=3)
    return np.ones(len(keys), dtype=bool), ann


def describe_datasets(counts) -> str:
    """``"dataset 'a' (60 rows), dataset 'b' (40 rows) and 5 untagged rows"`` from counts."""
    parts = [f"dataset {t!r} ({n} row{'s' * (n != 1)})"
             for t, n in sorted((t, n) for t, n in counts.items() if t is not None)]
    if counts.get(None):
        parts.append(f"{counts[None]} untagged row{'s' * (counts[None] != 1)}")
    if not parts:
        return "none"
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _scan(cache_dir, keys, tag) -> tuple:
    """One pass over the files: (key -> newest record [of dataset ``tag``], key -> tags)."""
    ann: dict = {}
    members: dict = {}
    for key, record in _records(cache_dir, keys):
        members.setdefault(key, set()).add(record["dataset"])
        if tag is None or record["dataset"] == tag:
            ann[key] = record
    return ann, members


def _counts(keys, members) -> dict:
    """``tag -> number of keys`` (None: untagged, or never annotated) from :func:`_scan`."""
    counts: dict = {}
    for key in keys:
        for tag in members.get(key, (None,)):
            counts[tag] = counts.get(tag, 0) + 1
    return counts


def _records(cache_dir, keys):
    """``(key, record)`` of every annotation of ``keys`` (all when None), oldest file first."""
    directory = pathlib.Path(cache_dir) / ANNOTATIONS_DIR
    wanted = None if keys is None else {bytes(k) for k in keys}
    for name in files.list_shards(directory):
        read = _read_file(directory / name)
        if read is None:
            continue
        file_keys, columns = read
        for i, key in enumerate(map(bytes, file_keys)):
            if wanted is None or key in wanted:
                yield key, {field: (columns[field][i] or None) for field in FIELDS}


def verify_annotations(cache_dir) -> list:
    """Messages naming each damaged annotations file of ``cache_dir`` (empty when all read)."""
    directory = pathlib.Path(cache_dir) / ANNOTATIONS_DIR
    problems = []
    for name in files.list_shards(directory):
        try:
            _read_file(directory / name)
        except CacheCorruptError as exc:
            problems.append(str(exc))
    return problems


def _read_file(path: pathlib.Path):
    """(keys, {field: strings}) of one annotations file; None if it vanished meanwhile.

    Every dataset's declared size is checked against the file's real size before it is read.
    """
    fix = "; delete it and annotate those inputs again"
    try:
        size = os.stat(path).st_size
        with files.open_read(path) as f:
            keys = f.get("keys")
            n = keys.shape[0] if getattr(keys, "shape", None) else -1
            keys = get_dataset(f, "keys", path, size, (n, shards.KEY_BYTES),
                                       np.dtype(np.uint8), what="annotations file")
            columns = {field: [""] * n if field in _OPTIONAL and field not in f else
                       shards.str_list(get_dataset(f, field, path, size, (n,),
                                                   what="annotations file"))
                       for field in FIELDS}
            return keys[()], columns
    except FileNotFoundError:
        return None
    except CacheCorruptError as exc:
        raise CacheCorruptError(f"{exc}{fix}") from exc
    except Exception as exc:  # h5py raises OSError/KeyError/ValueError/TypeError on damage
        raise CacheCorruptError(f"annotations file {path}: cannot be read "
                                f"({type(exc).__name__}: {exc}); it is truncated, damaged or "
                                f"not a featcache annotations file{fix}") from exc
