"""Where the plug puts each layer, the ResNet options, the small-image versions and the argument checks.

Structure is checked on models built on the ``meta`` device (no memory, no arithmetic); forward passes use
the small-image models.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import visionattn
from visionattn.errors import UsageError
from visionattn.layers import (
    BottleneckAttention,
    CondConv2d,
    DynamicConv2d,
    GatherExcite,
    SelectiveKernel,
    SplitAttention,
    SqueezeExcite,
)
from visionattn.models import BasicBlock, Bottleneck, ResNet


def _meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return visionattn.create_model(name, **kwargs)


def _blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]


def _located(model: nn.Module, kind: type) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, kind)]


def test_se_sits_in_every_block_before_the_addition():
    model = _meta("se_resnet50")
    blocks = _blocks(model)
    assert len(blocks) == 16
    assert all(isinstance(b.se, SqueezeExcite) for b in blocks)
    assert len(_located(model, SqueezeExcite)) == 16


def test_bam_sits_only_at_the_ends_of_the_first_stages():
    assert _located(_meta("bam_resnet50"), BottleneckAttention) == [
        "layer1.attn", "layer2.attn", "layer3.attn"]
    assert _located(_meta("bam_resnet20"), BottleneckAttention) == ["layer1.attn", "layer2.attn"]


def test_attn_where_overrides_the_papers_placement():
    model = _meta("resnet50", attn="se", attn_where="stage")
    assert _located(model, SqueezeExcite) == ["layer1.attn", "layer2.attn", "layer3.attn"]


def test_sknet_replaces_each_3x3_with_a_grouped_selective_kernel():
    model = _meta("sknet50")
    for block in _blocks(model):
        sk = block.conv2
        assert isinstance(sk, SelectiveKernel)  # no BN/ReLU added: SK brings its own
        assert [p.conv.groups for p in sk.paths] == [32, 32]
        assert [p.conv.dilation for p in sk.paths] == [(1, 1), (2, 2)]
    assert len(_located(model, SelectiveKernel)) == 16


def test_resnest_recipe():
    model = _meta("resnest50")
    convs = [m for m in model.conv1 if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64]  # deep stem
    pooled = 0
    for block in _blocks(model):
        splat = block.conv2
        assert isinstance(splat, SplitAttention) and splat.radix == 2 and splat.groups == 1
        assert isinstance(block.bn2, nn.Identity) and isinstance(block.act2, nn.Identity)  # SplAt has its own
        if isinstance(block.downsample, nn.Sequential) and isinstance(block.downsample[0], nn.AvgPool2d):
            pooled += 1  # average-pool shortcut (ResNet-D) in each strided block ...
            assert isinstance(block.avd, nn.AvgPool2d)  # ... and avd: a 3x3 pool after the SplAt
    assert pooled == 3


@pytest.mark.parametrize("name,kind", [("condconv_resnet50", CondConv2d), ("dynamic_conv_resnet18", DynamicConv2d)])
def test_expert_convs_replace_every_block_conv_but_not_stem_or_shortcut(name, kind):
    model = _meta(name)
    blocks = _blocks(model)
    per_block = 3 if isinstance(blocks[0], Bottleneck) else 2
    assert len(_located(model, kind)) == per_block * len(blocks)
    assert not isinstance(model.conv1, kind)
    assert all(not isinstance(m, kind) for b in blocks for m in b.downsample.modules())


def test_ge_theta_global_gather_spans_each_blocks_feature_map():
    for name, img, sizes in [("ge_theta_resnet50", 224, [56, 28, 14, 7]), ("ge_theta_resnet20", 28, [28, 14, 7])]:
        model = _meta(name, img_size=img)
        assert all(isinstance(b.se, GatherExcite) for b in _blocks(model))
        kernels = sorted({b.se.gather[0].kernel_size for b in _blocks(model)}, reverse=True)
        assert kernels == [(s, s) for s in sizes]


def test_ge_theta_rejects_an_input_of_another_size():
    model = visionattn.create_model("ge_theta_resnet20").eval()
    model(torch.randn(1, 1, 28, 28))
    with pytest.raises(ValueError, match="spatial_size"):
        model(torch.randn(1, 1, 32, 32))


def test_small_image_versions_default_to_fashion_mnist_and_take_cifar():
    model = visionattn.create_model("cbam_resnet20").eval()
    assert model.input_size == (1, 28, 28) and model.num_classes == 10
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert [f["reduction"] for f in model.feature_info] == [1, 1, 2, 4]  # act1, then the stages
    cifar = visionattn.create_model("resnest29", in_chans=3, img_size=32, num_classes=100).eval()
    assert cifar(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert isinstance(cifar.maxpool, nn.Identity)


def test_resnet20_is_the_cifar_size():
    n = sum(p.numel() for p in visionattn.create_model("resnet20", in_chans=3).parameters())
    assert 0.265e6 < n < 0.275e6  # He et al. 2016 sec. 4.2: 0.27M


def test_imagenet_stages_and_features():
    model = _meta("resnet50d")
    assert [f["module"] for f in model.feature_info] == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert [f["num_chs"] for f in model.feature_info] == [64, 256, 512, 1024, 2048]
    assert [f["reduction"] for f in model.feature_info] == [2, 4, 8, 16, 32]
    assert model.num_features == 2048
    features = visionattn.create_model("resnet18", num_classes=0).eval()(torch.randn(1, 3, 64, 64))
    assert features.shape == (1, 512)


def test_zero_init_last_zeroes_each_branchs_last_bn():
    model = visionattn.create_model("se_resnet20", zero_init_last=True)
    assert all(not b.last_bn().weight.detach().any() for b in _blocks(model))
    x = torch.randn(2, 1, 28, 28)
    model.eval()
    assert torch.isfinite(model(x)).all()


@pytest.mark.bad_input
@pytest.mark.parametrize("kwargs,match", [
    ({"block": "dense"}, "block: got 'dense', needed one of 'basic', 'bottleneck'"),
    ({"block": "basik"}, "block: got 'basik'.*did you mean 'basic'"),
    ({"layers": (2, 2), "widths": (64,)}, "one entry per stage"),
    ({"layers": (), "widths": ()}, "one entry per stage"),
    ({"layers": 3}, "layers must be a sequence of ints, one per stage, got 3"),
    ({"layers": (3, 0, 3, 3)}, "layers must be an integer >= 1, got 0"),
    ({"widths": (64, 128, 256, 0)}, "widths must be an integer >= 1, got 0"),
    ({"widths": "64"}, "widths must be a sequence of ints"),
    ({"attn": "nope"}, "unknown attention layer name 'nope'"),
    ({"attn": "sse"}, "unknown attention layer name 'sse'; did you mean 'se'"),
    ({"attn": "se", "attn_where": "conv"}, "attn_where='conv' does not fit 'se'"),
    ({"attn": "sk", "attn_where": "block"}, "attn_where='block' does not fit 'sk'"),
    ({"attn": "bam", "attn_where": "conv"}, "attn_where='conv' does not fit 'bam'"),
    ({"attn_kwargs": {"rd_ratio": 0.5}}, "need an attn layer"),
    ({"attn_where": "block"}, "need an attn layer"),
    ({"attn": "se", "attn_where": "everywhere"}, "attn_where: got 'everywhere', needed one of 'block', 'stage', "
                                                 "'after', 'conv'"),
    ({"attn": "se", "attn_where": "blok"}, "attn_where: got 'blok'.*did you mean 'block'"),
    ({"attn": "se", "attn_kwargs": {"rd_ration": 0.5}}, "attn_kwargs: 'se' takes no keyword 'rd_ration'; did you "
                                                        "mean 'rd_ratio'"),
    ({"attn": "se", "attn_kwargs": [("rd_ratio", 0.5)]}, "attn_kwargs must be a mapping"),
    ({"attn": "se", "attn_kwargs": {"channels": 8}}, "attn_kwargs: 'channels' is set by the network"),
    ({"attn": "sk", "attn_kwargs": {"stride": 2}}, "attn_kwargs: 'stride' is set by the network"),
    ({"attn": "condconv", "attn_kwargs": {"kernel_size": 5}}, "attn_kwargs: 'kernel_size' is set by the network"),
    ({"attn": "se", "attn_kwargs": {"rd_ratio": 0}}, "rd_ratio must be a finite number > 0, got 0"),
    ({"attn": "eca", "attn_stage_kwargs": [{"kernel_size": 3}] * 3}, "attn_stage_kwargs needs one mapping per "
                                                                      "stage .4., got 3"),
    ({"attn": "eca", "attn_stage_kwargs": {"kernel_size": 3}}, "attn_stage_kwargs must be a list of mappings"),
    ({"attn": "eca", "attn_stage_kwargs": [{"kernel": 3}] * 4}, "attn_stage_kwargs: 'eca' takes no keyword "
                                                                "'kernel'; did you mean 'kernel_size'"),
    ({"attn_stage_kwargs": [{}] * 4}, "need an attn layer"),
    ({"stem_type": "wide"}, "stem_type: got 'wide', needed one of 'basic', 'deep'"),
    ({"num_classes": -1}, "num_classes must be an integer >= 0, got -1"),
    ({"num_classes": 2.5}, "num_classes must be an integer >= 0, got 2.5"),
    ({"in_chans": 0}, "in_chans must be an integer >= 1, got 0"),
    ({"img_size": (224, -3)}, "img_size must be an integer >= 1, got -3"),
    ({"img_size": None}, "img_size must be an int or a pair of ints, got None"),
    ({"drop_rate": 1.0}, r"drop_rate: got 1.0, needed a value in \[0.0, 1.0\)"),
    ({"drop_rate": "0.1"}, "drop_rate: got '0.1', needed a finite number"),
    ({"drop_rate": float("nan")}, "drop_rate: got nan, needed a finite number"),
    ({"zero_init_last": "yes"}, "zero_init_last must be True or False, got 'yes'"),
    ({"small_input": 1}, "small_input must be True or False, got 1"),
    ({"groups": 0}, "groups must be an integer >= 1, got 0"),
    ({"base_width": 0}, "base_width must be an integer >= 1, got 0"),
    ({"stem_width": 0}, "stem_width must be an integer >= 1, got 0"),
    ({"block": "basic", "groups": 32}, "BasicBlock supports groups=1"),
    ({"avd": True, "stride_in_1x1": True}, "avd and stride_in_1x1 both place the block's stride"),
])
def test_bad_arguments_raise_usage_errors(kwargs, match):
    with pytest.raises(UsageError, match=match):
        with torch.device("meta"):
            ResNet(**kwargs)


def test_attn_stage_kwargs_set_each_stage():
    model = _meta("resnet50", attn="eca", attn_stage_kwargs=[{"kernel_size": k} for k in (3, 5, 7, 9)])
    for stage, k in zip(model.stages(), (3, 5, 7, 9)):
        assert {b.se.kernel_size for b in stage} == {k}
    bam = _meta("resnet50", attn="bam", attn_stage_kwargs=[{"dilation": d} for d in (1, 2, 3, 4)])
    assert [m.spatial.body[3].dilation for m in bam.modules() if isinstance(m, BottleneckAttention)] == [
        (1, 1), (2, 2), (3, 3)]  # the stage-end layer takes its stage's keywords too


def test_wrong_input_channels_raise_a_value_error():
    model = visionattn.create_model("resnet20")
    with pytest.raises(ValueError, match="in_chans"):
        model(torch.randn(1, 3, 28, 28))


def test_a_block_class_of_ones_own():
    """``block`` takes a class: a subclass of the library's block keeps the plug's placements."""
    class ScaledBlock(BasicBlock):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 0.5 * super().forward(x)

    model = ResNet(ScaledBlock, (1, 1), (8, 16), num_classes=3, small_input=True, attn="se").eval()
    assert [type(m) for m in (model.layer1[0], model.layer2[0])] == [ScaledBlock, ScaledBlock]
    assert type(model.layer1[0].se).__name__ == "SqueezeExcite"
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3)
    with pytest.raises(UsageError, match=r"block: got 3, needed one of basic, bottleneck or an nn.Module"):
        ResNet(3, (1,), (8,))
    with pytest.raises(UsageError, match="block: got 'basik'.*did you mean 'basic'"):
        ResNet("basik", (1,), (8,))
