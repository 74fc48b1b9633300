"""Turning a classification network into a frozen feature extractor.

:class:`FeatureExtractor` wraps a network, normalises its input, captures the output of the
requested layers with forward hooks (stopping the forward pass as soon as every requested
layer has been seen, so an early layer costs only the early part of the network) and pools
each captured tensor into one vector per image.

One network is shared by every extractor built on it (see the memo in
:mod:`featcache.backbones`), and threads may run it at the same time. So the hooks are
registered once per module and never removed, and they act only for the capture running in
their own thread (a thread-local :class:`_Capture`), and only for the layers of the extractor
that started it: a capture in one thread never sees, or stops, a forward pass of another.
"""

from __future__ import annotations

import difflib
import threading
import weakref

import torch
from torch import nn

from ..exceptions import LayerError
from ..options import POOLINGS

__all__ = ["FeatureExtractor", "POOLINGS", "pool_features", "DEFAULT_LAYER", "fold_batchnorm"]

#: Name under which the default (penultimate) features are returned.
DEFAULT_LAYER = "default"
_GEM_P = 3.0


class _StopForward(Exception):
    """Raised by the last capture hook to skip the rest of the network."""


class _Capture:
    """One forward pass's capture: what its extractor wants, and what was seen so far."""

    __slots__ = ("targets", "wanted", "captured")

    def __init__(self, targets: dict, wanted: set):
        self.targets = targets  # module -> [(layer, mode), ...] of the extractor running
        self.wanted = wanted
        self.captured: dict = {}


#: The capture running in this thread (``.job``), if any.
_ACTIVE = threading.local()
#: module -> the hook modes ("input", "output") already registered on it.
_HOOKED: "weakref.WeakKeyDictionary[nn.Module, set]" = weakref.WeakKeyDictionary()
_HOOK_LOCK = threading.Lock()
#: Serialises ``.to()`` conversions of extractors (and so of the networks they share).
_CONVERT_LOCK = threading.RLock()


def _record(module, mode, value) -> None:
    """Store ``value`` for the current thread's capture; stop the pass once it is complete."""
    job = getattr(_ACTIVE, "job", None)
    if job is None:
        return
    layers = [layer for layer, m in job.targets.get(module, ()) if m == mode]
    if not layers:
        return
    value = value[0] if isinstance(value, (tuple, list)) else value
    for layer in layers:
        job.captured[layer] = value
    if job.wanted.issubset(job.captured):
        raise _StopForward


def _on_input(module, args):
    _record(module, "input", args[0])


def _on_output(module, args, output):
    _record(module, "output", output)


def _hook_once(module: nn.Module, mode: str) -> None:
    """Register the (thread-aware) capture hook of ``mode`` on ``module``, once per process."""
    with _HOOK_LOCK:
        modes = _HOOKED.setdefault(module, set())
        if mode in modes:
            return
        if mode == "input":
            module.register_forward_pre_hook(_on_input)
        else:
            module.register_forward_hook(_on_output)
        modes.add(mode)


def pool_features(t: torch.Tensor, pooling: str, *, layer: str, channels_last_map=False):
    """Pool one captured tensor to ``(n, d)``.

    Parameters
    ----------
    t : Tensor
        ``(n, c, h, w)`` feature map, ``(n, tokens, d)`` token sequence, or ``(n, d)`` vector.
    pooling : {"avg", "max", "gem", "cls", "none"}
        ``gem`` is generalised-mean pooling with p=3 on activations clamped at 1e-6; ``cls``
        takes the first token of a sequence; ``none`` flattens the map (large!).
    layer : str
        Layer name, for error messages.
    channels_last_map : bool
        True when a 4-D tensor is laid out ``(n, h, w, c)`` (timm's Swin family).
    """
    if t.ndim == 4:
        if channels_last_map:
            t = t.permute(0, 3, 1, 2)
        dims = (2, 3)
    elif t.ndim == 3:
        dims = (1,)
    elif t.ndim == 2:
        if pooling in ("avg", "cls"):
            return t
        raise LayerError(
            f"layer '{layer}' already gives one vector per image (shape {tuple(t.shape)}), so "
            f"pooling='{pooling}' cannot apply. Use pooling='avg', or pick a layer with a "
            "spatial map or tokens."
        )
    else:
        raise LayerError(f"layer '{layer}' gives a {t.ndim}-D tensor {tuple(t.shape)}; "
                         "expected a 2-D, 3-D (tokens) or 4-D (feature map) output.")
    t = t.float()
    if pooling == "avg":
        return t.mean(dim=dims)
    if pooling == "max":
        return t.amax(dim=dims)
    if pooling == "gem":
        return t.clamp(min=1e-6).pow(_GEM_P).mean(dim=dims).pow(1.0 / _GEM_P)
    if pooling == "none":
        return t.flatten(1)
    if pooling == "cls":
        if t.ndim != 3:
            raise LayerError(
                f"pooling='cls' takes the class token of a transformer, but layer '{layer}' "
                f"gives a feature map {tuple(t.shape)}. Use pooling='avg', 'max' or 'gem'."
            )
        return t[:, 0]
    raise LayerError(f"unknown pooling '{pooling}'; expected one of {POOLINGS}.")


class FeatureExtractor(nn.Module):
    """A frozen network that maps images in [0, 1] to pooled features per layer.

    Parameters
    ----------
    model : nn.Module
        The classification network (weights already loaded).
    layers : list of (str or None)
        Module names whose output to capture (torchvision node names such as ``"layer3"``,
        timm ``feature_info`` module names such as ``"blocks.4"``). ``None`` means the
        network's final feature map / penultimate representation.
    pooling : str
        One of :data:`POOLINGS`.
    mean, std : sequence of 3 floats
        Input normalisation applied inside the module.
    """

    def __init__(self, model: nn.Module, layers, pooling: str, mean, std):
        super().__init__()
        self.model = model
        self.layers = list(layers)
        self.pooling = pooling
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self._nhwc = getattr(model, "output_fmt", "NCHW") == "NHWC"
        self._use_forward_features = hasattr(model, "forward_features") and hasattr(
            model, "pretrained_cfg"
        )  # timm models
        self._targets = {layer: self._resolve_target(layer) for layer in self.layers}
        self._by_module = self._hook_targets()
        self.eval()
        self.requires_grad_(False)

    def _resolve_target(self, layer):
        """Return (module, mode) where mode is 'output' or 'input' of that module."""
        modules = dict(self.model.named_modules())
        if layer is not None:
            if layer not in modules or layer == "":
                close = difflib.get_close_matches(layer, [n for n in modules if n], n=5)
                hint = f" Close matches: {close}." if close else ""
                raise LayerError(
                    f"layer '{layer}' is not a module of this backbone.{hint} "
                    "Use featcache.backbones.layer_names(model) to list them."
                )
            return modules[layer], "output"
        if self._use_forward_features:
            return None, "forward_features"
        pools = [m for m in modules.values() if isinstance(m, nn.AdaptiveAvgPool2d)]
        if pools:
            return pools[-1], "input"
        linears = [m for m in modules.values() if isinstance(m, nn.Linear)]
        if not linears:
            raise LayerError("cannot find the penultimate layer of this network; name one with layer=.")
        return linears[-1], "input"

    def _apply(self, fn, recurse=True):
        """``.to()``/``.cuda()`` one thread at a time: the network is shared between threads.

        Two threads converting one network at once would each swap its parameters' storage;
        serialised, the second finds every tensor converted already and changes nothing.
        """
        with _CONVERT_LOCK:
            return super()._apply(fn, recurse)

    def _hook_targets(self) -> dict:
        """Hook every target module once; return module -> [(layer, mode), ...]."""
        by_module: dict = {}
        for layer, (module, mode) in self._targets.items():
            if mode in ("input", "output"):
                _hook_once(module, mode)
                by_module.setdefault(module, []).append((layer, mode))
        return by_module

    def forward(self, images: torch.Tensor) -> dict:
        """Map a float batch ``(n, 3, h, w)`` in [0, 1] to ``{layer: (n, d) float32}``."""
        x = (images - self.mean) / self.std
        captured = self._capture(x)
        return {
            (DEFAULT_LAYER if layer is None else layer): pool_features(
                captured[layer], self.pooling, layer=str(layer or DEFAULT_LAYER),
                channels_last_map=self._nhwc and layer is None,
            ).float()
            for layer in self.layers
        }

    def row_shapes(self, images: torch.Tensor) -> dict:
        """``{layer: shape}`` of one image's captured tensor before pooling (e.g. ``(C, H, W)``).

        With ``pooling="none"`` a row is this tensor flattened (C order); the shape says how to
        bring it back.
        """
        captured = self._capture((images - self.mean) / self.std)
        out = {}
        for layer in self.layers:
            t = captured[layer]
            if self._nhwc and layer is None and t.ndim == 4:
                t = t.permute(0, 3, 1, 2)
            out[DEFAULT_LAYER if layer is None else layer] = tuple(int(n) for n in t.shape[1:])
        return out

    def _capture(self, x) -> dict:
        """Run the network on ``x`` until every requested layer is captured (this thread only)."""
        job = _Capture(self._by_module, set(self.layers))
        outer = getattr(_ACTIVE, "job", None)
        _ACTIVE.job = job
        try:
            if None in job.wanted and self._use_forward_features:
                job.captured[None] = self.model.forward_features(x)
            else:
                self.model(x)
        except _StopForward:
            pass
        finally:
            _ACTIVE.job = outer
        lost = [layer for layer in self.layers if layer not in job.captured]
        if lost:
            raise LayerError(
                f"layers {lost} were never reached in the forward pass of "
                f"{type(self.model).__name__}. Pick layers the forward pass runs through "
                "(featcache.backbones.layer_names(model) lists the modules)."
            )
        return job.captured


def fold_batchnorm(model: nn.Module, *, check_size: int = 64, tolerance: float = 1e-3) -> bool:
    """Fold each BatchNorm that directly follows a convolution into that convolution, in place.

    Inference-mode BatchNorm is an affine map per channel, so it can be merged into the
    preceding convolution's weights and bias; the BatchNorm's activation (timm's
    ``BatchNormAct2d``) is kept. This saves about a quarter of the CPU time of
    EfficientNet-Lite0. Pairs are found as consecutive children (conv, norm) of one module;
    since that reading of the architecture could be wrong for an exotic network, the folded
    network's output on a random batch is compared with the original's, and the original is
    restored when they differ by more than ``tolerance`` (relative to the output's scale).

    Returns
    -------
    bool
        Whether the network was folded.
    """
    import copy

    original = copy.deepcopy(model)
    folded_any = False
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (_, conv), (name, norm) in zip(children, children[1:]):
            if _foldable(conv, norm):
                _fold_pair(conv, norm)
                setattr(parent, name, _after_norm(norm))
                folded_any = True
    if not folded_any:
        return False
    probe = torch.rand(2, 3, check_size, check_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        try:
            want, got = original(probe), model(probe)
            ok = bool(((want - got).abs().max() <= tolerance * want.abs().max().clamp(min=1e-6)))
        except Exception:  # a network whose structure was misread may not even run
            ok = False
    if not ok:  # put every original subtree back
        for name, module in original.named_children():
            setattr(model, name, module)
    return ok


def _foldable(conv, norm) -> bool:
    return (isinstance(conv, nn.Conv2d) and type(norm).__name__ in ("BatchNorm2d", "BatchNormAct2d")
            and isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats
            and conv.out_channels == norm.num_features)


def _fold_pair(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    with torch.no_grad():
        scale = (norm.weight if norm.affine else torch.ones_like(norm.running_var)) / \
            (norm.running_var + norm.eps).sqrt()
        shift = (norm.bias if norm.affine else torch.zeros_like(norm.running_mean)) - \
            norm.running_mean * scale
        bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter(bias * scale + shift, requires_grad=False)


def _after_norm(norm) -> nn.Module:
    """What stays of a folded norm: timm's BatchNormAct2d keeps its dropout and activation."""
    if hasattr(norm, "act"):
        return nn.Sequential(getattr(norm, "drop", nn.Identity()), norm.act)
    return nn.Identity()
