"""The key memo's cost per call, with a small memo and with a large one (issue 22, class 7).

Two cache directories get a key memo (``CACHE_DIR/keys/``, :mod:`featcache.cache.keymemo`)
of ``--small`` (1,000) and ``--entries`` (1,000,000) synthetic entries. Then, in each, 20
calls, each by a fresh ``KeyMemo`` (as a new process would) over one new 4 KB file:
``content_keys([path], memo=...)``, which looks the file up, hashes it and saves its key.
The 20 files' paths all fall into one bucket of the memo, so the 16th call merges that
bucket: the worst case of a save. The new files are left to settle first (the memo
remembers a key only once the file is older than the racily-clean window,
:mod:`featcache.cache.identity`; the wait is printed).

Prints a markdown table: per call, median and maximum wall time, memo segments opened and
records read by the lookup, bytes written by the save; and the ratio large / small (target:
about 1x, the per-call cost independent of the memo's size). Before this layout one memo file
held every entry: one new file with 2 million entries cost 13-15 s and 2.3 GB, and at 500k
entries every 15th call rewrote the whole 64 MB memo.

    .venv/bin/python benchmarks/key_memo.py [--entries 1000000] [--small 1000] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

from featcache.cache import keymemo
from featcache.cache.identity import racy_window_ns
from featcache.engine.unit_of_work import content_keys

CALLS = 20


def build(cache_dir, n) -> float:
    """A memo of ``n`` synthetic entries, saved as one segment per bucket; seconds taken."""
    start = time.perf_counter()
    memo = keymemo.KeyMemo(cache_dir)
    for i in range(n):
        memo[(f"/data/study/{i:08d}.png", 4096 + i % 977, 1_700_000_000_000_000_000 + i,
              10_000 + i, 64_768, 1_700_000_000_000_000_000 + i)] = \
            hashlib.blake2b(i.to_bytes(8, "little"), digest_size=16).digest()
    memo.save()
    return time.perf_counter() - start


def one_bucket_files(folder, count) -> list:
    """``count`` new 4 KB files whose resolved paths fall into the same memo bucket."""
    folder.mkdir()
    paths, i, target = [], 0, None
    while len(paths) < count:
        path = folder / f"new-{i:06d}.png"
        bucket = keymemo._bucket(keymemo._path_hash(str(path.resolve())))
        target = target or bucket
        if bucket == target:
            path.write_bytes(os.urandom(4096))
            paths.append(path)
        i += 1
    return paths


def settle(paths) -> float:
    newest = max(max(st.st_mtime_ns, st.st_ctime_ns) for st in map(os.stat, paths))
    waited = 0.0
    while (late := newest + racy_window_ns() - time.time_ns()) > 0:
        time.sleep(late / 1e9 + 0.01)
        waited += late / 1e9 + 0.01
    return waited


def written(cache_dir, before) -> int:
    now = {p: p.stat().st_size for p in Path(cache_dir, keymemo.KEYS_DIR).glob("*/*.km")}
    return sum(size for p, size in now.items() if p not in before)


def calls(cache_dir, paths) -> list:
    """(seconds, segments opened, records read, bytes written) of each one-file call."""
    out = []
    for path in paths:
        before = set(Path(cache_dir, keymemo.KEYS_DIR).glob("*/*.km"))
        memo = keymemo.KeyMemo(cache_dir)  # a new process's memo
        start = time.perf_counter()
        content_keys([path], memo=memo)
        seconds = time.perf_counter() - start
        out.append((seconds, memo.reads["segments"], memo.reads["records"],
                    written(cache_dir, before)))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="the large memo")
    parser.add_argument("--small", type=int, default=1_000, help="the small memo")
    parser.add_argument("--quick", action="store_true", help="20,000 entries (smoke test)")
    args = parser.parse_args()
    large = 20_000 if args.quick else args.entries
    rows, results = [], {}
    with tempfile.TemporaryDirectory(prefix="featcache-key-memo-") as tmp:
        tmp = Path(tmp)
        built = {n: build(tmp / f"c{n}", n) for n in (args.small, large)}
        files = {n: one_bucket_files(tmp / f"files{n}", CALLS) for n in (args.small, large)}
        waited = settle([p for ps in files.values() for p in ps])
        for n in (args.small, large):
            results[n] = calls(tmp / f"c{n}", files[n])
            size = sum(p.stat().st_size for p in (tmp / f"c{n}" / keymemo.KEYS_DIR).rglob("*.km"))
            secs = [r[0] for r in results[n]]
            rows += [
                (f"memo of {n:,} entries ({size / 1e6:.1f} MB on disk, built in {built[n]:.1f} s): "
                 f"one new file per call, median / max of {CALLS} calls",
                 f"{1e3 * statistics.median(secs):.2f} ms / {1e3 * max(secs):.2f} ms", "", ""),
                ("  segments opened / records read by a lookup (max)",
                 f"{max(r[1] for r in results[n])} / {max(r[2] for r in results[n])}", "", ""),
                ("  bytes written by a save: median / max (the max merges one bucket)",
                 f"{statistics.median(r[3] for r in results[n]):,.0f} / "
                 f"{max(r[3] for r in results[n]):,}", "", ""),
            ]
    med = {n: statistics.median(r[0] for r in results[n]) for n in results}
    top = {n: max(r[0] for r in results[n]) for n in results}
    ratio, ratio_max = med[large] / med[args.small], top[large] / top[args.small]
    rows += [
        (f"ratio {large:,} / {args.small:,} entries, median call", f"{ratio:.2f}x", "about 1x",
         "**yes**" if ratio < 2 else "**NO**"),
        (f"ratio {large:,} / {args.small:,} entries, slowest call (a bucket merge)",
         f"{ratio_max:.2f}x", "", ""),
        (f"files left to settle first (racily-clean window {racy_window_ns() / 1e9:g} s)",
         f"waited {waited:.1f} s", "", ""),
    ]
    print(f"Key memo per-call cost, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}{' (--quick sizes)' if args.quick else ''}\n")
    print("| measurement | value | target | met? |")
    print("|---|---:|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
