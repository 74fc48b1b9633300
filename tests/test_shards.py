"""The shard format's row shapes and storage types (feature maps of partial freezing)."""

import h5py
import numpy as np
import pytest

from featcache import FeatureCache
from featcache.cache.shards import load_shard
from featcache.exceptions import CacheCorruptError, CacheValueError


def _keys(n, offset=0):
    return [int(i + offset).to_bytes(16, "little") for i in range(n)]


def _map_namespace(tmp_path, storage="float16"):
    cache = FeatureCache(tmp_path / "c")
    return cache.namespace("maps", {"dim": 12, "row_shape": [3, 2, 2], "storage": storage})


def test_feature_maps_record_their_shape_and_storage(tmp_path):
    ns = _map_namespace(tmp_path)
    rows = np.random.default_rng(0).standard_normal((5, 12)).astype(np.float32)
    with ns.writer() as w:
        w.add(_keys(5), rows, ["s"] * 5)
    (path,) = (tmp_path / "c" / "maps" / "shards").glob("*.h5")
    info = load_shard(path, "maps", check_checksum=True)
    assert info.row_shape == (3, 2, 2) and info.dtype == "float16"
    assert ns.row_shape == (3, 2, 2) and ns.storage == "float16"
    got = ns.read(_keys(5))
    np.testing.assert_array_equal(got, rows.astype(np.float16).astype(np.float32))


def test_old_shards_without_a_row_shape_stay_readable(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    ns = cache.namespace("vectors", {"dim": 4})
    with ns.writer() as w:
        w.add(_keys(3), np.ones((3, 4)), ["s"] * 3)
    (path,) = (tmp_path / "c" / "vectors" / "shards").glob("*.h5")
    assert load_shard(path, "vectors", check_checksum=True).row_shape is None
    assert ns.row_shape is None and ns.storage == "float32"


@pytest.mark.parametrize("bad", [np.array([5, 5], dtype=np.int64), np.array([3.0, 4.0]),
                                 np.array([-3, -4], dtype=np.int64), np.array([[12]])])
def test_a_row_shape_that_lies_is_refused(tmp_path, bad):
    ns = _map_namespace(tmp_path)
    with ns.writer() as w:
        w.add(_keys(2), np.zeros((2, 12)), ["s"] * 2)
    (path,) = (tmp_path / "c" / "maps" / "shards").glob("*.h5")
    with h5py.File(path, "r+") as f:
        f.attrs["row_shape"] = bad
    with pytest.raises(CacheCorruptError, match="row_shape|row shape"):
        load_shard(path, "maps", check_checksum=False)


def test_a_writer_refuses_rows_of_another_shape(tmp_path):
    from featcache.cache.writer import ShardWriter

    ns = _map_namespace(tmp_path)
    with pytest.raises(CacheValueError, match="row shape"):
        ShardWriter(ns, row_shape=(2, 2)).add(_keys(1), np.zeros((1, 12)), ["s"])


def test_compact_keeps_the_row_shape(tmp_path):
    ns = _map_namespace(tmp_path)
    for i in range(3):
        with ns.writer() as w:
            w.add(_keys(2, 2 * i), np.full((2, 12), i), ["s"] * 2)
    FeatureCache(tmp_path / "c").compact()
    (path,) = (tmp_path / "c" / "maps" / "shards").glob("*.h5")
    assert load_shard(path, "maps", check_checksum=True).row_shape == (3, 2, 2)

