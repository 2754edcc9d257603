"""Window attention (Swin's W-MSA / SW-MSA) against a dense attention over all H * W tokens, with the mask and the
bias its mechanism implies computed directly; the shifted-window mask of a 4x4 map written out by hand; padding;
the rule for a window that covers the map; the block; the registered 2D layer; usage errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

import visionattn
from visionattn.errors import UsageError
from visionattn.layers.attention_core import AttentionRecorder
from visionattn.layers.window_attention import (
    SwinBlock,
    WindowAttention,
    WindowAttention2d,
    fit_window,
    window_labels,
    window_mask,
)
from visionattn.registry import get_attn_entry


def _place(y: int, padded: int, window: int, shift: int) -> tuple[int, int, int]:
    """Where the mechanism puts map row (or column) y: the cyclic shift moves it to r = (y - s) mod L_p of the
    padded map; it lands in window r // M at position r % M, in region 0, 1 or 2 of timm's three slices of the
    rolled map ([0, L_p - M), [L_p - M, L_p - s), [L_p - s, L_p)) when there is a shift."""
    r = (y - shift) % padded
    region = 0 if not shift or r < padded - window else (1 if r < padded - shift else 2)
    return r // window, r % window, region


def _dense(layer: WindowAttention, x: torch.Tensor, shift: tuple[int, int] | None = None) -> torch.Tensor:
    """Eq. 4 over all H * W tokens of a (B, H, W, C) map at once: token i may attend token j when both land in the
    same window of the rolled, padded map and in the same region (:func:`_place`); padded positions are not
    tokens at all. The bias is table[(u_i - u_j + M_h - 1)(2 M_w - 1) + v_i - v_j + M_w - 1, head] for their
    positions (u, v) inside the window."""
    b, height, width, c = x.shape
    (m_h, m_w), (s_h, s_w) = layer.window_size, layer.shift_size if shift is None else shift
    h_p, w_p = math.ceil(height / m_h) * m_h, math.ceil(width / m_w) * m_w
    places = [(_place(y, h_p, m_h, s_h), _place(z, w_p, m_w, s_w)) for y in range(height) for z in range(width)]
    n, heads, d = height * width, layer.heads, layer.dim_head
    allowed = torch.zeros(n, n, dtype=torch.bool)
    index = torch.zeros(n, n, dtype=torch.long)
    for i, ((wy_i, u_i, ry_i), (wx_i, v_i, rx_i)) in enumerate(places):
        for j, ((wy_j, u_j, ry_j), (wx_j, v_j, rx_j)) in enumerate(places):
            allowed[i, j] = (wy_i, wx_i, ry_i, rx_i) == (wy_j, wx_j, ry_j, rx_j)
            index[i, j] = (u_i - u_j + m_h - 1) * (2 * m_w - 1) + v_i - v_j + m_w - 1
    bias = layer.relative_position_bias_table[index].permute(2, 0, 1)  # (heads, n, n)
    tokens = x.reshape(b, n, c)
    qkv = tokens @ layer.qkv.weight.T + layer.qkv.bias
    q, k, v = (qkv[..., part * heads * d:(part + 1) * heads * d].reshape(b, n, heads, d).transpose(1, 2)
               for part in range(3))
    logits = (q @ k.transpose(-2, -1)) * d ** -0.5 + bias
    weights = torch.exp(logits.masked_fill(~allowed, -math.inf))
    weights = weights / weights.sum(-1, keepdim=True)
    out = (weights @ v).transpose(1, 2).reshape(b, n, heads * d) @ layer.proj.weight.T + layer.proj.bias
    return out.reshape(b, height, width, c)


def _layer(window, shift, dim=8, heads=2, impl="auto") -> WindowAttention:
    torch.manual_seed(0)
    layer = WindowAttention(dim, heads, window, shift, impl=impl).double()
    with torch.no_grad():  # biases and the table off their initial values, so that a lost one would show
        layer.qkv.bias.normal_()
        layer.proj.bias.normal_()
        layer.relative_position_bias_table.normal_()
    return layer


def _map(size, b=2, dim=8, seed=1) -> torch.Tensor:
    return torch.randn(b, *size, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


CASES = [  # (map, window, shift)
    ((4, 4), 2, 0),
    ((4, 4), 2, 1),
    ((8, 8), 4, 2),
    ((7, 5), 3, 1),  # padding along both sides, with the shift
    ((5, 6), (2, 3), (1, 1)),  # a non-square window
    ((3, 3), 4, 2),  # a map smaller than the window
    ((11, 11), 7, 3),  # Swin's window at a padded size: the wrapped top rows sit beside the image's bottom row
]


@pytest.mark.parametrize("size, window, shift", CASES)
@pytest.mark.parametrize("impl", ["fused", "explicit"])
def test_matches_a_dense_attention_with_the_implied_mask_and_bias(size, window, shift, impl):
    layer = _layer(window, shift, impl=impl)
    x = _map(size)
    torch.testing.assert_close(layer(x), _dense(layer, x))


def test_one_layer_at_many_map_sizes_keeps_a_bounded_set_of_masks():
    """The window masks are kept per map size: a layer called at one size after others computes what it
    computes fresh, and keeps at most a few masks however many sizes it sees."""
    from visionattn.layers import window_attention

    layer = _layer(3, 1)
    sizes = [(4 + i, 5 + (i % 3)) for i in range(window_attention._MASKS_KEPT + 3)]
    for size in sizes + sizes[:2]:
        torch.testing.assert_close(layer(_map(size)), _dense(layer, _map(size)))
        assert 1 <= len(layer._masks) <= window_attention._MASKS_KEPT


@pytest.mark.parametrize("size, window, shift", [CASES[1], CASES[3], CASES[4]])
def test_gradients_match_the_dense_attention(size, window, shift):
    layer = _layer(window, shift)
    grads = []
    for fn in (layer, lambda t: _dense(layer, t)):
        x = _map(size).requires_grad_(True)
        layer.zero_grad(set_to_none=True)
        out = fn(x)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads.append([x.grad] + [p.grad for p in layer.parameters()])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want)


def test_the_shifted_window_mask_of_a_4x4_map_written_out():
    """A 4x4 map, window 2, shift 1. The roll by -1 puts map rows 1, 2, 3, 0 at rows 0..3 (and the same for the
    columns); the regions the official code labels on the rolled map are rows {0, 1} | {2} | {3} times columns
    {0, 1} | {2} | {3}:"""
    regions = torch.tensor([[0, 0, 1, 2],
                            [0, 0, 1, 2],
                            [3, 3, 4, 5],
                            [6, 6, 7, 8]])
    labels = window_labels((4, 4), (2, 2), (1, 1))
    same = labels[:, :, None, None] == labels[None, None]
    assert torch.equal(same, regions[:, :, None, None] == regions[None, None])
    t, f = True, False
    # windows in raster order, tokens inside a window in raster order
    expected = torch.tensor([
        [[t, t, t, t], [t, t, t, t], [t, t, t, t], [t, t, t, t]],  # rows 0-1, cols 0-1: one region
        [[t, f, t, f], [f, t, f, t], [t, f, t, f], [f, t, f, t]],  # rows 0-1, cols 2-3: columns 2 | 3
        [[t, t, f, f], [t, t, f, f], [f, f, t, t], [f, f, t, t]],  # rows 2-3, cols 0-1: rows 2 | 3
        [[t, f, f, f], [f, t, f, f], [f, f, t, f], [f, f, f, t]],  # rows 2-3, cols 2-3: four regions
    ])
    assert torch.equal(window_mask((4, 4), (2, 2), (1, 1)), expected)
    assert window_mask((4, 4), (2, 2), (0, 0)) is None  # no shift, no padding: no mask


def test_padding_positions_get_no_attention_weight():
    layer = _layer(4, 0, impl="fused")
    x = _map((5, 6))  # padded to 8x8: 4 windows
    with AttentionRecorder(layer) as rec:
        layer(x)
    (weights,) = rec.weights["attend"]  # (B, windows * heads, 16, 16)
    rows = torch.arange(8)
    real = (rows[:, None] < 5) & (rows[None, :] < 6)
    real = rearrange(real, "(y m1) (x m2) -> (y x) (m1 m2)", m1=4, m2=4).repeat_interleave(2, 0)  # (w h) order
    assert weights.shape == (2, 8, 16, 16)
    assert torch.all(weights.masked_select(~real[None, :, None, :].expand_as(weights)) == 0)
    sums = weights.sum(-1)
    torch.testing.assert_close(sums[real[None].expand_as(sums)], torch.ones(2 * int(real.sum()), dtype=sums.dtype))


def test_a_map_smaller_than_the_window_is_global_attention_with_the_central_offsets():
    """With the padding masked, a 3x3 map in a 5x5 window is attention over its 9 tokens, each pair biased by the
    table entry of its offset: the same as a 3x3 window whose table holds those central entries."""
    big, small = _layer(5, 0), _layer(3, 0)
    with torch.no_grad():
        small.load_state_dict({k: v for k, v in big.state_dict().items() if "table" not in k}, strict=False)
        # the small table's row (dy + 2) * 5 + dx + 2 is offset (dy, dx); the big one's (dy + 4) * 9 + dx + 4
        rows = [(dy + 4) * 9 + dx + 4 for dy in range(-2, 3) for dx in range(-2, 3)]
        small.relative_position_bias_table.copy_(big.relative_position_bias_table[rows])
    x = _map((3, 3))
    torch.testing.assert_close(big(x), small(x))


def test_a_window_that_covers_the_map_drops_the_shift_and_says_why():
    assert fit_window((7, 7), (7, 7), (3, 3)) == ((7, 7), (0, 0), fit_window((7, 7), (7, 7), (3, 3))[2])
    note = fit_window((7, 7), (7, 7), (3, 3))[2]
    assert "7x7 map" in note and "both sides" in note and "one window covers it" in note
    window, shift, note = fit_window((7, 14), (7, 7), (3, 3))
    assert (window, shift) == ((7, 7), (0, 3)) and "one side" in note
    window, shift, note = fit_window((4, 4), (7, 7), (0, 0))
    assert (window, shift) == ((4, 4), (0, 0)) and "window (7, 7) -> (4, 4)" in note
    assert fit_window((14, 14), (7, 7), (3, 3)) == ((7, 7), (3, 3), "")
    assert fit_window(None, (7, 7), (3, 3)) == ((7, 7), (3, 3), "")
    block = SwinBlock(8, 2, 7, shift=True, input_resolution=(7, 7))
    assert block.shift_size == (0, 0) and "one window covers it" in repr(block)
    assert SwinBlock(8, 2, 7, shift=True, input_resolution=(14, 14)).shift_size == (3, 3)


def test_swin_block_is_pre_norm_eq3():
    torch.manual_seed(0)
    block = SwinBlock(8, 2, 2, shift=True, mlp_ratio=2.0).double().eval()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = _map((4, 4))

    def layer_norm(t, norm):
        return (t - t.mean(-1, keepdim=True)) / torch.sqrt(t.var(-1, unbiased=False, keepdim=True) + 1e-5) \
            * norm.weight + norm.bias

    z1 = x + _dense(block.attn, layer_norm(x, block.norm1))
    hidden = F.gelu(layer_norm(z1, block.norm2) @ block.mlp.fc1.weight.T + block.mlp.fc1.bias)
    z2 = z1 + hidden @ block.mlp.fc2.weight.T + block.mlp.fc2.bias
    with torch.no_grad():
        torch.testing.assert_close(block(x), z2)


# --- the registered 2D layer ----------------------------------------------------------------------------------

def test_the_2d_layer_is_the_token_layer_on_the_map():
    torch.manual_seed(0)
    layer = WindowAttention2d(8, heads=2, window_size=4, shift=True).double()
    x = torch.randn(2, 8, 8, 8, dtype=torch.float64)
    assert layer.shift_size == (2, 2)
    want = _dense(layer, x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(layer(x), want)
    # a 4x6 map that the 4x4 window covers along its height: the shift is kept along the width only
    small = x[:, :, :4, :6]
    torch.testing.assert_close(layer(small), _dense(layer, small.permute(0, 2, 3, 1), (0, 2)).permute(0, 3, 1, 2))


def test_stride_pools_and_out_channels_widen():
    torch.manual_seed(0)
    layer = WindowAttention2d(8, out_channels=12, stride=2, heads=2, window_size=3)
    x = torch.randn(2, 8, 7, 6)
    out = layer(x)
    assert out.shape == (2, 12, 4, 3) and layer.proj.out_features == 12
    layer.stride = 1
    torch.testing.assert_close(out, F.avg_pool2d(layer(x), 2, 2, ceil_mode=True))


def test_registered_as_conv_replacements_with_timm_names():
    entry = get_attn_entry("swin")
    assert entry.conv_like and entry.defaults == {"shift": True} and not get_attn_entry("window_attention").defaults
    layer = visionattn.create_attn("swin", 64, out_channels=64, kernel_size=3, stride=1, groups=1)
    assert (layer.heads, layer.dim_head, layer.window_size, layer.shift_size) == (2, 32, (7, 7), (3, 3))
    assert list(layer.state_dict()) == ["relative_position_bias_table", "qkv.weight", "qkv.bias", "proj.weight",
                                        "proj.bias"]  # the index is a non-persistent buffer, as in timm 1.0
    assert layer.relative_position_bias_table.shape == (169, 2) and layer.relative_position_index.shape == (49, 49)
    assert visionattn.create_attn("window_attention", 48).heads == 1


def test_plugs_into_a_resnet_in_place_of_its_convolutions():
    torch.manual_seed(0)
    model = visionattn.create_model("resnet20", attn="swin", attn_stages=(2, 3), num_classes=10, in_chans=1)
    layers = [m for m in model.modules() if isinstance(m, WindowAttention2d)]
    assert layers and any(m.stride == 2 for m in layers)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.bad_input
@pytest.mark.parametrize("kwargs, match", [
    ({"window_size": 0}, "window_size"),
    ({"heads": 3}, "heads"),
    ({"groups": 2}, "groups"),
    ({"stride": 0}, "stride"),
    ({"out_channels": 0}, "out_channels"),
    ({"shift": "yes"}, "shift"),
])
def test_bad_arguments_of_the_2d_layer(kwargs, match):
    with pytest.raises(UsageError, match=match):
        WindowAttention2d(8, **kwargs)


@pytest.mark.bad_input
def test_bad_arguments_and_inputs_of_the_token_layers():
    with pytest.raises(UsageError, match=r"shift_size: got 4, needed .* 0 <= shift < window \(4, 4\)"):
        WindowAttention(8, 2, 4, 4)
    with pytest.raises(UsageError, match="mlp_ratio"):
        SwinBlock(8, 2, mlp_ratio=0)
    with pytest.raises(UsageError, match=r"\(B, H, W, C = 8\) channels-last map"):
        WindowAttention(8, 2, 4)(torch.randn(2, 8, 4, 4))
