"""``featcache probe``: a linear probe on a cache namespace, with confidence intervals.

:func:`add_probe_arguments` declares its arguments, :func:`run_probe_command` calls
:func:`featcache.probe.probe_cache` and prints the table (or ``--json``) and writes ``--out``.
"""

from __future__ import annotations

import argparse

from ..cache import FeatureCache
from ..probe.from_cache import probe_cache
from ..probe.heads import HEADS
from .parsing import (add_command, add_json_option, add_namespace_options, as_option,
                      chosen_namespace, print_report)

__all__ = ["add_probe", "add_probe_arguments", "run_probe_command"]


def _parse_val(text):
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
    add_namespace_options(parser)
    parser.add_argument("--dataset", metavar="NAME", default=None,
                        help="only the rows tagged NAME by `featcache extract --dataset NAME`, "
                             "with that dataset's labels and splits")
    parser.add_argument("--manifest", metavar="INPUT", action="append", default=None,
                        help="only the rows of these inputs (a manifest, a folder, files: "
                             "anything extract takes); repeatable")
    parser.add_argument("--labels", metavar="CSV|from-cache", default="from-cache",
                        help="labels recorded in the cache, or a CSV with columns "
                             "path,label[,group][,split] (only its rows are used)")
    parser.add_argument("--groups", metavar="COLUMN|from-cache|none", default=None,
                        help="group (patient) of each row, kept within one fold: COLUMN of "
                             "the --labels CSV, or from-cache: the group recorded in the cache "
                             "(default: none)")
    parser.add_argument("--val", metavar="auto|NAME|FRACTION|none", type=_parse_val,
                        default="auto",
                        help="validation split: auto (rows of split 'val', else "
                             "cross-validation), rows whose split is NAME, a random FRACTION "
                             "such as 0.2, or none for cross-validation")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="write report.json, predictions.csv and plots to DIR")
    parser.add_argument("--head", choices=HEADS, default="logistic",
                        help="the trained head (logistic: logistic regression, C swept)")
    parser.add_argument("--cv", type=int, default=5, help="folds of the cross-validation")
    parser.add_argument("--no-nested", dest="nested", action="store_false",
                        help="without a validation split, score the out-of-fold predictions "
                             "of the selecting cross-validation itself (optimistic) instead of "
                             "nested cross-validation")
    parser.add_argument("--select-on", choices=("val", "train"), default="val",
                        help="with a validation split, choose C on it (its metrics are then "
                             "optimistic) or by cross-validation within the training rows "
                             "(the validation split stays held out)")
    parser.add_argument("--group-overlap", choices=("raise", "warn"), default="raise",
                        help="with --groups and a validation split, a group on both sides is "
                             "an error, or a loud warning recorded in the report")
    parser.add_argument("--n-bootstrap", type=int, default=1000, metavar="N",
                        help="bootstrap resamples for the 95%% intervals")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    add_json_option(parser)
    return parser


def run_probe_command(args) -> int:
    """Run ``featcache probe`` from parsed arguments: print the table, write ``--out``."""
    groups = {"from-cache": True, "none": None}.get(args.groups, args.groups)
    namespace = chosen_namespace(FeatureCache(args.cache_dir, create=False), args)
    report = probe_cache(args.cache_dir, namespace, dataset=args.dataset,
                         manifest=args.manifest, labels=args.labels, groups=groups, val=args.val,
                         out_dir=args.out, head=args.head, cv=args.cv, nested=args.nested,
                         select_on=args.select_on, group_overlap=args.group_overlap,
                         n_bootstrap=args.n_bootstrap, random_state=args.seed)
    report.info["notes"] = [as_option(note, args) for note in report.info.get("notes", [])]
    return print_report(report, args)


def add_probe(sub) -> None:
    p = add_command(sub, "probe",
                    help="linear probe on a cache namespace, with confidence intervals",
                    description="Standardise, sweep C on the validation split (or by "
                                "nested, group-aware cross-validation), refit, and report "
                                "where the metrics come from, accuracy, "
                                "balanced accuracy, ROC AUC and macro F1 with 95% bootstrap "
                                "intervals; writes report.json, predictions.csv and PNG plots "
                                "with --out.")
    add_probe_arguments(p)
    p.set_defaults(func=run_probe_command)
