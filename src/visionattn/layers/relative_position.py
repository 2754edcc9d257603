"""2D relative positions, written once: SASA's window embedding and the global relative logits of BoTNet.

Two forms of the same idea, a learned term that depends on the offset between a query's and a key's pixel,
split into a row-offset and a column-offset part:

- **Local, on the key side** (:class:`RelativeEmbedding2d`; Ramachandran et al. 2019, "Stand-Alone
  Self-Attention in Vision Models", eq. 3): r_{a-i, b-j} is added to the key of a k x k window, the logit is
  q . (k + r); r is the concatenation of a row and a column embedding of d_out / 2 channels each.
- **Global, as logits** (:class:`RelativePositionLogits2d`; Shaw et al. 2018, "Self-Attention with Relative
  Position Representations", extended to 2D by Bello et al. 2019, "Attention Augmented Convolutional
  Networks", sec. 3.2, and used by Srinivas et al. 2021, "Bottleneck Transformers for Visual Recognition"):
  every pixel attends to every pixel of an H x W map and

      l_ij = q_i . r^h[h_j - h_i] + q_i . r^w[w_j - w_i],

  with per-head shared tables r^h (2H - 1, d) and r^w (2W - 1, d). The term is returned as the additive bias
  of the attention core (:func:`~visionattn.layers.attention_core.attention`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from visionattn.errors import UsageError, check_positive
from visionattn.layers.helpers import check_positive_int, pair

__all__ = ["relative_table", "RelativeEmbedding2d", "resample_offsets", "relative_logits_1d",
           "RelativePositionLogits2d"]

Size = tuple[int, int]


def relative_table(rel_rows: torch.Tensor, rel_cols: torch.Tensor) -> torch.Tensor:
    """The (heads, T, T, d) table of relative embeddings r_{u, v} = rel_rows[u] + rel_cols[v]. SASA's
    concatenation of a row-offset and a column-offset embedding is this sum, each table zero outside its half
    of the channels (:class:`RelativeEmbedding2d`).

    Shape:
        - Input: rel_rows, rel_cols (heads, T, d)
        - Output: (heads, T, T, d)
    """
    return rel_rows[:, :, None, :] + rel_cols[:, None, :, :]


class RelativeEmbedding2d(nn.Module):
    """The 2D relative embedding r_{a-i, b-j} of SASA: a row-offset and a column-offset table of d_out / 2
    channels each, concatenated, then split into heads like the keys they are added to.

    The concatenation [row_u, col_v] equals [row_u, 0] + [0, col_v]: ``forward`` returns these two zero-filled
    tables split into heads, which is what the kernels take (the k^2 window slots then share 2k relative dot
    products per pixel); :meth:`table` gives the whole (heads, T, T, d) table.

    Args:
        channels: d_out, even.
        heads: number of heads; ``channels`` must divide into them.
        size: offsets per axis (k, or 2k - 1 when the window is clamped at the border).

    Shape:
        - Output: rel_rows, rel_cols (heads, size, channels / heads)
    """

    def __init__(self, channels: int, heads: int, size: int) -> None:
        super().__init__()
        if channels % 2:
            raise UsageError(f"out_channels must be even (half row, half column embedding), got {channels}")
        self.heads = heads
        self.rows = nn.Parameter(torch.randn(size, channels // 2))
        self.cols = nn.Parameter(torch.randn(size, channels // 2))

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.cat([self.rows, torch.zeros_like(self.cols)], -1)  # (T, d_out): row half, then zeros
        cols = torch.cat([torch.zeros_like(self.rows), self.cols], -1)
        return tuple(rearrange(t, "t (h d) -> h t d", h=self.heads).contiguous() for t in (rows, cols))

    def table(self) -> torch.Tensor:
        """r for every offset pair: (heads, size, size, channels / heads)."""
        return relative_table(*self())


def resample_offsets(table: torch.Tensor, length: int) -> torch.Tensor:
    """A (2n - 1, d) table of offsets -(n - 1) ... n - 1 resampled to ``length`` = 2m - 1 entries, by linear
    interpolation along the offset axis (``F.interpolate(mode="linear")``, half-pixel centres, as timm's
    ``get_rel_pos`` resizes the relative tables of its SAM ViT). Offset 0 stays at the centre, and an unchanged
    length returns ``table`` itself.

    Shape:
        - Input: (2n - 1, d)
        - Output: (length, d)
    """
    if table.shape[0] == length:
        return table
    return rearrange(F.interpolate(rearrange(table, "t d -> 1 d t"), size=length, mode="linear"), "1 d t -> t d")


def relative_logits_1d(q: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """l[..., x, i, j] = q[..., x, i] . table[j - i + n - 1] along one axis of n positions.

    The relative-to-absolute trick (Huang et al. 2018, "Music Transformer", sec. 3.4.1; BoTNet's and timm's
    ``rel_logits_1d``): the (n, 2n - 1) products with every offset are padded, flattened and re-read with rows of
    2n - 1, which shifts row i by i; no index tensor and no (n, n, d) table of embeddings is formed.

    Shape:
        - Input: q (..., m, n, d); table (2n - 1, d)
        - Output: (..., m, n, n)
    """
    n = q.shape[-2]
    rel = torch.matmul(q, table.transpose(0, 1))  # (..., m, n, 2n - 1): q_i . r[o] for every offset slot o
    flat = F.pad(rel, (0, 1)).flatten(-2)  # (..., m, 2n^2): row i starts at i * 2n
    flat = F.pad(flat, (0, n - 1))  # room for the last row's shift
    return flat.unflatten(-1, (n + 1, 2 * n - 1))[..., :n, n - 1:]  # row i re-read from i * (2n - 1)


class RelativePositionLogits2d(nn.Module):
    """Global 2D relative position logits (Bello et al. 2019, sec. 3.2; BoTNet, fig. 4): for query pixel i and
    key pixel j of an H x W map,

        bias_ij = scale * (q_i . r^h[h_j - h_i] + q_i . r^w[w_j - w_i]),

    with one height table r^h (2H - 1, d) and one width table r^w (2W - 1, d) shared by all heads, as in
    BoTNet's official code and timm's ``PosEmbedRel`` (parameter names ``height_rel``, ``width_rel`` are timm's).
    Initialised normal with std d^-1/2, as both. Passed as ``rel_pos`` to
    :class:`~visionattn.layers.self_attention.SelfAttention2d`, which calls it with the unscaled queries.

    Unlike those implementations, which assert the built feature-map size, any (H, W) works: for another size
    each table is resampled to 2H - 1 (2W - 1) offsets by linear interpolation along the offset axis
    (:func:`resample_offsets`, the way timm resizes relative tables); the parameters keep the built size.

    Args:
        dim_head: d, channels per head of the queries.
        spatial_size: the (H, W) the tables are built for.
        scale: factor on the logits. BoTNet's official code scales q by d^-1/2 before both q . k and the
            relative logits (pass d^-1/2); timm's ``BottleneckAttn`` adds them unscaled by default (1.0).

    Shape:
        - Input: q (B, heads, H * W, d), size (H, W)
        - Output: (B, heads, H * W, H * W)
    """

    def __init__(self, dim_head: int, spatial_size: int | Size, scale: float = 1.0) -> None:
        super().__init__()
        self.dim_head = check_positive_int("dim_head", dim_head)
        self.spatial_size = pair("spatial_size", spatial_size)
        self.scale = float(check_positive("scale", scale))
        height, width = self.spatial_size
        self.height_rel = nn.Parameter(torch.empty(2 * height - 1, dim_head))
        self.width_rel = nn.Parameter(torch.empty(2 * width - 1, dim_head))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.height_rel, std=self.dim_head ** -0.5)
        nn.init.normal_(self.width_rel, std=self.dim_head ** -0.5)

    def tables(self, size: Size) -> tuple[torch.Tensor, torch.Tensor]:
        """r^h (2H - 1, d) and r^w (2W - 1, d) for an (H, W) map: the parameters, or resampled for another size."""
        return resample_offsets(self.height_rel, 2 * size[0] - 1), resample_offsets(self.width_rel, 2 * size[1] - 1)

    def forward(self, q: torch.Tensor, size: Size) -> torch.Tensor:
        height, width = size
        if q.dim() != 4 or q.shape[-2] != height * width or q.shape[-1] != self.dim_head:
            raise UsageError(f"RelativePositionLogits2d: q must be (B, heads, H * W = {height * width}, "
                             f"d = {self.dim_head}) for size {tuple(size)}, got shape {tuple(q.shape)}")
        rel_h, rel_w = (t.to(q.dtype) for t in self.tables((height, width)))
        q = rearrange(q, "b n (y x) d -> b n y x d", y=height)
        by_w = relative_logits_1d(q, rel_w)  # (b, n, y, x, x'): the column offset x' - x
        by_h = relative_logits_1d(rearrange(q, "b n y x d -> b n x y d"), rel_h)  # (b, n, x, y, y')
        logits = rearrange(by_h, "b n x y k -> b n y x k 1") + rearrange(by_w, "b n y x k -> b n y x 1 k")
        logits = rearrange(logits, "b n y x k l -> b n (y x) (k l)")
        return logits * self.scale if self.scale != 1.0 else logits

    def extra_repr(self) -> str:
        return f"dim_head={self.dim_head}, spatial_size={self.spatial_size}, scale={self.scale:.4g}"
