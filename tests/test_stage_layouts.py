"""Stage layouts: where each architecture family can be cut, and a tail that runs from the cut."""

import warnings

import numpy as np
import pytest

from featcache import PartiallyFrozenClassifier
from featcache.backbones import get_backbone, stage_layout, stages
from featcache.backbones.loading import build_network
from featcache.exceptions import LayerError


def _network(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return build_network(get_backbone(name), None)[0]


def test_efficientnet_stages_end_with_the_head_convolution():
    found = stages("efficientnet_lite0")
    assert [s.name for s in found] == [f"blocks.{i}" for i in range(7)]
    assert found[-1].modules == ("blocks.6", "conv_head", "bn2")
    layout = stage_layout(_network("efficientnet_lite0"))
    assert layout.entry == "bn1" and layout.pool == "avg"
    assert layout.cut_layer(0) == "bn2" and layout.cut_layer(1) == "blocks.5"
    assert layout.cut_layer(7) == "bn1"
    assert layout.tail_modules(2) == ("blocks.5", "blocks.6", "conv_head", "bn2")
    with pytest.raises(LayerError, match="has 7 stages"):
        layout.cut_layer(8)


@pytest.mark.parametrize("name, family, n, pool", [
    ("torchvision:resnet18", "resnet", 4, "avg"),
    ("timm:resnet18", "resnet", 4, "avg"),
    ("timm:vit_tiny_patch16_224", "timm-vit", 12, "cls"),
])
def test_families(name, family, n, pool):
    layout = stage_layout(_network(name))
    assert (layout.family, layout.n_stages, layout.pool) == (family, n, pool)


def test_torchvision_vit_layout():
    import torchvision

    net = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=3,
                                               num_heads=2, hidden_dim=16, mlp_dim=32)
    layout = stage_layout(net)
    assert layout.family == "torchvision-vit" and layout.n_stages == 3
    assert layout.stages[-1].modules[-1] == "encoder.ln"


def test_unknown_networks_are_refused_with_the_fix():
    import torch

    with pytest.raises(LayerError, match="register_stage_layout"):
        stage_layout(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def _tail_matches_network(name, k, size):
    """The tail run from the cut activation gives the network's own pooled features."""
    import copy

    import torch

    from partial_reference import FrozenPrefix
    from featcache.partial.tail import build_tail

    net = _network(name).eval()
    layout = stage_layout(net)
    prefix = FrozenPrefix(copy.deepcopy(net), layout.cut_layer(k), (0, 0, 0), (1, 1, 1))
    last = FrozenPrefix(copy.deepcopy(net), layout.cut_layer(0), (0, 0, 0), (1, 1, 1))
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cut = prefix(x)
        tail = build_tail(net, layout.tail_modules(k), layout.pool, tuple(cut.shape[1:]), 2).eval()
        want = last(x)
        want = want.mean(dim=(2, 3)) if layout.pool == "avg" else want[:, 0]
        np.testing.assert_allclose(tail.features(cut).numpy(), want.numpy(), atol=1e-5)


@pytest.mark.parametrize("name, k, size", [("torchvision:resnet18", 2, 32),
                                           ("timm:vit_tiny_patch16_224", 3, 224),
                                           ("efficientnet_lite0", 3, 32)])
def test_the_tail_continues_the_network_from_the_cut(name, k, size):
    _tail_matches_network(name, k, size)


@pytest.mark.parametrize("name, k, size", [("torchvision:resnet18", 1, 32),
                                           ("timm:vit_tiny_patch16_224", 1, None)])
def test_a_torchvision_and_a_timm_model_train_partially(tmp_path, name, k, size):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 255, size=(12, 32, 32, 3), dtype=np.uint8)
    y = np.arange(12) % 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random weights
        clf = PartiallyFrozenClassifier(name, weights=None, trainable_blocks=k, image_size=size,
                                        max_epochs=1, batch_size=6, cache=tmp_path,
                                        random_state=0, progress=False).fit(X, y)
    assert clf.predict_proba(X).shape == (12, 2)
