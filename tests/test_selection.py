"""Tests for featcache.cache.selection: a namespace chosen by model, layer and image size."""

import re

import pytest

from featcache.cache import FeatureCache
from featcache.cache.selection import describe_namespace, select_namespace
from featcache.exceptions import CacheValueError, ProbeError

REDUCED = "jpeg-dct-draft+box-reduce/shorter-side>=2x-input"
# Two fingerprints share their first 9 characters: their short forms need 10.
A, B = "a1b2c3d4e5f60718293a", "a1b2c3d4e9990718293a"
C, D = "c0ffee00112233445566", "d00d0000111122223333"


def _config(model="efficientnet_lite0", layer="blocks.4", size=64, scale=REDUCED, **extra):
    decode = {"grayscale": "replicate", **({"decode_scale": scale} if scale else {})}
    return {"model": model, "layer": layer, "pooling": "avg", "precision": "fp32",
            "preprocessing": {"image_size": size, "mean": [0.5] * 3}, "decode": decode,
            "dim": 112, **extra}


@pytest.fixture
def cache(tmp_path):
    cache = FeatureCache(tmp_path / "c")
    cache.namespace(A, _config())
    cache.namespace(B, _config(scale=None))                       # decode_scale="full"
    cache.namespace(C, _config(size=32, precision="fp16", storage="float16"))
    cache.namespace(D, _config(model="torchvision:resnet18", layer="default"))
    return cache


def test_criteria_that_leave_one_namespace_choose_it(cache):
    assert select_namespace(cache, image_size=32) == C
    assert select_namespace(cache, model="resnet18") == D           # without its library
    assert select_namespace(cache, model="torchvision:resnet18", layer="default") == D
    assert select_namespace(cache, layer="blocks.4", image_size=64, namespace="a1b2c3d4e5") == A
    assert select_namespace(cache, namespace=B) == B


def test_several_matches_list_the_candidates_by_what_sets_them_apart(cache):
    with pytest.raises(CacheValueError) as info:
        select_namespace(cache, layer="blocks.4", image_size=64)
    message = str(info.value)
    assert message.startswith(f"2 namespaces of cache {cache.path} are layer='blocks.4', "
                              "image_size=64: ")
    assert ("a1b2c3d4e5 (efficientnet_lite0, layer blocks.4, 64 px, decode_scale=reduced); "
            "a1b2c3d4e9 (efficientnet_lite0, layer blocks.4, 64 px, decode_scale=full)") \
        in message
    assert "pass namespace=FINGERPRINT (the short form shown is enough), or choose by what it " \
           "is with model=NAME, layer=NAME, image_size=PIXELS" in message
    assert C not in message and "c0ffee00" not in message  # only the candidates


def test_no_criterion_on_a_cache_of_several_lists_them_all(cache):
    with pytest.raises(CacheValueError, match=rf"cache {re.escape(str(cache.path))} holds 4 "
                                              r"namespaces: a1b2c3d4e5 \(efficientnet_lite0, "
                                              r"layer blocks.4, 64 px, decode_scale="):
        select_namespace(cache)
    message = str(pytest.raises(CacheValueError, select_namespace, cache).value)
    assert "c0ffee00 (efficientnet_lite0, layer blocks.4, 32 px, decode_scale=reduced, " \
           "precision=fp16, storage=float16)" in message  # storage: float32 where not recorded
    assert "d00d0000 (torchvision:resnet18, layer default, 64 px" in message


def test_nothing_matching_says_what_was_asked_and_what_there_is(cache):
    with pytest.raises(ProbeError, match=r"no namespace is model='resnet50', layer='blocks.4' of "
                                         r"cache .*; it holds: a1b2c3d4e5 \("):
        select_namespace(cache, model="resnet50", layer="blocks.4", error=ProbeError)
    with pytest.raises(CacheValueError, match=r"namespace 'zz' matches no namespace of cache"):
        select_namespace(cache, "zz")
    with pytest.raises(CacheValueError, match="no namespace is image_size=65 of cache"):
        select_namespace(cache, image_size=65)


def test_a_cache_of_one_namespace_needs_no_criterion(tmp_path):
    cache = FeatureCache(tmp_path / "one")
    with pytest.raises(CacheValueError, match="holds no namespace yet: extract into it first"):
        select_namespace(cache)
    cache.namespace("fp_toy", {"model": "toy", "dim": 4})  # a configuration without layer or size
    assert select_namespace(cache) == "fp_toy"
    with pytest.raises(CacheValueError, match=r"no namespace is image_size=8 .* fp_toy "
                                              r"\(toy, layer \?, \? px\)"):
        select_namespace(cache, image_size=8)


def test_describe_namespace():
    assert describe_namespace(_config()) == "efficientnet_lite0, layer blocks.4, 64 px"
