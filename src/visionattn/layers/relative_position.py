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
  of the attention core (:func:`~visionattn.layers.attention_core.attention`). HaloNet uses the same logits
  for a query block inside its key window (``key_size``).
- **A learned bias per offset** (Liu et al. 2021, "Swin Transformer", eq. 4): B_ij = table[offset(i, j), head]
  for the pixels i, j of an M_h x M_w window, one scalar per head and offset: :func:`relative_position_index`
  and :func:`relative_position_bias` (the layer holds the table under Swin's and timm's names), and
  :func:`resample_bias_table` for another window size.
- **Along one axis, for queries, keys and values** (Wang et al. 2020, "Axial-DeepLab", eq. 4): one table of
  offsets per line, split into r^q, r^k and r^v (:func:`axial_relative_embeddings`; the layer is
  :class:`~visionattn.layers.axial_attention.AxialAttention`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from visionattn.errors import UsageError, check_positive
from visionattn.layers.helpers import check_positive_int, pair

__all__ = ["relative_table", "RelativeEmbedding2d", "resample_offsets", "relative_logits_1d",
           "RelativePositionLogits2d", "relative_position_index", "relative_position_bias", "resample_bias_table",
           "axial_relative_embeddings"]

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
    """l[..., x, i, j] = q[..., x, i] . table[j - i + n_k - 1] along one axis: n_q query positions, n_k key
    positions, a table of the 2 n_k - 1 offsets j - i (n_q <= n_k). With n_q = n_k = n this is the global form
    (offset j - i of two pixels of the same axis); with a query block of n_q inside a key window of n_k it is
    HaloNet's (timm's ``rel_logits_1d``: the offset counts from the window's first key, not the query's pixel).

    The relative-to-absolute trick (Huang et al. 2018, "Music Transformer", sec. 3.4.1; BoTNet's and timm's
    ``rel_logits_1d``): the (n_q, 2 n_k - 1) products with every offset are padded, flattened and re-read with
    rows of 2 n_k - 1, which shifts row i by i; no index tensor and no (n_q, n_k, d) table of embeddings is formed.

    Shape:
        - Input: q (..., m, n_q, d); table (2 n_k - 1, d)
        - Output: (..., m, n_q, n_k)
    """
    n_q, width = q.shape[-2], table.shape[0]
    n_k = (width + 1) // 2
    if width % 2 == 0 or n_q > n_k:
        raise UsageError(f"relative_logits_1d: the table needs 2 n_k - 1 rows for n_k >= n_q = {n_q} query "
                         f"positions, got {width} rows")
    rel = torch.matmul(q, table.transpose(0, 1))  # (..., m, n_q, 2 n_k - 1): q_i . r[o] for every offset slot o
    flat = F.pad(rel, (0, 1)).flatten(-2)  # (..., m, n_q * 2 n_k): row i starts at i * 2 n_k
    flat = F.pad(flat, (0, width - n_q))  # room for the last row's shift
    return flat.unflatten(-1, (n_q + 1, width))[..., :n_q, n_k - 1:]  # row i re-read from i * (2 n_k - 1)


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

    Multiply-adds: q . r for every query and every one of the 2W - 1 (2H - 1) offsets, as the official
    ``rel_logits_1d``: N_q d (2 W_k - 1 + 2 H_k - 1) per head, for N_q = H W queries and an H_k x W_k key grid;
    counted in attention's share (``attention_products``), as the q k^T they are added to.

    Args:
        dim_head: d, channels per head of the queries.
        spatial_size: the key grid (H, W) the tables are built for (2H - 1 and 2W - 1 offsets).
        scale: factor on the logits. BoTNet's official code scales q by d^-1/2 before both q . k and the
            relative logits (pass d^-1/2); timm's ``BottleneckAttn`` adds them unscaled by default (1.0).

    Shape:
        - Input: q (..., H * W, d), size (H, W), key_size (H_k, W_k) (default: size)
        - Output: (..., H * W, H_k * W_k)
    """

    attention_products = True  # q . r is a term of the attention's logits (visionattn.complexity.MacCounter)

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

    def forward(self, q: torch.Tensor, size: Size, key_size: Size | None = None) -> torch.Tensor:
        """The logits of the queries of an (H, W) grid; ``key_size`` is the key grid (default: the same), which
        for HaloNet is the (b + 2h)^2 window around a b x b query block: key (h', w') sits at offset
        (h' - h, w' - w) counted from the window's corner (timm's ``PosEmbedRel`` convention)."""
        height, width = size
        key_h, key_w = size if key_size is None else key_size
        if q.dim() < 3 or q.shape[-2] != height * width or q.shape[-1] != self.dim_head:
            raise UsageError(f"RelativePositionLogits2d: q must be (..., H * W = {height * width}, "
                             f"d = {self.dim_head}) for size {tuple(size)}, got shape {tuple(q.shape)}")
        if key_h < height or key_w < width:
            raise UsageError(f"RelativePositionLogits2d: key_size {(key_h, key_w)} must cover the query grid "
                             f"{tuple(size)}")
        rel_h, rel_w = (t.to(q.dtype) for t in self.tables((key_h, key_w)))
        q = rearrange(q, "... (y x) d -> ... y x d", y=height)
        by_w = relative_logits_1d(q, rel_w)  # (..., y, x, x'): the column offset x' - x
        by_h = relative_logits_1d(q.transpose(-3, -2), rel_h)  # (..., x, y, y')
        logits = by_h.transpose(-3, -2)[..., :, None] + by_w[..., None, :]  # (..., y, x, y', x')
        logits = logits.flatten(-2).flatten(-3, -2)
        return logits * self.scale if self.scale != 1.0 else logits

    def extra_repr(self) -> str:
        return f"dim_head={self.dim_head}, spatial_size={self.spatial_size}, scale={self.scale:.4g}"


def relative_position_index(size: Size) -> torch.Tensor:
    """Swin's (N, N) index of the offset between pixels i and j of an M_h x M_w window (N = M_h M_w, raster
    order) into a table of (2 M_h - 1)(2 M_w - 1) offsets: (h_i - h_j + M_h - 1) (2 M_w - 1) + w_i - w_j + M_w - 1,
    the query's position minus the key's, as the official code and timm's ``relative_position_index``.

    Shape:
        - Output: (N, N), int64
    """
    height, width = pair("size", size)
    coords = torch.stack(torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N): query minus key
    return (rel[0] + height - 1) * (2 * width - 1) + rel[1] + width - 1


def relative_position_bias(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The (heads, N, N) bias B[h, i, j] = table[index[i, j], h] added to a window's logits (Swin eq. 4).

    Shape:
        - Input: table ((2 M_h - 1)(2 M_w - 1), heads); index (N, N) from :func:`relative_position_index`
        - Output: (heads, N, N)
    """
    return rearrange(table[index.flatten()], "(i j) h -> h i j", i=index.shape[0])


def resample_bias_table(table: torch.Tensor, size: Size, new_size: Size) -> torch.Tensor:
    """A Swin bias table built for an M_h x M_w window resized for another window, as a (2 M_h - 1) x (2 M_w - 1)
    image per head by bicubic interpolation (timm's ``resize_rel_pos_bias_table`` for a Swin checkpoint loaded at
    another window size). The same size returns ``table`` itself.

    Shape:
        - Input: table ((2 M_h - 1)(2 M_w - 1), heads)
        - Output: ((2 M'_h - 1)(2 M'_w - 1), heads)
    """
    (height, width), (new_h, new_w) = pair("size", size), pair("new_size", new_size)
    if (height, width) == (new_h, new_w):
        return table
    if table.dim() != 2 or table.shape[0] != (2 * height - 1) * (2 * width - 1):
        raise UsageError(f"resample_bias_table: table must be ((2 M_h - 1)(2 M_w - 1) = "
                         f"{(2 * height - 1) * (2 * width - 1)}, heads) for window {(height, width)}, got shape "
                         f"{tuple(table.shape)}")
    grid = rearrange(table, "(y x) h -> 1 h y x", y=2 * height - 1).float()
    grid = F.interpolate(grid, size=(2 * new_h - 1, 2 * new_w - 1), mode="bicubic", align_corners=False)
    return rearrange(grid, "1 h y x -> (y x) h").to(table.dtype)


def axial_relative_embeddings(table: torch.Tensor, length: int, span: int | None = None) -> torch.Tensor:
    """Axial-DeepLab's relative embeddings for one line of ``length`` positions: ``E[i, j] = table[:, i - j + R]``
    for query position i and key position j (Wang et al. 2020, "Axial-DeepLab", eq. 4's r_{p-o}, indexed as
    the official code's ``flatten_index``: query minus key, offset 0 at column R).

    The table keeps the official layout, channels first: ``(d, T)`` with the d channels of r^q, r^k and r^v
    stacked. Two spans:

    - global (``span=None``): T = 2K - 1 offsets -(K - 1) ... K - 1 for the K positions the table was built for;
      for another length it is resampled to 2 * length - 1 offsets (:func:`resample_offsets`), R = length - 1.
    - local (``span=m``, odd): T = m offsets -(m - 1) / 2 ... (m - 1) / 2, R = (m - 1) / 2, any length; a pair
      further apart gets the nearest edge entry, which the span's mask removes from the attention.

    Shape:
        - Input: table (d, T)
        - Output: (length, length, d)
    """
    width = table.shape[-1]
    if table.dim() != 2 or (span is not None and width != span) or (span is None and width % 2 == 0):
        need = f"{span} offsets for span {span}" if span is not None else "an odd number 2K - 1 of offsets"
        raise UsageError(f"axial_relative_embeddings: table must be (d, T) with {need}, got shape "
                         f"{tuple(table.shape)}")
    offsets = table.t()
    if span is None:
        offsets = resample_offsets(offsets, 2 * length - 1)
    radius = (offsets.shape[0] - 1) // 2
    pos = torch.arange(length, device=table.device)
    index = (pos[:, None] - pos[None, :]).clamp(-radius, radius) + radius
    return offsets[index]
