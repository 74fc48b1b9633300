"""Tests for featcache.backbones.capture: pooling and layer capture."""

import threading

import pytest
import torch
from torch import nn

from featcache.exceptions import LayerError
from featcache.backbones.capture import FeatureExtractor, pool_features


def test_pooling_of_feature_maps():
    t = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    torch.testing.assert_close(pool_features(t, "avg", layer="x"), t.mean(dim=(2, 3)))
    torch.testing.assert_close(pool_features(t, "max", layer="x"), t.amax(dim=(2, 3)))
    gem = pool_features(t, "gem", layer="x")
    assert torch.all(gem >= pool_features(t, "avg", layer="x") - 1e-5)  # power mean >= mean
    assert torch.all(gem <= pool_features(t, "max", layer="x") + 1e-5)
    assert pool_features(t, "none", layer="x").shape == (2, 12)


def test_pooling_of_tokens_and_vectors():
    tokens = torch.randn(2, 5, 4)
    torch.testing.assert_close(pool_features(tokens, "cls", layer="x"), tokens[:, 0])
    torch.testing.assert_close(pool_features(tokens, "avg", layer="x"), tokens.mean(dim=1))
    vec = torch.randn(2, 4)
    assert pool_features(vec, "avg", layer="fc") is vec
    with pytest.raises(LayerError, match=r"layer 'fc' already gives one vector.*pooling='max'"):
        pool_features(vec, "max", layer="fc")
    with pytest.raises(LayerError, match="pooling='cls' takes the class token"):
        pool_features(torch.randn(2, 3, 2, 2), "cls", layer="conv")


def test_nhwc_maps_are_pooled_over_space():
    nhwc = torch.randn(2, 3, 3, 8)  # (n, h, w, c)
    pooled = pool_features(nhwc, "avg", layer="x", channels_last_map=True)
    torch.testing.assert_close(pooled, nhwc.mean(dim=(1, 2)))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)
        self.calls = {"fc": 0}

    def forward(self, x):
        x = torch.flatten(self.pool(torch.relu(self.conv(x))), 1)
        self.calls["fc"] += 1
        return self.fc(x)


def test_default_layer_is_the_map_before_global_pooling_and_early_layers_stop_the_pass():
    net = _Net()
    extractor = FeatureExtractor(net, [None], "avg", (0.5,) * 3, (0.5,) * 3)
    x = torch.rand(2, 3, 8, 8)
    with torch.inference_mode():
        out = extractor(x)["default"]
        expected = torch.relu(net.conv((x - 0.5) / 0.5)).mean(dim=(2, 3))
    torch.testing.assert_close(out, expected)
    assert net.calls["fc"] == 0, "the forward pass must stop once every requested layer is captured"
    assert not any(p.requires_grad for p in extractor.parameters())
    assert not extractor.training


def test_several_layers_in_one_pass():
    extractor = FeatureExtractor(_Net(), ["conv", None], "max", (0.0,) * 3, (1.0,) * 3)
    with torch.inference_mode():
        out = extractor(torch.rand(2, 3, 8, 8))
    assert set(out) == {"conv", "default"} and out["conv"].shape == (2, 4)
    torch.testing.assert_close(out["default"], torch.relu(out["conv"]))


class _ConvBn(nn.Module):
    def __init__(self, misread=False):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.misread = misread
        with torch.no_grad():  # statistics as after training
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
            self.bn.weight.uniform_(0.5, 2)
            self.bn.bias.uniform_(-1, 1)

    def forward(self, x):
        x = x.repeat(1, 2, 1, 1)[:, :4]
        return self.conv(self.bn(x)) if self.misread else torch.relu(self.bn(self.conv(x)))


def test_batchnorm_folding_keeps_the_outputs_and_drops_the_norm():
    from featcache.backbones.capture import fold_batchnorm

    net = _ConvBn().eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.inference_mode():
        before = net(x)
    assert fold_batchnorm(net, check_size=16)
    assert isinstance(net.bn, nn.Identity)
    with torch.inference_mode():
        torch.testing.assert_close(net(x), before, atol=1e-5, rtol=1e-5)


def test_batchnorm_folding_restores_a_network_it_misread():
    from featcache.backbones.capture import fold_batchnorm

    net = _ConvBn(misread=True).eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.inference_mode():
        before = net(x)
    assert not fold_batchnorm(net, check_size=16)
    assert isinstance(net.bn, nn.BatchNorm2d)
    with torch.inference_mode():
        torch.testing.assert_close(net(x), before)


class _GatedNet(_Net):
    """_Net whose forward pass pauses, in one chosen thread, until the test lets it go on."""

    def __init__(self):
        super().__init__()
        self.paused_thread = None
        self.entered, self.release = threading.Event(), threading.Event()

    def forward(self, x):
        x = torch.relu(self.conv(x))
        if threading.current_thread() is self.paused_thread:
            self.entered.set()
            assert self.release.wait(timeout=60)
        x = torch.flatten(self.pool(x), 1)
        return self.fc(x)


@pytest.mark.parametrize("second_layer", [None, "fc"], ids=["same extractor", "other layer"])
def test_a_capture_in_one_thread_never_touches_a_capture_in_another(second_layer):
    net = _GatedNet()
    first = FeatureExtractor(net, [None], "avg", (0.5,) * 3, (0.5,) * 3)
    second = first if second_layer is None else FeatureExtractor(net, ["fc"], "avg", (0.5,) * 3, (0.5,) * 3)
    a, b = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    with torch.inference_mode():
        expected_a, expected_b = first(a), second(b)
    results = {}

    def paused_capture():
        with torch.inference_mode():
            results["a"] = first(a)

    worker = threading.Thread(target=paused_capture)
    net.paused_thread = worker
    worker.start()
    try:
        assert net.entered.wait(timeout=60), "the worker never reached the pause"
        with torch.inference_mode():  # runs whole while the worker's capture is half done
            results["b"] = second(b)
    finally:
        net.release.set()
        worker.join(timeout=60)
    assert not worker.is_alive()
    for name, got, want in (("a", results.get("a"), expected_a), ("b", results["b"], expected_b)):
        assert got is not None, f"capture {name} failed"
        for layer in want:
            torch.testing.assert_close(got[layer], want[layer], msg=f"capture {name}, {layer}")
