"""One run, resolved once from its parameters: the cache, the options, the configurations.

Every caller of the unit of work needs the same setup before :func:`embed` can run: resolve
the ``cache=`` parameter, take the weights' identity (before anything reads the file), resolve
the namespaces' configurations (:func:`resolve_configs`, without the network when the cache
remembers them), and open one namespace per layer (on disk, or in memory when caching is
off). :func:`resolve_run` does it once and returns a :class:`ResolvedRun`;
:class:`~featcache.FrozenBackbone`, :func:`featcache.extract`, the Dask task
(:mod:`featcache.jobs.dask_worker`) and the partial-freezing activations
(:mod:`featcache.partial.activations`) all build one and call :meth:`ResolvedRun.embed`.

May import: :mod:`featcache.cache`, :mod:`featcache.backbones.weights` (torch-free), the
unit of work, the leaf modules. Importing it imports no torch.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from ..backbones.weights import is_weights_path, may_remember, weights_key
from ..cache import MemoryNamespace, resolve_cache
from ..exceptions import FeatcacheError
from .run_options import RunOptions
from .unit_of_work import EmbedResult, SourcesOf, embed, resolve_configs

__all__ = ["ResolvedRun", "resolve_run", "changed_since_fit"]


@dataclasses.dataclass(frozen=True)
class ResolvedRun:
    """What one run of the unit of work needs, resolved once (see :func:`resolve_run`).

    Attributes
    ----------
    store : featcache.cache.FeatureCache or None
        The cache; None keeps rows in memory for this run (``cache=False``).
    options : featcache.engine.run_options.RunOptions
        Batch size, resolved device and precision, the decode policy, commits...
    configs : dict
        Layer name -> (configuration, fingerprint).
    load : callable
        ``load() -> LoadedBackbone``: the network, checked to give exactly these
        fingerprints; called only when something must be computed.
    weights_key : object
        How the weights enter memo keys (:func:`featcache.backbones.weights.weights_key`):
        a file's identity, taken before anything read the file, or the tag as given.
    storage : {"float32", "float16"}
        How rows are stored (in the configurations when float16).
    """

    store: object
    options: RunOptions
    configs: dict
    load: Callable
    weights_key: object = None
    weights_is_file: bool = False
    storage: str = "float32"

    @property
    def fingerprints(self) -> dict:
        """Layer name -> fingerprint."""
        return {layer: fp for layer, (_, fp) in self.configs.items()}

    @property
    def weights_identity(self) -> "tuple | None":
        """The weights file's identity (None for a weights tag or random weights)."""
        return self.weights_key if self.weights_is_file else None

    @property
    def remembered(self) -> bool:
        """Whether memos may keep what depends on the weights (a settled file, or a tag)."""
        return may_remember(self.weights_key)

    def namespaces(self) -> dict:
        """Layer name -> namespace: on disk (its config.json written again if someone removed
        it), or a fresh :class:`~featcache.cache.MemoryNamespace` when caching is off."""
        if self.store is None:
            return {layer: MemoryNamespace(fp, config["dim"], storage=self.storage,
                                           row_shape=config.get("row_shape"))
                    for layer, (config, fp) in self.configs.items()}
        return {layer: self.store.namespace(fp, config)
                for layer, (config, fp) in self.configs.items()}

    def key_memo(self):
        """The cache's persistent memo of file keys (None without a cache)."""
        return None if self.store is None else self.store.key_memo()

    def embed(self, items, sources=None, *, namespaces=None, **kwargs) -> EmbedResult:
        """:func:`featcache.engine.unit_of_work.embed` of ``items`` under this run.

        ``sources`` defaults to each item's description (computed only for the rows
        computed), ``namespaces`` to :meth:`namespaces`; the file-key memo is the cache's
        unless the caller passes the content ``keys``. Other keyword arguments (``read``,
        ``on_keys``, ``on_batch``, ``start``, ``augment``, ``keys``) are ``embed``'s.
        """
        if "key_memo" not in kwargs and kwargs.get("keys") is None:
            kwargs["key_memo"] = self.key_memo()
        return embed(items, SourcesOf(items) if sources is None else sources,
                     self.namespaces() if namespaces is None else namespaces,
                     load=self.load, options=self.options, **kwargs)


def changed_since_fit(expected: str, found: str, what: str = "backbone configuration"):
    """The error of a run whose fingerprint is no longer the one recorded at fit."""
    return FeatcacheError(
        f"the {what} changed since fit (fingerprint {expected} then, {found} now): "
        "parameters were set without refitting, or the weights file changed. Call fit again.")


def resolve_run(*, model, weights, layers, pooling, image_size, cache, options: RunOptions,
                storage="float32", augment=None, fitted=None) -> ResolvedRun:
    """Resolve one run of the unit of work from its parameters, once.

    Parameters
    ----------
    model, weights, layers, pooling, image_size
        The backbone and what is taken from it (validated by the caller,
        :func:`featcache.options.validate_run_options`).
    cache : "auto", path, FeatureCache, False or None
        The ``cache=`` parameter (:func:`featcache.cache.resolve_cache`).
    options : featcache.engine.run_options.RunOptions
        From :func:`featcache.engine.run_options.resolve_run_options`.
    storage, augment
        Row storage and an augmentation description, both in the configurations
        (:func:`featcache.engine.unit_of_work.namespace_configs`).
    fitted : dict, optional
        Layer name -> (configuration, fingerprint) recorded at fit. The run then uses them
        as they are (a warm transform resolves nothing), and ``load()`` resolves the
        configurations first and raises :func:`changed_since_fit` unless they still give
        these fingerprints.
    """
    key = weights_key(weights)  # before anything reads a weights file
    store = resolve_cache(cache)

    def resolve():
        return resolve_configs(store, model=model, weights=weights, layers=tuple(layers),
                               pooling=pooling, image_size=image_size, options=options,
                               storage=storage, augment=augment)

    if fitted is None:
        configs, load = resolve()
    else:
        configs = dict(fitted)

        def load():
            now, loader = resolve()
            expected = [fp for _, fp in configs.values()]
            found = [fp for _, fp in now.values()]
            if found != expected:
                raise changed_since_fit(", ".join(expected), ", ".join(found))
            return loader()

    return ResolvedRun(store, options, configs, load, key, is_weights_path(weights), storage)
