"""Axial attention against a dense attention over all H x W pixels with the mask the mechanism implies (the height
pass: the same column, within the span), with the position terms and BatchNorms of eq. 4 and the official code
written out: forward and gradients, training and eval mode, global and local span, square and non-square maps,
another size than built, stride 2. Also: no (HW x HW) tensor is kept, the running statistics, the recorder, the
official names and initialisation, usage errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.layers.direct import randomize_batch_norms
from visionattn.errors import UsageError
from visionattn.layers.attention_core import AttentionRecorder
from visionattn.layers.axial_attention import AxialAttention, AxialAttention2d
from visionattn.registry import create_attn, get_attn_entry


def _norm(t: torch.Tensor, bn: torch.nn.modules.batchnorm._BatchNorm, training: bool, dims: tuple[int, ...],
          allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One channel's BatchNorm written out: (t - mean) / sqrt(var + eps) * gamma + beta, with the biased mean and
    variance of the entries ``allowed`` marks (all of ``dims``) in training, the running ones in eval mode. ``t``
    holds one channel per index of axis 1; returns the result and the batch mean and variance."""
    shape = [1] * t.dim()
    shape[1] = -1
    if allowed is None:
        mean, var = t.mean(dims), t.var(dims, unbiased=False)
    else:
        vals = t[..., allowed]  # (B, channels, entries)
        mean, var = vals.mean((0, 2)), vals.var((0, 2), unbiased=False)
    use_mean, use_var = (mean, var) if training else (bn.running_mean, bn.running_var)
    out = (t - use_mean.view(shape)) / torch.sqrt(use_var.view(shape) + bn.eps)
    return out * bn.weight.view(shape) + bn.bias.view(shape), mean, var


def _pairs(block: AxialAttention, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Pixel pairs (i, j) of the H x W map, by loops: whether query i attends key j (the same line of the pass's
    axis, within the span) and the offset index o - p + R of the pair along that axis."""
    pixels = [(y, z) for y in range(height) for z in range(width)]
    n = height if block.axis == "height" else width
    radius = n - 1 if block.span is None else (block.span - 1) // 2
    allowed = torch.zeros(len(pixels), len(pixels), dtype=torch.bool)
    offset = torch.zeros(len(pixels), len(pixels), dtype=torch.long)
    for i, (yi, zi) in enumerate(pixels):
        for j, (yj, zj) in enumerate(pixels):
            same_line = zi == zj if block.axis == "height" else yi == yj
            delta = yi - yj if block.axis == "height" else zi - zj
            if same_line and abs(delta) <= radius:
                allowed[i, j], offset[i, j] = True, delta + radius
    return allowed, offset, n


def _dense_pass(block: AxialAttention, x: torch.Tensor, training: bool, stats: dict | None = None) -> torch.Tensor:
    """One pass over all HW pixels: softmax_j over the allowed keys of BN(q.k) + BN(q.r^q) + BN(k.r^k) (BN per term
    and head, over the allowed pairs), output BN(sum a v) + BN(sum a r^v) per channel. r^q, r^v at o - p, r^k at
    p - o (the official index); a global table built for another size is resampled linearly to 2n - 1 offsets."""
    b, _, height, width = x.shape
    allowed, offset, n = _pairs(block, height, width)
    table = block.relative
    if block.span is None and table.shape[1] != 2 * n - 1:
        table = F.interpolate(table[None], size=2 * n - 1, mode="linear")[0]
    heads, d = block.heads, block.dim_head
    half = d // 2
    proj = torch.einsum("oc,bcp->bop", block.qkv_transform.weight[:, :, 0], x.flatten(2))
    proj = _norm(proj, block.bn_qkv, training, (0, 2))[0].unflatten(1, (heads, 2 * d))  # (B, g, 2d, HW)
    q, k, v = proj[:, :, :half], proj[:, :, half:2 * half], proj[:, :, 2 * half:]
    e_q, e_k, e_v = table[:half][:, offset], table[half:2 * half][:, offset.t()], table[2 * half:][:, offset]
    terms = torch.cat([torch.einsum("bgci,bgcj->bgij", q, k), torch.einsum("bgci,cij->bgij", q, e_q),
                       torch.einsum("bgcj,cij->bgij", k, e_k)], 1)  # (B, 3g, HW, HW): the official stacking
    normed, mean, var = _norm(terms, block.bn_similarity, training, (), allowed)
    if stats is not None:
        stats.update(mean=mean, var=var, count=b * int(allowed.sum()))
    logits = normed.unflatten(1, (3, heads)).sum(1).masked_fill(~allowed, -math.inf)
    attn = logits.softmax(-1)
    sv, sve = torch.einsum("bgij,bgcj->bgci", attn, v), torch.einsum("bgij,cij->bgci", attn, e_v)
    stacked = torch.stack([sv, sve], 3).flatten(1, 3)  # (B, g * d * 2, HW): channel (head, c, term)
    out = _norm(stacked, block.bn_output, training, (0, 2))[0].unflatten(1, (-1, 2)).sum(2)
    return out.unflatten(2, (height, width))


def _dense_layer(layer: AxialAttention2d, x: torch.Tensor, training: bool) -> torch.Tensor:
    out = _dense_pass(layer.width_block, _dense_pass(layer.height_block, x, training), training)
    st = layer.stride
    if st == 1:
        return out
    pooled = torch.zeros(*out.shape[:2], math.ceil(out.shape[2] / st), math.ceil(out.shape[3] / st),
                         dtype=out.dtype)
    for y in range(pooled.shape[2]):
        for z in range(pooled.shape[3]):
            pooled[:, :, y, z] = out[:, :, y * st:(y + 1) * st, z * st:(z + 1) * st].mean((-2, -1))
    return pooled


def _layer(spatial_size=(4, 4), heads=2, channels=8, **kwargs) -> AxialAttention2d:
    torch.manual_seed(0)
    layer = AxialAttention2d(channels, heads=heads, spatial_size=spatial_size, **kwargs).double()
    randomize_batch_norms(layer)  # gamma != 1 and beta != 0 everywhere, bn_similarity's frozen beta included
    return layer


def _x(size, b=2, channels=8, seed=1) -> torch.Tensor:
    return torch.randn(b, channels, *size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


CASES = {
    "global-square": ({"spatial_size": (4, 4)}, (4, 4)),
    "global-non-square": ({"spatial_size": (3, 5)}, (3, 5)),
    "global-resampled": ({"spatial_size": (4, 4)}, (3, 5)),
    "local-span-3": ({"spatial_size": None, "span": 3}, (5, 4)),
    "global-stride-2": ({"spatial_size": (5, 3), "stride": 2}, (5, 3)),
    "local-span-3-stride-2": ({"spatial_size": None, "span": 3, "stride": 2}, (4, 6)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_the_dense_attention_forward_and_gradients(case):
    kwargs, size = CASES[case]
    layer, x = _layer(**kwargs), _x(size).requires_grad_(True)
    weight = torch.randn(_dense_layer(layer, x, True).shape, generator=torch.Generator().manual_seed(2),
                         dtype=torch.float64)
    params = {n: p for n, p in layer.named_parameters() if p.requires_grad}
    ref = _dense_layer(layer, x, training=True)  # touches no buffer of the layer
    grads_ref = torch.autograd.grad((ref * weight).sum(), (x, *params.values()))
    out = layer.train()(x)
    grads = torch.autograd.grad((out * weight).sum(), (x, *params.values()))
    torch.testing.assert_close(out, ref)
    for name, g, g_ref in zip(("input", *params), grads, grads_ref):
        torch.testing.assert_close(g, g_ref, msg=lambda m, name=name: f"gradient of {name}: {m}")
    # eval mode: the running statistics that training step left
    with torch.no_grad():
        torch.testing.assert_close(layer.eval()(x), _dense_layer(layer, x, training=False))


@pytest.mark.parametrize("training", [True, False])
def test_the_similarity_shift_cancels_so_it_is_frozen(training):
    """The dense reference adds bn_similarity's beta to the logits, the layer leaves it out; they agree above (beta
    random). Its gradient through the reference is zero in either mode. The height pass's bn_output shift, in
    contrast, is removed only by the width pass's training-mode BatchNorm: zero gradient in training, not in eval
    mode (fine-tuning with frozen BatchNorms), so it stays trainable."""
    layer, x = _layer(), _x((4, 4))
    betas = [layer.height_block.bn_similarity.bias, layer.width_block.bn_similarity.bias]
    assert not any(p.requires_grad for p in betas) and layer.height_block.bn_output.bias.requires_grad
    for p in betas:
        p.requires_grad_(True)
    ref = _dense_layer(layer, x, training=training)
    *grads, shift = torch.autograd.grad((ref * torch.randn_like(ref)).sum(),
                                        [*betas, layer.height_block.bn_output.bias])
    assert max(g.abs().max() for g in grads) < 1e-12
    assert (shift.abs().max() < 1e-12) == training


@pytest.mark.parametrize("span", [None, 3])
def test_running_statistics_follow_batch_norm(span):
    """After one training step bn_similarity's running statistics hold 0.9 x the initial ones + 0.1 x the batch
    mean and unbiased variance of each term over the attended pairs (nn.BatchNorm's update), as bn_qkv's do."""
    torch.manual_seed(0)
    block = AxialAttention(8, heads=2, axis="height", length=5, span=span).double()
    x = _x((5, 3))
    stats: dict = {}
    with torch.no_grad():
        _dense_pass(block, x, training=True, stats=stats)
        block.train()(x)
    bn = block.bn_similarity
    count = stats["count"]
    torch.testing.assert_close(bn.running_mean, 0.1 * stats["mean"])
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * stats["var"] * count / (count - 1))
    assert int(bn.num_batches_tracked) == 1


def test_no_hw_by_hw_tensor_is_kept_for_backward():
    """What backward keeps of the attention is one pass's weights, (lines, heads, n, n), per pass: W times less
    than the (heads, HW, HW) of 2D attention (tensors saved by several operations counted once)."""
    layer = AxialAttention2d(16, heads=4, spatial_size=(12, 10))
    x = torch.randn(2, 16, 12, 10, requires_grad=True)
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer.train()(x)
    height_pass, width_pass = 2 * 10 * 4 * 12 * 12, 2 * 12 * 4 * 10 * 10  # (B W) heads H^2, (B H) heads W^2
    assert max(storages.values()) == height_pass
    assert sorted(s for s in storages.values() if s >= width_pass) == [width_pass, height_pass]


def test_relative_embeddings_make_the_layer_position_aware():
    """Without them the passes are equivariant to flipping the map; with them they are not."""
    layer = _layer(spatial_size=(4, 5)).eval()
    x = _x((4, 5))
    with torch.no_grad():
        assert (layer(x.flip(-1, -2)).flip(-1, -2) - layer(x)).abs().max() > 1e-3
        for block in (layer.height_block, layer.width_block):
            block.relative.zero_()
        torch.testing.assert_close(layer(x.flip(-1, -2)).flip(-1, -2), layer(x))


def test_the_recorder_sees_each_pass_along_its_lines():
    layer = _layer(spatial_size=None, span=3)
    x = _x((5, 4))
    with AttentionRecorder(layer) as rec:
        layer(x)
    (height,), (width,) = rec.weights["height_block.attend"], rec.weights["width_block.attend"]
    assert height.shape == (2 * 4, 2, 5, 5) and width.shape == (2 * 5, 2, 4, 4)
    torch.testing.assert_close(height.sum(-1), torch.ones(8, 2, 5, dtype=torch.float64))
    far = (torch.arange(5)[:, None] - torch.arange(5)[None, :]).abs() > 1
    assert (height[..., far] == 0).all() and (height[..., ~far] > 0).all()


def test_registered_with_the_official_names_shapes_and_initialisation():
    entry = get_attn_entry("axial")
    assert entry.conv_like and entry.needs_spatial_size and entry.family == "self-attention"
    assert entry.paper.startswith("Wang et al. 2020")
    torch.manual_seed(0)
    layer = create_attn("axial", 128, out_channels=128, kernel_size=3, stride=2, groups=1, spatial_size=(56, 28))
    keys = {k: tuple(v.shape) for k, v in layer.state_dict().items() if k.startswith("height_block.")}
    assert keys == {"height_block.qkv_transform.weight": (256, 128, 1),
                    **{f"height_block.{bn}.{p}": (n,) for bn, n in (("bn_qkv", 256), ("bn_similarity", 24),
                                                                     ("bn_output", 256))
                       for p in ("weight", "bias", "running_mean", "running_var")},
                    **{f"height_block.{bn}.num_batches_tracked": () for bn in ("bn_qkv", "bn_similarity",
                                                                               "bn_output")},
                    "height_block.relative": (32, 111)}  # 8 heads of 16 channels; offsets -55 ... 55
    assert layer.width_block.relative.shape == (32, 55)
    for block in (layer.height_block, layer.width_block):  # official: N(0, 1 / C_in) and N(0, 1 / d)
        assert abs(block.qkv_transform.weight.std().item() * 128 ** 0.5 - 1) < 0.02
        assert abs(block.relative.std().item() * 16 ** 0.5 - 1) < 0.1
    assert isinstance(layer.height_block.qkv_transform, torch.nn.Conv1d)  # not re-initialised by a ResNet's rule


def test_a_local_span_fits_any_size():
    layer = _layer(spatial_size=None, span=5)
    assert layer.height_block.relative.shape == (8, 5)
    for size in ((3, 9), (7, 2)):
        assert layer(_x(size)).shape == (2, 8, *size)


@pytest.mark.parametrize("kwargs, match", [
    ({"heads": 3, "spatial_size": 4}, "heads"),
    ({"out_channels": 12, "heads": 4, "spatial_size": 4}, "heads"),
    ({"span": 4}, "span"),
    ({"span": 0}, "span"),
    ({}, "spatial_size"),
    ({"groups": 2, "spatial_size": 4}, "groups"),
    ({"stride": 0, "spatial_size": 4}, "stride"),
    ({"out_channels": 0, "spatial_size": 4}, "out_channels"),
    ({"spatial_size": (4, 0)}, "spatial_size"),
])
def test_bad_arguments_are_usage_errors(kwargs, match):
    with pytest.raises(UsageError, match=match):
        AxialAttention2d(8, **{"heads": 2, **kwargs})


def test_a_wrong_axis_gets_a_did_you_mean():
    with pytest.raises(UsageError, match="did you mean 'width'"):
        AxialAttention(8, heads=2, axis="widht", length=4)


@pytest.mark.parametrize("span", [None, 3])
def test_multiply_adds_by_hand_with_the_positional_logits_in_attention(span):
    """Per pass over L lines of n positions (d = C / heads; q and k d / 2 each): the 1x1 projection to 2C
    (L n C 2C); q k^T, q r^q and k r^k (L heads n^2 d / 2 each); A v and A r^v (L heads n^2 d each), over every
    pair of a line whatever the span (the span is a mask). In eval mode bn_similarity divides by its running
    variance, so no moments are taken. Attention's share is all but the projections."""
    from visionattn.complexity import mac_counts

    b, c, heads, (h, w) = 2, 16, 4, (6, 5)
    d = c // heads
    layer = AxialAttention2d(c, heads=heads, spatial_size=(h, w), span=span)
    macs = mac_counts(layer, torch.randn(b, c, h, w))
    lines_n = ((b * w, h), (b * h, w))  # height pass: a line per column; width pass: per row
    attention = sum(lines * heads * n ** 2 * (3 * (d // 2) + 2 * d) for lines, n in lines_n)
    assert macs.attention == attention
    assert macs.total == sum(lines * n * c * 2 * c for lines, n in lines_n) + attention


def test_axial_relative_embeddings_index_query_minus_key():
    """E[i, j] = table[:, i - j + R] by loops: a global table at its size, resampled for another length (linearly,
    offset 0 kept at the centre), and a local one whose far pairs get the edge entry."""
    from visionattn.layers.relative_position import axial_relative_embeddings, resample_offsets

    table = torch.randn(3, 2 * 4 - 1, dtype=torch.float64)
    for length, offsets in ((4, table), (6, resample_offsets(table.t(), 11).t())):
        emb = axial_relative_embeddings(table, length)
        for i in range(length):
            for j in range(length):
                torch.testing.assert_close(emb[i, j], offsets[:, i - j + length - 1])
    local = axial_relative_embeddings(table[:, :5], 7, span=5)
    assert torch.equal(local[6, 0], table[:, 4]) and torch.equal(local[2, 3], table[:, 1])
    with pytest.raises(UsageError, match="table"):
        axial_relative_embeddings(table, 4, span=5)
