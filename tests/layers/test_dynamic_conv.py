"""Dynamic convolution: per-sample loop oracle, the temperature softmax (eq. 10.1) and its annealing schedule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import visionattn
from visionattn.errors import UsageError
from visionattn.layers import DynamicConv2d, TemperatureSchedule, set_temperature


def _reference(layer: DynamicConv2d, x: torch.Tensor) -> torch.Tensor:
    fc1, fc2 = layer.router[0], layer.router[2]
    outs = []
    for b in range(x.shape[0]):
        hidden = torch.relu(fc1.weight @ x[b].mean(dim=(1, 2)) + fc1.bias)
        logits = (fc2.weight @ hidden + fc2.bias) / layer.temperature
        pi = torch.exp(logits) / torch.exp(logits).sum()  # eq. 10.1
        weight = sum(pi[n] * layer.weight[n] for n in range(layer.num_experts))
        bias = None if layer.bias is None else sum(pi[n] * layer.bias[n] for n in range(layer.num_experts))
        outs.append(F.conv2d(x[b : b + 1], weight, bias, layer.stride, layer.padding, layer.dilation,
                             layer.groups))
    return torch.cat(outs)


@pytest.mark.parametrize("kwargs", [
    {"temperature": 1.0},
    {"out_channels": 6, "stride": 2, "groups": 2, "bias": True, "num_experts": 3, "temperature": 0.5},
    {"kernel_size": 1, "dilation": 2},  # default temperature 30
])
def test_output_matches_per_sample_loop(kwargs):
    torch.manual_seed(0)
    layer = DynamicConv2d(4, **kwargs)
    x = torch.randn(3, 4, 7, 6)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _reference(layer, x), atol=1e-5, rtol=1e-4)


def test_routing_sums_to_one_and_flattens_as_temperature_grows():
    torch.manual_seed(0)
    layer = DynamicConv2d(8, num_experts=4)
    with torch.no_grad():
        layer.router[2].weight.mul_(20)  # peaked logits, so low temperatures are far from uniform
        x = torch.randn(5, 8, 4, 4)
        gaps = []
        for t in (0.5, 1.0, 10.0, 100.0, 1e6):
            layer.temperature = t
            pi = layer.routing_weights(x)
            torch.testing.assert_close(pi.sum(dim=1), torch.ones(5))
            gaps.append((pi - 0.25).abs().max().item())
    assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps
    assert gaps[0] > 0.2 and gaps[-1] < 1e-5


def test_paper_defaults():
    layer = visionattn.create_attn("dynamic_conv", 16)
    assert (layer.num_experts, layer.temperature) == (4, 30.0)
    assert (layer.router[0].out_features, type(layer.router[1])) == (4, nn.ReLU)  # FC C -> C / 4, ReLU


@pytest.mark.bad_input
@pytest.mark.parametrize("value", [0, -1.0, float("inf"), float("nan"), True])
def test_bad_temperature_raises_value_error(value):
    with pytest.raises(UsageError, match="temperature must be a finite number > 0"):
        DynamicConv2d(4, temperature=value)
    layer = DynamicConv2d(4)
    with pytest.raises(ValueError, match="temperature"):
        layer.temperature = value
    assert layer.temperature == 30.0


@pytest.mark.bad_input
@pytest.mark.parametrize("kwargs,match", [
    ({"channels": 6, "groups": 4}, "channels must be divisible by groups=4"),
    ({"channels": 8, "kernel_size": 2}, "kernel_size must be odd"),
    ({"channels": 8, "rd_ratio": 0}, "rd_ratio"),
    ({"channels": 8, "rd_channels": 0}, "rd_channels must be an integer >= 1, got 0"),
    ({"channels": 8, "act_layer": torch.nn.ReLU()}, "act_layer must be a name or an nn.Module class, got the "
                                                    "instance ReLU.*pass ReLU .the class."),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(UsageError, match=match):
        DynamicConv2d(**kwargs)


def test_temperature_is_saved_with_the_model():
    layer = DynamicConv2d(4)
    layer.temperature = 2.5
    restored = DynamicConv2d(4)
    restored.load_state_dict(layer.state_dict())
    assert restored.temperature == 2.5


def _net() -> nn.Module:
    return nn.Sequential(DynamicConv2d(4), nn.ReLU(), nn.Sequential(DynamicConv2d(4, 8)), nn.Conv2d(8, 8, 1))


def test_schedule_anneals_linearly_then_stays():
    net = _net()
    schedule = TemperatureSchedule(net, start=30.0, end=1.0, num_steps=10)
    layers = [m for m in net.modules() if isinstance(m, DynamicConv2d)]
    assert len(schedule.layers) == 2 and all(m.temperature == 30.0 for m in layers)
    seen = [schedule.step() for _ in range(12)]
    assert seen == pytest.approx([30.0 - 2.9 * k for k in range(1, 11)] + [1.0, 1.0])
    assert all(m.temperature == pytest.approx(1.0) for m in layers)


def test_schedule_state_dict_round_trip():
    net = _net()
    schedule = TemperatureSchedule(net, num_steps=4)
    for _ in range(3):
        schedule.step()
    state = schedule.state_dict()
    fresh_net = _net()
    resumed = TemperatureSchedule(fresh_net, num_steps=99)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    assert fresh_net[0].temperature == pytest.approx(30.0 - 29.0 * 3 / 4)
    assert resumed.step() == pytest.approx(1.0)


def test_set_temperature_and_bad_schedules():
    net = _net()
    assert set_temperature(net, 4.0) == 2
    assert net[2][0].temperature == 4.0
    assert set_temperature(nn.Conv2d(1, 1, 1), 4.0) == 0
    with pytest.raises(ValueError, match="temperature"):
        set_temperature(net, 0.0)
    with pytest.raises(ValueError, match="start"):
        TemperatureSchedule(net, start=0)
    with pytest.raises(ValueError, match="num_steps"):
        TemperatureSchedule(net, num_steps=0)


def test_changing_the_temperature_does_not_recompile():
    from torch._dynamo.testing import CompileCounter

    torch.manual_seed(0)
    layer = DynamicConv2d(4, kernel_size=1).eval()
    with torch.no_grad():
        layer.router[2].weight.mul_(20)
    counter = CompileCounter()
    compiled = torch.compile(layer, backend=counter, dynamic=False)
    x = torch.randn(2, 4, 3, 3)
    with torch.no_grad():
        for t in (30.0, 1.0, 2.0):
            layer.temperature = t
            torch.testing.assert_close(compiled(x), _reference(layer, x), atol=1e-5, rtol=1e-4)
    assert counter.frame_count == 1
