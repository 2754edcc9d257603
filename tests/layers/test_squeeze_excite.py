"""Formula tests for SE (eq. 2.1-2.3) and SE-Var-1/2/3 (eq. 3.1-3.3)."""

import pytest
import torch

from tests.layers import direct
from visionattn import create_attn
from visionattn.errors import UsageError
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
    h = direct.relu(direct.linear(z, layer.fc1.weight, layer.fc1.bias))
    a = direct.sigmoid(direct.linear(h, layer.fc2.weight, layer.fc2.bias))  # eq. 2.2
    torch.testing.assert_close(layer(x), _scale(x, a))


def test_se_bottleneck_width_follows_rd_arguments():
    assert SqueezeExcite(64).fc1.out_channels == 4  # C / 16
    assert SqueezeExcite(64, rd_ratio=0.25).fc1.out_channels == 16
    assert SqueezeExcite(64, rd_channels=10).fc1.out_channels == 10
    assert SqueezeExcite(100, rd_ratio=1 / 16, rd_divisor=8).fc1.out_channels == 8
    assert SqueezeExcite(8).fc1.out_channels == 1  # never below one


def test_se_activation_and_gate_are_swappable():
    layer = create_attn("se", 8, rd_ratio=0.5, act_layer="silu", gate_layer="hard_sigmoid").double()
    x = _x()
    z = direct.mean_hw(x)
    h = direct.linear(z, layer.fc1.weight, layer.fc1.bias)
    h = h * direct.sigmoid(h)
    v = direct.linear(h, layer.fc2.weight, layer.fc2.bias)
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


@pytest.mark.bad_input
@pytest.mark.parametrize("layer,kwargs,match", [
    (SqueezeExcite, {"channels": 0}, "channels must be an integer >= 1, got 0"),
    (SqueezeExcite, {"channels": 8.0}, "channels must be an integer >= 1, got 8.0"),
    (SqueezeExcite, {"channels": 8, "rd_ratio": 0}, "rd_ratio must be a finite number > 0, got 0"),
    (SqueezeExcite, {"channels": 8, "rd_ratio": -1}, "rd_ratio must be a finite number > 0, got -1"),
    (SqueezeExcite, {"channels": 8, "rd_ratio": float("inf")}, "rd_ratio: got inf, needed a finite number"),
    (SqueezeExcite, {"channels": 8, "rd_ratio": "1/16"}, "rd_ratio: got '1/16', needed a finite number"),
    (SqueezeExcite, {"channels": 8, "rd_channels": 0}, "rd_channels must be an integer >= 1, got 0"),
    (SqueezeExcite, {"channels": 8, "rd_divisor": 0}, "rd_divisor must be an integer >= 1, got 0"),
    (SqueezeExcite, {"channels": 8, "act_layer": "nope"}, "act_layer: 'nope' is not a known activation; choose"),
    (SqueezeExcite, {"channels": 8, "rd_channels": 2.5}, "rd_channels must be an integer >= 1, got 2.5"),
    (SqueezeExcite, {"channels": 8, "act_layer": "sillu"}, "act_layer: 'sillu'.*did you mean 'silu'"),
    (SqueezeExcite, {"channels": 8, "act_layer": 3}, "act_layer must be a name, an nn.Module class or None, got 3"),
    (SqueezeExcite, {"channels": 8, "gate_layer": torch.nn.Sigmoid()}, "gate_layer must be a name or an nn.Module "
                                                                       "class, got the instance"),
    (SqueezeExcite, {"channels": 8, "bias": "yes"}, "bias must be True or False, got 'yes'"),
    (SEVar2, {"channels": 8, "bias": 0}, "bias must be True or False, got 0"),
    (SEVar3, {"channels": 8, "gate_layer": "sigmoidd"}, "gate_layer: 'sigmoidd'.*did you mean 'sigmoid'"),
])
def test_rejects_bad_arguments(layer, kwargs, match):
    with pytest.raises(UsageError, match=match):
        layer(**kwargs)


def test_only_relu_like_activations_run_in_place():
    # in place where the result is the same bit for bit (ReLU: the backward needs only the result's sign)
    assert SqueezeExcite(8).act.inplace
    assert not SqueezeExcite(8, act_layer="silu").act.inplace
    assert isinstance(SqueezeExcite(8, act_layer="gelu").act, torch.nn.GELU)
