"""How soon decode workers feed the network: decode batches split among the workers vs whole.

A DataLoader worker hands over a whole decode batch at once. With decode batches of the full
``batch_size``, the network's first batch waits until one worker has decoded ``batch_size``
images; split among the workers (:func:`featcache.engine.batches.decode_batch_size`, what featcache
does), it waits for ``batch_size / workers``. Every run pays that start once, and a Dask job
once per partition. Measured on N 640x427 JPEG files (quality 90) at 224 px with a network
that costs nothing (the mean of each image), so the table shows the decode pipeline alone:
seconds to the first batch and for the whole run, best of ``--repeats`` alternating rounds,
after one warm-up run (the parent's one-time imports).

    .venv/bin/python benchmarks/decode_start.py [--n 256] [--batch-size 64] [--workers 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

# The sibling script distributed.py shares its name with the `distributed` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

import featcache.engine.batches as engine  # noqa: E402
from featcache.inputs import as_items  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_cluster import write_jpegs  # noqa: E402


class _Free(torch.nn.Module):
    """A network that costs nothing: one number per image."""

    def forward(self, x):
        return {"default": x.float().mean(dim=(2, 3))}


def run(items, split: bool, batch_size: int, workers: int):
    """(seconds to the first batch, seconds for all) with split or whole decode batches."""
    original = engine.decode_batch_size
    if not split:
        engine.decode_batch_size = lambda batch, _workers: batch
    try:
        start, first = time.perf_counter(), None
        for _ in engine.run_batches(_Free(), items, range(len(items)), image_size=224,
                                    batch_size=batch_size, num_workers=workers, device="cpu",
                                    progress=False):
            first = first or time.perf_counter() - start
        return first, time.perf_counter() - start
    finally:
        engine.decode_batch_size = original


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_jpegs(Path(tmp) / "jpegs", 0, args.n)
        items = as_items(sorted(str(p) for p in folder.glob("*.jpg")))
        run(items, True, args.batch_size, args.workers)  # warm-up
        best = {}
        for r in range(args.repeats):
            for split in ((True, False) if r % 2 == 0 else (False, True)):
                first, total = run(items, split, args.batch_size, args.workers)
                old = best.get(split, (first, total))
                best[split] = (min(old[0], first), min(old[1], total))
    print(f"{args.n} JPEG files (640x427) at 224 px, batch {args.batch_size}, {args.workers} decode "
          f"workers, best of {args.repeats}\n")
    print("| decode batches | first batch after | whole run |")
    print("|---|---:|---:|")
    for split, label in ((False, f"whole ({args.batch_size} per worker step)"),
                         (True, f"split ({engine.decode_batch_size(args.batch_size, args.workers)}"
                                " per worker step, featcache)")):
        print(f"| {label} | {best[split][0]:.2f} s | {best[split][1]:.2f} s |")


if __name__ == "__main__":
    main()
