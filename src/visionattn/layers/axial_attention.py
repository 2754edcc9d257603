"""Position-sensitive axial attention (Axial-DeepLab): attention along the height axis, then along the width axis.

Wang et al. 2020, "Axial-DeepLab: Stand-Alone Axial-Attention for Panoptic Segmentation", sec. 3. Along one axis,
query position o attends the positions p of its span N(o) on the same line (column for the height pass, row for
the width pass), position-sensitive (eq. 4):

    y_o = sum_{p in N(o)} softmax_p(q_o . k_p + q_o . r^q_{p-o} + k_p . r^k_{p-o}) (v_p + r^v_{p-o}),

multi-head, with q, k, v from one 1x1 projection and learned relative embeddings r^q, r^k, r^v along the axis.
The official code (csrhddlam/axial-deeplab, ``lib/models/axialnet.py``, whose layout, names and initialisation
this follows) batch-normalises each part: the projection (``bn_qkv``), each of the three similarity terms per
head (``bn_similarity``, 3 x heads channels) before they are summed, and the two output terms sum_p a_op v_p and
sum_p a_op r^v (``bn_output``, per channel) before they are added. Queries and keys get half of a head's
channels, values all of them (``qkv_transform`` has 2 x out channels). The tables are indexed as the official
``flatten_index``: r^q and r^v by o - p, r^k by p - o (learned tables; a relabelling of eq. 4's p - o).

How the three normalised terms reach the attention core: a BatchNorm is ``gamma (x - mu) / sigma + beta`` per
channel, and here a channel is one term of one head, so inside the softmax over p the shift
``beta - gamma mu / sigma`` is one constant per head and cancels. The normalised sum is therefore the logits
``s_qk q.k + s_qr q.r^q + s_kr k.r^k`` with ``s = gamma / sigma``: the scaled queries go to
:func:`~visionattn.layers.attention_core.attention_weights` as q, the two positional terms as its bias, and the
span as its mask. In training sigma is the batch statistic of each term over every line and every attended pair,
as in the official ``nn.BatchNorm2d`` over the stacked (lines, 3 heads, n, n) similarities; it is computed from the
sums of a_i . b_j and (a_i . b_j)^2, which need no (n x n) tensor per term (Gram matrices; band sums of outer
products for a local span), with its gradient, and the running statistics are updated as BatchNorm does (in eval
mode sigma is the running statistic, and no sums are taken). The shift ``beta`` of ``bn_similarity`` has no
effect (its gradient in the official code is zero), so it is frozen (``requires_grad=False``) and kept for the
official layout and parameter count. (The height pass's ``bn_output`` shift is removed by the width pass's
training-mode ``bn_qkv``, so its gradient is zero in training, as in the official code; with frozen, eval-mode
BatchNorms it is not, so it stays trainable.) The weights themselves are formed (the explicit path of the core):
the positional value term sum_p a_op r^v_{p-o} needs them, which a fused kernel never exposes. That step is
:class:`PositionalValueAttention`, an ``Attention`` subclass, so that the recorder and the MAC count see it; the
positional logits are :class:`PositionalLogits`, which the MAC count takes as attention's too.

Span: global along the axis (``span=None``, the paper's ImageNet models, the official code's only form), whose
tables are built for the map size (``spatial_size``) and resampled for another size
(:func:`~visionattn.layers.relative_position.axial_relative_embeddings`); or a local span m (odd; the paper's
N_{1 x m}(o), positions |p - o| <= (m - 1) / 2, fewer at the ends of a line), whose m-entry tables fit any size.

Memory: per pass the attention weights are (lines, heads, n, n) = B W heads H^2 for the height pass, never the
(HW x HW) of global 2D attention (W = 56 times smaller at 56x56). For an (N, C, 56, 56) input with 8 heads that is
N * 1.405M values per pass (S = 5.4 MiB per image in fp32). Backward keeps one S per pass (the weights); counted
over the storages saved for backward at C = 64, one layer (both passes) keeps 28.7 MiB per image here and 53.9 MiB
in the official code, which keeps four S per pass (the stacked similarities its BatchNorm saves, and the softmax);
the rest is channel-sized (lines, projections, BatchNorm inputs). The forward's peak holds about three S here
(positional bias, logits, weights) and about seven there (estimated from the code, not measured).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from visionattn.errors import UsageError, check_choice
from visionattn.layers.attention_core import Attention, attention_weights
from visionattn.layers.helpers import check_feature_map, check_odd, check_positive_int, pair
from visionattn.layers.relative_position import axial_relative_embeddings
from visionattn.registry import register_attn

__all__ = ["PositionalLogits", "PositionalValueAttention", "AxialAttention", "AxialAttention2d", "span_mask"]

_PAPER = "Wang et al. 2020, Axial-DeepLab: Stand-Alone Axial-Attention for Panoptic Segmentation"
AXES = ("height", "width")
_LINES = {"height": ("b c h w -> (b w) c h", "(b w) c h -> b c h w"),
          "width": ("b c h w -> (b h) c w", "(b h) c w -> b c h w")}


def span_mask(length: int, span: int | None, device: torch.device | None = None) -> torch.Tensor | None:
    """(n, n) boolean: query i may attend key j when |i - j| <= (span - 1) / 2; None when every pair may (a global
    span, or a local one that covers the line)."""
    if span is None or span >= 2 * length - 1:
        return None
    pos = torch.arange(length, device=device)
    return (pos[:, None] - pos[None, :]).abs() <= (span - 1) // 2


def _band_sums(x: torch.Tensor, span: int) -> torch.Tensor:
    """s_i = sum_{|j - i| <= (span - 1) / 2} x_j along axis 2 (the keys of query i), from one cumulative sum."""
    n, radius = x.shape[2], (span - 1) // 2
    prefix = F.pad(x.cumsum(2), (0, 0) * (x.dim() - 3) + (1, 0))  # prefix[k] = sum_{j < k} x_j
    pos = torch.arange(n, device=x.device)
    return prefix.index_select(2, (pos + radius + 1).clamp(max=n)) - prefix.index_select(2, (pos - radius).clamp(0))


def _pair_moments(a: torch.Tensor, b: torch.Tensor, span: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per head, the sum and the sum of squares of x_ij = a_i . b_j over every line and attended pair (i, j),
    without the (n, n) products: sum_ij a_i . b_j = sum_i a_i . (sum_j b_j) and
    sum_ij (a_i . b_j)^2 = sum_i a_i^T (sum_j b_j b_j^T) a_i, the inner sums over the keys of query i.

    Shape: a, b (L, heads, n, d) -> two (heads,)"""
    if span is None:
        total = torch.einsum("lgd,lgd->g", a.sum(2), b.sum(2))
        gram_a, gram_b = (torch.einsum("lgnd,lgne->lgde", t, t) for t in (a, b))
        return total, torch.einsum("lgde,lgde->g", gram_a, gram_b)
    total = torch.einsum("lgnd,lgnd->g", a, _band_sums(b, span))
    outer = _band_sums(torch.einsum("lgnd,lgne->lgnde", b, b), span)
    return total, torch.einsum("lgnd,lgnde,lgne->g", a, outer, a)


def _offset_moments(a: torch.Tensor, emb: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor,
                                                                                               torch.Tensor]:
    """Per head, the sum and the sum of squares of x_ij = a_i . emb[i, j] over every line and attended pair.

    Shape: a (L, heads, n, d), emb (n, n, d), mask (n, n) or None -> two (heads,)"""
    if mask is not None:
        emb = emb * mask[..., None].to(emb.dtype)
    second = torch.einsum("ijd,ije->ide", emb, emb)
    return torch.einsum("lgnd,nd->g", a, emb.sum(1)), torch.einsum("lgnd,nde,lgne->g", a, second, a)


def _uses_batch_statistics(bn: nn.BatchNorm2d) -> bool:
    """Whether ``bn`` normalises by the batch's statistics (training, or no running statistics kept)."""
    return bn.training or bn.running_var is None


def _batch_norm_scale(bn: nn.BatchNorm2d, total: torch.Tensor | None, squares: torch.Tensor | None, count: int,
                      dtype: torch.dtype) -> torch.Tensor:
    """gamma / sqrt(var + eps) per channel of ``bn`` for values with this sum and sum of squares over ``count``
    entries each, as ``bn`` would scale them: the batch variance in training (updating the running statistics
    as nn.BatchNorm does: momentum, or a cumulative average when it is None; the unbiased variance), the running
    variance in eval mode, where the sums are not needed (None)."""
    if _uses_batch_statistics(bn):
        mean = total / count
        var = (squares / count - mean * mean).clamp_min(0.0)
        if bn.training and bn.track_running_stats:
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                # nn.BatchNorm's factor: the momentum, or with momentum=None a cumulative average
                factor = bn.momentum if bn.momentum is not None else 1.0 / bn.num_batches_tracked.item()
                bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
                bn.running_var.lerp_((var * count / max(count - 1, 1)).to(bn.running_var.dtype), factor)
    else:
        var = bn.running_var.to(dtype)
    return bn.weight.to(dtype) / torch.sqrt(var + bn.eps)


class PositionalValueAttention(Attention):
    """The attention step of a pass: A = softmax(q k^T + bias) over the keys the mask allows (the core's
    :func:`~visionattn.layers.attention_core.attention_weights`, explicit), then both output terms of eq. 4,
    sum_j a_ij v_j and the positional sum_j a_ij r^v_ij. An :class:`Attention` step, so that
    :class:`~visionattn.layers.attention_core.AttentionRecorder` records A and the MAC count takes these products
    as attention's; the scale is in q already (BatchNorm's gamma / sigma).

    Shape:
        - Input: q, k (L, heads, n, d_k), v (L, heads, n, d_v), bias (L, heads, n, n), mask (n, n) or None,
          rel_v (n, n, d_v)
        - Output: two (L, heads, n, d_v)
    """

    def __init__(self) -> None:
        super().__init__(impl="explicit", scale=1.0)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, *, rel_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = attention_weights(q, k, bias, mask, scale=1.0)
        if self.recorder is not None:
            self.recorder(self, weights.detach())
        values = torch.matmul(weights, v)
        # sum_j a_ij r^v_ij: one (L * heads, n) x (n, d_v) product per query position i, on a view of the weights
        # (einsum would keep a transposed copy of them for backward)
        positions = torch.matmul(weights.flatten(0, 1).transpose(0, 1), rel_v).transpose(0, 1).view_as(values)
        return values, positions


class PositionalLogits(nn.Module):
    """The positional terms of eq. 4's logits, q_o . r^q_{p-o} + k_p . r^k_{p-o}, for every pair of a line (the
    content term q_o . k_p is the attention step's): lines x heads x n^2 x 2 d_k multiply-adds, counted in
    attention's share (``attention_products``) as the step's own. No parameters: the tables are the layer's.

    Shape:
        - Input: q, k (L, heads, n, d_k), each already scaled; rel_q, rel_k (n, n, d_k)
        - Output: (L, heads, n, n)
    """

    attention_products = True

    def forward(self, q: torch.Tensor, k: torch.Tensor, rel_q: torch.Tensor, rel_k: torch.Tensor) -> torch.Tensor:
        return torch.einsum("lgid,ijd->lgij", q, rel_q) + torch.einsum("lgjd,jid->lgij", k, rel_k)


class AxialAttention(nn.Module):
    """Position-sensitive multi-head attention along one axis of a map (Axial-DeepLab eq. 4; the official
    ``AxialAttention`` without its pooling, which :class:`AxialAttention2d` applies after the width pass).

    Args:
        in_channels: C_in.
        out_channels: C_out (default C_in); each head has d = C_out / heads channels, d / 2 each for q and k.
        heads: attention heads (the official code's ``groups``: 8).
        axis: ``"height"`` (attend along each column) or ``"width"`` (along each row).
        length: the axis length the global tables are built for (the official ``kernel_size``); None with a
            local span.
        span: None for global attention along the axis, or an odd local span m.

    Parameters carry the official names: ``qkv_transform`` (1x1 ``nn.Conv1d`` over a line, no bias, initialised
    normal with std C_in^-1/2), ``bn_qkv``, ``bn_similarity``, ``bn_output``, and ``relative`` ((2d, 2K - 1),
    or (2d, m) for a local span; normal with std d^-1/2).

    Shape:
        - Input: (B, C_in, H, W)
        - Output: (B, C_out, H, W)
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, heads: int = 8, axis: str = "height",
                 length: int | None = None, span: int | None = None) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = in_channels if out_channels is None else check_positive_int("out_channels",
                                                                                       out_channels)
        self.heads = check_positive_int("heads", heads)
        if self.out_channels % (2 * heads):
            raise UsageError(f"heads: out_channels={self.out_channels} must split into {heads} heads of an even "
                             f"width (half of each head for q and k, all of it for v); needs out_channels a "
                             f"multiple of 2 * heads = {2 * heads}")
        self.axis = check_choice("axis", axis, AXES)
        self.span = None if span is None else check_odd("span", span, "(a span centred on the query)")
        if span is None:
            self.length = check_positive_int("length", length)
        self.dim_head = self.out_channels // heads
        self.qkv_transform = nn.Conv1d(in_channels, 2 * self.out_channels, 1, bias=False)
        self.bn_qkv = nn.BatchNorm1d(2 * self.out_channels)
        self.bn_similarity = nn.BatchNorm2d(3 * heads)
        self.bn_similarity.bias.requires_grad_(False)  # a shift per head of the logits: the softmax cancels it
        self.bn_output = nn.BatchNorm1d(2 * self.out_channels)
        offsets = 2 * self.length - 1 if span is None else span
        self.relative = nn.Parameter(torch.empty(2 * self.dim_head, offsets))
        self.position_logits = PositionalLogits()
        self.attend = PositionalValueAttention()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation: q/k/v projection normal with std C_in^-1/2, tables with std d^-1/2."""
        nn.init.normal_(self.qkv_transform.weight, std=self.in_channels ** -0.5)
        nn.init.normal_(self.relative, std=self.dim_head ** -0.5)

    def _similarity_scales(self, q: torch.Tensor, k: torch.Tensor, e_q: torch.Tensor, e_k: torch.Tensor,
                           mask: torch.Tensor | None) -> torch.Tensor:
        """s = gamma / sigma of ``bn_similarity`` for the q.k, q.r^q and k.r^k terms: (3, heads, 1, 1), in fp32 or
        wider (variances from sums of squares lose too much in half precision)."""
        n = q.shape[2]
        radius = None if mask is None else (self.span - 1) // 2
        # attended pairs of a line: every one, or n (2r + 1) less the r (r + 1) that fall off its two ends
        pairs = n * n if radius is None else n * (2 * radius + 1) - radius * (radius + 1)
        dtype = torch.promote_types(q.dtype, torch.float32)
        # autocast off where it exists ("meta", used to count a model's size, has none)
        no_autocast = torch.autocast(q.device.type, enabled=False) if q.device.type in ("cpu", "cuda") \
            else contextlib.nullcontext()
        with no_autocast:
            total = squares = None
            if _uses_batch_statistics(self.bn_similarity):  # in eval mode the running variance: no sums to take
                q, k, e_q, e_k = (t.to(dtype) for t in (q, k, e_q, e_k))
                terms = (_pair_moments(q, k, None if mask is None else self.span),
                         _offset_moments(q, e_q, mask), _offset_moments(k, e_k, mask))
                total, squares = (torch.cat(parts) for parts in zip(*terms))
            scale = _batch_norm_scale(self.bn_similarity, total, squares, q.shape[0] * pairs, dtype)
        return scale.view(3, self.heads, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.in_channels, type(self).__name__)
        if x.shape[0] == 0:  # no lines: BatchNorm statistics of nothing would be NaN
            return x.new_zeros(0, self.out_channels, *x.shape[2:])
        to_lines, from_lines = _LINES[self.axis]
        lines = rearrange(x, to_lines)
        n, half = lines.shape[-1], self.dim_head // 2
        qkv = rearrange(self.bn_qkv(self.qkv_transform(lines)), "l (g c) n -> l g n c", g=self.heads)
        q, k, v = qkv.split([half, half, self.dim_head], dim=-1)
        e_q, e_k, e_v = axial_relative_embeddings(self.relative, n, self.span).to(q.dtype).split(
            [half, half, self.dim_head], dim=-1)
        mask = span_mask(n, self.span, x.device)
        s_qk, s_qr, s_kr = self._similarity_scales(q, k, e_q, e_k, mask).to(q.dtype)
        # q_i . r^q[i - j] and k_j . r^k[j - i], each scaled on the small side before the (n, n) products
        bias = self.position_logits(q * s_qr, k * s_kr, e_q, e_k)
        values, positions = self.attend(q * s_qk, k, v, bias, mask, rel_v=e_v)
        out = rearrange(torch.stack([values, positions], -1), "l g n c t -> l (g c t) n")
        out = self.bn_output(out).unflatten(1, (self.out_channels, 2)).sum(2)
        return rearrange(out, from_lines, b=x.shape[0])

    def extra_repr(self) -> str:
        size = f"span={self.span}" if self.span is not None else f"length={self.length}"
        return f"{self.in_channels}, {self.out_channels}, heads={self.heads}, axis={self.axis!r}, {size}"


@register_attn("axial", paper=_PAPER, family="self-attention", conv_like=True, needs_spatial_size=True,
               min_channels=16,
               description="Position-sensitive axial attention: multi-head attention along the height axis, then "
                           "the width axis, with relative embeddings for queries, keys and values (Axial-DeepLab)",
               variants=({"stride": 2}, {"span": 3, "heads": 4}))
class AxialAttention2d(nn.Module):
    """Axial-DeepLab's axial-attention layer, a drop-in for the 3x3 convolution of a bottleneck: the height pass,
    then the width pass (:class:`AxialAttention` each), then for a stride s an s x s average pooling, as the
    official ``AxialBlock`` (``hight_block``, ``width_block`` with its pooling).

    Args:
        in_channels: C_in.
        out_channels: C_out (default C_in): the height pass maps C_in to C_out, the width pass keeps C_out.
        kernel_size: the kernel of the convolution it replaces; accepted for the convolution signature.
        stride: 1, or the pooling after the width pass (rounding up, so the output is ``ceil(H / stride)`` as a
            "same" convolution's; on even maps the official 2x2 pooling).
        groups: must be 1 (the heads split the channels).
        heads: attention heads of both passes (official: 8).
        span: None for global attention along each axis (the paper's ImageNet models), or an odd local span m.
        spatial_size: the input's (H, W), which sizes the global tables (official: the ``kernel_size`` of the
            stage); another input size resamples them. Not needed with a local span.

    Shape:
        - Input: (B, C_in, H, W)
        - Output: (B, C_out, ceil(H / stride), ceil(W / stride))
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, heads: int = 8, span: int | None = None,
                 spatial_size: int | tuple[int, int] | None = None) -> None:
        super().__init__()
        check_positive_int("kernel_size", kernel_size)
        self.stride = check_positive_int("stride", stride)
        if groups != 1:
            raise UsageError(f"groups must be 1 for axial attention (its heads split the channels), got {groups!r}")
        if span is None and spatial_size is None:
            raise UsageError("spatial_size: global axial attention (span=None) needs the input's (H, W) to size its "
                             "relative tables, got None; give spatial_size, or a local span")
        height, width = pair("spatial_size", spatial_size) if spatial_size is not None else (None, None)
        self.spatial_size = None if spatial_size is None else (height, width)
        self.in_channels = in_channels
        self.height_block = AxialAttention(in_channels, out_channels, heads, "height", height, span)
        self.out_channels = self.height_block.out_channels
        self.width_block = AxialAttention(self.out_channels, self.out_channels, heads, "width", width, span)
        self.heads, self.span = heads, span

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.in_channels, type(self).__name__)
        out = self.width_block(self.height_block(x))
        return F.avg_pool2d(out, self.stride, self.stride, ceil_mode=True) if self.stride > 1 else out

    def extra_repr(self) -> str:
        return f"stride={self.stride}, spatial_size={self.spatial_size}"
