"""Factorized sparse attention that is actually sparse: Child et al. 2019, "Generating Long Sequences with Sparse
Transformers" (sec. 4.2-4.3 for the patterns, sec. 5.2 eq. 6-8 for their combinations).

The patterns (``"strided"``, ``"fixed"``) and combinations (``"interleaved"``, ``"merged"``, ``"per_head"``) are
defined as boolean masks in :mod:`visionattn.layers.sparse_patterns`. ``impl="dense"`` is that definition run as
one dense causal attention with the mask: the test oracle. Every other ``impl`` takes the fast path, which never
forms an n x n tensor: the sequence is padded to m blocks of l (the padding lies after every real position, so
causality alone keeps it out of every real query's keys; the output is cut back), viewed as (B h, m, l, d), and each
factor becomes a few batched dense attentions ("parts") over views of it, at n sqrt(n) cost for l ~ sqrt(n):

- strided A(1), the previous l positions: block 0 causal on its own; every later block (l queries) against the
  window of blocks b - 1 and b (2l keys, ``unfold``: a view) with the band mask 0 <= i - j < l: n * 2l pairs.
- strided A(2), every l-th position: the sequence [m, l] is read as [l, m] (the official code's
  ``strided_transpose``, here a transposed view), so that each column of the image is a causal sequence of m:
  n * m / 2 pairs.
- fixed A(1), its own block: m causal sequences of l: n * l / 2 pairs.
- fixed A(2), the summary positions: every query against the m * c gathered summary keys with the causal mask,
  n * m * c pairs, cut to about 9/16 of that by taking the queries in 8 groups of blocks, each against the
  summaries up to its last block only.

On the CPU the fixed pattern has a kernel of its own (:mod:`visionattn.kernels.fixed_sparse_attention`, for
``impl`` ``"auto"`` or ``"fused"`` without dropout): every query of block b has the same keys, the summaries of
the earlier blocks and its own block, so each block is one dense softmax over them (A(1) alone, A(2) alone or
their union), with no parts to merge. Elsewhere (another device, dropout, no compiler) the fixed pattern takes the
parts below. Each part runs on the fused kernel (``F.scaled_dot_product_attention``; ``impl="explicit"`` forms
the weights instead). The merged head needs one softmax over A(1) u A(2): each factor's partial attention comes with the
log-sum-exp of its rows and the two are merged by them, lerp(S_1, S_2, sigmoid(lse_2 - lse_1))
(:func:`~visionattn.layers.attention_merge.merged_attention`: on the CPU the parts go to the flash kernel as the
views they are, the log-sum-exps come with its outputs, and the backward is the kernel's own per part, with the
gradient scaled by the part's share of the softmax). A key in both factors must count once, so one factor leaves
out what the other has; the first is the one that is a single part over every row (its output and gradients
become the merged ones in place): strided A(2), then A(1) without j = i (block 0's first query then has no key
there); fixed A(1), then A(2) without the own block (the summaries of earlier blocks only; block 0 has none).

:class:`SparseSelfAttention2d` (``"sparse_strided"``, ``"sparse_fixed"``) is the layer over the pixels of a
feature map in raster order, causal, with the stride defaulting to the map's width W: for ``"strided"`` a pixel then
attends the last W pixels (its row so far and the rest of the row above) and its column.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from visionattn.errors import UsageError, check_choice, check_range
from visionattn.kernels.fixed_sparse_attention import fixed_kernel_available, fixed_sparse_attention
from visionattn.layers.attention_core import IMPLS, Attention, attention
from visionattn.layers.attention_merge import AttentionPart, merged_attention
from visionattn.layers.helpers import cache_unless_compiling, check_feature_map, check_positive_int
from visionattn.layers.self_attention import MultiHeadSelfAttention, head_dims
from visionattn.layers.sparse_patterns import (
    check_combine,
    check_pattern,
    combined_mask,
    default_summary,
    heads_on_first,
)
from visionattn.registry import register_attn

__all__ = ["SPARSE_IMPLS", "sparse_attention", "SparseAttention", "SparseSelfAttention2d"]

SPARSE_IMPLS = (*IMPLS, "dense")
_PAPER = "Child et al. 2019, Generating Long Sequences with Sparse Transformers"

_SUMMARY_GROUPS = 8  # row groups of the fixed pattern's summary attention (see _fixed_summary)
_ALL = slice(None)
_TO_COMMON, _FROM_COMMON = "b h (m l) d -> (b h) m l d", "(b h) m l d -> b h (m l) d"


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


def _columns(x: torch.Tensor) -> torch.Tensor:
    """(N, M, L, .) <-> (N, L, M, .): the sequence [M, L] read as [L, M], each column a sequence (a view)."""
    return x.transpose(1, 2)


def _blockwise(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """x with its leading axes reshaped to ``shape`` (a view where the strides allow)."""
    return x.reshape(*shape, x.shape[-1])


@cache_unless_compiling(8)
def _local_masks(stride: int, strict: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Strided A(1)'s masks (strict: without j = i): block 0's (l, l), query s may attend key t <= s (t < s); a
    later block's (l, 2l) over the window of blocks [b - 1, b], key t (position (b - 1) l + t) when
    0 <= i - j = l + s - t < l (0 < i - j). Cached (as are the summary masks): the same tensors for every call,
    so that the merge converts them to the kernel's additive form once."""
    s = torch.arange(stride, device=device)[:, None]
    t = torch.arange(2 * stride, device=device)[None, :]
    return t[:, :stride] < s + int(not strict), (t > s) & (t < s + stride + int(not strict))


def _strided_local(k: torch.Tensor, v: torch.Tensor, strict: bool) -> list[AttentionPart]:
    """A(1): block 0 on its own; every later block against the window of the block before it and its own (2l
    keys, a view: ``unfold``) with the band mask. Strict (without j = i, the column's in the merged head): query 0
    has no key, which the merge allows in its second factor."""
    n, m, stride, _ = k.shape
    first, band = _local_masks(stride, strict, k.device)
    parts = [AttentionPart(0, 1, k[:, :1], v[:, :1], first, False, _same, _same, (((_ALL, slice(0, 1)), _same),))]
    if m > 1:
        windows = [x.reshape(n, m * stride, x.shape[-1]).unfold(1, 2 * stride, stride).transpose(2, 3)
                   for x in (k, v)]
        halves = (((_ALL, slice(0, m - 1)), lambda g: g[:, :, :stride]),  # the block before: keys t < l
                  ((_ALL, slice(1, m)), lambda g: g[:, :, stride:]))
        parts.append(AttentionPart(1, m, *windows, band, False, _same, _same, halves))
    return parts


def _strided_column(k: torch.Tensor, v: torch.Tensor) -> list[AttentionPart]:
    """A(2): the sequence read as [l, m], each column a causal sequence of m (views; the kernel's output and
    gradients come back in the common layout)."""
    return [AttentionPart(0, k.shape[1], _columns(k), _columns(v), None, True, _columns, _columns,
                          (((_ALL,), _columns),))]


def _own_block(k: torch.Tensor, v: torch.Tensor) -> list[AttentionPart]:
    """Fixed A(1): m causal sequences of l, batched as N m sequences (the kernel's output and gradients are then
    in the common layout)."""
    n, m, stride, _ = k.shape
    return [AttentionPart(0, m, *(_blockwise(x, (n * m, 1, stride)) for x in (k, v)), None, True,
                          partial(_blockwise, shape=(n * m, 1, stride)), partial(_blockwise, shape=(n, m, stride)),
                          (((_ALL,), partial(_blockwise, shape=(n, m, stride))),))]


@cache_unless_compiling(8)
def _summary_masks(bounds: tuple[int, ...], stride: int, c: int, strict: bool,
                   device: torch.device) -> tuple[torch.Tensor, ...]:
    """The masks of the summary groups [b_0, b_1) (see :func:`_fixed_summary`), views of one base: with x the key's
    index counted from the group's first summary (b_0 c), the rule depends on the row r in the group and x
    only. Strict: block(x) < block(r), the summaries of earlier blocks; else position(x) <= r."""
    sizes = [end - first for first, end in zip(bounds, bounds[1:])]
    before, most = bounds[-2] * c, max(sizes)
    r = torch.arange(most * stride, device=device)[:, None]
    x = torch.arange(-before, most * c, device=device)[None, :]
    base = x // c < r // stride if strict else (x // c) * stride + (stride - c) + x % c <= r
    return tuple(base[: size * stride, before - first * c : before + (end - int(strict)) * c - first * c]
                 for first, end, size in zip(bounds, bounds[1:], sizes))


def _fixed_summary(k: torch.Tensor, v: torch.Tensor, c: int, strict: bool) -> list[AttentionPart]:
    """Fixed A(2): the queries of a few row groups of blocks, each against the gathered summary keys (c of each
    block) up to its last block only, so the masked rectangle shrinks towards the block-causal triangle
    ((G + 1) / 2G of the n m c pairs for G groups) at the price of G calls. Strict: the summaries of earlier
    blocks only (the own block's are A(1)'s), so block 0 has none."""
    n, m, stride, _ = k.shape
    first = int(strict)
    if m == first:
        return []
    gathered = [x[:, : m - first, stride - c :].reshape(n, (m - first) * c, x.shape[-1]) for x in (k, v)]
    bounds = tuple(sorted({first + round(g * (m - first) / _SUMMARY_GROUPS) for g in range(_SUMMARY_GROUPS + 1)}))
    masks = _summary_masks(bounds, stride, c, strict, k.device)
    parts = []
    for start, stop, mask in zip(bounds, bounds[1:], masks):
        seen = stop - first  # the blocks whose summaries this group may attend
        add = (((_ALL, slice(0, seen), slice(stride - c, None)), partial(_blockwise, shape=(n, seen, c))),)
        parts.append(AttentionPart(start, stop, *(x[:, None, : seen * c] for x in gathered), mask, False,
                                   partial(_blockwise, shape=(n, 1, (stop - start) * stride)),
                                   partial(_blockwise, shape=(n, stop - start, stride)),
                                   add))
    return parts


def _parts(pattern: str, factor: int, k: torch.Tensor, v: torch.Tensor, c: int | None,
           strict: bool = False) -> list[AttentionPart]:
    """One factor's parts on the common (N, m, l, .) layout of k and v; ``strict``: without the other factor's
    keys (strided A(1) without j = i, fixed A(2) without the own block's summaries)."""
    if pattern == "strided":
        return _strided_local(k, v, strict) if factor == 0 else _strided_column(k, v)
    return _own_block(k, v) if factor == 0 else _fixed_summary(k, v, c, strict)  # type: ignore[arg-type]


def _merged_factors(pattern: str, c: int | None, q: torch.Tensor, k: torch.Tensor,
                    v: torch.Tensor) -> tuple[AttentionPart, list[AttentionPart]]:
    """The merged head's two factors for :func:`~visionattn.layers.attention_merge.merged_attention`, each key
    once: the one with a single part over every row first (its output and gradients are the merged ones, in
    place), the other without the first's keys. Strided: A(2), then A(1) without j = i; fixed: A(1), then A(2)
    without the own block's summaries."""
    first = 1 if pattern == "strided" else 0
    return _parts(pattern, first, k, v, c)[0], _parts(pattern, 1 - first, k, v, c, strict=True)


def _factor(pattern: str, factor: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, stride: int,
            c: int | None, dropout_p: float, impl: str) -> torch.Tensor:
    """One factor alone: its parts answer consecutive row blocks (all of them), so their outputs are
    concatenated. ``"auto"`` is the fused kernel for every part: batched over (B h) x blocks it beats the explicit
    path even where each block is short (forward + backward at n = 256 to 4096, one thread: 1.0-1.6x)."""
    impl, heads = "fused" if impl == "auto" else impl, q.shape[1]
    q, k, v = (rearrange(t, _TO_COMMON, l=stride) for t in (q, k, v))
    outs = [part.unlay(attention(part.lay(q[:, part.start : part.stop]), part.k, part.v, mask=part.mask,
                                 causal=part.causal, dropout_p=dropout_p, impl=impl))
            for part in _parts(pattern, factor, k, v, c)]
    return rearrange(outs[0] if len(outs) == 1 else torch.cat(outs, dim=1), _FROM_COMMON, h=heads)


def _fixed_kernel_applies(q: torch.Tensor, dropout_p: float, impl: str) -> bool:
    """Whether the fixed pattern goes to its C++ kernel: the fused path on the CPU without dropout, where the
    kernel builds."""
    return impl in ("auto", "fused") and not dropout_p and q.device.type == "cpu" and fixed_kernel_available()


def _fixed_on_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, stride: int, c: int, combine: str,
                     factor: int, first: int) -> torch.Tensor:
    """The fixed pattern on its kernel, (B, h, m l, d) in and out: the merged head is the summaries and the own
    block (c, own = 0); A(1) the own block (0, 0); A(2) the summaries, its own among them (c, l - c)."""
    n = q.shape[2]
    keys = {0: (0, 0), 1: (c, stride - c), "merged": (c, 0)}

    def run(factor_key: int | str, part: slice) -> torch.Tensor:
        q_, k_, v_ = (t[:, part] for t in (q, k, v))
        out = fixed_sparse_attention(*(t.reshape(-1, n, t.shape[-1]) for t in (q_, k_, v_)), stride,
                                     *keys[factor_key], q.shape[-1] ** -0.5)
        return out.view(*v_.shape)

    if combine == "merged":
        return run("merged", _ALL)
    if combine == "interleaved":
        return run(factor, _ALL)
    return torch.cat([run(0, slice(None, first)), run(1, slice(first, None))], dim=1)


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise UsageError(f"sparse attention: {name} must be 4-D (B, heads, n, d), got shape {tuple(t.shape)}")
    if q.shape != k.shape or v.shape[:3] != q.shape[:3]:
        raise UsageError(f"sparse attention is self-attention: q {tuple(q.shape)}, k {tuple(k.shape)} and v "
                         f"{tuple(v.shape)} must share (B, heads, n), and q and k their d")


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: str, stride: int,
                     summary: int | None = None, combine: str = "merged", factor: int = 0, dropout_p: float = 0.0,
                     impl: str = "auto") -> torch.Tensor:
    """Causal factorized self-attention (see the module docstring): the fast path, or the dense oracle.

    Args:
        q, k, v: queries, keys and values of one sequence, heads on axis 1.
        pattern: ``"strided"`` or ``"fixed"``; stride: l; summary: c (``"fixed"`` only; default l / 8).
        combine: ``"interleaved"`` (this block uses A(``factor``)), ``"merged"`` or ``"per_head"``.
        dropout_p: dropout on the attention weights.
        impl: ``"dense"`` (one dense attention with the pattern's mask), or the fast path: ``"fused"`` (and
            ``"auto"``): on the CPU without dropout the fixed pattern's own kernel, else the attention core's
            fused path for the pieces (the fastest for these batched pieces on the CPU); ``"explicit"``: the
            pieces with explicit weights. The merged head's pieces on the fused path need the CPU flash kernel
            and no dropout; elsewhere they are explicit (:func:`~visionattn.layers.attention_merge.merged_attention`).

    Shape:
        - Input: q, k (B, h, n, d), v (B, h, n, d_v), any n
        - Output: (B, h, n, d_v)
    """
    check_positive_int("stride", stride)
    c = check_pattern(pattern, stride, summary)
    check_combine(combine, factor)
    check_choice("impl", impl, SPARSE_IMPLS)
    _check_qkv(q, k, v)
    heads, n = q.shape[1], q.shape[2]
    first = heads_on_first(heads) if combine == "per_head" else heads
    if impl == "dense":
        mask = combined_mask(pattern, n, stride, c, combine, factor, heads, q.device)
        return attention(q, k, v, mask=mask, dropout_p=dropout_p)
    pad = -n % stride
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    if pattern == "fixed" and _fixed_kernel_applies(q, dropout_p, impl):
        out = _fixed_on_kernel(q, k, v, stride, c, combine, factor, first)  # type: ignore[arg-type]
    elif combine == "merged":  # one factor without the other's keys: each key once in the one softmax
        out = merged_attention(*(rearrange(t, _TO_COMMON, l=stride) for t in (q, k, v)),
                               partial(_merged_factors, pattern, c), dropout_p, impl=impl)
        out = rearrange(out, _FROM_COMMON, h=heads)
    else:
        factors = [(factor, _ALL)] if combine == "interleaved" else [(0, slice(None, first)), (1, slice(first, None))]
        out = torch.cat([_factor(pattern, f, q[:, part], k[:, part], v[:, part], stride, c, dropout_p, impl)
                         for f, part in factors], dim=1)
    return out[:, :, :n] if pad else out


class SparseAttention(nn.Module):
    """The Sparse Transformer's causal factorized attention step (sec. 4.2-4.3, 5.2), for q, k, v already split
    into heads.

    Args:
        pattern: ``"strided"`` (the previous l positions, and every l-th earlier one) or ``"fixed"`` (its own
            block of l, and the last c positions of every block).
        stride: l; None to give it with every call (``forward(..., stride=)``, as :class:`SparseSelfAttention2d`
            does with the map's width).
        summary: c, ``"fixed"`` only (default l / 8, at least 1; at most l).
        combine: ``"interleaved"`` (eq. 6: this block uses factor ``factor``, the next block the other),
            ``"merged"`` (eq. 7: one head over the union; the default, a whole layer on its own), ``"per_head"``
            (eq. 8: the first ceil(h / 2) heads A(1), the others A(2)).
        factor: 0 (A(1)) or 1 (A(2)), for ``"interleaved"``.
        dropout: dropout on the attention weights while training.
        impl: ``"auto"`` / ``"fused"`` / ``"explicit"``: the fast path, its pieces on that path of the attention
            core; ``"dense"``: one dense attention with :meth:`mask` (the oracle).

    While an :class:`~visionattn.layers.attention_core.AttentionRecorder` is attached, the step runs densely
    with :meth:`mask` (the same output), so the recorder gets the (B, h, n, n) weights of the pattern.

    Shape:
        - Input: q, k (B, h, n, d), v (B, h, n, d_v), any n
        - Output: (B, h, n, d_v)
    """

    def __init__(self, pattern: str = "strided", stride: int | None = None, summary: int | None = None,
                 combine: str = "merged", factor: int = 0, dropout: float = 0.0, impl: str = "auto") -> None:
        super().__init__()
        check_pattern(pattern, stride, summary)
        check_combine(combine, factor)
        check_choice("impl", impl, SPARSE_IMPLS)
        check_range("dropout", dropout, 0.0, 1.0, high_open=True)
        self.pattern, self.stride, self.summary, self.combine, self.factor = pattern, stride, summary, combine, factor
        self.dropout, self.impl = dropout, impl
        self.attend = Attention(dropout=dropout, impl="auto" if impl == "dense" else impl)

    def _stride(self, stride: int | None) -> int:
        stride = self.stride if stride is None else stride
        if stride is None:
            raise UsageError("stride: this SparseAttention was built with stride=None, so each call must give one")
        check_pattern(self.pattern, check_positive_int("stride", stride), self.summary)
        return stride

    def summary_for(self, stride: int) -> int | None:
        """c at this stride: the built one, or the default l / 8 (``"fixed"``); None for ``"strided"``."""
        if self.pattern == "strided":
            return None
        return default_summary(stride) if self.summary is None else self.summary

    def mask(self, n: int, heads: int = 1, device: torch.device | str | None = None,
             stride: int | None = None) -> torch.Tensor:
        """The pattern this module computes over ``n`` positions: (heads, n, n) for ``"per_head"``, (1, n, n)
        otherwise; bool, True where query i attends key j."""
        stride = self._stride(stride)
        return combined_mask(self.pattern, n, stride, self.summary_for(stride), self.combine, self.factor, heads,
                             device)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, stride: int | None = None) -> torch.Tensor:
        stride = self._stride(stride)
        _check_qkv(q, k, v)
        if self.impl == "dense" or self.attend.recorder is not None:
            return self.attend(q, k, v, mask=self.mask(q.shape[2], q.shape[1], q.device, stride))
        return sparse_attention(q, k, v, self.pattern, stride, self.summary_for(stride), self.combine, self.factor,
                                self.dropout if self.training else 0.0, self.impl)

    def extra_repr(self) -> str:
        summary = f", summary={self.summary}" if self.pattern == "fixed" else ""
        factor = f", factor={self.factor}" if self.combine == "interleaved" else ""
        return (f"pattern={self.pattern!r}, stride={self.stride}{summary}, combine={self.combine!r}{factor}, "
                f"impl={self.impl!r}")


@register_attn("sparse_fixed", paper=_PAPER, family="self-attention", defaults={"pattern": "fixed"},
               description="Causal fixed sparse attention over the pixels in raster order: its block of l pixels "
                           "(a row by default) so far and the last c pixels of every earlier block",
               variants=({"combine": "per_head", "heads": 3, "dim_head": 4, "stride": 5, "summary": 2},))
@register_attn("sparse_strided", paper=_PAPER, family="self-attention",
               description="Causal strided sparse attention over the pixels in raster order: the last W pixels "
                           "and its column (stride = the map's width W)",
               variants=({"combine": "per_head", "heads": 2},
                         {"combine": "interleaved", "factor": 1, "stride": 3, "impl": "fused"}))
class SparseSelfAttention2d(MultiHeadSelfAttention):
    """Causal sparse multi-head self-attention over the H * W pixels of a feature map in raster order
    (:class:`SparseAttention` between :class:`~visionattn.layers.self_attention.MultiHeadSelfAttention`'s ``qkv``
    and ``proj``): pixel (y, x) sees only pixels before it, as in an autoregressive image model.

    Args:
        channels: C.
        heads: h (default 8); dim_head: channels per head (default C / h).
        pattern: ``"strided"`` or ``"fixed"`` (``"sparse_strided"`` / ``"sparse_fixed"`` set it).
        stride: l; None (default) is the map's width W: strided attention then covers the last W pixels (the
            pixel's row so far and the rest of the row above) and its column, fixed attention its row so far and
            the last c pixels of every earlier row.
        summary, combine, factor: as for :class:`SparseAttention` (combine default ``"merged"``).
        qkv_bias: biases on the projections (GPT-2's: yes); attn_drop: on the weights; proj_drop: after ``proj``.
        impl: as for :class:`SparseAttention`.

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C, H, W)
    """

    def __init__(self, channels: int, heads: int = 8, dim_head: int | None = None, pattern: str = "strided",
                 stride: int | None = None, summary: int | None = None, combine: str = "merged", factor: int = 0,
                 qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0, impl: str = "auto") -> None:
        head_dims(channels, heads, dim_head)
        attend = SparseAttention(pattern, stride, summary, combine, factor, attn_drop, impl)
        if combine == "per_head":
            heads_on_first(heads)
        super().__init__(channels, heads, dim_head, qkv_bias, proj_drop=proj_drop)
        self.attend = attend

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        check_feature_map(x, self.dim, type(self).__name__)
        height, width = x.shape[-2:]
        tokens = rearrange(x, "b c y x -> b (y x) c")
        q, k, v = rearrange(self.qkv(tokens), "b n (three h d) -> three b h n d", three=3, h=self.heads).unbind(0)
        out = rearrange(self.attend(q, k, v, stride=self.attend.stride or width), "b h n d -> b n (h d)")
        return rearrange(self.proj_drop(self.proj(out)), "b (y x) c -> b c y x", y=height)
