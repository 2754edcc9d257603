"""HaloNet's blocked local self-attention: query blocks that attend to their block plus a halo.

Vaswani et al. 2021, "Scaling Local Self-Attention for Parameter Efficient Visual Backbones" (HaloNet). The map is
cut into non-overlapping b x b query blocks; every query of a block attends to the same (b + 2h) x (b + 2h) window
around it (the block and a halo of h pixels), so neighbouring pixels share their keys (the paper's "blocked local
self-attention", which trades SASA's per-pixel windows for one window per block). Per head, for query i of a
block and key j of its window,

    logit_ij = d^-1/2 q_i . k_j + q_i . (r^h[y_j - y_i + w - 1] + r^w[x_j - x_i + w - 1]),   w = b + 2h,

(y, x) counted inside the block and inside the window, as timm's ``PosEmbedRel``
(:class:`~visionattn.layers.relative_position.RelativePositionLogits2d` with ``key_size``), then a softmax over the
window's keys and the sum of their values; the attention itself is
:class:`~visionattn.layers.attention_core.Attention` with that bias and a boolean mask.

**Any input size.** The map is padded to a multiple of b and by h on every side; the padded keys are MASKED out of
the softmax (the halo beyond the border and the padding to the block multiple alike), and the padded queries are
cropped from the output. timm's ``HaloAttn`` asserts that the size is a multiple of b and lets the zero-padded keys
beyond the border take part: each adds exp(q . r) to the softmax's denominator and nothing to its numerator, so
border pixels average fewer real values. ``mask_padding=False`` reproduces that (needed for equal outputs with
timm's weights; at a size that is no multiple of b the block padding then takes part the same way).

**Stride.** The paper downsamples with strided self-attention, its extension of strided convolution: outputs
only at every s-th pixel. timm (``HaloAttn``) computes the queries with a strided 1x1 convolution, so each b x b
block keeps b/s x b/s queries (every s-th pixel) that attend to the full-resolution (b + 2h)^2 window, and falls
back to the stride-1 attention followed by s x s average pooling when s does not divide b (or with ``avg_down``).
This layer does the same. Where timm differs from the geometry: for strided queries it indexes the relative
tables by the query's index inside the subsampled block (y_i in 0 ... b/s - 1), not by its pixel (s y_i), so the
logit's offset is not the pixel offset; kept, so that timm's weights compute what they were trained to.

Defaults: b = 8, h = 3 from the paper (its HaloNet models); 8 heads, d_qk = make_divisible(C_out * qk_ratio, 8) /
heads, d_v = C_out / heads, no biases, unscaled relative logits, and the initialisation (truncated normal, std
C_in^-1/2 for the projections, d_qk^-1/2 for the tables) from timm's ``HaloAttn``, whose parameter layout this is:
``q`` (1x1, the query heads), ``kv`` (1x1, per head [k | v]), ``rel_pos.height_rel`` / ``rel_pos.width_rel``
(timm's ``pos_embed.*``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from visionattn.errors import UsageError, check_positive
from visionattn.layers.attention_core import Attention
from visionattn.layers.helpers import (
    cache_unless_compiling,
    check_bool,
    check_feature_map,
    check_positive_int,
    make_divisible,
)
from visionattn.layers.relative_position import RelativePositionLogits2d
from visionattn.registry import register_attn

__all__ = ["HaloAttention2d", "halo_windows"]

_PAPER = "Vaswani et al. 2021, Scaling Local Self-Attention for Parameter Efficient Visual Backbones"


def halo_windows(x: torch.Tensor, block_size: int, halo_size: int) -> torch.Tensor:
    """The (b + 2h)^2 window around every b x b block of ``x``, zero beyond the map; the map is padded to a
    multiple of b at the bottom and right.

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C, ceil(H / b), ceil(W / b), b + 2h, b + 2h)
    """
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % block_size, -width % block_size
    x = F.pad(x, (halo_size, halo_size + pad_w, halo_size, halo_size + pad_h))
    win = block_size + 2 * halo_size
    return x.unfold(2, win, block_size).unfold(3, win, block_size)


@cache_unless_compiling(8)
def _key_mask(height: int, width: int, block_size: int, halo_size: int, device: torch.device) -> torch.Tensor:
    real = halo_windows(torch.ones(1, 1, height, width, device=device), block_size, halo_size)
    return rearrange(real > 0.5, "1 1 y x i j -> (y x) 1 1 (i j)")


@register_attn("halo", paper=_PAPER, family="self-attention", conv_like=True, min_channels=8,
               description="Blocked local self-attention: b x b query blocks attend to their (b + 2h)^2 "
                           "neighbourhood with 2D relative logits, padded keys masked (HaloNet)",
               variants=({"stride": 2}, {"block_size": 3, "halo_size": 1, "heads": 2, "stride": 2},
                         {"mask_padding": False},
                         {"out_channels": 16, "heads": 4, "qk_ratio": 0.5, "qkv_bias": True, "impl": "explicit"}))
class HaloAttention2d(nn.Module):
    """HaloNet's blocked local self-attention, a drop-in for the 3x3 convolution of a bottleneck block.

    Args:
        in_channels: C_in.
        out_channels: C_out = heads * d_v (default C_in).
        kernel_size: the kernel of the convolution it replaces; accepted for the convolution signature.
        stride: s; strided queries (b/s per block side) when s divides b, else attention then s x s average
            pooling (timm's rule). The output is ceil(H / s) x ceil(W / s).
        groups: must be 1.
        heads: attention heads (timm: 8); C_out must divide into them.
        dim_head: d_qk, channels per query/key head (default make_divisible(C_out * qk_ratio, 8) // heads).
        block_size: b (the paper: 8).
        halo_size: h (the paper: 3; timm's halonet26t: 2).
        qk_ratio: query/key width relative to C_out when ``dim_head`` is None (timm: 1.0).
        qkv_bias: biases on the projections (timm: none).
        avg_down: downsample by average pooling after the attention even when s divides b.
        scale_pos_embed: scale the relative logits by d_qk^-1/2 as q . k (timm: False).
        mask_padding: mask the padded keys out of the softmax (default); False lets them take part as zero keys
            and values, as timm does.
        attn_drop: dropout on the attention weights; impl: ``"auto"`` / ``"fused"`` / ``"explicit"``.

    Shape:
        - Input: (B, C_in, H, W), any H, W
        - Output: (B, C_out, ceil(H / stride), ceil(W / stride))
    """

    # the network's convolution rule leaves this layer to its own initialisation (timm's reset_parameters)
    keeps_own_init = True

    def __init__(self, in_channels: int, out_channels: int | None = None, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, heads: int = 8, dim_head: int | None = None, block_size: int = 8,
                 halo_size: int = 3, qk_ratio: float = 1.0, qkv_bias: bool = False, avg_down: bool = False,
                 scale_pos_embed: bool = False, mask_padding: bool = True, attn_drop: float = 0.0,
                 impl: str = "auto") -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = in_channels if out_channels is None else check_positive_int("out_channels", out_channels)
        check_positive_int("kernel_size", kernel_size)
        self.stride = check_positive_int("stride", stride)
        if groups != 1:
            raise UsageError(f"groups must be 1 for HaloNet's attention (heads split the channels), got {groups!r}")
        self.heads = check_positive_int("heads", heads)
        if self.out_channels % heads:
            raise UsageError(f"heads: out_channels={self.out_channels} must divide into heads={heads} (the values "
                             "of each head get out_channels / heads channels)")
        self.block_size = check_positive_int("block_size", block_size)
        self.halo_size = check_positive_int("halo_size", halo_size, minimum=0)
        check_positive("qk_ratio", qk_ratio)
        for flag, value in (("qkv_bias", qkv_bias), ("avg_down", avg_down), ("scale_pos_embed", scale_pos_embed),
                            ("mask_padding", mask_padding)):
            check_bool(flag, value)
        self.dim_head_qk = (check_positive_int("dim_head", dim_head) if dim_head is not None
                            else make_divisible(self.out_channels * qk_ratio, 8) // heads)
        if self.dim_head_qk == 0:
            raise UsageError(f"heads: make_divisible(out_channels * qk_ratio, 8) = "
                             f"{make_divisible(self.out_channels * qk_ratio, 8)} leaves no query channels for "
                             f"heads={heads}; give dim_head or fewer heads")
        self.dim_head_v = self.out_channels // heads
        strided = stride > 1 and not avg_down and block_size % stride == 0
        self.block_stride = stride if strided else 1  # the queries' stride (timm's block_stride)
        self.pool_stride = stride if stride > 1 and not strided else 1  # average pooling after the attention
        self.query_block = block_size // self.block_stride
        self.win_size = block_size + 2 * self.halo_size
        self.scale_pos_embed, self.mask_padding = scale_pos_embed, mask_padding
        self.q = nn.Conv2d(in_channels, heads * self.dim_head_qk, 1, stride=self.block_stride, bias=qkv_bias)
        self.kv = nn.Conv2d(in_channels, heads * (self.dim_head_qk + self.dim_head_v), 1, bias=qkv_bias)
        scale = self.dim_head_qk ** -0.5
        self.rel_pos = RelativePositionLogits2d(self.dim_head_qk, self.win_size, scale if scale_pos_embed else 1.0)
        self.attend = Attention("softmax", False, attn_drop, None, impl)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """timm's ``HaloAttn.reset_parameters``: truncated normal (at +-2) with std C_in^-1/2 for ``q`` and
        ``kv``, d_qk^-1/2 for the relative tables; biases (if any) zero, as timm's networks leave them."""
        for conv in (self.q, self.kv):
            nn.init.trunc_normal_(conv.weight, std=self.in_channels ** -0.5)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        for table in (self.rel_pos.height_rel, self.rel_pos.width_rel):
            nn.init.trunc_normal_(table, std=self.dim_head_qk ** -0.5)

    def key_mask(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """(n_blocks, 1, 1, w^2) boolean: which keys of each block's window are pixels of the H x W map (the same
        cached tensor for every call at this size: do not modify it)."""
        return _key_mask(height, width, self.block_size, self.halo_size, torch.device(device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.in_channels, type(self).__name__)
        batch, (height, width) = x.shape[0], x.shape[-2:]
        n_h, n_w = -(-height // self.block_size), -(-width // self.block_size)
        bq, win = self.query_block, self.win_size
        q = self.q(x)  # (B, heads * d_qk, ceil(H / s), ceil(W / s)); padded to whole blocks, cropped below
        out_h, out_w = q.shape[-2:]
        q = F.pad(q, (0, n_w * bq - out_w, 0, n_h * bq - out_h))
        q = rearrange(q, "b (h d) (y i) (x j) -> (b y x) h (i j) d", h=self.heads, y=n_h, x=n_w)
        kv = halo_windows(self.kv(x), self.block_size, self.halo_size)
        k, v = rearrange(kv, "b (h c) y x i j -> (b y x) h (i j) c", h=self.heads).split(
            [self.dim_head_qk, self.dim_head_v], dim=-1)
        mask = None
        if self.mask_padding and (self.halo_size or height % self.block_size or width % self.block_size):
            mask = self.key_mask(height, width, x.device).repeat(batch, 1, 1, 1)
        bias = self.rel_pos(q, (bq, bq), key_size=(win, win))
        out = self.attend(q, k, v, bias, mask)  # (B * blocks, heads, bq^2, d_v)
        out = rearrange(out, "(b y x) h (i j) c -> b (h c) (y i) (x j)", y=n_h, x=n_w, i=bq)[..., :out_h, :out_w]
        out = out.contiguous()  # a permuted view would make the next BatchNorm and convolution several times slower
        if self.pool_stride > 1:
            out = F.avg_pool2d(out, self.pool_stride, self.pool_stride, ceil_mode=True)
        return out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, heads={self.heads}, block_size={self.block_size}, "
                f"halo_size={self.halo_size}, stride={self.stride}, dim_head_qk={self.dim_head_qk}, "
                f"mask_padding={self.mask_padding}")
