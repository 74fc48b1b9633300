"""Extraction on a local Dask cluster vs in process: Dask's overhead, scaling, partition cost.

Writes N PneumoniaMNIST images as PNG files and embeds them, in one run, with the default
backbone (EfficientNet-Lite0, pretrained) at ``--image-size``:

1. in process (a fresh one), the engine on 1 thread (``torch.set_num_threads(1)``);
2. a ``LocalCluster`` of 1 worker x 1 thread: ratio to 1 (Dask's overhead; target >= 0.95x),
   with Dask's defaults and again with the workers' statistical profiler off
   (``distributed.worker.profile.enabled: False``, which docs/cluster.md recommends for
   extraction workers);
3. a ``LocalCluster`` of 2 workers x 1 thread: ratio to 2 (scaling; target >= 1.7x on the
   2-core machine), also with Dask's defaults and with the profiler off;
4. the per-partition overhead: on the 1-worker cluster, ``--overhead-n`` images at
   ``--overhead-image-size`` (small, so the fixed costs show) in partitions of
   ``--small-partition`` vs one partition; (time difference) / (extra partitions). Both
   cold (keys, plan, compute, one shard and key-memo file per partition) and warm (every
   row cached: keys from the memo, plan, scheduling). Then the same at ``--image-size``
   (the timed job in its partitions vs one), with the workers' freed activation buffers kept
   for the next partition (``featcache.jobs.dask_worker.PARTITION_LINGER``) and trimmed after each
   one, to show what that costs (``--no-partition-cost`` skips it);
5. for the GPU extrapolation in docs/cluster.md: how many 640x427 JPEG files one core decodes
   and resizes to 224 px per second with featcache's decoder.

Every job writes into a fresh cache directory; the network is loaded before timing starts
(a warm-up job on other images), in process and on every worker, so the ratios compare the
work, not the start-up. Jobs 1-3 run in ``--repeats`` interleaved rounds; the ratios are
reported from each configuration's best time and as the median of the rounds' own ratios
(identical single-core jobs run back to back on this shared machine differ by up to 24%, so
one pair of timings cannot settle a 5% target). Prints a markdown table and the
partition size that keeps the per-partition overhead under 1% of a partition's work at the
measured 1-worker rate.

    .venv/bin/python benchmarks/distributed.py [--n 768] [--image-size 224] [--repeats 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

# This script shares its name with the `distributed` package: keep its folder off the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from featcache import extract  # noqa: E402
from featcache.inputs.sources import collect_inputs  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "pneumoniamnist_trainval.npz"
WARMUP = 16
#: This process's environment before any cluster starts: a ``LocalCluster`` sets its workers'
#: ``MALLOC_TRIM_THRESHOLD_``, ``OMP_NUM_THREADS`` ... in ``os.environ`` here, and an
#: in-process job started with them would not tune glibc's malloc (half the speed).
START_ENVIRONMENT = dict(os.environ)


def write_pngs(folder: Path, start: int, n: int) -> Path:
    """PNG files of images ``start .. start+n`` of the bundled data set, in ``folder``."""
    with np.load(DATA) as data:
        images = np.concatenate([data["train_images"], data["val_images"]])[start:start + n]
    folder.mkdir(parents=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{start + i:05d}.png")
    return folder


def timed(job, folder, cache, **params):
    """(seconds, summary) of one extraction of ``folder`` into ``cache``."""
    inputs = collect_inputs([folder])
    start = time.perf_counter()
    summary = job(inputs, cache, **params)
    seconds = time.perf_counter() - start
    assert summary.failed == 0 and summary.computed + summary.cached == summary.inputs, summary
    return seconds, summary


def _usage():
    """(CPU seconds, kernel seconds, minor page faults) of this process so far."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return np.array([r.ru_utime + r.ru_stime, r.ru_stime, r.ru_minflt])


def workers_usage(client):
    """:func:`_usage` summed over the cluster's workers."""
    return sum(client.run(_usage).values())


def cluster_job(client, folder, cache, **params):
    """(seconds, :func:`workers_usage` it took) of one extraction on ``client``'s cluster."""
    before = workers_usage(client)
    seconds, _ = timed(extract, folder, cache, client=client, **params)
    return seconds, workers_usage(client) - before


def _load(image_size):
    from featcache.backbones import load_backbone

    load_backbone("efficientnet_lite0", weights="DEFAULT", layers=(None,), pooling="avg",
                  image_size=image_size)
    return os.getpid()


@contextlib.contextmanager
def clusters(warm, tmp, params, sizes, profile=True):
    """One warm ``LocalCluster`` of n workers x 1 thread per n in ``sizes``: name -> client.

    Each worker loads the network (featcache's per-process memo keeps it) and runs a warm-up
    job, so the timed jobs measure the work, not the start-up. ``profile=False`` starts the
    workers with their statistical profiler off.
    """
    import dask
    from distributed import Client, LocalCluster

    with contextlib.ExitStack() as stack:
        out = {}
        for n in sizes:
            with dask.config.set({"distributed.worker.profile.enabled": profile}):
                cluster = stack.enter_context(LocalCluster(
                    n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0"))
            client = out[n] = stack.enter_context(Client(cluster, set_as_default=False))
            client.run(_load, params["image_size"])
            timed(extract, warm, tmp / f"warm-{n}", client=client,
                  partition_size=max(1, WARMUP // n), **params)
        yield out


def local_job(folder, warm, cache, image_size, batch_size):
    """The in-process job, run in the process :func:`in_process` starts: a warm-up job on
    other images, then the timed one; (seconds, its :func:`_usage`)."""
    import torch

    torch.set_num_threads(1)
    params = dict(image_size=int(image_size), batch_size=int(batch_size), progress=False,
                  device="cpu")
    extract(collect_inputs([warm]), f"{cache}-warm", **params)
    before = _usage()
    seconds, _ = timed(extract, folder, cache, **params)
    return seconds, _usage() - before


def in_process(folder, warm, cache, image_size, batch_size):
    """:func:`local_job` in a fresh process, the engine on one thread, like each worker.

    A process of its own: the clusters' schedulers live in this one, and their threads would
    take the interpreter lock from the in-process engine now and then. It loads this file by
    its path (its folder stays off ``sys.path``, see the top).
    """
    code = ("import importlib.util, sys; "
            "spec = importlib.util.spec_from_file_location('dask_benchmark', sys.argv[1]); "
            "bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench); "
            "seconds, used = bench.local_job(*sys.argv[2:]); print(seconds, *used)")
    done = subprocess.run([sys.executable, "-c", code, __file__, str(folder), str(warm),
                           str(cache), str(image_size), str(batch_size)], capture_output=True,
                          text=True, check=True, env=START_ENVIRONMENT)
    values = [float(v) for v in done.stdout.split()[-4:]]
    return values[0], np.array(values[1:])


def rounds(folder, warm, tmp, params, per_task, repeats):
    """Best seconds of each job over ``repeats`` rounds, the configurations interleaved, and
    each round's (1 worker / in process, 2 workers / 1 worker, and both again with the
    workers' profiler off) ratios, and each configuration's median :func:`_usage` per job (of
    the in-process job's process, or summed over the workers).

    Other jobs share this machine now and then; interleaving spreads their load over every
    configuration, and the best of each is the least disturbed run. Even rounds run the
    in-process job first, odd rounds last (so neither side always follows the same job). Only
    the configuration being timed exists while it runs: an idle Dask worker and its scheduler
    take about 7% of a core each here (heartbeats, the profiler), which the 2-worker job needs.
    """
    best, ratios, usage = {}, [], {}
    for r in range(repeats):
        seconds = {}

        def local():
            seconds["local"], used = in_process(folder, warm, tmp / f"cache-local-{r}",
                                                params["image_size"], params["batch_size"])
            usage.setdefault("local", []).append(used)

        def dask():
            (tmp / f"round-{r}").mkdir()
            for n, profile in ((1, True), (1, False), (2, True), (2, False))[::1 if r % 2 == 0
                                                                              else -1]:
                name = n if profile else f"{n}-quiet"
                with clusters(warm, tmp / f"round-{r}", params, (n,), profile) as clients:
                    seconds[name], used = cluster_job(clients[n], folder,
                                                      tmp / f"cache-{name}-{r}",
                                                      partition_size=per_task, **params)
                    usage.setdefault(name, []).append(used)

        for job in ((local, dask) if r % 2 == 0 else (dask, local)):
            job()
        for name, value in seconds.items():
            best[name] = min(best.get(name, value), value)
        ratios.append((seconds["local"] / seconds[1], seconds[1] / seconds[2],
                       seconds["local"] / seconds["1-quiet"],
                       seconds["1-quiet"] / seconds["2-quiet"]))
    return best, ratios, {name: np.median(used, axis=0) for name, used in usage.items()}


def overhead(folder, warm, tmp, params, small, n, repeats):
    """ms per partition, cold and warm, on one worker (best of ``repeats``)."""
    out = {}
    with clusters(warm, tmp, params, (1,)) as clients:
        for r in range(repeats):
            for label, size in (("one", n), ("small", small)):
                cache = tmp / f"overhead-{label}-{r}"
                cold, _ = timed(extract, folder, cache, client=clients[1], partition_size=size,
                                **params)
                warm_s, summary = timed(extract, folder, cache, client=clients[1],
                                        partition_size=size, **params)
                assert summary.computed == 0
                old = out.get(label, (cold, warm_s))
                out[label] = (min(old[0], cold), min(old[1], warm_s))
    extra = -(-n // small) - 1
    return ({k: 1000 * (out["small"][i] - out["one"][i]) / extra for i, k in
             enumerate(("cold", "warm"))}, out, extra)


def _set_linger(seconds: float) -> float:
    """On a worker: how long a partition's freed buffers wait for the next one (see
    ``featcache.jobs.dask_worker.PARTITION_LINGER``); returns the value it replaced."""
    import featcache.jobs.dask_worker as fd

    old, fd.PARTITION_LINGER = fd.PARTITION_LINGER, seconds
    return old


def partition_cost(folder, warm, tmp, params, per_task, n, repeats):
    """Cost per partition at the timed image size, on one worker (profiler off), with the
    freed activation buffers kept for the next partition (featcache's default) and trimmed
    after each one (linger 0): (partitions of ``per_task`` - one partition) / extra
    partitions, cold, over ``repeats`` interleaved rounds. Wall-clock ms from the best times;
    the worker's CPU ms, kernel ms and minor page faults from the median job (they do not move
    with other jobs' load the way wall-clock time does)."""
    if per_task >= n:
        return None, None, None  # one partition: nothing to compare
    best, used = {}, {}
    with clusters(warm, tmp, params, (1,), profile=False) as clients:
        client = clients[1]
        kept = next(iter(client.run(_set_linger, 0.0).values()))
        for r in range(repeats):
            for linger in ((kept, 0.0) if r % 2 == 0 else (0.0, kept)):
                client.run(_set_linger, linger)
                for label, size in (("one", n), ("parts", per_task)):
                    seconds, usage = cluster_job(client, folder,
                                                 tmp / f"cost-{linger}-{label}-{r}",
                                                 partition_size=size, **params)
                    key = (linger > 0, label)
                    best[key] = min(best.get(key, seconds), seconds)
                    used.setdefault(key, []).append(usage)
    extra = -(-n // per_task) - 1
    used = {key: np.median(values, axis=0) for key, values in used.items()}
    # Per extra partition: wall ms (best times), then CPU ms, kernel ms and page faults (medians)
    return {held: (1000 * (best[(held, "parts")] - best[(held, "one")]) / extra,
                   *((used[(held, "parts")] - used[(held, "one")]) * (1000, 1000, 1) / extra))
            for held in (True, False)}, best, extra


def decode_rate(tmp: Path, n: int, size: int) -> float:
    """Images/s one core decodes and resizes: a 640x427 JPEG (quality 90) through featcache's
    decoder and resize, as a worker's decode step does (what feeds a GPU)."""
    import torch

    from featcache.engine.batches import to_model_input
    from featcache.inputs import DecodePolicy, decode

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:427, 0:640]
    smooth = np.stack([x * 255 / 640, y * 255 / 427, (x + y) * 255 / 1067], axis=-1)
    pixels = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
    path = tmp / "photo.jpg"
    Image.fromarray(pixels).save(path, quality=90)
    policy = DecodePolicy()
    to_model_input(decode(path, 0, policy, image_size=size), size)  # warm-up
    start = time.perf_counter()
    for i in range(n):
        to_model_input(decode(path, i, policy, image_size=size), size)
    return n / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=768, help="images per timed job")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--partition-size", type=int, default=None,
                        help="inputs per task in jobs 2 and 3 (default: featcache's)")
    parser.add_argument("--overhead-n", type=int, default=512)
    parser.add_argument("--overhead-image-size", type=int, default=32)
    parser.add_argument("--small-partition", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2,
                        help="interleaved rounds: best times and the median ratio are reported")
    parser.add_argument("--no-partition-cost", dest="partition_cost", action="store_false",
                        help="skip the per-partition overhead at --image-size (4 jobs a round)")
    parser.add_argument("--decode-n", type=int, default=200,
                        help="640x427 JPEG decodes timed on one core (0: skip)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*still alive after")
    from featcache.jobs.dask_client import DEFAULT_PARTITION_SIZE

    size = args.partition_size or DEFAULT_PARTITION_SIZE
    params = dict(image_size=args.image_size, batch_size=args.batch_size, progress=False,
                  device="cpu")
    load_before = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="featcache-dask-") as tmp:
        tmp = Path(tmp)
        folder = write_pngs(tmp / "pngs", 0, args.n)
        warm = write_pngs(tmp / "warm", args.n, WARMUP)
        # 3 partitions per worker, each whole batches like the in-process job's (partitions
        # of 96 ran a batch of 64 and one of 32 each).
        batches = max(1, args.n // 6 // args.batch_size)
        per_task = min(size, batches * args.batch_size)
        best, ratios, usage = rounds(folder, warm, tmp, params, per_task, args.repeats)
        t_local, t_one, t_two = best["local"], best[1], best[2]
        small_params = dict(params, image_size=args.overhead_image_size)
        ofolder = write_pngs(tmp / "overhead", 0, args.overhead_n) if args.overhead_n != args.n \
            else folder
        per_partition, raw, extra = overhead(ofolder, warm, tmp, small_params,
                                             args.small_partition, args.overhead_n, args.repeats)
        cost, cost_raw, cost_extra = partition_cost(folder, warm, tmp, params, per_task,
                                                    args.n, args.repeats) \
            if args.partition_cost else (None, None, None)
        decode = decode_rate(tmp, args.decode_n, 224) if args.decode_n else None
    n = args.n
    rate_one = n / t_one
    print(f"{n} PNG files (PneumoniaMNIST 28x28) at {args.image_size} px, batch "
          f"{args.batch_size}, partitions of {per_task}, best of {args.repeats} interleaved "
          f"rounds; CPU, {os.cpu_count()} cores; load "
          f"average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}; "
          f"{time.perf_counter() - started:.0f} s in all\n")
    print("| measurement | value | target | met? |")
    print("|---|---:|---:|---|")
    print(f"| in process, 1 thread | {n / t_local:.1f} images/s | | |")
    print(f"| Dask, 1 worker x 1 thread | {rate_one:.1f} images/s | | |")
    print(f"| Dask, 1 worker x 1 thread, profiler off | {n / best['1-quiet']:.1f} images/s | | |")
    print(f"| Dask, 2 workers x 1 thread | {n / t_two:.1f} images/s | | |")
    print(f"| Dask, 2 workers x 1 thread, profiler off | {n / best['2-quiet']:.1f} images/s | | |")
    ratio1, ratio2, quiet = t_local / t_one, t_one / t_two, t_local / best["1-quiet"]
    for i, (what, ratio, target) in enumerate((("1 worker / in process", ratio1, 0.95),
                                               ("2 workers / 1 worker", ratio2, 1.7),
                                               ("1 worker, profiler off / in process", quiet,
                                                0.95),
                                               ("2 workers / 1 worker, profiler off",
                                                best["1-quiet"] / best["2-quiet"], 1.7))):
        each = [r[i] for r in ratios]
        median = float(np.median(each))
        print(f"| {what}, best times | {ratio:.2f}x | >= {target}x | "
              f"{'yes' if ratio >= target else 'NO'} |")
        print(f"| {what}, median of the rounds' ratios ({', '.join(f'{x:.2f}' for x in each)}) "
              f"| {median:.2f}x | >= {target}x | {'yes' if median >= target else 'NO'} |")
    for name, what in (("local", "in process"), (1, "1 worker"),
                       ("1-quiet", "1 worker, profiler off"), (2, "2 workers"),
                       ("2-quiet", "2 workers, profiler off")):
        cpu, kernel, faults = usage[name]
        print(f"| {what}: CPU / kernel seconds / minor page faults per job (median) | "
              f"{cpu:.1f} s / {kernel:.2f} s / {faults:,.0f} | | |")
    print(f"| per-partition overhead, cold ({args.overhead_image_size} px, "
          f"{extra} extra partitions) | {per_partition['cold']:.0f} ms | | |")
    print(f"| per-partition overhead, warm (all cached) | {per_partition['warm']:.0f} ms | | |")
    if cost is not None:
        for held, what in ((True, "buffers kept for the next partition (default)"),
                           (False, "buffers trimmed after each partition")):
            wall, cpu, kernel, faults = cost[held]
            print(f"| per-partition overhead at {args.image_size} px, {cost_extra} extra "
                  f"partitions of {per_task}, {what}: wall / worker CPU / kernel / page faults "
                  f"| {wall:.0f} ms / {cpu:.0f} ms / {kernel:.0f} ms / {faults:,.0f} | | |")
    if decode is not None:
        print(f"| decode + resize of a 640x427 JPEG to 224 px, one core | {decode:.0f} images/s "
              "| | |")
    print(f"\nraw seconds (one partition, {args.small_partition}-image partitions), cold / warm: "
          + ", ".join(f"{k}: {c:.2f} / {w:.2f}" for k, (c, w) in raw.items()))
    if cost_raw is not None:
        print(f"raw seconds at {args.image_size} px (one partition / partitions of {per_task}): "
              + ", ".join(f"{'kept' if held else 'trimmed'}: {cost_raw[(held, 'one')]:.2f} / "
                          f"{cost_raw[(held, 'parts')]:.2f}" for held in (True, False)))
    # The smallest power of two whose overhead is under 1% of its work at the 1-worker rate.
    target = max(per_partition["cold"], 1.0) / 1000 / 0.01 * rate_one
    power = 1 << max(0, int(np.ceil(np.log2(target))))
    print(f"partition size for <= 1% overhead at {rate_one:.0f} images/s per worker: "
          f">= {target:.0f} inputs (next power of two: {power})")


if __name__ == "__main__":
    main()
