"""Attention over a union of key sets, one softmax: partial attentions merged by their log-sum-exps.

A query's softmax over keys K_1 u K_2 u ... (disjoint) is the parts' softmaxes, each over its own keys, weighted
by exp(lse_p - lse) where lse_p is the log-sum-exp of part p's logits and lse that of all of them:

    S = sum_p exp(lse_p - lse) S_p,    lse = log sum_p exp(lse_p).

The Sparse Transformer's merged head (:mod:`visionattn.layers.sparse_attention`) attends the union of two
factors this way without forming the n x n matrix. The parts go through the attention core's kernels: the CPU
flash kernel (which returns the log-sum-exps, and whose backward is reused), else the explicit path
(:func:`attention_with_lse`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from visionattn.errors import UsageError, check_choice
from visionattn.layers.attention_core import _HALF, IMPLS, _check, _combined_mask

__all__ = ["attention_with_lse", "merge_attention", "AttentionPart", "merged_attention"]


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                       causal: bool = False, dropout_p: float = 0.0,
                       scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over one part of the keys, with the log-sum-exp of each row's logits: attentions of the same
    queries over disjoint key sets merge into the one softmax over their union (:func:`merge_attention`), as
    for the Sparse Transformer's merged head (:mod:`visionattn.layers.sparse_attention`).

    Explicit (the logits are formed, in fp32 for half inputs), differentiable through both outputs. A row with
    no key it may attend gets a zero output and a log-sum-exp of -inf (no NaN, in either direction). Dropout
    acts on this part's weights; since it is elementwise, it commutes with the merge's rescaling, so merged
    parts are the union's weights with dropout.

    Shape:
        - Input: q (B, h, N_q, d), k (B, h, N_k, d), v (B, h, N_k, d_v); mask broadcastable to (B, h, N_q, N_k)
        - Output: (B, h, N_q, d_v) in q's dtype, and the log-sum-exp (B, h, N_q) in float32 for half inputs (q's
          dtype otherwise)
    """
    _check(q, k, v, None, mask)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dtype = q.dtype
    if q.dtype in _HALF:
        q, k = q.float(), k.float()
    logits = torch.matmul(q * scale, k.transpose(-2, -1))
    allowed = _combined_mask(q.shape[-2], k.shape[-2], mask, causal, q.device)
    if allowed is None:
        lse = logits.logsumexp(-1, keepdim=True)
        weights = torch.exp(logits - lse)
    else:
        empty = ~allowed.any(-1, keepdim=True)
        # a row with no key is filled with 0 rather than -inf, so that neither log-sum-exp nor its gradient
        # meets exp(-inf + inf); its weights are then exp(0 - inf) = 0 and its log-sum-exp -inf, both with a zero
        # gradient
        fill = torch.zeros(empty.shape, dtype=logits.dtype, device=logits.device).masked_fill(~empty, float("-inf"))
        logits = torch.where(allowed, logits, fill)
        lse = logits.logsumexp(-1, keepdim=True)
        weights = torch.exp(logits - lse.masked_fill(empty, float("inf")))
        lse = lse.masked_fill(empty, float("-inf"))
    weights = weights.to(dtype)
    out = torch.matmul(F.dropout(weights, dropout_p) if dropout_p else weights, v)
    return out, lse.squeeze(-1)


class AttentionPart(NamedTuple):
    """One part of a merged attention (:func:`merged_attention`): q, k, v (and a boolean ``mask`` or ``causal``)
    in the part's own layout, and the maps between that layout and the common one: ``to_common`` takes a
    (B', h', N', x) tensor of the part (its output, or its log-sum-exp with a trailing axis of 1) to the common
    (B, h, R, x), ``from_common`` is its inverse; ``rows`` the rows of the common (B, h, N, x) the part answers
    (None: all N; a row outside has no key in this part)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor | None
    causal: bool
    to_common: Callable[[torch.Tensor], torch.Tensor]
    from_common: Callable[[torch.Tensor], torch.Tensor]
    rows: slice | None = None


def _all_rows(x: torch.Tensor, rows: slice | None, n: int, fill: float) -> torch.Tensor:
    """A part's (B, h, R[, d]) rows placed among all n rows of the common layout, ``fill`` elsewhere."""
    if rows is None:
        return x
    pad = (rows.start, n - rows.stop)
    return F.pad(x, (0, 0, *pad) if x.dim() == 4 else pad, value=fill)


def _merge(outs: list[torch.Tensor], lses: list[torch.Tensor],
           rows: list[slice | None]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The merged output and each part's weight exp(lse_p - lse) on the common rows (the first part has all)."""
    n = outs[0].shape[2]
    lses = [_all_rows(lse, r, n, float("-inf")) for lse, r in zip(lses, rows)]
    total = torch.stack(lses).logsumexp(0)
    weights = [torch.exp(lse - total)[..., None] for lse in lses]
    merged = sum(w * _all_rows(o.to(w.dtype), r, n, 0.0) for w, o, r in zip(weights, outs, rows))
    return merged.to(outs[0].dtype), weights


def merge_attention(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """One softmax over the union of disjoint key sets, from each part's output and log-sum-exp
    (:func:`attention_with_lse`): S = sum_p exp(lse_p - lse) S_p with lse = log sum_p exp(lse_p). Every row
    needs a key in at least one part.

    Shape:
        - Input: pairs of (B, h, N, d_v) outputs and (B, h, N) log-sum-exps
        - Output: (B, h, N, d_v) in the outputs' dtype
    """
    return _merge([o for o, _ in parts], [lse for _, lse in parts], [None] * len(parts))[0]


_FLASH_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_FLASH_CPU_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    if mask is None:
        return None
    mask = mask[None] if mask.dim() == 3 else mask  # the CPU flash kernel takes a 2-D or 4-D mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


class _FlashMerge(torch.autograd.Function):
    """The parts on the CPU flash kernel, merged by their log-sum-exps. Backward: the union's gradient restricted
    to part p is the kernel's own backward of part p with the incoming gradient scaled by the part's weight
    w_p = exp(lse_p - lse) and the merged output in place of the part's (the kernel's row term sum(dO * O) must
    be the union's), so no gradient through the log-sum-exps is needed."""

    @staticmethod
    def forward(ctx, parts: list[AttentionPart], scale: float | None, *qkv: torch.Tensor) -> torch.Tensor:
        outs, lses, kernel_lses, masks = [], [], [], []
        for p, part in enumerate(parts):
            q, k, v = qkv[3 * p : 3 * p + 3]
            mask = _additive(part.mask, q.dtype)
            out, lse = _FLASH_CPU(q, k, v, 0.0, part.causal, attn_mask=mask, scale=scale)
            kernel_lses.append(lse)
            masks.append(mask)
            if part.mask is not None:  # the kernel reports 0 for a row with no key; it holds no weight
                lse = lse.masked_fill(~part.mask.any(-1), float("-inf"))
            outs.append(part.to_common(out))
            lses.append(part.to_common(lse[..., None].to(torch.promote_types(lse.dtype, torch.float32)))[..., 0])
        merged, weights = _merge(outs, lses, [part.rows for part in parts])
        ctx.parts, ctx.scale, ctx.masks = parts, scale, masks
        ctx.save_for_backward(merged, *qkv, *kernel_lses, *weights)
        return merged

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        n, (merged, *saved) = len(ctx.parts), ctx.saved_tensors
        qkv, kernel_lses, weights = saved[: 3 * n], saved[3 * n : 4 * n], saved[4 * n :]
        grads: list[torch.Tensor] = []
        for p, part in enumerate(ctx.parts):
            q, k, v = qkv[3 * p : 3 * p + 3]
            rows = slice(None) if part.rows is None else part.rows
            part_grad = part.from_common((weights[p] * grad)[:, :, rows].to(q.dtype)).contiguous()
            part_out = part.from_common(merged[:, :, rows]).contiguous()
            grads += _FLASH_CPU_BACKWARD(part_grad, q, k, v, part_out, kernel_lses[p], 0.0, part.causal,
                                         attn_mask=ctx.masks[p], scale=ctx.scale)
        return None, None, *grads


def merged_attention(parts: list[AttentionPart], dropout_p: float = 0.0, scale: float | None = None,
                     impl: str = "auto") -> torch.Tensor:
    """One softmax over the union of the parts' disjoint key sets, each part a batched attention in its own
    layout (the Sparse Transformer's merged head, :mod:`visionattn.layers.sparse_attention`). The first part
    answers every row; every row needs a key in some part.

    ``"fused"`` (and ``"auto"`` on the CPU without dropout) runs every part on the CPU flash kernel, which returns
    the log-sum-exps, and merges them (:class:`_FlashMerge`: no weight matrix is stored); otherwise (``"explicit"``,
    dropout, other devices) each part is :func:`attention_with_lse`, merged by the same rule.

    Shape:
        - Input: parts whose outputs map (``to_common``) to (B, h, N, d_v), or to rows of it
        - Output: (B, h, N, d_v)
    """
    check_choice("impl", impl, IMPLS)
    for part in parts:
        _check(part.q, part.k, part.v, None, part.mask)
    if parts[0].rows is not None:
        raise UsageError("merged_attention: the first part must answer every row (rows=None)")
    on_cpu = parts[0].q.device.type == "cpu"
    if impl == "fused" and (dropout_p or not on_cpu):
        raise UsageError("merged_attention: impl='fused' is the CPU flash kernel, which has no dropout; use "
                         "impl='auto' or 'explicit'")
    if impl == "explicit" or dropout_p or not on_cpu:
        outs, lses = [], []
        for part in parts:
            out, lse = attention_with_lse(part.q, part.k, part.v, part.mask, part.causal, dropout_p, scale)
            outs.append(part.to_common(out))
            lses.append(part.to_common(lse[..., None])[..., 0])
        return _merge(outs, lses, [part.rows for part in parts])[0]
    qkv = [t.contiguous() for part in parts for t in (part.q, part.k, part.v)]
    return _FlashMerge.apply(parts, scale, *qkv)
