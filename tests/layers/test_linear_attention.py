"""Linear attention (Katharopoulos et al. 2020, eq. 4-10) against its definition, computed by loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from visionattn.errors import UsageError
from visionattn.layers.attention_core import Attention, AttentionRecorder
from visionattn.layers.linear_attention import EPS, elu_feature_map, linear_attention, linear_attention_weights
from visionattn.layers.self_attention import MultiHeadSelfAttention


def _phi(x: float) -> float:
    """elu(x) + 1 from the definition of elu: x + 1 for x > 0, (e^x - 1) + 1 otherwise."""
    return x + 1.0 if x > 0 else math.exp(x)


def _loop_reference(q, k, v, causal: bool) -> torch.Tensor:
    """V'_i = sum_j phi(q_i).phi(k_j) v_j / (sum_j phi(q_i).phi(k_j) + eps), j over all keys or j <= i."""
    b, h, nq, d = q.shape
    nk, dv = k.shape[2], v.shape[3]
    out = torch.zeros(b, h, nq, dv, dtype=torch.float64)
    for bi in range(b):
        for hi in range(h):
            for i in range(nq):
                num, den = [0.0] * dv, 0.0
                for j in range(i + 1 if causal else nk):
                    s = sum(_phi(float(q[bi, hi, i, c])) * _phi(float(k[bi, hi, j, c])) for c in range(d))
                    den += s
                    for e in range(dv):
                        num[e] += s * float(v[bi, hi, j, e])
                for e in range(dv):
                    out[bi, hi, i, e] = num[e] / (den + EPS)
    return out


def _qkv(n: int, nk: int | None = None, d: int = 3, dv: int = 2, seed: int = 0, scale: float = 1.5):
    g = torch.Generator().manual_seed(seed)
    nk = n if nk is None else nk
    q = torch.randn(2, 2, n, d, generator=g, dtype=torch.float64) * scale
    k = torch.randn(2, 2, nk, d, generator=g, dtype=torch.float64) * scale
    v = torch.randn(2, 2, nk, dv, generator=g, dtype=torch.float64)
    return q, k, v


def test_feature_map_is_elu_plus_one():
    x = torch.linspace(-12, 12, 97, dtype=torch.float64)
    torch.testing.assert_close(elu_feature_map(x), torch.tensor([_phi(float(t)) for t in x], dtype=torch.float64))
    torch.testing.assert_close(elu_feature_map(x), F.elu(x) + 1)  # exact in float64
    assert (elu_feature_map(x) > 0).all()


def test_non_causal_matches_the_loop_definition():
    q, k, v = _qkv(5, nk=7)  # N_q != N_k is allowed without causality
    torch.testing.assert_close(linear_attention(q, k, v), _loop_reference(q, k, v, causal=False))


@pytest.mark.parametrize("n", [1, 2, 7, 8, 13])
@pytest.mark.parametrize("chunk", [1, 3, 4, 64])
def test_causal_matches_the_loop_definition_for_any_chunk(n, chunk):
    q, k, v = _qkv(n, seed=n)
    torch.testing.assert_close(linear_attention(q, k, v, causal=True, chunk=chunk),
                               _loop_reference(q, k, v, causal=True))


def test_causal_output_ignores_later_tokens():
    q, k, v = _qkv(12)
    base = linear_attention(q, k, v, causal=True, chunk=5)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 6:] += 3.0
    v2[:, :, 6:] -= 2.0
    changed = linear_attention(q, k2, v2, causal=True, chunk=5)
    torch.testing.assert_close(changed[:, :, :6], base[:, :, :6])
    assert not torch.allclose(changed[:, :, 6:], base[:, :, 6:])
    # the last query sees every key: it equals the non-causal output
    torch.testing.assert_close(base[:, :, -1], linear_attention(q, k, v)[:, :, -1])


@pytest.mark.parametrize("causal", [False, True])
def test_the_normaliser_makes_a_constant_value_come_out_unchanged(causal):
    """Without the 1 / (phi(Q) sum phi(K)) (or with a wrong one) a constant V would be scaled: the weights are a
    convex combination only when normalised by their own sum."""
    q, k, _ = _qkv(9, d=4, scale=3.0)
    v = torch.full((2, 2, 9, 3), 2.5, dtype=torch.float64)
    out = linear_attention(q, k, v, causal=causal, chunk=4)
    torch.testing.assert_close(out, v, rtol=1e-5, atol=0)  # eps / normaliser ~ 1e-7 at most


@pytest.mark.parametrize("causal", [False, True])
def test_weights_rows_sum_to_one_and_applied_to_v_give_the_output(causal):
    q, k, v = _qkv(6)
    w = linear_attention_weights(q, k, causal=causal)
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1], dtype=w.dtype), rtol=1e-5, atol=0)
    assert (w >= 0).all()
    if causal:
        assert (w.triu(1) == 0).all()
    torch.testing.assert_close(w @ v, linear_attention(q, k, v, causal=causal))


def test_gradients_stay_finite_for_large_inputs():
    q, k, v = _qkv(10, scale=1e4)
    for causal in (False, True):
        qq, kk, vv = (t.clone().requires_grad_(True) for t in (q, k, v))
        out = linear_attention(qq, kk, vv, causal=causal, chunk=4)
        assert torch.isfinite(out).all()
        out.sum().backward()
        for t in (qq, kk, vv):
            assert torch.isfinite(t.grad).all()
    x = torch.tensor([-1e4, -100.0, 100.0, 1e4], requires_grad=True)
    elu_feature_map(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([0.0, math.exp(-100.0), 1.0, 1.0]))


def test_gradcheck_causal_with_padding():
    q, k, v = (t.requires_grad_(True) for t in _qkv(7, d=2, dv=2))
    assert torch.autograd.gradcheck(lambda a, b, c: linear_attention(a, b, c, causal=True, chunk=3), (q, k, v))


def test_naive_elu_plus_one_cancels_in_bf16_but_the_feature_map_does_not():
    x = torch.tensor([-6.0, -8.0, -10.0])
    naive = F.elu(x.bfloat16()) + 1
    assert naive[1] == 0 and naive[2] == 0  # exp(x) - 1 + 1 has rounded to zero
    assert abs(naive[0].item() / math.exp(-6.0) - 1) > 0.3  # and a larger one is badly off
    ours = elu_feature_map(x.bfloat16())
    assert ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), torch.exp(x), rtol=1e-2, atol=0)


def test_bf16_inputs_with_very_negative_keys_still_average_the_values():
    """Every key feature below the naive form's cut-off: the output must still be the weighted mean of V."""
    q, k, v = _qkv(6, d=4)
    k = -8.0 - k.abs()  # phi(k) = exp(k) < 3.4e-4: zero in bf16's naive elu + 1
    ref = _loop_reference(q, k, v, causal=False)
    for causal in (False, True):
        out = linear_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), causal=causal, chunk=4)
        assert out.dtype == torch.bfloat16
        expected = ref if not causal else _loop_reference(q, k, v, causal=True)
        # bf16 rounding of the inputs (k to 3 digits moves exp(k) by ~0.5 %), not a collapse to zero
        torch.testing.assert_close(out.double(), expected, rtol=0.05, atol=0.05)
        assert out.abs().sum() > 0.5 * expected.abs().sum()


def test_attention_module_dispatches_the_linear_kernel():
    q, k, v = _qkv(8)
    for causal in (False, True):
        step = Attention(kernel="linear", causal=causal)
        torch.testing.assert_close(step(q, k, v), linear_attention(q, k, v, causal=causal))


@pytest.mark.parametrize("causal", [False, True])
def test_recorded_weights_applied_to_v_give_the_layer_output(causal):
    torch.manual_seed(0)
    layer = MultiHeadSelfAttention(8, heads=2, kernel="linear", causal=causal).double()
    seen = {}
    layer.attend.register_forward_hook(lambda m, args, out: seen.update(v=args[2], out=out))
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    with AttentionRecorder(layer) as rec:
        layer(x)
    (weights,) = rec.weights["attend"]
    assert weights.shape == (2, 2, 5, 5)
    torch.testing.assert_close(weights @ seen["v"], seen["out"])


def test_half_inputs_come_back_in_their_dtype():
    q, k, v = (t.float() for t in _qkv(5))
    ref = linear_attention(q, k, v, causal=True)
    out = linear_attention(q.half(), k.half(), v.half(), causal=True)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


def test_usage_errors_name_the_argument():
    q, k, v = _qkv(4)
    with pytest.raises(UsageError, match="chunk must be an integer >= 1, got 0"):
        linear_attention(q, k, v, causal=True, chunk=0)
    with pytest.raises(UsageError, match="as many queries as keys"):
        linear_attention(q[:, :, :3], k, v, causal=True)
    with pytest.raises(UsageError, match="q must be 4-D"):
        linear_attention(q[0], k, v)
    with pytest.raises(UsageError, match="do not fit"):
        linear_attention(q, k[..., :2], v)
    with pytest.raises(UsageError, match="do not fit"):
        linear_attention_weights(q, k[..., :2])
