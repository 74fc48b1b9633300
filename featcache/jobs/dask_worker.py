"""What runs on a Dask worker: one partition through the one unit of work.

:func:`run_partition` is the Dask task of :func:`featcache.jobs.dask_client.extract_on_cluster`:
it resolves the job's run (:func:`featcache.engine.run.resolve_run`), and loads the network,
once per worker process (:func:`_worker_state`), runs the one unit of work over its partition
(committing shards straight into the shared cache) and returns its counts and failures
(:class:`PartitionResult`). :func:`record_annotations` records the labels, groups, splits and
sources of finished partitions. :class:`Job` is what every task needs besides its inputs.

May import: :mod:`featcache.engine`, :mod:`featcache.cache`, :mod:`featcache.backbones`,
:mod:`featcache.options`, :mod:`featcache.jobs.summary`; dask only inside functions. Importing
it imports neither dask nor torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import socket
import threading
import time
import warnings
from collections import OrderedDict

from ..backbones.weights import may_remember, weights_key
from ..cache import resolve_cache
from ..cache.files import MARKER
from ..engine.allocator import reuse_freed_memory
from ..engine.run import ResolvedRun, resolve_run
from ..exceptions import FeatcacheError
from ..engine.run_options import resolve_run_options
from .summary import annotate_inputs

__all__ = ["PARTITION_LINGER", "Job", "PartitionResult", "run_partition", "record_annotations"]

#: Seconds a CPU worker keeps its freed activation buffers after a partition, for the next
#: one (returned to the system when no partition starts in that time): trimming them between
#: partitions cost 0.3-0.6 s of page faults per partition at 224 px (benchmarks/README.md).
PARTITION_LINGER = 2.0


@dataclasses.dataclass(frozen=True)
class Job:
    """What every task of one extraction needs besides its inputs (picklable, torch-free).

    ``run`` holds the validated run options as given (``device="auto"``, ``precision="auto"``):
    each worker resolves them for its own hardware, once per process.
    """

    cache: str
    model: str
    weights: object
    layers: tuple
    pooling: str
    image_size: int | None
    run: dict
    on_batch: object = None

    def memo_key(self) -> str | None:
        """Everything a worker's resolved state depends on (a weights file by its identity).

        None when a weights file's identity is not yet settled
        (:func:`~featcache.backbones.weights.may_remember`): the state is not remembered.
        """
        weights = weights_key(self.weights)
        if not may_remember(weights):
            return None
        weights = list(weights) if isinstance(weights, tuple) else weights
        return json.dumps([self.cache, self.model, weights, list(self.layers), self.pooling,
                           self.image_size, sorted(self.run.items())], default=str)


@dataclasses.dataclass
class PartitionResult:
    """What one task did: counts, failures (by position in the job) and where it ran."""

    computed: int
    cached: int
    failures: dict
    seconds: float
    fingerprints: dict
    worker: str
    keys: list = dataclasses.field(default_factory=list)  # content key per input (None: unread)

    @property
    def done(self) -> int:
        return self.computed + self.cached + len(self.failures)


_STATES: "OrderedDict[str, ResolvedRun]" = OrderedDict()
_STATES_SIZE = 4
_STATES_LOCK = threading.Lock()


def _worker_state(job: Job) -> ResolvedRun:
    """The resolved run of ``job`` (store, options, configurations, network loader), once
    per process.

    Held under a lock, so the tasks of a multi-threaded worker wait for one resolution; the
    network itself is loaded at the first miss, once (and featcache.backbones.loading keeps it).
    A cache directory removed since (its marker gone) is resolved, and so created, again.
    """
    key = job.memo_key()
    if key is None:  # a weights file too young to be remembered: resolved for this task only
        return _resolve(job)
    with _STATES_LOCK:
        state = _STATES.get(key)
        if state is None or not os.path.exists(os.path.join(job.cache, MARKER)):
            state = _STATES[key] = _resolve(job)
            while len(_STATES) > _STATES_SIZE:
                _STATES.popitem(last=False)
        _STATES.move_to_end(key)
        return state


def _resolve(job: Job) -> ResolvedRun:
    _drop_dask_malloc_setting()
    options = _fit_to_process(resolve_run_options(  # device and precision of this worker
        "extract", model=job.model, weights=job.weights, pooling=job.pooling,
        image_size=job.image_size, **job.run))
    run = resolve_run(model=job.model, weights=job.weights, layers=job.layers,
                      pooling=job.pooling, image_size=job.image_size, cache=job.cache,
                      options=options)
    return dataclasses.replace(run, load=_once(run.load))


def _forget(job: Job) -> None:
    """Drop ``job``'s resolved state (after an error: the next task resolves afresh)."""
    with _STATES_LOCK:
        _STATES.pop(job.memo_key(), None)


def _drop_dask_malloc_setting() -> None:
    """Let the engine tune glibc's malloc in a Dask worker, as it does in any other process.

    Dask's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536`` (its
    ``distributed.nanny.pre-spawn-environ``). featcache leaves malloc alone where a
    ``MALLOC_*`` variable is set (the user's tuning, see :mod:`featcache.engine.allocator`), so in a
    worker every chunk page-faulted its activations back in: 2.8x slower on a CPU here. A
    value equal to Dask's own setting is Dask's, not the user's: it is dropped from this
    worker's environment (glibc read it at start; the engine's ``mallopt`` calls override it
    while it extracts, and return freed memory to the system after).
    """
    try:
        import dask
        from distributed import get_worker

        get_worker()  # ValueError outside a Dask worker
    except (ImportError, ValueError):
        return
    environ = dask.config.get("distributed.nanny.pre-spawn-environ", None) or {}
    dask_value = environ.get("MALLOC_TRIM_THRESHOLD_")
    if dask_value is not None and os.environ.get("MALLOC_TRIM_THRESHOLD_") == str(dask_value):
        del os.environ["MALLOC_TRIM_THRESHOLD_"]


def _fit_to_process(options):
    """No decode subprocesses in a daemonic worker process (Dask's default), which cannot fork."""
    if not multiprocessing.current_process().daemon or options.num_workers == 0:
        return options
    if options.num_workers is not None or options.device.startswith("cuda"):
        warnings.warn("this Dask worker is a daemonic process, so images are decoded in the "
                      "task's thread; start workers with DASK_DISTRIBUTED__WORKER__DAEMON=False "
                      "to decode in DataLoader workers", RuntimeWarning, stacklevel=2)
    return dataclasses.replace(options, num_workers=0)


def _once(load):
    """``load`` called at most once (thread-safe); later calls return its network."""
    lock, box = threading.Lock(), []

    def loaded():
        with lock:
            if not box:
                box.append(load())
            return box[0]

    return loaded


def run_partition(job: Job, part, positions) -> PartitionResult:
    """The Dask task: :func:`featcache.engine.unit_of_work.embed` over one partition, on a worker.

    Parameters
    ----------
    job : Job
    part : featcache.inputs.sources.InputSet
        The partition's inputs (absolute paths, or arrays), with sources and annotations.
    positions : sequence of int
        Each input's position in the whole job (failures are reported by it).
    """
    start = time.perf_counter()
    state = _worker_state(job)
    # The worker's next partition follows within milliseconds: its activation buffers are
    # kept for it instead of being returned to the system and page-faulted back in.
    held = reuse_freed_memory(linger=PARTITION_LINGER) if state.options.device == "cpu" \
        else contextlib.nullcontext()
    try:
        with held:
            done = state.embed(part.items, part.sources, on_batch=job.on_batch, start=start)
    except FeatcacheError:  # e.g. a remembered configuration found stale and forgotten
        _forget(job)
        raise
    failures = {int(positions[p]): reason for p, reason in done.failures.items()}
    return PartitionResult(done.computed, done.cached, failures, done.seconds,
                           state.fingerprints, f"{socket.gethostname()}:{os.getpid()}",
                           done.keys)


def record_annotations(job: Job, inputs, keys) -> int:
    """The Dask task that records labels, groups, splits and sources of finished partitions.

    One task per group of partitions (:data:`ANNOTATE_EVERY`) instead of one file per
    partition: every annotation call reads the files already there, so a file per partition
    would cost each task more than the one before it.
    """
    annotate_inputs(resolve_cache(job.cache), inputs, keys)
    return len(inputs)
