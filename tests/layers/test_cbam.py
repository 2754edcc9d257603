"""Formula tests for CBAM: channel part (eq. 4.1-4.4), spatial part (eq. 4.5-4.8), and the two in sequence."""

import pytest
import torch

from tests.layers import direct
from visionattn.errors import UsageError
from visionattn.layers import CbamChannelAttention, CbamSpatialAttention, ConvBlockAttention


def _x():
    return torch.randn(2, 8, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def _channel_expected(layer: CbamChannelAttention, x):
    def mlp(z):
        h = direct.relu(direct.linear(z, layer.fc.fc1.weight, layer.fc.fc1.bias))
        return direct.linear(h, layer.fc.fc2.weight, layer.fc.fc2.bias)  # eq. 4.3, one MLP for both

    a = direct.sigmoid(mlp(direct.mean_hw(x)) + mlp(direct.max_hw(x)))  # eq. 4.1, 4.2, 4.4
    return x * a[:, :, None, None]


def _spatial_expected(layer: CbamSpatialAttention, x):
    b, c, h, w = x.shape
    z1 = torch.zeros(b, 1, h, w, dtype=x.dtype)
    z2 = torch.full((b, 1, h, w), -torch.inf, dtype=x.dtype)
    for i in range(c):  # eq. 4.5 and 4.6
        z1[:, 0] += x[:, i] / c
        z2[:, 0] = torch.maximum(z2[:, 0], x[:, i])
    k = layer.conv.kernel_size[0]
    # the official code's order: the max map is the convolution's input channel 0, the mean map channel 1
    v = direct.conv2d(torch.cat([z2, z1], 1), layer.conv.weight, layer.conv.bias, padding=k // 2)
    if isinstance(layer.bn, torch.nn.BatchNorm2d):
        v = direct.batch_norm_eval(v, layer.bn)
    return x * direct.sigmoid(v)  # eq. 4.7, 4.8


def test_channel_part_uses_average_and_max_pooling():
    layer = CbamChannelAttention(8, rd_ratio=0.5).double()
    x = _x()
    torch.testing.assert_close(layer(x), _channel_expected(layer, x))
    # the max branch matters: changing one element that is the max of its channel changes the output
    y = x.clone()
    y[0, 0, 0, 0] = x[0, 0].max() + 5
    y[0, 0, 1, 1] -= 5  # keep the mean unchanged
    assert not torch.allclose(layer(y)[0, 1], layer(x)[0, 1])


@pytest.mark.parametrize("norm", [True, False])
def test_spatial_part_matches_equations(norm):
    layer = CbamSpatialAttention(8, kernel_size=3, norm=norm).double()
    direct.randomize_batch_norms(layer)
    layer.eval()
    x = _x()
    torch.testing.assert_close(layer(x), _spatial_expected(layer, x))


def test_spatial_input_order_is_max_then_mean():
    layer = CbamSpatialAttention(8, kernel_size=1, norm=False).double()
    with torch.no_grad():
        layer.conv.weight.copy_(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))  # reads input channel 0 only
        layer.conv.bias.zero_()
    x = _x()
    torch.testing.assert_close(layer.attention(x), direct.sigmoid(x.amax(dim=1, keepdim=True)))


def test_cbam_is_channel_then_spatial():
    layer = ConvBlockAttention(8, rd_ratio=0.5, kernel_size=3).double()
    direct.randomize_batch_norms(layer)
    layer.eval()
    x = _x()
    torch.testing.assert_close(layer(x), _spatial_expected(layer.spatial, _channel_expected(layer.channel, x)))
    assert layer.spatial.conv.weight.shape == (1, 2, 3, 3)
    assert ConvBlockAttention(64).spatial.conv.weight.shape == (1, 2, 7, 7)  # paper default k = 7


@pytest.mark.bad_input
@pytest.mark.parametrize("layer,kwargs,match", [
    (CbamSpatialAttention, {"kernel_size": 6}, "kernel_size must be odd"),
    (CbamSpatialAttention, {"kernel_size": 0}, "kernel_size must be an integer >= 1, got 0"),
    (CbamSpatialAttention, {"norm": "no"}, "norm must be True or False, got 'no'"),
    (CbamChannelAttention, {"bias": None}, "bias must be True or False, got None"),
    (CbamChannelAttention, {"rd_ratio": float("inf")}, "rd_ratio: got inf, needed a finite number"),
    (ConvBlockAttention, {"gate_layer": "sigmiod"}, "gate_layer: 'sigmiod' is not a known activation; did you mean "
                                                     "'sigmoid'"),
])
def test_rejects_bad_arguments(layer, kwargs, match):
    with pytest.raises(UsageError, match=match):
        layer(8, **kwargs)
