"""SASA-ResNet: every spatial convolution of the bottlenecks is local attention; parameter counts of Table 1."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import visionattn
from visionattn.complexity import count_params
from visionattn.layers.attention_stem import AttentionStem2d
from visionattn.layers.local_attention import LocalSelfAttention2d

# Ramachandran et al. 2019, Table 1 (ImageNet, 1000 classes): (conv baseline, attention model) in millions
PAPER = {26: (13.7, 10.3), 38: (19.6, 14.1), 50: (25.6, 18.0)}


@pytest.mark.parametrize("depth", sorted(PAPER))
def test_parameter_counts_match_table_1(depth):
    conv = count_params(visionattn.create_model(f"resnet{depth}_sasa_conv")) / 1e6
    attn = count_params(visionattn.create_model(f"sasa_resnet{depth}")) / 1e6
    # within 1%: our attention models carry the 2D relative embeddings (k * d_out per layer) on top
    assert conv == pytest.approx(PAPER[depth][0], rel=0.01)
    assert attn == pytest.approx(PAPER[depth][1], rel=0.01)


def test_every_spatial_conv_is_attention():
    model = visionattn.create_model("sasa_resnet26", num_classes=10, img_size=32)
    layers = [m for m in model.stages.modules() if isinstance(m, LocalSelfAttention2d)]
    assert len(layers) == sum((1, 2, 4, 1))
    assert all(m.kernel_size == 7 and m.heads == 8 for m in layers)
    assert [m.stride for m in layers] == [1, 2, 1, 2, 1, 1, 1, 2]
    spatial = [m for m in model.stages.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    assert spatial == []


def test_forward_backward_small_input():
    torch.manual_seed(0)
    model = visionattn.create_model("sasa_resnet26", num_classes=10, img_size=32)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_border_and_window_are_configurable():
    model = visionattn.create_model("sasa_resnet26", num_classes=10, kernel_size=5, heads=4, border="zero")
    layer = next(m for m in model.modules() if isinstance(m, LocalSelfAttention2d))
    assert (layer.kernel_size, layer.heads, layer.border) == (5, 4, "zero")


@pytest.mark.parametrize("depth", sorted(PAPER))
def test_attention_stem_replaces_the_stem_convolution(depth):
    conv_stem = count_params(visionattn.create_model(f"sasa_resnet{depth}"))
    model = visionattn.create_model(f"sasa_stem_resnet{depth}")
    stem = model.stem.convs[0]
    assert isinstance(stem, AttentionStem2d)
    assert (stem.kernel_size, stem.mixtures, stem.stride, stem.out_channels) == (4, 4, 2, 64)
    assert isinstance(model.stem.pool, nn.MaxPool2d)
    # 7x7x3x64 convolution weights out; q, k, 4 value projections, relative and mixture embeddings in
    assert conv_stem - count_params(model) == 7 * 7 * 3 * 64 - (6 * 64 * 3 + 4 * 64 + 3 * 4 * 64)
    assert [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)] == []


def test_attention_stem_small_input_and_arguments():
    torch.manual_seed(0)
    model = visionattn.create_model("sasa_stem_resnet26", num_classes=10, small_input=True, img_size=16)
    assert model.stem.convs[0].stride == 1
    out = model(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 10)
    with pytest.raises(ValueError, match="stem must be one of"):
        visionattn.create_model("sasa_resnet26", stem="lambda")
    with pytest.raises(ValueError, match="stem_type"):
        visionattn.create_model("sasa_resnet26", stem="attention", stem_type="deep")
