"""Depthwise convolutions whose weight gradient stays fast when the kernel outgrows the map.

On a CPU, PyTorch's (oneDNN's) weight gradient of a depthwise convolution is slow when the
kernel is larger than the feature map it produces: EfficientNet's 5x5 kernels on the 3x3
maps of its last stages at 96 px took 40-110 ms per call at batch 64 on the 2-core
development machine, against under 1 ms for the forward pass, and were three quarters of a
trainable tail's training step. The same gradient is a depthwise *forward* convolution: each
(sample, channel) pair's input correlated with its output gradient, summed over the batch,
which ran in 2-20 ms there. Where the kernel fits in the map, PyTorch's own gradient was as
fast or faster, so :class:`DepthwiseConv2d` uses the forward-convolution form only on a CPU,
while training, outside autocast, when the kernel is larger than the output map; everywhere
else it is :class:`torch.nn.Conv2d`. Both forms compute the same sum in float32, in a
different order (they agree to float32 rounding; tested).

:func:`use_fast_depthwise` swaps a module tree's plain depthwise convolutions for
:class:`DepthwiseConv2d` in place, keeping their parameters (and so every state-dict key).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["DepthwiseConv2d", "depthwise_weight_grad", "use_fast_depthwise"]


def depthwise_weight_grad(x: torch.Tensor, grad: torch.Tensor, kernel_size, stride,
                          padding) -> torch.Tensor:
    """The weight gradient ``(C, 1, kh, kw)`` of a depthwise convolution (dilation 1).

    ``x``: the convolution's input ``(N, C, H, W)``; ``grad``: the gradient of its output
    ``(N, C, Ho, Wo)``. Computed as a forward convolution over ``N * C`` groups (the output
    gradient as the kernel, dilated by the stride), summed over the batch.
    """
    n, c, h, w = x.shape
    kh, kw = kernel_size
    per_sample = F.conv2d(x.contiguous().view(1, n * c, h, w),
                          grad.contiguous().view(n * c, 1, *grad.shape[-2:]),
                          padding=tuple(padding), dilation=tuple(stride), groups=n * c)
    return per_sample[..., :kh, :kw].reshape(n, c, kh, kw).sum(dim=0).unsqueeze(1)


class _DepthwiseConv2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, bias, stride, padding, 1, weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, list(ctx.stride), list(ctx.padding), [1, 1], False,
                [0, 0], weight.shape[0], [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_weight = depthwise_weight_grad(x, grad, weight.shape[-2:], ctx.stride,
                                                ctx.padding)
        if ctx.needs_input_grad[2]:   # False when there is no bias
            grad_bias = grad.sum(dim=(0, 2, 3))
        return grad_x, grad_weight, grad_bias, None, None


def _cpu_autocast_enabled() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_cpu_enabled()


def _is_plain_depthwise(module: nn.Module) -> bool:
    """An exact :class:`torch.nn.Conv2d` (not a subclass with its own forward, such as
    timm's ``Conv2dSame``) with one group per channel, numeric zero padding, dilation 1."""
    return (type(module) is nn.Conv2d and module.groups > 1
            and module.groups == module.in_channels == module.out_channels
            and module.padding_mode == "zeros" and not isinstance(module.padding, str)
            and tuple(module.dilation) == (1, 1))


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise :class:`torch.nn.Conv2d` with a faster weight gradient on small CPU maps.

    Build it with :func:`use_fast_depthwise`; its parameters, buffers and state-dict keys
    are those of the convolution it replaces.
    """

    def kernel_outgrows_map(self, x: torch.Tensor) -> bool:
        """Whether the kernel is larger than the output map of input ``x``."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        out_h = (x.shape[-2] + 2 * ph - kh) // sh + 1
        out_w = (x.shape[-1] + 2 * pw - kw) // sw + 1
        return kh > out_h or kw > out_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.ndim == 4 and torch.is_grad_enabled()
                and self.weight.requires_grad and not _cpu_autocast_enabled()
                and x.dtype == self.weight.dtype and self.kernel_outgrows_map(x)):
            return _DepthwiseConv2dFunction.apply(x, self.weight, self.bias,
                                                  tuple(self.stride), tuple(self.padding))
        return super().forward(x)


def use_fast_depthwise(module: nn.Module) -> nn.Module:
    """Replace ``module``'s plain depthwise convolutions by :class:`DepthwiseConv2d`, in
    place, sharing their parameters; returns ``module``."""
    targets = [name for name, m in module.named_modules() if name and _is_plain_depthwise(m)]
    for name in targets:
        old = module.get_submodule(name)
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        new = DepthwiseConv2d(old.in_channels, old.out_channels, old.kernel_size,
                              stride=old.stride, padding=old.padding, groups=old.groups,
                              bias=old.bias is not None, device="meta")
        new.weight, new.bias = old.weight, old.bias
        new.train(old.training)
        setattr(parent, attr, new)
    return module
