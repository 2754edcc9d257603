"""Selective kernel: the output recomputed branch by branch from eq. 7.1-7.7 with the layer's own weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import visionattn
from tests.layers.direct import batch_norm_eval, eval_with_trained_batch_norms
from visionattn.errors import UsageError
from visionattn.layers import SelectiveKernel


def _reference(layer: SelectiveKernel, x: torch.Tensor, stride: int) -> torch.Tensor:
    m = len(layer.split.branches)
    u = []
    for level, branch in enumerate(layer.split.branches, start=1):  # eq. 7.1, branch l: 3x3 dilated by l
        conv, bn = branch[0], branch[1]
        y = F.conv2d(x, conv.weight, None, stride, padding=level, dilation=level, groups=conv.groups)
        u.append(torch.relu(batch_norm_eval(y, bn)))
    s = sum(u).mean(dim=(2, 3))  # eq. 7.2-7.3
    z = torch.relu(batch_norm_eval(s @ layer.fuse.fc.weight.T, layer.fuse.bn))  # eq. 7.4
    c = layer.out_channels
    logits = [z @ layer.select.fc.weight[j * c : (j + 1) * c].T for j in range(m)]  # eq. 7.5, W_l per branch
    out = torch.zeros_like(u[0])
    for b in range(x.shape[0]):
        for i in range(c):
            denom = sum(torch.exp(logits[j][b, i]) for j in range(m))  # eq. 7.6
            for j in range(m):
                out[b, i] += torch.exp(logits[j][b, i]) / denom * u[j][b, i]  # eq. 7.7
    return out


@pytest.mark.parametrize("stride,branches,out_channels", [(1, 2, 6), (2, 3, 4)])
def test_output_matches_equations(stride, branches, out_channels):
    sk = SelectiveKernel(4, out_channels, stride=stride, groups=2, num_branches=branches, rd_channels=5)
    layer = eval_with_trained_batch_norms(sk, 4)
    x = torch.randn(2, 4, 7, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _reference(layer, x, stride), atol=1e-5, rtol=1e-4)


def test_dilated_branch_is_a_5x5_kernel():
    """Branch 2 (3x3, dilation 2) is the 5x5 convolution of the paper's figure with zeros between taps."""
    layer = SelectiveKernel(4, groups=1, rd_channels=4)
    w3 = layer.split.branches[1][0].weight
    w5 = torch.zeros(*w3.shape[:2], 5, 5)
    w5[:, :, ::2, ::2] = w3
    x = torch.randn(1, 4, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(layer.split.branches[1][0](x), F.conv2d(x, w5, padding=2))


def test_attention_is_a_softmax_over_branches_per_channel():
    layer = eval_with_trained_batch_norms(SelectiveKernel(8, groups=4, num_branches=3), 8)
    with torch.no_grad():
        a = layer.attention(torch.randn(3, 8, 5, 5))
    assert a.shape == (3, 3, 8)
    assert (a > 0).all()
    torch.testing.assert_close(a.sum(dim=1), torch.ones(3, 8))
    assert not torch.allclose(a[:, :, 0], a[:, :, 1])  # per channel, not one weight per branch


def test_paper_defaults():
    layer = visionattn.create_attn("sk", 64)
    assert len(layer.split.branches) == 2  # M = 2
    assert [b[0].dilation for b in layer.split.branches] == [(1, 1), (2, 2)]
    assert layer.split.branches[0][0].groups == 32  # G = 32
    assert layer.fuse.fc.out_features == 32  # d = max(64 / 16, L = 32)
    assert SelectiveKernel(1024).fuse.fc.out_features == 64  # d = 1024 / 16
    assert SelectiveKernel(64, rd_channels=8).fuse.fc.out_features == 8


@pytest.mark.bad_input
@pytest.mark.parametrize("kwargs,match", [
    ({"channels": 48}, "channels must be divisible by groups=32"),
    ({"channels": 32, "out_channels": 40}, "out_channels must be divisible by groups=32"),
    ({"channels": 32, "kernel_size": 4}, "kernel_size must be odd"),
    ({"channels": 32, "num_branches": 0}, "num_branches"),
    ({"channels": 32, "rd_ratio": 0}, "rd_ratio"),
    ({"channels": 32, "min_rd": 0}, "min_rd"),
    ({"channels": 0}, "channels"),
    ({"channels": 32, "groups": 0}, "groups must be an integer >= 1, got 0"),
    ({"channels": 32, "stride": 0}, "stride must be an integer >= 1, got 0"),
    ({"channels": 32, "dilation": (1, 0)}, "dilation must be an integer >= 1, got 0"),
    ({"channels": 32, "rd_ratio": float("nan")}, "rd_ratio: got nan, needed a finite number"),
    ({"channels": 32, "act_layer": "rellu"}, "act_layer: 'rellu' is not a known activation; did you mean 'relu'"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(UsageError, match=match):
        SelectiveKernel(**kwargs)


def test_bad_input_raises_value_error():
    layer = SelectiveKernel(32)
    with pytest.raises(ValueError, match="32 input channels"):
        layer(torch.randn(2, 16, 5, 5))
    with pytest.raises(ValueError, match="4-D"):
        layer.attention(torch.randn(32, 5, 5))
