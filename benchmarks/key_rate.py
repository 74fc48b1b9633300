"""A cold job's content keys: files/s hashed in this process vs in forked processes.

Before a job plans anything it needs the content key of every input, and for files that no
memo knows (a cold job) that means reading and hashing each one. This times
``featcache.engine.unit_of_work.content_keys`` on the same N files (640x427 JPEG photos,
quality 90, in the page cache; this process's memo cleared before each pass, no persistent
memo), alternately with the hashing processes off (every file hashed here, one after
another: featcache before 2026-12-02) and on (:mod:`featcache.engine.key_processes`,
processes started in the time), and checks that both give the same keys. Best of
``--passes``.

    .venv/bin/python benchmarks/key_rate.py [--n 8192] [--passes 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from featcache.engine import key_processes
from featcache.engine.unit_of_work import content_keys
from featcache.inputs.keys import FILE_KEY_MEMO

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_cluster import write_jpegs  # noqa: E402  (the same files as gpu_throughput.py)


def timed(items, processes_on: bool):
    FILE_KEY_MEMO.clear()
    saved = key_processes.MIN_FILES
    key_processes.MIN_FILES = saved if processes_on else float("inf")
    try:
        start = time.perf_counter()
        keys, failures = content_keys(items)
        seconds = time.perf_counter() - start
    finally:
        key_processes.MIN_FILES = saved
    assert not failures, failures
    return len(items) / seconds, keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        items = [str(p) for p in sorted(write_jpegs(Path(tmp) / "jpegs", 0, args.n).glob("*"))]
        best = {False: 0.0, True: 0.0}
        for _ in range(args.passes):
            here, keys_here = timed(items, False)
            processes, keys_processes = timed(items, True)
            if keys_here != keys_processes:
                raise SystemExit("the hashing processes gave other keys")
            best[False], best[True] = max(best[False], here), max(best[True], processes)
    n_proc = key_processes.key_processes(len(items))
    print(f"{args.n} JPEG files (640x427, quality 90), best of {args.passes} passes\n")
    print("| content keys of a cold job | files/s |")
    print("|---|---:|")
    print(f"| hashed in this process, one file after another (before) | {best[False]:,.0f} |")
    print(f"| hashed in {n_proc} processes (now) | {best[True]:,.0f} |")
    print(f"| ratio | {best[True] / best[False]:.2f}x |")


if __name__ == "__main__":
    main()
