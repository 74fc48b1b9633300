"""Tests for featcache.annotations: labels, groups and splits kept per content key."""

import pytest

from featcache.cache import FeatureCache


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
