"""Formula tests for BAM (eq. 5.1-5.3)."""

import pytest
import torch

from tests.layers import direct
from visionattn.errors import UsageError
from visionattn.layers import BottleneckAttention


def _expected(layer: BottleneckAttention, x, combine="mul"):
    fc = layer.channel.fc
    z = direct.mean_hw(x)
    h = direct.linear(z, fc.fc1.weight, fc.fc1.bias)
    h = direct.relu(direct.batch_norm_eval(h, fc.bn))  # BN before ReLU, eq. 5.1
    a_c = direct.linear(h, fc.fc2.weight, fc.fc2.bias)[:, :, None, None]  # no gate here
    body = list(layer.spatial.body)
    v = x
    for conv, bn in zip(body[0:-1:3], body[1:-1:3]):
        v = direct.relu(direct.batch_norm_eval(
            direct.conv2d(v, conv.weight, conv.bias, padding=conv.padding[0], dilation=conv.dilation[0]), bn))
    a_s = direct.conv2d(v, body[-1].weight, body[-1].bias)  # 1x1 to one map
    a = direct.sigmoid(a_c * a_s if combine == "mul" else a_c + a_s)  # eq. 5.2
    return x * (a + 1)  # eq. 5.3


@pytest.mark.parametrize("combine", ["mul", "add"])
def test_bam_matches_equations(combine):
    layer = BottleneckAttention(8, rd_ratio=0.25, dilation=2, combine=combine).double()
    direct.randomize_batch_norms(layer)
    layer.eval()
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(layer(x), _expected(layer, x, combine))


def test_bam_structure_follows_paper_defaults():
    layer = BottleneckAttention(256)
    convs = [m for m in layer.spatial.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(1, 1), (3, 3), (3, 3), (1, 1)]
    assert [c.dilation for c in convs[1:3]] == [(4, 4), (4, 4)]
    assert convs[0].out_channels == 16 and convs[-1].out_channels == 1
    assert layer.channel.fc.fc1.out_channels == 16


def test_bam_output_is_never_below_input_scale():
    layer = BottleneckAttention(8, rd_ratio=0.5).eval()
    x = torch.rand(2, 8, 6, 6) + 0.1
    ratio = layer(x) / x
    assert (ratio >= 1).all() and (ratio <= 2).all()


@pytest.mark.bad_input
@pytest.mark.parametrize("kwargs,match", [
    ({"combine": "max"}, "combine: got 'max', needed one of 'mul', 'add'"),
    ({"combine": "mull"}, "combine: got 'mull'.*did you mean 'mul'"),
    ({"dilation": 0}, "dilation must be an integer >= 1, got 0"),
    ({"num_dilated": -1}, "num_dilated must be an integer >= 0, got -1"),
    ({"rd_ratio": 0.0}, "rd_ratio must be a finite number > 0, got 0.0"),
])
def test_rejects_bad_arguments(kwargs, match):
    with pytest.raises(UsageError, match=match):
        BottleneckAttention(8, **kwargs)
