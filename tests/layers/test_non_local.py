"""The non-local block (Wang et al. 2018, embedded Gaussian, eq. 1, 3, 6) against a loop over positions."""

from __future__ import annotations

import math

import pytest
import torch

import visionattn
from tests.layers import direct
from visionattn import testing
from visionattn.errors import UsageError
from visionattn.layers.attention_core import AttentionRecorder
from visionattn.layers.non_local import CONV_INIT_STD, NonLocal2d


def _max_pool_2x2_ceil(x: torch.Tensor) -> torch.Tensor:
    """2x2 max pooling of stride 2 by loops; a window that runs past an odd side takes what is inside."""
    b, c, h, w = x.shape
    out = torch.empty(b, c, math.ceil(h / 2), math.ceil(w / 2), dtype=x.dtype)
    for i in range(out.shape[2]):
        for j in range(out.shape[3]):
            out[:, :, i, j] = direct.max_hw(x[:, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2])
    return out


@torch.no_grad()
def _loop_reference(layer: NonLocal2d, x: torch.Tensor, scale: float) -> torch.Tensor:
    """z_i = BN(W_z y_i) + x_i, y_i = sum_j softmax_j(scale * theta_i . phi_j) g_j, every position i by loop."""
    b, c, h, w = x.shape
    pooled = _max_pool_2x2_ceil(x) if layer.sub_sample else x
    theta = direct.conv2d(x, layer.theta.weight, layer.theta.bias).flatten(2)  # (B, C', HW)
    phi = direct.conv2d(pooled, layer.phi.weight, layer.phi.bias).flatten(2)  # (B, C', M)
    g = direct.conv2d(pooled, layer.g.weight, layer.g.bias).flatten(2)
    y = torch.zeros(b, layer.inner_channels, h * w, dtype=x.dtype)
    for n in range(b):
        for i in range(h * w):
            logits = [scale * float((theta[n, :, i] * phi[n, :, j]).sum()) for j in range(phi.shape[2])]
            top = max(logits)
            f = [math.exp(s - top) for s in logits]  # eq. 3, divided by C(x) = sum_j f (eq. 1)
            for j, fj in enumerate(f):
                y[n, :, i] += fj / sum(f) * g[n, :, j]
    wz = direct.conv2d(y.view(b, -1, h, w), layer.w_z.weight, layer.w_z.bias)
    return direct.batch_norm_eval(wz, layer.bn) + x


@pytest.mark.parametrize("sub_sample,use_scale,size", [(True, True, (5, 4)), (False, True, (3, 4)),
                                                      (True, False, (4, 4))])
def test_matches_the_loop_definition(sub_sample, use_scale, size):
    torch.manual_seed(0)
    layer = NonLocal2d(6, sub_sample=sub_sample, use_scale=use_scale).double()
    for conv in (layer.theta, layer.phi, layer.g, layer.w_z):
        torch.nn.init.normal_(conv.weight, std=0.5)
        torch.nn.init.normal_(conv.bias, std=0.3)
    direct.randomize_batch_norms(layer)  # a non-zero BN scale, so that the branch counts
    x = torch.randn(2, 6, *size, dtype=torch.float64)
    scale = 3 ** -0.5 if use_scale else 1.0  # inner channels 6 / 2 = 3
    expected = _loop_reference(layer, x, scale)
    torch.testing.assert_close(layer.eval()(x), expected)
    assert not torch.allclose(expected, x)


def test_starts_as_the_identity_with_the_official_initialisation():
    torch.manual_seed(0)
    layer = NonLocal2d(64)
    for conv in (layer.theta, layer.phi, layer.g, layer.w_z):
        assert abs(conv.weight.std().item() / CONV_INIT_STD - 1) < 0.1
        assert not conv.bias.any()
    assert not layer.bn.weight.any() and not layer.bn.bias.any()
    x = torch.randn(2, 64, 6, 5)
    for training in (True, False):
        assert torch.equal(layer.train(training)(x), x)


def test_at_initialisation_only_the_batch_norm_learns_and_opened_every_parameter_does():
    """With the BN scale at 0 the branch passes no gradient into theta, phi, g, W_z (by design: the block starts
    as the identity); once the scale moves off 0 all of them get one."""
    torch.manual_seed(0)
    layer = NonLocal2d(16)
    x = torch.randn(2, 16, 6, 6)
    (layer(x) * torch.randn(2, 16, 6, 6)).sum().backward()
    for name, p in layer.named_parameters():
        assert (p.grad.abs().sum() > 0) == name.startswith("bn."), name
    with torch.no_grad():
        layer.bn.weight.fill_(1.0)
    testing.check_grads_reach_params(layer, x)


def test_defaults_follow_the_official_code():
    layer = NonLocal2d(32)
    assert layer.inner_channels == 16 and layer.sub_sample
    assert layer.attend.scale is None  # the core's d^-1/2 with d = inner channels: official USE_SCALE
    assert NonLocal2d(32, use_scale=False).attend.scale == 1.0
    assert isinstance(visionattn.create_attn("non_local", 32), NonLocal2d)


def test_parameter_count():
    """theta, phi, g: C x C/2 + C/2 each; W_z: C/2 x C + C; BN: 2C; in all 2 C^2 + 4.5 C."""
    for c in (64, 512, 1024):
        assert sum(p.numel() for p in NonLocal2d(c).parameters()) == 2 * c * c + 9 * c // 2


def test_sub_sampling_keeps_a_quarter_of_the_keys():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 7, 6)
    for sub_sample, keys in ((True, 4 * 3), (False, 7 * 6)):
        layer = NonLocal2d(8, sub_sample=sub_sample, zero_init=False)
        with AttentionRecorder(layer) as rec:
            layer.eval()(x)
        (w,) = rec.weights["attend"]
        assert w.shape == (1, 1, 42, keys)
        torch.testing.assert_close(w.sum(-1), torch.ones(1, 1, 42))


def test_one_by_one_map_and_batch_of_one():
    layer = NonLocal2d(8, zero_init=False)
    assert layer.eval()(torch.randn(1, 8, 1, 1)).shape == (1, 8, 1, 1)
    with pytest.raises(UsageError, match="batch of at least 2 in training"):
        layer.train()(torch.randn(1, 8, 1, 1))


def test_usage_errors():
    with pytest.raises(UsageError, match="channels >= 2"):
        NonLocal2d(1)
    with pytest.raises(UsageError, match="inner_channels must be an integer >= 1, got 0"):
        NonLocal2d(8, inner_channels=0)
    with pytest.raises(UsageError, match="sub_sample must be True or False"):
        NonLocal2d(8, sub_sample="yes")
    with pytest.raises(UsageError, match="impl"):
        NonLocal2d(8, impl="flash")
    with pytest.raises(UsageError, match="8 input channels"):
        NonLocal2d(8)(torch.randn(2, 4, 3, 3))
