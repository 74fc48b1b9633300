"""The backbone registry: names -> :class:`BackboneSpec`, modelled on torchvision's ``models/_api.py``.

featcache's own backbones are registered with :func:`register_backbone`; whole model
libraries are registered as *resolvers* with :func:`register_resolver` (torchvision and timm,
in :mod:`~featcache.backbones.torchvision_models` and :mod:`~featcache.backbones.timm_models`),
so ``"resnet50"``, ``"torchvision:resnet50"`` and ``"timm:convnext_tiny"`` resolve on demand.
A spec says how to build the architecture with random weights, how to load its named
pretrained weights, and which keys belong to its classification head; local checkpoints are
loaded for every backbone by one loader (:func:`featcache.backbones.weights.load_local_checkpoint`).
Importing this module does not import torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from ..exceptions import UnknownBackboneError

__all__ = ["Preprocessing", "BackboneSpec", "Resolver", "register_backbone", "register_resolver",
           "list_backbones", "get_backbone", "declared_identity", "seeded", "warn_random",
           "IMAGENET_MEAN", "IMAGENET_STD", "HEAD_PREFIXES"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Key prefixes of classification heads, which a local checkpoint may lack.
HEAD_PREFIXES = ("fc.", "classifier.", "head.", "heads.", "last_linear.")


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
    source : str
        ``"featcache"`` for registered backbones, else the resolver's name.
    arch : str
        Architecture name in its source library.
    preprocessing : Preprocessing
        Default input size and normalisation.
    description : str
    architecture : callable
        ``architecture() -> nn.Module`` with random weights (called under :func:`seeded`).
    pretrained : callable
        ``pretrained(weights_tag) -> (nn.Module, weights label, weights identity)`` for named
        weights (``"DEFAULT"`` ...); raises :class:`~featcache.exceptions.WeightsError`.
    head_prefixes : callable
        ``head_prefixes(model) -> tuple`` of state-dict key prefixes of the classification
        head, which a local checkpoint may lack.
    identity : callable or None
        ``identity(weights) -> JSON-able value`` that changes whenever what featcache builds
        for ``weights`` changes: for a weights tag, what ``pretrained(tag)`` loads (a file's
        hash, a release name, a package version); for ``None``, the architecture (random
        weights, and what a local checkpoint is loaded into). Cheap, and without importing
        torch: a cache directory remembers the resolved configuration under it, so a fully
        cached rerun never loads the network (:mod:`featcache.cache.resolved`). Return None,
        or leave ``identity`` unset, when nothing cheap identifies it: the network is then
        loaded and its weights hashed on every run, so new weights under the same name are
        always noticed.
    """

    name: str
    source: str
    arch: str
    preprocessing: Preprocessing
    description: str = ""
    architecture: Callable | None = field(default=None, repr=False, compare=False)
    pretrained: Callable | None = field(default=None, repr=False, compare=False)
    head_prefixes: Callable = field(default=lambda model: HEAD_PREFIXES, repr=False,
                                    compare=False)
    identity: Callable | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Resolver:
    """A model library that resolves names on demand.

    Attributes
    ----------
    source : str
        Prefix of its names (``"torchvision"`` in ``"torchvision:resnet50"``).
    names : callable
        ``names() -> list`` of the architectures it knows.
    spec : callable
        ``spec(arch) -> BackboneSpec`` or None when it does not know ``arch``.
    bare_names : bool
        Whether names without a prefix are tried with it (torchvision: ``"resnet50"``).
    identity : callable or None
        ``identity(arch, weights) -> JSON-able value or None``: what
        :attr:`BackboneSpec.identity` of ``spec(arch)`` would declare, without resolving the
        spec (for a library whose name lookup imports torch). Unset: featcache resolves the
        spec and asks it.
    """

    source: str
    names: Callable
    spec: Callable
    bare_names: bool = False
    identity: Callable | None = None


_REGISTRY: "OrderedDict[str, BackboneSpec]" = OrderedDict()
_RESOLVERS: "OrderedDict[str, Resolver]" = OrderedDict()


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone to featcache's registry (under ``spec.name``)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"a backbone named '{spec.name}' is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def register_resolver(resolver: Resolver) -> Resolver:
    """Add a model library whose names resolve on demand (``"<source>:<arch>"``)."""
    if resolver.source in _RESOLVERS or resolver.source == "featcache":
        raise ValueError(f"a resolver named '{resolver.source}' is already registered")
    _RESOLVERS[resolver.source] = resolver
    return resolver


def list_backbones(source: str = "featcache") -> list:
    """Names of available backbones.

    Parameters
    ----------
    source : {"featcache", "torchvision", "timm", "all"}, default="featcache"
        ``"featcache"`` lists the registered backbones (offline-ready); a resolver's name
        lists every model of that library (their named weights download when online),
        prefixed ``torchvision:`` / ``timm:``; ``"all"`` lists everything.
    """
    sources = ("featcache", *_RESOLVERS, "all")
    if source not in sources:
        raise ValueError(f"source must be one of {sources}, got {source!r}")
    names = list(_REGISTRY) if source in ("featcache", "all") else []
    for name, resolver in _RESOLVERS.items():
        if source in (name, "all"):
            names += [f"{name}:{arch}" for arch in resolver.names()]
    return names


def get_backbone(name: str) -> BackboneSpec:
    """Resolve a backbone name to its :class:`BackboneSpec`.

    ``name`` is a registered name, ``"<source>:<model>"`` of a registered resolver
    (``"torchvision:resnet50"``, ``"timm:convnext_tiny"``), or a plain name a resolver with
    ``bare_names`` knows (``"resnet50"``). An unknown name raises
    :class:`~featcache.exceptions.UnknownBackboneError` listing close matches.
    """
    if not isinstance(name, str) or not name:
        raise UnknownBackboneError(f"a backbone name must be a non-empty string, got {name!r}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    source, _, arch = name.partition(":") if ":" in name else ("", "", name)
    for resolver in _RESOLVERS.values():
        if source == resolver.source or (not source and resolver.bare_names):
            spec = resolver.spec(arch)
            if spec is not None:
                return spec
    candidates = list(_REGISTRY) + [n for r in _RESOLVERS.values() for n in
                                    ([*r.names()] if r.bare_names else [])]
    candidates += [f"{r.source}:{n}" for r in _RESOLVERS.values() for n in r.names()]
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownBackboneError(
        f"unknown backbone '{name}'.{hint} Use 'torchvision:<name>' or 'timm:<name>' for "
        "models of those libraries; featcache.list_backbones('all') lists every name."
    )


def declared_identity(name: str, weights):
    """The identity backbone ``name`` declares for ``weights`` (a tag, or None), or None.

    What keys a remembered configuration besides the package versions
    (:mod:`featcache.cache.resolved`): ``{"source": ..., "identity": ...}`` of the spec
    :func:`get_backbone` gives for ``name`` (:attr:`BackboneSpec.identity`), or of every
    resolver that could give it, asked without resolving the spec when they declare
    :attr:`Resolver.identity` (so torchvision and timm names need no torch here). None when any
    of them declares nothing, or ``name`` is unknown (loading it will say so).

    Raises
    ------
    TypeError
        When a declared identity is not JSON-serialisable.
    """
    if not isinstance(name, str) or not name:
        return None
    if name in _REGISTRY:
        return _declared(_REGISTRY[name], weights)
    source, _, arch = name.partition(":") if ":" in name else ("", "", name)
    resolvers = [r for r in _RESOLVERS.values()
                 if source == r.source or (not source and r.bare_names)]
    if resolvers and all(r.identity is not None for r in resolvers):
        found = [{"source": r.source, "identity": r.identity(arch, weights)} for r in resolvers]
        if any(f["identity"] is None for f in found):
            return None
        _check_json(name, found)
        return found if len(found) > 1 else found[0]
    try:
        spec = get_backbone(name)
    except UnknownBackboneError:
        return None
    return _declared(spec, weights)


def _declared(spec: BackboneSpec, weights):
    value = spec.identity(weights) if spec.identity is not None else None
    if value is None:
        return None
    found = {"source": spec.source, "identity": value}
    _check_json(spec.name, found)
    return found


def _check_json(name, value) -> None:
    import json

    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"the identity declared by backbone '{name}' must be JSON-serialisable (strings, "
            f"numbers, lists, dicts), got {value!r} ({exc}); return, e.g., a file's hash or a "
            "release name as a string, or None to have the network loaded on every run."
        ) from exc


@contextlib.contextmanager
def seeded(seed: int = 0):
    """Make random initialisation deterministic, so weights=None gives one fingerprint."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def warn_random():
    """Warn that a backbone has random weights (``weights=None``)."""
    warnings.warn(
        "weights=None: the backbone is randomly initialised (seed 0); its features carry no "
        "pretrained knowledge. Use this for tests only.",
        UserWarning,
        stacklevel=5,
    )
