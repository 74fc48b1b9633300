"""Batch extraction: :func:`extract` runs inputs through the one unit of work.

The unit itself (keys -> plan -> compute the misses -> commit -> read) is
:func:`featcache.engine.unit_of_work.embed`; :func:`extract` adds input sources, several layers per
forward pass, ``--shard i/N``, annotations (labels, groups, splits, dataset tags), a summary,
and, given a Dask ``client``, a cluster (:mod:`featcache.jobs.dask_client`). The public face is
``featcache.extract`` (this module is named ``extraction`` so that the module and the function
never shadow each other).
"""

from __future__ import annotations

import time
from dataclasses import replace

from ..cache.annotations import check_dataset
from ..engine.run import resolve_run
from ..engine.unit_of_work import source_of
from ..exceptions import InvalidOptionError
from ..inputs import as_items
from ..inputs.sources import InputSet, shard_positions
from ..engine.run_options import resolve_run_options
from ..options import BACKBONE_OPTIONS, RUN_OPTIONS, validate_run_options
from .dask_client import extract_on_cluster
from .summary import ExtractSummary, annotate_inputs

__all__ = ["extract"]


def extract(inputs, cache, *, model="efficientnet_lite0", weights="DEFAULT", layers=(None,),
            pooling="avg", image_size=None, batch_size=64, device="auto", precision="auto",
            num_workers=None, shard=(0, 1), on_error="raise", retry_failed=False, progress=None,
            commit_rows=4096, commit_seconds=30.0, on_batch=None, window=None,
            decode_scale="reduced", decoder="pillow",
            client=None, dataset=None, partition_size=None,
            verify_inputs="stat") -> ExtractSummary:
    """Embed every input into the cache (the library behind ``featcache extract``).

    Parameters
    ----------
    inputs : featcache.inputs.sources.InputSet or sequence
        An :class:`~featcache.inputs.sources.InputSet` (from
        :func:`featcache.inputs.sources.collect_inputs`)
        or anything :func:`featcache.inputs.as_items` accepts.
    cache : str, PathLike, "auto" or FeatureCache
        Where the rows go. ``False``/``None`` raise ``InvalidOptionError`` before any work (a
        batch job needs a cache; ``FrozenBackbone(cache=False)`` keeps rows in memory).
    layers : sequence of (str or None)
        Several layers come from one forward pass; each gets its own namespace, the same one
        ``FrozenBackbone(layer=...)`` reads.
    shard : (int, int)
        ``(i, N)``: embed only this job's deterministic share of the inputs.
    client : distributed.Client, optional
        Run on this Dask cluster instead, one task per partition of the inputs, into a
        cache directory every worker reaches (:mod:`featcache.jobs.dask_client`).
    partition_size : int, optional
        Inputs per Dask task (with ``client``; default
        :data:`featcache.jobs.dask_client.DEFAULT_PARTITION_SIZE`).
    dataset : str, optional
        A dataset tag recorded with the annotations of every input (``--dataset``), so that
        ``featcache probe/export --dataset NAME`` use exactly these rows when the cache holds
        several studies.
    verify_inputs : {"stat", "hash"}, default="stat"
        ``"hash"`` reads and hashes every input file whatever the key memo remembers
        (``--rehash``; for files rewritten through a memory map, see
        :class:`featcache.FrozenBackbone`).
    Other parameters are those of :class:`featcache.FrozenBackbone`.
    """
    given = dict(locals())  # the options, by their names in featcache.options.OPTIONS
    run = {name: given[name] for name in RUN_OPTIONS}
    if dataset is not None:  # the tag travels with the inputs, to every annotate_inputs call
        inputs = replace(_input_set(inputs), dataset=check_dataset(dataset))

    if client is not None:  # the same unit of work (embed), one Dask task per partition
        return extract_on_cluster(
            client, _input_set(inputs), cache, model=model, weights=weights, layers=layers,
            pooling=pooling, image_size=image_size, shard=shard, on_batch=on_batch,
            partition_size=partition_size, **run)

    if cache is None or cache is False:
        raise InvalidOptionError(
            f"extract(cache={cache!r}): a batch job writes its rows into a cache directory, "
            "so it needs one; pass a directory, a FeatureCache or 'auto' ($FEATCACHE_HOME), or "
            "use FrozenBackbone(cache=False).fit_transform(X) to get rows in memory only")
    start = time.perf_counter()
    backbone = {name: given[name] for name in BACKBONE_OPTIONS if name != "layer"}
    options = resolve_run_options("extract", **backbone, **run)
    validate_run_options({"layers": layers}, caller="extract")
    inputs = _input_set(inputs)
    inputs = inputs.subset(shard_positions(inputs.sources, *shard))
    resolved = resolve_run(**backbone, layers=layers, cache=cache, options=options)
    summary = ExtractSummary(inputs=len(inputs), fingerprints=resolved.fingerprints)
    try:
        done = resolved.embed(inputs.items, inputs.sources,
                              on_keys=lambda keys: annotate_inputs(resolved.store, inputs, keys),
                              on_batch=on_batch, start=start)
    finally:
        summary.seconds = time.perf_counter() - start
    summary.failures, summary.failed = done.failures, done.failed
    summary.computed, summary.cached = done.computed, done.cached
    return summary


def _input_set(inputs):
    """An InputSet as is; anything else through as_items, sources described."""
    if isinstance(inputs, InputSet):
        return inputs
    items = as_items(inputs)
    out = InputSet()
    out.extend(items, [source_of(item, i) for i, item in enumerate(items)])
    return out
