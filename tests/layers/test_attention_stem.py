"""The SASA attention stem (spatially aware values, eq. 5-6) against a loop over pixels, heads and window slots."""

from __future__ import annotations

import math

import pytest
import torch

import visionattn
from visionattn.errors import UsageError
from visionattn.layers.attention_stem import AttentionStem2d


def stem_by_loops(layer: AttentionStem2d, x: torch.Tensor) -> torch.Tensor:
    """SASA eq. 2-3 with the values of eq. 5-6, written out for every query pixel, head and window slot."""
    b, c_in, h, w = x.shape
    k, heads, n_mix = layer.kernel_size, layer.heads, layer.mixtures
    d_out = layer.out_channels
    d = d_out // heads
    w_q, w_k = layer.qk.weight[:d_out, :, 0, 0], layer.qk.weight[d_out:, :, 0, 0]
    w_v = layer.values.weight[:, :, 0, 0].reshape(n_mix, d_out, c_in)
    rows, cols, nu = layer.mixture.rows, layer.mixture.cols, layer.mixture.mix
    out = torch.zeros(b, d_out, h, w, dtype=x.dtype)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                q = w_q @ x[n, :, i, j]
                slots = []  # (logit per head, value) of every window position the query attends to
                for a in range(k):
                    for bb in range(k):
                        y, z = i + a - k // 2, j + bb - k // 2
                        inside = 0 <= y < h and 0 <= z < w
                        if not inside and layer.border == "mask":
                            continue
                        pixel = x[n, :, y, z] if inside else torch.zeros(c_in, dtype=x.dtype)
                        # r: the row-offset embedding in the first half of d_out, the column one in the second
                        r = torch.cat([layer.rel.rows[a], layer.rel.cols[bb]])
                        key = w_k @ pixel + r
                        mix_logits = torch.stack([(rows[a] + cols[bb]) @ nu[m] for m in range(n_mix)])
                        p = torch.exp(mix_logits) / torch.exp(mix_logits).sum()
                        value = sum(p[m] * (w_v[m] @ pixel) for m in range(n_mix))
                        logit = [layer.scale * (q[g * d:(g + 1) * d] @ key[g * d:(g + 1) * d]) for g in range(heads)]
                        slots.append((torch.stack(logit), value))
                logits = torch.stack([s[0] for s in slots])  # (slots, heads)
                attn = torch.exp(logits - logits.max(0).values) / torch.exp(logits - logits.max(0).values).sum(0)
                for g in range(heads):
                    out[n, g * d:(g + 1) * d, i, j] = sum(attn[s, g] * slots[s][1][g * d:(g + 1) * d]
                                                          for s in range(len(slots)))
    return out


@pytest.mark.parametrize("border", ["mask", "zero"])
@pytest.mark.parametrize("k,heads,mixtures,size", [(4, 1, 4, (5, 4)), (3, 2, 3, (4, 5))])
def test_matches_the_paper_by_loops(border, k, heads, mixtures, size):
    torch.manual_seed(0)
    layer = AttentionStem2d(3, 8, kernel_size=k, heads=heads, mixtures=mixtures, border=border).double()
    with torch.no_grad():  # a sharper mixture than at initialisation, so that the position weights matter
        layer.mixture.mix.mul_(3.0)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    torch.testing.assert_close(layer(x), stem_by_loops(layer, x), rtol=1e-10, atol=1e-10)


def test_values_depend_on_the_window_position():
    """With one mixture p = 1 everywhere and the stem is plain local attention; with several the value of a key
    changes with where it sits in the query's window."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    layer = AttentionStem2d(3, 8, mixtures=2).double()
    p = layer.mixture()
    assert p.shape == (4, 4, 2)
    torch.testing.assert_close(p.sum(-1), torch.ones(4, 4, dtype=torch.float64))
    assert p[..., 0].std() > 0.01
    y = layer(x)
    with torch.no_grad():  # equal value projections: the mixture no longer matters
        layer.values.weight[8:] = layer.values.weight[:8]
    single = AttentionStem2d(3, 8, mixtures=1).double()
    single.load_state_dict({**layer.state_dict(), "values.weight": layer.values.weight[:8],
                            "mixture.mix": layer.mixture.mix[:1]})
    torch.testing.assert_close(layer(x), single(x))
    assert not torch.allclose(y, single(x))


def test_stride_is_attention_then_average_pooling():
    torch.manual_seed(0)
    layer = AttentionStem2d(3, 16, stride=2)
    x = torch.randn(2, 3, 9, 8)
    full = layer.stride, layer.stride
    layer.stride = 1
    dense = layer(x)
    layer.stride = full[0]
    torch.testing.assert_close(layer(x), torch.nn.functional.avg_pool2d(dense, 2, 2, ceil_mode=True))
    assert layer(x).shape == (2, 16, math.ceil(9 / 2), 4)


def test_registered():
    layer = visionattn.create_attn("sasa_stem", 3, out_channels=64)
    assert isinstance(layer, AttentionStem2d) and (layer.kernel_size, layer.mixtures) == (4, 4)


@pytest.mark.bad_input
@pytest.mark.parametrize("kwargs,match", [
    ({"border": "clamp"}, "border: got 'clamp', needed one of 'mask', 'zero'"),
    ({"border": "maks"}, "border: .*did you mean 'mask'"),
    ({"out_channels": 10, "heads": 4}, "out_channels must be divisible by heads.*heads=4"),
    ({"mixtures": 0}, "mixtures must be an integer >= 1"), ({"kernel_size": 0}, "kernel_size must be an integer"),
    ({"out_channels": 7, "heads": 7}, "out_channels must be even"), ({"embed_dim": -1}, "embed_dim must be"),
    ({"qk_scale": float("inf")}, "qk_scale: got inf, needed a finite number")])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(UsageError, match=match):
        AttentionStem2d(3, **{"out_channels": 8, **kwargs})


@pytest.mark.bad_input
@pytest.mark.parametrize("shape,dtype,match", [((1, 3, 0, 4), torch.float32, "at least 1x1 pixels"),
                                               ((1, 3, 4, 4), torch.uint8, "floating-point input, got torch.uint8"),
                                               ((1, 4, 4, 4), torch.float32, "3 input channels")])
def test_bad_inputs_raise(shape, dtype, match):
    with pytest.raises(UsageError, match=match):
        AttentionStem2d(3, 8)(torch.zeros(shape, dtype=dtype))


def test_empty_batch_gives_an_empty_output():
    assert AttentionStem2d(3, 8, stride=2)(torch.zeros(0, 3, 5, 5)).shape == (0, 8, 3, 3)
