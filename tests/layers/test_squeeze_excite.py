"""Formula tests for SE (eq. 2.1-2.3) and SE-Var-1/2/3 (eq. 3.1-3.3)."""

import pytest
import torch

from tests.layers import direct
from visionattn import create_attn
from visionattn.layers import SEVar1, SEVar2, SEVar3, SqueezeExcite


def _x(c=8):
    return torch.randn(2, c, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def _scale(x, a):
    """eq. 2.3: X~[i] = a_i X[i]."""
    return x * a[:, :, None, None]


def test_se_matches_equations():
    layer = SqueezeExcite(8, rd_ratio=1 / 4).double()
    x = _x()
    z = direct.mean_hw(x)  # eq. 2.1
    h = direct.relu(direct.linear(z, layer.fc.fc1.weight, layer.fc.fc1.bias))
    a = direct.sigmoid(direct.linear(h, layer.fc.fc2.weight, layer.fc.fc2.bias))  # eq. 2.2
    torch.testing.assert_close(layer(x), _scale(x, a))


def test_se_bottleneck_width_follows_rd_arguments():
    assert SqueezeExcite(64).fc.fc1.out_channels == 4  # C / 16
    assert SqueezeExcite(64, rd_ratio=0.25).fc.fc1.out_channels == 16
    assert SqueezeExcite(64, rd_channels=10).fc.fc1.out_channels == 10
    assert SqueezeExcite(100, rd_ratio=1 / 16, rd_divisor=8).fc.fc1.out_channels == 8
    assert SqueezeExcite(8).fc.fc1.out_channels == 1  # never below one


def test_se_activation_and_gate_are_swappable():
    layer = create_attn("se", 8, rd_ratio=0.5, act_layer="silu", gate_layer="hard_sigmoid").double()
    x = _x()
    z = direct.mean_hw(x)
    h = direct.linear(z, layer.fc.fc1.weight, layer.fc.fc1.bias)
    h = h * direct.sigmoid(h)
    v = direct.linear(h, layer.fc.fc2.weight, layer.fc.fc2.bias)
    a = torch.clamp(v / 6 + 0.5, 0, 1)
    torch.testing.assert_close(layer(x), _scale(x, a))


def test_se_var1_is_sigmoid_of_pooled_channels():
    x = _x()
    torch.testing.assert_close(SEVar1(8)(x), _scale(x, direct.sigmoid(direct.mean_hw(x))))  # eq. 3.1
    assert sum(p.numel() for p in SEVar1(8).parameters()) == 0


def test_se_var2_is_diagonal():
    layer = SEVar2(8).double()
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    x = _x()
    z = direct.mean_hw(x)
    a = direct.sigmoid(layer.weight.view(1, 8) * z + layer.bias.view(1, 8))  # eq. 3.2 (+ bias)
    torch.testing.assert_close(layer(x), _scale(x, a))


def test_se_var3_is_full_matrix():
    layer = SEVar3(8).double()
    x = _x()
    a = direct.sigmoid(direct.linear(direct.mean_hw(x), layer.fc.weight, layer.fc.bias))  # eq. 3.3
    torch.testing.assert_close(layer(x), _scale(x, a))
    assert layer.fc.weight.numel() == 64


@pytest.mark.parametrize("kwargs", [{"channels": 0}, {"channels": 8, "rd_ratio": 0}, {"channels": 8, "rd_ratio": -1},
                                    {"channels": 8, "rd_channels": 0}, {"channels": 8, "act_layer": "nope"}])
def test_se_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        SqueezeExcite(**kwargs)
