"""DepthwiseConv2d: the same convolution and gradients as torch's, a different weight-gradient form."""

import copy

import pytest
import torch
from torch import nn

from featcache.partial.depthwise import (DepthwiseConv2d, depthwise_weight_grad,
                                         use_fast_depthwise)


def _pair(channels=6, kernel=5, stride=1, padding=2, bias=False, fmt=torch.contiguous_format):
    torch.manual_seed(0)
    plain = nn.Conv2d(channels, channels, kernel, stride=stride, padding=padding,
                      groups=channels, bias=bias)
    fast = use_fast_depthwise(nn.Sequential(copy.deepcopy(plain)))[0]
    return plain.to(memory_format=fmt), fast.to(memory_format=fmt)


def _grads(conv, x, g):
    x = x.clone().requires_grad_(True)
    conv.zero_grad()
    out = conv(x)
    out.backward(g)
    return out.detach(), x.grad, conv.weight.grad, None if conv.bias is None else conv.bias.grad


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("shape,kernel,stride,padding,bias", [
    ((4, 6, 3, 3), 5, 1, 2, False),     # EfficientNet's last stages at 96 px
    ((4, 6, 2, 2), 3, 1, 1, True),
    ((3, 5, 1, 1), 5, 1, 2, False),
    ((4, 6, 6, 6), 5, 2, 2, True),      # stride 2: a 3x3 output map
    ((2, 4, 4, 3), (5, 3), 1, (2, 1), False),
])
def test_matches_torch_depthwise_convolution(shape, kernel, stride, padding, bias, fmt):
    plain, fast = _pair(shape[1], kernel, stride, padding, bias, fmt)
    x = torch.randn(*shape).contiguous(memory_format=fmt)
    out = plain(x)
    g = torch.randn_like(out)
    ours, theirs = _grads(fast, x, g), _grads(plain, x, g)
    assert fast.kernel_outgrows_map(x)
    for a, b in zip(ours, theirs):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_the_fast_gradient_runs_only_where_the_kernel_outgrows_the_map():
    _, fast = _pair(kernel=5, padding=2)
    small = torch.randn(2, 6, 3, 3, requires_grad=True)
    large = torch.randn(2, 6, 7, 7, requires_grad=True)
    assert type(fast(small).grad_fn).__name__ == "_DepthwiseConv2dFunctionBackward"
    assert type(fast(large).grad_fn).__name__ == "ConvolutionBackward0"
    with torch.no_grad():
        assert fast(small).grad_fn is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert type(fast(small).grad_fn).__name__ == "ConvolutionBackward0"
    fast.weight.requires_grad_(False)   # a frozen convolution: torch's own path
    assert type(fast(small).grad_fn).__name__ == "ConvolutionBackward0"


def test_weight_gradient_is_exact_in_float64():
    x = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    w = torch.randn(4, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    out = torch.nn.functional.conv2d(x, w, padding=2, groups=4)
    g = torch.randn_like(out)
    (expected,) = torch.autograd.grad(out, w, g)
    torch.testing.assert_close(depthwise_weight_grad(x, g, (5, 5), (1, 1), (2, 2)), expected)
    conv = DepthwiseConv2d(4, 4, 5, padding=2, groups=4, bias=True).double()
    assert torch.autograd.gradcheck(conv, (torch.randn(2, 4, 3, 3, dtype=torch.float64,
                                                       requires_grad=True),))


def test_use_fast_depthwise_swaps_only_plain_depthwise_convolutions():
    class Same(nn.Conv2d):           # like timm's Conv2dSame: its own forward, left alone
        pass

    net = nn.Sequential(nn.Conv2d(4, 8, 1), nn.Conv2d(8, 8, 5, padding=2, groups=8),
                        nn.Sequential(Same(8, 8, 3, groups=8), nn.Conv2d(8, 8, 3, padding=1,
                                                                         groups=8)),
                        nn.Conv2d(8, 8, 3, padding="same", groups=8),
                        nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    weight = net[1].weight
    use_fast_depthwise(net)
    kinds = [type(m).__name__ for m in (net[0], net[1], net[2][0], net[2][1], net[3], net[4])]
    assert kinds == ["Conv2d", "DepthwiseConv2d", "Same", "DepthwiseConv2d", "Conv2d", "Conv2d"]
    assert net[1].weight is weight
    after = net.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
