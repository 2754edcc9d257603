"""BoTNet's MHSA layer against explicit loops of fig. 4 (projections, logits with relative positions, softmax,
values, pooling), at the built size and at another size; both attention paths; the recorder; usage errors."""

from __future__ import annotations

import math

import pytest
import torch

from visionattn.errors import UsageError
from visionattn.layers.attention_core import AttentionRecorder
from visionattn.layers.bot_attention import BoTSelfAttention2d
from visionattn.registry import create_attn, get_attn_entry


def _loop_forward(layer: BoTSelfAttention2d, x: torch.Tensor) -> torch.Tensor:
    """Fig. 4 written out: per head n and query pixel i, softmax_j(s q_i . k_j + s' q_i . r_ij) v_j, then the
    stride x stride average pooling (rounding up). q, k, v are the rows [0, C), [C, 2C), [2C, 3C) of the 1x1
    projection, each split into heads of d consecutive channels."""
    b, c, height, width = x.shape
    heads, d = layer.heads, c // layer.heads
    s = d ** -0.5
    s_rel = s if layer.scale_pos_embed else 1.0
    weight = layer.qkv.weight.detach().flatten(1)
    rel_h, rel_w = (t.detach() for t in layer.rel_pos.tables((height, width)))
    pix = x.flatten(2)  # (B, C, HW)
    out = torch.zeros(b, c, height * width, dtype=x.dtype)
    for n in range(heads):
        ch = slice(n * d, (n + 1) * d)
        q, k, v = (weight[part * c:(part + 1) * c][ch] @ pix for part in range(3))  # (B, d, HW) each
        for i in range(height * width):
            hi, wi = divmod(i, width)
            logits = []
            for j in range(height * width):
                hj, wj = divmod(j, width)
                r = rel_h[hj - hi + height - 1] + rel_w[wj - wi + width - 1]
                logits.append(s * (q[:, :, i] * k[:, :, j]).sum(1) + s_rel * (q[:, :, i] * r).sum(1))
            attn = torch.stack(logits, -1).softmax(-1)  # (B, HW)
            out[:, ch, i] = (attn[:, None, :] * v).sum(-1)
    out = out.unflatten(2, (height, width))
    st = layer.stride
    if st == 1:
        return out
    pooled = torch.zeros(b, c, math.ceil(height / st), math.ceil(width / st), dtype=x.dtype)
    for y in range(pooled.shape[2]):
        for z in range(pooled.shape[3]):
            pooled[:, :, y, z] = out[:, :, y * st:(y + 1) * st, z * st:(z + 1) * st].mean((-2, -1))
    return pooled


def _layer(size=(3, 4), **kwargs) -> BoTSelfAttention2d:
    torch.manual_seed(0)
    return BoTSelfAttention2d(8, heads=2, spatial_size=size, **kwargs).double()


def _x(size=(3, 4), b=2, seed=1) -> torch.Tensor:
    return torch.randn(b, 8, *size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("scale_pos_embed", [True, False])
@pytest.mark.parametrize("impl", ["fused", "explicit"])
def test_matches_the_loops_of_fig_4(stride, scale_pos_embed, impl):
    layer = _layer(stride=stride, scale_pos_embed=scale_pos_embed, impl=impl)
    x = _x()
    torch.testing.assert_close(layer(x), _loop_forward(layer, x))


def test_another_input_size_resamples_the_tables_and_keeps_the_formula():
    layer = _layer(size=(4, 4), stride=2)
    for size in ((5, 3), (2, 2)):
        x = _x(size)
        out = layer(x)
        assert out.shape == (2, 8, math.ceil(size[0] / 2), math.ceil(size[1] / 2))
        torch.testing.assert_close(out, _loop_forward(layer, x))
    layer(_x((6, 5))).sum().backward()
    assert layer.rel_pos.height_rel.grad.abs().sum() > 0


def test_relative_logits_make_the_layer_position_aware():
    """Without them self-attention is permutation-equivariant over the pixels; with them it is not."""
    layer = _layer(size=(4, 4))
    x = _x((4, 4))
    flipped = layer(x.flip(-1)).flip(-1)
    assert (flipped - layer(x)).abs().max() > 1e-3
    with torch.no_grad():
        layer.rel_pos.height_rel.zero_()
        layer.rel_pos.width_rel.zero_()
    torch.testing.assert_close(layer(x.flip(-1)).flip(-1), layer(x))


def test_the_recorder_sees_the_weights_of_the_fused_path():
    layer = _layer(size=(3, 4), impl="fused")
    x = _x()
    with AttentionRecorder(layer) as rec:
        layer(x)
    (weights,) = rec.weights["attend"]
    assert weights.shape == (2, 2, 12, 12)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 12, dtype=torch.float64))


def test_registered_as_a_conv_replacement_that_needs_the_size():
    entry = get_attn_entry("bot_mhsa")
    assert entry.conv_like and entry.needs_spatial_size and entry.family == "self-attention"
    layer = create_attn("bot_mhsa", 64, out_channels=64, kernel_size=3, stride=2, groups=1, spatial_size=(14, 14))
    assert layer.heads == 4 and layer.dim_head == 16  # the paper's 4 heads
    assert [k for k in layer.state_dict()] == ["qkv.weight", "rel_pos.height_rel", "rel_pos.width_rel"]
    assert layer.qkv.bias is None and layer.rel_pos.height_rel.shape == (27, 16)


@pytest.mark.parametrize("kwargs, match", [
    ({"out_channels": 16, "spatial_size": 4}, "out_channels"),
    ({"groups": 2, "spatial_size": 4}, "groups"),
    ({}, "spatial_size"),
    ({"heads": 3, "spatial_size": 4}, "heads"),
    ({"stride": 0, "spatial_size": 4}, "stride"),
    ({"scale_pos_embed": "yes", "spatial_size": 4}, "scale_pos_embed"),
])
def test_bad_arguments_are_usage_errors(kwargs, match):
    with pytest.raises(UsageError, match=match):
        BoTSelfAttention2d(8, **kwargs)
