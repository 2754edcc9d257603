"""Single- and multi-head self-attention on tokens, and over the pixels of a feature map.

Eq. 11.1-11.5 of the self-attention section (reference 003): Q = X W_q, K = X W_k, V = X W_v (11.1),
A = softmax(Q K^T / sqrt(d)) (11.2-11.3), S = A V (11.4), X~ = S W (11.5); with h heads each head attends in its
own d = dim / h channels and the heads' outputs are concatenated before W (the section's vectorised form, equal
to summing per-head projections). One linear layer computes q, k and v together (``qkv``, timm's and the ViT
code's layout: the output rows are [q | k | v], each split into heads), ``proj`` is W. Both carry biases by
default, as in ViT. The attention step itself is :class:`~visionattn.layers.attention_core.Attention`.

:class:`SelfAttention2d` is the same layer over the H * W pixels of a (B, C, H, W) map (every pixel attends to
every pixel: "pixels as tokens", reference 002), with 1x1 projections and an optional relative-position term.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from visionattn.errors import UsageError, check_range
from visionattn.layers.attention_core import Attention
from visionattn.layers.helpers import check_bool, check_feature_map, check_positive_int
from visionattn.registry import register_attn

__all__ = ["MultiHeadSelfAttention", "SelfAttention2d", "check_tokens", "head_dims"]

_PAPER = "Vaswani et al. 2017, Attention Is All You Need (eq. 11.1-11.5)"


def head_dims(dim: int, heads: int, dim_head: int | None) -> int:
    """Channels per head: ``dim_head``, or ``dim / heads`` (which must divide) when None."""
    check_positive_int("dim", dim)
    check_positive_int("heads", heads)
    if dim_head is not None:
        return check_positive_int("dim_head", dim_head)
    if dim % heads:
        raise UsageError(f"heads: dim={dim} must divide into heads={heads} (each head gets dim / heads channels); "
                         "or give dim_head")
    return dim // heads


def check_tokens(x: torch.Tensor, dim: int, layer: str) -> None:
    """A floating-point (B, N, ``dim``) token tensor."""
    if x.dim() != 3:
        raise UsageError(f"{layer} expects a 3-D (B, N, C) token input, got shape {tuple(x.shape)}")
    if x.shape[-1] != dim:
        raise UsageError(f"{layer} was built for {dim} channels, got an input with {x.shape[-1]} channels "
                         f"(shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise UsageError(f"{layer} needs a floating-point input, got {x.dtype}")


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention on tokens (eq. 11.1-11.5); ``heads=1`` is single-head self-attention.

    Args:
        dim: token channels d.
        heads: h.
        dim_head: channels per head (default dim / h).
        qkv_bias: biases on the q, k, v projections (ViT: yes).
        attn_drop: dropout on the attention weights; proj_drop: dropout after ``proj``.
        kernel: ``"softmax"`` or ``"linear"`` (Katharopoulos et al., see
            :mod:`visionattn.layers.linear_attention`).
        causal: token i attends tokens j <= i only.
        qk_scale: factor on the logits (None: dim_head^-1/2).
        impl: ``"auto"`` / ``"fused"`` / ``"explicit"`` (see :func:`visionattn.layers.attention_core.attention`).

    Shape:
        - Input: (B, N, dim); optional ``bias`` / ``mask`` broadcastable to (B, heads, N, N)
        - Output: (B, N, dim)
    """

    def __init__(self, dim: int, heads: int = 8, dim_head: int | None = None, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, kernel: str = "softmax", causal: bool = False,
                 qk_scale: float | None = None, impl: str = "auto") -> None:
        super().__init__()
        self.dim, self.heads, self.dim_head = dim, heads, head_dims(dim, heads, dim_head)
        check_bool("qkv_bias", qkv_bias)
        check_range("proj_drop", proj_drop, 0.0, 1.0, high_open=True)
        inner = heads * self.dim_head
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.attend = Attention(kernel, causal, attn_drop, qk_scale, impl)
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        check_tokens(x, self.dim, type(self).__name__)
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads).unbind(0)
        out = rearrange(self.attend(q, k, v, bias, mask), "b h n d -> b n (h d)")
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, dim_head={self.dim_head}"


@register_attn("linear_attention", paper="Katharopoulos et al. 2020, Transformers are RNNs", family="self-attention",
               description="Global linear attention over the pixels: phi(Q) (phi(K)^T V), phi = elu + 1",
               defaults={"kernel": "linear"}, variants=({"heads": 1},))
@register_attn("mhsa", paper=_PAPER, family="self-attention",
               description="Global multi-head self-attention over the pixels of a feature map",
               variants=({"heads": 1}, {"kernel": "linear"}, {"heads": 2, "dim_head": 4, "impl": "explicit"}))
class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the H * W pixels of a feature map, every pixel attending to every pixel.

    The q, k, v projections and W are 1x1 convolutions (equal to :class:`MultiHeadSelfAttention` on the
    flattened pixels); the output has the input's channels, so the layer drops into a residual branch. It
    accepts any H, W (no position information unless ``rel_pos`` is given: a module returning the (B, heads,
    HW, HW) logits term for an (H, W) map, e.g.
    :class:`~visionattn.layers.relative_position.RelativePositionLogits2d`).

    Args:
        channels: C.
        heads: h (default 8); dim_head: channels per head (default C / h).
        qkv_bias: biases on the projections (default False, as BoTNet and the non-local block).
        proj: apply the output projection W (BoTNet has none: the block's next 1x1 convolution plays it).
        kernel, attn_drop, qk_scale, impl: as for :class:`MultiHeadSelfAttention`.

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C, H, W)  (C = heads * dim_head without ``proj``)
    """

    def __init__(self, channels: int, heads: int = 8, dim_head: int | None = None, qkv_bias: bool = False,
                 proj: bool = True, kernel: str = "softmax", attn_drop: float = 0.0, qk_scale: float | None = None,
                 impl: str = "auto", rel_pos: nn.Module | None = None) -> None:
        super().__init__()
        self.channels, self.heads, self.dim_head = channels, heads, head_dims(channels, heads, dim_head)
        check_bool("proj", proj)
        inner = heads * self.dim_head
        if not proj and inner != channels:
            raise UsageError(f"proj=False needs heads * dim_head == channels, got {heads} * {self.dim_head} != "
                             f"{channels}")
        self.qkv = nn.Conv2d(channels, 3 * inner, 1, bias=qkv_bias)
        self.rel_pos = rel_pos
        self.attend = Attention(kernel, False, attn_drop, qk_scale, impl)
        self.proj = nn.Conv2d(inner, channels, 1) if proj else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.channels, type(self).__name__)
        h, w = x.shape[-2:]
        q, k, v = rearrange(self.qkv(x), "b (three h d) y x -> three b h (y x) d", three=3, h=self.heads).unbind(0)
        bias = self.rel_pos(q, (h, w)) if self.rel_pos is not None else None
        out = self.attend(q, k, v, bias)
        return self.proj(rearrange(out, "b h (y x) d -> b (h d) y x", y=h, x=w))

    def extra_repr(self) -> str:
        return f"{self.channels}, heads={self.heads}, dim_head={self.dim_head}"
