"""The classic frozen-prefix fine-tune, for comparison: the prefix recomputed every step.

This is what fastai's ``freeze_to``, timm's ``freeze`` or a hand-written loop do: the frozen
layers (``requires_grad_(False)``, ``eval()``) run on every batch of every epoch under
``no_grad``. :func:`classic_inputs` gives :func:`featcache.partial.training.train_tail` its
rows that way, so the equivalence test and ``benchmarks/partial_freezing.py`` train the same
tail with the same loop, once from the cache and once the classic way. Test code: it lives in
tests/, not in the library (the benchmark puts tests/ on its path).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["FrozenPrefix", "classic_inputs"]


class FrozenPrefix(torch.nn.Module):
    """The network up to (and including) module ``layer``, frozen: ``images -> activation``.

    ``images`` are float ``(n, 3, S, S)`` in [0, 1]; they are normalised with ``mean``/``std``
    as the cache's extractor does. The forward pass stops after ``layer``.
    """

    def __init__(self, network, layer: str, mean, std):
        super().__init__()
        self.network, self.layer = network.eval().requires_grad_(False), layer
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self._module = dict(network.named_modules())[layer]

    def forward(self, images):
        captured = {}

        class _Stop(Exception):
            pass

        def hook(module, args, output):
            captured["out"] = output
            raise _Stop

        handle = self._module.register_forward_hook(hook)
        try:
            self.network((images - self.mean) / self.std)
        except _Stop:
            pass
        finally:
            handle.remove()
        return captured["out"]


def classic_inputs(prefix: FrozenPrefix, images: np.ndarray, *, pooling=None, device=None,
                   autocast=None):
    """``inputs(positions, views)`` that recomputes the prefix on ``images[positions]``.

    ``images``: uint8 ``(n, S, S, 3)`` at the network's input size. ``pooling="avg"`` or
    ``"cls"`` reduces the activation to a vector (for ``trainable_blocks=0``). With a
    ``device``, the prefix runs there (each batch of uint8 images is sent to it, as a data
    loader would) and the rows come back as a tensor on it; else as a CPU array.
    ``autocast`` (a torch dtype such as ``torch.bfloat16``) runs the prefix under autocast
    on the device, as a mixed-precision fine-tune would.
    """
    if device is not None:
        prefix.to(device)
    kind = torch.device(device).type if device is not None else "cpu"

    def inputs(positions, views=None):
        x = torch.from_numpy(np.ascontiguousarray(images[positions])).permute(0, 3, 1, 2)
        if device is not None:
            x = x.to(device)
        x = x.float().div(255.0).contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast(kind, dtype=autocast or torch.float32,
                                             enabled=autocast is not None):
            out = prefix(x)
        if pooling == "avg":
            out = out.mean(dim=(2, 3)) if out.ndim == 4 else out.mean(dim=1)
        elif pooling == "cls":
            out = out[:, 0]
        return out.float() if device is not None else out.float().numpy()

    return inputs
