"""Filling the cache: content keys -> cache misses -> the engine -> committed shards.

This is the one place where the engine and the cache meet. :class:`~featcache.FrozenBackbone`
uses :func:`fill_cache` for its misses; ``featcache extract`` uses :func:`extract`, which adds
input sources, several layers per forward pass, ``--shard i/N``, annotations (labels, groups,
splits) and a summary.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from .exceptions import InputError
from .interrupts import deferred_signals, raise_if_interrupted

__all__ = ["content_keys", "plan", "fill_cache", "extract", "ExtractSummary", "namespace_configs"]


def content_keys(items, on_error="raise"):
    """Content key of each item; with ``on_error="skip"`` an unreadable one gives None.

    Returns ``(keys, failures)`` where failures maps position -> reason.
    """
    from .inputs import content_key

    keys, failures = [], {}
    for pos, item in enumerate(items):
        raise_if_interrupted()  # Ctrl-C/SIGTERM while hashing a long input list
        try:
            keys.append(content_key(item, pos))
        except InputError as exc:
            if on_error == "raise":
                raise
            keys.append(None)
            failures[pos] = str(exc)
    return keys, failures


def plan(keys, namespaces, *, retry_failed=False):
    """Which positions to compute: keys missing from any namespace, once per distinct key.

    Returns ``(todo, known)``: positions to compute, and position -> reason of inputs whose
    failure an earlier run recorded (not retried unless ``retry_failed``).
    """
    present = [k for k in keys if k is not None]
    hit = np.ones(len(present), dtype=bool)
    recorded = {}
    for ns in namespaces.values():
        hit &= ns.lookup(present) if present else hit
        recorded.update(ns.failures(present) if present else {})
    hit_of = dict(zip(present, hit))
    todo, known, seen = [], {}, set()
    for pos, key in enumerate(keys):
        if key is None or hit_of[key] or key in seen:
            continue
        seen.add(key)
        if key in recorded and not retry_failed:
            known[pos] = recorded[key][1]
        else:
            todo.append(pos)
    return np.asarray(todo, dtype=np.int64), known


def fill_cache(loaded, items, keys, sources, todo, namespaces, *, run, commit_rows=4096,
               commit_seconds=30.0, on_batch=None):
    """Compute ``items[todo]`` and commit every layer's rows to its namespace.

    Parameters
    ----------
    loaded : featcache.backbones.LoadedBackbone
    items, keys, sources : lists aligned by position
    todo : array of positions to compute
    namespaces : dict
        Layer name -> :class:`featcache.cache.Namespace`.
    run : dict
        Keyword arguments of :func:`featcache.engine.run_batches` (batch_size, device,
        precision, num_workers, on_error, progress).
    on_batch : callable, optional
        Called with each :class:`featcache.engine.Batch` after it is handed to the writers.

    Returns
    -------
    dict
        Position -> reason of the inputs that failed to decode (``on_error="skip"``).
    """
    failures = {}
    if not len(todo):  # everything cached: torch is never imported
        return failures
    from contextlib import ExitStack

    from .engine import run_batches

    # Ctrl-C and SIGTERM are deferred to the end of a batch, so they never cut a commit short;
    # every writer then commits what it holds (also on errors) before the interrupt propagates.
    with deferred_signals():
        with ExitStack() as stack:
            writers = {layer: stack.enter_context(ns.writer(commit_rows=commit_rows,
                                                            commit_seconds=commit_seconds))
                       for layer, ns in namespaces.items()}
            background = stack.enter_context(_BackgroundWrites())
            for batch in run_batches(loaded.extractor, items, todo, keys=keys,
                                     image_size=loaded.preprocessing.image_size, **run):
                failures.update(batch.failures)
                background.submit(_write_batch, writers, batch, keys, sources)
                if on_batch is not None:
                    on_batch(batch)
                raise_if_interrupted()
    return failures


def _write_batch(writers, batch, keys, sources):
    if len(batch.positions):
        batch_keys = [keys[p] for p in batch.positions]
        batch_sources = [sources[p] for p in batch.positions]
        for layer, writer in writers.items():
            writer.add(batch_keys, batch.features[layer], batch_sources)
    for pos, reason in batch.failures:
        if pos in batch.transient:  # the input changed while read: not its failure to record
            continue
        for writer in writers.values():
            writer.add_failure(keys[pos], sources[pos], reason)


class _BackgroundWrites:
    """Runs cache writes on one thread, in order, while the network computes the next batch.

    At most ``depth`` batches wait (memory stays bounded by the batch size); an error in a
    write (disk full...) is raised in the caller at the next submit or at exit.
    """

    def __init__(self, depth=2):
        from concurrent.futures import ThreadPoolExecutor

        self.depth, self.pending = depth, []
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="featcache-writer")

    def submit(self, fn, *args):
        self.pending.append(self.pool.submit(fn, *args))
        while len(self.pending) > self.depth or (self.pending and self.pending[0].done()):
            self.pending.pop(0).result()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            for future in self.pending:  # finish queued writes: finished work is never lost
                future.result()
        finally:
            self.pool.shutdown(wait=True)
        return False


def namespace_configs(loaded, *, precision, policy):
    """Layer name -> (configuration, fingerprint) of each extracted layer."""
    from .backbones import fingerprint

    out = {}
    for layer in loaded.dims:
        config = loaded.layer_config(layer, precision=precision, decode=policy.to_dict())
        out[layer] = (config, fingerprint(config))
    return out


@dataclass
class ExtractSummary:
    """What an extraction did."""

    inputs: int = 0
    computed: int = 0
    cached: int = 0
    failed: int = 0
    seconds: float = 0.0
    fingerprints: dict = field(default_factory=dict)
    failures: dict = field(default_factory=dict)

    def line(self) -> str:
        rate = self.computed / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.inputs} inputs: {self.computed} computed, {self.cached} from cache, "
                f"{self.failed} failed in {self.seconds:.1f} s ({rate:.1f} images/s)")


def extract(inputs, cache, *, model="efficientnet_lite0", weights="DEFAULT", layers=(None,),
            pooling="avg", image_size=None, batch_size=64, device="auto", precision="auto",
            num_workers=None, shard=(0, 1), on_error="raise", retry_failed=False, progress=None,
            commit_rows=4096, commit_seconds=30.0, on_batch=None, window=None) -> ExtractSummary:
    """Embed every input into the cache (the library behind ``featcache extract``).

    Parameters
    ----------
    inputs : featcache.sources.InputSet or sequence
        An :class:`~featcache.sources.InputSet` (from :func:`featcache.sources.collect_inputs`)
        or anything :func:`featcache.inputs.as_items` accepts.
    cache : str, PathLike or FeatureCache
    layers : sequence of (str or None)
        Several layers come from one forward pass; each gets its own namespace, the same one
        ``FrozenBackbone(layer=...)`` reads.
    shard : (int, int)
        ``(i, N)``: embed only this job's deterministic share of the inputs.
    Other parameters are those of :class:`featcache.FrozenBackbone`.
    """
    from .options import validate_run_options

    validate_run_options(dict(model=model, weights=weights, pooling=pooling,
                              image_size=image_size, batch_size=batch_size, device=device,
                              precision=precision, num_workers=num_workers, on_error=on_error,
                              retry_failed=retry_failed, progress=progress,
                              commit_rows=commit_rows, commit_seconds=commit_seconds,
                              window=window), caller="extract")
    for layer in layers:
        validate_run_options({"layer": layer}, caller="extract")
    from .backbones import load_backbone
    from .cache import resolve_cache
    from .engine import resolve_device, resolve_precision
    from .inputs import DecodePolicy, as_items, describe
    from .sources import InputSet, shard_positions

    start = time.perf_counter()
    if not isinstance(inputs, InputSet):
        items = as_items(inputs)
        inputs = InputSet()
        inputs.extend(items, [str(item) if isinstance(item, os.PathLike) else describe(item, i)
                              for i, item in enumerate(items)])
    inputs = inputs.subset(shard_positions(inputs.sources, *shard))
    store = resolve_cache(cache)
    loaded = load_backbone(model, weights=weights, layers=tuple(layers), pooling=pooling,
                           image_size=image_size)
    device = resolve_device(device)
    policy = DecodePolicy(window=window)
    configs = namespace_configs(loaded, precision=resolve_precision(precision, device),
                                policy=policy)
    namespaces = {layer: store.namespace(fp, config) for layer, (config, fp) in configs.items()}
    keys, key_failures = content_keys(inputs.items, on_error)
    _annotate(store, inputs, keys)
    todo, known = plan(keys, namespaces, retry_failed=retry_failed)
    if known and on_error == "raise":
        pos, reason = next(iter(known.items()))
        raise InputError(f"{reason} (recorded by an earlier run; pass retry_failed / --retry-failed "
                         "to decode it again)")
    summary = ExtractSummary(inputs=len(inputs), fingerprints={k: fp for k, (_, fp) in configs.items()})
    run = dict(batch_size=batch_size, device=device, precision=precision,
               num_workers=num_workers, on_error=on_error, progress=progress, policy=policy,
               progress_desc=f"featcache ({len(inputs) - len(todo)} cached)")
    try:
        failures = fill_cache(loaded, inputs.items, keys, inputs.sources, todo, namespaces, run=run,
                              commit_rows=commit_rows, commit_seconds=commit_seconds,
                              on_batch=on_batch)
    finally:
        summary.seconds = time.perf_counter() - start
    summary.failures = {**key_failures, **known, **failures}
    summary.failed = len(summary.failures)
    summary.computed = len(todo) - len(failures)
    summary.cached = len(inputs) - summary.computed - summary.failed
    return summary


def _annotate(store, inputs, keys):
    """Record labels, groups, splits and sources of the inputs that have a key."""
    present = [i for i, k in enumerate(keys) if k is not None]
    if not present:
        return
    store.annotate([keys[i] for i in present],
                   label=[inputs.labels[i] for i in present],
                   group=[inputs.groups[i] for i in present],
                   split=[inputs.splits[i] for i in present],
                   source=[inputs.sources[i] for i in present])
