"""The stages of a network: where it can be cut into a frozen prefix and a trainable tail.

Partial freezing (:mod:`featcache.partial`) keeps the first stages of a pretrained network
frozen, caches their output once, and trains the last ``trainable_blocks`` stages plus a new
head on the cache. That needs to know, per architecture family:

- ``entry``: the module whose output feeds the first stage (the end of the always-frozen stem);
- ``stages``: the stages in forward order, each a tuple of module names applied one after the
  other (so the tail can run from a cached activation without the rest of the network);
- ``pool``: how the head reduces the last stage's output to one vector (``"avg"`` over a
  feature map, ``"cls"`` for a transformer's class token).

Families are recognised from the network's module names, so a family serves every model of
it (timm's and torchvision's ResNets, timm's EfficientNets and MobileNets with
``conv_stem``/``blocks``/``conv_head``, timm's and torchvision's ViTs). A new family is one
:func:`register_stage_layout` call. Building a layout needs the network (torch); this module
imports torch only through the functions that build one.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from typing import Callable

from ..exceptions import LayerError
from .loading import build_network
from .registry import get_backbone

__all__ = ["Stage", "StageLayout", "stages", "stage_layout", "register_stage_layout"]


@dataclass(frozen=True)
class Stage:
    """One stage: a name and the module names it applies, in order."""

    name: str
    modules: tuple


@dataclass(frozen=True)
class StageLayout:
    """How a network splits into stem, stages and head (see the module docstring)."""

    family: str
    entry: str
    stages: tuple
    pool: str

    @property
    def n_stages(self) -> int:
        return len(self.stages)

    def check_trainable(self, trainable_blocks: int, model: str = "this backbone") -> None:
        """Raise :class:`LayerError` unless ``0 <= trainable_blocks <= n_stages``."""
        if not 0 <= trainable_blocks <= self.n_stages:
            raise LayerError(
                f"trainable_blocks={trainable_blocks}, but {model} has {self.n_stages} stages "
                f"({', '.join(s.name for s in self.stages)}); use 0 (the head alone) to "
                f"{self.n_stages} (every stage after the stem)")

    def cut_layer(self, trainable_blocks: int) -> str:
        """The module whose output is cached when the last ``trainable_blocks`` stages train."""
        self.check_trainable(trainable_blocks)
        if trainable_blocks == 0:
            return self.stages[-1].modules[-1]
        if trainable_blocks == self.n_stages:
            return self.entry
        return self.stages[self.n_stages - trainable_blocks - 1].modules[-1]

    def tail_modules(self, trainable_blocks: int) -> tuple:
        """Module names of the trainable stages, in forward order (empty for 0)."""
        self.check_trainable(trainable_blocks)
        if trainable_blocks == 0:
            return ()
        return tuple(m for s in self.stages[self.n_stages - trainable_blocks:] for m in s.modules)


#: (family name, matcher(module names) -> layout or None), tried in order.
_LAYOUTS: list = []


def register_stage_layout(family: str, build: Callable) -> None:
    """Register a family: ``build(names) -> StageLayout | None`` from the network's module names.

    ``names`` maps each module name to its module. Return None when the network is not of the
    family. Families registered later are tried first.
    """
    _LAYOUTS.insert(0, (family, build))


def _numbered(names, prefix: str) -> list:
    """``prefix.0``, ``prefix.1``, ... present in ``names`` (direct children only), in order."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)$")
    found = sorted(int(m.group(1)) for m in map(pattern.match, names) if m)
    return [f"{prefix}.{i}" for i in found]


def _efficientnet(names):
    if not {"conv_stem", "bn1", "blocks", "conv_head", "bn2"} <= set(names):
        return None
    blocks = _numbered(names, "blocks")
    stages = [Stage(b, (b,)) for b in blocks]
    stages[-1] = Stage(blocks[-1], (blocks[-1], "conv_head", "bn2"))
    return StageLayout("efficientnet", "bn1", tuple(stages), "avg")


def _resnet(names):
    wanted = {"maxpool", "layer1", "layer2", "layer3", "layer4"}
    if not wanted <= set(names):
        return None
    return StageLayout("resnet", "maxpool",
                       tuple(Stage(f"layer{i}", (f"layer{i}",)) for i in range(1, 5)), "avg")


def _timm_vit(names):
    if not {"patch_embed", "blocks", "norm_pre", "norm"} <= set(names):
        return None
    module = names[""]
    if getattr(module, "global_pool", "token") != "token":
        return None  # average-pooled ViTs exclude prefix tokens: not the plain "avg" of a map
    blocks = _numbered(names, "blocks")
    stages = [Stage(b, (b,)) for b in blocks]
    stages[-1] = Stage(blocks[-1], (blocks[-1], "norm"))
    return StageLayout("timm-vit", "norm_pre", tuple(stages), "cls")


def _torchvision_vit(names):
    if not {"conv_proj", "encoder.dropout", "encoder.layers", "encoder.ln"} <= set(names):
        return None
    layers = [n for n in names if re.fullmatch(r"encoder\.layers\.encoder_layer_\d+", n)]
    layers.sort(key=lambda n: int(n.rsplit("_", 1)[1]))
    stages = [Stage(n.rsplit(".", 1)[1], (n,)) for n in layers]
    stages[-1] = Stage(stages[-1].name, (layers[-1], "encoder.ln"))
    return StageLayout("torchvision-vit", "encoder.dropout", tuple(stages), "cls")


for _family, _build in (("torchvision-vit", _torchvision_vit), ("timm-vit", _timm_vit),
                        ("resnet", _resnet), ("efficientnet", _efficientnet)):
    register_stage_layout(_family, _build)


def stage_layout(network, model: str = "this backbone") -> StageLayout:
    """The :class:`StageLayout` of a built network.

    Raises
    ------
    LayerError
        When no registered family recognises the network.
    """
    names = dict(network.named_modules())
    for _family, build in _LAYOUTS:
        layout = build(names)
        if layout is not None:
            return layout
    raise LayerError(
        f"featcache does not know the stages of {model} ({type(network).__name__}); partial "
        "freezing supports EfficientNet/MobileNet (timm), ResNet (timm, torchvision) and ViT "
        "(timm with class-token pooling, torchvision). Register its layout with "
        "featcache.backbones.register_stage_layout, or use FrozenBackbone.")


def stages(model: str = "efficientnet_lite0") -> list:
    """The stages of a backbone, in forward order (built with random weights, offline).

    >>> [s.name for s in stages("efficientnet_lite0")]  # doctest: +SKIP
    ['blocks.0', 'blocks.1', 'blocks.2', 'blocks.3', 'blocks.4', 'blocks.5', 'blocks.6']
    """
    spec = get_backbone(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        network, _, _ = build_network(spec, None)
    return list(stage_layout(network, spec.name).stages)
