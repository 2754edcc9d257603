"""BoTNet's multi-head self-attention: the layer that replaces the 3x3 convolution of a bottleneck.

Srinivas et al. 2021, "Bottleneck Transformers for Visual Recognition", fig. 4: over the H x W pixels of the
block's reduced map, per head,

    q = W_q x,  k = W_k x,  v = W_v x          (1x1 projections, no bias)
    y = softmax(q k^T / sqrt(d) + q r^T) v,     r_ij = r^h[h_j - h_i] + r^w[w_j - w_i],

with 4 heads, the 2D relative position logits of :class:`~visionattn.layers.relative_position.
RelativePositionLogits2d`, and no output projection (the bottleneck's next 1x1 convolution follows). A strided
block attends at its input's resolution, then a 2x2 average pooling halves it (the paper's sec. 4; official
code and timm: the same). The attention itself is :class:`~visionattn.layers.self_attention.SelfAttention2d`
with ``proj=False`` and this ``rel_pos``.

Defaults follow BoTNet's official code (the TPU code and its reference gist): the queries are scaled by
d^-1/2 before both q k^T and the relative logits (``scale_pos_embed=True``); timm's ``BottleneckAttn`` leaves
them unscaled (``scale_pos_embed=False``, which ``botnet26t_256`` uses to compute what timm's does).

Multiply-adds per image over N = H W pixels, C = heads d channels: 3 N C^2 for the projections, heads N^2 d each
for q k^T and A v, and heads N d (2W - 1 + 2H - 1) for the relative logits (the official ``rel_logits_1d``: q
against every offset of each table); the last three are attention's share of the MAC count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from visionattn.errors import UsageError
from visionattn.layers.helpers import check_bool, check_positive_int, pair
from visionattn.layers.relative_position import RelativePositionLogits2d
from visionattn.layers.self_attention import SelfAttention2d, head_dims
from visionattn.registry import register_attn

__all__ = ["BoTSelfAttention2d"]

_PAPER = "Srinivas et al. 2021, Bottleneck Transformers for Visual Recognition"


@register_attn("bot_mhsa", paper=_PAPER, family="self-attention", conv_like=True, needs_spatial_size=True,
               min_channels=4,
               description="Global multi-head self-attention with 2D relative position logits, in place of the "
                           "3x3 convolution of a bottleneck (BoTNet)",
               variants=({"stride": 2}, {"heads": 1}, {"scale_pos_embed": False, "impl": "explicit"}))
class BoTSelfAttention2d(SelfAttention2d):
    """BoTNet's MHSA layer (fig. 4), a drop-in for the 3x3 convolution of a bottleneck block.

    Args:
        in_channels: C; heads * d = C (no output projection, so the width is kept).
        out_channels: must be ``in_channels`` (or None): without an output projection the layer keeps its width.
        kernel_size: the kernel of the convolution it replaces; accepted for the convolution signature (the
            attention is global).
        stride: 1, or the size of the average pooling after the attention (the paper: 2). The pooling rounds up
            (``ceil_mode``) so the output is ``ceil(H / stride)`` like a "same" convolution; on even maps it is
            the official code's and timm's 2x2 pooling.
        groups: must be 1.
        heads: attention heads (the paper: 4).
        spatial_size: the input's (H, W) the relative tables are built for; another size at run time resamples
            them (:class:`~visionattn.layers.relative_position.RelativePositionLogits2d`).
        scale_pos_embed: scale the relative logits by d^-1/2 as q k^T (official code: True; timm: False).
        qkv_bias: biases on the projections (the paper: none).
        attn_drop: dropout on the attention weights; impl: ``"auto"`` / ``"fused"`` / ``"explicit"``.

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C, ceil(H / stride), ceil(W / stride))
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, heads: int = 4, spatial_size: int | tuple[int, int] | None = None,
                 scale_pos_embed: bool = True, qkv_bias: bool = False, attn_drop: float = 0.0,
                 impl: str = "auto") -> None:
        check_positive_int("in_channels", in_channels)
        if out_channels is not None and out_channels != in_channels:
            raise UsageError(f"out_channels: BoTNet's MHSA has no output projection and keeps its width, got "
                             f"out_channels={out_channels!r} for in_channels={in_channels}; needs the same")
        check_positive_int("kernel_size", kernel_size)
        check_positive_int("stride", stride)
        if groups != 1:
            raise UsageError(f"groups must be 1 for BoTNet's self-attention (heads split the channels), got "
                             f"{groups!r}")
        if spatial_size is None:
            raise UsageError("spatial_size: BoTNet's MHSA needs the input's (H, W) to size its relative position "
                             "tables, got None")
        check_bool("scale_pos_embed", scale_pos_embed)
        dim_head = head_dims(in_channels, heads, None)
        rel_pos = RelativePositionLogits2d(dim_head, pair("spatial_size", spatial_size),
                                           dim_head ** -0.5 if scale_pos_embed else 1.0)
        super().__init__(in_channels, heads, None, qkv_bias, proj=False, attn_drop=attn_drop, impl=impl,
                         rel_pos=rel_pos)
        self.in_channels = self.out_channels = in_channels
        self.stride, self.spatial_size, self.scale_pos_embed = stride, rel_pos.spatial_size, scale_pos_embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return F.avg_pool2d(out, self.stride, self.stride, ceil_mode=True) if self.stride > 1 else out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, stride={self.stride}, spatial_size={self.spatial_size}"
