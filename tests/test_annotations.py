"""Tests for featcache.annotations: labels, groups and splits kept per content key."""

import os
import pathlib
import re
import sys

import h5py
import numpy as np
import pytest

from featcache.cache import FeatureCache
from featcache.exceptions import CacheCorruptError

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from cache_helpers import _bomb_file  # noqa: E402


def test_annotations_are_kept_per_key_newest_first(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    k1, k2, k3 = (bytes([i]) * 16 for i in (1, 2, 3))
    cache.annotate([k1, k2], label=["cat", None], group=["p1", "p2"], split=["train", "val"])
    cache.annotate([k2], label=["dog"], source=["/x/b.png"])
    got = cache.annotations()
    assert got[k1] == {"label": "cat", "group": "p1", "split": "train", "source": None}
    assert got[k2]["label"] == "dog" and got[k2]["source"] == "/x/b.png"
    assert cache.annotations([k3, k1]) == {k1: got[k1]}
    assert cache.namespaces() == [] and cache.verify().ok
    with pytest.raises(ValueError, match="expected 2 values, got 1"):
        cache.annotate([k1, k2], label=["only one"])


def test_annotations_with_text_that_is_not_utf8(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    k1, k2 = bytes([7]) * 16, bytes([8]) * 16
    odd = os.fsdecode(b"/x/caf\xe9.png")  # legal on Linux, not valid UTF-8
    cache.annotate([k1, k2], label=["caf\udce9", "dog"], group=["p\x001", None], source=[odd, "b"])
    got = cache.annotations()
    assert got[k1] == {"label": "caf\\udce9", "group": "p\\x001", "split": None,
                       "source": "/x/caf\\udce9.png"}
    assert got[k2] == {"label": "dog", "group": None, "split": None, "source": "b"}


def _junk(path):
    path.write_bytes(b"not an hdf5 file")


def _missing_field(path):
    with h5py.File(path, "w") as f:
        f.create_dataset("keys", data=np.zeros((2, 16), np.uint8))


def _inconsistent(path):
    text = h5py.string_dtype("utf-8")
    with h5py.File(path, "w") as f:
        f.create_dataset("keys", data=np.zeros((3, 16), np.uint8))
        for name in ("label", "group", "split", "source"):
            f.create_dataset(name, data=np.array(["a", "b"], dtype=object), dtype=text)


def _bomb(path):
    _bomb_file(path, 10**6, fields=("keys", "label", "group", "split", "source"), failures=False)


@pytest.mark.parametrize("damage", [_junk, _missing_field, _inconsistent, _bomb])
def test_a_damaged_annotations_file_is_named(tmp_path, damage):
    cache = FeatureCache(tmp_path / "c")
    k1 = bytes([1]) * 16
    cache.annotate([k1], label=["cat"])
    bad = cache.path / "annotations" / f"{0:020d}-{'d' * 32}.h5"
    damage(bad)
    with pytest.raises(CacheCorruptError, match=re.escape(str(bad)) + ".*[Dd]elete it"):
        cache.annotations()
    report = cache.verify()
    assert not report.ok and len(report.problems) == 1 and str(bad) in report.problems[0]
    bad.unlink()
    assert cache.annotations()[k1]["label"] == "cat" and cache.verify().ok
