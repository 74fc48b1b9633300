"""What a Dask worker's statistical profiler costs a running task, in CPU time (issue #13).

Dask workers sample the stack of every running task every 10 ms
(``distributed.worker.profile.interval``) on their event-loop thread, which holds the
interpreter lock while it walks the frames. Wall-clock ratios on the 2-core development
machine are too noisy to show a few percent, so this measures CPU time per thread instead:
one ``LocalCluster`` worker (1 thread) runs a task that keeps its thread busy (numpy work
under a 40-frame Python stack, like featcache's engine under Dask's task machinery) while
the worker process's threads are sampled with psutil, with the profiler on (Dask's default)
and off (``distributed.worker.profile.enabled: False``), alternating ``--rounds`` times.

Prints, per configuration: the idle worker's CPU, the task thread's share of a core while it
runs, and what the worker's other threads (event loop, profiler, monitors) took meanwhile.

    .venv/bin/python benchmarks/dask_profiler.py [--seconds 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# This folder holds distributed.py, which shadows the `distributed` package: keep it off the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def busy(seconds: float, depth: int = 40) -> int:
    """Keep this thread busy for ``seconds`` under a ``depth``-frame Python stack."""
    import numpy as np

    if depth:
        return busy(seconds, depth - 1)
    end, a = time.time() + seconds, np.random.default_rng(0).random((200, 200))
    while time.time() < end:
        a = a @ a
        a /= a.max()
    return 0


def measure(profile: bool, seconds: float) -> dict:
    """CPU shares (fractions of one core) of one worker, idle and while a task runs."""
    import dask
    import psutil
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.worker.profile.enabled": profile}), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                         dashboard_address=":0") as cluster, Client(cluster) as client:
        (pid,) = client.run(os.getpid).values()
        worker = psutil.Process(pid)
        time.sleep(1)
        before = sum(worker.cpu_times()[:2])
        time.sleep(seconds)
        idle = (sum(worker.cpu_times()[:2]) - before) / seconds
        future = client.submit(busy, seconds + 2, pure=False)
        time.sleep(1)
        start = {t.id: t.user_time + t.system_time for t in worker.threads()}
        time.sleep(seconds)
        end = {t.id: t.user_time + t.system_time for t in worker.threads()}
        future.result()
    shares = sorted(((end[t] - start.get(t, 0.0)) / seconds for t in end), reverse=True)
    return {"idle": idle, "task": shares[0], "others": sum(shares[1:])}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="each measurement's length")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    print("| worker profiler | idle worker, % of a core | task thread while running, % | "
          "other threads while running, % |")
    print("|---|---:|---:|---:|")
    for _ in range(args.rounds):
        for profile in (True, False):
            m = measure(profile, args.seconds)
            print(f"| {'on (default)' if profile else 'off'} | {100 * m['idle']:.1f} | "
                  f"{100 * m['task']:.0f} | {100 * m['others']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
