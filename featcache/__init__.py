"""featcache: frozen pretrained networks as scikit-learn transformers, with an HDF5 embedding cache.

Importing featcache does not import torch: the network is loaded on the first ``fit``, and
reading a cache needs only h5py and numpy.
"""

__version__ = "0.1.0"

from .backbones import get_backbone, list_backbones
from .exceptions import (
    CacheCorruptError,
    CacheError,
    FeatcacheError,
    InputError,
    LayerError,
    UnknownBackboneError,
    WeightsError,
)
from .transformer import FrozenBackbone

__all__ = [
    "FrozenBackbone",
    "list_backbones",
    "get_backbone",
    "FeatcacheError",
    "UnknownBackboneError",
    "WeightsError",
    "LayerError",
    "InputError",
    "CacheError",
    "CacheCorruptError",
    "__version__",
]
