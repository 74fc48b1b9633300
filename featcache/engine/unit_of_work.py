"""The one unit of work: content keys -> plan -> compute the misses -> commit -> read.

This is the one place where the engine and the cache meet. :func:`embed` is the unit every
caller runs: :class:`~featcache.FrozenBackbone`, :func:`featcache.extract` and
``featcache extract``, the Dask task (:mod:`featcache.jobs.dask_worker`) and the partial-freezing
estimators (:mod:`featcache.partial`), each through the run it resolved once
(:func:`featcache.engine.run.resolve_run`). :func:`resolve_configs` gives the namespaces'
configurations, without loading the network when the cache remembers them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..backbones import fingerprint, load_backbone
from ..backbones.registry import declared_identity
from ..backbones.weights import is_weights_path, may_remember, weights_key
from ..cache import resolved
from ..exceptions import FeatcacheError, InputError
from ..formats import FORMAT_VERSION
from ..inputs import content_key, describe
from ..inputs.errors import as_input_error
from ..inputs.keys import memoised_key, probe_file, remember
from .key_processes import hashed_files
from ..log import get_logger
from .interrupts import deferred_signals, raise_if_interrupted

_log = get_logger(__name__)

__all__ = ["content_keys", "plan", "fill_cache", "embed", "EmbedResult", "namespace_configs",
           "resolve_configs", "resolution_key", "source_of", "SourcesOf", "NO_KEY"]


def content_keys(items, on_error="raise", memo=None, verify="stat"):
    """Content key of each item; with ``on_error="skip"`` an unreadable one gives None.

    ``memo`` is a persistent memo of file keys (:meth:`featcache.cache.FeatureCache.key_memo`):
    unchanged files are not read again, and new keys are saved to it at the end.
    ``verify="hash"`` (the ``verify_inputs`` run option) reads and hashes every file whatever
    the memos remember (see :func:`featcache.inputs.keys.content_key`).
    Returns ``(keys, failures)`` where failures maps position -> reason.
    """
    keys, failures = [None] * len(items), {}
    unknown = []  # (position, path, probe) of the files no memo knows: hashed below, maybe in
    # other processes (featcache.engine.key_processes)

    def failed(pos, exc):
        if on_error == "raise":
            raise exc
        failures[pos] = str(exc)

    first_error = None  # on_error="raise": the first input the probes refuse
    for pos, item in enumerate(items):
        raise_if_interrupted()  # Ctrl-C/SIGTERM while hashing a long input list
        try:
            if isinstance(item, (str, os.PathLike)):
                with as_input_error(item, pos, "cannot be read"):  # as content_key does
                    probe = probe_file(item, pos)
                    keys[pos] = None if verify == "hash" else memoised_key(probe, memo)
                if keys[pos] is None:
                    unknown.append((pos, item, probe))
            else:
                keys[pos] = content_key(item, pos, memo, verify)
        except InputError as exc:
            if on_error == "raise":  # raised once the files before it are hashed: an
                first_error = exc    # earlier unreadable one is the first bad input
                break
            failures[pos] = str(exc)
    for pos, hashed in hashed_files(unknown, check=raise_if_interrupted):
        if isinstance(hashed, InputError):
            failed(pos, hashed)
        else:
            remember(hashed, memo, rehash=verify == "hash")
            keys[pos] = hashed.key
    if first_error is not None:
        raise first_error
    if memo is not None:
        memo.save()
    return keys, dict(sorted(failures.items()))  # in input order, as the reports list them


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


def fill_cache(loaded, items, keys, sources, todo, namespaces, *, options, on_batch=None,
               progress_desc="featcache", augment=None):
    """Compute ``items[todo]`` and commit every layer's rows to its namespace.

    Parameters
    ----------
    loaded : featcache.backbones.LoadedBackbone
    items, keys, sources : lists aligned by position
    todo : array of positions to compute
    namespaces : dict
        Layer name -> :class:`featcache.cache.Namespace` (or ``MemoryNamespace``).
    options : featcache.engine.run_options.RunOptions
        Batch size, resolved device and precision, workers, on_error, progress, commits.
    on_batch : callable, optional
        Called with each :class:`featcache.engine.batches.Batch` after it is handed to the writers.
    augment : callable, optional
        An augmentation view (:class:`featcache.inputs.augment.AugmentView`) applied to every input;
        the namespaces' configurations must record it.

    Returns
    -------
    dict
        Position -> reason of the inputs that failed to decode (``on_error="skip"``).
    """
    failures = {}
    if not len(todo):  # everything cached: torch is never imported
        return failures
    from contextlib import ExitStack

    from .batches import run_batches  # imports torch: only when something is computed

    # Ctrl-C and SIGTERM are deferred to the end of a batch, so they never cut a commit short;
    # every writer then commits what it holds (also on errors) before the interrupt propagates.
    with deferred_signals():
        with ExitStack() as stack:
            writers = {layer: stack.enter_context(ns.writer(commit_rows=options.commit_rows,
                                                            commit_seconds=options.commit_seconds))
                       for layer, ns in namespaces.items()}
            background = stack.enter_context(_BackgroundWrites())
            for batch in run_batches(loaded.extractor, items, todo, keys=keys,
                                     image_size=loaded.preprocessing.image_size,
                                     progress_desc=progress_desc,
                                     policy=options.decode,
                                     augment=augment, **options.engine_kwargs()):
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


def namespace_configs(loaded, options, *, storage="float32", augment=None):
    """Layer name -> (configuration, fingerprint) of each extracted layer under ``options``.

    ``storage="float16"`` (rows stored as float16) and an ``augment`` description (the
    augmentation policy and view, :mod:`featcache.inputs.augment`) enter the configuration, and so
    the fingerprint, only when given: the configurations of plain float32 rows are unchanged.
    """
    decode = options.decode.to_dict()
    extra = {} if storage == "float32" else {"storage": storage}
    if augment is not None:
        extra["augment"] = augment
    out = {}
    for layer in loaded.dims:
        config = loaded.layer_config(layer, precision=options.precision, decode=decode, **extra)
        out[layer] = (config, fingerprint(config))
    return out


def resolution_key(*, model, weights, layers, pooling, image_size, options, storage="float32",
                   augment=None) -> dict | None:
    """Everything a configuration's fingerprint depends on, known without loading the network.

    A weights file enters as its identity (resolved path, size, mtime_ns, inode, device,
    ctime_ns), so an edited file is another key; what the backbone declares it loads enters
    (:func:`featcache.backbones.registry.declared_identity`), and so does what identifies the
    code of every package that shapes the network (see :mod:`featcache.cache.resolved`).

    Returns
    -------
    dict or None
        The key, or None when nothing may be remembered for this run: the backbone declares
        no identity, the weights file's identity is not yet settled (it changed within the
        racily-clean window, :mod:`featcache.cache.identity`), or a package's version does not
        identify its code (an editable or direct-URL install).
    """
    if is_weights_path(weights):  # its identity first: taken before anything reads the file
        identity = weights_key(weights)
        if not may_remember(identity):
            return None
        weights = list(identity)
        declared = declared_identity(str(model), None)  # the architecture it is loaded into
    else:
        declared = declared_identity(str(model), weights)
    versions = resolved.library_versions()
    if declared is None or resolved.unidentified_packages(versions):
        return None
    return {"model": str(model), "weights": weights, "identity": declared,
            "layers": [None if layer is None else str(layer) for layer in layers],
            "pooling": pooling, "image_size": image_size, "precision": options.precision,
            "decode": options.decode.to_dict(),
            "storage": storage, "augment": augment, "row_shapes": True,
            "format_version": FORMAT_VERSION, "versions": versions}


def resolve_configs(store, *, model, weights, layers, pooling, image_size, options,
                    storage="float32", augment=None):
    """Layer name -> (configuration, fingerprint), without loading the network when possible.

    The cache directory remembers resolved configurations (:mod:`featcache.cache.resolved`);
    on a hit nothing imports torch. On a miss (or with no cache) the network is loaded, and
    its configurations remembered, unless :func:`resolution_key` says nothing may be
    remembered for this run (then the network is loaded every time).

    Returns
    -------
    configs : dict
        Layer name -> (config, fingerprint).
    load : callable
        ``load() -> LoadedBackbone``: the network, checked to give exactly these fingerprints
        (a remembered entry that does not match is forgotten and raises FeatcacheError).
    """
    key = resolution_key(model=model, weights=weights, layers=layers, pooling=pooling,
                         image_size=image_size, options=options, storage=storage, augment=augment)

    def load_checked(expected=None):
        loaded = load_backbone(model, weights=weights, layers=tuple(layers), pooling=pooling,
                               image_size=image_size, progress=options.progress)
        found = namespace_configs(loaded, options, storage=storage, augment=augment)
        if expected is not None and {k: fp for k, (_, fp) in found.items()} != expected:
            if store is not None and key is not None:
                _log.info("forgot a stale remembered configuration in %s", store.path)
                resolved.forget(store.path, key)
            raise FeatcacheError(
                f"the configuration remembered in {store.path if store else 'the cache'} does "
                "not match the network loaded for it (a library or weights file changed in a "
                "way its key missed); it is forgotten now: run again")
        return loaded, found

    memo = store is not None and key is not None
    remembered = resolved.lookup(store.path, key) if memo else None
    if remembered is not None:
        configs = {layer: (c, fingerprint(c)) for layer, c in remembered.items()}
        expected = {k: fp for k, (_, fp) in configs.items()}
        return configs, lambda: load_checked(expected)[0]
    loaded, configs = load_checked()
    if memo:
        resolved.remember(store.path, key, {layer: c for layer, (c, _) in configs.items()})
    return configs, lambda: loaded


#: Stands for an input without a content key (unreadable) when rows are read: a NaN row.
NO_KEY = b"\xff" * 16


@dataclass
class EmbedResult:
    """What one unit of work did (see :func:`embed`).

    Attributes
    ----------
    keys : list
        Content key of each input (None where it could not be read).
    failures : dict
        Position -> reason of every input without a row: unreadable, recorded by an earlier
        run, failed now, or (when rows are read) recorded by another process.
    computed : int
        Rows the network computed and committed now (failures excluded).
    cached : int
        Inputs whose row was already in the cache.
    seconds : float
    features : ndarray or None
        The rows of the ``read`` layer in input order (NaN rows for failures), when asked.
    """

    keys: list
    failures: dict
    computed: int
    cached: int
    seconds: float
    features: "np.ndarray | None" = None

    @property
    def failed(self) -> int:
        return len(self.failures)


def embed(items, sources, namespaces, *, load, options, read=None, on_keys=None, on_batch=None,
          start=None, key_memo=None, augment=None, keys=None) -> EmbedResult:
    """The one unit of work: keys -> plan -> compute the misses -> commit -> read.

    Every caller (:class:`~featcache.FrozenBackbone`, :func:`extract` and ``featcache
    extract``) runs its inputs through this function.

    Parameters
    ----------
    items, sources : lists aligned by position
        Items from :func:`featcache.inputs.as_items` and what the cache records for each.
    namespaces : dict
        Layer name -> namespace (:class:`featcache.cache.Namespace` or ``MemoryNamespace``).
    load : callable
        ``load() -> LoadedBackbone``; called only when something must be computed, so a fully
        cached call never loads the network.
    options : featcache.engine.run_options.RunOptions
    read : str, optional
        A layer whose rows to return in input order (``EmbedResult.features``).
    on_keys : callable, optional
        ``on_keys(keys)`` once the content keys are known (e.g. to record annotations).
    on_batch : callable, optional
        Called with each computed batch.
    start : float, optional
        ``time.perf_counter()`` when the caller's work began (default: now).
    key_memo : featcache.cache.KeyMemo, optional
        The cache's persistent memo of file keys: a rerun over unchanged files reads none of
        their bytes.
    augment : featcache.inputs.augment.AugmentView, optional
        Computes an augmented view of each input (its namespaces' configurations record it).
    keys : tuple, optional
        ``(keys, failures)`` from :func:`content_keys` for these ``items`` (with the same
        ``on_error``), when the caller embeds them more than once (e.g. once per augmentation
        view): the inputs are then hashed once, not once per call.

    Raises
    ------
    InputError
        With ``on_error="raise"``: the first unreadable or undecodable input, or an input
        whose failure an earlier run recorded (unless ``retry_failed``).
    """
    start = time.perf_counter() if start is None else start
    keys, key_failures = content_keys(items, options.on_error, key_memo,
                                      options.verify_inputs) if keys is None \
        else keys
    if len(keys) != len(items):
        raise FeatcacheError(f"{len(keys)} content keys for {len(items)} inputs: pass the keys "
                             "content_keys() gave for these same inputs")
    if on_keys is not None:
        on_keys(keys)
    todo, known = plan(keys, namespaces, retry_failed=options.retry_failed)
    _log.info("%d inputs: %d to compute, %d unreadable, %d failed in an earlier run (%s)",
              len(items), len(todo), len(key_failures), len(known),
              ", ".join(getattr(ns, "fingerprint", "?") for ns in namespaces.values()))
    if known and options.on_error == "raise":
        raise InputError(f"{next(iter(known.values()))} (recorded in the cache by an earlier run; "
                         "fix the input, or pass retry_failed=True / --retry-failed to decode it "
                         "again)")
    failures = {}
    if len(todo):
        failures = fill_cache(load(), items, keys, sources, todo, namespaces, options=options,
                              on_batch=on_batch, augment=augment,
                              progress_desc=f"featcache ({len(items) - len(todo)} cached)")
    for pos, reason in {**key_failures, **failures}.items():
        _log.warning("skipped (on_error='skip'): %s", reason)
    computed = len(todo) - len(failures)
    # plan() computes (or finds recorded) one position per distinct key: its duplicates (the
    # same input twice, byte-identical copies) failed with it.
    every = {**key_failures, **_same_content(keys, {**known, **failures}, sources)}
    features = None
    if read is not None:
        ns = namespaces[read]
        features = ns.read([k if k is not None else NO_KEY for k in keys], missing="nan")
        every.update(_recorded_failures(ns, keys, features, every))
    return EmbedResult(keys, every, computed, len(items) - computed - len(every),
                       time.perf_counter() - start, features)


def _same_content(keys, failures, sources) -> dict:
    """``failures`` plus every other position holding the content of a failed one."""
    first = {}
    for pos in sorted(failures):
        if keys[pos] is not None:
            first.setdefault(keys[pos], pos)
    out = dict(failures)
    for pos, key in enumerate(keys):
        if pos not in out and key in first:
            was = first[key]
            out[pos] = (f"input {pos} ({sources[pos]!r}): the same content as input {was}, "
                        f"which failed: {failures[was]}")
    return out


def _recorded_failures(ns, keys, rows, known) -> dict:
    """Reasons for NaN rows not explained yet (failures recorded by other processes)."""
    nan_rows = [p for p in np.flatnonzero(np.isnan(rows).any(axis=1)) if p not in known]
    if not nan_rows:
        return {}
    recorded = ns.failures([keys[p] for p in nan_rows])
    return {int(p): recorded.get(keys[p], ("", "not computed"))[1] for p in nan_rows}


def source_of(item, index) -> str:
    """What the cache records as an input's source: its path, or a short description."""
    return str(item) if isinstance(item, os.PathLike) else describe(item, index)


class SourcesOf(Sequence):
    """``source_of(items[i], i)`` for each item, computed when asked for: only the rows a call
    computes need theirs (a warm transform of 3,752 arrays spent a third of its time on them).
    """

    def __init__(self, items):
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = range(len(self))[index]
        return source_of(self._items[index], index)
