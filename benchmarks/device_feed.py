"""How fast the decode workers feed ``decoder="device"``: JPEG files read, checked and handed over.

With ``decoder="device"`` a decode worker does not decode: it reads each JPEG file, checks its
content key (the hash of the bytes it hands over) and its frame, and hands the bytes to the
main process, where the device decodes them in batches. On a GPU that feed, not the network,
may bound a job (issue 25's target is 5,000 images/s). This times, in one run and on the
same files (N distinct 640x427 JPEG photos, quality 90, in the page cache), files/s through a
``DataLoader`` of featcache's decode dataset, no decode and no network:

- **packed** (featcache): a decode batch's JPEG bytes travel as one uint8 tensor
  (``featcache.engine.batches._collate``), split into views in the main process;
- **per file** (the baseline, featcache before 2026-12-02): one tensor per file, each its own
  shared-memory segment;

with 0 workers (in the main process) and each ``--workers`` count, and the rate of reading and
checking alone in one process (the ceiling of one core). Passes alternate; the best is kept.

    .venv/bin/python benchmarks/device_feed.py [--n 2048] [--workers 1,2] [--passes 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from featcache.engine.batches import _DecodeDataset, _collate, _unpacked
from featcache.inputs import DecodePolicy, as_items
from featcache.inputs.keys import content_key

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_cluster import write_jpegs  # noqa: E402  (the same files as gpu_throughput.py)


def per_file(samples):
    """The baseline: ``_collate``, but each JPEG's bytes in a tensor of its own (as the
    decode dataset made them before)."""
    jpegs = [(pos, torch.frombuffer(bytearray(data), dtype=torch.uint8))
             for pos, data, _ in samples if isinstance(data, bytes)]
    positions, images, errors, _ = _collate([s for s in samples if not isinstance(s[1], bytes)])
    return positions, images, errors, jpegs


def packed(samples):
    return _collate(samples)


def feed_rate(dataset, collate, workers, batch_size) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    start, count = time.perf_counter(), 0
    for _, _, _, jpegs in loader:
        pairs = jpegs if isinstance(jpegs, list) else _unpacked(jpegs)
        count += len(pairs)
    seconds = time.perf_counter() - start
    if count != len(dataset):
        raise SystemExit(f"expected {len(dataset)} JPEGs for the device, got {count}")
    return count / seconds


def read_and_check_rate(dataset) -> float:
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    return len(dataset) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="files per decode batch (a worker's share of a network batch)")
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    counts = [0] + [int(w) for w in args.workers.split(",") if w]
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_jpegs(Path(tmp) / "jpegs", 0, args.n)
        items = as_items(sorted(str(p) for p in folder.glob("*.jpg")))
        keys = [content_key(item, i) for i, item in enumerate(items)]
        dataset = _DecodeDataset(items, np.arange(len(items)), DecodePolicy(decoder="device"),
                                 224, keys)
        best: dict = {}
        for _ in range(args.passes):
            rate = read_and_check_rate(dataset)
            best["read"] = max(best.get("read", 0.0), rate)
            for workers in counts:
                for name, collate in (("per file", per_file), ("packed", packed)):
                    rate = feed_rate(dataset, collate, workers, args.batch_size)
                    best[name, workers] = max(best.get((name, workers), 0.0), rate)
    print(f"{args.n} JPEG files (640x427, quality 90), decode batches of {args.batch_size}, "
          f"best of {args.passes} passes, {os.cpu_count()} CPU cores, torch "
          f"{torch.__version__}\n")
    print(f"read + key and frame check alone, one process: {best['read']:,.0f} files/s\n")
    print("| decode workers | per file (before) files/s | packed files/s | packed / per file |")
    print("|---:|---:|---:|---:|")
    for workers in counts:
        a, b = best["per file", workers], best["packed", workers]
        print(f"| {workers} | {a:,.0f} | {b:,.0f} | {b / a:.2f}x |")


if __name__ == "__main__":
    main()
