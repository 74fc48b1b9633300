"""Tests for featcache.cache.memory: the cache=False backend behaves like an on-disk namespace.

One conformance test runs against both backends.
"""

import numpy as np
import pytest

from featcache.cache import CacheMissError, FeatureCache, MemoryNamespace


def _key(i: int) -> bytes:
    return i.to_bytes(16, "big")


@pytest.fixture(params=["disk", "memory"])
def namespace(request, tmp_path):
    if request.param == "disk":
        return FeatureCache(tmp_path / "c").namespace("fp0", {"dim": 3})
    return MemoryNamespace("fp0")


def test_a_namespace_backend_conforms(namespace):
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    with namespace.writer(commit_rows=2) as writer:
        writer.add([_key(i) for i in range(4)], rows, [f"s{i}" for i in range(4)])
        writer.add([_key(0)], np.full((1, 3), 99, np.float32), ["again"])  # first row wins
        writer.add_failure(_key(7), "bad.png", "not an image")
        writer.add_failure(_key(1), "flaky.png", "failed once")  # has a row: not a failure
    assert namespace.dim == 3 and namespace.rows() == 4
    assert namespace.lookup([_key(0), _key(7), _key(9)]).tolist() == [True, False, False]
    assert namespace.failures([_key(7), _key(1), _key(9)]) == {_key(7): ("bad.png", "not an image")}
    assert set(namespace.failures()) == {_key(7)}
    out = namespace.read([_key(3), _key(0), _key(7)])
    np.testing.assert_array_equal(out[:2], rows[[3, 0]])
    assert np.isnan(out[2]).all()  # a failed key reads as NaN
    with pytest.raises(CacheMissError, match="not in"):
        namespace.read([_key(9)])
    assert np.isnan(namespace.read([_key(9)], missing="nan")).all()
    keys, feats = namespace.to_numpy()
    order = np.argsort([bytes(k) for k in keys])
    np.testing.assert_array_equal(feats[order], rows)


def test_memory_namespace_refuses_what_the_disk_refuses():
    ns = MemoryNamespace("fp0")
    with ns.writer() as writer:
        writer.add([_key(0)], np.zeros((1, 3)), ["a"])
        with pytest.raises(ValueError, match="holds 3-dim rows"):
            writer.add([_key(1)], np.zeros((1, 4)), ["b"])
    with pytest.raises(ValueError, match="missing='maybe'"):
        ns.read([_key(0)], missing="maybe")
