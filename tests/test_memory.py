"""Tests for featcache.cache.memory: the cache=False backend keeps the namespace contract.

The contract's conformance suite (namespace_conformance.py) runs here against
MemoryNamespace, as test_cache.py runs it against the disk; below it, what only the memory
backend does.
"""

import numpy as np
import pytest

from featcache.cache import MemoryNamespace
from featcache.exceptions import CacheValueError

from namespace_conformance import NamespaceConformance, key, keys, rows_of


class TestMemoryNamespace(NamespaceConformance):
    def make_namespace(self, tmp_path, dim=3, *, storage="float32", row_shape=None):
        config = {"model": "synthetic", "storage": storage}
        if dim is not None:
            config["dim"] = dim
        if row_shape is not None:
            config["row_shape"] = list(row_shape)
        return MemoryNamespace("fp0", config=config)


def test_rows_are_visible_as_soon_as_they_are_added():
    ns = MemoryNamespace("fp0", 3)
    w = ns.writer(commit_rows=10_000)
    w.add(keys([0]), rows_of([0]), ["a"])
    w.add_failure(key(1), "b", "broken")
    assert ns.lookup(keys([0])).all() and set(ns.failures()) == {key(1)}
    assert w.commit() is None  # nothing is ever pending


def test_explicit_arguments_win_over_the_config():
    config = {"dim": 12, "storage": "float16", "row_shape": [3, 2, 2]}
    ns = MemoryNamespace("fp0", config=config)
    assert (ns.dim, ns.storage, ns.row_shape) == (12, "float16", (3, 2, 2))
    assert ns.config == config and ns.config is not config
    ns = MemoryNamespace("fp0", 4, storage="float32", row_shape=(2, 2), config=config)
    assert (ns.dim, ns.storage, ns.row_shape) == (4, "float32", (2, 2))
    plain = MemoryNamespace("fp0", 3)  # as FrozenBackbone(cache=False) makes it
    assert plain.config == {} and plain.storage == "float32" and plain.row_shape is None
    with pytest.raises(CacheValueError, match="storage='int8'"):
        MemoryNamespace("fp0", storage="int8")
    assert np.isnan(plain.read(keys([5]), missing="nan")).all()
