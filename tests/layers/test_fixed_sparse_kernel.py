"""The fixed sparse attention kernel (kernels/fixed_sparse_attention.cpp): its three key sets against a loop over
the pattern's definition (forward and gradients, float64 and float32, c = 1, c = l, l = 1, one block, dv != d),
both routes for its products (the linked BLAS and at::mm_out), several threads and the order of their chunks,
gradcheck, opcheck, its FLOP count, bf16, and that ``sparse_attention`` falls back to the merged pieces without
it."""

from __future__ import annotations

import itertools
import math
from contextlib import contextmanager

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import visionattn.layers.sparse_attention as sa
from visionattn.kernels.fixed_sparse_attention import (
    _fwd,
    fixed_kernel_available,
    fixed_pairs,
    fixed_sparse_attention,
    use_blas,
)
from visionattn.layers.sparse_attention import sparse_attention

pytestmark = pytest.mark.skipif(not fixed_kernel_available(), reason="the C++ kernel cannot be built here")

# (name, summary c -> kernel's c, own): the merged head A(1) u A(2); A(1) alone; A(2) alone
KEY_SETS = {"merged": lambda c, span: (c, 0), "own block": lambda c, span: (0, 0),
            "summaries": lambda c, span: (c, span - c)}


def _allowed(key_set: str, i: int, j: int, span: int, c: int) -> bool:
    """The pattern's definition (sec. 4.3), one pair at a time."""
    own = j <= i and j // span == i // span
    summary = j <= i and j % span >= span - c
    return {"merged": own or summary, "own block": own, "summaries": summary}[key_set]


def _loop(q, k, v, key_set, span, c):
    """softmax over the allowed keys of q_i . k_j / sqrt(d), summed over v_j; a row with no key gives 0."""
    out = torch.zeros(*q.shape[:2], v.shape[-1], dtype=q.dtype)
    for s, i in itertools.product(range(q.shape[0]), range(q.shape[1])):
        keys = [j for j in range(q.shape[1]) if _allowed(key_set, i, j, span, c)]
        if keys:
            weights = torch.softmax(k[s, keys] @ q[s, i] / math.sqrt(q.shape[-1]), 0)
            out[s, i] = weights @ v[s, keys]
    return out


def _inputs(n_seq, n, d, dv, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n_seq, n, width, generator=g, dtype=dtype).requires_grad_() for width in (d, d, dv)]


def _run(key_set, q, k, v, span, c):
    return fixed_sparse_attention(q, k, v, span, *KEY_SETS[key_set](c, span), q.shape[-1] ** -0.5)


def _with_grads(fn, inputs, seed=1):
    out = fn(*inputs)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return (out, *torch.autograd.grad(out, inputs, grad))


# (sequences, blocks m, span, c, d, dv)
SHAPES = [(2, 4, 4, 1, 3, 3), (1, 3, 5, 2, 4, 6), (2, 1, 4, 2, 3, 3), (1, 5, 3, 3, 2, 2), (3, 4, 1, 1, 2, 3)]


@pytest.mark.parametrize("key_set", list(KEY_SETS))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kernel_is_the_pattern_forward_and_gradients(key_set, shape, dtype):
    n_seq, m, span, c, d, dv = shape
    inputs = _inputs(n_seq, m * span, d, dv, dtype)
    got = _with_grads(lambda *t: _run(key_set, *t, span, c), inputs)
    want = _with_grads(lambda *t: _loop(*t, key_set, span, c), inputs)
    tol = {"atol": 1e-10, "rtol": 1e-9} if dtype == torch.float64 else {"atol": 3e-6, "rtol": 1e-5}
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tol)


def test_rows_without_a_key_are_zero_with_zero_gradients():
    """A(2) alone: the first l - c queries of block 0 see no summary yet (the attention core's rule: output 0)."""
    q, k, v = _inputs(1, 8, 2, 2)
    out, dq, dk, dv = _with_grads(lambda *t: _run("summaries", *t, 4, 1), (q, k, v))
    assert out[0, :3].abs().max() == 0 and dq[0, :3].abs().max() == 0
    assert out[0, 3].abs().max() > 0


@contextmanager
def _blas(on: bool):
    before = use_blas(on)
    try:
        yield
    finally:
        use_blas(before)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_both_routes_for_the_products_agree(dtype):
    inputs = _inputs(2, 20, 5, 3, dtype)
    results = []
    for on in (True, False):
        with _blas(on):
            results.append(_with_grads(lambda *t: _run("merged", *t, 5, 2), inputs))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@contextmanager
def _threads(count: int):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("n_seq", [1, 2, 5])
def test_threads_split_the_blocks_and_agree_with_one(n_seq):
    """More chunks than sequences (one sequence's summaries summed by several chunks), and the reverse; a repeated
    call with the same threads gives the same bits (the chunks' sums are added in a fixed order)."""
    inputs = _inputs(n_seq, 7 * 4, 3, 2, torch.float32)
    with _threads(1):
        one = _with_grads(lambda *t: _run("merged", *t, 4, 2), inputs)
    with _threads(3):
        three = _with_grads(lambda *t: _run("merged", *t, 4, 2), inputs)
        again = _with_grads(lambda *t: _run("merged", *t, 4, 2), inputs)
    for a, b, c in zip(one, three, again):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)
        assert torch.equal(b, c)


@pytest.mark.parametrize("key_set", list(KEY_SETS))
def test_gradcheck(key_set):
    inputs = _inputs(2, 9, 2, 3)
    torch.autograd.gradcheck(lambda *t: _run(key_set, *t, 3, 1), inputs)


def test_ops_pass_opcheck():
    q, k, v = _inputs(2, 12, 3, 2, torch.float32)
    torch.library.opcheck(_fwd, (q, k, v, 4, 2, 0, 0.5))


def test_flop_count_is_the_pairs_it_computes():
    n_seq, m, span, c, d, dv = 3, 5, 4, 2, 3, 6
    q, k, v = _inputs(n_seq, m * span, d, dv, torch.float32)
    pairs = sum(span * (b * c + span) for b in range(m))  # whole rows of each block's logits
    assert fixed_pairs(m * span, span, c, 0) == pairs
    with FlopCounterMode(display=False) as counter:
        _run("merged", q, k, v, span, c).sum().backward()
    counts = counter.get_flop_counts()["Global"]
    assert counts[torch.ops.visionattn.fixed_sparse_attention_fwd] == n_seq * pairs * 2 * (d + dv)
    assert counts[torch.ops.visionattn.fixed_sparse_attention_bwd] == n_seq * pairs * 2 * (3 * d + 2 * dv)


def test_bf16_is_computed_in_float32():
    q, k, v = _inputs(2, 16, 4, 4, torch.float32)
    low = [t.detach().bfloat16() for t in (q, k, v)]
    out = _run("merged", *low, 4, 1)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), _run("merged", *(t.float() for t in low), 4, 1).detach(),
                               atol=1e-2, rtol=1e-2)


FALLBACK = [("merged", 0, 13, 4, 2), ("merged", 0, 100, 3, 2), ("interleaved", 0, 13, 4, 2),
            ("interleaved", 1, 13, 4, 3), ("per_head", 0, 12, 4, 1)]


@pytest.mark.parametrize("combine,factor,n,stride,c", FALLBACK)
def test_sparse_attention_takes_the_kernel_and_falls_back_to_the_pieces(combine, factor, n, stride, c, monkeypatch):
    """The fixed pattern on the CPU goes to the kernel; without it (another device, no compiler), to the pieces
    and their log-sum-exp merge: both equal the dense oracle."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 3, n, 4, generator=g).requires_grad_() for _ in range(3))
    calls = []
    monkeypatch.setattr(sa, "fixed_sparse_attention", lambda *a: calls.append(1) or fixed_sparse_attention(*a))
    dense = _with_grads(lambda *t: sparse_attention(*t, "fixed", stride, c, combine, factor, impl="dense"), (q, k, v))
    kernel = _with_grads(lambda *t: sparse_attention(*t, "fixed", stride, c, combine, factor), (q, k, v))
    assert calls
    monkeypatch.setattr(sa, "fixed_kernel_available", lambda: False)
    calls.clear()
    pieces = _with_grads(lambda *t: sparse_attention(*t, "fixed", stride, c, combine, factor), (q, k, v))
    assert not calls
    for a, b, want in zip(kernel, pieces, dense):
        torch.testing.assert_close(a, want, atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(b, want, atol=2e-6, rtol=1e-5)


def test_dropout_and_the_explicit_path_do_not_take_the_kernel(monkeypatch):
    calls = []
    monkeypatch.setattr(sa, "fixed_sparse_attention", lambda *a: calls.append(1) or fixed_sparse_attention(*a))
    q, k, v = (torch.randn(1, 2, 12, 4) for _ in range(3))
    sparse_attention(q, k, v, "fixed", 4, 1, impl="explicit")
    sparse_attention(q, k, v, "fixed", 4, 1, dropout_p=0.5)
    assert not calls
    sparse_attention(q, k, v, "fixed", 4, 1, impl="fused")
    assert calls
