"""The fused CPU local-attention kernel as ``torch.library`` custom ops, with autograd and FLOP formulas.

``visionattn::local_attention_fwd`` returns the output and the log-sum-exp of every softmax;
``visionattn::local_attention_bwd`` rebuilds the softmax from it. Both are opaque to ``torch.compile`` (their
fake implementations give the shapes) and are counted by ``torch.utils.flop_counter``: the forward is
2 k^2 multiply-adds per output element (q . k and the weighted sum of values), the backward 4 (dv, dP, dq
and dk), the convention of the SDPA formulas; the relative terms (2k dot products per pixel, since the
embedding is a row part plus a column part) are left out of the count, as SDPA's counts leave out a bias.
The C++ source is ``local_attention.cpp``; it is compiled on first use (:mod:`visionattn.kernels.build`).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from visionattn.kernels.build import load_kernel

__all__ = ["BORDER_CODES", "kernel_available", "fused_local_attention", "local_attention_macs",
           "kernel_scratch_peak_bytes"]

BORDER_CODES = {"mask": 0, "zero": 1, "clamp": 2}


_AVAILABLE: list[bool] = []  # the answer, once known: a plain global that torch.compile reads without tracing a cache


def kernel_available() -> bool:
    """Whether the C++ kernel is (or can be) built here; the first call may compile it."""
    if not _AVAILABLE:
        _AVAILABLE.append(load_kernel("local_attention") is not None)
    return _AVAILABLE[0]


def _ext():
    ext = load_kernel("local_attention")
    if ext is None:
        raise RuntimeError("the local attention kernel is not available here; use the reference implementation")
    return ext


def kernel_scratch_peak_bytes(reset: bool = False) -> int:
    """The most bytes of working memory the kernel held at once (all threads) since the last reset: buffers
    freed before its ops return, which the profiler's per-op memory does not show. ``reset=True`` starts a new
    count after reading this one."""
    return _ext().scratch_peak_bytes(reset)


@torch.library.custom_op("visionattn::local_attention_fwd", mutates_args=(), device_types="cpu")
def _fwd(qkv: Tensor, rel_rows: Tensor, rel_cols: Tensor, heads: int, kernel_size: int, border: int,
         scale: float) -> tuple[Tensor, Tensor]:
    out, lse = _ext().forward(qkv.contiguous(), rel_rows.contiguous(), rel_cols.contiguous(), heads, kernel_size,
                              border, scale)
    return out, lse


@_fwd.register_fake
def _fwd_fake(qkv, rel_rows, rel_cols, heads, kernel_size, border, scale):
    b, c3, h, w = qkv.shape
    return qkv.new_empty(b, c3 // 3, h, w), qkv.new_empty(b, heads, h, w)


@torch.library.custom_op("visionattn::local_attention_bwd", mutates_args=(), device_types="cpu")
def _bwd(grad_out: Tensor, qkv: Tensor, rel_rows: Tensor, rel_cols: Tensor, out: Tensor, lse: Tensor, heads: int,
         kernel_size: int, border: int, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    gqkv, grows, gcols = _ext().backward(grad_out.contiguous(), qkv, rel_rows.contiguous(), rel_cols.contiguous(),
                                         out, lse, heads, kernel_size, border, scale)
    return gqkv, grows, gcols


@_bwd.register_fake
def _bwd_fake(grad_out, qkv, rel_rows, rel_cols, out, lse, heads, kernel_size, border, scale):
    return torch.empty_like(qkv), torch.empty_like(rel_rows), torch.empty_like(rel_cols)


def _setup_context(ctx, inputs, output) -> None:
    qkv, rel_rows, rel_cols, heads, kernel_size, border, scale = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)  # lse never gets a gradient: no zero tensor the size of the logits' rows
    ctx.save_for_backward(qkv, rel_rows, rel_cols, out, lse)
    ctx.args = (heads, kernel_size, border, scale)


def _backward(ctx, grad_out, _grad_lse):
    if grad_out is None:
        return (None,) * 7
    qkv, rel_rows, rel_cols, out, lse = ctx.saved_tensors
    gqkv, grows, gcols = _bwd(grad_out, qkv, rel_rows, rel_cols, out, lse, *ctx.args)
    return gqkv, grows, gcols, None, None, None, None


_fwd.register_autograd(_backward, setup_context=_setup_context)


def local_attention_macs(out_shape: tuple[int, ...], kernel_size: int, products: int) -> int:
    """``products`` k^2-long products per output element: 2 for the forward, 4 for the backward."""
    b, c, h, w = out_shape
    return products * b * c * h * w * kernel_size * kernel_size


@register_flop_formula(torch.ops.visionattn.local_attention_fwd)
def _fwd_flops(qkv_shape, rows_shape, cols_shape, heads, kernel_size, border, scale, *args, out_shape=None,
               **kwargs) -> int:
    return 2 * local_attention_macs(out_shape[0], kernel_size, 2)


@register_flop_formula(torch.ops.visionattn.local_attention_bwd)
def _bwd_flops(grad_out_shape, *args, out_shape=None, **kwargs) -> int:
    kernel_size = args[6]
    return 2 * local_attention_macs(grad_out_shape, kernel_size, 4)


def fused_local_attention(qkv: Tensor, rel_rows: Tensor, rel_cols: Tensor, heads: int, kernel_size: int,
                          border: str, scale: float) -> Tensor:
    """Local attention of the (q | k | v) stacked projections with the C++ kernel (CPU, float32 / float64;
    other floating types are computed in float32). The relative embedding of window offset (u, v) is
    ``rel_rows[:, u] + rel_cols[:, v]``.

    Shape:
        - Input: qkv (B, 3 * heads * d, H, W); rel_rows, rel_cols (heads, T, d)
        - Output: (B, heads * d, H, W)
    """
    dtype = qkv.dtype
    compute = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    out, _ = _fwd(qkv.to(compute).contiguous(), rel_rows.to(compute).contiguous(),
                  rel_cols.to(compute).contiguous(), heads, kernel_size, BORDER_CODES[border], float(scale))
    return out.to(dtype)
