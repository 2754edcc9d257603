"""Attention over a union of key sets by log-sum-exps: attention_with_lse and merge_attention against one dense
attention, merged_attention (both of its paths) on hand-built factors against dense attention with the union's
mask, forward and gradients, a second-factor row without a key included, its usage errors, and the mask cache."""

from __future__ import annotations

import math

import pytest
import torch

from visionattn.errors import UsageError
from visionattn.layers.attention_core import attention
from visionattn.layers.attention_merge import (
    AttentionPart,
    attention_with_lse,
    merge_attention,
    merged_attention,
)
from visionattn.layers.helpers import cache_unless_compiling

N, M, L, D = 2, 3, 4, 5
ALL = slice(None)


def _qkv(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(N, M, L, D, generator=g).to(dtype).requires_grad_() for _ in range(3)]


def _sequence(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], 1, -1, x.shape[-1])  # (N, m, l, .) -> (N, 1, m l, .)


def _blocks(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1, L, x.shape[-1])


FUTURE_ROWS = slice(1, 3)  # the second factor's row blocks


def _future_mask() -> torch.Tensor:
    """The second factor's keys for rows 4..11: later keys j > i at an odd distance; row 11 has none."""
    i = torch.arange(FUTURE_ROWS.start * L, FUTURE_ROWS.stop * L)[:, None]
    j = torch.arange(M * L)[None, :]
    return (j > i) & ((j - i) % 2 == 1)


def _build(q, k, v, stop=M, second=(FUTURE_ROWS,)):
    """First factor: causal attention over the whole sequence; second: the future keys of ``_future_mask``."""
    whole = (((ALL,), _blocks),)
    first = AttentionPart(0, stop, _sequence(k), _sequence(v), None, True, _sequence, _blocks, whole)
    return first, [AttentionPart(r.start, r.stop, _sequence(k), _sequence(v), _future_mask(), False, _sequence, _blocks,
                                 whole) for r in second]


def _union() -> torch.Tensor:
    union = torch.ones(M * L, M * L, dtype=torch.bool).tril()
    union[FUTURE_ROWS.start * L : FUTURE_ROWS.stop * L] |= _future_mask()
    return union


@pytest.mark.parametrize("impl", ["fused", "explicit"])
def test_merged_attention_equals_dense_attention_with_the_union(impl):
    q, k, v = _qkv()
    assert not _future_mask()[-1].any()  # a second-factor row without a key
    grad = torch.randn(N, M, L, D, generator=torch.Generator().manual_seed(1))
    merged = merged_attention(q, k, v, _build, impl=impl)
    dense = _blocks(attention(*(_sequence(t) for t in (q, k, v)), mask=_union()))
    torch.testing.assert_close(merged, dense, atol=2e-6, rtol=1e-5)
    for got, want in zip(torch.autograd.grad(merged, (q, k, v), grad), torch.autograd.grad(dense, (q, k, v), grad)):
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)


def test_merged_attention_in_bf16_is_close_to_fp32():
    q, k, v = _qkv()
    low = [t.detach().bfloat16().requires_grad_() for t in (q, k, v)]
    out = merged_attention(*low, _build)
    assert out.dtype == torch.bfloat16
    dense = _blocks(attention(*(_sequence(t) for t in (q, k, v)), mask=_union()))
    torch.testing.assert_close(out.float(), dense, atol=3e-2, rtol=3e-2)
    grads = torch.autograd.grad(out.float().square().sum(), low)
    for got, want in zip(grads, torch.autograd.grad(dense.square().sum(), (q, k, v))):
        assert (got.float() - want).norm() / want.norm() < 3e-2


def test_the_fused_merge_passes_gradcheck():
    q, k, v = (t.detach().double().requires_grad_() for t in _qkv())
    torch.autograd.gradcheck(lambda *t: merged_attention(*t, _build, impl="fused"), (q, k, v))


def test_merged_attention_refuses_what_it_cannot_do():
    q, k, v = _qkv()
    with pytest.raises(UsageError, match="no dropout"):
        merged_attention(q, k, v, _build, dropout_p=0.1, impl="fused")
    with pytest.raises(UsageError, match="one part over all 3 row blocks"):
        merged_attention(q, k, v, lambda *t: _build(*t, stop=2))
    with pytest.raises(UsageError, match="disjoint row blocks"):
        merged_attention(q, k, v, lambda *t: _build(*t, second=(slice(1, 3), slice(2, 3))), impl="explicit")


def test_attention_with_lse_and_merge_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 4, generator=g, dtype=torch.float64).requires_grad_() for _ in range(3))
    mask = torch.rand(7, 7, generator=torch.Generator().manual_seed(2)) < 0.5
    mask[3] = False  # a row with no key
    out, lse = attention_with_lse(q, k, v, mask=mask)
    torch.testing.assert_close(out, attention(q, k, v, mask=mask))
    logits = (q @ k.transpose(-2, -1) / 2).masked_fill(~mask, -math.inf)
    torch.testing.assert_close(lse, logits.logsumexp(-1))
    assert (lse[:, :, 3] == -math.inf).all() and (out[:, :, 3] == 0).all()
    grads = torch.autograd.grad(out.sum() + lse[:, :, torch.arange(7) != 3].sum(), (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads)  # no NaN from the empty row
    union = mask | torch.eye(7, dtype=torch.bool)
    left = torch.zeros_like(union)
    left[:, :4] = union[:, :4]
    parts = [attention_with_lse(q, k, v, mask=part) for part in (left, union & ~left)]
    merged = merge_attention(parts)
    torch.testing.assert_close(merged, attention(q, k, v, mask=union))
    grads = torch.autograd.grad(merged.square().sum(), (q, k, v))
    want = torch.autograd.grad(attention(q, k, v, mask=union).square().sum(), (q, k, v))
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w)


def test_cache_unless_compiling(monkeypatch):
    calls = []

    @cache_unless_compiling(2)
    def make(n: int) -> torch.Tensor:
        calls.append(n)
        return torch.zeros(n)

    assert make(3) is make(3) and calls == [3]  # cached: one tensor, built once
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert make(3) is not make(3) and calls == [3, 3, 3]  # traced by torch.compile: built every call
