"""HaloNet's blocked local attention against a dense attention over all H * W pixels, computed directly with the
mask its mechanism implies (a query's keys: its block's (b + 2h)^2 window, within the image) and its relative
logits, forward and gradients, at stride 1 and 2 and at sizes that are and are not multiples of the block; the
timm-compatible switch against the same computation with timm's zero keys; timm's own layer (recorded outputs);
the padded keys' weights; parameter layout and counts; initialisation; usage errors."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from visionattn.errors import UsageError
from visionattn.layers.attention_core import AttentionRecorder
from visionattn.layers.halo_attention import HaloAttention2d
from visionattn.models.resnet import ResNet
from visionattn.registry import create_attn, get_attn_entry

RECORD = Path(__file__).resolve().parent.parent / "data" / "timm_halonet_layout.json.gz"


def _dense(layer: HaloAttention2d, x: torch.Tensor) -> torch.Tensor:
    """The layer's function written over the whole map. Query pixel (s r, s c) (s = the queries' stride) lies in
    block (by, bx) = (s r // b, s c // b) at index (i, j) = (r - by b / s, c - bx b / s) of the subsampled block;
    the block's window starts at (by b - h, bx b - h). Key pixel (y, z) may be attended when it lies in that
    window; its relative logit is q . (r^h[y - top - i + w - 1] + r^w[z - left - j + w - 1]). With
    ``mask_padding=False`` every window cell outside the image is a zero key with a zero value (timm)."""
    batch, _, height, width = x.shape
    heads, d_qk, d_v = layer.heads, layer.dim_head_qk, layer.dim_head_v
    b, h, s, win, bq = layer.block_size, layer.halo_size, layer.block_stride, layer.win_size, layer.query_block
    rel_scale = d_qk ** -0.5 if layer.scale_pos_embed else 1.0
    q = F.conv2d(x, layer.q.weight, layer.q.bias, stride=s).unflatten(1, (heads, d_qk))  # (B, heads, d, Hq, Wq)
    k, v = F.conv2d(x, layer.kv.weight, layer.kv.bias).unflatten(1, (heads, d_qk + d_v)).split([d_qk, d_v], 2)
    k, v = k.flatten(3), v.flatten(3)  # (B, heads, d, H W)
    rel_h, rel_w = layer.rel_pos.height_rel, layer.rel_pos.width_rel
    ys, zs = torch.arange(height).repeat_interleave(width), torch.arange(width).repeat(height)  # key pixels
    cells_y, cells_x = torch.arange(win).repeat_interleave(win), torch.arange(win).repeat(win)  # window cells
    rows = []
    for r in range(q.shape[3]):
        cols = []
        for c in range(q.shape[4]):
            by, bx = s * r // b, s * c // b
            i, j, top, left = r - by * bq, c - bx * bq, by * b - h, bx * b - h
            qv = q[:, :, :, r, c]  # (B, heads, d)
            allowed = (ys >= top) & (ys < top + win) & (zs >= left) & (zs < left + win)
            rel = rel_h[(ys - top - i + win - 1).clamp(0, 2 * win - 2)] + rel_w[(zs - left - j + win - 1).clamp(
                0, 2 * win - 2)]  # (HW, d); clamped entries are masked
            logits = torch.einsum("bnd,bndk->bnk", qv, k) * d_qk ** -0.5 + rel_scale * torch.einsum(
                "bnd,kd->bnk", qv, rel)
            logits = logits.masked_fill(~allowed, float("-inf"))
            values = v
            if not layer.mask_padding:  # the window cells beyond the image: key 0 (logit = relative term), value 0
                outside = ((cells_y + top < 0) | (cells_y + top >= height) | (cells_x + left < 0)
                           | (cells_x + left >= width))
                zero_rel = rel_h[cells_y[outside] - i + win - 1] + rel_w[cells_x[outside] - j + win - 1]
                logits = torch.cat([logits, rel_scale * torch.einsum("bnd,kd->bnk", qv, zero_rel)], -1)
                values = torch.cat([v, v.new_zeros(*v.shape[:3], int(outside.sum()))], -1)
            cols.append(torch.einsum("bnk,bndk->bnd", logits.softmax(-1), values).flatten(1))
        rows.append(torch.stack(cols, -1))
    out = torch.stack(rows, -2)  # (B, C_out, Hq, Wq)
    if layer.pool_stride > 1:  # s x s average over the pixels each window covers (rounding up)
        ps = layer.pool_stride
        out = torch.stack([torch.stack([out[:, :, y:y + ps, z:z + ps].mean((-2, -1))
                                        for z in range(0, width, ps)], -1) for y in range(0, height, ps)], -2)
    return out


def _layer(**kwargs) -> HaloAttention2d:
    torch.manual_seed(0)
    kwargs = {"heads": 2, "block_size": 4, "halo_size": 1, **kwargs}
    layer = HaloAttention2d(kwargs.pop("in_channels", 8), **kwargs).double()
    with torch.no_grad():  # random biases too, so that they take part
        for conv in (layer.q, layer.kv):
            if conv.bias is not None:
                conv.bias.normal_()
    return layer


def _x(size, b=2, c=8, seed=1) -> torch.Tensor:
    return torch.randn(b, c, *size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _assert_same_function(layer: HaloAttention2d, x: torch.Tensor) -> None:
    """Equal outputs, and equal gradients for the input and every parameter."""
    x = x.clone().requires_grad_(True)
    out = layer(x)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=out.dtype)
    params = [x, *layer.parameters()]
    grads = torch.autograd.grad((out * weight).sum(), params)
    expected = _dense(layer, x)
    torch.testing.assert_close(out, expected)
    expected_grads = torch.autograd.grad((expected * weight).sum(), params)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e)


CASES = [
    ({}, (8, 8)),  # 2 x 2 whole blocks
    ({}, (7, 5)),  # padded to 8 x 8: the padding to the block is masked too
    ({"stride": 2}, (8, 8)),  # strided queries: 2 x 2 per block
    ({"stride": 2}, (7, 5)),
    ({"stride": 2, "block_size": 3}, (7, 5)),  # s does not divide b: attention, then 2 x 2 average pooling
    ({"stride": 2, "avg_down": True, "halo_size": 2}, (6, 8)),
    ({"halo_size": 0}, (5, 8)),  # no halo: only the block padding is masked
    ({"out_channels": 12, "qk_ratio": 0.5, "qkv_bias": True, "scale_pos_embed": True}, (6, 5)),
]


@pytest.mark.parametrize("impl", ["fused", "explicit"])
@pytest.mark.parametrize("kwargs, size", CASES)
def test_matches_a_dense_attention_with_the_mask_of_the_blocks(kwargs, size, impl):
    _assert_same_function(_layer(impl=impl, **kwargs), _x(size))


@pytest.mark.parametrize("kwargs, size", [({}, (8, 8)), ({}, (7, 5)), ({"stride": 2}, (8, 4)),
                                          ({"stride": 2, "block_size": 3, "scale_pos_embed": True}, (6, 7))])
def test_without_the_mask_the_zero_padded_keys_take_part_as_in_timm(kwargs, size):
    _assert_same_function(_layer(mask_padding=False, **kwargs), _x(size))


def _timm_cases() -> list[dict]:
    raw = json.loads(gzip.decompress(RECORD.read_bytes()))
    assert raw["timm_version"] == "1.0.31"
    return raw["halo_attn"]


@pytest.mark.parametrize("case", _timm_cases(), ids=lambda c: ",".join(f"{k}={v}" for k, v in c["kwargs"].items()))
def test_mask_padding_false_computes_timms_halo_attn(case):
    """Recorded outputs of timm 1.0.31's HaloAttn with its (renamed) weights: the same function at 1e-12."""
    kwargs = dict(case["kwargs"])
    kwargs["heads"] = kwargs.pop("num_heads")
    layer = HaloAttention2d(8, mask_padding=False, **kwargs).double()
    state = {k.replace("pos_embed.", "rel_pos."): torch.tensor(v, dtype=torch.float64)
             for k, v in case["state_dict"].items()}
    state = {k: v.reshape(layer.state_dict()[k].shape) for k, v in state.items()}
    layer.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = layer(torch.tensor(case["input"], dtype=torch.float64))
    torch.testing.assert_close(out, torch.tensor(case["output"], dtype=torch.float64), rtol=0, atol=1e-12)
    masked = HaloAttention2d(8, **kwargs).double()
    masked.load_state_dict(state)
    with torch.no_grad():  # masking is a different function wherever a window reaches past the border
        assert (masked(torch.tensor(case["input"], dtype=torch.float64)) - out).abs().max() > 1e-3


def test_padded_keys_get_exactly_zero_weight_and_every_real_key_a_positive_one():
    """A 5 x 6 map in blocks of 4 with a halo of 1: the first block's 6 x 6 window covers rows and columns -1 ... 4,
    whose first row and column are the halo beyond the border, the rest real; the last block's window covers
    rows -1 ... 4 and columns 3 ... 8, of which columns 6 ... 8 are padding (to the block, then the halo)."""
    layer = _layer(block_size=4, halo_size=1, impl="fused")
    with AttentionRecorder(layer) as rec:
        layer(_x((5, 6), b=1))
    (weights,) = rec.weights["attend"]  # (blocks, heads, 16 queries, 36 keys)
    weights = weights.unflatten(-1, (6, 6))
    real_rows = torch.tensor([False, True, True, True, True, True])
    expected = {0: real_rows[:, None] & real_rows[None, :],  # block (0, 0)
                1: real_rows[:, None] & torch.tensor([True, True, True, False, False, False])[None, :]}  # (0, 1)
    assert weights.shape[0] == 4  # 2 x 2 blocks: 5 x 6 padded to 8 x 8
    for block, real in expected.items():
        w = weights[block]
        assert (w[..., ~real] == 0).all(), "a padded key took softmax weight"
        assert (w[..., real] > 0).all(), "a real key got no weight (an inverted padding mask does this)"
        torch.testing.assert_close(w.sum((-2, -1)), torch.ones_like(w.sum((-2, -1))))
    with AttentionRecorder(timm_like := _layer(mask_padding=False)) as rec:
        timm_like(_x((5, 6), b=1))
    assert (rec.weights["attend"][0].unflatten(-1, (6, 6))[0][..., ~expected[0]] > 0).all()


def test_a_block_sees_its_window_and_nothing_beyond():
    """Changing one pixel changes the outputs of exactly the blocks whose windows contain it."""
    layer = _layer(block_size=4, halo_size=1)
    x = _x((12, 12), b=1)
    changed = x.clone()
    changed[0, :, 4, 8] += 1.0  # block (1, 2); the halo of blocks (0, 1), (0, 2), (1, 1) reaches it too
    with torch.no_grad():
        diff = (layer(changed) - layer(x)).abs().amax(1)[0].unflatten(0, (3, 4)).unflatten(2, (3, 4)).amax((1, 3))
    assert (diff > 0).tolist() == [[False, True, True], [False, True, True], [False, False, False]]


@pytest.mark.parametrize("size", [(1, 1), (3, 17), (9, 8), (16, 16)])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_any_input_size_gives_the_convolutions_output_size(size, stride):
    layer = _layer(block_size=4, halo_size=1, stride=stride)
    assert layer(_x(size, b=1)).shape == (1, 8, math.ceil(size[0] / stride), math.ceil(size[1] / stride))


def test_timm_layout_and_parameter_count():
    """halonet26t's stage-4 layer: C = 512, 8 heads of 64, b = 8, h = 2, strided: timm's shapes."""
    layer = HaloAttention2d(512, 512, stride=2, heads=8, block_size=8, halo_size=2)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == {"q.weight": (512, 512, 1, 1), "kv.weight": (1024, 512, 1, 1),
                      "rel_pos.height_rel": (23, 64), "rel_pos.width_rel": (23, 64)}
    assert layer.q.stride == (2, 2) and (layer.block_stride, layer.query_block, layer.pool_stride) == (2, 4, 1)
    narrow = HaloAttention2d(64, 48, heads=4, qk_ratio=0.5, block_size=5, halo_size=1, qkv_bias=True)
    d_qk, d_v = 24 // 4, 48 // 4  # make_divisible(48 * 0.5, 8) = 24 query/key channels, 48 value channels
    assert (narrow.dim_head_qk, narrow.dim_head_v) == (d_qk, d_v)
    expected = 64 * 4 * d_qk + 4 * d_qk + 64 * 4 * (d_qk + d_v) + 4 * (d_qk + d_v) + 2 * (2 * 7 - 1) * d_qk
    assert sum(p.numel() for p in narrow.parameters()) == expected


def test_initialised_as_timm_also_inside_a_resnet():
    """Truncated normal with std C_in^-1/2 (q, kv) and d_qk^-1/2 (tables), not the network's He rule (std
    (2 / fan_out)^1/2 = 0.25 for the 32-channel q of this network)."""
    torch.manual_seed(0)
    net = ResNet(layers=(1, 1, 1, 1), widths=(8, 8, 16, 32), attn="halo", attn_stages=(4,), num_classes=0)
    layer = net.layer4[0].conv2
    assert isinstance(layer, HaloAttention2d)
    for tensor, std in ((layer.q.weight, 32 ** -0.5), (layer.kv.weight, 32 ** -0.5),
                        (layer.rel_pos.height_rel, layer.dim_head_qk ** -0.5)):
        assert abs(tensor.std().item() / std - 1) < 0.12
    assert abs(net.layer4[0].conv1.weight.std().item() / (2 / 32) ** 0.5 - 1) < 0.12  # the rest: He


def test_registered_as_a_conv_replacement_that_takes_any_size():
    entry = get_attn_entry("halo")
    assert entry.conv_like and not entry.needs_spatial_size and entry.family == "self-attention"
    layer = create_attn("halo", 64, out_channels=64, kernel_size=3, stride=2, groups=1)
    assert (layer.heads, layer.block_size, layer.halo_size, layer.mask_padding) == (8, 8, 3, True)
    assert create_attn("halo", 64, stride=2, block_size=5).pool_stride == 2  # odd block: pooled


@pytest.mark.parametrize("kwargs, match", [
    ({"out_channels": 12, "heads": 8}, "heads"),
    ({"groups": 2}, "groups"),
    ({"stride": 0}, "stride"),
    ({"block_size": 0}, "block_size"),
    ({"halo_size": -1}, "halo_size"),
    ({"qk_ratio": 0.0}, "qk_ratio"),
    ({"dim_head": 0}, "dim_head"),
    ({"mask_padding": "yes"}, "mask_padding"),
    ({"heads": 64, "out_channels": 64, "qk_ratio": 0.1}, "heads"),
])
def test_bad_arguments_are_usage_errors(kwargs, match):
    with pytest.raises(UsageError, match=match):
        HaloAttention2d(16, **kwargs)
