"""Backbones: the registry, resolvers, weights, layer capture, loading and the fingerprint.

- :mod:`~featcache.backbones.registry`: names -> :class:`BackboneSpec`; :func:`register_backbone`,
  :func:`register_resolver`, :func:`list_backbones`, :func:`get_backbone`;
- :mod:`~featcache.backbones.builtin`: featcache's offline backbones (``efficientnet_lite0``);
- :mod:`~featcache.backbones.torchvision_models`, :mod:`~featcache.backbones.timm_models`: the
  two model libraries, registered as resolvers;
- :mod:`~featcache.backbones.weights`: local checkpoints (one loader) and weight digests;
- :mod:`~featcache.backbones.capture`: the frozen :class:`FeatureExtractor` (forward hooks,
  pooling, BatchNorm folding);
- :mod:`~featcache.backbones.loading`: :func:`load_backbone` and its per-process memo;
- :mod:`~featcache.backbones.fingerprint`: :func:`fingerprint` (torch-free);
- :mod:`~featcache.backbones.stage_layouts`: :func:`stages` of a network, where partial freezing cuts it.

Importing this package does not import torch; building a network does.
"""

from . import builtin, timm_models, torchvision_models  # noqa: F401  (they register themselves)
from .fingerprint import FORMAT_VERSION, NOT_FINGERPRINTED, fingerprint
from .loading import LoadedBackbone, load_backbone
from .loading import layer_names
from .stage_layouts import Stage, StageLayout, register_stage_layout, stage_layout, stages
from .registry import (BackboneSpec, Preprocessing, Resolver, get_backbone, list_backbones,
                       register_backbone, register_resolver)

__all__ = ["BackboneSpec", "Preprocessing", "Resolver", "LoadedBackbone", "register_backbone",
           "register_resolver", "list_backbones", "get_backbone", "load_backbone", "layer_names",
           "fingerprint", "NOT_FINGERPRINTED", "FORMAT_VERSION", "Stage", "StageLayout", "stages",
           "stage_layout", "register_stage_layout"]
