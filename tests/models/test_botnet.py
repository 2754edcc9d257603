"""BoTNet: BoT50's and botnet26t_256's parameter counts and layouts, where the BoT blocks go and the sizes their
tables are built for, forward passes at a second input size, and timm's state dict under our names.

``tests/data/timm_botnet26t_256_layout.json.gz`` holds timm 1.0.31's ``botnet26t_256`` state-dict keys and shapes
in order, recorded (with timm, which the project never imports) by::

    with torch.device("meta"): m = timm.create_model("botnet26t_256")
    {"timm_version": timm.__version__, "botnet26t_256": [[k, list(v.shape)] for k, v in m.state_dict().items()]}

A side-by-side run with timm (its random weights converted by ``convert_timm_botnet_state_dict``, BN statistics
randomised, 2 x 3 x 256 x 256, eval) gave logits within 2.0e-6 of timm's (largest logit 6.3).
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
from visionattn.layers.bot_attention import BoTSelfAttention2d
from visionattn.models.botnet import BoTNet, convert_timm_botnet_state_dict
from visionattn.registry import get_model_entry

RECORD = Path(__file__).resolve().parent.parent / "data" / "timm_botnet26t_256_layout.json.gz"
TIMM_BOTNET26T_PARAMS = 12_488_672  # timm 1.0.31, botnet26t_256, 1000 classes


def _meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return visionattn.create_model(name, **kwargs)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _bot_layers(model: nn.Module) -> dict[str, BoTSelfAttention2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, BoTSelfAttention2d)}


def test_bot50_is_resnet50_with_layer4s_three_3x3_convolutions_replaced():
    model, resnet = _meta("botnet50"), _meta("resnet50")
    bot = _bot_layers(model)
    assert sorted(bot) == ["layer4.0.conv2", "layer4.1.conv2", "layer4.2.conv2"]
    # the strided first block attends at its input's 14x14, then pools; the others at 7x7
    assert [bot[n].spatial_size for n in sorted(bot)] == [(14, 14), (7, 7), (7, 7)]
    assert [bot[n].stride for n in sorted(bot)] == [2, 1, 1]
    conv3x3 = 512 * 512 * 9
    qkv = 3 * 512 * 512
    tables = (27 + 27) * 128 + 2 * (13 + 13) * 128  # dim_head 512 / 4 heads
    assert _count(model) == _count(resnet) - 3 * conv3x3 + 3 * qkv + tables == 20_852_008  # the paper: 20.8M


def test_botnet26t_matches_timms_count_and_layout():
    model = _meta("botnet26t_256")
    assert _count(model) == TIMM_BOTNET26T_PARAMS
    bot = _bot_layers(model)
    assert sorted(bot) == ["layer3.1.conv2", "layer4.0.conv2", "layer4.1.conv2"]
    assert [bot[n].spatial_size for n in sorted(bot)] == [(16, 16), (16, 16), (8, 8)]
    assert isinstance(model.layer3[0].conv2, nn.Conv2d)
    assert [model.conv1[i].out_channels for i in (0, 3, 6)] == [24, 32, 64]  # the tiered stem


def _timm_layout() -> list[tuple[str, tuple[int, ...]]]:
    raw = json.loads(gzip.decompress(RECORD.read_bytes()))
    assert raw["timm_version"] == "1.0.31"
    return [(k, tuple(shape)) for k, shape in raw["botnet26t_256"]]


def test_timms_state_dict_converts_to_ours_key_for_key_in_order():
    timm = _timm_layout()
    converted = list(convert_timm_botnet_state_dict({k: s for k, s in timm}).items())
    ours = [(k, tuple(t.shape)) for k, t in _meta("botnet26t_256").state_dict().items()]
    assert sorted(converted) == sorted(ours)
    # the same order, except that timm registers a block's shortcut first and the torchvision layout last
    def split(layout):
        return ([e for e in layout if ".downsample." not in e[0]], [e for e in layout if ".downsample." in e[0]])
    assert split(converted) == split(ours)


def test_a_converted_state_dict_loads_strictly():
    timm = {k: torch.empty(shape, device="meta") for k, shape in _timm_layout()}
    model = _meta("botnet26t_256")
    model.load_state_dict(convert_timm_botnet_state_dict(timm), strict=True, assign=True)
    with pytest.raises(CheckpointError, match="stem.conv9"):
        convert_timm_botnet_state_dict({"stem.conv9.conv.weight": torch.zeros(1)})


def _sizes_seen(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, int]]:
    return sizes_seen(model, x, _bot_layers(model), 5)


@pytest.mark.parametrize("name, size, seen", [
    ("botnet26t_256", 224, {"layer3.1.conv2": (14, 14), "layer4.0.conv2": (14, 14), "layer4.1.conv2": (7, 7)}),
    ("botnet50", 256, {"layer4.0.conv2": (16, 16), "layer4.1.conv2": (8, 8), "layer4.2.conv2": (8, 8)}),
])
def test_forward_at_another_input_size(name, size, seen):
    """Built for 256 (224), run at 224 (256): the tables are resampled; narrow stages keep the test fast."""
    torch.manual_seed(0)
    model = visionattn.create_model(name, num_classes=5, widths=(8, 8, 16, 16))
    assert _sizes_seen(model, torch.randn(1, 3, size, size)) == seen


def test_small_botnet_runs_on_28_and_32_pixel_images():
    torch.manual_seed(0)
    model = visionattn.create_model("botnet29", num_classes=5)
    assert _sizes_seen(model, torch.randn(2, 1, 28, 28)) == {
        "layer3.0.conv2": (14, 14), "layer3.1.conv2": (7, 7), "layer3.2.conv2": (7, 7)}
    assert _sizes_seen(model, torch.randn(2, 1, 32, 32))["layer3.0.conv2"] == (16, 16)


def test_registered_with_their_configuration():
    for name in ("botnet50", "botnet26t_256", "botnet29"):
        entry = get_model_entry(name)
        assert entry.factory is BoTNet and entry.paper.startswith("Srinivas et al. 2021")
    assert BoTNet.supports_variable_size
    assert get_model_entry("botnet26t_256").defaults["attn_every"] == (2, 1)


def test_botnet_places_its_own_layer():
    with pytest.raises(UsageError, match="attn"):
        BoTNet(attn="se")
    with pytest.raises(UsageError, match="attn_every"):
        BoTNet(attn_stages=(3, 4), attn_every=(2,))
    with pytest.raises(UsageError, match="attn_every"):
        BoTNet(attn_stages=None, attn_every=(2, 1))
