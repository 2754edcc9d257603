"""Stand-alone self-attention: the local attention layer that replaces a spatial convolution.

Ramachandran et al. 2019, "Stand-Alone Self-Attention in Vision Models" (SASA), eq. 2-3: each pixel's query
attends to the k x k window around it; queries, keys and values are 1x1 projections, heads split the
channels, and a 2D relative embedding enters the logits on the key side,

    y_ij = sum_{(a, b) in N_k(i, j)} softmax_ab( q_ij . (k_ab + r_{a-i, b-j}) ) v_ab,

with r_{a-i, b-j} the concatenation of a row-offset and a column-offset embedding of d_out / 2 each
(:class:`~visionattn.layers.relative_position.RelativeEmbedding2d`, where the library's 2D relative positions
live; it stays importable from here). A stride > 1 is attention at full resolution followed by 2x2 average
pooling, as in the paper.

The computation runs in a fused C++ kernel on the CPU (:mod:`visionattn.kernels.local_attention`) and in
compiled FlexAttention on CUDA (:mod:`visionattn.kernels.flex_local_attention`); the pure-PyTorch reference
(:mod:`visionattn.layers.local_attention_ref`) is the test oracle and the fallback.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from visionattn.errors import UsageError, check_choice, check_positive
from visionattn.kernels.flex_local_attention import flex_available, flex_local_attention
from visionattn.kernels.local_attention import fused_local_attention, kernel_available
from visionattn.layers.helpers import check_feature_map, check_odd, check_positive_int
from visionattn.layers.local_attention_ref import (
    BORDERS,
    local_attention_reference,
    local_attention_weights,
    rel_table_size,
)
from visionattn.layers.recording import Recordable
from visionattn.layers.relative_position import RelativeEmbedding2d, relative_table
from visionattn.registry import register_attn

__all__ = ["IMPLS", "local_attention", "LocalSelfAttention2d", "RelativeEmbedding2d", "attention_scale",
           "check_attention_input", "check_heads"]

IMPLS = ("auto", "kernel", "flex", "reference")
_FLEX_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_PAPER = "Ramachandran et al. 2019, Stand-Alone Self-Attention in Vision Models"
_warned_device: set[str] = set()


def local_attention(qkv: torch.Tensor, rel_rows: torch.Tensor, rel_cols: torch.Tensor, heads: int,
                    kernel_size: int, border: str = "mask", scale: float = 1.0, impl: str = "auto") -> torch.Tensor:
    """Local attention of stacked (q | k | v) projections, on the fastest path available.

    Args:
        qkv: the q, k and v projections concatenated along the channels, each ``heads * d`` wide.
        rel_rows, rel_cols: (heads, T, d) relative embeddings of the row and of the column offset; the window
            slot at offset (u, v) has ``r = rel_rows[:, u] + rel_cols[:, v]`` (T = k, or 2k - 1 for
            ``border="clamp"``; see :class:`~visionattn.layers.relative_position.RelativeEmbedding2d`).
        heads: number of heads.
        kernel_size: window size k (odd).
        border: ``"mask"``, ``"zero"`` or ``"clamp"`` (see :mod:`visionattn.layers.local_attention_ref`).
        scale: factor on the logits.
        impl: ``"kernel"`` (the C++ kernel, CPU), ``"flex"`` (compiled FlexAttention, CUDA only: torch's
            compiled CPU FlexAttention has no backward, and it once gave wrong outputs in this project's tests
            that could not be reproduced since, so it is refused on the CPU), ``"reference"`` (plain PyTorch),
            or ``"auto"``: the C++ kernel on the CPU when it can be built, FlexAttention on CUDA (float32 /
            bfloat16 / float16), else the reference with a warning.

    Shape:
        - Input: qkv (B, 3 * heads * d, H, W); rel_rows, rel_cols (heads, T, d)
        - Output: (B, heads * d, H, W)
    """
    check_choice("impl", impl, IMPLS)
    check_choice("border", border, BORDERS)
    if impl == "auto":
        if qkv.device.type == "cpu" and kernel_available():
            impl = "kernel"
        elif qkv.dtype in _FLEX_DTYPES and flex_available(qkv.device):
            impl = "flex"
    if impl == "kernel":
        return fused_local_attention(qkv, rel_rows, rel_cols, heads, kernel_size, border, scale)
    if impl == "flex":
        if not flex_available(qkv.device):
            raise UsageError(f"impl: 'flex' runs on CUDA (with Triton) only, got {qkv.device.type} tensors; on the "
                             "CPU use impl='kernel' (the fused C++ kernel) or 'reference'")
        return flex_local_attention(qkv, relative_table(rel_rows, rel_cols).to(qkv.dtype), heads, kernel_size,
                                    border, scale)
    if impl == "auto" and qkv.device.type not in _warned_device:
        _warned_device.add(qkv.device.type)
        warnings.warn(f"no fused local attention kernel for {qkv.device.type} tensors here; using the slow "
                      f"pure-PyTorch reference", RuntimeWarning, stacklevel=2)
    q, k, v = qkv.chunk(3, dim=1)
    return local_attention_reference(q, k, v, relative_table(rel_rows, rel_cols), kernel_size, border, scale)


def check_heads(out_channels: int, heads: int) -> None:
    """``heads`` a positive int that divides ``out_channels`` (every head gets d_out / heads channels)."""
    check_positive_int("heads", heads)
    if out_channels % heads:
        raise UsageError(f"out_channels must be divisible by heads (each head gets out_channels / heads channels), "
                         f"got out_channels={out_channels}, heads={heads}")


def attention_scale(qk_scale: float | None, head_dim: int) -> float:
    """The factor on the logits: ``qk_scale`` (a finite number > 0), or head_dim^-1/2 when None."""
    return head_dim ** -0.5 if qk_scale is None else float(check_positive("qk_scale", qk_scale))


def check_attention_input(x: torch.Tensor, channels: int, layer: str) -> None:
    """A floating-point (B, ``channels``, H, W) map with H, W >= 1 (an empty batch is fine: empty output)."""
    check_feature_map(x, channels, layer)
    if not x.is_floating_point():
        raise UsageError(f"{layer} needs a floating-point input, got {x.dtype}; convert it, e.g. x.float()")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise UsageError(f"{layer} needs a map of at least 1x1 pixels, got shape {tuple(x.shape)}")


def _project(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The 1x1 q/k/v projection ``conv`` of (B, C, H, W), by the faster product measured on the CPU (2 threads,
    forward + backward): where C <= HW a batched product over the (C, HW) planes, with no layout copies; where
    C > HW (small late-stage maps) the convolution itself (oneDNN), since there the batched product's weight
    gradient, B weight-sized partial sums, would outgrow the activations."""
    if x.shape[1] <= x.shape[2] * x.shape[3]:
        weight = conv.weight.flatten(1)
        return torch.bmm(weight.expand(x.shape[0], -1, -1), x.flatten(2)).unflatten(2, x.shape[2:])
    return conv(x)


@register_attn("sasa", paper=_PAPER, family="self-attention", conv_like=True, min_channels=8,
               description="Local k x k multi-head self-attention with 2D relative embeddings (SASA)",
               variants=({"border": "zero"}, {"border": "clamp"}, {"stride": 2, "out_channels": 16},
                         {"kernel_size": 3, "heads": 2, "impl": "reference"}))
class LocalSelfAttention2d(Recordable, nn.Module):
    """Stand-alone local self-attention (SASA eq. 2-3), a drop-in for a k x k convolution.

    Recordable, kind ``"local_attention"``: while a :class:`~visionattn.layers.recording.Recorder` is attached,
    the (B, heads, H, W, k * k) window weights at the input's resolution (before the stride's pooling) are
    recomputed from the same q, k and relative embeddings (:meth:`window_weights`), since the fused kernels never
    store them; the output is still the chosen path's.

    Args:
        in_channels: d_in.
        out_channels: d_out (default d_in); even and divisible by ``heads``.
        kernel_size: the window k (odd); the paper uses 7.
        heads: attention heads N; each gets d_out / N channels of q, k, v and r.
        stride: 1, or the size of the average pooling after the attention (the paper: 2).
        border: ``"mask"`` (outside positions leave the softmax), ``"zero"`` (zero padding, as the common open
            implementations) or ``"clamp"`` (the window shifts inwards, neighbourhood attention).
        qk_scale: factor on the logits; None is (d_out / N)^-1/2.
        groups: accepted for the convolution signature; must be 1.
        impl: ``"auto"``, ``"kernel"``, ``"flex"`` or ``"reference"`` (see :func:`local_attention`).

    Shape:
        - Input: (B, in_channels, H, W)
        - Output: (B, out_channels, ceil(H / stride), ceil(W / stride))
    """

    record_kind = "local_attention"

    def __init__(self, in_channels: int, out_channels: int | None = None, kernel_size: int = 7, heads: int = 8,
                 stride: int = 1, border: str = "mask", qk_scale: float | None = None, groups: int = 1,
                 impl: str = "auto") -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        out_channels = in_channels if out_channels is None else check_positive_int("out_channels", out_channels)
        check_odd("kernel_size", kernel_size, "(a window centred on its pixel)")
        check_positive_int("stride", stride)
        check_heads(out_channels, heads)
        check_choice("border", border, BORDERS)
        if groups != 1:
            raise UsageError(f"groups must be 1 for local self-attention (heads split the channels), got {groups!r}")
        check_choice("impl", impl, IMPLS)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.heads, self.stride, self.border, self.impl = kernel_size, heads, stride, border, impl
        self.scale = attention_scale(qk_scale, out_channels // heads)
        self.qkv = nn.Conv2d(in_channels, 3 * out_channels, 1, bias=False)
        self.rel = RelativeEmbedding2d(out_channels, heads, rel_table_size(kernel_size, border))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_attention_input(x, self.in_channels, "LocalSelfAttention2d")
        qkv = _project(self.qkv, x)
        rows, cols = self.rel()
        out = local_attention(qkv, rows, cols, self.heads, self.kernel_size, self.border, self.scale, self.impl)
        if self.recorder is not None:
            self.recorder(self, self.window_weights(qkv, rows, cols))
        if self.stride > 1:
            out = F.avg_pool2d(out, self.stride, self.stride, ceil_mode=True)
        return out

    def window_weights(self, qkv: torch.Tensor, rel_rows: torch.Tensor, rel_cols: torch.Tensor) -> torch.Tensor:
        """The softmax of eq. 2 over every pixel's k x k window, computed explicitly by the reference's
        :func:`~visionattn.layers.local_attention_ref.local_attention_weights` (slots in raster order; where each
        lies: :func:`~visionattn.layers.local_attention_ref.window_index`).

        Shape:
            - Input: qkv (B, 3 * out_channels, H, W); rel_rows, rel_cols (heads, T, d)
            - Output: (B, heads, H, W, k * k)
        """
        with torch.no_grad():
            q, k, _ = qkv.chunk(3, dim=1)
            weights = local_attention_weights(q, k, relative_table(rel_rows, rel_cols), self.kernel_size,
                                              self.border, self.scale)
        return weights.unflatten(2, qkv.shape[-2:])

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, heads={self.heads}, "
                f"stride={self.stride}, border={self.border!r}")
