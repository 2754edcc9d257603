"""Split attention: the output recomputed per cardinal group and per branch with plain convolutions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import visionattn
from tests.layers.direct import assert_in_place_relus_change_nothing, eval_with_trained_batch_norms
from visionattn.errors import UsageError
from visionattn.layers import SplitAttention, SplitAttention0


def _affine_bn(y: torch.Tensor, bn: nn.Module, rows: slice) -> torch.Tensor:
    """Eval-mode BatchNorm written out, with the statistics of channels ``rows``; y is (B, c, ...)."""
    shape = (1, -1) + (1,) * (y.dim() - 2)
    scale = bn.weight[rows] / torch.sqrt(bn.running_var[rows] + bn.eps)
    return (y - bn.running_mean[rows].view(shape)) * scale.view(shape) + bn.bias[rows].view(shape)


def _reference(layer: SplitAttention, x: torch.Tensor, stride: int, dilation: int) -> torch.Tensor:
    """SplAt-0 run separately on every cardinal group k, with branch i of group k fed by input block (i, k)."""
    radix, card, c = layer.radix, layer.groups, layer.out_channels
    cin_blk, c_blk = layer.channels // (radix * card), c // card  # channels per branch input / per group output
    a_blk = layer.fc1.out_channels // card
    outs = []
    for k in range(card):
        u = []
        for i in range(radix):
            g = i * card + k  # the branch convolution's group: radix-major, as in the official code
            rows = slice(g * c_blk, (g + 1) * c_blk)
            y = F.conv2d(x[:, g * cin_blk : (g + 1) * cin_blk], layer.conv.weight[rows], None, stride,
                         padding=dilation, dilation=dilation)
            u.append(torch.relu(_affine_bn(y, layer.bn0, rows)))  # eq. 8.1
        s = sum(u).mean(dim=(2, 3))  # (B, C / K)
        a_rows = slice(k * a_blk, (k + 1) * a_blk)
        z = s @ layer.fc1.weight[a_rows, :, 0, 0].T + layer.fc1.bias[a_rows]
        z = torch.relu(_affine_bn(z, layer.bn1, a_rows))
        f_rows = slice(k * radix * c_blk, (k + 1) * radix * c_blk)  # fc2's outputs of group k: (radix, C / K)
        logits = (z @ layer.fc2.weight[f_rows, :, 0, 0].T + layer.fc2.bias[f_rows]).view(-1, radix, c_blk)
        if radix == 1:
            weights = [torch.sigmoid(logits[:, 0])]
        else:
            e = torch.exp(logits)
            weights = [e[:, i] / e.sum(dim=1) for i in range(radix)]  # softmax over the radix, within group k
        outs.append(sum(w[:, :, None, None] * ui for w, ui in zip(weights, u)))
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("cls,kwargs", [
    (SplitAttention, {"groups": 2, "radix": 2, "out_channels": 6}),  # full SplAt, two cardinal groups
    (SplitAttention, {"groups": 2, "radix": 1, "stride": 2, "dilation": 2}),  # sigmoid per group
    (SplitAttention0, {"radix": 4, "out_channels": 12, "stride": 2}),  # SplAt-0, softmax over four branches
    (SplitAttention0, {"radix": 1, "dilation": 2}),  # SplAt-0 with r = 1: sigmoid
])
def test_output_matches_equations(cls, kwargs):
    layer = eval_with_trained_batch_norms(cls(8, rd_channels=4, **kwargs), 8)
    x = torch.randn(2, 8, 7, 6, generator=torch.Generator().manual_seed(0))
    expected = _reference(layer, x, kwargs.get("stride", 1), kwargs.get("dilation", 1))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-4)


def test_attention_sums_to_one_within_each_cardinal_group():
    layer = eval_with_trained_batch_norms(SplitAttention(12, groups=2, radix=3, rd_channels=4, out_channels=6), 12)
    with torch.no_grad():
        a = layer.attention(torch.randn(3, 12, 5, 5))
    assert a.shape == (3, 3, 6)
    torch.testing.assert_close(a.sum(dim=1), torch.ones(3, 6))


def test_resnest_defaults_and_parameter_count():
    layer = visionattn.create_attn("splat", 64)  # ResNeSt-50's first-stage SplAt: radix 2, cardinality 1
    assert (layer.radix, layer.groups) == (2, 1)
    assert layer.conv.groups == 2 and layer.conv.bias is None
    assert layer.fc1.out_channels == 32  # max(64 * 2 / 4, 32)
    assert SplitAttention(256).fc1.out_channels == 128  # 256 * 2 / 4
    assert SplitAttention(64, groups=2, radix=1, min_rd=1).fc1.out_channels == 16  # 64 * 1 / 4
    # conv 128*32*9, bn0 2*128, fc1 64*32+32, bn1 2*32, fc2 32*128+128: the official SplAtConv2d(64, 64)
    assert sum(p.numel() for p in layer.parameters()) == 36864 + 256 + 2080 + 64 + 4224


@pytest.mark.bad_input
@pytest.mark.parametrize("kwargs,match", [
    ({"channels": 5}, "channels must be divisible by groups \\* radix = 1 \\* 2"),
    ({"channels": 8, "groups": 8}, "channels must be divisible by groups \\* radix = 8 \\* 2"),
    ({"channels": 8, "groups": 2, "out_channels": 5}, "out_channels must be divisible by groups=2"),
    ({"channels": 8, "kernel_size": 2}, "kernel_size must be odd"),
    ({"channels": 8, "radix": 0}, "radix"),
    ({"channels": 8, "groups": 2, "rd_channels": 5}, "rd_channels must be divisible by groups=2"),
    ({"channels": 8, "rd_ratio": -1.0}, "rd_ratio"),
    ({"channels": 8, "bias": "false"}, "bias must be True or False, got 'false'"),
    ({"channels": 8, "min_rd": 0}, "min_rd must be an integer >= 1, got 0"),
    ({"channels": 8, "stride": -1}, "stride must be an integer >= 1, got -1"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(UsageError, match=match):
        SplitAttention(**kwargs)


def test_splat0_has_one_cardinal_group():
    with pytest.raises(ValueError, match="groups \\(cardinality\\) of SplAt-0 must be 1, got 2"):
        visionattn.create_attn("splat0", 8, groups=2)
    assert visionattn.create_attn("splat0", 8).groups == 1


def test_bad_input_raises_value_error():
    layer = SplitAttention(8)
    with pytest.raises(ValueError, match="8 input channels"):
        layer(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match="4-D"):
        layer.attention(torch.randn(8, 5, 5))


def test_in_place_activations_change_nothing_in_training():
    """Both ReLUs run in place on their BatchNorm's output (as timm's): the same output and gradients, bit for
    bit, as the same layer with out-of-place ReLUs."""
    layer = SplitAttention(8, groups=2, radix=2, rd_channels=4).train()
    assert layer.act0.inplace and layer.act1.inplace
    assert_in_place_relus_change_nothing(layer, torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(0)))
