"""The ``featcache`` command: a thin argparse front-end over the library.

Each subcommand is a pair of functions: ``_add_<name>(subparsers)`` declares its arguments and
sets ``func`` to ``_run_<name>(args) -> int``. Add a subcommand by writing such a pair and
listing its ``_add_`` function in :data:`SUBCOMMANDS`. Library modules are imported inside the
``_run_`` functions, so ``featcache info`` never imports torch.

Exit status: 0 on success, 1 on a featcache error (message on stderr, no traceback), 2 on
usage errors (argparse).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings

from .options import ON_ERROR, POOLINGS, PRECISIONS


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


# ---------------------------------------------------------------- cache subcommands
def _add_info(sub) -> None:
    p = sub.add_parser("info", help="summarise a cache directory (namespaces, rows, size)",
                       description="Per namespace: model, layer, pooling, dim, rows, failures, "
                                   "shards, bytes on disk and creation time.")
    p.add_argument("dir", metavar="DIR", help="cache directory")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_run_info)


def _run_info(args) -> int:
    from .cache import FeatureCache

    cache = FeatureCache(args.dir, create=False, verify_on_load=False)
    entries = cache.info()
    if args.json:
        print(json.dumps({"path": str(cache.path), "namespaces": entries}, indent=2, default=str))
        return 0
    total = sum(e["bytes"] for e in entries)
    print(f"cache {cache.path}: {len(entries)} namespace(s), {_size(total)}")
    for e in entries:
        cfg = e["config"]
        print(f"\n{e['fingerprint']}")
        for label, value in (("model", cfg.get("model", "?")), ("layer", cfg.get("layer")),
                             ("pooling", cfg.get("pooling", "?")), ("dim", e["dim"]),
                             ("rows", e["rows"]), ("failures", e["failures"]),
                             ("shards", e["shards"]), ("size", _size(e["bytes"])),
                             ("created", e["created"])):
            print(f"  {label:<9} {value}")
        if e["bad_shards"]:
            print(f"  DAMAGED   {e['bad_shards']} shard(s): run `featcache verify {cache.path}`")
    return 0


def _add_verify(sub) -> None:
    p = sub.add_parser("verify", help="check every shard's checksum and shape",
                       description="Re-read every shard; exit 1 and name each damaged one.")
    p.add_argument("dir", metavar="DIR", help="cache directory")
    p.set_defaults(func=_run_verify)


def _run_verify(args) -> int:
    from .cache import FeatureCache

    report = FeatureCache(args.dir, create=False).verify()
    for note in report.notes:
        print(f"note: {note}")
    if report.ok:
        print(f"ok: {report.shards_checked} shard(s) checked in {args.dir}, no problem found")
        return 0
    for problem in report.problems:
        print(f"PROBLEM: {problem}")
    print(f"featcache verify: {len(report.problems)} problem(s) in {report.shards_checked} "
          "shard(s). Delete the named shard files: their rows are recomputed by the next "
          "extraction.", file=sys.stderr)
    return 1


def _add_compact(sub) -> None:
    p = sub.add_parser("compact", help="merge shards, drop duplicates and stale temp files",
                       description="Merge each namespace's shards into one (atomically), "
                                   "remove the merged ones and rebuild index.h5.")
    p.add_argument("dir", metavar="DIR", help="cache directory")
    p.add_argument("--namespace", metavar="FINGERPRINT", help="only this namespace")
    p.add_argument("--min-shards", type=int, default=2, metavar="K",
                   help="only merge namespaces with at least K shards (default 2)")
    p.set_defaults(func=_run_compact)


def _run_compact(args) -> int:
    from .cache import FeatureCache

    stats = FeatureCache(args.dir, create=False).compact(args.namespace,
                                                        min_shards=args.min_shards)
    for s in stats["namespaces"]:
        print(f"{s['fingerprint']}: {s['shards_before']} -> {s['shards_after']} shard(s), "
              f"{s['rows']} rows, {s['duplicates_removed']} duplicate row(s) removed"
              + (f", {s['corrupt_skipped']} damaged shard(s) left" if s["corrupt_skipped"] else ""))
    if stats["tmp_removed"]:
        print(f"removed {stats['tmp_removed']} stale temporary file(s)")
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write one namespace to a plain .h5 or .npz file",
                       description="Write features, keys, sources and failures of one "
                                   "namespace to OUT (.h5, or .npz when OUT ends in .npz).")
    p.add_argument("dir", metavar="DIR", help="cache directory")
    p.add_argument("out", metavar="OUT", help="output file (.h5 or .npz)")
    p.add_argument("--namespace", metavar="FINGERPRINT",
                   help="fingerprint to export (needed when the cache holds several)")
    p.set_defaults(func=_run_export)


def _run_export(args) -> int:
    from .cache import FeatureCache

    out = FeatureCache(args.dir, create=False).export(args.out, args.namespace)
    print(f"exported to {out}")
    return 0


# ---------------------------------------------------------------- extraction
def _add_extract(sub) -> None:
    p = sub.add_parser(
        "extract", help="embed images into a cache (resumable, shardable)",
        description="Embed every INPUT into the cache: image files, directories (recursive; "
                    "DIR/<class>/image gives labels), CSV/TSV/Parquet manifests (a path column, "
                    "optional label, group and split columns) or .npz arrays in the MedMNIST "
                    "layout. Rerunning the same command computes only what is not committed.")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--cache", required=True, metavar="DIR", help="cache directory")
    p.add_argument("--model", default="efficientnet_lite0", metavar="M")
    p.add_argument("--weights", default="DEFAULT", metavar="W",
                   help="DEFAULT, a weights tag, a checkpoint path, or 'none' (random)")
    p.add_argument("--layer", default=None, metavar="L[,L...]",
                   help="module name(s), comma-separated; 'default' is the final feature map")
    p.add_argument("--pooling", default="avg", choices=POOLINGS)
    p.add_argument("--image-size", type=int, default=None, metavar="S")
    p.add_argument("--window", default=None, metavar="CENTER,WIDTH",
                   help="intensity window for 16-bit/float/DICOM images (default: the DICOM "
                        "file's own window, else each image's min..max)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS)
    p.add_argument("--batch-size", type=int, default=64, metavar="B")
    p.add_argument("--device", default="auto", metavar="D")
    p.add_argument("--workers", type=int, default=None, metavar="W", help="decode workers")
    p.add_argument("--shard", default="0/1", metavar="i/N",
                   help="embed only share i of N (deterministic), for N parallel jobs")
    p.add_argument("--on-error", default="raise", choices=ON_ERROR)
    p.add_argument("--retry-failed", action="store_true",
                   help="decode inputs whose failure an earlier run recorded")
    p.add_argument("--commit-seconds", type=float, default=30.0, metavar="S",
                   help="commit a shard at least this often (default 30)")
    p.add_argument("--path-column", default=None, metavar="NAME")
    p.add_argument("--label-column", default=None, metavar="NAME")
    p.add_argument("--group-column", default=None, metavar="NAME")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
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
        status = _print_extract_summary(summary)
        if take_interrupt() is not None:
            print("featcache extract: interrupted after the work was done; every row is "
                  "committed.", file=sys.stderr)
            return 130
    return status


def _extract_from_args(args, raise_if_interrupted):
    from .extract import extract
    from .sources import collect_inputs, parse_shard

    shard = parse_shard(args.shard)
    window = _parse_window(args.window)
    layers = [None if name in ("", "default", "none") else name
              for name in (args.layer.split(",") if args.layer else [""])]
    inputs = collect_inputs(args.inputs, path_column=args.path_column,
                            label_column=args.label_column, group_column=args.group_column)
    raise_if_interrupted()
    return extract(
        inputs, args.cache, model=args.model,
        weights=None if args.weights.lower() == "none" else args.weights, layers=layers,
        pooling=args.pooling, image_size=args.image_size, batch_size=args.batch_size,
        device=args.device, precision=args.precision, num_workers=args.workers, shard=shard,
        on_error=args.on_error, retry_failed=args.retry_failed,
        progress=False if args.quiet else True, commit_seconds=args.commit_seconds,
        window=window)


def _print_extract_summary(summary) -> int:
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


def _add_probe(sub) -> None:
    from .probe import add_probe_arguments  # numpy/sklearn only, no torch

    p = sub.add_parser("probe", help="linear probe on a cache namespace, with confidence intervals",
                       description="Standardise, sweep C on the validation split (or by "
                                   "group-aware cross-validation), refit, and report accuracy, "
                                   "balanced accuracy, ROC AUC and macro F1 with 95% bootstrap "
                                   "intervals; writes report.json and PNG plots with --out.")
    add_probe_arguments(p)
    p.set_defaults(func=_run_probe)


def _run_probe(args) -> int:
    from .probe import run_probe_command

    return run_probe_command(args)


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the available backbones")
    p.add_argument("--all", action="store_true",
                   help="also list every torchvision and timm model (downloads when online)")
    p.set_defaults(func=_run_models)


def _run_models(args) -> int:
    from .backbones import get_backbone, list_backbones

    for name in list_backbones():
        spec = get_backbone(name)
        print(f"{name:<24} {spec.preprocessing.image_size:>4} px  {spec.description}")
    if args.all:
        for name in list_backbones("torchvision") + list_backbones("timm"):
            print(name)
    else:
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


#: API parameter -> command-line option, where the names differ.
_OPTION_NAMES = {"num_workers": "--workers", "layers": "--layer", "layer": "--layer"}


def _as_option(message: str) -> str:
    """``The 'batch_size' parameter of extract must be`` -> ``--batch-size must be``."""
    def option(match):
        name = match.group(1)
        return _OPTION_NAMES.get(name, "--" + name.replace("_", "-"))

    return re.sub(r"The '(\w+)' parameter of \w+", option, message)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"featcache: warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 featcache error, 2 usage)."""
    args = build_parser().parse_args(argv)
    from .exceptions import FeatcacheError
    from .options import is_invalid_parameter

    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return int(args.func(args) or 0)
        except (FeatcacheError, ValueError) as exc:
            if is_invalid_parameter(exc):  # the API's validation, in the command line's words
                print(f"featcache {args.command}: error: {_as_option(str(exc))}",
                      file=sys.stderr)
                return 2
            if not isinstance(exc, FeatcacheError):
                raise
            print(f"featcache {args.command}: error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"featcache {args.command}: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    raise SystemExit(main())
