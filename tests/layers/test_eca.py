"""Formula tests for ECA (eq. 3.4-3.5)."""

import pytest
import torch

from tests.layers import direct
from visionattn.layers import EfficientChannelAttention, eca_kernel_size


@pytest.mark.parametrize("channels,k", [(64, 3), (256, 5), (512, 5), (2048, 7)])
def test_adaptive_kernel_size(channels, k):
    assert eca_kernel_size(channels) == k
    assert EfficientChannelAttention(channels).kernel_size == k


def test_eca_matches_equation():
    c, k = 7, 3
    layer = EfficientChannelAttention(c, kernel_size=k).double()
    x = torch.randn(2, c, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z = direct.mean_hw(x)
    w = layer.conv.weight.view(k)
    y = torch.zeros_like(z)
    for i in range(c):  # each channel sees its k neighbours through one shared kernel, zero beyond the ends
        for j in range(k):
            n = i + j - k // 2
            if 0 <= n < c:
                y[:, i] += w[j] * z[:, n]
    expected = x * direct.sigmoid(y)[:, :, None, None]
    torch.testing.assert_close(layer(x), expected)


def test_fixed_kernel_size_and_no_bias():
    layer = EfficientChannelAttention(64, kernel_size=9)
    assert layer.kernel_size == 9 and layer.conv.bias is None
    assert sum(p.numel() for p in layer.parameters()) == 9


@pytest.mark.parametrize("kwargs", [{"kernel_size": 4}, {"kernel_size": 0}, {"gamma": 0}])
def test_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="kernel_size|gamma"):
        EfficientChannelAttention(64, **kwargs)
