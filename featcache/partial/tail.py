"""The trainable tail: the last stages of a pretrained network and a new head.

:func:`build_tail` copies the trainable stages out of a freshly built network (with its
pretrained weights, BatchNorm not folded) and adds a new linear head; :class:`Tail` runs them
on a cached activation of the frozen prefix. :func:`tail_state` / :func:`load_tail_state`
turn the trained weights into plain numpy arrays and back, so a fitted estimator pickles
arrays, never a torch module.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
from torch import nn

from .depthwise import use_fast_depthwise

__all__ = ["Tail", "build_tail", "tail_state", "load_tail_state"]


class Tail(nn.Module):
    """Trainable stages (applied in order), a pooling and a linear head.

    Parameters
    ----------
    stages : list of nn.Module
        The modules of the trainable stages, in forward order (empty: the head alone).
    pool : {"avg", "cls", None}
        How the last stage's output becomes one vector: mean over a feature map's positions,
        the class token of a sequence, or None when the input is already a vector.
    head : nn.Linear
    batchnorm : {"frozen", "train"}
        ``"frozen"``: BatchNorm layers of the stages keep their pretrained running statistics
        (evaluation mode) while their affine weights train; ``"train"``: they normalise with
        batch statistics and update their running statistics.
    """

    def __init__(self, stages, pool, head: nn.Linear, batchnorm: str = "frozen"):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.pool, self.head, self.batchnorm = pool, head, batchnorm

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.batchnorm == "frozen":
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled vector the head reads."""
        for stage in self.stages:
            x = stage(x)
        if self.pool == "avg" and x.ndim == 4:
            return x.mean(dim=(2, 3))
        if self.pool == "avg" and x.ndim == 3:
            return x.mean(dim=1)
        if self.pool == "cls":
            return x[:, 0]
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_tail(network: nn.Module, module_names, pool, row_shape, n_outputs: int, *,
               batchnorm: str = "frozen", seed: int = 0, fast_depthwise: bool = True) -> Tail:
    """A :class:`Tail` of copies of ``network``'s modules ``module_names`` and a new head.

    The head's width is found by running the stages on one zero row of ``row_shape``; it is
    initialised from ``seed`` (PyTorch's default ``nn.Linear`` initialisation). With
    ``fast_depthwise``, plain depthwise convolutions become
    :class:`~featcache.partial.depthwise.DepthwiseConv2d` (same weights and keys, a faster
    weight gradient where the kernel outgrows the map); without, the stages are exact copies.
    """
    modules = dict(network.named_modules())
    stages = [copy.deepcopy(modules[name]) for name in module_names]
    if fast_depthwise:
        stages = [use_fast_depthwise(stage) for stage in stages]
    probe = Tail(stages, pool if module_names else None, nn.Identity(), batchnorm).eval()
    with torch.no_grad():
        width = probe.features(torch.zeros(1, *row_shape)).shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(int(width), int(n_outputs))
    tail = Tail(stages, pool if module_names else None, head, batchnorm)
    for p in tail.parameters():
        p.requires_grad_(True)
    return tail


def tail_state(tail: Tail) -> dict:
    """The tail's parameters and buffers as numpy arrays (a copy)."""
    return {name: t.detach().cpu().numpy().copy() for name, t in tail.state_dict().items()}


def load_tail_state(tail: Tail, state: dict) -> Tail:
    """Load numpy arrays from :func:`tail_state` into ``tail`` (every key and shape checked)."""
    tensors = {name: torch.from_numpy(np.asarray(a).copy()) for name, a in state.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        tail.load_state_dict(tensors, strict=True)
    return tail
