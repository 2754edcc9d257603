"""Attention over a union of key sets, one softmax: partial attentions merged by their log-sum-exps.

A query's softmax over keys K_1 u K_2 u ... (disjoint) is the parts' softmaxes, each over its own keys, weighted
by exp(lse_p - lse) where lse_p is the log-sum-exp of part p's logits and lse that of all of them:

    S = sum_p exp(lse_p - lse) S_p,    lse = log sum_p exp(lse_p);

for two parts the weight of the second is sigmoid(lse_2 - lse_1) and S = lerp(S_1, S_2, sigmoid(lse_2 - lse_1)).

The Sparse Transformer's merged head (:mod:`visionattn.layers.sparse_attention`) attends the union of two
factors this way without forming the n x n matrix (:func:`merged_attention`). Each factor is a few batched
attentions ("parts") over views of the queries, keys and values in the layouts that make them dense (blocks,
columns, windows). On the CPU the parts run on the flash kernel, which takes strided views as they are, returns
the log-sum-exps, and whose backward is reused (:class:`_FlashMerge`); elsewhere on the explicit path
(:func:`attention_with_lse`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from visionattn.errors import UsageError, check_choice
from visionattn.layers.attention_core import _HALF, IMPLS, _check, _combined_mask
from visionattn.layers.helpers import cache_unless_compiling

__all__ = ["attention_with_lse", "merge_attention", "AttentionPart", "merged_attention"]

_ALL = slice(None)


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


def merge_attention(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """One softmax over the union of disjoint key sets, from each part's output and log-sum-exp
    (:func:`attention_with_lse`): S = sum_p exp(lse_p - lse) S_p with lse = log sum_p exp(lse_p). Every row
    needs a key in at least one part.

    Shape:
        - Input: pairs of (B, h, N, d_v) outputs and (B, h, N) log-sum-exps
        - Output: (B, h, N, d_v) in the outputs' dtype
    """
    lses = torch.stack([lse.to(torch.promote_types(lse.dtype, torch.float32)) for _, lse in parts])
    weights = torch.exp(lses - lses.logsumexp(0))[..., None]
    return sum(w * out.to(w.dtype) for w, (out, _) in zip(weights, parts)).to(parts[0][0].dtype)


class AttentionPart(NamedTuple):
    """One part of a merged attention (:func:`merged_attention`): the queries of row blocks [start, stop) of the
    common (N, M, L, d) layout against ``k`` and ``v``, already in the part's own (B', H', N_k, .) layout (views
    where they can be), with a boolean ``mask`` broadcastable to (B', H', N_q, N_k) and/or ``causal`` (key
    j <= query i, top-left). ``lay`` takes the common rows (N, stop - start, L, x) to the part's query layout
    (B', H', N_q, x), a view; ``unlay`` is its inverse (for the output, and the log-sum-exp with a trailing axis
    of 1). ``kv_grad`` says where the gradient of the part's keys (and values) goes in that of the common
    (N, M, L, .) keys: pairs of (an index into the common tensor, a view of the part's gradient added there); the
    fused path's backward needs it."""

    start: int
    stop: int
    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor | None
    causal: bool
    lay: Callable[[torch.Tensor], torch.Tensor]
    unlay: Callable[[torch.Tensor], torch.Tensor]
    kv_grad: tuple[tuple[tuple[slice, ...], Callable[[torch.Tensor], torch.Tensor]], ...]


Factors = tuple[AttentionPart, list[AttentionPart]]


def _check_factors(factors: Factors, blocks: int) -> None:
    """The first factor is one part over all M row blocks; the second's parts are in order and disjoint."""
    first, second = factors
    if (first.start, first.stop) != (0, blocks):
        raise UsageError(f"merged_attention: the first factor must be one part over all {blocks} row blocks, got "
                         f"({first.start}, {first.stop})")
    ends = [0, *(r.stop for r in second)]
    if any(not end <= r.start < r.stop <= blocks for r, end in zip(second, ends)):
        raise UsageError(f"merged_attention: the second factor's parts must be disjoint row blocks of [0, {blocks}) "
                         f"in order, got {[(r.start, r.stop) for r in second]}")


def _merge(factors: Factors, results: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor,
                                                                                           list[torch.Tensor]]:
    """The merged (N, M, L, d_v) output from each part's output and log-sum-exp on the common rows (the first
    factor's, then the second's), and the weight w = sigmoid(lse_2 - lse_1) of the second factor on each of its
    parts' rows: there the merged output is lerp(S_1, S_2, w), one pass, elsewhere S_1. Outside autograd S_1 (the
    kernel's, ours) is overwritten in place; inside, the rows are concatenated."""
    (out, lse), seconds = results[0], results[1:]
    weights = [torch.sigmoid(lse_r - lse[:, r.start : r.stop]) for r, (_, lse_r) in zip(factors[1], seconds)]
    if not torch.is_grad_enabled():
        merged = out if out.is_contiguous() else out.contiguous()
        for r, (out_r, _), w in zip(factors[1], seconds, weights):
            rows = merged[:, r.start : r.stop]
            if merged.dtype == w.dtype:
                torch.lerp(rows, out_r, w[..., None], out=rows)
            else:
                rows.copy_(torch.lerp(rows.to(w.dtype), out_r.to(w.dtype), w[..., None]))
        return merged, weights
    pieces, done = [], 0
    for r, (out_r, _), w in zip(factors[1], seconds, weights):
        rows = out[:, r.start : r.stop]
        pieces += [out[:, done : r.start], torch.lerp(rows.to(w.dtype), out_r.to(w.dtype), w[..., None]).to(out.dtype)]
        done = r.stop
    return torch.cat([*pieces, out[:, done:]], dim=1), weights


def _on_common(part: AttentionPart, out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return part.unlay(out), part.unlay(lse[..., None])[..., 0].to(torch.promote_types(lse.dtype, torch.float32))


@cache_unless_compiling(16)
def _additive_of(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The flash kernel's additive form (0 where allowed, -inf elsewhere) of a boolean mask. Cached by the mask
    object: a builder that caches its masks (:mod:`visionattn.layers.sparse_attention` does) has them converted
    once. The cache holds its keys, so an id is never reused while cached, and never meets ``==``."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


@cache_unless_compiling(16)
def _empty_rows(mask: torch.Tensor) -> torch.Tensor | None:
    """The rows of a boolean mask with no key, None if there is none (cached by the mask object, as
    :func:`_additive_of`)."""
    empty = ~mask.any(-1)
    return empty if empty.any() else None


def _additive(masks: list[torch.Tensor | None], dtype: torch.dtype) -> list[torch.Tensor | None]:
    """:func:`_additive_of` for each mask; masks that are views of one contiguous base (the fixed pattern's
    summary groups) are converted once, as views of the converted base."""
    out: list[torch.Tensor | None] = []
    for mask in masks:
        if mask is None:
            out.append(None)
            continue
        base = mask._base if mask._base is not None else mask
        if base is mask or not (base.is_contiguous() and base.storage_offset() == 0):
            add = _additive_of(mask, dtype)
        else:
            add = _additive_of(base, dtype).as_strided(mask.shape, mask.stride(), mask.storage_offset())
        out.append(add[None] if add.dim() == 3 else add)  # the kernel takes a 2-D or 4-D mask
    return out


def _accumulate(total: torch.Tensor | None, shape: torch.Size, index: tuple[slice, ...],
                grad: torch.Tensor) -> torch.Tensor:
    """total[index] += grad, with total None meaning zeros of ``shape``, or ``grad`` itself where it is all of
    it (a kernel's gradient, ours to add into)."""
    if total is None:
        if grad.shape == shape and all(i.indices(size) == (0, size, 1) for i, size in zip(index, shape)):
            return grad
        total = grad.new_zeros(shape)
    total[index] += grad
    return total


def _scale_into(dst: torch.Tensor, grad: torch.Tensor, share: torch.Tensor) -> None:
    """dst = grad * share (one weight per row), in dst's dtype."""
    if dst.dtype == share.dtype:
        torch.mul(grad, share[..., None], out=dst)
    else:
        dst.copy_(grad * share[..., None])


_FLASH_CPU = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_FLASH_CPU_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


class _FlashMerge(torch.autograd.Function):
    """The parts on the CPU flash kernel, merged by their log-sum-exps. Backward: the union's gradient restricted
    to a part is the kernel's own backward of that part with the incoming gradient scaled by the part's weight
    (sigmoid(lse_2 - lse_1) for the second factor, one minus it for the first) and the merged output in place of
    the part's (the kernel's row term sum(dO * O) must be the union's), so no gradient through the log-sum-exps is
    needed. The parts' query, key and value views go to the kernel as they are, and their gradients are added
    into the common (N, M, L, d) ones."""

    @staticmethod
    def forward(ctx, build: Callable[..., Factors], scale: float | None, q: torch.Tensor, k: torch.Tensor,
                v: torch.Tensor) -> torch.Tensor:
        factors = build(q, k, v)
        _check_factors(factors, q.shape[1])
        parts = [factors[0], *factors[1]]
        masks = _additive([part.mask for part in parts], q.dtype)
        results, kernel_lses = [], []
        for part, mask in zip(parts, masks):
            out, lse = _FLASH_CPU(part.lay(q[:, part.start : part.stop]), part.k, part.v, 0.0, part.causal,
                                  attn_mask=mask, scale=scale)
            kernel_lses.append(lse)
            empty = None if part.mask is None else _empty_rows(part.mask)
            if empty is not None:  # the kernel gives a row with no key a log-sum-exp of 0; it holds no weight
                lse = lse.masked_fill(empty, float("-inf"))
            results.append(_on_common(part, out, lse))
        merged, weights = _merge(factors, results)
        ctx.parts, ctx.scale, ctx.masks = parts, scale, masks
        ctx.save_for_backward(merged, q, k, v, *kernel_lses, *weights)
        return merged

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        parts, (merged, q, k, v, *saved) = ctx.parts, ctx.saved_tensors
        kernel_lses, weights = saved[: len(parts)], saved[len(parts) :]
        # each factor's share of the gradient: the second's w on its rows (0 elsewhere), the first's 1 - w
        second = torch.zeros(q.shape[:3], dtype=torch.promote_types(q.dtype, torch.float32), device=q.device)
        for part, w in zip(parts[1:], weights):
            second[:, part.start : part.stop] = w
        scaled = torch.empty_like(q)  # the first factor's share of the gradient, then (its backward done) the second's
        dq, dk, dv = None, None, None
        for p, (part, lse, mask) in enumerate(zip(parts, kernel_lses, ctx.masks)):
            if p < 2:
                _scale_into(scaled, grad, 1 - second if p == 0 else second)
            rows = slice(part.start, part.stop)
            part_grad = scaled[:, rows]
            gq, gk, gv = _FLASH_CPU_BACKWARD(part.lay(part_grad), part.lay(q[:, rows]), part.k, part.v,
                                             part.lay(merged[:, rows]), lse, 0.0, part.causal, attn_mask=mask,
                                             scale=ctx.scale)
            dq = _accumulate(dq, q.shape, (_ALL, rows), part.unlay(gq))
            for index, view in part.kv_grad:
                dk, dv = _accumulate(dk, k.shape, index, view(gk)), _accumulate(dv, v.shape, index, view(gv))
        return None, None, dq, dk, dv


def merged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, build: Callable[..., Factors],
                     dropout_p: float = 0.0, scale: float | None = None, impl: str = "auto") -> torch.Tensor:
    """One softmax over the union of two factors' disjoint key sets (the Sparse Transformer's merged head,
    :mod:`visionattn.layers.sparse_attention`), the queries, keys and values in a common layout of M row blocks
    of L. ``build(q, k, v)`` gives the two factors: the first as one :class:`AttentionPart` over every row (its
    keys the common keys themselves, for the fused path to take its gradients as they are), the second as a list
    of parts over disjoint row blocks, in order; a row in both is merged by the log-sum-exps, one lerp. Every row
    of the first part needs a key; a row of the second without one must be so by its mask (the flash kernel gives
    such a row a log-sum-exp of 0, which the merge replaces by -inf).

    ``"fused"`` (and ``"auto"`` on the CPU without dropout) runs every part on the CPU flash kernel and merges them
    (:class:`_FlashMerge`: no weight matrix is stored, no view is copied); otherwise (``"explicit"``, dropout,
    other devices) each part is :func:`attention_with_lse`, merged by the same rule, through autograd.

    Shape:
        - Input: q, k (N, M, L, d), v (N, M, L, d_v)
        - Output: (N, M, L, d_v)
    """
    check_choice("impl", impl, IMPLS)
    on_cpu = q.device.type == "cpu"
    if impl == "fused" and (dropout_p or not on_cpu):
        raise UsageError("merged_attention: impl='fused' is the CPU flash kernel, which has no dropout; use "
                         "impl='auto' or 'explicit'")
    if impl == "explicit" or dropout_p or not on_cpu:
        factors = build(q, k, v)
        _check_factors(factors, q.shape[1])
        results = [_on_common(part, *attention_with_lse(part.lay(q[:, part.start : part.stop]), part.k, part.v,
                                                          part.mask, part.causal, dropout_p, scale))
                   for part in (factors[0], *factors[1])]
        return _merge(factors, results)[0]
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))  # the kernel's rows are contiguous
    return _FlashMerge.apply(build, scale, q, k, v)
