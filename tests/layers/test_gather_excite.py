"""Formula tests for gather-excite: GE-theta-minus (eq. 6.1-6.3), GE-theta, GE-theta-plus (eq. 6.4)."""

import pytest
import torch

from tests.layers import direct
from visionattn import create_attn
from visionattn.errors import UsageError
from visionattn.layers import GatherExcite


def _x(h=8, w=8, c=4):
    return torch.randn(2, c, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def _avg_pool_direct(x, e):
    """eq. 6.1: mean over the (2e-1) x (2e-1) window centred on (i*e, j*e), cut at the borders."""
    b, c, h, w = x.shape
    oh, ow = -(-h // e), -(-w // e)
    out = torch.zeros(b, c, oh, ow, dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            rows = range(max(0, i * e - (e - 1)), min(h, i * e + e))
            cols = range(max(0, j * e - (e - 1)), min(w, j * e + e))
            out[:, :, i, j] = sum(x[:, :, r, s] for r in rows for s in cols) / (len(rows) * len(cols))
    return out


@pytest.mark.parametrize("extent,size", [(2, (8, 8)), (4, (8, 12)), (8, (16, 8)), (2, (7, 5))])
def test_theta_minus_matches_equations(extent, size):
    layer = GatherExcite(4, extent=extent)
    x = _x(*size)
    z = _avg_pool_direct(x, extent)
    expected = x * direct.sigmoid(direct.nearest_upsample(z, size))  # eq. 6.2, 6.3
    torch.testing.assert_close(layer(x), expected)


def test_theta_minus_upsampling_repeats_each_cell_e_times():
    x = _x(8, 8)
    a = direct.nearest_upsample(_avg_pool_direct(x, 4), (8, 8))
    assert torch.equal(a[:, :, 0:4, 0:4], a[:, :, 0:1, 0:1].expand(-1, -1, 4, 4))


def test_theta_minus_global_is_se_var1():
    x = _x()
    torch.testing.assert_close(GatherExcite(4, extent=0)(x), create_attn("se_var1", 4)(x))


def _theta_gather_direct(layer, x):
    mods = list(layer.gather)
    v = x
    convs = [m for m in mods if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in mods if isinstance(m, torch.nn.BatchNorm2d)]
    for n, (conv, bn) in enumerate(zip(convs, bns)):
        v = direct.batch_norm_eval(direct.conv2d(v, conv.weight, stride=conv.stride[0], padding=conv.padding[0],
                                                 groups=conv.groups), bn)
        if n < len(convs) - 1:
            v = direct.relu(v)
    return v


@pytest.mark.parametrize("extent,size", [(2, (6, 6)), (4, (8, 8)), (8, (8, 8)), (0, (5, 6))])
def test_theta_matches_equations(extent, size):
    layer = create_attn("ge_theta", 4, extent=extent, spatial_size=size).double()
    direct.randomize_batch_norms(layer)
    layer.eval()
    x = _x(*size)
    z = _theta_gather_direct(layer, x)
    assert z.shape[-2:] == ((1, 1) if extent == 0 else (-(-size[0] // extent), -(-size[1] // extent)))
    expected = x * direct.sigmoid(direct.nearest_upsample(z, size))
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("extent", [0, 2])
def test_theta_plus_matches_equation_6_4(extent):
    size = (4, 4)
    layer = create_attn("ge_theta_plus", 8, extent=extent, spatial_size=size, rd_ratio=0.5).double()
    direct.randomize_batch_norms(layer)
    layer.eval()
    x = _x(*size, c=8)
    z = direct.relu(_theta_gather_direct(layer, x))  # the official prototxt's gather/relu before the MLP
    b, c, h, w = z.shape
    zz = z.permute(0, 2, 3, 1).reshape(-1, c)  # the 1x1 convolutions act at every gathered position
    m = direct.linear(direct.relu(direct.linear(zz, layer.mlp.fc1.weight, layer.mlp.fc1.bias)),
                      layer.mlp.fc2.weight, layer.mlp.fc2.bias)
    m = m.reshape(b, h, w, c).permute(0, 3, 1, 2)
    torch.testing.assert_close(layer(x), x * direct.sigmoid(direct.nearest_upsample(m, size)))


@pytest.mark.parametrize("extent", [0, 2, 4])
def test_only_theta_plus_ends_its_gather_with_a_relu(extent):
    theta = create_attn("ge_theta", 8, extent=extent, spatial_size=4)
    plus = create_attn("ge_theta_plus", 8, extent=extent, spatial_size=4)
    assert isinstance(theta.gather[-1], torch.nn.BatchNorm2d)
    assert isinstance(plus.gather[-1], torch.nn.ReLU)
    assert len(plus.gather) == len(theta.gather) + 1  # the parameters keep their state-dict keys
    assert [n for n, _ in plus.named_parameters()][:len(list(theta.parameters()))] == \
        [n for n, _ in theta.named_parameters()]


def test_theta_global_parameter_count():
    layer = create_attn("ge_theta", 256, spatial_size=56)
    assert layer.gather[0].weight.shape == (256, 1, 56, 56)
    assert sum(p.numel() for p in layer.parameters()) == 256 * 56 * 56 + 2 * 256


def test_theta_depth_is_log2_extent():
    for e, n in [(2, 1), (4, 2), (8, 3)]:
        layer = create_attn("ge_theta", 8, extent=e)
        assert sum(isinstance(m, torch.nn.Conv2d) for m in layer.gather) == n


@pytest.mark.bad_input
@pytest.mark.parametrize("kwargs,match", [
    ({"extent": 3}, "extent must be 0 .global. or a power of two >= 2, got 3"),
    ({"extent": 1}, "power of two >= 2, got 1"),
    ({"extent": -2}, "power of two >= 2, got -2"),
    ({"extent": 2.0}, "power of two >= 2, got 2.0"),
    ({"extra_params": True}, "needs spatial_size=.H, W."),
    ({"use_mlp": True}, "use_mlp=True .GE-theta-plus. needs extra_params=True"),
    ({"extra_params": "yes", "extent": 2}, "extra_params must be True or False, got 'yes'"),
    ({"extra_params": True, "spatial_size": (4,)}, "spatial_size must be an int or a pair of ints, got .4,."),
    ({"extra_params": True, "spatial_size": 0}, "spatial_size must be an integer >= 1, got 0"),
    ({"extra_params": True, "use_mlp": True, "extent": 2, "rd_ratio": -0.5}, "rd_ratio must be a finite number > 0"),
])
def test_rejects_bad_arguments(kwargs, match):
    with pytest.raises(UsageError, match=match):
        GatherExcite(8, **kwargs)


def test_global_theta_rejects_other_resolution():
    layer = create_attn("ge_theta", 8, spatial_size=(6, 6))
    with pytest.raises(ValueError, match=r"spatial_size=\(6, 6\).*\(7, 7\)"):
        layer(torch.randn(2, 8, 7, 7))
