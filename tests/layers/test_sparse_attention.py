"""Sparse Transformer attention (Child et al. 2019): the patterns against their definitions written as loops and
by hand, the combinations, the fast path against the dense oracle (forward and gradients, fp32 and bf16, n a
multiple of the stride or not, the merged head at the edges: l = 1, c = l, n < l, many summary groups), that the
fast path forms no n x n tensor and the merged head's forward copies no full-size tensor, the registered 2D layer
against a direct computation, and usage errors. The log-sum-exp merge itself: test_attention_merge.py."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from visionattn.errors import UsageError
from visionattn.layers.attention_core import AttentionRecorder
from visionattn.layers.sparse_attention import SparseAttention, SparseSelfAttention2d, sparse_attention
from visionattn.layers.sparse_patterns import combined_mask, heads_on_first, sparse_masks
from visionattn.registry import create_attn


def _definition(pattern: str, n: int, stride: int, c: int | None) -> list[list[set[int]]]:
    """A(1)_i and A(2)_i as sets, from the paper's sec. 4.3 one (i, j) at a time."""
    first, second = [], []
    for i in range(n):
        earlier = range(i + 1)
        if pattern == "strided":
            first.append({j for j in earlier if i - j < stride})  # the previous l positions, i included
            second.append({j for j in earlier if (i - j) % stride == 0})  # every l-th
        else:
            first.append({j for j in earlier if j // stride == i // stride})  # its block
            second.append({j for j in earlier if j % stride in range(stride - c, stride)})  # the last c of every block
    return [first, second]


def _as_mask(sets: list[set[int]], n: int) -> torch.Tensor:
    return torch.tensor([[j in s for j in range(n)] for s in sets])


SIZES = list(itertools.product((1, 7, 12, 13), (1, 3, 4, 5)))  # (n, l)
MASK_CASES = [("strided", n, stride, None) for n, stride in SIZES] + [
    ("fixed", n, stride, c) for n, stride in SIZES for c in sorted({1, (stride + 1) // 2, stride})]


@pytest.mark.parametrize("pattern,n,stride,c", MASK_CASES)
def test_masks_are_the_definition(pattern, n, stride, c):
    masks = sparse_masks(pattern, n, stride, c)
    assert masks.shape == (2, n, n) and masks.dtype == torch.bool
    for got, sets in zip(masks, _definition(pattern, n, stride, c)):
        assert torch.equal(got, _as_mask(sets, n))


def _rows(text: str) -> torch.Tensor:
    return torch.tensor([[ch == "x" for ch in row] for row in text.split()])


def test_hand_written_masks_n9_stride3():
    strided_local = _rows("x........ xx....... xxx...... .xxx..... ..xxx.... ...xxx... ....xxx.. .....xxx. ......xxx")
    strided_every = _rows("x........ .x....... ..x...... x..x..... .x..x.... ..x..x... x..x..x.. .x..x..x. ..x..x..x")
    fixed_block = _rows("x........ xx....... xxx...... ...x..... ...xx.... ...xxx... ......x.. ......xx. ......xxx")
    fixed_summary = _rows("......... ......... ..x...... ..x...... ..x...... ..x..x... ..x..x... ..x..x... "
                          "..x..x..x")
    torch.testing.assert_close(sparse_masks("strided", 9, 3), torch.stack([strided_local, strided_every]))
    torch.testing.assert_close(sparse_masks("fixed", 9, 3, 1), torch.stack([fixed_block, fixed_summary]))


def test_strided_on_a_raster_image_is_the_last_row_and_the_column():
    height, width = 4, 5
    local, column = sparse_masks("strided", height * width, width)
    i = 3 * width + 2  # pixel (3, 2)
    assert set(column[i].nonzero().flatten().tolist()) == {y * width + 2 for y in range(4)}
    assert set(local[i].nonzero().flatten().tolist()) == set(range(i - width + 1, i + 1))  # the last W pixels


@pytest.mark.parametrize("pattern,n,stride,c", [("strided", 13, 4, None), ("fixed", 13, 4, 1), ("fixed", 13, 4, 3),
                                           ("fixed", 12, 4, 4)])
def test_only_the_fixed_summary_factor_has_rows_without_a_key(pattern, n, stride, c):
    first, second = sparse_masks(pattern, n, stride, c)
    assert first.any(-1).all() and (first | second).any(-1).all()
    assert first.diagonal().all()  # every query attends itself, position 0 included
    empty = (~second.any(-1)).nonzero().flatten().tolist()
    assert empty == ([] if pattern == "strided" else list(range(stride - c)))


def test_combinations_and_the_odd_head():
    masks = sparse_masks("fixed", 10, 4, 2)
    assert torch.equal(combined_mask("fixed", 10, 4, 2, "interleaved", 1), masks[1:])
    assert torch.equal(combined_mask("fixed", 10, 4, 2, "merged"), (masks[0] | masks[1])[None])
    per_head = SparseAttention("fixed", 4, 2, combine="per_head").mask(10, 3)
    assert per_head.shape == (3, 10, 10) and heads_on_first(3) == 2
    assert torch.equal(per_head, torch.stack([masks[0], masks[0], masks[1]]))  # the odd head goes to A(1)
    assert torch.equal(SparseAttention("strided", 4).mask(10), combined_mask("strided", 10, 4, None, "merged"))
    assert torch.equal(SparseAttention("fixed", 8).mask(16), combined_mask("fixed", 16, 8, 1, "merged"))  # c = l / 8


def _qkv(b=2, h=3, n=13, d=4, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g).to(dtype).requires_grad_() for _ in range(3)]


def _loop_attention(q, k, v, allowed):
    """softmax(q_i . k_j / sqrt(d)) over the keys j allowed for query i, summed over v_j (eq. 2 of the paper)."""
    out = torch.zeros_like(v)
    for hi, i in itertools.product(range(q.shape[1]), range(q.shape[2])):
        keys = allowed[hi if allowed.shape[0] > 1 else 0, i].nonzero().flatten()
        if len(keys):
            logits = (q[:, hi, i, None, :] * k[:, hi, keys]).sum(-1) / math.sqrt(q.shape[-1])
            e = torch.exp(logits - logits.max(-1, keepdim=True).values)
            out[:, hi, i] = (e[..., None] * v[:, hi, keys]).sum(1) / e.sum(-1, keepdim=True)
    return out


COMBOS = [("interleaved", 0), ("interleaved", 1), ("merged", 0), ("per_head", 0)]
FAST = [(p, c, f, n, impl) for p in ("strided", "fixed") for (c, f) in COMBOS for n in (12, 13)
        for impl in ("explicit", "fused", "auto")]


@pytest.mark.parametrize("pattern,combine,factor,n,impl", FAST)
def test_fast_path_equals_dense_forward_and_gradients(pattern, combine, factor, n, impl):
    summary = 2 if pattern == "fixed" else None
    q, k, v = _qkv(n=n)
    grad = torch.randn(2, 3, n, 4, generator=torch.Generator().manual_seed(1))
    results = []
    for path in (impl, "dense"):
        out = sparse_attention(q, k, v, pattern, 4, summary, combine, factor, impl=path)
        results.append((out, *torch.autograd.grad(out, (q, k, v), grad)))
    for fast, dense in zip(*results):
        torch.testing.assert_close(fast, dense, atol=2e-6, rtol=1e-5)
    mask = combined_mask(pattern, n, 4, summary, combine, factor, 3)
    torch.testing.assert_close(results[1][0], _loop_attention(q.detach(), k.detach(), v.detach(), mask),
                               atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("pattern,combine", [("strided", "merged"), ("fixed", "merged"), ("strided", "per_head"),
                                             ("fixed", "interleaved")])
def test_fast_path_in_bf16_is_close_to_fp32_dense(pattern, combine):
    summary = 3 if pattern == "fixed" else None
    q, k, v = _qkv(n=21, d=8)
    dense = sparse_attention(q, k, v, pattern, 5, summary, combine, impl="dense")
    low = [t.detach().bfloat16().requires_grad_() for t in (q, k, v)]
    out = sparse_attention(*low, pattern, 5, summary, combine)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), dense, atol=3e-2, rtol=3e-2)
    grads = torch.autograd.grad(out.float().square().sum(), low)
    dense_grads = torch.autograd.grad(dense.square().sum(), (q, k, v))
    for g, ref in zip(grads, dense_grads):
        assert torch.isfinite(g).all()
        assert (g.float() - ref).norm() / ref.norm() < 3e-2


# the merged head at the edges: l = 1, c = l, n < l (one block), n = 1, odd n, and m - 1 > 8 summary groups of
# unequal sizes (n = 100, l = 3: m = 34)
EDGES = [("strided", 7, 1, None), ("strided", 5, 8, None), ("strided", 1, 3, None), ("strided", 33, 5, None),
         ("fixed", 10, 1, 1), ("fixed", 9, 3, 3), ("fixed", 5, 8, 2), ("fixed", 11, 4, 1), ("fixed", 100, 3, 2),
         ("fixed", 1, 2, 1)]


@pytest.mark.parametrize("pattern,n,stride,c", EDGES)
@pytest.mark.parametrize("impl", ["fused", "explicit"])
def test_merged_head_at_the_edges_equals_dense(pattern, n, stride, c, impl):
    q, k, v = _qkv(b=1, h=2, n=n)
    grad = torch.randn(1, 2, n, 4, generator=torch.Generator().manual_seed(1))
    results = []
    for path in (impl, "dense"):
        out = sparse_attention(q, k, v, pattern, stride, c, "merged", impl=path)
        results.append((out, *torch.autograd.grad(out, (q, k, v), grad)))
    for fast, dense in zip(*results):
        torch.testing.assert_close(fast, dense, atol=2e-6, rtol=1e-5)


class _LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any operation returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("pattern,combine", [(p, c) for p in ("strided", "fixed") for c in ("merged", "per_head")])
def test_the_fast_path_forms_no_n_by_n_tensor(pattern, combine):
    n, stride = 1024, 32
    q, k, v = _qkv(b=1, h=2, n=n, d=8)
    largest = {}
    for impl in ("explicit", "auto", "dense"):
        with _LargestTensor() as mode:
            out = sparse_attention(q, k, v, pattern, stride, None if pattern == "strided" else 4, combine, impl=impl)
            out.sum().backward()
        largest[impl] = mode.largest
    assert largest["dense"] >= n * n  # the oracle forms at least the (n, n) mask: the check can fail
    assert largest["explicit"] <= n * n // 3  # the fast path's biggest piece: the summaries' 2 n m c logits
    assert largest["auto"] <= n * n // 3


@pytest.mark.parametrize("pattern", ["strided", "fixed"])
def test_the_flash_merge_passes_gradcheck(pattern):
    q, k, v = (t.detach().double().requires_grad_() for t in _qkv(b=1, h=2, n=11, d=3))
    summary = 2 if pattern == "fixed" else None
    torch.autograd.gradcheck(lambda *t: sparse_attention(*t, pattern, 3, summary, "merged", impl="fused"), (q, k, v))


class _Copies(TorchDispatchMode):
    """Records the element count of every tensor an operation copies into (copy_, clone, contiguous)."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.copy_, torch.ops.aten.clone):
            self.sizes.append(args[0].numel())
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("pattern", ["strided", "fixed"])
def test_the_merged_heads_forward_copies_no_full_size_tensor(pattern):
    """The parts take views of q, k, v as they are (blocks, columns, windows), and the first factor's output
    becomes the merged one in place: only the fixed pattern's gathered summaries (c of every l) are copied."""
    q, k, v = (t.detach() for t in _qkv(b=1, h=2, n=256, d=8))
    with _Copies() as mode:
        sparse_attention(q, k, v, pattern, 16, None if pattern == "strided" else 2, "merged", impl="fused")
    assert max(mode.sizes, default=0) <= q.numel() * 2 // 16
    with _Copies() as mode:
        q.transpose(2, 3).contiguous()
    assert mode.sizes == [q.numel()]  # a copy is seen: the check can fail


def test_module_dense_and_fast_agree_and_dropout_only_in_training():
    q, k, v = _qkv(n=20)
    step = SparseAttention("strided", 5, combine="merged", dropout=0.3).eval()
    torch.testing.assert_close(step(q, k, v), SparseAttention("strided", 5, impl="dense")(q, k, v), atol=2e-6,
                               rtol=1e-5)
    torch.manual_seed(0)
    assert not torch.allclose(step.train()(q, k, v), step.eval()(q, k, v))


def test_recorder_sees_the_pattern():
    q, k, v = (t.detach() for t in _qkv(n=10))
    step = SparseAttention("fixed", 4, 2, combine="per_head")
    with AttentionRecorder(step) as rec:
        out = step(q, k, v)
    torch.testing.assert_close(out, step(q, k, v), atol=2e-6, rtol=1e-5)
    weights, mask = rec.weights["attend"][0], step.mask(10, 3)
    assert weights.shape == (2, 3, 10, 10)
    assert (weights[:, ~mask] == 0).all()
    torch.testing.assert_close(weights.sum(-1), mask.any(-1).float().expand(2, 3, 10))  # A(2)'s first rows: none


def test_layer_is_qkv_dense_masked_attention_and_proj():
    torch.manual_seed(0)
    layer = SparseSelfAttention2d(8, heads=2, pattern="strided").double()
    x = torch.randn(2, 8, 3, 5, dtype=torch.float64)
    tokens = x.flatten(2).transpose(1, 2)  # raster order
    q, k, v = (layer.qkv(tokens).reshape(2, 15, 3, 2, 4).permute(2, 0, 3, 1, 4))
    allowed = sparse_masks("strided", 15, 5)  # stride = the width
    want = _loop_attention(q, k, v, (allowed[0] | allowed[1])[None])
    want = layer.proj(want.transpose(1, 2).reshape(2, 15, 8)).transpose(1, 2).reshape(2, 8, 3, 5)
    torch.testing.assert_close(layer(x), want)
    later = x.clone()
    later[:, :, 2, 1:] += 1.0  # pixels after (2, 0) in raster order
    torch.testing.assert_close(layer(later).flatten(2)[..., :11], layer(x).flatten(2)[..., :11])


def test_registered_layers():
    fixed = create_attn("sparse_fixed", 16, heads=2)
    assert fixed.attend.pattern == "fixed" and fixed.attend.stride is None
    assert create_attn("sparse_strided", 16, heads=2).attend.pattern == "strided"
    assert fixed(torch.randn(1, 16, 4, 6)).shape == (1, 16, 4, 6)


@pytest.mark.parametrize("kwargs,match", [
    ({"pattern": "strided_"}, "pattern: got 'strided_'.*did you mean 'strided'"),
    ({"stride": 0}, "stride must be an integer >= 1, got 0"),
    ({"stride": 2.5}, "stride must be an integer >= 1"),
    ({"stride": 4, "summary": 2}, "only the 'fixed' pattern has summary"),
    ({"pattern": "fixed", "stride": 4, "summary": 5}, "summary: got 5, needed at most stride = 4"),
    ({"pattern": "fixed", "stride": 4, "summary": 0}, "summary must be an integer >= 1"),
    ({"combine": "merge"}, "combine: got 'merge'.*did you mean 'merged'"),
    ({"factor": 2, "combine": "interleaved"}, "factor: got 2"),
    ({"factor": 1}, "factor: got 1 with combine='merged'"),
    ({"impl": "sparse"}, "impl: got 'sparse'"),
    ({"dropout": 1.0}, "dropout: got 1.0"),
])
def test_usage_errors_at_construction(kwargs, match):
    with pytest.raises(UsageError, match=match):
        SparseAttention(**kwargs)


def test_usage_errors_at_the_call():
    q, k, v = _qkv(n=8)
    with pytest.raises(UsageError, match="built with stride=None"):
        SparseAttention("strided")(q, k, v)
    with pytest.raises(UsageError, match="summary: got 3, needed at most stride = 2"):
        SparseAttention("fixed", summary=3)(q, k, v, stride=2)
    with pytest.raises(UsageError, match="per_head' needs at least 2 heads"):
        SparseAttention("strided", 4, combine="per_head")(q[:, :1], k[:, :1], v[:, :1])
    with pytest.raises(UsageError, match="must share"):
        SparseAttention("strided", 4)(q, k[:, :, :5], v)
    with pytest.raises(UsageError, match="must be 4-D"):
        sparse_attention(q[0], k, v, "strided", 4)
    with pytest.raises(UsageError, match="per_head' needs at least 2 heads"):
        SparseSelfAttention2d(8, heads=1, combine="per_head")
    with pytest.raises(UsageError, match="summary: got 9, needed at most stride = 6"):
        create_attn("sparse_fixed", 8, heads=2, summary=9)(torch.randn(1, 8, 2, 6))
