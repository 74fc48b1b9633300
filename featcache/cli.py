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
import sys
import warnings


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


#: ``_add_<name>`` functions, in the order ``featcache --help`` lists them.
SUBCOMMANDS = [_add_info, _add_verify, _add_compact, _add_export]


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


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"featcache: warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 featcache error, 2 usage)."""
    args = build_parser().parse_args(argv)
    from .exceptions import FeatcacheError

    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return int(args.func(args) or 0)
        except FeatcacheError as exc:
            print(f"featcache {args.command}: error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"featcache {args.command}: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    raise SystemExit(main())
