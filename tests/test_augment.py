"""Augmentation views: deterministic per (image, view, seed), recorded, no flips by default."""

import dataclasses

import numpy as np
import pytest
import torch

from featcache.inputs.augment import DEFAULT_POLICY, AugmentPolicy, AugmentView
from featcache.exceptions import InvalidOptionError


def _image(seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 255, (3, 48, 48), dtype=np.uint8))


def test_a_view_is_a_function_of_key_view_and_seed():
    img = _image()
    a = DEFAULT_POLICY.apply(img, b"k" * 16, 1)
    assert torch.equal(a, DEFAULT_POLICY.apply(img, b"k" * 16, 1))
    assert a.dtype == torch.uint8 and a.shape == img.shape
    assert not torch.equal(a, DEFAULT_POLICY.apply(img, b"k" * 16, 2))
    assert not torch.equal(a, DEFAULT_POLICY.apply(img, b"j" * 16, 1))
    other = dataclasses.replace(DEFAULT_POLICY, seed=1)
    assert not torch.equal(a, other.apply(img, b"k" * 16, 1))
    assert torch.equal(AugmentView(DEFAULT_POLICY, 1)(img, b"k" * 16), a)


def test_floats_stay_in_range():
    img = _image().float() / 255
    out = DEFAULT_POLICY.apply(img, b"k" * 16, 3)
    assert out.dtype == torch.float32 and 0 <= float(out.min()) and float(out.max()) <= 1


def test_the_default_policy_never_flips_and_keeps_most_of_the_image():
    for view in range(1, 200):
        p = DEFAULT_POLICY.params(bytes([view % 256]) * 16, view, 224)
        assert not p["flip"]
        assert p["height"] * p["width"] >= 0.75 * 224 * 224
        assert abs(p["angle"]) <= 10
    flips = AugmentPolicy(hflip=True)
    assert any(flips.params(b"x" * 16, v, 64)["flip"] for v in range(1, 20))


def test_description_records_policy_and_view():
    d = DEFAULT_POLICY.describe(2)
    assert d["name"] == "mild-v1" and d["view"] == 2 and d["hflip"] is False
    assert DEFAULT_POLICY.describe(1) != d


@pytest.mark.parametrize("kwargs", [{"scale": (0.0, 1.0)}, {"scale": (0.9, 0.8)},
                                    {"ratio": (0, 1)}, {"degrees": 400}, {"brightness": 1.5}])
def test_bad_policies_are_refused(kwargs):
    with pytest.raises(InvalidOptionError, match="AugmentPolicy"):
        AugmentPolicy(**kwargs)
