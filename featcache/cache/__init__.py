"""The feature cache: HDF5 shards of embeddings, h5py + numpy only (never imports torch).

Layout of a cache directory::

    CACHE_DIR/featcache.json                         {"format_version": 1, "created": ...}
    CACHE_DIR/annotations/<seq>-<uuid>.h5            labels, groups, splits, sources by key
    CACHE_DIR/<fingerprint>/config.json              the backbone configuration
    CACHE_DIR/<fingerprint>/shards/<seq>-<uuid>.h5   immutable shards (featcache.cache.shards)
    CACHE_DIR/<fingerprint>/index.h5                 virtual datasets over the shards

Nothing is modified in place: each file is written to a temporary name, fsync'ed and renamed
into place, so a shard exists completely or not at all, readers never block and any number of
writer processes can add shards at once. A killed writer loses at most its uncommitted rows.

A shard's checksum is checked once per process, when the shard first enters a key index; a
shard that cannot be opened, lies about its size, or has wrong shapes or a wrong checksum is
**never served**: it is skipped with a :class:`~featcache.exceptions.CorruptShardWarning`
(its rows count as missing and are recomputed), and ``featcache verify DIR`` names it.

Every namespace backend implements one written contract,
:class:`~featcache.cache.contract.NamespaceContract` (with its
:class:`~featcache.cache.contract.NamespaceWriter`): rows in the order of the keys asked for,
the first row of a key wins, failures read as NaN and count as known, ``missing="raise"``
raises :class:`CacheMissError` only for keys never seen, each commit is atomic. The disk
backend (:class:`Namespace`) and the memory backend (:class:`MemoryNamespace`, ``cache=False``)
both run one conformance suite (``tests/namespace_conformance.py``); a new backend subclasses
it too.

Modules: :mod:`~featcache.cache.contract`, :mod:`~featcache.cache.store` (:class:`FeatureCache`),
:mod:`~featcache.cache.namespace`, :mod:`~featcache.cache.writer`, :mod:`~featcache.cache.memory`
(the ``cache=False`` backend), :mod:`~featcache.cache.shards` (the file format),
:mod:`~featcache.cache.checks`, :mod:`~featcache.cache.keyindex`, :mod:`~featcache.cache.memo`,
:mod:`~featcache.cache.files`, :mod:`~featcache.cache.maintenance` (verify, compact, index),
:mod:`~featcache.cache.export` (one namespace, or one dataset of it, to a plain file),
:mod:`~featcache.cache.selection` (a namespace chosen by model, layer and image size) and
:mod:`~featcache.cache.annotations` (labels, groups, splits, sources and dataset tags).
"""

from ..exceptions import (CacheCorruptError, CacheError, CacheMissError, CacheValueError,
                          CorruptShardWarning)
from .contract import NamespaceContract, NamespaceWriter
from .maintenance import VerifyReport
from .memo import clear_memo
from .memory import MemoryNamespace
from .namespace import Namespace
from .shards import FORMAT_VERSION
from .store import FeatureCache, default_cache_dir, resolve_cache
from .writer import ShardWriter

__all__ = ["FeatureCache", "Namespace", "ShardWriter", "MemoryNamespace", "NamespaceContract",
           "NamespaceWriter", "VerifyReport",
           "default_cache_dir", "resolve_cache", "clear_memo", "CacheError", "CacheCorruptError",
           "CacheMissError", "CacheValueError", "CorruptShardWarning", "FORMAT_VERSION"]
