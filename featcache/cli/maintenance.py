"""``featcache info``, ``verify``, ``compact`` and ``export``: looking after a cache directory.

Thin: parse, call :class:`featcache.cache.FeatureCache`, print (text or ``--json``). h5py and
numpy only, never torch.
"""

from __future__ import annotations

import sys

from ..cache import FeatureCache
from ..cache.export import export_facts
from .parsing import (add_command, add_json_option, add_namespace_options, chosen_namespace,
                      human_size, print_json)

__all__ = ["add_info", "add_verify", "add_compact", "add_export"]


def add_info(sub) -> None:
    p = add_command(sub, "info", help="summarise a cache directory (namespaces, rows, size)",
                    description="Per namespace: model, layer, pooling, dim, rows, failures, "
                                "shards, bytes on disk and creation time.")
    p.add_argument("dir", metavar="DIR", help="cache directory")
    add_json_option(p)
    p.set_defaults(func=_run_info)


def _run_info(args) -> int:
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


def add_verify(sub) -> None:
    p = add_command(sub, "verify", help="check every shard's checksum and shape",
                    description="Re-read every shard; exit 1 and name each damaged one.")
    p.add_argument("dir", metavar="DIR", help="cache directory")
    add_json_option(p)
    p.set_defaults(func=_run_verify)


def _run_verify(args) -> int:
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


def add_compact(sub) -> None:
    p = add_command(sub, "compact", help="merge shards, drop duplicates and stale temp files",
                    description="Merge each namespace's shards into one (atomically), "
                                "remove the merged ones and rebuild index.h5; merge the key "
                                "memo and drop its entries whose file changed or vanished. "
                                "With --model, --layer, --image-size or --namespace, only the "
                                "one namespace they choose (default: all).")
    p.add_argument("dir", metavar="DIR", help="cache directory")
    add_namespace_options(p)
    p.add_argument("--min-shards", type=int, default=2, metavar="K",
                   help="only merge namespaces with at least K shards")
    add_json_option(p)
    p.set_defaults(func=_run_compact)


def _run_compact(args) -> int:
    cache = FeatureCache(args.dir, create=False)
    chosen = any(v is not None for v in (args.model, args.layer, args.image_size,
                                         args.namespace))
    stats = cache.compact(chosen_namespace(cache, args) if chosen else None,
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


def add_export(sub) -> None:
    p = add_command(sub, "export", help="write one namespace to a plain .h5 or .npz file",
                    description="Write features, keys, sources, labels, groups, splits and "
                                "failures of one namespace to OUT (.h5, or .npz when OUT ends in "
                                ".npz). Labels, groups and splits are empty strings where none "
                                "is recorded.")
    p.add_argument("dir", metavar="DIR", help="cache directory")
    p.add_argument("out", metavar="OUT", help="output file (.h5 or .npz)")
    add_namespace_options(p)
    p.add_argument("--dataset", metavar="NAME",
                   help="only the rows tagged NAME by `featcache extract --dataset NAME` "
                        "(default: every row, with a warning when they belong to several)")
    add_json_option(p)
    p.set_defaults(func=_run_export)


def _run_export(args) -> int:
    cache = FeatureCache(args.dir, create=False)
    out = cache.export(args.out, chosen_namespace(cache, args), dataset=args.dataset)
    facts = {"path": str(out), **export_facts(out), "dataset": args.dataset}
    if args.json:
        print_json(facts)
    else:
        print(f"exported {facts['rows']} rows of namespace {facts['namespace']}"
              + (f" (dataset {args.dataset})" if args.dataset else "") + f" to {out}")
    return 0
