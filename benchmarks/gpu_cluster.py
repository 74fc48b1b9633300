"""The default model on one GPU: in process vs through a one-GPU Dask worker (issue #13).

Writes N distinct JPEG files of ImageNet size (640x427, quality 90; the same files as
``gpu_throughput.py``) and embeds them with EfficientNet-Lite0 (pretrained, the default
backbone) at 224 px, bf16, in one run:

1. in process: ``featcache extract`` with ``--num-workers`` decode workers;
2. a ``LocalCluster`` of one worker declaring ``resources={"GPU": 1}`` (so every task asks for
   the GPU, as on a dask-cuda node), non-daemonic so that the task decodes in the same number of
   DataLoader workers; the ratio to 1 is Dask's overhead on a GPU job, for each partition
   size in ``--partition-sizes`` (each task starts its own decode workers);
3. the same cluster, a rerun over the warm cache (keys, plan, nothing computed).

Each configuration first runs a warm-up job of two full batches on other files (the network
loaded, the CUDA context made, the kernels for the batch shape chosen), so the timings
compare the work. The single-GPU rate is the figure
docs/cluster.md extrapolates to 8 and 64 GPUs.

    python benchmarks/gpu_cluster.py [--n 4096] [--batch-size 256] [--num-workers 8]
    python benchmarks/gpu_cluster.py --device cpu --n 32 --batch-size 8 --num-workers 0  # smoke
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

# The sibling script distributed.py shares its name with the `distributed` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from featcache import extract  # noqa: E402
from featcache.inputs.sources import collect_inputs  # noqa: E402

#: Warm-up files, in batches of the timed jobs' size: a first job of 64 files left the first
#: full-size job of each process at 776-829 images/s, later ones at 1,362-1,442 (H200).
WARMUP_BATCHES = 2


def write_jpegs(folder: Path, start: int, n: int) -> Path:
    """``n`` distinct 640x427 JPEG files (shifted copies of scikit-learn's sample photos)."""
    from sklearn.datasets import load_sample_images

    from concurrent.futures import ThreadPoolExecutor

    photos = load_sample_images().images
    folder.mkdir(parents=True)

    def write(i):  # Pillow encodes without the interpreter lock: threads write in parallel
        img = np.roll(photos[i % 2], ((i // 1280) % 427, (i // 2) % 640), axis=(0, 1))
        Image.fromarray(np.ascontiguousarray(img)).save(folder / f"{i:06d}.jpg", quality=90)

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(write, range(start, start + n)))
    return folder


def timed(folder, cache, **params):
    inputs = collect_inputs([folder])
    start = time.perf_counter()
    summary = extract(inputs, cache, **params)
    seconds = time.perf_counter() - start
    assert summary.failed == 0 and summary.computed + summary.cached == len(inputs), summary
    return seconds, summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=8)
    parser.add_argument("--partition-sizes", default=None,
                        help="comma-separated inputs per task, each timed (default: featcache's)")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*still alive after")
    import dask
    from distributed import Client, LocalCluster

    from featcache.jobs.dask_client import task_resources

    precision = "bf16" if args.device.startswith("cuda") else "fp32"
    params = dict(batch_size=args.batch_size, device=args.device, precision=precision,
                  num_workers=args.num_workers, progress=False)
    sizes = [int(v) for v in args.partition_sizes.split(",")] if args.partition_sizes \
        else [None]  # featcache's default for the job
    rows = []
    with tempfile.TemporaryDirectory(prefix="featcache-gpu-dask-") as tmp:
        tmp = Path(tmp)
        folder = write_jpegs(tmp / "jpegs", 0, args.n)
        warm = write_jpegs(tmp / "warm", args.n, WARMUP_BATCHES * args.batch_size)
        timed(warm, tmp / "warm-local", **params)
        local, _ = timed(folder, tmp / "local", **params)
        rows.append(("in process (`featcache extract`)", local))
        with dask.config.set({"distributed.worker.daemon": False}):
            with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                              resources={"GPU": 1}, dashboard_address=":0") as cluster, \
                    Client(cluster) as client:
                resources = task_resources(client, args.device)
                timed(warm, tmp / "warm-dask", client=client, partition_size=sizes[0], **params)
                for part in sizes:
                    one, _ = timed(folder, tmp / f"dask-{part}", client=client,
                                   partition_size=part, **params)
                    rows.append((f"1 Dask worker, task resources {resources}, partitions of "
                                 f"{part or 'the default size'}", one))
                rerun, summary = timed(folder, tmp / f"dask-{part}", client=client,
                                       partition_size=part, **params)
                assert summary.computed == 0, summary
        rows.append(("same cluster, rerun over the warm cache", rerun))
    import torch

    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"{args.n} JPEG files (640x427, quality 90) -> efficientnet_lite0 (pretrained) "
          f"{precision} at 224 px, batch {args.batch_size}, {args.num_workers} decode workers, "
          f"{name}, {os.cpu_count()} CPU cores\n")
    print("| job | seconds | images/s | vs in process |")
    print("|---|---:|---:|---:|")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.2f} | {args.n / seconds:.0f} | {local / seconds:.2f}x |")


if __name__ == "__main__":
    main()
