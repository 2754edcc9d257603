"""Selective kernel: the output recomputed branch by branch from eq. 7.1-7.7 with the layer's own weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import visionattn
from tests.layers.direct import assert_in_place_relus_change_nothing, batch_norm_eval, eval_with_trained_batch_norms
from visionattn.errors import UsageError
from visionattn.layers import SelectiveKernel


def _reference(layer: SelectiveKernel, x: torch.Tensor, stride: int) -> torch.Tensor:
    m = len(layer.paths)
    u = []
    inputs = x.chunk(m, dim=1) if layer.split_input else [x] * m
    for level, (path, xin) in enumerate(zip(layer.paths, inputs), start=1):  # eq. 7.1, path l: 3x3 dilated by l
        y = F.conv2d(xin, path.conv.weight, None, stride, padding=level, dilation=level, groups=path.conv.groups)
        u.append(torch.relu(batch_norm_eval(y, path.bn)))
    s = sum(u).mean(dim=(2, 3))  # eq. 7.2-7.3
    w_reduce = layer.attn.fc_reduce.weight.flatten(1)  # a 1x1 convolution is the fully connected layer W
    z = torch.relu(batch_norm_eval(s @ w_reduce.T, layer.attn.bn))  # eq. 7.4
    c = layer.out_channels
    w_select = layer.attn.fc_select.weight.flatten(1)
    logits = [z @ w_select[j * c : (j + 1) * c].T for j in range(m)]  # eq. 7.5, W_l per path
    out = torch.zeros_like(u[0])
    for b in range(x.shape[0]):
        for i in range(c):
            denom = sum(torch.exp(logits[j][b, i]) for j in range(m))  # eq. 7.6
            for j in range(m):
                out[b, i] += torch.exp(logits[j][b, i]) / denom * u[j][b, i]  # eq. 7.7
    return out


@pytest.mark.parametrize("stride,branches,out_channels,split", [(1, 2, 6, False), (2, 3, 4, False), (2, 2, 6, True)])
def test_output_matches_equations(stride, branches, out_channels, split):
    channels = 6 if split else 4
    sk = SelectiveKernel(channels, out_channels, stride=stride, groups=1 if split else 2, num_branches=branches,
                         rd_channels=5, split_input=split)
    layer = eval_with_trained_batch_norms(sk, channels)
    x = torch.randn(2, channels, 7, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _reference(layer, x, stride), atol=1e-5, rtol=1e-4)


def test_dilated_branch_is_a_5x5_kernel():
    """Branch 2 (3x3, dilation 2) is the 5x5 convolution of the paper's figure with zeros between taps."""
    layer = SelectiveKernel(4, groups=1, rd_channels=4)
    w3 = layer.paths[1].conv.weight
    w5 = torch.zeros(*w3.shape[:2], 5, 5)
    w5[:, :, ::2, ::2] = w3
    x = torch.randn(1, 4, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(layer.paths[1].conv(x), F.conv2d(x, w5, padding=2))


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
    assert len(layer.paths) == 2  # M = 2
    assert [p.conv.dilation for p in layer.paths] == [(1, 1), (2, 2)]
    assert layer.paths[0].conv.groups == 32  # G = 32
    assert layer.attn.fc_reduce.out_channels == 32  # d = max(64 / 16, L = 32)
    assert SelectiveKernel(1024).attn.fc_reduce.out_channels == 64  # d = 1024 / 16
    assert SelectiveKernel(64, rd_channels=8).attn.fc_reduce.out_channels == 8


def test_split_input_feeds_each_path_its_slice():
    """timm's SK-ResNet-18/34 variant: path l convolves only the l-th of M slices of the input channels."""
    layer = SelectiveKernel(64, groups=1, split_input=True).eval()
    assert [p.conv.in_channels for p in layer.paths] == [32, 32]
    x = torch.randn(2, 64, 6, 6)
    with torch.no_grad():
        u = layer.split(x)
        torch.testing.assert_close(u[:, 1], layer.paths[1](x[:, 32:]))


@pytest.mark.bad_input
@pytest.mark.parametrize("kwargs,match", [
    ({"channels": 48}, "channels must be divisible by groups=32"),
    ({"channels": 32, "out_channels": 40}, "out_channels must be divisible by groups=32"),
    ({"channels": 32, "kernel_size": 4}, "kernel_size must be odd"),
    ({"channels": 32, "num_branches": 0}, "num_branches"),
    ({"channels": 33, "groups": 1, "split_input": True}, "split_input needs channels divisible by num_branches"),
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


def test_in_place_activations_change_nothing_in_training():
    """The paths and the fuse step apply ReLU in place (as timm does, no new tensor): the same output and
    gradients, bit for bit, as the same layer with out-of-place ReLUs."""
    layer = SelectiveKernel(8, groups=2, rd_channels=4).train()
    acts = [m for m in layer.modules() if isinstance(m, torch.nn.ReLU)]
    assert len(acts) == 3 and all(m.inplace for m in acts)  # two paths and the fuse step
    assert_in_place_relus_change_nothing(layer, torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(0)))
