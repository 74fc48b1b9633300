"""Loading a frozen feature extractor: build, load weights, fold BatchNorm, memoise per process.

:func:`load_backbone` turns a name, weights and layers into a :class:`LoadedBackbone` (the
frozen :class:`~featcache.backbones.capture.FeatureExtractor` and the configuration that
produced it). Networks and extractors are kept in a small thread-safe LRU memo, so clones of
an estimator and grid-search candidates reuse one network, built and folded once.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass

from ..exceptions import FeatcacheError, InvalidOptionError
from ..formats import FORMAT_VERSION
from ..log import get_logger, status
from .registry import BackboneSpec, Preprocessing, get_backbone, seeded, warn_random
from .weights import (is_weights_path, load_local_checkpoint, may_remember, state_dict_digest,
                      weights_key)

__all__ = ["LoadedBackbone", "load_backbone", "layer_names", "build_network", "LoadTimer"]

_log = get_logger(__name__)
#: The :class:`LoadTimer` of each thread, while one is open.
_TIMERS = threading.local()


class LoadTimer:
    """Seconds this thread spends in :func:`build_network` while the timer is open.

    ``with LoadTimer() as loads: ...`` then ``loads.seconds``: what a fit reports as
    ``load_seconds``, apart from the time spent computing (timers nest; each counts).
    """

    def __init__(self):
        self.seconds = 0.0

    def __enter__(self):
        stack = getattr(_TIMERS, "stack", None)
        _TIMERS.stack = [*(stack or ()), self]
        return self

    def __exit__(self, *exc) -> None:
        _TIMERS.stack = [t for t in _TIMERS.stack if t is not self]


def _weights_source(spec, weights, label) -> str:
    if is_weights_path(weights):
        return f"weights file {weights}"
    return f"weights {label or weights} via {spec.source}"


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
    #: layer name -> shape of one row before flattening, with ``pooling="none"`` (else empty).
    row_shapes: dict = dataclasses.field(default_factory=dict)

    def layer_config(self, layer: str, **extra) -> dict:
        """Configuration of one layer's features: what a cache namespace is keyed by.

        With ``pooling="none"`` it records ``row_shape`` (not fingerprinted: the model, layer
        and image size fix it).
        """
        shape = {"row_shape": list(self.row_shapes[layer])} if layer in self.row_shapes else {}
        return {**self.config, "layer": layer, "dim": self.dims[layer], **shape, **extra}


def build_network(spec: BackboneSpec, weights, *, progress=None):
    """``(network, weights label, weights identity)`` of ``spec`` with ``weights``.

    ``None``: random weights (seeded; warns). A path: a local checkpoint, loaded into the
    architecture by the one loader for every backbone
    (:func:`~featcache.backbones.weights.load_local_checkpoint`). Otherwise a named weights
    tag of the backbone's library (``"DEFAULT"`` ...). Pretrained weights are announced
    once loaded, with the seconds it took (:func:`featcache.log.status`: logged at INFO,
    and printed in a batch job's log unless ``progress=False``); the open
    :class:`LoadTimer` objects of this thread count those seconds.
    """
    start = time.perf_counter()
    try:
        built = _build(spec, weights)
    finally:
        seconds = time.perf_counter() - start
        for timer in getattr(_TIMERS, "stack", None) or ():
            timer.seconds += seconds
    if weights is not None:  # random weights are for tests, built in no time
        status(_log, f"loaded {spec.name} ({_weights_source(spec, weights, built[1])}) on cpu "
                     f"in {seconds:.1f} s", progress)
    return built


def _build(spec, weights):
    if weights is None or is_weights_path(weights):
        with seeded():
            model = spec.architecture()
        if weights is None:
            warn_random()
            return model, None, None
        return load_local_checkpoint(model, weights, head_prefixes=spec.head_prefixes(model))
    return spec.pretrained(weights)


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
    key : tuple or None
        The configuration; a weights file enters it as its :func:`~featcache.weights.file_identity`.
        None: nothing may be remembered (a weights file whose identity is not yet settled,
        see :func:`~featcache.backbones.weights.may_remember`): built afresh.
    make : callable
        Builds the value. Threads asking for one key wait for a single build; the memo lock
        is not held meanwhile, so other configurations load in parallel.
    """
    if key is None:
        return make()
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


def _network(spec, weights, wkey, progress=None):
    """(network, weights label, weights digest, BN folded?), built once per process and configuration.

    The network is shared by every thread and extractor of its configuration, so it is
    finished before it is published: folded, and laid out channels-last as the engine runs
    it. Converting a network's parameters (``Module.to``) swaps their storage under any
    forward pass running in another thread and corrupts the weights; done here, under the
    memo's build lock, the engine's later ``.to(memory_format=torch.channels_last)`` on a
    CPU changes nothing.
    """
    from .capture import fold_batchnorm  # imports torch

    def make():
        import torch

        network, label, memo_key = build_network(spec, weights, progress=progress)
        digest = state_dict_digest(network, memo_key)  # of the weights as loaded
        network.eval()
        folded = fold_batchnorm(network, check_size=spec.preprocessing.image_size)
        network.to(memory_format=torch.channels_last)
        return network, label, digest, folded

    return _memo_get(_NETWORKS, _memo_key((spec.name, wkey), wkey), make)


def load_backbone(model="efficientnet_lite0", *, weights="DEFAULT", layers=(None,),
                  pooling="avg", image_size=None, progress=None) -> LoadedBackbone:
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
    progress : bool or None
        False: loading the network is only logged, never printed (see :func:`build_network`).
    """
    spec = get_backbone(model)
    wkey = weights_key(weights)  # taken before any read, so a rewrite during it is noticed
    key = _memo_key((spec.name, wkey, tuple(layers), pooling, image_size), wkey)
    return _memo_get(_LOADED, key, lambda: _load(spec, weights, wkey, list(layers), pooling,
                                                  image_size, progress))


def _memo_key(key, wkey):
    """``key``, or None when a weights file's identity is not yet settled (not remembered)."""
    return key if may_remember(wkey) else None


def _load(spec, weights, wkey, layers, pooling, image_size, progress=None) -> LoadedBackbone:
    import torch

    from .capture import FeatureExtractor  # imports torch

    network, weights_label, digest, folded = _network(spec, weights, wkey, progress)
    pre = spec.preprocessing
    if image_size is not None:
        pre = dataclasses.replace(pre, image_size=int(image_size))
    extractor = FeatureExtractor(network, layers, pooling, pre.mean, pre.std)
    device = next(network.parameters()).device  # an earlier GPU run may have moved it there
    extractor.to(device)
    zeros = torch.zeros(1, 3, pre.image_size, pre.image_size, device=device)
    try:
        with torch.inference_mode():
            probe = extractor(zeros)
            shapes = extractor.row_shapes(zeros) if pooling == "none" else {}
    except (FeatcacheError, torch.cuda.OutOfMemoryError):  # named already, or not the size
        raise
    except (RuntimeError, AssertionError, ValueError) as exc:  # e.g. a ViT's fixed input size
        native = spec.preprocessing.image_size
        raise InvalidOptionError(
            f"{spec.name} cannot take {pre.image_size} px inputs: a forward pass of one "
            f"{pre.image_size}x{pre.image_size} image fails ({type(exc).__name__}: {exc}). "
            f"Use image_size={native} (its own input size) or a size the network accepts "
            f"(transformers with fixed position embeddings take only theirs).") from exc
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
    return LoadedBackbone(spec, extractor, config, dims, pre, weights_identity=identity,
                          row_shapes=shapes)


def layer_names(model="efficientnet_lite0") -> list:
    """Module names usable as ``layer=`` for a backbone (built with random weights, offline)."""
    spec = get_backbone(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        network, _, _ = build_network(spec, None)
    return [name for name, _ in network.named_modules() if name]
