"""The ``featcache`` command: a thin argparse front-end over the library.

Each subcommand is a pair of functions: ``_add_<name>(subparsers)`` declares its arguments
(with :func:`~featcache.cli_support.add_command`, so ``--help`` shows the defaults) and sets
``func`` to ``_run_<name>(args) -> int``. Add a subcommand by writing such a pair and
listing its ``_add_`` function in :data:`SUBCOMMANDS`. Library modules are imported inside the
``_run_`` functions, so ``featcache info`` never imports torch. Every command that prints
results has ``--json`` for a machine-readable form; ``--help`` shows each option's default.

Exit status: 0 on success, 1 on a featcache error (message on stderr, no traceback), 2 on
usage errors (argparse), 130 when interrupted, 141 when the reader of stdout went away (e.g.
``featcache models --all | head -2``; nothing is printed about it).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import warnings

from .cli_support import add_command, add_json_option, as_option, human_size, print_json
from .options import ON_ERROR, POOLINGS, PRECISIONS


# ---------------------------------------------------------------- cache subcommands
def _add_info(sub) -> None:
    p = add_command(sub, "info", help="summarise a cache directory (namespaces, rows, size)",
                    description="Per namespace: model, layer, pooling, dim, rows, failures, "
                                "shards, bytes on disk and creation time.")
    p.add_argument("dir", metavar="DIR", help="cache directory")
    add_json_option(p)
    p.set_defaults(func=_run_info)


def _run_info(args) -> int:
    from .cache import FeatureCache

    cache = FeatureCache(args.dir, create=False, verify_on_load=False)
    entries = cache.info()
    if args.json:
        print_json({"path": str(cache.path), "namespaces": entries})
        return 0
    total = sum(e["bytes"] for e in entries)
    print(f"cache {cache.path}: {len(entries)} namespace(s), {human_size(total)}")
    for e in entries:
        cfg = e["config"]
        print(f"\n{e['fingerprint']}")
        for label, value in (("model", cfg.get("model", "?")), ("layer", cfg.get("layer")),
                             ("pooling", cfg.get("pooling", "?")), ("dim", e["dim"]),
                             ("rows", e["rows"]), ("failures", e["failures"]),
                             ("shards", e["shards"]), ("size", human_size(e["bytes"])),
                             ("created", e["created"])):
            print(f"  {label:<9} {value}")
        if e["bad_shards"]:
            print(f"  DAMAGED   {e['bad_shards']} shard(s): run `featcache verify {cache.path}`")
    return 0


def _add_verify(sub) -> None:
    p = add_command(sub, "verify", help="check every shard's checksum and shape",
                    description="Re-read every shard; exit 1 and name each damaged one.")
    p.add_argument("dir", metavar="DIR", help="cache directory")
    add_json_option(p)
    p.set_defaults(func=_run_verify)


def _run_verify(args) -> int:
    from .cache import FeatureCache

    report = FeatureCache(args.dir, create=False).verify()
    if args.json:
        print_json({"path": args.dir, "ok": report.ok, "shards_checked": report.shards_checked,
                     "problems": report.problems, "notes": report.notes})
    else:
        for note in report.notes:
            print(f"note: {note}")
        if report.ok:
            print(f"ok: {report.shards_checked} shard(s) checked in {args.dir}, no problem found")
        for problem in report.problems:
            print(f"PROBLEM: {problem}")
    if report.ok:
        return 0
    print(f"featcache verify: {len(report.problems)} problem(s) in {report.shards_checked} "
          "shard(s). Delete the named shard files: their rows are recomputed by the next "
          "extraction.", file=sys.stderr)
    return 1


def _add_compact(sub) -> None:
    p = add_command(sub, "compact", help="merge shards, drop duplicates and stale temp files",
                    description="Merge each namespace's shards into one (atomically), "
                                "remove the merged ones and rebuild index.h5; merge the key "
                                "memo and drop its entries whose file changed or vanished.")
    p.add_argument("dir", metavar="DIR", help="cache directory")
    p.add_argument("--namespace", metavar="FINGERPRINT", help="only this namespace (default: all)")
    p.add_argument("--min-shards", type=int, default=2, metavar="K",
                   help="only merge namespaces with at least K shards")
    add_json_option(p)
    p.set_defaults(func=_run_compact)


def _run_compact(args) -> int:
    from .cache import FeatureCache

    stats = FeatureCache(args.dir, create=False).compact(args.namespace,
                                                        min_shards=args.min_shards)
    if args.json:
        print_json(stats)
        return 0
    for s in stats["namespaces"]:
        print(f"{s['fingerprint']}: {s['shards_before']} -> {s['shards_after']} shard(s), "
              f"{s['rows']} rows, {s['duplicates_removed']} duplicate row(s) removed"
              + (f", {s['corrupt_skipped']} damaged shard(s) left" if s["corrupt_skipped"] else ""))
    if stats["tmp_removed"]:
        print(f"removed {stats['tmp_removed']} stale temporary file(s)")
    print(f"key memo: {stats['key_entries_before']} -> {stats['key_entries_after']} entries, "
          f"{stats['key_entries_pruned']} whose file changed or vanished removed")
    return 0


def _add_export(sub) -> None:
    p = add_command(sub, "export", help="write one namespace to a plain .h5 or .npz file",
                    description="Write features, keys, sources, labels, groups, splits and "
                                "failures of one namespace to OUT (.h5, or .npz when OUT ends in "
                                ".npz). Labels, groups and splits are empty strings where none "
                                "is recorded.")
    p.add_argument("dir", metavar="DIR", help="cache directory")
    p.add_argument("out", metavar="OUT", help="output file (.h5 or .npz)")
    p.add_argument("--namespace", metavar="FINGERPRINT",
                   help="fingerprint to export (needed when the cache holds several)")
    p.add_argument("--dataset", metavar="NAME",
                   help="only the rows tagged NAME by `featcache extract --dataset NAME` "
                        "(default: every row, with a warning when they belong to several)")
    add_json_option(p)
    p.set_defaults(func=_run_export)


def _run_export(args) -> int:
    from .cache import FeatureCache
    from .cache.export import export_facts

    out = FeatureCache(args.dir, create=False).export(args.out, args.namespace,
                                                      dataset=args.dataset)
    facts = {"path": str(out), **export_facts(out), "dataset": args.dataset}
    if args.json:
        print_json(facts)
    else:
        print(f"exported {facts['rows']} rows of namespace {facts['namespace']}"
              + (f" (dataset {args.dataset})" if args.dataset else "") + f" to {out}")
    return 0


# ---------------------------------------------------------------- extraction
def _add_extract(sub) -> None:
    p = add_command(
        sub, "extract", help="embed images into a cache (resumable, shardable)",
        description="Embed every INPUT into the cache: image files, directories (recursive; "
                    "DIR/<class>/image gives labels), CSV/TSV/Parquet manifests (a path column, "
                    "optional label, group and split columns) or .npz arrays in the MedMNIST "
                    "layout. Rerunning the same command computes only what is not committed.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, directories, CSV/TSV/Parquet manifests or .npz files")
    p.add_argument("--cache", required=True, metavar="DIR", help="cache directory")
    p.add_argument("--model", default="efficientnet_lite0", metavar="M", help="backbone")
    p.add_argument("--weights", default="DEFAULT", metavar="W",
                   help="DEFAULT, a weights tag, a checkpoint path, or 'none' (random)")
    p.add_argument("--layer", default=None, metavar="L[,L...]",
                   help="module name(s), comma-separated; 'default' (or nothing) is the final "
                        "feature map")
    p.add_argument("--pooling", default="avg", choices=POOLINGS, help="pooling of the layer")
    p.add_argument("--image-size", type=int, default=None, metavar="S",
                   help="network input side in pixels (default: the backbone's)")
    p.add_argument("--window", default=None, metavar="CENTER,WIDTH",
                   help="intensity window for 16-bit/float/DICOM images (default: the DICOM "
                        "file's own window, else each image's min..max)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto: fp32 on CPU, bf16 or fp16 on GPU")
    p.add_argument("--batch-size", type=int, default=64, metavar="B", help="images per batch")
    p.add_argument("--device", default="auto", metavar="D", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--workers", type=int, default=None, metavar="W",
                   help="decode workers (default: 0 on CPU, up to 8 on GPU)")
    p.add_argument("--shard", default="0/1", metavar="i/N",
                   help="embed only share i of N (deterministic), for N parallel jobs")
    p.add_argument("--on-error", default="raise", choices=ON_ERROR,
                   help="raise: stop at the first bad input; skip: record it and go on")
    p.add_argument("--retry-failed", action="store_true",
                   help="decode inputs whose failure an earlier run recorded")
    p.add_argument("--rehash", action="store_true",
                   help="read and hash every input file, even those the key memo remembers "
                        "(for files rewritten through a memory map, whose timestamps may "
                        "not move)")
    p.add_argument("--commit-seconds", type=float, default=30.0, metavar="S",
                   help="commit a shard at least this often")
    p.add_argument("--dataset", default=None, metavar="NAME",
                   help="tag these inputs as dataset NAME, so that `probe`/`export --dataset "
                        "NAME` use exactly them when the cache holds several studies")
    p.add_argument("--dask-scheduler", default=None, metavar="ADDRESS",
                   help="run on this Dask cluster: tcp://host:8786 or a scheduler file "
                        "(pip install 'featcache[dask]'; see docs/cluster.md)")
    p.add_argument("--partition-size", type=int, default=None, metavar="N",
                   help="inputs per Dask task, with --dask-scheduler (default 512; 4096 when "
                        "the job runs on GPUs)")
    for what in ("path", "label", "group", "split"):
        p.add_argument(f"--{what}-column", default=None, metavar="NAME",
                       help=f"manifest column with the {what} (default: the usual names)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_json_option(p)
    p.set_defaults(func=_run_extract)


def _parse_window(text):
    from .exceptions import FeatcacheError
    from .options import validate_window

    if text is None:
        return None
    try:
        center, width = (float(v) for v in text.split(","))
        return validate_window((center, width))
    except ValueError:
        raise FeatcacheError(f"--window {text!r}: expected CENTER,WIDTH with finite numbers and "
                             "a positive width, e.g. 40,400") from None


def _run_extract(args) -> int:
    from .interrupts import deferred_signals, raise_if_interrupted, take_interrupt

    # SIGTERM and Ctrl-C are deferred until the summary is printed: they stop the job at the
    # end of a batch, after every finished row is committed, never in the middle of a commit.
    with deferred_signals():
        try:
            summary = _extract_from_args(args, raise_if_interrupted)
        except KeyboardInterrupt:
            print("featcache extract: interrupted; every finished row is committed. Run the "
                  "same command again to resume: only what was not committed is computed.",
                  file=sys.stderr)
            return 130
        status = _print_extract_summary(summary, args.json)
        if take_interrupt() is not None:
            print("featcache extract: interrupted after the work was done; every row is "
                  "committed.", file=sys.stderr)
            return 130
    return status


def _extract_from_args(args, raise_if_interrupted):
    from .exceptions import FeatcacheError

    if args.partition_size is not None and not args.dask_scheduler:
        raise FeatcacheError("--partition-size applies to --dask-scheduler jobs only")
    if not args.dask_scheduler:
        return _extract_with(args, raise_if_interrupted, None)
    from .distributed import connect, quiet_connection_errors

    client = connect(args.dask_scheduler)  # first, so an unreachable scheduler fails at once
    with quiet_connection_errors():  # a lost scheduler is one message, not Dask's tracebacks
        try:
            return _extract_with(args, raise_if_interrupted, client)
        finally:
            client.close()


def _extract_with(args, raise_if_interrupted, client):
    from .extract import extract
    from .sources import collect_inputs, parse_shard

    shard = parse_shard(args.shard)
    window = _parse_window(args.window)
    layers = [None if name in ("", "default", "none") else name
              for name in (args.layer.split(",") if args.layer else [""])]
    inputs = collect_inputs(args.inputs, path_column=args.path_column,
                            label_column=args.label_column, group_column=args.group_column,
                            split_column=args.split_column)
    raise_if_interrupted()
    return extract(
        inputs, args.cache, model=args.model,
        weights=None if args.weights.lower() == "none" else args.weights, layers=layers,
        pooling=args.pooling, image_size=args.image_size, batch_size=args.batch_size,
        device=args.device, precision=args.precision, num_workers=args.workers, shard=shard,
        on_error=args.on_error, retry_failed=args.retry_failed,
        progress=False if args.quiet else True, commit_seconds=args.commit_seconds,
        window=window, dataset=args.dataset, client=client, partition_size=args.partition_size,
        verify_inputs="hash" if args.rehash else "stat")


def _print_extract_summary(summary, as_json=False) -> int:
    if as_json:
        rate = summary.computed / summary.seconds if summary.computed and summary.seconds else None
        print_json({"inputs": summary.inputs, "computed": summary.computed,
                     "cached": summary.cached, "failed": summary.failed,
                     "seconds": round(summary.seconds, 3), "images_per_second": rate,
                     "namespaces": {str(k): v for k, v in summary.fingerprints.items()},
                     "failures": {str(k): v for k, v in summary.failures.items()}})
    else:
        print(summary.line())
        for layer, fp in summary.fingerprints.items():
            print(f"  layer {layer}: namespace {fp}")
    if summary.failed:
        for pos, reason in list(summary.failures.items())[:20]:
            print(f"  failed: {reason}", file=sys.stderr)
        print(f"featcache extract: {summary.failed} input(s) failed (recorded in the cache "
              "with their reasons)", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- probe
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
    from .probe_heads import HEADS  # numpy only, no torch

    parser.add_argument("cache_dir", metavar="CACHE_DIR", help="featcache cache directory")
    parser.add_argument("--namespace", metavar="N", default=None,
                        help="fingerprint (or unique prefix) of the namespace to probe; needed "
                             "when the cache holds several (see `featcache info`)")
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
                        help="group (patient) of each row, kept within one fold: a CSV column "
                             "or the cache's group annotation (default: none)")
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
    parser.add_argument("--n-bootstrap", type=int, default=1000, metavar="N",
                        help="bootstrap resamples for the 95%% intervals")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    add_json_option(parser)
    return parser


def run_probe_command(args) -> int:
    """Run ``featcache probe`` from parsed arguments: print the table, write ``--out``."""
    from .probe_cache import probe_cache
    from .probe_report import PLOTS

    groups = {"from-cache": True, "none": None}.get(args.groups, args.groups)
    report = probe_cache(args.cache_dir, args.namespace, dataset=args.dataset,
                         manifest=args.manifest, labels=args.labels, groups=groups, val=args.val,
                         out_dir=args.out, head=args.head, cv=args.cv,
                         n_bootstrap=args.n_bootstrap, random_state=args.seed)
    report.info["notes"] = [as_option(note, args) for note in report.info.get("notes", [])]
    if args.json:
        print_json({**report.to_dict(), "out": args.out})
        return 0
    print(report.to_markdown())
    if args.out is not None:
        print(f"\nwrote {pathlib.Path(args.out) / 'report.json'}, predictions.csv, "
              f"{', '.join(PLOTS)}")
    return 0


def _add_probe(sub) -> None:
    p = add_command(sub, "probe",
                    help="linear probe on a cache namespace, with confidence intervals",
                    description="Standardise, sweep C on the validation split (or by "
                                "group-aware cross-validation), refit, and report accuracy, "
                                "balanced accuracy, ROC AUC and macro F1 with 95% bootstrap "
                                "intervals; writes report.json, predictions.csv and PNG plots "
                                "with --out.")
    add_probe_arguments(p)
    p.set_defaults(func=run_probe_command)


# ---------------------------------------------------------------- backbones, demo
def _add_models(sub) -> None:
    p = add_command(sub, "models", help="list the available backbones")
    p.add_argument("--all", action="store_true",
                   help="also list every torchvision and timm model (downloads when online)")
    add_json_option(p)
    p.set_defaults(func=_run_models)


def _run_models(args) -> int:
    from .backbones import get_backbone, list_backbones

    builtin = [{"name": name, "image_size": spec.preprocessing.image_size,
                "description": spec.description}
               for name, spec in ((n, get_backbone(n)) for n in list_backbones())]
    more = {lib: list_backbones(lib) for lib in ("torchvision", "timm")} if args.all else {}
    if args.json:
        print_json({"featcache": builtin, **more})
        return 0
    for b in builtin:
        print(f"{b['name']:<24} {b['image_size']:>4} px  {b['description']}")
    for names in more.values():
        for name in names:
            print(name)
    if not args.all:
        print("\nAlso: any torchvision model ('resnet50', 'torchvision:vit_b_16') and any timm "
              "model ('timm:convnext_tiny'); `featcache models --all` lists them.")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="run the demo on the bundled PneumoniaMNIST data",
                       add_help=False)
    p.add_argument("demo_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from .demo import main as demo_main

    return demo_main(args.demo_args)


#: ``_add_<name>`` functions, in the order ``featcache --help`` lists them.
SUBCOMMANDS = [_add_extract, _add_info, _add_verify, _add_compact, _add_export, _add_probe,
               _add_models, _add_demo]


def build_parser() -> argparse.ArgumentParser:
    """The ``featcache`` argument parser with every subcommand of :data:`SUBCOMMANDS`."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="featcache",
        description="Run frozen pretrained image networks once; keep embeddings in an HDF5 cache.")
    parser.add_argument("--version", action="version", version=f"featcache {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 featcache error, 2 usage)."""
    try:
        try:
            return _main(argv)
        finally:  # inside the try: a reader that went away shows up here, not at exit
            sys.stdout.flush()
    except BrokenPipeError:
        # The reader of stdout exited (`featcache info DIR | head -1`): stop quietly, like a
        # program killed by SIGPIPE (status 128 + 13). stdout is pointed at /dev/null so that
        # the interpreter's last flush at exit does not raise (and print) the error again.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (AttributeError, OSError, ValueError):  # stdout without a file descriptor
            pass
        return 141


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    from .exceptions import FeatcacheError
    from .options import is_invalid_parameter

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"featcache: warning: {as_option(str(message), args)}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        try:
            return int(args.func(args) or 0)
        except (FeatcacheError, ValueError) as exc:
            if is_invalid_parameter(exc):  # the API's validation, in the command line's words
                print(f"featcache {args.command}: error: {as_option(str(exc))}",
                      file=sys.stderr)
                return 2
            if not isinstance(exc, FeatcacheError):
                raise
            print(f"featcache {args.command}: error: {as_option(str(exc), args)}",
                  file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"featcache {args.command}: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    raise SystemExit(main())
