"""The recorder on the channel, spatial and branch layers: each hands over exactly the tensor it applied (checked
against the formula computed by hand from the layer's parameters), attaching it changes no output and adds no
work, and with no recorder nothing is kept or called."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import visionattn
from tests.layers import direct
from visionattn.errors import UsageError
from visionattn.layers.bam import BottleneckAttention
from visionattn.layers.cbam import CbamChannelAttention, CbamSpatialAttention, ConvBlockAttention
from visionattn.layers.cond_conv import CondConv2d
from visionattn.layers.dynamic_conv import DynamicConv2d
from visionattn.layers.eca import EfficientChannelAttention
from visionattn.layers.gather_excite import GatherExcite
from visionattn.layers.recording import RECORD_KINDS, Recordable, Recorder
from visionattn.layers.selective_kernel import SelectiveKernel
from visionattn.layers.split_attention import SplitAttention
from visionattn.layers.squeeze_excite import SEVar1, SEVar2, SEVar3, SqueezeExcite
from visionattn.registry import create_attn_for_size, get_attn_entry

C = 8


def _x(channels: int = C, size: tuple[int, int] = (5, 6), batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, channels, *size, generator=torch.Generator().manual_seed(1))


def _fc(z: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A 1x1 convolution on pooled (B, C) values."""
    return direct.linear(z, conv.weight, conv.bias)


def _bn(v: torch.Tensor, bn: nn.Module) -> torch.Tensor:
    return direct.batch_norm_eval(v, bn) if isinstance(bn, nn.BatchNorm2d) else v


def _conv_mlp(z: torch.Tensor, mlp: nn.Module) -> torch.Tensor:
    """ConvMlp (fc1, optional BN, ReLU, fc2) on (B, C)."""
    return _fc(direct.relu(_bn(_fc(z, mlp.fc1), mlp.bn)), mlp.fc2)


def _conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    return direct.conv2d(x, conv.weight, conv.bias, conv.stride[0], conv.padding[0], conv.dilation[0], conv.groups)


# --- the formulas, by hand: each returns the tensor the layer should hand over ---------------------------------

def _se(layer: SqueezeExcite, x: torch.Tensor) -> torch.Tensor:  # eq. 2.1-2.2
    return direct.sigmoid(_fc(direct.relu(_fc(direct.mean_hw(x), layer.fc1)), layer.fc2))[..., None, None]


def _se_var1(layer: SEVar1, x: torch.Tensor) -> torch.Tensor:  # eq. 3.1
    return direct.sigmoid(direct.mean_hw(x))[..., None, None]


def _se_var2(layer: SEVar2, x: torch.Tensor) -> torch.Tensor:  # eq. 3.2
    return direct.sigmoid(layer.weight.flatten() * direct.mean_hw(x) + layer.bias.flatten())[..., None, None]


def _se_var3(layer: SEVar3, x: torch.Tensor) -> torch.Tensor:  # eq. 3.3
    return direct.sigmoid(_fc(direct.mean_hw(x), layer.fc))[..., None, None]


def _eca(layer: EfficientChannelAttention, x: torch.Tensor) -> torch.Tensor:  # eq. 3.4: a k-tap sum across channels
    z, w, k = direct.mean_hw(x), layer.conv.weight.flatten(), layer.kernel_size
    out = torch.zeros_like(z)
    for c in range(z.shape[1]):
        for j in range(k):
            if 0 <= c + j - k // 2 < z.shape[1]:
                out[:, c] += w[j] * z[:, c + j - k // 2]
    return direct.sigmoid(out)[..., None, None]


def _cbam_channel(layer: CbamChannelAttention, x: torch.Tensor) -> torch.Tensor:  # eq. 4.1-4.4
    return direct.sigmoid(_conv_mlp(direct.mean_hw(x), layer.fc) + _conv_mlp(direct.max_hw(x), layer.fc))[..., None,
                                                                                                          None]


def _cbam_spatial(layer: CbamSpatialAttention, x: torch.Tensor) -> torch.Tensor:  # eq. 4.5-4.7, [max; mean]
    maps = torch.stack([x.max(dim=1).values, x.sum(dim=1) / x.shape[1]], dim=1)
    return direct.sigmoid(direct.batch_norm_eval(_conv(maps, layer.conv), layer.bn))


def _bam(layer: BottleneckAttention, x: torch.Tensor) -> torch.Tensor:  # eq. 5.1-5.2
    a_c = _conv_mlp(direct.mean_hw(x), layer.channel.fc)[..., None, None]
    a_s = x
    for m in layer.spatial.body:
        a_s = _conv(a_s, m) if isinstance(m, nn.Conv2d) else _bn(a_s, m) if isinstance(m, nn.BatchNorm2d) else \
            direct.relu(a_s)
    return direct.sigmoid(a_c * a_s)


def _ge_minus(layer: GatherExcite, x: torch.Tensor) -> torch.Tensor:  # eq. 6.1: mean over the in-map window
    e, (b, c, h, w) = layer.extent, x.shape
    rows, cols = -(-h // e), -(-w // e)
    out = torch.zeros(b, c, rows, cols)
    for i in range(rows):
        for j in range(cols):
            window = x[:, :, max(i * e - e + 1, 0): i * e + e, max(j * e - e + 1, 0): j * e + e]
            out[:, :, i, j] = window.sum(dim=(2, 3)) / (window.shape[2] * window.shape[3])
    return direct.sigmoid(out)


def _ge_global(layer: GatherExcite, x: torch.Tensor) -> torch.Tensor:
    return direct.sigmoid(direct.mean_hw(x))[..., None, None]


def _sk(layer: SelectiveKernel, x: torch.Tensor) -> torch.Tensor:  # eq. 7.1-7.6
    paths = [direct.relu(direct.batch_norm_eval(_conv(x, p.conv), p.bn)) for p in layer.paths]
    s = direct.mean_hw(sum(paths))
    z = direct.relu(direct.batch_norm_eval(_fc(s, layer.attn.fc_reduce), layer.attn.bn))
    logits = _fc(z, layer.attn.fc_select).view(x.shape[0], layer.num_paths, -1)  # ordered (path, channel)
    e = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
    return (e / e.sum(dim=1, keepdim=True))[..., None, None]


def _splat(layer: SplitAttention, x: torch.Tensor) -> torch.Tensor:  # eq. 8.1, 7.2-7.6 per cardinal group
    r, k, c = layer.radix, layer.groups, layer.out_channels
    u = direct.relu(direct.batch_norm_eval(_conv(x, layer.conv), layer.bn0))  # channels (radix, group, c')
    s = direct.mean_hw(sum(u[:, i * c:(i + 1) * c] for i in range(r)))[..., None, None]
    z = direct.relu(direct.batch_norm_eval(_conv(s, layer.fc1), layer.bn1))
    logits = _conv(z, layer.fc2).flatten(1)  # ordered (group, radix, c')
    a = torch.zeros(x.shape[0], r, c)
    for g in range(k):
        for i in range(r):
            a[:, i, g * c // k:(g + 1) * c // k] = logits[:, (g * r + i) * c // k:(g * r + i + 1) * c // k]
    e = torch.exp(a - a.max(dim=1, keepdim=True).values)
    return (e / e.sum(dim=1, keepdim=True))[..., None, None]


def _condconv(layer: CondConv2d, x: torch.Tensor) -> torch.Tensor:  # eq. 9.1
    return direct.sigmoid(direct.linear(direct.mean_hw(x), layer.router.weight, layer.router.bias))


def _dynamic(layer: DynamicConv2d, x: torch.Tensor) -> torch.Tensor:  # eq. 10.1
    fc1, _, fc2 = layer.router
    z = direct.linear(direct.relu(direct.linear(direct.mean_hw(x), fc1.weight, fc1.bias)), fc2.weight, fc2.bias)
    e = torch.exp((z - z.max(dim=1, keepdim=True).values) / layer.temperature)
    return e / e.sum(dim=1, keepdim=True)


# (id, builder, input, recorded module name, kind, formula(layer, input))
Case = tuple[str, Callable[[], nn.Module], Callable[[], torch.Tensor], str, str, Callable]
CASES: list[Case] = [
    ("se", lambda: SqueezeExcite(C, rd_channels=3), _x, "", "channel", _se),
    ("se_var1", lambda: SEVar1(C), _x, "", "channel", _se_var1),
    ("se_var2", lambda: SEVar2(C), _x, "", "channel", _se_var2),
    ("se_var3", lambda: SEVar3(C), _x, "", "channel", _se_var3),
    ("eca", lambda: EfficientChannelAttention(C, kernel_size=3), _x, "", "channel", _eca),
    ("cbam_channel", lambda: ConvBlockAttention(C, rd_channels=3, kernel_size=3), _x, "channel", "channel",
     lambda layer, x: _cbam_channel(layer.channel, x)),
    ("cbam_spatial", lambda: ConvBlockAttention(C, rd_channels=3, kernel_size=3), _x, "spatial", "spatial",
     lambda layer, x: _cbam_spatial(layer.spatial, x * _cbam_channel(layer.channel, x))),
    ("bam", lambda: BottleneckAttention(C, rd_channels=2, dilation=2, num_dilated=1), _x, "", "spatial", _bam),
    ("ge_theta_minus_e2", lambda: GatherExcite(C, extent=2), _x, "", "channel", _ge_minus),
    ("ge_theta_minus_global", lambda: GatherExcite(C), _x, "", "channel", _ge_global),
    ("sk", lambda: SelectiveKernel(C, groups=2, rd_channels=3), lambda: _x(size=(4, 5)), "", "branch", _sk),
    ("splat", lambda: SplitAttention(C, groups=2, radix=2, rd_channels=4), lambda: _x(size=(4, 5)), "", "branch",
     _splat),
    ("condconv", lambda: CondConv2d(C, num_experts=3), _x, "", "branch", _condconv),
    ("dynamic_conv", lambda: DynamicConv2d(C, num_experts=3, temperature=2.0), _x, "", "branch", _dynamic),
]
IDS = [case[0] for case in CASES]


def _build(builder: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    layer = builder()
    direct.randomize_batch_norms(layer)
    return layer.eval()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_recorded_tensor_is_the_formula_and_the_output_is_unchanged(case):
    _, builder, make_input, name, kind, formula = case
    layer, x = _build(builder), make_input()
    with torch.no_grad():
        plain = layer(x)
        with Recorder(layer) as rec:
            recorded_out = layer(x)
    assert torch.equal(recorded_out, plain)
    assert rec.kinds[name] == kind
    (value,) = rec.records[name]
    assert not value.requires_grad
    torch.testing.assert_close(value, formula(layer, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_recording_adds_no_work_and_keeps_gradients(case):
    """The same module calls with and without a recorder (nothing recomputed), and the same gradients."""
    layer, x = _build(case[1]), case[2]().requires_grad_()
    calls: list[str] = []
    names = {m: n for n, m in layer.named_modules()}
    handles = [m.register_forward_hook(lambda m, i, o: calls.append(names[m])) for m in layer.modules()]
    grads = []
    for attach in (False, True):
        calls.clear()
        layer.zero_grad()
        x.grad = None
        rec = Recorder(layer)
        if attach:
            rec.attach()
        layer(x).square().sum().backward()
        rec.detach()
        grads.append([x.grad, *(p.grad for p in layer.parameters())])
        if not attach:
            plain_calls = list(calls)
    assert calls == plain_calls
    for g_plain, g_recorded in zip(*grads):
        assert torch.equal(g_plain, g_recorded)
    for h in handles:
        h.remove()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_off_means_nothing_kept_and_the_hook_never_called(case, monkeypatch):
    layer, x = _build(case[1]), case[2]()
    called = []
    monkeypatch.setattr(Recorder, "_record", lambda self, module, value: called.append(module))
    rec = Recorder(layer)  # built but never attached
    state = {id(m): dict(vars(m)) for m in layer.modules()}
    layer(x)
    assert called == [] and rec.records == {}
    for m in layer.modules():
        assert vars(m) == state[id(m)]  # no attribute was added or replaced: nothing was kept on the layer
        assert getattr(m, "recorder", None) is None
    with rec:
        layer(x)
    assert len(called) == len(rec.kinds)  # the same hook is called once per recordable module when attached


def test_a_recorder_detaches_on_exit_and_keeps_one_tensor_per_call():
    layer, x = _build(lambda: ConvBlockAttention(C, rd_channels=3)), _x()
    with Recorder(layer) as rec:
        layer(x)
        layer(x[:1])
    assert layer.channel.recorder is None and layer.spatial.recorder is None
    layer(x)
    assert [t.shape[0] for t in rec.records["channel"]] == [2, 1]
    assert list(rec.of_kind("spatial")) == ["spatial"] and list(rec.of_kind("channel")) == ["channel"]
    assert rec.of_kind("branch") == {}
    with Recorder(layer, kinds=["spatial"]) as only_spatial:
        layer(x)
    assert list(only_spatial.records) == ["spatial"]
    with Recorder(layer, names=["channel"]) as by_name:
        layer(x)
    assert list(by_name.records) == ["channel"]


def test_recorder_errors():
    layer = ConvBlockAttention(C, rd_channels=3)
    with pytest.raises(UsageError, match="did you mean 'channel'"):
        Recorder(layer, kinds=["chanel"])
    with pytest.raises(UsageError, match="no .*Recordable"):
        Recorder(nn.Conv2d(2, 2, 1))
    with pytest.raises(UsageError, match="no layer of kind branch"):
        Recorder(layer, kinds=["branch"])
    with pytest.raises(UsageError, match="'spatail'.*did you mean 'spatial'"):
        Recorder(layer, names=["spatail"])
    with Recorder(layer) as first:
        with pytest.raises(UsageError, match="already attached"):
            Recorder(layer).attach()
        assert layer.channel.recorder == first._record  # the refused one took over nothing
    assert layer.channel.recorder is None


def test_a_recorder_finds_the_layers_of_a_model_by_their_names():
    model = visionattn.create_model("se_resnet20", num_classes=10, in_chans=1).eval()
    with Recorder(model, kinds=["channel"]) as rec:
        model(torch.randn(2, 1, 16, 16))
    assert list(rec.records) == [f"layer{s}.{b}.se" for s in (1, 2, 3) for b in range(3)]
    assert [rec.records[f"layer{s}.0.se"][0].shape for s in (1, 2, 3)] == [(2, c, 1, 1) for c in (16, 32, 64)]


@pytest.mark.parametrize("name", [n for n in visionattn.list_attn()
                                  if get_attn_entry(n).family in ("channel", "branch")])
def test_every_channel_and_branch_layer_is_recordable(name):
    """A new layer of these families cannot forget the recorder: each has a Recordable module of a known kind."""
    entry = get_attn_entry(name)
    layer = create_attn_for_size(name, max(32, entry.min_channels), (8, 8))
    kinds = {m.record_kind for m in layer.modules() if isinstance(m, Recordable)}
    assert kinds and kinds <= set(RECORD_KINDS)
