"""``featcache evaluate``: the evaluation report of a shared model (``.skops``) on labelled inputs.

Thin: load the model with :func:`featcache.sharing.load` (featcache's trusted types plus any
``--trust``), gather the inputs (:func:`featcache.inputs.collect_inputs`), take labels and
groups from ``--labels`` (matched by content key) or from the inputs themselves (class folders,
a manifest's columns), call :func:`featcache.evaluate`, print the table (or ``--json``) and
write ``--out``.
"""

from __future__ import annotations

import os
import pathlib
import sys

from ..exceptions import FeatcacheError, ProbeError
from ..inputs import content_key
from ..inputs.sources import collect_inputs
from ..probe.evaluation import AGGREGATES, evaluate
from ..sharing import load
from .parsing import add_command, add_json_option, print_report

__all__ = ["add_evaluate", "run_evaluate_command"]


def add_evaluate(sub) -> None:
    p = add_command(
        sub, "evaluate", help="evaluate a fitted model (.skops) on labelled inputs, with CIs",
        description="Predict every INPUT with the fitted classifier in MODEL (saved with "
                    "skops: featcache.sharing.dump) and report ROC AUC, accuracy, balanced "
                    "accuracy, macro F1, sensitivity, specificity, Brier score and expected "
                    "calibration error with 95% bootstrap intervals (resampling groups with "
                    "--groups), at the model's own operating point or --threshold; writes "
                    "report.json, predictions.csv and PNG plots with --out.")
    p.add_argument("model", metavar="MODEL", help="a fitted classifier saved with skops (.skops)")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, directories (DIR/<class>/image gives labels), "
                        "CSV/Parquet manifests or .npz files")
    p.add_argument("--labels", metavar="CSV", default=None,
                   help="a CSV with columns path,label[,<group column>], matched to the "
                        "inputs by file content (default: the inputs' own labels)")
    p.add_argument("--groups", metavar="COLUMN", default=None,
                   help="the column of the --labels CSV (or of the manifest INPUT) naming "
                        "each input's group (patient): the bootstrap resamples groups")
    p.add_argument("--aggregate", choices=AGGREGATES, default=None,
                   help="score each group by this of its images' scores (needs --groups)")
    p.add_argument("--threshold", type=float, default=None, metavar="T",
                   help="predict the positive class when its probability is at least T "
                        "(default: the model's own threshold, else the most probable class)")
    p.add_argument("--held-out", action="store_true", default=None,
                   help="declare that these inputs took no part in fitting, selection or "
                        "threshold tuning (recorded as the report's 'metrics from')")
    p.add_argument("--trust", metavar="TYPE", action="append", default=[],
                   help="also trust this type when loading MODEL (repeatable; see "
                        "skops.io.get_untrusted_types)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="write report.json, predictions.csv and plots to DIR")
    p.add_argument("--n-bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples for the 95%% intervals")
    p.add_argument("--seed", type=int, default=0, help="random seed of the bootstrap")
    add_json_option(p)
    p.set_defaults(func=run_evaluate_command)


def _load_model(path, trust):
    try:
        return load(path, trusted=trust)
    except FileNotFoundError as exc:
        raise FeatcacheError(f"model file '{path}' does not exist; save a fitted model with "
                             "featcache.sharing.dump(model, 'model.skops')") from exc
    except Exception as exc:
        if type(exc).__name__ != "UntrustedTypesFoundException":
            raise
        raise FeatcacheError(f"'{path}' holds types featcache does not trust: {exc}; inspect "
                             "them (skops.io.get_untrusted_types(file=...)) and pass --trust "
                             "TYPE for each you trust, or save a FixedThresholdClassifier "
                             "(featcache.probe.fixed_threshold)") from None


def _csv_labels(csv, group_column):
    """``{content key: (label, group)}`` of the rows of the labels CSV."""
    import pandas as pd

    try:
        frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise ProbeError(f"cannot read the labels CSV '{csv}': {exc}") from exc
    missing = sorted({"path", "label", *([group_column] if group_column else [])}
                     - set(frame.columns))
    if missing:
        raise ProbeError(f"labels CSV '{csv}' lacks column(s) {missing} (it has "
                         f"{list(frame.columns)}); expected path,label[,{group_column or 'group'}]")
    base, out = pathlib.Path(csv).parent, {}
    for i, row in enumerate(frame.to_dict("records")):
        path = next((c for c in (pathlib.Path(row["path"]), base / row["path"]) if c.is_file()),
                    None)
        if path is not None and row["label"]:
            out[content_key(path, i)] = (row["label"],
                                         row[group_column] if group_column else None)
    return out


def _labelled(inputs, args):
    """``(items, sources, labels, groups or None)`` of the inputs that have a label."""
    if args.labels is not None:
        table = _csv_labels(args.labels, args.groups)
        found = [table.get(content_key(item, i)) for i, item in enumerate(inputs.items)]
        labels = [f[0] if f else None for f in found]
        groups = [f[1] if f else None for f in found]
    else:
        labels, groups = inputs.labels, inputs.groups
    keep = [i for i, label in enumerate(labels) if label is not None]
    if len(keep) < len(labels):
        print(f"featcache: warning: {len(labels) - len(keep)} of the {len(labels)} inputs have "
              "no label and are left out", file=sys.stderr)
    if not keep:
        raise ProbeError("no input has a label: pass --labels CSV (path,label columns), or "
                         "inputs that carry labels (class folders, a manifest's label column)")
    pick = lambda column: [column[i] for i in keep]  # noqa: E731
    group_list = pick(groups) if args.groups else None
    if group_list is not None and any(g is None for g in group_list):
        raise ProbeError(f"--groups {args.groups}: some labelled inputs have no group")
    return pick(inputs.items), pick(inputs.sources), pick(labels), group_list


def _as_classes(labels, classes):
    """Text labels as the model's classes (``"1"`` -> ``1`` when the model learned ints)."""
    by_text = {str(c): c for c in classes.tolist()}
    return [by_text.get(str(v), v) for v in labels]


def run_evaluate_command(args) -> int:
    """Run ``featcache evaluate``: load, predict, print the table, write ``--out``."""
    import numpy as np

    model = _load_model(args.model, args.trust)
    group_column = args.groups if args.labels is None else None
    inputs = collect_inputs(args.inputs, group_column=group_column)
    items, sources, labels, groups = _labelled(inputs, args)
    classes = np.asarray(getattr(model, "classes_", []))
    report = evaluate(model, items, np.asarray(_as_classes(labels, classes)), groups=groups,
                      aggregate=args.aggregate, threshold=args.threshold,
                      held_out=args.held_out, sources=sources, n_bootstrap=args.n_bootstrap,
                      random_state=args.seed)
    report.info["model"] = os.fspath(args.model)
    source = report.metrics_source
    source["metrics_from"] = source["metrics_from"].replace("held_out=True", "--held-out")
    if args.out is not None:
        report.save(args.out)
    return print_report(report, args)
