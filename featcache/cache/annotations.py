"""Labels, groups, splits and dataset tags of input **records**, stored beside the cache.

A label is a property of an input, not of a backbone configuration, so annotations live once
per cache directory (``CACHE_DIR/annotations/<seq>-<uuid>.h5``) and serve every namespace.
Like shards, each file is written to a temporary name, fsync'ed and renamed into place, and
never modified. h5py + numpy only.

Records and rows: a **record** is one input, ``(source, key, label, group, split, dataset)``;
its row (the embedding) belongs to its content key and is shared by every record with that
key. Two byte-identical files are two records sharing one row, each with its own label, split
and group. A record is identified by its dataset tag and its source: rewriting it (a rerun, a
new label, an edited file with a new key) replaces it, the newest file winning. A record
written without a source (``FeatureCache.annotate(keys, label=...)``) speaks of the content:
it relabels every record of that key in its dataset (keeping their sources), or stands alone
while the key has none; a record with a source later written for that key replaces it.
:func:`read_records` returns the records; :func:`read_annotations` keeps the older by-key view
(the newest record of each key). :func:`find_leaks` finds content recorded in more than one
split or group, :func:`warn_leaks` says so (:class:`~featcache.exceptions.ContentLeakWarning`).

A record may carry a **dataset** tag (``featcache extract --dataset NAME``), so that one cache
directory can hold several studies: reading with ``dataset=NAME`` sees only the records of that
dataset, so each study keeps its own labels and splits even when the same image belongs to two
of them. Files written before tags existed read as untagged; files written when annotations
were read by content key have the same layout and read as records.
"""

from __future__ import annotations

import os
import pathlib
import warnings

import numpy as np

from ..exceptions import (CacheCorruptError, CacheValueError, ContentLeakWarning,
                          MixedDatasetsWarning)
from . import files, shards
from .checks import get_dataset

__all__ = ["ANNOTATIONS_DIR", "write_annotations", "read_annotations", "read_records",
           "verify_annotations", "dataset_counts", "select_dataset", "select_records",
           "describe_datasets", "check_dataset", "find_leaks", "warn_leaks", "FIELDS"]

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
    """Store one record per entry of ``keys`` (a list of 16-byte keys); returns the file.

    Each of ``label``, ``group``, ``split``, ``source`` is a sequence aligned with ``keys``
    (None entries mean "unknown") or None for all unknown. ``dataset`` is one tag (a str) for
    every key of this call, or None (untagged). A key may appear several times (byte-identical
    inputs): each entry is its own record. A record replaces the earlier one with the same
    source and dataset; without a source it relabels the records of its key (see the module).
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


def read_records(cache_dir, keys=None, *, dataset=None) -> list:
    """Every input record: ``{"key", "label", "group", "split", "source", "dataset"}`` dicts.

    One record per input (not per content): byte-identical inputs are several records with
    one ``key``, each with its own label, group, split and source. Records are in the order
    they were first written. With ``keys``, only the records of those keys; with ``dataset``,
    only that dataset's records. None stands for "unknown".

    Raises
    ------
    CacheCorruptError
        When an annotations file is damaged (named in the message).
    """
    return _scan(cache_dir, keys, check_dataset(dataset))[2]


def read_annotations(cache_dir, keys=None, *, dataset=None) -> dict:
    """``key -> {"label", "group", "split", "source", "dataset"}``: the newest record of a key.

    The by-content view of :func:`read_records`: when several inputs share a key, only the
    most recently written record is returned (use :func:`read_records` for all of them). With
    ``keys``, only those keys are returned (keys never annotated are absent). With
    ``dataset``, only the records tagged with that dataset count, so the result holds exactly
    the keys of that dataset, with its own labels and splits.

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
    keep, ann, _ = _select(cache_dir, keys, dataset, what, namespace, required, warn)
    return keep, ann


def select_records(cache_dir, keys, dataset, *, what, namespace, required=True,
                   warn=True) -> tuple:
    """``(mask over keys, records)``: as :func:`select_dataset`, with the records of the rows.

    ``records`` (see :func:`read_records`) are those of ``keys`` (of ``dataset`` when given):
    one per input, so a key may have several, and a key of the mask may have none (a row
    nobody annotated).
    """
    keep, _, records = _select(cache_dir, keys, dataset, what, namespace, required, warn)
    return keep, records


def _select(cache_dir, keys, dataset, what, namespace, required, warn) -> tuple:
    keys = [bytes(k) for k in keys]
    tag = check_dataset(dataset)
    ann, members, records = _scan(cache_dir, keys, tag)
    if tag is not None:
        keep = np.array([k in ann for k in keys], dtype=bool)
        if required and not keep.any():
            raise CacheValueError(
                f"dataset={dataset!r} tags no row of namespace {namespace}; its rows are "
                f"{describe_datasets(_counts(keys, members))}. Pass one of those "
                "names, or tag rows at extraction with dataset='NAME'")
        return keep, ann, records
    counts = _counts(keys, members) if warn else {}
    if len(counts) > 1:
        example = sorted(t for t in counts if t is not None)[0]
        warnings.warn(f"namespace {namespace} holds rows of {describe_datasets(counts)}; "
                      f"{what} uses all {len(keys)} of them. Pass dataset={example!r} to use "
                      "one dataset's rows only", MixedDatasetsWarning, stacklevel=4)
    return np.ones(len(keys), dtype=bool), ann, records


def describe_datasets(counts) -> str:
    """``"dataset 'a' (60 rows), dataset 'b' (40 rows) and 5 untagged rows"`` from counts."""
    parts = [f"dataset {t!r} ({n} row{'s' * (n != 1)})"
             for t, n in sorted((t, n) for t, n in counts.items() if t is not None)]
    if counts.get(None):
        parts.append(f"{counts[None]} untagged row{'s' * (counts[None] != 1)}")
    if not parts:
        return "none"
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


#: Leak kinds :func:`find_leaks` reports -> (record field, word in messages, no value counts).
_LEAK_FIELDS = {"splits": ("split", "split", True), "groups": ("group", "group (patient)", False)}


def find_leaks(records, *, examples: int = 3) -> dict:
    """Content recorded in more than one split or group: ``{"splits": ..., "groups": ...}``.

    Each entry present is ``{"count": number of keys, "examples": [{"key": hex, "sources":
    [...], "values": [...]}, ...]}`` (at most ``examples`` keys, with the source and split or
    group of each of their records). A record without a split counts as one more split (it
    trains where a split chooses the validation rows); a record without a group counts in
    none. Empty when nothing leaks. JSON-serialisable, as ``report.json`` stores it.
    """
    by_key: dict = {}
    for record in records:
        by_key.setdefault(bytes(record["key"]), []).append(record)
    out = {}
    for kind, (field, _, none_counts) in _LEAK_FIELDS.items():
        hits = [(key, group) for key, group in by_key.items()
                if len({r[field] for r in group if none_counts or r[field] is not None}) > 1]
        if hits:
            out[kind] = {"count": len(hits), "examples": [
                {"key": key.hex(), "sources": [r["source"] or key.hex() for r in group],
                 "values": [r[field] for r in group]} for key, group in hits[:examples]]}
    return out


def warn_leaks(leaks, *, what, stacklevel: int = 3) -> None:
    """A :class:`~featcache.exceptions.ContentLeakWarning` describing :func:`find_leaks`' result.

    ``what`` ("the probe", "the export") words the message. Nothing when ``leaks`` is empty.
    """
    parts = []
    for kind, (_, word, _) in _LEAK_FIELDS.items():
        if kind not in leaks:
            continue
        n = leaks[kind]["count"]
        shown = "; ".join(" and ".join(f"{s!r} ({'no ' + word if v is None else v})"
                                       for s, v in zip(e["sources"], e["values"]))
                          for e in leaks[kind]["examples"])
        parts.append(f"{n} image{'s' * (n != 1)} (content key{'s' * (n != 1)}) "
                     f"{'are' if n != 1 else 'is'} in more than one {word}, e.g. {shown}")
    if parts:
        warnings.warn(
            f"byte-identical inputs: {'; '.join(parts)}. {what[0].upper() + what[1:]} keeps "
            "each input as its own record, so copies of one image sit on both sides of a "
            "split or in two patients' folds: its numbers are optimistic (a leak). Remove the "
            "copies, or give every copy of an image the same split and group",
            ContentLeakWarning, stacklevel=stacklevel)


def _scan(cache_dir, keys, tag) -> tuple:
    """One pass over the files: (key -> newest record [of dataset ``tag``], key -> tags,
    records [of dataset ``tag``]), limited to ``keys`` when given."""
    wanted = None if keys is None else {bytes(k) for k in keys}
    ann: dict = {}
    newest: dict = {}
    members: dict = {}
    records = []
    for seq, record in _resolve(_records(cache_dir)):
        key = record["key"]
        if wanted is not None and key not in wanted:
            continue
        members.setdefault(key, set()).add(record["dataset"])
        if tag is None or record["dataset"] == tag:
            records.append(record)
            if seq >= newest.get(key, -1):
                newest[key] = seq
                ann[key] = {field: record[field] for field in FIELDS}
    return ann, members, records


def _resolve(raw) -> list:
    """``[(seq, record)]``: the live records of ``(key, record)`` pairs given oldest first.

    A record with a source is identified by ``(dataset, source)`` and replaces the earlier
    one; it also replaces a source-less record of its key and dataset. A record without a
    source relabels the sourced records of its key and dataset (keeping their sources), or,
    when there are none, is identified by ``(dataset, key)``.
    """
    live: dict = {}      # identity -> (seq, record)
    sourced: dict = {}   # (dataset, key) -> identities of the sourced records of that key
    for seq, (key, fields) in enumerate(raw):
        tag, source = fields["dataset"], fields["source"]
        content = (tag, key)
        if source is None:
            for ident in sourced.get(content, ()):
                live[ident] = (seq, {"key": key, **fields, "source": live[ident][1]["source"]})
            if not sourced.get(content):
                live[("key",) + content] = (seq, {"key": key, **fields})
            continue
        live.pop(("key",) + content, None)
        ident = ("source", tag, source)
        if ident in live:
            sourced.get((tag, live[ident][1]["key"]), set()).discard(ident)
        live[ident] = (seq, {"key": key, **fields})
        sourced.setdefault(content, set()).add(ident)
    return list(live.values())


def _counts(keys, members) -> dict:
    """``tag -> number of keys`` (None: untagged, or never annotated) from :func:`_scan`."""
    counts: dict = {}
    for key in keys:
        for tag in members.get(key, (None,)):
            counts[tag] = counts.get(tag, 0) + 1
    return counts


def _records(cache_dir):
    """``(key, fields)`` of every stored annotation, oldest file first, in file order."""
    directory = pathlib.Path(cache_dir) / ANNOTATIONS_DIR
    for name in files.list_shards(directory):
        read = _read_file(directory / name)
        if read is None:
            continue
        file_keys, columns = read
        for i, key in enumerate(map(bytes, file_keys)):
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
