"""featcache: frozen pretrained networks as scikit-learn transformers, with an HDF5 embedding cache.

Importing featcache is cheap: the public names are loaded on first use, torch only when a
network is loaded, and reading a cache needs only h5py and numpy.

Where things live (data flows one way: inputs -> engine -> cache; estimators and jobs above;
the command line on top, imported by nothing): ``exceptions``, ``options``, ``formats`` and
``log`` are leaf facts; ``frozen_backbone`` (:class:`FrozenBackbone`) and ``partial/`` are the
estimators; ``inputs/``, ``engine/``, ``cache/``, ``backbones/``, ``jobs/``, ``probe/`` and
``cli/`` each say in their ``__init__`` what they hold and what they may import.
"""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "FrozenBackbone": "frozen_backbone",
    "extract": "jobs",
    "evaluate": "probe.evaluation",
    "PriorShiftClassifier": "probe.prior_shift",
    "PartiallyFrozenClassifier": "partial",
    "PartiallyFrozenRegressor": "partial",
    "FeatureCache": "cache",
    "to_torch": "deploy",
    "preprocess": "deploy",
    "list_backbones": "backbones",
    "get_backbone": "backbones",
    "FeatcacheError": "exceptions",
    "UnknownBackboneError": "exceptions",
    "WeightsError": "exceptions",
    "LayerError": "exceptions",
    "InputError": "exceptions",
    "InvalidOptionError": "exceptions",
    "InputChangedError": "exceptions",
    "DecoderUnavailableError": "exceptions",
    "CacheError": "exceptions",
    "CacheCorruptError": "exceptions",
    "CacheMissError": "exceptions",
    "CacheValueError": "exceptions",
    "ProbeError": "exceptions",
    "NonFiniteError": "exceptions",
    "TargetError": "exceptions",
    "InvalidModelError": "exceptions",
    "SchedulerLostError": "exceptions",
}

__all__ = [*_PUBLIC, "__version__"]

#: Subpackages reachable as attributes (``featcache.backbones.stages(...)``), imported on first use.
_SUBMODULES = ("backbones", "cache", "engine", "inputs", "jobs", "options", "partial", "probe")


def __getattr__(name):
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    if name in _PUBLIC:
        value = getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'featcache' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
