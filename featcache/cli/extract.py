"""``featcache extract``: embed inputs into a cache, locally or on a Dask cluster.

Thin: parse, call :func:`featcache.extract` (through :func:`featcache.jobs.dask_client.connect`
for ``--dask-scheduler``), print the summary. SIGTERM and Ctrl-C are deferred to the end of a
batch (:mod:`featcache.engine.interrupts`).
"""

from __future__ import annotations

import sys

from ..engine.interrupts import deferred_signals, raise_if_interrupted, take_interrupt
from ..exceptions import FeatcacheError
from ..inputs.sources import collect_inputs, parse_shard
from ..jobs.dask_client import connect, quiet_connection_errors
from ..jobs.extraction import extract
from ..options import validate_window
from .parsing import add_command, add_json_option, add_option, print_json

__all__ = ["add_extract"]


def add_extract(sub) -> None:
    p = add_command(
        sub, "extract", help="embed images into a cache (resumable, shardable)",
        description="Embed every INPUT into the cache: image files, directories (recursive; "
                    "DIR/<class>/image gives labels), CSV/TSV/Parquet manifests (a path column, "
                    "optional label, group and split columns) or .npz arrays in the MedMNIST "
                    "layout. Rerunning the same command computes only what is not committed.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, directories, CSV/TSV/Parquet manifests or .npz files")
    p.add_argument("--cache", required=True, metavar="DIR", help="cache directory")
    # The run options: flag, type, choices, default and help from featcache.options.OPTIONS.
    add_option(p, "model", metavar="M")
    add_option(p, "weights", metavar="W")
    add_option(p, "layer", metavar="L[,L...]",
               help="module name(s), comma-separated; 'default' (or nothing) is the final "
                    "feature map")
    add_option(p, "pooling")
    add_option(p, "image_size", metavar="S")
    add_option(p, "window", metavar="CENTER,WIDTH")
    add_option(p, "decode_scale")
    add_option(p, "decoder")
    add_option(p, "precision")
    add_option(p, "batch_size", metavar="B")
    add_option(p, "device", metavar="D")
    add_option(p, "num_workers", metavar="W")
    p.add_argument("--shard", default="0/1", metavar="i/N",
                   help="embed only share i of N (deterministic), for N parallel jobs")
    add_option(p, "on_error")
    add_option(p, "retry_failed", action="store_true")
    p.add_argument("--rehash", action="store_true",
                   help="read and hash every input file, even those the key memo remembers "
                        "(for files rewritten through a memory map, whose timestamps may "
                        "not move)")
    add_option(p, "commit_seconds", metavar="S")
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
    if text is None:
        return None
    try:
        center, width = (float(v) for v in text.split(","))
        return validate_window((center, width))
    except ValueError:
        raise FeatcacheError(f"--window {text!r}: expected CENTER,WIDTH with finite numbers and "
                             "a positive width, e.g. 40,400") from None


def _run_extract(args) -> int:
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
    if args.partition_size is not None and not args.dask_scheduler:
        raise FeatcacheError("--partition-size applies to --dask-scheduler jobs only")
    if not args.dask_scheduler:
        return _extract_with(args, raise_if_interrupted, None)
    client = connect(args.dask_scheduler)  # first, so an unreachable scheduler fails at once
    with quiet_connection_errors():  # a lost scheduler is one message, not Dask's tracebacks
        try:
            return _extract_with(args, raise_if_interrupted, client)
        finally:
            client.close()


def _extract_with(args, raise_if_interrupted, client):
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
        window=window, decode_scale=args.decode_scale,
        decoder=args.decoder, dataset=args.dataset, client=client,
        partition_size=args.partition_size,
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
