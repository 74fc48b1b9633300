"""Extraction on a Dask cluster: one task per partition, each running the one unit of work.

``extract(inputs, cache, client=Client(...))`` and ``featcache extract ... --dask-scheduler
ADDRESS`` come here. The client only lists the inputs (it never reads an image's bytes), splits
them into deterministic partitions (contiguous chunks of the inputs sorted by source) and
submits one Dask task per partition. Each task, on a worker, runs
:func:`featcache.engine.unit_of_work.embed` -- the same unit of work as
:class:`~featcache.FrozenBackbone` and a local ``featcache extract``: content keys, plan (skip
what the shared cache holds), compute the misses, commit shards straight into the shared cache
directory (shards are atomic and many writers may add them at once), and returns its counts and
failures.

What runs on a worker (:class:`Job`, :func:`run_partition`, :func:`record_annotations`) is in
:mod:`featcache.jobs.dask_worker`; this module is the client side: connecting
(:func:`connect`), partitioning, submitting, collecting the results into one
:class:`~featcache.jobs.summary.ExtractSummary`, and a scheduler lost mid-job
(:class:`~featcache.exceptions.SchedulerLostError`). A worker that dies mid-task (OOM,
pre-emption, ``kill -9``) loses only the rows it had not committed: Dask runs the partition
again elsewhere (``distributed.scheduler.allowed-failures`` applies) and its plan step skips
the rows the dead worker committed. Labels, groups, splits and sources are recorded by one
small task per :data:`ANNOTATE_EVERY` finished partitions. Importing this module imports
neither dask nor torch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from ..backbones.weights import is_weights_path
from ..cache import FeatureCache
from ..cache.files import list_shards, open_read
from ..cache.store import default_cache_dir
from ..engine.interrupts import raise_if_interrupted
from ..engine.progress import progress_bar
from ..exceptions import CacheValueError, FeatcacheError, InvalidOptionError, SchedulerLostError
from ..inputs.sources import shard_positions
from ..options import validate_run_options

from .dask_worker import Job, PartitionResult, record_annotations, run_partition
from .summary import ExtractSummary

__all__ = ["DEFAULT_PARTITION_SIZE", "GPU_PARTITION_SIZE", "default_partition_size",
           "CONNECT_TIMEOUT", "ANNOTATE_EVERY", "connect", "partitions", "task_resources",
           "extract_on_cluster", "quiet_connection_errors"]

#: Inputs per Dask task (see benchmarks/README.md, "Extraction on a Dask cluster"): large
#: enough that the per-task cost (scheduling, one shard and one key-memo file per partition)
#: stays near 1% of the work, small enough to balance load and to lose little to a dead worker.
DEFAULT_PARTITION_SIZE = 512
#: Inputs per Dask task when the job runs on GPUs: a task decodes in DataLoader workers, which
#: start with the task and only all work once the partition holds several batches per
#: worker. One H200 worker (batch 256, 8 decode workers) ran partitions of 512 at 299
#: images/s and partitions of 4096 at 1,079 (0.75-0.79x a warm in-process job;
#: benchmarks/gpu_cluster.py, docs/cluster.md).
GPU_PARTITION_SIZE = 4096
#: Seconds to wait for a scheduler before giving up (exit 1 on the command line).
CONNECT_TIMEOUT = 10.0
#: Finished partitions whose annotations one task records (one annotations file each).
ANNOTATE_EVERY = 64


def _dask_missing(exc) -> FeatcacheError:
    return FeatcacheError("running on a Dask cluster needs dask.distributed: "
                          f"pip install 'featcache[dask]' ({exc})")


def connect(address, timeout: float | None = None):
    """A ``distributed.Client`` of the scheduler at ``address``.

    Parameters
    ----------
    address : str
        ``tcp://host:8786`` (any address ``dask scheduler`` prints), or the path of the JSON
        file that ``dask scheduler --scheduler-file FILE`` writes.
    timeout : float, optional
        Seconds to wait for the scheduler (default :data:`CONNECT_TIMEOUT`).

    Raises
    ------
    FeatcacheError
        One line naming the address when no scheduler answers there in time.
    """
    try:
        from distributed import Client
    except ImportError as exc:
        raise _dask_missing(exc) from exc
    timeout = CONNECT_TIMEOUT if timeout is None else timeout
    address = os.fspath(address)
    where = {"scheduler_file": address} if os.path.isfile(address) else {"address": address}
    try:
        return Client(**where, timeout=f"{timeout}s")
    except (OSError, ValueError, TypeError) as exc:  # TimeoutError is an OSError
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise FeatcacheError(
            f"cannot reach a Dask scheduler at {address} within {timeout:g} s ({reason}); "
            "start one with `dask scheduler` or check the address") from None


class _ConnectionNoise(logging.Filter):
    """Drops ``distributed.client``'s records of a lost scheduler connection (its reconnect
    attempts and their tracebacks): :class:`SchedulerLostError` says it in one message."""

    def filter(self, record) -> bool:
        import asyncio

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (asyncio.CancelledError, OSError)):
            return False
        return "reconnect" not in record.getMessage().lower()


@contextlib.contextmanager
def quiet_connection_errors():
    """While inside, the Dask client logs nothing about losing its scheduler (the command
    line's stderr holds one message, no traceback); other records pass."""
    logger = logging.getLogger("distributed.client")
    noise = _ConnectionNoise()
    logger.addFilter(noise)
    try:
        yield
    finally:
        logger.removeFilter(noise)


def partitions(sources, size: int) -> list:
    """Positions of each partition: contiguous chunks of ``size`` of the inputs sorted by source.

    The same inputs always give the same partitions, whatever order they were listed in.
    """
    order = np.asarray(sorted(range(len(sources)), key=lambda i: sources[i]), dtype=np.int64)
    return [order[i:i + size] for i in range(0, len(order), size)]


def task_resources(client, device: str):
    """``{"GPU": 1}`` when the job may run on a GPU and the workers declare GPU resources.

    ``dask worker --resources GPU=1`` (or ``LocalCUDACluster(resources={"GPU": 1})``) then
    runs one task per GPU. Without declared resources no constraint is set (it could never
    be met); dask-cuda's default of one single-threaded worker per GPU gives the same.
    """
    if not (device == "auto" or device.startswith("cuda")):
        return None
    try:
        info = client.scheduler_info(n_workers=-1)  # every worker (newer distributed)
    except TypeError:
        info = client.scheduler_info()
    workers = info.get("workers", {}).values()
    return {"GPU": 1} if any(w.get("resources", {}).get("GPU") for w in workers) else None


def default_partition_size(resources, device: str) -> int:
    """:data:`GPU_PARTITION_SIZE` for a job on GPUs (``device="cuda..."``, or ``"auto"`` on
    workers that declare GPU ``resources``), else :data:`DEFAULT_PARTITION_SIZE`."""
    on_gpu = device.startswith("cuda") or (device == "auto" and bool(resources))
    return GPU_PARTITION_SIZE if on_gpu else DEFAULT_PARTITION_SIZE


def _cache_dir(cache) -> str:
    """The cache directory as an absolute path (the workers' working directories differ)."""
    if isinstance(cache, FeatureCache):
        return str(cache.path)
    if cache is True or (isinstance(cache, str) and cache == "auto"):
        return str(default_cache_dir())
    if isinstance(cache, (str, os.PathLike)):
        return os.path.abspath(os.path.expanduser(os.fspath(cache)))
    raise CacheValueError(f"cache={cache!r}: a Dask job writes into a cache directory that every "
                          "worker can reach; pass its path (on a shared filesystem)")


def _portable(item):
    """A path made absolute (the workers' working directories differ); arrays as they are."""
    if isinstance(item, (str, os.PathLike)):
        return Path(os.path.abspath(os.path.expanduser(os.fspath(item))))
    return item


def _job(cache, model, weights, layers, pooling, image_size, run, on_batch) -> Job:
    validate_run_options(dict(model=model, weights=weights, layers=layers, pooling=pooling,
                              image_size=image_size, **run), caller="extract")
    if is_weights_path(weights):
        weights = os.path.abspath(os.path.expanduser(os.fspath(weights)))
    return Job(_cache_dir(cache), str(model), weights, tuple(layers), pooling, image_size,
               {**run, "progress": False}, on_batch)


def extract_on_cluster(client, inputs, cache, *, model="efficientnet_lite0", weights="DEFAULT",
                       layers=(None,), pooling="avg", image_size=None, shard=(0, 1),
                       progress=None, on_batch=None, partition_size=None, **run):
    """Embed every input into a shared cache with one Dask task per partition.

    What :func:`featcache.extract` runs when given ``client``; the parameters are
    its own, plus:

    Parameters
    ----------
    client : distributed.Client
    inputs : featcache.inputs.sources.InputSet
    cache : str or PathLike
        A directory every worker can reach (a shared filesystem).
    partition_size : int, optional
        Inputs per task (default :func:`default_partition_size`: 512, or 4096 on GPUs).
    on_batch : callable, optional
        Runs on the workers (so it must be picklable), after each computed batch.
    **run
        The run options (:data:`featcache.options.RUN_OPTIONS`: ``batch_size``, ``device``,
        ``precision``, ``window``...), passed to every task as given; each worker resolves
        them (:func:`featcache.engine.run_options.resolve_run_options`) for its own hardware.

    Returns
    -------
    featcache.jobs.summary.ExtractSummary

    Raises
    ------
    FeatcacheError
        A partition's error (an input with ``on_error="raise"``, a partition whose workers
        died more often than Dask allows), or workers whose environments resolved
        different configurations. Rows already committed stay in the cache.
    SchedulerLostError
        The scheduler went away mid-job (killed, restarted, unreachable): names it and the
        rows the job had committed, which stay.
    KeyboardInterrupt
        Ctrl-C: pending tasks are cancelled; committed rows stay.
    """
    start = time.perf_counter()
    size = partition_size
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise InvalidOptionError("The 'partition_size' parameter of extract must be an int in "
                                 f"the range [1, inf). Got {partition_size!r} instead.")
    job = _job(cache, model, weights, layers, pooling, image_size, run, on_batch)
    device = str(job.run.get("device", "auto"))
    resources = task_resources(client, device)
    if size is None:
        size = default_partition_size(resources, device)
    inputs = inputs.subset(shard_positions(inputs.sources, *shard))
    inputs.items = [_portable(item) for item in inputs.items]
    summary = ExtractSummary(inputs=len(inputs))
    work = _Run(client, job, inputs, partitions(inputs.sources, size), summary, resources)
    try:
        work.run(progress)
    except SchedulerLostError:
        raise  # nothing left to cancel: the scheduler is gone
    except BaseException:
        client.cancel(work.futures())  # running tasks finish their partition and commit it
        raise
    finally:
        summary.seconds = time.perf_counter() - start
    return summary


class _Run:
    """One job on the cluster: submits the partitions, folds their results into the summary.

    Finished partitions' annotations are recorded by one task per :data:`ANNOTATE_EVERY` of
    them (a job stopped early records the rest on its rerun, which computes nothing again).
    """

    def __init__(self, client, job, inputs, parts, summary, resources):
        self.client, self.job, self.inputs, self.parts, self.summary = \
            client, job, inputs, parts, summary
        self.run_id = uuid.uuid4().hex[:12]
        self.resources = resources
        self.submitted: dict = {}  # future -> partition index (None: an annotations task)
        self.keys: list = [None] * len(inputs)
        self.unannotated: list = []  # finished partitions not annotated yet
        self.remaining = len(parts)
        self.seen: dict = {}  # fingerprints -> the worker that resolved them first
        self.shards_before = set(_shards(job.cache) or ())  # to tell what this job committed

    def futures(self) -> list:
        return list(self.submitted)

    def run(self, progress) -> None:
        from distributed import as_completed

        for i, positions in enumerate(self.parts):
            future = self.client.submit(run_partition, self.job, self.inputs.subset(positions),
                                        positions, resources=self.resources,
                                        key=f"featcache-extract-{self.run_id}-{i:06d}")
            self.submitted[future] = i
        pending = as_completed(self.futures(), loop=self.client.loop)  # this client's
        bar = progress_bar(self.summary.inputs, "featcache (dask)", progress)
        wake = threading.Event()
        try:
            while not pending.is_empty():
                raise_if_interrupted()  # Ctrl-C under the command line's deferred signals
                ready = pending.next_batch(block=False)
                if not ready:
                    wake.wait(0.05)
                for future in ready:
                    self._fold(future, bar, pending)
        finally:
            bar.close()
        self._finish()

    def _fold(self, future, bar, pending) -> None:
        from concurrent.futures import CancelledError

        index = self.submitted[future]
        try:
            if index is None:  # an annotations task: its errors are the job's errors
                future.result()
                return
            result = _result(future, self.parts[index], self.inputs.sources)
        except CancelledError as exc:  # this job's futures are cancelled only when...
            raise self._lost(exc) from None  # ...the client lost its scheduler
        summary = self.summary
        self.seen.setdefault(json.dumps(result.fingerprints, sort_keys=True), result.worker)
        summary.computed += result.computed
        summary.cached += result.cached
        summary.failures.update(result.failures)
        summary.failed = len(summary.failures)
        summary.fingerprints = result.fingerprints
        for pos, key in zip(self.parts[index], result.keys):
            self.keys[int(pos)] = key
        self.unannotated.append(index)
        self.remaining -= 1
        if len(self.unannotated) >= ANNOTATE_EVERY or not self.remaining:
            pending.add(self._annotate())
        bar.update(result.done)
        bar.set_postfix(cached=summary.cached, failed=summary.failed, refresh=False)

    def _lost(self, exc) -> SchedulerLostError:
        """The error of a job whose scheduler went away: what it had committed stays."""
        reason = getattr(exc, "reason", None) or "its tasks were cancelled"
        address = getattr(self.client.scheduler, "address", None) or "(unknown address)"
        finished = len(self.parts) - self.remaining
        now = _shards(self.job.cache)
        if now is None:
            committed = f"the cache directory {self.job.cache} is not visible from here"
        else:
            new = set(now) - self.shards_before
            rows = sum(_shard_rows(path) for path in new)
            committed = f"{rows} rows committed in {len(new)} new shards in {self.job.cache}"
        return SchedulerLostError(
            f"lost the Dask scheduler at {address} mid-job ({reason}): {finished} of "
            f"{len(self.parts)} partitions had finished ({self.summary.computed} rows computed, "
            f"{self.summary.cached} cached); {committed}. Committed rows stay: restart the "
            "scheduler (and workers) and run the same command again, only what is missing is "
            "computed")

    def _annotate(self):
        positions = np.concatenate([self.parts[i] for i in self.unannotated])
        self.unannotated = []
        future = self.client.submit(record_annotations, self.job, self.inputs.subset(positions),
                                    [self.keys[int(p)] for p in positions], priority=1,
                                    key=f"featcache-annotate-{self.run_id}-{len(self.submitted)}")
        self.submitted[future] = None
        return future

    def _finish(self) -> None:
        summary = self.summary
        summary.failures = dict(sorted(summary.failures.items()))
        if len(self.seen) > 1:
            raise FeatcacheError(
                f"the workers resolved {len(self.seen)} different configurations ("
                + "; ".join(f"{fps} on {worker}" for fps, worker in self.seen.items())
                + "), so their rows went to different namespaces: give every worker the same "
                "library versions and hardware kind, or pass device and precision explicitly")


def _shards(cache: str):
    """Paths of the committed shards under ``cache`` (None: the directory is not visible)."""
    root = Path(cache)
    if not root.is_dir():
        return None
    return [str(ns / "shards" / name) for ns in root.iterdir() if (ns / "shards").is_dir()
            for name in list_shards(ns / "shards")]


def _shard_rows(path: str) -> int:
    """Rows of one committed shard (0 when it cannot be read)."""
    try:
        with open_read(path) as f:
            return int(f.attrs["rows"])
    except (OSError, KeyError, ValueError):
        return 0


def _result(future, positions, sources) -> PartitionResult:
    """The task's result; a worker that kept dying becomes a FeatcacheError naming its inputs."""
    from distributed import KilledWorker

    try:
        return future.result()
    except KilledWorker as exc:
        first, last = sources[positions[0]], sources[positions[-1]]
        raise FeatcacheError(
            f"the partition of {len(positions)} inputs from {first} to {last} killed every "
            f"worker that ran it ({exc}); rows committed before stay. Check the workers' "
            "memory and logs, then run again: only what is missing is computed") from exc
