"""Turning a classification network into a frozen feature extractor.

:class:`FeatureExtractor` wraps a network, normalises its input, captures the output of the
requested layers with forward hooks (stopping the forward pass as soon as every requested
layer has been seen, so an early layer costs only the early part of the network) and pools
each captured tensor into one vector per image.
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from .exceptions import LayerError

__all__ = ["FeatureExtractor", "POOLINGS", "pool_features", "DEFAULT_LAYER"]

POOLINGS = ("avg", "max", "gem", "cls", "none")
#: Name under which the default (penultimate) features are returned.
DEFAULT_LAYER = "default"
_GEM_P = 3.0


class _StopForward(Exception):
    """Raised by the last capture hook to skip the rest of the network."""


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

    def _capture(self, x) -> dict:
        wanted = set(self.layers)
        captured: dict = {}
        handles = []

        def make_hook(layer, mode):
            def hook(module, args, output=None):
                value = args[0] if mode == "input" else output
                captured[layer] = value[0] if isinstance(value, (tuple, list)) else value
                if wanted.issubset(captured):
                    raise _StopForward
            return hook

        try:
            for layer, (module, mode) in self._targets.items():
                if mode == "input":
                    handles.append(module.register_forward_pre_hook(make_hook(layer, mode)))
                elif mode == "output":
                    handles.append(module.register_forward_hook(make_hook(layer, mode)))
            if None in wanted and self._use_forward_features:
                captured[None] = self.model.forward_features(x)
            else:
                self.model(x)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        lost = [layer for layer in self.layers if layer not in captured]
        if lost:
            raise LayerError(f"layers {lost} were never reached in the forward pass.")
        return captured
