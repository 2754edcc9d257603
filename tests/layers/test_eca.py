"""Formula tests for ECA (eq. 3.4-3.5)."""

import pytest
import torch

import visionattn
from tests.layers import direct
from visionattn.errors import UsageError
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


@pytest.mark.bad_input
@pytest.mark.parametrize("kwargs,match", [
    ({"kernel_size": 4}, "kernel_size must be odd so the 1-D convolution keeps C outputs, got 4"),
    ({"kernel_size": 0}, "kernel_size must be an integer >= 1, got 0"),
    ({"kernel_size": 3.0}, "kernel_size must be an integer >= 1, got 3.0"),
    ({"gamma": 0}, "gamma: got 0, needed a positive number"),
    ({"gamma": float("inf")}, "gamma: got inf, needed a finite number"),
    ({"beta": float("nan")}, "beta: got nan, needed a finite number"),
    ({"gate_layer": "hard_sigmod"}, "gate_layer: 'hard_sigmod' is not a known activation; did you mean "
                                    "'hard_sigmoid'"),
])
def test_rejects_bad_arguments(kwargs, match):
    with pytest.raises(UsageError, match=match):
        EfficientChannelAttention(64, **kwargs)


def test_official_checkpoint_layout_is_registered():
    """eca_resnet50 follows eq. 3.5 per layer ([5, 5, 5, 7]); eca_resnet50_k3557 the official checkpoint."""
    def kernels(name):
        with torch.device("meta"):
            model = visionattn.create_model(name)
        return [sorted({b.se.kernel_size for b in stage if hasattr(b, "se")}) for stage in model.stages()]

    assert kernels("eca_resnet50") == [[5], [5], [5], [7]]
    assert kernels("eca_resnet50_k3557") == [[3], [5], [5], [7]]
    assert kernels("eca_resnet101_k3357") == [[3], [3], [5], [7]]
    assert kernels("eca_resnet152_k3357") == [[3], [3], [5], [7]]
