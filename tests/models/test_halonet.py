"""HaloNet: halonet26t's and halonet50ts's parameter counts and layouts against timm's (recorded), where the halo
layers go and with which heads, halos and strides, SiLU in halonet50ts, strict loads of timm's state dicts through
the converter BoTNet shares, forward passes at other input sizes, and the small-image HaloNet.

``tests/data/timm_halonet_layout.json.gz`` holds timm 1.0.31's state-dict keys and shapes of both models, recorded
by ``benchmarks/record_timm_layout.py`` (with timm, which the project never imports). Side by side with timm
(``benchmarks/timm_token_models.py``: timm's random weights converted, BN statistics randomised, 2 x 3 x 256 x 256,
eval, float32), ``mask_padding=False`` gave logits within 7.2e-6 of timm's for halonet26t (largest logit 8.9) and
4.1e-8 for halonet50ts (largest 0.16).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import visionattn
from tests.models.sizes import sizes_seen
from visionattn.errors import CheckpointError, UsageError
from visionattn.layers.halo_attention import HaloAttention2d
from visionattn.models.botnet import convert_timm_botnet_state_dict
from visionattn.models.byoanet import convert_timm_byoanet_state_dict
from visionattn.models.halonet import HaloNet, convert_timm_halonet_state_dict
from visionattn.registry import get_model_entry

RECORD = Path(__file__).resolve().parent.parent / "data" / "timm_halonet_layout.json.gz"
# timm 1.0.31, 1000 classes; timm's model table gives 12.48M and 22.73M
TIMM_PARAMS = {"halonet26t": 12_480_288, "halonet50ts": 22_733_280}
PUBLISHED_M = {"halonet26t": 12.48, "halonet50ts": 22.73}


def _meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return visionattn.create_model(name, **kwargs)


def _halo_layers(model: nn.Module) -> dict[str, HaloAttention2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, HaloAttention2d)}


@pytest.mark.parametrize("name", sorted(TIMM_PARAMS))
def test_parameter_counts_are_timms(name):
    count = sum(p.numel() for p in _meta(name).parameters())
    assert count == TIMM_PARAMS[name]
    assert abs(count / 1e6 - PUBLISHED_M[name]) / PUBLISHED_M[name] < 1e-3


def test_halonet26t_places_timms_layers():
    layers = _halo_layers(_meta("halonet26t"))
    assert sorted(layers) == ["layer3.1.conv2", "layer4.0.conv2", "layer4.1.conv2"]
    assert {(m.heads, m.block_size, m.halo_size) for m in layers.values()} == {(8, 8, 2)}
    # the strided first block of stage 4: queries at stride 2, 4 x 4 per block, no pooling
    first = layers["layer4.0.conv2"]
    assert (first.block_stride, first.query_block, first.pool_stride) == (2, 4, 1)
    model = _meta("halonet26t")
    assert [model.conv1[i].out_channels for i in (0, 3, 6)] == [24, 32, 64]  # the tiered stem
    assert not any(isinstance(m, nn.SiLU) for m in model.modules())


def test_halonet50ts_places_timms_layers_with_silu_everywhere():
    model = _meta("halonet50ts")
    layers = _halo_layers(model)
    assert sorted(layers) == ["layer2.3.conv2", "layer3.1.conv2", "layer3.3.conv2", "layer3.5.conv2",
                              "layer4.1.conv2"]
    assert layers["layer2.3.conv2"].heads == 4 and {m.heads for n, m in layers.items() if "layer2" not in n} == {8}
    assert {(m.block_size, m.halo_size, m.stride) for m in layers.values()} == {(8, 3, 1)}
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    silu = [n for n, m in model.named_modules() if isinstance(m, nn.SiLU)]
    assert {"conv1.2", "conv1.5", "act1", "layer1.0.act1", "layer2.3.act2", "layer4.2.act3"} <= set(silu)


def _timm_layout(name: str) -> list[tuple[str, tuple[int, ...]]]:
    raw = json.loads(gzip.decompress(RECORD.read_bytes()))
    assert raw["timm_version"] == "1.0.31"
    return [(k, tuple(shape)) for k, shape in raw[name]]


@pytest.mark.parametrize("name", sorted(TIMM_PARAMS))
def test_timms_state_dict_converts_to_ours_and_loads_strictly(name):
    timm = _timm_layout(name)
    converted = convert_timm_halonet_state_dict({k: torch.empty(s, device="meta") for k, s in timm})
    model = _meta(name)
    assert sorted((k, tuple(v.shape)) for k, v in converted.items()) == sorted(
        (k, tuple(v.shape)) for k, v in model.state_dict().items())
    model.load_state_dict(converted, strict=True, assign=True)
    assert converted["layer4.1.conv2.rel_pos.height_rel"].shape == (2 * (8 + 2 * _halo(name)) - 1,
                                                                      512 // 8)


def _halo(name: str) -> int:
    return 2 if name == "halonet26t" else 3


def test_one_converter_for_botnet_and_halonet():
    key = "stages.3.0.self_attn.pos_embed.width_rel"
    value = torch.zeros(1)
    for convert in (convert_timm_botnet_state_dict, convert_timm_halonet_state_dict, convert_timm_byoanet_state_dict):
        assert list(convert({key: value})) == ["layer4.0.conv2.rel_pos.width_rel"]
    assert list(convert_timm_botnet_state_dict({"stages.2.1.self_attn.qkv.weight": value})) == [
        "layer3.1.conv2.qkv.weight"]
    with pytest.raises(CheckpointError, match="convert_timm_halonet_state_dict.*stem.conv9"):
        convert_timm_halonet_state_dict({"stem.conv9.conv.weight": value})


def _sizes_seen(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, int]]:
    return sizes_seen(model, x, _halo_layers(model), 5)


@pytest.mark.parametrize("size, seen", [
    (224, {"layer3.1.conv2": (14, 14), "layer4.0.conv2": (14, 14), "layer4.1.conv2": (7, 7)}),
    (200, {"layer3.1.conv2": (13, 13), "layer4.0.conv2": (13, 13), "layer4.1.conv2": (7, 7)}),
])
def test_halonet26t_runs_at_sizes_that_are_no_multiple_of_the_block(size, seen):
    """timm asserts multiples of 8 at every halo layer; narrow stages keep the test fast."""
    torch.manual_seed(0)
    model = visionattn.create_model("halonet26t", num_classes=5, widths=(8, 8, 16, 16))
    assert _sizes_seen(model, torch.randn(1, 3, size, size)) == seen


def test_small_halonet_runs_on_28_and_32_pixel_images():
    torch.manual_seed(0)
    model = visionattn.create_model("halonet29", num_classes=5)
    layers = _halo_layers(model)
    assert {(m.heads, m.block_size, m.halo_size) for m in layers.values()} == {(4, 4, 2)}
    assert (layers["layer2.0.conv2"].block_stride, layers["layer3.0.conv2"].block_stride) == (2, 2)
    assert _sizes_seen(model, torch.randn(2, 1, 28, 28)) == {
        "layer2.0.conv2": (28, 28), "layer2.1.conv2": (14, 14), "layer2.2.conv2": (14, 14),
        "layer3.0.conv2": (14, 14), "layer3.1.conv2": (7, 7), "layer3.2.conv2": (7, 7)}
    assert _sizes_seen(model, torch.randn(2, 1, 32, 32))["layer3.1.conv2"] == (8, 8)
    # each 3x3 convolution of stages 2 and 3 (32 and 64 channels) replaced by q, kv and two tables of 2 * 8 - 1
    plain = visionattn.create_model("resnet20", block="bottleneck", num_classes=5)
    swaps = [(c * c * 9, c * c + c * 2 * c + 2 * 15 * (c // 4)) for c in (32, 64)]
    count = sum(p.numel() for p in plain.parameters()) + sum(3 * (halo - conv) for conv, halo in swaps)
    assert sum(p.numel() for p in model.parameters()) == count == 221_541


def test_registered_with_their_configuration():
    for name in ("halonet26t", "halonet50ts", "halonet29"):
        entry = get_model_entry(name)
        assert entry.factory is HaloNet and entry.paper.startswith("Vaswani et al. 2021")
    assert HaloNet.supports_variable_size
    assert get_model_entry("halonet50ts").defaults["attn_every"] == (4, 2, 2)


def test_mask_padding_reaches_every_layer_and_halonet_places_its_own_layer():
    assert {m.mask_padding for m in _halo_layers(_meta("halonet50ts", mask_padding=False)).values()} == {False}
    with pytest.raises(UsageError, match="attn"):
        HaloNet(attn="se")
    with pytest.raises(UsageError, match="act_layer"):
        HaloNet(act_layer="swishh")
