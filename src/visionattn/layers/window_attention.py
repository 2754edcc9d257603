"""Window attention with shifted windows: Liu et al. 2021, "Swin Transformer: Hierarchical Vision Transformer using
Shifted Windows" (sec. 3.2, eq. 3-4, fig. 2 and 4).

**W-MSA.** The (H, W) map is cut into non-overlapping M x M windows and every token attends to the N = M^2 tokens
of its window only, with a relative position bias (eq. 4):

    Attention(Q, K, V) = SoftMax(Q K^T / sqrt(d) + B) V,    B[h, i, j] = B^[offset(i, j), h],

B^ a learned table of (2M - 1)^2 offsets per head (``relative_position_bias_table``), indexed by
:func:`~visionattn.layers.relative_position.relative_position_index` (``relative_position_index``, a
non-persistent buffer as in timm 1.0). The multi-head attention is
:class:`~visionattn.layers.self_attention.MultiHeadSelfAttention`'s (its ``qkv``, ``proj`` and attention core):
each window's logits get the bias and a boolean mask through the core, no softmax of its own.

**SW-MSA.** Every second block displaces the window grid by (floor(M / 2), floor(M / 2)) (eq. 3), so that
information crosses window borders. Computed as the paper's "efficient batch computation" (fig. 4): a cyclic
shift of the map by -M/2 (``torch.roll``), the same M x M partition, a mask that keeps apart the pieces of a
window that the roll brought together from opposite sides of the map (:func:`window_labels`), and the reverse
shift. Token i attends token j exactly when both lie in one window of the displaced grid.

**A window that covers the map.** Along a side where the map is not larger than the window, the window is the
whole side and shifting it would only cut the map into pieces: timm and the official code then set the window
to the map and the shift to 0 without a word. :func:`fit_window` applies that rule and says so: the block
records the reason in ``shift_note`` and shows it in its ``repr`` (a warning would fire for every Swin-T, whose
last stage is one 7x7 window).

**Sizes that are not multiples of M** are padded on the right and bottom to the next multiple (the official
code asserts divisibility; timm and torchvision pad). The padded positions are masked out of every softmax as
keys: they are not image, and the zeros timm and torchvision pad with after the LayerNorm would otherwise take
softmax weight (their keys and values are the projection biases), so that a border token's output would depend
on how far the map is from a multiple of M. With the mask, the attention at any size is the shifted-window
attention of the map with the windows clipped to it; a padded query's output is cut away. The map is padded
first and the padded map rolled (torchvision's order), so the regions of the shift mask line up with the rows
the roll wrapped around; timm 1.0 rolls the unpadded map and lays the regions on the padded one, which at
padded sizes puts rows from the image's top and bottom into one region (``benchmarks/record_timm_swin.py
--check`` shows it). Where nothing is padded no padding mask is used and the output is timm's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from visionattn.errors import UsageError, check_positive
from visionattn.layers.helpers import check_bool, check_feature_map, check_positive_int, pair
from visionattn.layers.relative_position import relative_position_bias, relative_position_index
from visionattn.layers.self_attention import MultiHeadSelfAttention, head_dims
from visionattn.layers.transformer import DropPath, Mlp
from visionattn.registry import register_attn

__all__ = ["window_partition", "window_reverse", "window_labels", "window_mask", "fit_window", "WindowAttention",
           "WindowAttention2d", "SwinBlock"]

Size = tuple[int, int]
_MASKS_KEPT = 8  # window masks a layer keeps (one per map size it has seen)
_PAPER = "Liu et al. 2021, Swin Transformer: Hierarchical Vision Transformer using Shifted Windows"


def window_partition(x: torch.Tensor, window: Size) -> torch.Tensor:
    """The M_h x M_w windows of a map whose sides are multiples of the window, in raster order.

    Shape:
        - Input: (B, H, W, C)
        - Output: (B, (H / M_h)(W / M_w), M_h M_w, C)
    """
    return rearrange(x, "b (y m1) (x m2) c -> b (y x) (m1 m2) c", m1=window[0], m2=window[1])


def window_reverse(windows: torch.Tensor, window: Size, size: Size) -> torch.Tensor:
    """The inverse of :func:`window_partition` for an (H, W) map.

    Shape:
        - Input: (B, (H / M_h)(W / M_w), M_h M_w, C)
        - Output: (B, H, W, C)
    """
    return rearrange(windows, "b (y x) (m1 m2) c -> b (y m1) (x m2) c", y=size[0] // window[0], m1=window[0])


def _shift_pair(shift_size: int | Size, window: Size) -> Size:
    shift = (shift_size, shift_size) if isinstance(shift_size, int) and not isinstance(shift_size, bool) else shift_size
    if not (isinstance(shift, (tuple, list)) and len(shift) == 2 and all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s < m for s, m in zip(shift, window))):
        raise UsageError(f"shift_size: got {shift_size!r}, needed an int or a pair with 0 <= shift < window "
                         f"{tuple(window)} (Swin: window // 2)")
    return (shift[0], shift[1])


def _cells(length: int, window: int, shift: int, device: torch.device | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Along one side of the rolled, padded map: the cell of the displaced grid each position belongs to, and
    whether it is a real (not padded) position. Rolled position r holds map position y = (r + s) mod L_p; the
    displaced grid's cells are [0, s), [s, s + M), [s + M, s + 2M), ... of the map, i.e. cell (y + M - s) // M."""
    padded = math.ceil(length / window) * window
    y = (torch.arange(padded, device=device) + shift) % padded
    return torch.div(y + window - shift, window, rounding_mode="floor"), y < length


def window_labels(size: Size, window: Size, shift: Size, device: torch.device | None = None) -> torch.Tensor:
    """The region of every position of the rolled, padded map: two tokens of one window may attend each other
    exactly when their labels are equal; padded positions are -1.

    Shape:
        - Output: (H_p, W_p), int64, H_p and W_p the sides padded to multiples of the window
    """
    rows, real_rows = _cells(size[0], window[0], shift[0], device)
    cols, real_cols = _cells(size[1], window[1], shift[1], device)
    labels = rows[:, None] * (cols.numel() // window[1] + 1) + cols  # cells along a side: at most L_p / M + 1
    return torch.where(real_rows[:, None] & real_cols[None, :], labels, -1)


def window_mask(size: Size, window: Size, shift: Size, device: torch.device | None = None) -> torch.Tensor | None:
    """For each window of the rolled, padded map, which of its tokens a token may attend (True = may): the same
    region (:func:`window_labels`) and a real key. None when there is no shift and no padding (no mask needed).

    Shape:
        - Output: (number of windows, M_h M_w, M_h M_w), bool
    """
    if not any(shift) and size[0] % window[0] == 0 and size[1] % window[1] == 0:
        return None
    labels = window_partition(window_labels(size, window, shift, device)[None, :, :, None], window)[0, :, :, 0]
    return (labels[:, :, None] == labels[:, None, :]) & (labels[:, None, :] >= 0)


def fit_window(size: Size | None, window: Size, shift: Size) -> tuple[Size, Size, str]:
    """timm's and the official code's rule for a map of ``size``: along a side no longer than the window, the
    window is that side and the shift 0. Returns the window, the shift and a sentence saying what was changed
    and why ("" when nothing was; always "" without a size)."""
    if size is None:
        return window, shift, ""
    fitted = (min(size[0], window[0]), min(size[1], window[1]))
    kept = tuple(0 if n <= m else s for n, m, s in zip(size, window, shift))
    notes = []
    if kept != tuple(shift):
        notes.append(f"shift {tuple(shift)} -> {kept}: the {size[0]}x{size[1]} map is no larger than the "
                     f"{window[0]}x{window[1]} window along {'both sides' if not any(kept) else 'one side'}, "
                     "where one window covers it and a shift would only cut it into pieces")
    if fitted != tuple(window):
        notes.append(f"window {tuple(window)} -> {fitted}: the window is cut to the map")
    return fitted, (kept[0], kept[1]), "; ".join(notes)


class WindowAttention(MultiHeadSelfAttention):
    """(Shifted) window multi-head self-attention with Swin's relative position bias (eq. 4), on a channels-last
    map; timm's ``WindowAttention`` with the shift, padding and partition done inside.

    Args:
        dim: channels C.
        heads: attention heads; dim_head: channels per head (default C / heads).
        window_size: M, an int or (M_h, M_w).
        shift_size: the cyclic shift of SW-MSA (Swin: M // 2), 0 for W-MSA.
        qkv_bias: biases on q, k, v (Swin: yes); attn_drop: on the attention weights; proj_drop: after ``proj``.
        impl: the attention core's path, ``"auto"`` / ``"fused"`` / ``"explicit"``.

    The windows go to the core as heads, (B, windows * heads, N, d), so its bias and mask, (windows * heads, N, N),
    do not grow with the batch; a recorder sees the weights in that layout.

    Shape:
        - Input: (B, H, W, C), any H, W (padded to the window, the padding masked; see the module docstring)
        - Output: (B, H, W, C)
    """

    def __init__(self, dim: int, heads: int, window_size: int | Size = 7, shift_size: int | Size = 0,
                 dim_head: int | None = None, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 impl: str = "auto") -> None:
        super().__init__(dim, heads, dim_head, qkv_bias, attn_drop, proj_drop, impl=impl)
        self.window_size = pair("window_size", window_size)
        self.shift_size = _shift_pair(shift_size, self.window_size)
        m_h, m_w = self.window_size
        self.relative_position_bias_table = nn.Parameter(torch.empty((2 * m_h - 1) * (2 * m_w - 1), heads))
        self.register_buffer("relative_position_index", relative_position_index(self.window_size), persistent=False)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)  # the official code's and timm's
        self._masks: dict[tuple[Size, Size, Size, torch.device], torch.Tensor | None] = {}

    def no_weight_decay(self) -> set[str]:
        """The bias table, which the official code and timm train without weight decay (wherever the layer is
        plugged: :mod:`visionattn.weight_decay` reads this for every submodule)."""
        return {"relative_position_bias_table"}

    def position_bias(self) -> torch.Tensor:
        """B of eq. 4 for one window, (heads, N, N)."""
        return relative_position_bias(self.relative_position_bias_table, self.relative_position_index)

    def forward(self, x: torch.Tensor, shift_size: Size | None = None) -> torch.Tensor:  # type: ignore[override]
        """``shift_size`` overrides the built shift for this call (the 2D layer's rule for small maps)."""
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise UsageError(f"{type(self).__name__} expects a (B, H, W, C = {self.dim}) channels-last map, got "
                             f"shape {tuple(x.shape)}")
        height, width = x.shape[1:3]
        window, shift = self.window_size, self.shift_size if shift_size is None else shift_size
        if height % window[0] or width % window[1]:
            x = F.pad(x, (0, 0, 0, -width % window[1], 0, -height % window[0]))
        padded = x.shape[1:3]
        if any(shift):
            x = torch.roll(x, (-shift[0], -shift[1]), (1, 2))
        windows = window_partition(x, window)
        n_win = windows.shape[1]
        q, k, v = rearrange(self.qkv(windows), "b w n (three h d) -> three b (w h) n d", three=3,
                            h=self.heads).unbind(0)
        bias = self.position_bias().repeat(n_win, 1, 1)  # window-major, as the (w h) axis of q
        mask = self._mask((height, width), window, shift, x.device)
        out = rearrange(self.attend(q, k, v, bias, mask), "b (w h) n d -> b w n (h d)", h=self.heads)
        out = window_reverse(self.proj_drop(self.proj(out)), window, padded)
        if any(shift):
            out = torch.roll(out, shift, (1, 2))
        return out[:, :height, :width]

    def _mask(self, size: Size, window: Size, shift: Size, device: torch.device) -> torch.Tensor | None:
        """:func:`window_mask` in the core's (windows * heads) layout, built once per map size, window, shift
        and device (it depends on nothing else; a shifted block of Swin-T rebuilt it every call)."""
        key = (size, window, shift, device)
        if key not in self._masks:
            if len(self._masks) >= _MASKS_KEPT:  # many image sizes: keep the memory bounded
                self._masks.clear()
            mask = window_mask(size, window, shift, device)
            self._masks[key] = None if mask is None else mask.repeat_interleave(self.heads, dim=0)
        return self._masks[key]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window_size={self.window_size}, shift_size={self.shift_size}"


@register_attn("window_attention", paper=_PAPER, family="self-attention", conv_like=True,
               description="Multi-head self-attention inside non-overlapping M x M windows with a relative "
                           "position bias (Swin's W-MSA), in place of a spatial convolution",
               variants=({"window_size": (3, 5), "heads": 2, "impl": "explicit", "stride": 2, "out_channels": 16},))
@register_attn("swin", paper=_PAPER, family="self-attention", conv_like=True, defaults={"shift": True},
               description="Shifted-window multi-head self-attention (Swin's SW-MSA: cyclic shift by M/2 and the "
                           "region mask), in place of a spatial convolution",
               variants=({"window_size": 4}, {"window_size": (2, 3), "heads": 2, "impl": "explicit", "stride": 2}))
class WindowAttention2d(WindowAttention):
    """Window attention (W-MSA, or SW-MSA with ``shift``) over a (B, C, H, W) feature map, a drop-in for a
    spatial convolution of a ResNet (``attn="swin"``).

    The shift is M // 2 (the paper's), applied along each side where the input is larger than the window; along
    a side the window covers there is nothing to shift (:func:`fit_window`'s rule, decided per input since the
    layer is not built for one size). A map smaller than the window is one window: padded and masked.

    Args:
        in_channels: C.
        out_channels: output channels (default C): the width of ``proj``.
        kernel_size: the kernel of the convolution it replaces; accepted for the convolution signature.
        stride: 1, or the size of the average pooling after the attention (rounding up, as BoTNet's and SASA's).
        groups: must be 1.
        heads: attention heads (default C / 32, Swin's 32 channels per head, or 1 when 32 does not divide C).
        window_size: M (Swin: 7); shift: shift the windows by M // 2 (SW-MSA; ``"swin"`` sets it).
        qkv_bias, attn_drop, impl: as for :class:`WindowAttention`.

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, out_channels, ceil(H / stride), ceil(W / stride))
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, heads: int | None = None, window_size: int | Size = 7, shift: bool = False,
                 qkv_bias: bool = True, attn_drop: float = 0.0, impl: str = "auto") -> None:
        check_positive_int("in_channels", in_channels)
        out_channels = in_channels if out_channels is None else check_positive_int("out_channels", out_channels)
        check_positive_int("kernel_size", kernel_size)
        check_positive_int("stride", stride)
        if groups != 1:
            raise UsageError(f"groups must be 1 for window attention (heads split the channels), got {groups!r}")
        if heads is None:
            heads = in_channels // 32 if in_channels % 32 == 0 else 1
        head_dims(in_channels, heads, None)
        window = pair("window_size", window_size)
        check_bool("shift", shift)
        super().__init__(in_channels, heads, window, (window[0] // 2, window[1] // 2) if shift else 0,
                         qkv_bias=qkv_bias, attn_drop=attn_drop, impl=impl)
        if out_channels != in_channels:
            self.proj = nn.Linear(self.heads * self.dim_head, out_channels)
        self.in_channels, self.out_channels, self.stride, self.shift = in_channels, out_channels, stride, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        check_feature_map(x, self.in_channels, type(self).__name__)
        _, shift, _ = fit_window((x.shape[2], x.shape[3]), self.window_size, self.shift_size)
        out = super().forward(rearrange(x, "b c h w -> b h w c"), shift)
        out = rearrange(out, "b h w c -> b c h w")
        return F.avg_pool2d(out, self.stride, self.stride, ceil_mode=True) if self.stride > 1 else out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, out_channels={self.out_channels}, stride={self.stride}"


class SwinBlock(nn.Module):
    """Swin's transformer block (eq. 3) on a channels-last map: (S)W-MSA and an MLP, each behind a LayerNorm and
    a residual connection with stochastic depth,

        z' = z + DropPath(W-MSA(LN(z))),    z'' = z' + DropPath(MLP(LN(z'))),

    with SW-MSA in place of W-MSA when ``shift``. Names are timm's (``norm1``, ``attn``, ``norm2``, ``mlp.fc1``,
    ``mlp.fc2``). Built for the map size ``input_resolution``, the window and shift follow :func:`fit_window`
    (timm's rule); ``shift_note`` records what it changed, and ``repr`` shows it.

    Args:
        dim: channels; heads: attention heads; dim_head: channels per head (default dim / heads).
        window_size: M; shift: SW-MSA (shift M // 2) instead of W-MSA.
        input_resolution: the (H, W) map the block is built for (None: the window and shift as given).
        mlp_ratio: MLP width over ``dim`` (Swin: 4); qkv_bias: biases on q, k, v.
        drop: dropout after ``proj`` and in the MLP; attn_drop: on the weights; drop_path: stochastic depth.
        impl: the attention core's path; norm_eps: LayerNorm epsilon (PyTorch's 1e-5, as timm and the official
            code).

    Shape:
        - Input: (B, H, W, dim)
        - Output: (B, H, W, dim)
    """

    def __init__(self, dim: int, heads: int, window_size: int | Size = 7, shift: bool = False,
                 input_resolution: Size | None = None, dim_head: int | None = None, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 impl: str = "auto", norm_eps: float = 1e-5) -> None:
        super().__init__()
        check_positive("mlp_ratio", mlp_ratio)
        window = pair("window_size", window_size)
        size = None if input_resolution is None else pair("input_resolution", input_resolution)
        wanted = (window[0] // 2, window[1] // 2) if check_bool("shift", shift) else (0, 0)
        window, shift_size, self.shift_note = fit_window(size, window, wanted)
        self.dim, self.input_resolution = dim, size
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = WindowAttention(dim, heads, window, shift_size, dim_head, qkv_bias, attn_drop, drop, impl)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), "gelu", drop)
        self.drop_path2 = DropPath(drop_path)

    @property
    def window_size(self) -> Size:
        return self.attn.window_size

    @property
    def shift_size(self) -> Size:
        return self.attn.shift_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))

    def extra_repr(self) -> str:
        note = f", shift_note={self.shift_note!r}" if self.shift_note else ""
        return f"input_resolution={self.input_resolution}{note}"
