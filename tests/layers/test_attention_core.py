"""The attention core: both paths against a loop of eq. 11.2-11.4, masks, causality, bias, and the recorder."""

from __future__ import annotations

import math

import pytest
import torch

import visionattn.layers.attention_core as core
from visionattn.layers.attention_core import (
    CPU_EXPLICIT_MAX_PAIRS,
    Attention,
    AttentionRecorder,
    attention,
    attention_weights,
    causal_mask,
    resolve_impl,
)
from visionattn.layers.transformer import DropPath, TransformerBlock
from visionattn.registry import create_attn


def _qkv(b=2, h=3, n=5, m=None, d=4, dv=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    m = n if m is None else m
    return (torch.randn(b, h, n, d, generator=g, dtype=dtype), torch.randn(b, h, m, d, generator=g, dtype=dtype),
            torch.randn(b, h, m, dv, generator=g, dtype=dtype))


def _loop(q, k, v, bias=None, allowed=None, scale=None):
    """Eq. 11.2-11.4 one query at a time: logits, softmax over the allowed keys, weighted sum of values."""
    b, h, n, d = q.shape
    scale = d ** -0.5 if scale is None else scale
    out = torch.zeros(b, h, n, v.shape[-1], dtype=q.dtype)
    for bi in range(b):
        for hi in range(h):
            for i in range(n):
                logits = [float(q[bi, hi, i] @ k[bi, hi, j]) * scale for j in range(k.shape[2])]
                if bias is not None:
                    logits = [x + float(bias.expand(b, h, n, k.shape[2])[bi, hi, i, j]) for j, x in enumerate(logits)]
                keys = [j for j in range(k.shape[2]) if allowed is None or allowed[i, j]]
                if not keys:
                    continue
                top = max(logits[j] for j in keys)
                e = {j: math.exp(logits[j] - top) for j in keys}
                total = sum(e.values())
                out[bi, hi, i] = sum(e[j] / total * v[bi, hi, j] for j in keys)
    return out


@pytest.mark.parametrize("impl", ["fused", "explicit"])
def test_both_paths_match_the_loop(impl):
    q, k, v = _qkv(m=7)
    torch.testing.assert_close(attention(q, k, v, impl=impl), _loop(q, k, v))
    torch.testing.assert_close(attention(q, k, v, scale=0.3, impl=impl), _loop(q, k, v, scale=0.3))


@pytest.mark.parametrize("impl", ["fused", "explicit"])
def test_bias_mask_and_causality(impl):
    q, k, v = _qkv(n=6)
    g = torch.Generator().manual_seed(3)
    bias = torch.randn(1, 3, 6, 6, generator=g, dtype=torch.float64)
    mask = torch.rand(6, 6, generator=g) > 0.4
    mask[:, 0] = True
    tri = causal_mask(6, 6)
    torch.testing.assert_close(attention(q, k, v, bias=bias, impl=impl), _loop(q, k, v, bias))
    torch.testing.assert_close(attention(q, k, v, mask=mask, impl=impl), _loop(q, k, v, allowed=mask))
    torch.testing.assert_close(attention(q, k, v, causal=True, impl=impl), _loop(q, k, v, allowed=tri))
    torch.testing.assert_close(attention(q, k, v, bias, mask, causal=True, impl=impl),
                               _loop(q, k, v, bias, allowed=mask & tri))


def test_causal_output_ignores_later_tokens():
    q, k, v = _qkv(n=8, dtype=torch.float32)
    out = attention(q, k, v, causal=True)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 5:] += 10.0
    v2[:, :, 5:] -= 3.0
    later = attention(q, k2, v2, causal=True)
    torch.testing.assert_close(out[:, :, :5], later[:, :, :5])
    assert not torch.allclose(out[:, :, 5:], later[:, :, 5:])


@pytest.mark.parametrize("impl", ["fused", "explicit"])
def test_a_query_with_no_key_gets_zero(impl):
    q, k, v = _qkv(n=4)
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[2] = False
    out = attention(q, k, v, mask=mask, impl=impl)
    assert torch.isfinite(out).all()
    assert (out[:, :, 2] == 0).all()
    torch.testing.assert_close(out, _loop(q, k, v, allowed=mask))
    assert (attention_weights(q, k, mask=mask)[:, :, 2] == 0).all()


def test_masked_weights_on_the_meta_device_have_their_shape():
    """The cost tables build and run models on the meta device, where no mask can be tested for empty rows."""
    q, k = (torch.empty(1, 2, 4, 3, device="meta") for _ in range(2))
    weights = attention_weights(q, k, mask=torch.ones(4, 4, dtype=torch.bool, device="meta"))
    assert weights.is_meta and weights.shape == (1, 2, 4, 4)
    with torch.device("meta"):
        halo = create_attn("halo", 8, block_size=2, halo_size=1, heads=2, impl="explicit")
        assert halo(torch.empty(1, 8, 6, 6)).shape == (1, 8, 6, 6)


def test_weights_rows_sum_to_one_in_bf16():
    q, k, _ = _qkv(n=64, d=16, dtype=torch.bfloat16)
    w = attention_weights(q * 4, k * 4)
    assert w.dtype == torch.bfloat16
    torch.testing.assert_close(w.float().sum(-1), torch.ones(w.shape[:-1]), atol=1e-2, rtol=0)


def test_a_mask_folded_into_a_smaller_bias_gives_the_same_values_and_finite_gradients():
    """The explicit path folds the mask into a bias smaller than the logits (one pass over them fewer); with a
    bias as large as the logits it does not: both give the same outputs and gradients, a row with no key
    included (0, and no NaN in any gradient)."""
    q, k, v = (t.float().requires_grad_() for t in _qkv(n=5, seed=7))
    bias = torch.randn(1, 3, 5, 5, generator=torch.Generator().manual_seed(8)).requires_grad_()
    mask = torch.rand(5, 5, generator=torch.Generator().manual_seed(9)) > 0.5
    mask[:, 1], mask[3] = True, False  # every row but row 3 has a key
    results = []
    for b in (bias, bias.expand(2, 3, 5, 5)):  # folded, and not (the same numel as the logits)
        out = attention(q, k, v, bias=b, mask=mask, impl="explicit")
        results.append((out, *torch.autograd.grad(out.square().sum(), (q, k, v, bias))))
    for a, b in zip(*results):
        assert torch.isfinite(a).all() and torch.isfinite(b).all()
        torch.testing.assert_close(a, b)
    assert (results[0][0][:, :, 3] == 0).all()
    direct = _loop(*(t.detach().double() for t in (q, k, v, bias)), allowed=mask)
    torch.testing.assert_close(results[0][0], direct.float())


def test_explicit_path_under_autocast_matches_the_fused_one():
    """Under autocast the product runs in bf16 whatever the inputs, so q and k are not converted first; the
    result stays the fused kernel's to bf16 accuracy."""
    q, k, v = _qkv(n=9, d=8, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = {impl: attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), impl=impl) for impl in ("explicit", "fused")}
    torch.testing.assert_close(out["explicit"].float(), out["fused"].float(), atol=2e-2, rtol=2e-2)


def test_fused_and_explicit_gradients_agree():
    q, k, v = (t.float().requires_grad_() for t in _qkv(n=9, seed=5))
    bias = torch.randn(1, 3, 9, 9)
    grads = []
    for impl in ("fused", "explicit"):
        out = attention(q, k, v, bias=bias, causal=True, impl=impl)
        grads.append(torch.autograd.grad(out.square().sum(), (q, k, v)))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_bad_inputs_are_named():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="q must be 4-D"):
        attention(q[0], k, v)
    with pytest.raises(ValueError, match="do not fit"):
        attention(q, k[..., :2], v)
    with pytest.raises(ValueError, match="mask must be boolean"):
        attention(q, k, v, mask=torch.ones(5, 5))
    with pytest.raises(ValueError, match="impl: got 'flash'"):
        attention(q, k, v, impl="flash")
    with pytest.raises(ValueError, match="kernel='linear' has no attention dropout"):
        Attention("linear", dropout=0.1)
    with pytest.raises(ValueError, match="takes no bias or mask"):
        Attention("linear")(q, k, v, bias=torch.zeros(5, 5, dtype=torch.float64))


def test_dropout_only_while_training():
    q, k, v = _qkv(dtype=torch.float32)
    step = Attention(dropout=0.5).eval()
    torch.testing.assert_close(step(q, k, v), attention(q, k, v))
    torch.manual_seed(0)
    assert not torch.allclose(step.train()(q, k, v), attention(q, k, v))


@pytest.mark.parametrize("impl", ["auto", "fused", "explicit"])
def test_recorder_gets_the_weights_on_every_path(impl):
    torch.manual_seed(0)
    block = TransformerBlock(16, 4, impl=impl).eval()
    x = torch.randn(2, 7, 16)
    plain = block(x)
    with AttentionRecorder(block) as rec:
        recorded_out = block(x)
    torch.testing.assert_close(recorded_out, plain)
    (weights,) = rec.weights["attn.attend"]
    assert weights.shape == (2, 4, 7, 7)
    # the recorded matrix applied to V gives the layer's attention output
    q, k, v = block.attn.qkv(block.norm1(x)).unflatten(-1, (3, 4, 4)).permute(2, 0, 3, 1, 4)
    torch.testing.assert_close(weights @ v, attention(q, k, v), atol=1e-5, rtol=1e-4)
    assert block.attn.attend.recorder is None  # detached on exit
    block(x)
    assert len(rec.weights["attn.attend"]) == 1


@pytest.mark.parametrize(("n_q", "n_k", "want"), [(49, 49, "explicit"), (100, 100, "explicit"),
                                                   (64, 196, "fused"), (197, 197, "fused"), (1, 10_000, "explicit"),
                                                   (1, 10_001, "fused")])
def test_auto_takes_the_explicit_path_only_for_short_cpu_sequences(n_q, n_k, want, monkeypatch):
    q, k = torch.zeros(1, 1, n_q, 4), torch.zeros(1, 1, n_k, 4)
    assert resolve_impl("auto", q, k) == want
    assert (n_q * n_k <= CPU_EXPLICIT_MAX_PAIRS) == (want == "explicit")
    for impl in ("fused", "explicit"):  # an explicit choice is kept
        assert resolve_impl(impl, q, k) == impl
    # and attention() follows it: the fused kernel is called exactly when the rule says fused
    calls = []
    fused = core.F.scaled_dot_product_attention
    monkeypatch.setattr(core.F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or fused(*a, **kw))
    attention(q, k, torch.zeros(1, 1, n_k, 4))
    assert len(calls) == (want == "fused")


def test_auto_gives_the_fused_result_on_either_side_of_the_threshold():
    g = torch.Generator().manual_seed(0)
    for n in (50, 120):  # 2500 pairs (explicit) and 14400 (fused)
        q, k, v = (torch.randn(2, 3, n, 8, generator=g, requires_grad=True) for _ in range(3))
        outs, grads = [], []
        for impl in ("auto", "fused"):
            out = attention(q, k, v, impl=impl)
            outs.append(out)
            grads.append(torch.autograd.grad(out.square().sum(), (q, k, v)))
        torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-4)
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_recorder_errors():
    block = TransformerBlock(8, 2)
    with pytest.raises(ValueError, match="no attention step"):
        AttentionRecorder(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="did you mean 'attn.attend'"):
        AttentionRecorder(block, names=["attn.atend"])
    with AttentionRecorder(block):
        with pytest.raises(ValueError, match="already attached"):
            AttentionRecorder(block).__enter__()


def test_drop_path_is_per_sample_and_rescaled():
    x = torch.ones(400, 3)
    assert torch.equal(DropPath(0.25).eval()(x), x)
    torch.manual_seed(0)
    out = DropPath(0.25).train()(x)
    rows = out[:, 0]
    torch.testing.assert_close(rows.unique(), torch.tensor([0.0, 1 / 0.75]))
    assert (out == out[:, :1]).all()  # a whole sample is kept or dropped
    assert 0.15 < (rows == 0).float().mean() < 0.35
