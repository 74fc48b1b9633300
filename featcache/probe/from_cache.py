"""Probing a cache namespace: features from the cache, labels from its records or a CSV.

The protocol itself is :func:`featcache.probe.protocol.linear_probe`; this module finds the rows (one
namespace of a :class:`~featcache.cache.FeatureCache`, one dataset of it, or the inputs of a
manifest), their labels, groups and validation split, and is the library behind
``featcache probe`` (whose argument parsing lives in :mod:`featcache.cli.probe`). Reading needs no
torch.
"""

from __future__ import annotations

import os
import pathlib
from numbers import Real

import numpy as np

from ..cache import FeatureCache
from ..cache.annotations import find_leaks, select_dataset, select_records, warn_leaks
from ..cache.export import namespace_rows
from ..cache.selection import select_namespace
from ..exceptions import ProbeError
from ..inputs import content_key
from ..inputs.sources import collect_inputs
from .protocol import ProbeReport, linear_probe

__all__ = ["probe_cache"]


def probe_cache(cache_dir, namespace=None, *, dataset=None, manifest=None, labels="from-cache",
                groups=None, val="auto", out_dir=None, **probe_kwargs) -> ProbeReport:
    """Probe the embeddings of one cache namespace, with labels from the cache or a CSV.

    Parameters
    ----------
    cache_dir : str or PathLike
        A featcache cache directory.
    namespace : str, optional
        Fingerprint (or a unique prefix of it) of the namespace to read; optional when the
        cache holds one (``featcache info DIR`` lists them).
    dataset : str, optional
        Use only the rows tagged with this dataset (``featcache extract --dataset NAME``,
        ``extract(..., dataset=NAME)``), with that dataset's labels, groups and splits. Without
        it (and without ``manifest`` or a labels CSV) every row of the namespace is used, and a
        :class:`~featcache.exceptions.MixedDatasetsWarning` names the datasets when the rows
        belong to several.
    manifest : str, PathLike or list of them, optional
        Use only the rows of these inputs: anything ``featcache extract`` takes (a CSV, TSV or
        Parquet manifest with a path column, a folder, image files, an ``.npz``). A row matches
        by the content key of its file or, when the file is gone, by the recorded source.
    labels : "from-cache" or path, default="from-cache"
        ``"from-cache"``: the labels recorded with the rows (by ``featcache extract`` or
        ``FeatureCache.annotate``). A CSV path: a manifest with columns ``path``, ``label`` and
        optionally ``group`` and ``split``; only its rows are used. A row matches a cached
        embedding by the content key of the file at ``path`` (relative paths are tried from
        the working directory, then from the CSV's folder) or, when the file is gone, by the
        ``source`` recorded in the annotations.
    groups : None, True, "from-cache" or str, optional
        None: no groups. True/``"from-cache"``: the ``group`` annotation. A str: that CSV column.
        Used for group-aware cross-validation (outer and inner folds) and fraction splits;
        with a named validation split, a group with rows on both sides is refused
        (:class:`ProbeError`), or with ``group_overlap="warn"`` warned about
        (:class:`~featcache.exceptions.GroupOverlapWarning`) and recorded in
        ``report.metrics_source["group_overlap"]``.
    val : "auto", str, float or None, default="auto"
        ``"auto"``: the rows whose split is ``"val"`` when there are any, else
        cross-validation (as ``None``; the report says which, in ``info["validation"]`` and a
        note). A split name: rows whose split (CSV column, else annotation) equals it are the
        validation split; rows with split ``"train"`` or none train. A float in (0, 1): that
        fraction of the rows, drawn stratified (``StratifiedShuffleSplit``; with groups
        ``StratifiedGroupKFold`` with ``round(1 / val)`` folds, its first fold, so about that
        fraction and no group on both sides). None: cross-validation (``cv`` folds,
        stratified, group-aware with groups). Rows with split ``"test"`` are always excluded.
    out_dir : str or PathLike, optional
        Where to write the report (:meth:`ProbeReport.save`); ``predictions.csv`` then names
        each evaluated row by its content key (hex) and source.
    **probe_kwargs
        Passed to :func:`linear_probe` (``head``, ``param_grid``, ``Cs``, ``cv``, ``nested``,
        ``select_on``, ``group_overlap``, ``n_bootstrap``, ``random_state`` ...).

    Returns
    -------
    ProbeReport
        With ``info["skipped"]``: records without a label, failed inputs (recorded failures
        and NaN rows) and test records; ``info["selection"]`` (``rows`` and ``records``
        chosen); ``samples`` ``key`` and ``source``; ``leaks``.

    Warns
    -----
    ContentLeakWarning
        When one content (a key) is recorded in more than one split or group among the
        records used: the count and examples, also in ``report.leaks`` (``report.json``).
    MixedDatasetsWarning
        When, without ``dataset``, the rows belong to several datasets.

    Notes
    -----
    The samples are input **records**, not rows: byte-identical inputs (one content key, one
    cached row) with their own labels, splits or groups are separate samples, each with its
    own source (see :func:`featcache.cache.annotations.read_records`). A row that no record
    names is one sample without a label.
    """
    cache = FeatureCache(cache_dir, create=False)
    fingerprint = select_namespace(cache, namespace, error=ProbeError)
    rows = _load_rows(cache, fingerprint, dataset, manifest, labels, groups)
    used = rows["selected"] & ~rows["failed"] & ~rows["unlabelled"]
    leaks = find_leaks([rows["records"][i] for i in np.flatnonzero(used)])
    warn_leaks(leaks, what="the probe")
    keep = used & ~rows["test"]
    if not keep.any():
        raise ProbeError(
            f"no usable rows in namespace {fingerprint}: {int(rows['selected'].sum())} records "
            f"selected, {int((rows['unlabelled'] & rows['selected']).sum())} without a label, "
            f"{int((rows['failed'] & rows['selected']).sum())} failed; record labels when "
            "extracting (class folders, a manifest's label column) or pass labels='labels.csv'")
    y = _normalise_labels(rows["label"][keep])
    g = None if rows["group"] is None else rows["group"][keep]
    val, notes = _resolve_val(val, rows["split"][keep])
    notes += _notes(rows, groups, val, keep)
    report, evaluated = _probe_split(rows["X"][keep], y, g, rows["split"][keep], val,
                                     probe_kwargs)
    report.samples = {"key": rows["key_hex"][keep][evaluated],
                      "source": rows["source"][keep][evaluated]}
    report.info.update(_info(cache, fingerprint, rows, dataset, manifest))
    report.info["notes"] = notes
    report.leaks = leaks
    if out_dir is not None:
        report.save(out_dir)
    return report


def _load_rows(cache, fingerprint, dataset, manifest, labels, groups) -> dict:
    """One entry per input record (rows shared by key): features, keys, sources, labels, masks.

    A record is one input (:func:`featcache.cache.annotations.read_records`): byte-identical
    inputs are several records sharing one row, each with its own label, group and split. A
    row that no record names (nobody annotated it) is one record without a label.
    """
    keys, X, sources = namespace_rows(cache.namespace(fingerprint))
    key_bytes = [bytes(k) for k in keys]
    chosen = manifest is not None or not _from_cache(labels)
    in_dataset, records = select_records(cache.path, key_bytes, dataset, what="the probe",
                                         namespace=fingerprint, warn=not chosen)
    row_of = {k: i for i, k in enumerate(key_bytes)}
    records = [r for r in records if r["key"] in row_of]
    rows = _record_labels(records, key_bytes, labels, groups)
    records = rows.pop("records")
    named = {r["key"] for r in records}
    records += [{"key": k, "label": None, "group": None, "split": None, "source": sources[i],
                 "dataset": None}
                for i, k in enumerate(key_bytes) if in_dataset[i] and k not in named]
    for field in ("label", "group", "split", "group_annotation"):
        if rows.get(field) is not None:
            rows[field] = list(rows[field]) + [None] * (len(records) - len(rows[field]))
    order = sorted(range(len(records)), key=lambda j: row_of[records[j]["key"]])  # stable
    records = [records[j] for j in order]
    for field in ("label", "group", "split", "group_annotation"):
        if rows.get(field) is not None:
            rows[field] = np.array([rows[field][j] for j in order] or [], dtype=object)
    at = np.array([row_of[r["key"]] for r in records], dtype=np.int64)
    rows["selected"] = in_dataset[at] if len(at) else np.zeros(0, dtype=bool)
    if manifest is not None:
        in_manifest, rows["manifest_unmatched"] = _manifest_rows(cache, manifest, records)
        rows["selected"] = rows["selected"] & in_manifest
    X = X[at] if len(at) else np.zeros((0, X.shape[1]), X.dtype)
    rows.update(X=X, records=records, n_rows=len(key_bytes),
                key_hex=np.array([r["key"].hex() for r in records], dtype=object),
                source=np.array([r["source"] or sources[row_of[r["key"]]] for r in records],
                                dtype=object),
                failed=~np.isfinite(X).all(axis=1),
                unlabelled=np.array([v is None for v in rows["label"]], dtype=bool),
                test=np.array([s == "test" for s in rows["split"]], dtype=bool))
    return rows


def _info(cache, fingerprint, rows, dataset, manifest) -> dict:
    """The facts a cache probe adds to ``report.info``: where, what was selected, skipped."""
    ns = cache.namespace(fingerprint)
    config = ns.config
    present = set(rows["key_hex"])
    fails = [k for k in ns.failures() if k.hex() not in present]
    if dataset is not None and fails:
        fails = np.flatnonzero(select_dataset(cache.path, fails, dataset, what="the probe",
                                              namespace=fingerprint, required=False)[0])
    sel, failed = rows["selected"], rows["failed"]
    unlabelled = rows["unlabelled"] & ~failed
    return {
        "cache": str(cache.path), "namespace": fingerprint, "model": config.get("model"),
        "layer": config.get("layer"),
        "image_size": config.get("preprocessing", {}).get("image_size"),
        "rows": rows["n_rows"],
        "selection": {"dataset": dataset, "manifest": _manifest_names(manifest),
                      "rows": len(set(rows["key_hex"][sel])), "records": int(sel.sum())},
        "skipped": {"without a label": int((unlabelled & sel).sum()),
                    "failed": int((failed & sel).sum()) + len(fails),
                    "test split": int((rows["test"] & ~failed & ~rows["unlabelled"] & sel).sum())}}


def _notes(rows, groups, val, keep) -> list:
    notes = []
    if rows.get("unmatched"):
        notes.append(f"{rows['unmatched']} CSV row(s) matched no cached embedding (files not "
                     "extracted into this namespace, or changed since)")
    if rows.get("manifest_unmatched"):
        notes.append(f"{rows['manifest_unmatched']} manifest input(s) matched no row of this "
                     "namespace (not extracted into it, or changed since)")
    if groups is None and not isinstance(val, str) and any(
            g is not None for g in rows["group_annotation"][keep]):
        notes.append("the cache records groups but the split ignores them; pass "
                     "groups='from-cache' to keep each patient on one side")
    return notes


def _resolve_val(val, split) -> tuple:
    """``(val, notes)``: ``"auto"`` becomes ``"val"`` when a row has that split, else None."""
    if not (isinstance(val, str) and val == "auto"):
        return val, []
    if any(s == "val" for s in split):
        return "val", []
    return None, ["no labelled row has split 'val', so the hyper-parameters were chosen and "
                  "the metrics computed by cross-validation (as val=None); pass val=0.2 for a "
                  "held-out random fraction instead"]


def _probe_split(X, y, groups, split, val, kwargs) -> tuple:
    """``(report, evaluated rows)``: linear_probe with the validation split ``val`` names."""
    if val is None:
        report = linear_probe(X, y, groups=groups, **kwargs)
        report.info["validation"] = "cross-validation"
        return report, np.arange(len(y))
    if isinstance(val, Real) and not isinstance(val, bool):
        train, test = _fraction_split(y, groups, float(val), kwargs.get("random_state", 0))
    elif isinstance(val, str):
        is_val = np.array([s == val for s in split], dtype=bool)
        if not is_val.any():
            found = sorted({s for s in split if s is not None})
            raise ProbeError(f"no labelled row has split {val!r} (splits found: "
                             f"{found or 'none'}); record splits when extracting (a manifest's "
                             "split column, or FeatureCache.annotate(split=...)), add a split "
                             "column to the labels CSV, or pass val=0.2 (a random fraction) or "
                             "val=None (cross-validation)")
        train, test = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    else:
        raise ProbeError(f"val must be 'auto', a split name, a fraction in (0, 1) or None, "
                         f"got {val!r}")
    if not len(train):
        raise ProbeError(f"every labelled row is in the validation split {val!r}; nothing "
                         "is left to train on")
    if groups is not None:  # each side's groups: a group on both sides is refused or warned
        kwargs = {**kwargs, "groups": groups[train], "groups_val": groups[test]}
    report = linear_probe(X[train], y[train], X_val=X[test], y_val=y[test], **kwargs)
    report.info["validation"] = f"split {val!r}" if isinstance(val, str) else f"fraction {val}"
    return report, test


def _fraction_split(y, groups, fraction, random_state):
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedShuffleSplit

    if not 0 < fraction < 1:
        raise ProbeError(f"val={fraction} is not a fraction in (0, 1); e.g. val=0.2")
    try:
        if groups is None:
            split = StratifiedShuffleSplit(1, test_size=fraction, random_state=random_state)
        else:
            split = StratifiedGroupKFold(max(2, round(1 / fraction)), shuffle=True,
                                         random_state=random_state)
        return next(split.split(np.zeros(len(y)), y, groups))
    except ValueError as exc:
        raise ProbeError(f"cannot draw a validation fraction of {fraction} from {len(y)} rows: "
                         f"{exc}") from exc


def _normalise_labels(values) -> np.ndarray:
    """Labels as ints when they all read as integers, else as strings."""
    values = [str(v) for v in values]
    try:
        return np.array([int(v) for v in values])
    except ValueError:
        return np.array(values)


def _from_cache(labels) -> bool:
    return isinstance(labels, str) and labels == "from-cache"


def _record_labels(records, key_bytes, labels, groups) -> dict:
    """Per record: label, group (or None when not asked for) and split, as lists.

    From the cache, the records are the cache's; from a labels CSV, each matched CSV row is a
    record (returned under ``"records"``), its split the CSV's or else the annotation's.
    """
    group_column = groups if isinstance(groups, str) and groups != "from-cache" else None
    if _from_cache(labels):
        if group_column is not None:
            raise ProbeError(f"groups={groups!r} names a CSV column, but labels come from the "
                             "cache; pass labels='labels.csv', or groups='from-cache'")
        rows = {"records": records, "label": [r["label"] for r in records],
                "split": [r["split"] for r in records], "unmatched": 0,
                "group_annotation": [r["group"] for r in records]}
    elif isinstance(labels, (str, os.PathLike)):
        rows = _labels_from_csv(pathlib.Path(labels), key_bytes, records, group_column)
    else:
        raise ProbeError(f"labels must be 'from-cache' or the path of a CSV, got {labels!r}")
    if groups is True or groups == "from-cache":
        rows["group"] = rows["group_annotation"]
    elif group_column is None:
        rows["group"] = None
    if rows["group"] is not None:
        lacking = sum(g is None for g, lab in zip(rows["group"], rows["label"]) if lab is not None)
        if lacking:
            raise ProbeError(f"{lacking} labelled records have no group; record a group "
                             "(patient) for every input, or pass groups=None")
    return rows


def _labels_from_csv(path, key_bytes, records, group_column) -> dict:
    """One record per CSV row that matches a cached row (by content key or recorded source)."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise ProbeError(f"cannot read the labels CSV '{path}': {exc}; pass a CSV with columns "
                         "path,label[,group][,split]") from exc
    needed = {"path", "label"} | ({group_column} if group_column else set())
    missing = sorted(needed - set(frame.columns))
    if missing:
        raise ProbeError(f"labels CSV '{path}' lacks column(s) {missing} (it has "
                         f"{list(frame.columns)}); expected path,label[,group][,split]")
    present = set(key_bytes)
    by_source = {r["source"]: r for r in records if r["source"]}
    by_key = {r["key"]: r for r in records}
    out = {"records": [], "label": [], "group": [], "split": [], "group_annotation": [],
           "unmatched": 0}
    for i, rec in enumerate(frame.to_dict("records")):
        key, source = _csv_key(rec["path"], path.parent, i, by_source)
        if key is None or key not in present:
            out["unmatched"] += 1
            continue
        known = by_source.get(source) or by_key.get(key) or {}
        out["records"].append({"key": key, "label": rec["label"] or None,
                               "group": (rec[group_column] or None) if group_column else None,
                               "split": None, "source": source, "dataset": known.get("dataset")})
        out["label"].append(rec["label"] or None)
        out["group"].append(out["records"][-1]["group"])
        out["split"].append((rec["split"] or None) if "split" in frame.columns
                            else known.get("split"))
        out["group_annotation"].append(known.get("group"))
    if not group_column:
        out["group"] = None
    return out


def _csv_key(value, base, index, by_source) -> tuple:
    """``(content key, source)`` of a CSV row's file, or of the record whose source it names."""
    if not value:
        return None, None
    for candidate in (pathlib.Path(value), base / value):
        if candidate.is_file():
            names = (str(candidate), os.path.abspath(candidate))
            source = next((n for n in names if n in by_source), str(candidate))
            return content_key(candidate, index), source
    for name in (value, os.path.abspath(value), str(base / value), os.path.abspath(base / value)):
        if name in by_source:
            return by_source[name]["key"], name
    return None, None


def _manifest_names(manifest):
    if manifest is None:
        return None
    many = isinstance(manifest, (list, tuple))
    return [str(m) for m in manifest] if many else str(manifest)


def _manifest_rows(cache, manifest, records) -> tuple:
    """``(mask over records, inputs that matched no row)`` of the inputs of ``manifest``.

    An input selects the records of its content key that carry its source; when none does
    (the files moved since), every record of that key.
    """
    inputs = collect_inputs(list(manifest) if isinstance(manifest, (list, tuple)) else [manifest])
    by_source = {r["source"]: r["key"] for r in records if r["source"]}
    of_key: dict = {}
    for j, r in enumerate(records):
        of_key.setdefault(r["key"], []).append(j)
    memo, chosen, unmatched = cache.key_memo(), set(), 0
    for i, (item, source) in enumerate(zip(inputs.items, inputs.sources)):
        names = {source, os.path.abspath(source)}
        if isinstance(item, os.PathLike) and not os.path.isfile(item):
            key = by_source.get(source) or by_source.get(os.path.abspath(source))
        else:
            key = content_key(item, i, memo)
        mine = of_key.get(key, [])
        if not mine:
            unmatched += 1
        same = [j for j in mine if records[j]["source"] in names]
        chosen.update(same or mine)
    return np.array([j in chosen for j in range(len(records))], dtype=bool), unmatched

