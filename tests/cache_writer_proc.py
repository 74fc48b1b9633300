"""Helper process for the cache tests: a writer (resumable, killable) or a looping reader.

Features are synthetic and deterministic: ``feature(key_of(i), dim)`` is seeded by the key
bytes, so any process can check any served row. Keys ``i`` with ``i % fail_every == 0`` are
recorded as failures instead of rows.

    python cache_writer_proc.py write CACHE --start 0 --stop 1000 [--commit-rows 8] ...
    python cache_writer_proc.py read CACHE --stop 1000 --until STOPFILE
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time

import numpy as np

FINGERPRINT = "testfp0123456789"
CONFIG = {"model": "synthetic", "layer": None, "pooling": "avg", "dim": 16}


def key_of(i: int) -> bytes:
    """The 16-byte content key of item ``i``."""
    return hashlib.blake2b(f"item-{i}".encode(), digest_size=16).digest()


def feature(key: bytes, dim: int = 16) -> np.ndarray:
    """The deterministic float32 feature vector of ``key``."""
    seed = int.from_bytes(key[:8], "little")
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def features(keys, dim: int = 16) -> np.ndarray:
    if not len(keys):
        return np.zeros((0, dim), np.float32)
    return np.stack([feature(k, dim) for k in keys])


def import_cache():
    """Import ``featcache.cache`` without running ``featcache/__init__`` (which imports
    scikit-learn, about a second per process): keeps the killed processes' start-up short, and
    shows that the cache module needs nothing from the rest of the package."""
    if "featcache" not in sys.modules:
        import importlib.util
        import types

        spec = importlib.util.find_spec("featcache")
        pkg = types.ModuleType("featcache")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["featcache"] = pkg
    import featcache.cache

    return featcache.cache


def _write(args) -> int:
    FeatureCache = import_cache().FeatureCache

    cache = FeatureCache(args.cache)
    ns = cache.namespace(FINGERPRINT, dict(CONFIG, dim=args.dim))
    idx = list(range(args.start, args.stop))
    keys = [key_of(i) for i in idx]
    present = ns.lookup(keys)
    failed = ns.failures(keys)
    todo = [i for i, k, p in zip(idx, keys, present) if not p and k not in failed]
    print(f"todo {len(todo)}", flush=True)
    log = open(args.log, "a") if args.log else None
    with ns.writer(commit_rows=args.commit_rows, dtype=args.dtype) as w:
        for b, lo in enumerate(range(0, len(todo), args.batch)):
            batch = todo[lo:lo + args.batch]
            if log:
                log.write("".join(f"{i}\n" for i in batch))
                log.flush()
            ok = [i for i in batch if i % args.fail_every]
            for i in batch:
                if not i % args.fail_every:
                    w.add_failure(key_of(i), f"item-{i}", f"synthetic failure {i}")
            ks = [key_of(i) for i in ok]
            w.add(ks, features(ks, args.dim), [f"item-{i}" for i in ok])
            if args.delay:
                time.sleep(args.delay)
            if args.compact_every and b % args.compact_every == args.compact_every - 1:
                cache.compact(FINGERPRINT, stale_tmp_seconds=3600)
    print("done", flush=True)
    return 0


def _read(args) -> int:
    FeatureCache = import_cache().FeatureCache

    keys = [key_of(i) for i in range(args.start, args.stop)]
    expect = features(keys, args.dim)
    last, loops = -1, 0
    while True:
        stop = os.path.exists(args.until)
        ns = FeatureCache(args.cache).namespace(FINGERPRINT)
        rows = ns.rows()
        hit = ns.lookup(keys)
        if rows < last:
            print(f"FAIL rows went from {last} to {rows}", flush=True)
            return 3
        last = rows
        got = ns.read([k for k, h in zip(keys, hit) if h])
        if not np.array_equal(got, expect[hit]):
            print("FAIL a served row differs from its expected value", flush=True)
            return 4
        loops += 1
        if stop:
            break
    print(f"ok {loops} {last}", flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["write", "read"])
    p.add_argument("cache")
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--stop", type=int, default=1000)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--commit-rows", type=int, default=8)
    p.add_argument("--fail-every", type=int, default=37)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--compact-every", type=int, default=0)
    p.add_argument("--log")
    p.add_argument("--until", help="read mode: stop after the loop that sees this file")
    args = p.parse_args(argv)
    return _write(args) if args.mode == "write" else _read(args)


if __name__ == "__main__":
    sys.exit(main())
