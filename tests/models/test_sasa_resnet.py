"""SASA-ResNet: every spatial convolution of the bottlenecks is local attention; parameter counts of Table 1."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import visionattn
from visionattn.complexity import count_params
from visionattn.errors import UsageError
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
    in_stages = [m for stage in model.stages() for m in stage.modules()]
    layers = [m for m in in_stages if isinstance(m, LocalSelfAttention2d)]
    assert len(layers) == sum((1, 2, 4, 1))
    assert all(m.kernel_size == 7 and m.heads == 8 for m in layers)
    assert [m.stride for m in layers] == [1, 2, 1, 2, 1, 1, 1, 2]
    spatial = [m for m in in_stages if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
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
    stem = model.conv1
    assert isinstance(stem, AttentionStem2d)
    assert (stem.kernel_size, stem.mixtures, stem.stride, stem.out_channels) == (4, 4, 1, 64)
    assert isinstance(model.maxpool, nn.MaxPool2d) and (model.maxpool.kernel_size, model.maxpool.stride) == (4, 4)
    assert isinstance(model.act1, nn.Identity)  # the paper names no ReLU in the stem
    # 7x7x3x64 convolution weights out; q, k, 4 value projections, relative and mixture embeddings in
    assert conv_stem - count_params(model) == 7 * 7 * 3 * 64 - (6 * 64 * 3 + 4 * 64 + 3 * 4 * 64)
    assert [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)] == []


def test_attention_stem_is_attention_batchnorm_then_4x4_max_pool():
    """Section 4.1: the stem attends at full resolution (extent 4), then BatchNorm and a 4 x 4 max pooling."""
    torch.manual_seed(0)
    model = visionattn.create_model("sasa_stem_resnet26", num_classes=10, img_size=32).eval()
    attn, bn = model.conv1, model.bn1
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 2)
        x = torch.randn(2, 3, 18, 17)  # not a multiple of 4: the last pooling window is partial
        y = torch.nn.functional.batch_norm(attn(x), bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                           eps=bn.eps)
        want = torch.stack([torch.stack([y[..., 4 * i:4 * i + 4, 4 * j:4 * j + 4].amax((-2, -1))
                                         for j in range(5)], -1) for i in range(5)], -2)
        out = model.forward_stem(x)
    assert attn(x).shape[-2:] == (18, 17) and out.shape == (2, 64, 5, 5)
    assert (y < 0).any() and (out < 0).any()  # no ReLU between the BatchNorm and the pooling
    torch.testing.assert_close(out, want)


def test_attention_stem_small_input():
    torch.manual_seed(0)
    model = visionattn.create_model("sasa_stem_resnet26", num_classes=10, small_input=True, img_size=16)
    assert model.conv1.stride == 1 and isinstance(model.maxpool, nn.Identity)
    out = model(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 10)


@pytest.mark.bad_input
@pytest.mark.parametrize("kwargs,match", [
    ({"stem": "atention"}, "stem: got 'atention', needed one of 'conv', 'attention'; did you mean 'attention'"),
    ({"stem": "attention", "stem_type": "deep"}, "stem_type='deep', needs 'basic'"),
    ({"border": "msk"}, "border: got 'msk'.*did you mean 'mask'"),
    ({"kernel_size": 6}, "kernel_size must be odd"), ({"heads": 5}, "out_channels must be divisible by heads")])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(UsageError, match=match):
        visionattn.create_model("sasa_resnet26", num_classes=10, **kwargs)
