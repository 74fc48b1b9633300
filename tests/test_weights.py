"""Tests for featcache.weights: checkpoints, unwrapping, prefix stripping, shape checks."""

import warnings

import pytest
import torch

from featcache.backbones import load_backbone
from featcache.exceptions import WeightsError
from featcache.weights import load_checkpoint, map_state_dict_by_order


def test_order_mapping_checks_every_shape():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    good = {"a": torch.zeros(3, 4), "b": torch.zeros(3), "c": torch.zeros(2, 3), "d": torch.zeros(2)}
    assert list(map_state_dict_by_order(good, model, source="x")) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    bad = dict(good, c=torch.zeros(3, 2))
    with pytest.raises(WeightsError, match=r"'c' \(3, 2\) pairs with '1.weight' \(2, 3\)"):
        map_state_dict_by_order(bad, model, source="x")
    with pytest.raises(WeightsError, match="has 3 tensors but the architecture has 4"):
        map_state_dict_by_order(dict(list(good.items())[:3]), model, source="x")


def _save_resnet18_checkpoint(path, wrap):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        import torchvision

        torch.manual_seed(123)
        model = torchvision.models.resnet18(weights=None)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3} if wrap else state, path)
    return model


def test_local_checkpoint_is_unwrapped_prefix_stripped_and_used(tmp_path):
    path = tmp_path / "resnet18_medical.pt"
    reference = _save_resnet18_checkpoint(path, wrap=True).eval()
    state = load_checkpoint(path)
    assert next(iter(state)).startswith("conv1.")
    loaded = load_backbone("resnet18", weights=str(path), image_size=64)
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        ours = loaded.extractor(x)["default"]
        norm = (x - loaded.extractor.mean) / loaded.extractor.std
        reference.fc = torch.nn.Identity()
        expected = reference(norm)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)  # BatchNorm is folded
    assert loaded.config["weights"] == "checkpoint" and loaded.config["weights_file"] == str(path)
    assert loaded.config["weights_digest"] != _random_resnet18(image_size=64).config["weights_digest"]


def test_headless_checkpoint_loads_but_a_mismatch_shows_a_readable_diff(tmp_path):
    path = tmp_path / "encoder.pth"
    _save_resnet18_checkpoint(path, wrap=False)
    state = torch.load(path, weights_only=True)
    headless = {k: v for k, v in state.items() if not k.startswith("module.fc.")}
    torch.save(headless, tmp_path / "headless.pt")
    assert load_backbone("resnet18", weights=str(tmp_path / "headless.pt"), image_size=32).dims["default"] == 512
    broken = dict(headless)
    del broken["module.layer1.0.conv1.weight"]
    broken["module.extra.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(WeightsError, match=r"(?s)missing from the checkpoint \(1\).*layer1.0.conv1.weight"
                                           r".*not in the model \(1\).*extra.weight"):
        load_backbone("resnet18", weights=str(tmp_path / "broken.pt"))


def test_weights_errors_name_the_fix(tmp_path):
    with pytest.raises(WeightsError, match="weights file not found"):
        load_backbone("resnet18", weights=str(tmp_path / "nope.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"cannot read checkpoint .*junk.pt"):
        load_backbone("resnet18", weights=str(tmp_path / "junk.pt"))
    torch.save({"epoch": 3}, tmp_path / "nostate.pt")
    with pytest.raises(WeightsError, match="holds no state dict"):
        load_backbone("resnet18", weights=str(tmp_path / "nostate.pt"))
    with pytest.raises(WeightsError, match=r"no weights 'IMAGENET9K'.*IMAGENET1K_V1"):
        load_backbone("resnet18", weights="IMAGENET9K")
    with pytest.raises(WeightsError, match="efficientnet_lite0 has weights 'DEFAULT'"):
        load_backbone(weights="IMAGENET1K_V2")


def _random_resnet18(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return load_backbone("resnet18", weights=None, **kw)
