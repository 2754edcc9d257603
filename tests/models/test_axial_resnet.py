"""Axial-ResNets: parameter counts against the sum over the official code's definitions (csrhddlam/axial-deeplab,
``lib/models/axialnet.py``), where the axial layers go and the sizes their tables are built for, the official block
(expansion 2, no BN after the attention, zero-initialised last BN), forward passes at other input sizes, the
small-image model, and an official state dict (its layout written from the same definitions) loading strictly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import visionattn
from visionattn.errors import UsageError
from visionattn.layers.axial_attention import AxialAttention2d
from visionattn.models.axial_resnet import AxialResNet, convert_official_axial_state_dict
from visionattn.registry import get_model_entry

# the sums below, for 224x224 inputs and 1000 classes
OFFICIAL_COUNTS = {"axial26s": 5_944_936, "axial50s": 11_586_216, "axial50m": 25_179_400, "axial50l": 43_973_480}
OFFICIAL = {"axial26s": ((1, 2, 4, 1), 0.5), "axial50s": ((3, 4, 6, 3), 0.5), "axial50m": ((3, 4, 6, 3), 0.75),
            "axial50l": ((3, 4, 6, 3), 1.0)}


def _pass(c: int, k: int, heads: int) -> int:
    """One official AxialAttention(c, c, groups=heads, kernel_size=k): qkv_transform, bn_qkv, bn_similarity,
    bn_output, relative."""
    return c * 2 * c + 2 * 2 * c + 2 * 3 * heads + 2 * 2 * c + 2 * (c // heads) * (2 * k - 1)


def _block(c_in: int, c: int, k: int, shortcut: bool, heads: int) -> int:
    """One AxialBlock: conv_down, bn1, hight_block, width_block, conv_up, bn2, and the downsample conv + BN."""
    own = c_in * c + 2 * c + 2 * _pass(c, k, heads) + c * 2 * c + 2 * 2 * c
    return own + (c_in * 2 * c + 2 * 2 * c if shortcut else 0)


def _count_from_definitions(layers, widths, stem: int, kernels, heads: int = 8, classes: int = 1000,
                            stem_params: int | None = None) -> int:
    """AxialAttentionNet's parameters: the stem conv (3 x 7 x 7) and BN, the stages as ``_make_layer`` builds them
    (the first block of a stage attends at ``kernels[i]``, the next ones at half that after a stride), the fc."""
    total = 3 * 49 * stem + 2 * stem if stem_params is None else stem_params
    c_in = stem
    for i, (depth, c, k) in enumerate(zip(layers, widths, kernels)):
        stride = 1 if i == 0 else 2
        for j in range(depth):
            total += _block(c_in, c, k, j == 0 and (stride != 1 or c_in != 2 * c), heads)
            c_in = 2 * c
            if j == 0 and stride != 1:
                k //= 2
    return total + c_in * classes + classes


def _official_count(name: str) -> int:
    layers, s = OFFICIAL[name]
    return _count_from_definitions(layers, [int(w * s) for w in (128, 256, 512, 1024)], int(64 * s),
                                   (56, 56, 28, 14))


def _meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return visionattn.create_model(name, **kwargs)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _axial(model: nn.Module) -> dict[str, AxialAttention2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, AxialAttention2d)}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_counts_match_the_official_definitions(name):
    assert _count(_meta(name)) == _official_count(name) == OFFICIAL_COUNTS[name]


def test_the_frozen_similarity_shifts_are_the_only_untrained_parameters():
    from visionattn.complexity import count_params

    model = _meta("axial26s")
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert len(frozen) == 16 and all(n.endswith("bn_similarity.bias") for n in frozen)  # 8 blocks x 2 passes
    assert count_params(model) == OFFICIAL_COUNTS["axial26s"] - 16 * 24 == 5_944_552


def test_axial26s_layout_is_the_official_one():
    model = _meta("axial26s")
    layers = _axial(model)
    names = ["layer1.0", "layer2.0", "layer2.1", "layer3.0", "layer3.1", "layer3.2", "layer3.3", "layer4.0"]
    assert sorted(layers) == [f"{n}.conv2" for n in names]
    # the official kernel_size of each block: the map it attends, a strided block at its input's resolution
    assert [layers[f"{n}.conv2"].spatial_size for n in names] == [(56, 56)] * 2 + [(28, 28)] * 2 + [(14, 14)] * 4
    assert [layers[f"{n}.conv2"].stride for n in names] == [1, 2, 1, 2, 1, 1, 1, 2]
    assert layers["layer3.1.conv2"].height_block.relative.shape == (2 * 256 // 8, 27)
    assert all(layer.heads == 8 and layer.span is None for layer in layers.values())
    for n in names:
        block = model.get_submodule(n)
        assert isinstance(block.bn2, nn.Identity) and isinstance(block.bn3, nn.BatchNorm2d)
        assert block.conv3.out_channels == 2 * block.conv1.out_channels  # expansion 2
    assert model.conv1.weight.shape == (32, 3, 7, 7) and model.num_features == 1024
    assert [f["num_chs"] for f in model.feature_info[1:]] == [128, 256, 512, 1024]


def test_initialisation_is_the_official_one():
    torch.manual_seed(0)
    model = visionattn.create_model("axial26s", widths=(16, 32, 32, 32), num_classes=10)
    for name, block in model.named_modules():
        if hasattr(block, "last_bn"):
            assert not block.last_bn().weight.any(), name  # zero_init_residual=True
    qkv = model.layer1[0].conv2.height_block.qkv_transform.weight  # N(0, 1 / C_in), not the ResNet's He rule
    assert qkv.shape == (32, 16, 1) and abs(qkv.std().item() * 16 ** 0.5 - 1) < 0.15


def _sizes_seen(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, int]]:
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda m, args, n=n: seen.__setitem__(n, tuple(args[0].shape[-2:])))
             for n, m in _axial(model).items()]
    with torch.no_grad():
        out = model.eval()(x)
    for h in hooks:
        h.remove()
    assert out.shape == (x.shape[0], model.num_classes) and torch.isfinite(out).all()
    return seen


def test_forward_at_another_input_size_resamples_the_tables():
    """Built for 224, run at 96: every block attends at its map's size (narrow stages keep the test fast)."""
    torch.manual_seed(0)
    model = visionattn.create_model("axial26s", num_classes=5, widths=(16, 16, 16, 16))
    seen = _sizes_seen(model, torch.randn(1, 3, 96, 96))
    assert seen["layer1.0.conv2"] == seen["layer2.0.conv2"] == (24, 24)
    assert seen["layer3.0.conv2"] == (12, 12) and seen["layer4.0.conv2"] == (6, 6)
    assert model.layer1[0].conv2.height_block.relative.shape[-1] == 2 * 56 - 1  # the parameters keep the built size


def test_a_local_span_works_at_any_size():
    torch.manual_seed(0)
    model = visionattn.create_model("axial26s", num_classes=5, widths=(16, 16, 16, 16), span=7)
    assert model.layer1[0].conv2.width_block.relative.shape == (4, 7)
    assert _sizes_seen(model, torch.randn(2, 3, 64, 80))["layer1.0.conv2"] == (16, 20)


def test_small_model_runs_on_28_and_32_pixel_images_and_its_count_is_the_sum():
    torch.manual_seed(0)
    model = visionattn.create_model("axial29")
    assert model.num_classes == 10 and model.in_chans == 1
    seen = _sizes_seen(model, torch.randn(2, 1, 28, 28))
    assert [seen[f"layer{i}.{j}.conv2"] for i in (1, 2, 3) for j in range(3)] == (
        [(28, 28)] * 4 + [(14, 14)] * 3 + [(7, 7)] * 2)
    assert _sizes_seen(model, torch.randn(2, 1, 32, 32))["layer2.0.conv2"] == (32, 32)
    stem = 1 * 9 * 16 + 2 * 16  # the small-image stem: one 3x3 convolution and its BN
    assert _count(model) == _count_from_definitions((3, 3, 3), (32, 64, 128), 16, (28, 28, 14), heads=4,
                                                    classes=10, stem_params=stem) == 573_962


def _official_layout(layers, s: float) -> dict[str, tuple[int, ...]]:
    """The official AxialAttentionNet's state-dict keys and shapes, written from its definitions."""
    def bn(prefix: str, n: int) -> dict[str, tuple[int, ...]]:
        return {**{f"{prefix}.{p}": (n,) for p in ("weight", "bias", "running_mean", "running_var")},
                f"{prefix}.num_batches_tracked": ()}

    def attention(prefix: str, c: int, k: int) -> dict[str, tuple[int, ...]]:
        return {f"{prefix}.qkv_transform.weight": (2 * c, c, 1), **bn(f"{prefix}.bn_qkv", 2 * c),
                **bn(f"{prefix}.bn_similarity", 24), **bn(f"{prefix}.bn_output", 2 * c),
                f"{prefix}.relative": (2 * c // 8, 2 * k - 1), f"{prefix}.flatten_index": (k * k,)}

    c_in = int(64 * s)
    keys = {"conv1.weight": (c_in, 3, 7, 7), **bn("bn1", c_in)}
    for i, (depth, k) in enumerate(zip(layers, (56, 56, 28, 14))):
        c = int((128, 256, 512, 1024)[i] * s)
        for j in range(depth):
            p = f"layer{i + 1}.{j}"
            keys.update({f"{p}.conv_down.weight": (c, c_in, 1, 1), **bn(f"{p}.bn1", c),
                         **attention(f"{p}.hight_block", c, k), **attention(f"{p}.width_block", c, k),
                         f"{p}.conv_up.weight": (2 * c, c, 1, 1), **bn(f"{p}.bn2", 2 * c)})
            if j == 0:
                keys.update({f"{p}.downsample.0.weight": (2 * c, c_in, 1, 1), **bn(f"{p}.downsample.1", 2 * c)})
                k = k // 2 if i else k
            c_in = 2 * c
    return {**keys, "fc.weight": (1000, c_in), "fc.bias": (1000,)}


@pytest.mark.parametrize("name", ["axial26s", "axial50s"])
def test_an_official_state_dict_loads_strictly(name):
    layout = _official_layout(*OFFICIAL[name])
    official = {f"module.{k}": torch.empty(shape, device="meta") for k, shape in layout.items()}  # DataParallel's
    converted = convert_official_axial_state_dict(official)
    assert "layer1.0.conv2.height_block.relative" in converted and not any("flatten_index" in k for k in converted)
    model = _meta(name)
    model.load_state_dict(converted, strict=True, assign=True)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape)
                                                                 for k, v in model.state_dict().items()}


def test_registered_with_their_configuration():
    for name in ("axial26s", "axial50s", "axial50m", "axial50l", "axial29"):
        entry = get_model_entry(name)
        assert entry.factory is AxialResNet and entry.paper.startswith("Wang et al. 2020")
    assert get_model_entry("axial29").family == "resnet-small"
    assert AxialResNet.supports_variable_size


@pytest.mark.parametrize("kwargs", [{"attn": "se"}, {"block": "basic"}, {"attn_kwargs": {"heads": 2}}])
def test_the_network_places_its_own_layer(kwargs):
    with pytest.raises(UsageError, match=next(iter(kwargs))):
        AxialResNet(**kwargs)


def test_bad_heads_and_span_are_usage_errors():
    with pytest.raises(UsageError, match="heads"):
        visionattn.create_model("axial29", heads=3)
    with pytest.raises(UsageError, match="span"):
        visionattn.create_model("axial29", span=4)


def test_multiply_adds_are_counted_on_the_meta_device():
    # `visionattn info` and benchmarks/model_table.py count on "meta", where torch.autocast does not exist
    from visionattn.complexity import mac_counts

    with torch.device("meta"):
        model = visionattn.create_model("axial29")
        counts = mac_counts(model, torch.empty(2, 1, 28, 28))
    assert counts.total > counts.attention > 0
