"""Single- and multi-head self-attention against eq. 11.1-11.5 written out per head, and the 2D wrapper."""

from __future__ import annotations

import pytest
import torch

from visionattn.layers.self_attention import MultiHeadSelfAttention, SelfAttention2d


def _eq_11(x, layer):
    """Eq. 11.1-11.5 for each head separately: Q, K, V from the head's rows of W_q, W_k, W_v; A = softmax(Q K^T /
    sqrt(d)) row by row; S = A V; the heads' S concatenated and multiplied by W (plus its bias)."""
    h, d = layer.heads, layer.dim_head
    wq, wk, wv = layer.qkv.weight.split(h * d)
    bq, bk, bv = layer.qkv.bias.split(h * d)
    outs = []
    for b in range(x.shape[0]):
        heads = []
        for i in range(h):
            rows = slice(i * d, (i + 1) * d)
            q = x[b] @ wq[rows].T + bq[rows]  # 11.1
            k = x[b] @ wk[rows].T + bk[rows]
            v = x[b] @ wv[rows].T + bv[rows]
            a = torch.stack([torch.softmax(q[n] @ k.T / d ** 0.5, 0) for n in range(x.shape[1])])  # 11.2-11.3
            heads.append(a @ v)  # 11.4
        outs.append(torch.cat(heads, -1) @ layer.proj.weight.T + layer.proj.bias)  # 11.5
    return torch.stack(outs)


@pytest.mark.parametrize("heads,dim_head", [(1, None), (4, None), (2, 5)])
@pytest.mark.parametrize("impl", ["fused", "explicit"])
def test_multi_head_matches_the_equations(heads, dim_head, impl):
    torch.manual_seed(0)
    layer = MultiHeadSelfAttention(8, heads, dim_head, impl=impl).double()
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _eq_11(x, layer))


def test_concatenating_heads_equals_summing_their_projections():
    """The section's remark: concatenating the heads and one W is summing each head's S times its rows of W."""
    torch.manual_seed(1)
    layer = MultiHeadSelfAttention(8, 2).double()
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    q, k, v = layer.qkv(x).unflatten(-1, (3, 2, 4)).permute(2, 0, 3, 1, 4)
    s = torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1) @ v  # (1, 2, 5, 4)
    summed = sum(s[:, i] @ layer.proj.weight[:, 4 * i:4 * (i + 1)].T for i in range(2)) + layer.proj.bias
    torch.testing.assert_close(layer(x), summed)


def test_pixels_as_tokens_equals_the_token_layer():
    torch.manual_seed(2)
    pix = SelfAttention2d(8, heads=2, qkv_bias=True).double()
    tok = MultiHeadSelfAttention(8, 2).double()
    with torch.no_grad():
        tok.qkv.weight.copy_(pix.qkv.weight.flatten(1))
        tok.qkv.bias.copy_(pix.qkv.bias)
        tok.proj.weight.copy_(pix.proj.weight.flatten(1))
        tok.proj.bias.copy_(pix.proj.bias)
    x = torch.randn(2, 8, 3, 5, dtype=torch.float64)
    expected = tok(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(pix(x), expected)


def test_causal_tokens_do_not_see_the_future():
    torch.manual_seed(3)
    layer = MultiHeadSelfAttention(8, 2, causal=True)
    x = torch.randn(1, 6, 8)
    y = x.clone()
    y[:, 4:] = torch.randn(1, 2, 8)
    torch.testing.assert_close(layer(x)[:, :4], layer(y)[:, :4])


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="dim=10 must divide into heads=4"):
        MultiHeadSelfAttention(10, 4)
    with pytest.raises(ValueError, match="kernel: got 'soft'.*did you mean 'softmax'"):
        MultiHeadSelfAttention(8, 2, kernel="soft")
    with pytest.raises(ValueError, match="3-D"):
        MultiHeadSelfAttention(8, 2)(torch.randn(8, 8))
    with pytest.raises(ValueError, match="built for 8 channels"):
        MultiHeadSelfAttention(8, 2)(torch.randn(1, 3, 6))
    with pytest.raises(ValueError, match="proj=False needs heads \\* dim_head == channels"):
        SelfAttention2d(8, heads=2, dim_head=3, proj=False)
