"""The SASA attention stem: local self-attention whose values are spatially aware.

Ramachandran et al. 2019, "Stand-Alone Self-Attention in Vision Models", section 3.2 ("Replacing the stem"):
on raw pixels, plain content-based attention learns edge detectors badly, so the stem injects distance-based
information into the value projection. Each key pixel's value is a mixture of m value projections whose
weights depend on the pixel's position (a, b) in the window,

    v_ab = ( sum_m p(a, b, m) W_V^m ) x_ab,                          (eq. 5)
    p(a, b, m) = softmax_m( (emb_row(a) + emb_col(b)) . nu^m ),       (eq. 6)

and the attention itself is that of :class:`~visionattn.layers.local_attention.LocalSelfAttention2d` (eq. 2-3,
logits q . (k + r) with the 2D relative embedding r). The paper's stem (section 4.1) is this layer with spatial
extent 4 and 4 mixtures at the image's full resolution, followed by batch normalisation and a 4 x 4 max pooling
(:func:`visionattn.models.sasa_resnet.attention_stem` builds it so).

Where the paper leaves a choice open, this implementation picks:

- (a, b) is the key's offset from the query inside its window, so p is shared by every query; with the even
  extent 4 the window spans offsets -2 .. +1. The paper calls its row and column embeddings "pooling-window
  aligned" and describes the stem as attention "within each 4 x 4 spatial block": read literally, the window
  would be the fixed 4 x 4 block of the max pooling, with (a, b) the key's place in that block, so that the
  queries of one block share one window. We keep the sliding window of every other SASA layer (translation
  equivariant, and the same layer serves any stride); with extent 4 and the 4 x 4 pooling after it, each
  pooled output still combines windows drawn from a 7 x 7 neighbourhood.
- emb_row, emb_col and nu^m are ``embed_dim``-wide (default d_out) and shared by the heads.
- One head by default: on an image the queries and keys are projections of 3 channels, so a head's logit is
  a 3 x 3 bilinear form of two pixels that one head already spans, while the cost (the window products
  below) grows with the heads. ``heads`` can be raised (the paper's other layers use 8).
- The stride follows the other SASA layers (attention at full resolution, then average pooling).

Because p(a, b, m) depends on the offset, a key's value differs for each query that sees it, so the fused
kernel (one value per key) does not apply. The layer instead folds the key and value projections onto the few
input channels: q . W_K x_ab = (W_K^T q) . x_ab, and the output sum_ab A_ab W_ab x_ab with
W_ab = sum_m p(a, b, m) W_V^m is one matrix product over (offset, input channel). Nothing d_out-wide is
copied k^2 times; what is copied is the k^2-window of the input (3 channels for an image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from visionattn.errors import check_choice
from visionattn.layers.helpers import check_positive_int
from visionattn.layers.local_attention import (
    RelativeEmbedding2d,
    attention_scale,
    check_attention_input,
    check_heads,
)
from visionattn.layers.recording import Recordable
from visionattn.registry import register_attn

__all__ = ["AttentionStem2d", "PositionMixture", "STEM_BORDERS"]

_PAPER = "Ramachandran et al. 2019, Stand-Alone Self-Attention in Vision Models"
STEM_BORDERS = ("mask", "zero")


class PositionMixture(nn.Module):
    """The mixture weights of the spatially aware values, p(a, b, m) of SASA eq. 6.

    Args:
        kernel_size: window extent k (offsets per axis).
        mixtures: number m of value projections.
        embed_dim: width of the row, column and mixture embeddings.

    Shape:
        - Output: (k, k, m), a softmax over m at every window position
    """

    def __init__(self, kernel_size: int, mixtures: int, embed_dim: int) -> None:
        super().__init__()
        self.rows = nn.Parameter(torch.randn(kernel_size, embed_dim))
        self.cols = nn.Parameter(torch.randn(kernel_size, embed_dim))
        # logits of unit variance at initialisation: a soft mixture, not a hard choice
        self.mix = nn.Parameter(torch.randn(mixtures, embed_dim) * (2 * embed_dim) ** -0.5)

    def forward(self) -> torch.Tensor:
        emb = self.rows[:, None, :] + self.cols[None, :, :]  # emb_row(a) + emb_col(b)
        return (emb @ self.mix.t()).softmax(dim=-1)


@register_attn("sasa_stem", paper=_PAPER, family="self-attention", conv_like=True, min_channels=8,
               description="SASA attention stem: local attention with spatially aware (position-mixed) values",
               variants=({"border": "zero"}, {"stride": 2, "out_channels": 16, "heads": 4},
                         {"kernel_size": 3, "heads": 2, "mixtures": 2}))
class AttentionStem2d(Recordable, nn.Module):
    """Local self-attention with spatially aware value embeddings, the SASA stem layer (section 3.2, eq. 5-6).

    Recordable, kind ``"local_attention"`` like :class:`~visionattn.layers.local_attention.LocalSelfAttention2d`:
    the (B, heads, H, W, k * k) window weights it forms anyway, slot (a, b) in raster order at offset
    (a - k // 2, b - k // 2) from its pixel (:func:`~visionattn.layers.local_attention_ref.window_index`'s layout).

    Args:
        in_channels: d_in (3 for the stem of an image model).
        out_channels: d_out (default d_in); divisible by ``heads``, even.
        kernel_size: window extent k; the paper's stem uses 4 (an even k spans offsets -k/2 .. k/2 - 1).
        heads: attention heads; each gets d_out / heads channels of q, k, v and r (default 1, see above).
        mixtures: number m of value projections W_V^m; the paper's stem uses 4.
        stride: 1, or the size of the average pooling after the attention.
        border: ``"mask"`` (positions outside the image leave the softmax) or ``"zero"`` (zero padding: they
            keep the logit q . r and a zero value).
        qk_scale: factor on the logits; None is (d_out / heads)^-1/2.
        embed_dim: width of emb_row, emb_col and nu^m; None is d_out.

    Shape:
        - Input: (B, in_channels, H, W)
        - Output: (B, out_channels, ceil(H / stride), ceil(W / stride))
    """

    record_kind = "local_attention"

    def __init__(self, in_channels: int, out_channels: int | None = None, kernel_size: int = 4, heads: int = 1,
                 mixtures: int = 4, stride: int = 1, border: str = "mask", qk_scale: float | None = None,
                 embed_dim: int | None = None) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        out_channels = in_channels if out_channels is None else check_positive_int("out_channels", out_channels)
        for name, value in (("kernel_size", kernel_size), ("heads", heads), ("mixtures", mixtures),
                            ("stride", stride)):
            check_positive_int(name, value)
        embed_dim = out_channels if embed_dim is None else check_positive_int("embed_dim", embed_dim)
        check_heads(out_channels, heads)
        check_choice("border", border, STEM_BORDERS)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.heads, self.mixtures, self.stride, self.border = (
            kernel_size, heads, mixtures, stride, border)
        self.scale = attention_scale(qk_scale, out_channels // heads)
        self.qk = nn.Conv2d(in_channels, 2 * out_channels, 1, bias=False)
        self.values = nn.Conv2d(in_channels, mixtures * out_channels, 1, bias=False)  # W_V^1 .. W_V^m stacked
        self.rel = RelativeEmbedding2d(out_channels, heads, kernel_size)
        self.mixture = PositionMixture(kernel_size, mixtures, embed_dim)

    def _windows(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, k^2, HW): every pixel's k x k window, zero outside the image."""
        k, c = self.kernel_size, self.kernel_size // 2
        padded = F.pad(x, (c, k - 1 - c, c, k - 1 - c))
        return F.unfold(padded, k).unflatten(1, (x.shape[1], k * k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_attention_input(x, self.in_channels, "AttentionStem2d")
        heads, (b, _, height, width) = self.heads, x.shape
        w_q, w_k = rearrange(self.qk.weight, "(two h d) c 1 1 -> two h d c", two=2, h=heads)
        q = torch.matmul(w_q.flatten(0, 1), x.flatten(2)).unflatten(1, (heads, -1))  # (B, heads, d, HW)
        windows = self._windows(x)  # (B, C_in, k^2, HW)
        # q . k_ab = (W_K^T q) . x_ab: the logits need the window of the input only, not of the keys
        q_k = torch.matmul(w_k.transpose(1, 2), q)  # (B, heads, C_in, HW)
        logits = torch.matmul(self.rel.table().flatten(1, 2), q)  # the relative term q . r_ab: (B, heads, k^2, HW)
        for c in range(self.in_channels):
            logits = logits + q_k[:, :, c, None] * windows[:, None, c]
        logits = logits * self.scale
        if self.border == "mask":
            inside = self._windows(x.new_ones(1, 1, height, width))[0, 0] > 0  # (k^2, HW)
            logits = logits.masked_fill(~inside, float("-inf"))
        attn = logits.softmax(dim=2)
        if self.recorder is not None:
            self.recorder(self, rearrange(attn, "b h w (y x) -> b h y x w", y=height).detach())
        # eq. 5: W_ab = sum_m p(a, b, m) W_V^m, one value projection per window offset
        w_v = rearrange(self.values.weight, "(m h d) c 1 1 -> m h d c", m=self.mixtures, h=heads)
        w_ab = torch.einsum("om,mhdc->hdco", self.mixture().flatten(0, 1), w_v).flatten(2)
        weighted = (attn.unsqueeze(2) * windows.unsqueeze(1)).flatten(2, 3)  # A_ab x_ab: (B, heads, C k^2, HW)
        out = torch.matmul(w_ab, weighted).reshape(b, self.out_channels, height, width)
        if self.stride > 1:
            out = F.avg_pool2d(out, self.stride, self.stride, ceil_mode=True)
        return out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, heads={self.heads}, "
                f"mixtures={self.mixtures}, stride={self.stride}, border={self.border!r}")
