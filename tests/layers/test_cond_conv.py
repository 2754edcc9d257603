"""CondConv: the batched output equals a loop that builds each sample's kernel and convolves that sample alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import visionattn
from visionattn.errors import UsageError
from visionattn.layers import CondConv2d


def _reference(layer: CondConv2d, x: torch.Tensor) -> torch.Tensor:
    outs = []
    for b in range(x.shape[0]):
        pooled = x[b].mean(dim=(1, 2))
        a = torch.sigmoid(layer.router.weight @ pooled + layer.router.bias)  # eq. 9.1
        weight = sum(a[n] * layer.weight[n] for n in range(layer.num_experts))  # eq. 9.2
        bias = None if layer.bias is None else sum(a[n] * layer.bias[n] for n in range(layer.num_experts))
        outs.append(F.conv2d(x[b : b + 1], weight, bias, layer.stride, layer.padding, layer.dilation,
                             layer.groups))  # eq. 9.3, this sample alone
    return torch.cat(outs)


@pytest.mark.parametrize("kwargs", [
    {},
    {"out_channels": 6, "stride": 2, "groups": 2, "bias": True, "num_experts": 3},
    {"kernel_size": 2, "padding": 0, "dilation": 2, "bias": True},  # even kernel with explicit padding
    {"kernel_size": (1, 3), "out_channels": 8},
])
def test_output_matches_per_sample_loop(kwargs):
    torch.manual_seed(0)
    layer = CondConv2d(4, **kwargs)
    x = torch.randn(3, 4, 7, 6)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _reference(layer, x), atol=1e-5, rtol=1e-4)


def test_routing_is_independent_sigmoids():
    layer = CondConv2d(4, num_experts=5)
    with torch.no_grad():
        layer.router.bias.fill_(3.0)
        a = layer.routing_weights(torch.randn(2, 4, 5, 5))
    assert a.shape == (2, 5)
    assert ((a > 0) & (a < 1)).all()
    assert (a.sum(dim=1) > 4).all()  # not normalised to 1, unlike dynamic convolution


def test_defaults_and_parameter_count():
    layer = visionattn.create_attn("condconv", 16)
    assert (layer.num_experts, layer.kernel_size, layer.padding, layer.bias) == (8, (3, 3), (1, 1), None)
    assert sum(p.numel() for p in layer.parameters()) == 8 * 16 * 16 * 9 + (16 * 8 + 8)


@pytest.mark.bad_input
@pytest.mark.parametrize("kwargs,match", [
    ({"channels": 6, "groups": 4}, "channels must be divisible by groups=4"),
    ({"channels": 8, "out_channels": 6, "groups": 4}, "out_channels must be divisible by groups=4"),
    ({"channels": 8, "kernel_size": 4}, "kernel_size must be odd"),
    ({"channels": 8, "padding": -1}, "padding"),
    ({"channels": 8, "num_experts": 0}, "num_experts"),
    ({"channels": 8, "stride": 0}, "stride"),
    ({"channels": 8, "padding": (1, 1, 1)}, "padding must be None, an int or a pair of ints"),
    ({"channels": 8, "bias": 1}, "bias must be True or False, got 1"),
    ({"channels": 8, "kernel_size": (3, 0)}, "kernel_size must be an integer >= 1, got 0"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(UsageError, match=match):
        CondConv2d(**kwargs)


def test_bad_input_raises_value_error():
    layer = CondConv2d(8)
    with pytest.raises(ValueError, match="8 input channels"):
        layer(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match="4-D"):
        layer.routing_weights(torch.randn(8, 5, 5))
