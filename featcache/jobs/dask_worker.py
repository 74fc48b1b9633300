"""What runs on a Dask worker: one partition through the one unit of work.

:func:`run_partition` is the Dask task of :func:`featcache.jobs.dask_client.extract_on_cluster`:
it resolves the job's configurations, and loads the network, once per worker process
(:func:`_worker_state`), runs :func:`featcache.engine.unit_of_work.embed` over its partition
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

from ..exceptions import FeatcacheError

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
        from ..backbones.weights import file_identity, is_weights_path, may_remember

        weights = file_identity(self.weights) if is_weights_path(self.weights) else self.weights
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


@dataclasses.dataclass
class _State:
    store: object
    configs: dict  # layer -> (config, fingerprint)
    load: object
    options: object

    @property
    def fingerprints(self) -> dict:
        return {layer: fp for layer, (_, fp) in self.configs.items()}

    def namespaces(self) -> dict:
        """Layer -> namespace (its config.json written again if someone removed it)."""
        return {layer: self.store.namespace(fp, config)
                for layer, (config, fp) in self.configs.items()}


_STATES: "OrderedDict[str, _State]" = OrderedDict()
_STATES_SIZE = 4
_STATES_LOCK = threading.Lock()


def _worker_state(job: Job) -> _State:
    """The store, namespaces, options and network loader of ``job``, once per process.

    Held under a lock, so the tasks of a multi-threaded worker wait for one resolution; the
    network itself is loaded at the first miss, once (and featcache.backbones.loading keeps it).
    A cache directory removed since (its marker gone) is resolved, and so created, again.
    """
    from ..cache.files import MARKER

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


def _resolve(job: Job) -> _State:
    from ..cache import resolve_cache
    from ..engine.unit_of_work import resolve_configs
    from ..options import resolve_run_options

    _drop_dask_malloc_setting()
    options = _fit_to_process(resolve_run_options(  # device and precision of this worker
        "extract", model=job.model, weights=job.weights, pooling=job.pooling,
        image_size=job.image_size, **job.run))
    store = resolve_cache(job.cache)
    configs, load = resolve_configs(store, model=job.model, weights=job.weights,
                                    layers=job.layers, pooling=job.pooling,
                                    image_size=job.image_size, options=options)
    return _State(store, configs, _once(load), options)


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
    from ..engine.allocator import reuse_freed_memory
    from ..engine.unit_of_work import embed

    start = time.perf_counter()
    state = _worker_state(job)
    # The worker's next partition follows within milliseconds: its activation buffers are
    # kept for it instead of being returned to the system and page-faulted back in.
    held = reuse_freed_memory(linger=PARTITION_LINGER) if state.options.device == "cpu" \
        else contextlib.nullcontext()
    try:
        with held:
            done = embed(part.items, part.sources, state.namespaces(), load=state.load,
                         options=state.options, key_memo=state.store.key_memo(),
                         on_batch=job.on_batch, start=start)
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
    from ..cache import resolve_cache
    from .summary import annotate_inputs

    annotate_inputs(resolve_cache(job.cache), inputs, keys)
    return len(inputs)
