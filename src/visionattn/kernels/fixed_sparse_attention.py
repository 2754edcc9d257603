"""The fixed sparse attention kernel (CPU, C++) as ``torch.library`` custom ops, with autograd and FLOP formulas.

The Sparse Transformer's fixed pattern (Child et al. 2019, sec. 4.3) gives every query of block b the same keys:
the c summary positions of each earlier block and its own block so far. ``fixed_sparse_attention.cpp`` attends
them as one softmax per query, block by block, with the products in the BLAS PyTorch links; see its header for
the three key sets it serves (the merged head, A(1) alone, A(2) alone). ``visionattn::fixed_sparse_attention_fwd``
returns the output and the log-sum-exp of every row; ``..._bwd`` rebuilds the softmax from it. Both are opaque
to ``torch.compile`` (their fake implementations give the shapes) and counted by ``torch.utils.flop_counter``
as 2 (forward) and 4 (backward) multiply-adds per computed pair and channel, the SDPA formulas' convention.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from visionattn.kernels.build import load_kernel

__all__ = ["fixed_kernel_available", "fixed_sparse_attention", "fixed_pairs", "use_blas"]

_NAME = "fixed_sparse_attention"
_AVAILABLE: list[bool] = []  # the answer, once known (a plain global that torch.compile reads without tracing)


def fixed_kernel_available() -> bool:
    """Whether the C++ kernel is (or can be) built here; the first call may compile it."""
    if not _AVAILABLE:
        _AVAILABLE.append(load_kernel(_NAME) is not None)
    return _AVAILABLE[0]


def _ext():
    ext = load_kernel(_NAME)
    if ext is None:
        raise RuntimeError("the fixed sparse attention kernel is not available here; use the PyTorch path")
    return ext


def use_blas(on: bool) -> bool:
    """Route the kernel's matrix products to the BLAS PyTorch links (True, the default, where it exports one) or
    to ``at::mm_out`` (False; for tests of that path). Returns the previous setting."""
    return _ext().use_blas(on)


@torch.library.custom_op("visionattn::fixed_sparse_attention_fwd", mutates_args=(), device_types="cpu")
def _fwd(q: Tensor, k: Tensor, v: Tensor, stride: int, summary: int, own: int,
         scale: float) -> tuple[Tensor, Tensor]:
    out, lse = _ext().forward(q.contiguous(), k.contiguous(), v.contiguous(), stride, summary, own, scale)
    return out, lse  # (fixed_sparse_attention passes contiguous tensors: these calls copy nothing there)


@_fwd.register_fake
def _fwd_fake(q, k, v, stride, summary, own, scale):
    return v.new_empty(v.shape), q.new_empty(q.shape[:2])


@torch.library.custom_op("visionattn::fixed_sparse_attention_bwd", mutates_args=(), device_types="cpu")
def _bwd(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, stride: int, summary: int,
         own: int, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    dq, dk, dv = _ext().backward(grad_out.contiguous(), q, k, v, out, lse, stride, summary, own, scale)
    return dq, dk, dv


@_bwd.register_fake
def _bwd_fake(grad_out, q, k, v, out, lse, stride, summary, own, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, *args = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(q.contiguous(), k.contiguous(), v.contiguous(), out, lse)
    ctx.args = args


def _backward(ctx, grad_out, _grad_lse):
    if grad_out is None:
        return (None,) * 7
    return (*_bwd(grad_out, *ctx.saved_tensors, *ctx.args), None, None, None, None)


_fwd.register_autograd(_backward, setup_context=_setup_context)


def fixed_pairs(n: int, stride: int, summary: int, own: int) -> int:
    """The query-key pairs the kernel computes over n = m l positions (whole rows of each block's logits: b c
    summaries and l - own own-block keys for each of the l queries of block b)."""
    m = n // stride
    return stride * (summary * m * (m - 1) // 2 + m * (stride - own))


@register_flop_formula(torch.ops.visionattn.fixed_sparse_attention_fwd)
def _fwd_flops(q_shape, k_shape, v_shape, stride, summary, own, scale, *args, **kwargs) -> int:
    pairs = q_shape[0] * fixed_pairs(q_shape[1], stride, summary, own)
    return 2 * pairs * (q_shape[2] + v_shape[2])


@register_flop_formula(torch.ops.visionattn.fixed_sparse_attention_bwd)
def _bwd_flops(grad_out_shape, q_shape, k_shape, v_shape, saved_out_shape, lse_shape, stride, summary, own, scale,
               *args, **kwargs) -> int:
    pairs = q_shape[0] * fixed_pairs(q_shape[1], stride, summary, own)
    return 2 * pairs * (3 * q_shape[2] + 2 * v_shape[2])  # logits again, dP, dq, dk, dv


def fixed_sparse_attention(q: Tensor, k: Tensor, v: Tensor, stride: int, summary: int, own: int,
                           scale: float) -> Tensor:
    """One softmax per query over its block's keys: the c = ``summary`` summaries of every earlier block, then its
    own block from offset ``own`` so far (merged head: c, 0; A(1) alone: 0, 0; A(2) alone: c, l - c). The
    sequence must be whole blocks of l = ``stride``; CPU, float32 / float64 (other floating types are computed in
    float32).

    Shape:
        - Input: q, k (N, m l, d), v (N, m l, d_v)
        - Output: (N, m l, d_v)
    """
    dtype = q.dtype
    compute = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    q, k, v = (t.to(compute).contiguous() for t in (q, k, v))  # once: the op and its saved inputs share them
    out, _ = _fwd(q, k, v, stride, summary, own, float(scale))
    return out.to(dtype)
