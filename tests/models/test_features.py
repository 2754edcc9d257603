"""The timm model API: feature_info, features_only with out_indices, forward_head, reset_classifier."""

from __future__ import annotations

import pytest
import torch

import visionattn
from visionattn.errors import UsageError
from visionattn.models.features import FeatureNet


def _meta(name: str, **kwargs):
    with torch.device("meta"):
        return visionattn.create_model(name, **kwargs)


@pytest.mark.parametrize("name,channels,reductions", [
    ("resnet50", [64, 256, 512, 1024, 2048], [2, 4, 8, 16, 32]),
    ("resnet18", [64, 64, 128, 256, 512], [2, 4, 8, 16, 32]),
    ("resnest50", [64, 256, 512, 1024, 2048], [2, 4, 8, 16, 32]),
    ("sasa_stem_resnet26", [64, 256, 512, 1024, 2048], [1, 4, 8, 16, 32]),  # the attention stem: full resolution
    ("resnet20", [16, 16, 32, 64], [1, 1, 2, 4]),
])
def test_feature_info_lists_the_stem_and_every_stage(name, channels, reductions):
    model = _meta(name)
    assert [f["num_chs"] for f in model.feature_info] == channels
    assert [f["reduction"] for f in model.feature_info] == reductions
    assert model.feature_info[0]["module"] == "act1" and model.num_features == channels[-1]


def test_features_only_returns_the_chosen_stages():
    torch.manual_seed(0)
    net = visionattn.create_model("resnet18", features_only=True, out_indices=(1, -1)).eval()
    assert isinstance(net, FeatureNet) and net.out_indices == (1, 4)
    assert net.channels() == [64, 512] and net.reductions() == [4, 32]
    maps = net(torch.randn(2, 3, 70, 64))
    assert [tuple(m.shape) for m in maps] == [(2, 64, 18, 16), (2, 512, 3, 2)]
    assert not hasattr(net, "fc") and not hasattr(net, "global_pool")  # cut after the last stage asked for


def test_features_only_keeps_the_module_names():
    full = _meta("se_resnet50")
    net = _meta("se_resnet50", features_only=True, out_indices=(0, 1, 2))
    keys = list(net.state_dict())
    assert keys == [k for k in full.state_dict() if k.split(".")[0] in ("conv1", "bn1", "layer1", "layer2")]


def test_features_match_the_networks_own_stages():
    torch.manual_seed(0)
    model = visionattn.create_model("cbam_resnet20").eval()
    net = FeatureNet(model, out_indices=(3,))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(net(x)[0], model.forward_features(x))


def test_forward_head_and_reset_classifier():
    torch.manual_seed(0)
    model = visionattn.create_model("resnet20").eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        torch.testing.assert_close(pooled, features.mean(dim=(2, 3)))
        torch.testing.assert_close(model.forward_head(features), model.fc(pooled))
        model.reset_classifier(3)
        assert model(x).shape == (2, 3) and model.get_classifier().out_features == 3
        assert model.pretrained_cfg.num_classes == 3
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pooled)


@pytest.mark.bad_input
@pytest.mark.parametrize("out_indices,match", [
    ((5,), r"out_indices: got 5, needed an int in \[-5, 4\]"),
    ((1, 1), "names one output twice"),
    ((), "non-empty sequence of ints"),
    ("12", "non-empty sequence of ints"),
    ((1.0,), r"out_indices: got 1.0"),
])
def test_bad_out_indices(out_indices, match):
    with pytest.raises(UsageError, match=match):
        _meta("resnet18", features_only=True, out_indices=out_indices)


@pytest.mark.bad_input
def test_a_wrong_channel_count_is_a_clear_error():
    net = visionattn.create_model("resnet20", features_only=True)
    with pytest.raises(UsageError, match="expects images"):
        net(torch.randn(1, 3, 28, 28))


def test_vit_feature_info_lists_the_blocks_at_the_patch_stride():
    model = _meta("vit_small_patch16_224")
    assert [f["module"] for f in model.feature_info] == [f"blocks.{i}" for i in range(12)]
    assert {(f["num_chs"], f["reduction"]) for f in model.feature_info} == {(384, 16)}


def test_vit_features_only_gives_the_blocks_patch_tokens_as_maps():
    torch.manual_seed(0)
    model = visionattn.create_model("vit_patch4_28", depth=4).eval()
    net = FeatureNet(model, out_indices=(1, -1))
    assert net.channels() == [64, 64] and net.reductions() == [4, 4]
    # the model's own names, cut after the last block asked for (no norm, no head)
    keys = list(net.state_dict())
    assert keys == [k for k in model.state_dict() if not k.startswith(("blocks.4.", "norm.", "head."))]
    assert not hasattr(net, "head") and len(net.blocks) == 4
    x = torch.randn(2, 1, 30, 30)  # padded to 32: an 8x8 grid
    with torch.no_grad():
        maps = net(x)
        z = model.embed(x)
        outs = [z := block(z) for block in model.blocks]
    assert [tuple(m.shape) for m in maps] == [(2, 64, 8, 8)] * 2
    for m, tokens in zip(maps, (outs[1], outs[3])):
        torch.testing.assert_close(m, tokens[:, 1:].transpose(1, 2).reshape(2, 64, 8, 8))
    with torch.no_grad():  # the network itself is unchanged
        assert model(x).shape == (2, 10) and len(model.blocks) == 4


def test_vit_features_only_from_create_model_loads_the_same_weights():
    torch.manual_seed(0)
    full = visionattn.create_model("vit_patch4_28", depth=3)
    net = visionattn.create_model("vit_patch4_28", depth=3, features_only=True, out_indices=(0,))
    net.load_state_dict({k: v for k, v in full.state_dict().items() if k in net.state_dict()}, strict=True)
    assert list(net.state_dict()) == ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
                                      *[k for k in full.state_dict() if k.startswith("blocks.0.")]]
