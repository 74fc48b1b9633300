"""Probing a cache namespace: features from the cache, labels from its annotations or a CSV.

The protocol itself is :func:`featcache.probe.linear_probe`; this module finds the rows (one
namespace of a :class:`~featcache.cache.FeatureCache`), their labels, groups and validation
split, and is the library behind ``featcache probe``. Reading needs no torch.
"""

from __future__ import annotations

import os
import pathlib
from numbers import Real

import numpy as np

from .exceptions import ProbeError
from .probe import HEADS, PLOTS, ProbeReport, linear_probe

__all__ = ["probe_cache", "add_probe_arguments", "run_probe_command"]


def probe_cache(cache_dir, namespace=None, *, labels="from-cache", groups=None, val="val",
                out_dir=None, **probe_kwargs) -> ProbeReport:
    """Probe the embeddings of one cache namespace, with labels from the cache or a CSV.

    Parameters
    ----------
    cache_dir : str or PathLike
        A featcache cache directory.
    namespace : str, optional
        Fingerprint (or a unique prefix of it) of the namespace to read; optional when the
        cache holds one (``featcache info DIR`` lists them).
    labels : "from-cache" or path, default="from-cache"
        ``"from-cache"``: the labels recorded with ``FeatureCache.annotate``. A CSV path: a
        manifest with columns ``path``, ``label`` and optionally ``group`` and ``split``; a row
        matches a cached embedding by the content key of the file at ``path`` (relative paths
        are tried from the working directory, then from the CSV's folder) or, when the file is
        gone, by the ``source`` recorded in the annotations.
    groups : None, True, "from-cache" or str, optional
        None: no groups. True/``"from-cache"``: the ``group`` annotation. A str: that CSV column.
        Used for group-aware cross-validation and fraction splits.
    val : str, float or None, default="val"
        A split name: rows whose split (CSV column, else annotation) equals it are the
        validation split; rows with split ``"train"`` or none train. A float in (0, 1): that
        fraction of the rows, drawn stratified (``StratifiedShuffleSplit``; with groups
        ``StratifiedGroupKFold`` with ``round(1 / val)`` folds, its first fold, so about that
        fraction and no group on both sides). None: cross-validation only. Rows with split
        ``"test"`` are always excluded.
    out_dir : str or PathLike, optional
        Where to write the report (:meth:`ProbeReport.save`).
    **probe_kwargs
        Passed to :func:`linear_probe` (``head``, ``param_grid``, ``Cs``, ``cv``,
        ``n_bootstrap``, ``random_state`` ...).

    Returns
    -------
    ProbeReport
        With ``info["skipped"]``: rows without a label, failed inputs (recorded failures and
        NaN rows) and test rows.
    """
    from .cache import FeatureCache

    cache = FeatureCache(cache_dir, create=False)
    fingerprint = _pick_namespace(cache, namespace)
    keys, X = cache.to_numpy(fingerprint)
    rows = _row_labels(cache, keys, labels, groups)
    failed = ~np.isfinite(X).all(axis=1)
    unlabelled = np.array([v is None for v in rows["label"]], dtype=bool)
    test = np.array([s == "test" for s in rows["split"]], dtype=bool)
    keep = ~failed & ~unlabelled & ~test
    if not keep.any():
        raise ProbeError(f"no usable rows in namespace {fingerprint}: {len(keys)} rows, "
                         f"{int(unlabelled.sum())} without a label, {int(failed.sum())} failed; "
                         "record labels with FeatureCache.annotate or pass labels='labels.csv'")
    y = _normalise_labels(rows["label"][keep])
    g = None if rows["group"] is None else rows["group"][keep]
    split = rows["split"][keep]
    report = _probe_split(X[keep], y, g, split, val, probe_kwargs)
    ns = cache.namespace(fingerprint)
    config = ns.config
    present = {bytes(k) for k in keys}
    recorded = sum(1 for k in ns.failures() if bytes(k) not in present)
    report.info.update({
        "cache": str(cache.path), "namespace": fingerprint, "model": config.get("model"),
        "layer": config.get("layer"), "image_size": config.get("preprocessing", {}).get(
            "image_size"), "rows": len(keys),
        "skipped": {"without a label": int((unlabelled & ~failed).sum()),
                    "failed": int(failed.sum()) + recorded, "test split": int((test & ~failed &
                                                                            ~unlabelled).sum())}})
    report.info["notes"] = _notes(rows, groups, val, keep)
    if out_dir is not None:
        report.save(out_dir)
    return report


def _notes(rows, groups, val, keep) -> list:
    notes = []
    if rows.get("unmatched"):
        notes.append(f"{rows['unmatched']} CSV row(s) matched no cached embedding (files not "
                     "extracted into this namespace, or changed since)")
    if groups is None and not isinstance(val, str) and any(
            g is not None for g in rows["group_annotation"][keep]):
        notes.append("the cache records groups but groups=None, so the split is not "
                     "group-aware: pass groups=True (--groups from-cache) to keep each patient "
                     "on one side")
    return notes


def _pick_namespace(cache, namespace) -> str:
    names = cache.namespaces()

    def listing():
        out = []
        for fp in names:
            cfg = cache.namespace(fp).config
            out.append(f"{fp} ({cfg.get('model')}, layer {cfg.get('layer')}, "
                       f"{cfg.get('preprocessing', {}).get('image_size')} px)")
        return "; ".join(out) or "none"

    if namespace is None:
        if len(names) == 1:
            return names[0]
        raise ProbeError(f"cache {cache.path} holds {len(names)} namespaces: {listing()}; pass "
                         "namespace= (--namespace) with one fingerprint")
    matches = [fp for fp in names if fp.startswith(str(namespace))]
    if len(matches) != 1:
        what = "matches no" if not matches else "is a prefix of several"
        raise ProbeError(f"namespace {namespace!r} {what} namespace of cache {cache.path}; "
                         f"it holds: {listing()}")
    return matches[0]


def _probe_split(X, y, groups, split, val, kwargs):
    """linear_probe with the validation split that ``val`` names."""
    if val is None:
        return linear_probe(X, y, groups=groups, **kwargs)
    if isinstance(val, Real) and not isinstance(val, bool):
        train, test = _fraction_split(y, groups, float(val), kwargs.get("random_state", 0))
    elif isinstance(val, str):
        is_val = np.array([s == val for s in split], dtype=bool)
        if not is_val.any():
            found = sorted({s for s in split if s is not None})
            raise ProbeError(f"no labelled row has split {val!r} (splits found: "
                             f"{found or 'none'}); record splits with FeatureCache.annotate("
                             "split=...), add a split column to the CSV, or pass val=0.2 (a "
                             "random fraction) or val=None (cross-validation)")
        train, test = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    else:
        raise ProbeError(f"val must be a split name, a fraction in (0, 1) or None, got {val!r}")
    if not len(train):
        raise ProbeError(f"every labelled row is in the validation split {val!r}; nothing "
                         "is left to train on")
    return linear_probe(X[train], y[train], X_val=X[test], y_val=y[test], **kwargs)


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


def _row_labels(cache, keys, labels, groups) -> dict:
    """Per cached row: label, group (or None when not asked for) and split, as object arrays."""
    key_bytes = [bytes(k) for k in keys]
    ann = cache.annotations(key_bytes)
    from_ann = {f: np.array([ann.get(k, {}).get(f) for k in key_bytes], dtype=object)
                for f in ("label", "group", "split")}
    group_column = groups if isinstance(groups, str) and groups != "from-cache" else None
    if isinstance(labels, str) and labels == "from-cache":
        if group_column is not None:
            raise ProbeError(f"groups={groups!r} names a CSV column, but labels come from the "
                             "cache; pass labels='labels.csv', or groups='from-cache'")
        rows = {"label": from_ann["label"], "split": from_ann["split"], "unmatched": 0}
    elif isinstance(labels, (str, os.PathLike)):
        rows = _labels_from_csv(pathlib.Path(labels), key_bytes, ann, group_column)
        if rows["split"] is None:
            rows["split"] = from_ann["split"]
    else:
        raise ProbeError(f"labels must be 'from-cache' or the path of a CSV, got {labels!r}")
    rows["group_annotation"] = from_ann["group"]
    if groups is True or groups == "from-cache":
        rows["group"] = from_ann["group"]
    elif group_column is None:
        rows["group"] = None
    if rows["group"] is not None:
        lacking = sum(g is None for g, lab in zip(rows["group"], rows["label"]) if lab is not None)
        if lacking:
            raise ProbeError(f"{lacking} labelled rows have no group; record a group (patient) "
                             "for every row, or pass groups=None")
    return rows


def _labels_from_csv(path, key_bytes, ann, group_column) -> dict:
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
    row_of = {k: i for i, k in enumerate(key_bytes)}
    by_source = {a["source"]: k for k, a in ann.items() if a.get("source")}
    n = len(key_bytes)
    out = {"label": np.full(n, None, object), "group": np.full(n, None, object),
           "split": np.full(n, None, object) if "split" in frame.columns else None,
           "unmatched": 0}
    for i, rec in enumerate(frame.to_dict("records")):
        pos = row_of.get(_csv_key(rec["path"], path.parent, i, by_source))
        if pos is None:
            out["unmatched"] += 1
            continue
        out["label"][pos] = rec["label"] or None
        if group_column:
            out["group"][pos] = rec[group_column] or None
        if out["split"] is not None:
            out["split"][pos] = rec["split"] or None
    return out


def _csv_key(value, base, index, by_source):
    """The content key of a manifest row's file, or the key whose recorded source it names."""
    from .inputs import content_key

    if not value:
        return None
    for candidate in (pathlib.Path(value), base / value):
        if candidate.is_file():
            return content_key(candidate, index)
    for name in (value, os.path.abspath(value), str(base / value), os.path.abspath(base / value)):
        if name in by_source:
            return by_source[name]
    return None


# ----------------------------------------------------------------------------- command line
def _parse_val(text):
    import argparse

    if text.lower() in ("none", ""):
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"a validation fraction must lie in (0, 1), got {text}")
    return value


def add_probe_arguments(parser):
    """Declare the arguments of ``featcache probe`` on an argparse parser; returns it."""
    parser.add_argument("cache_dir", metavar="CACHE_DIR", help="featcache cache directory")
    parser.add_argument("--namespace", metavar="N", default=None,
                        help="fingerprint (or unique prefix) of the namespace to probe; needed "
                             "when the cache holds several (see `featcache info`)")
    parser.add_argument("--labels", metavar="CSV|from-cache", default="from-cache",
                        help="labels recorded in the cache (default), or a CSV with columns "
                             "path,label[,group][,split]")
    parser.add_argument("--groups", metavar="COLUMN|from-cache", default=None,
                        help="group (patient) of each row, kept within one fold: a CSV column "
                             "or the cache's group annotation")
    parser.add_argument("--val", metavar="NAME|FRACTION|none", type=_parse_val, default="val",
                        help="validation split: rows whose split is NAME (default 'val'), a "
                             "random FRACTION such as 0.2, or none for cross-validation")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="write report.json, predictions.csv and plots to DIR")
    parser.add_argument("--head", choices=HEADS, default="logistic",
                        help="the trained head (default: logistic regression, C swept)")
    parser.add_argument("--cv", type=int, default=5, help="folds without a validation split")
    parser.add_argument("--n-bootstrap", type=int, default=1000,
                        help="bootstrap resamples for the 95%% intervals")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    return parser


def run_probe_command(args) -> int:
    """Run ``featcache probe`` from parsed arguments: print the table, write ``--out``."""
    groups = True if args.groups == "from-cache" else args.groups
    report = probe_cache(args.cache_dir, args.namespace, labels=args.labels, groups=groups,
                         val=args.val, out_dir=args.out, head=args.head, cv=args.cv,
                         n_bootstrap=args.n_bootstrap, random_state=args.seed)
    print(report.to_markdown())
    if args.out is not None:
        print(f"\nwrote {pathlib.Path(args.out) / 'report.json'}, predictions.csv, "
              f"{', '.join(PLOTS)}")
    return 0
