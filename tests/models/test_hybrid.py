"""The hybrid ViT: tokens from ResNet stages through a 1x1 projection, then the ViT (ViT paper sec. 3.1)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import visionattn
from visionattn import testing
from visionattn.errors import UsageError
from visionattn.layers.attention_core import AttentionRecorder
from visionattn.models import vit
from visionattn.models.hybrid import HybridVisionTransformer
from visionattn.models.pretrained import FASHION_MNIST_MEAN, IMAGENET_MEAN

TIMM_VIT_SMALL_RESNET50D_S16_224 = 57_531_976  # timm 1.0.31's count for its (legacy) vit_small_resnet50d_s16_224


def _vit_body(dim: int, depth: int, tokens: int, classes: int, mlp_ratio: float) -> int:
    """cls + positions + blocks (2 LayerNorms, qkv, proj, fc1, fc2) + final norm + head."""
    hidden = int(dim * mlp_ratio)
    block = 4 * dim + (3 * dim * dim + 3 * dim) + (dim * dim + dim) + (2 * dim * hidden + hidden + dim)
    return dim + (1 + tokens) * dim + depth * block + 2 * dim + dim * classes + classes


def _count(module: torch.nn.Module, skip: tuple[str, ...] = ()) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if not n.startswith(skip))


def _small(**kwargs) -> HybridVisionTransformer:
    torch.manual_seed(0)
    return visionattn.create_model("vit_r20_28", **kwargs)


def test_tokens_are_the_projected_positions_of_the_stage_map():
    """z_0 = [cls; W_p F(x)_ij + b_p for each position ij, row-major] + E_pos, then the blocks and the norm."""
    model = _small().eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        feat = model.patch_embed.backbone.forward_features(x)  # ResNet-20's last stage: (2, 64, 7, 7)
        assert feat.shape == (2, 64, 7, 7)
        w, b = model.patch_embed.proj.weight[:, :, 0, 0], model.patch_embed.proj.bias
        tokens = torch.stack([feat[:, :, i, j] @ w.T + b for i in range(7) for j in range(7)], dim=1)
        z = torch.cat([model.cls_token.expand(2, -1, -1), tokens], 1) + model.pos_embed
        torch.testing.assert_close(model.embed(x), z)
        for blk in model.blocks:
            z = blk(z)
        torch.testing.assert_close(model.forward_features(x), model.norm(z))
        torch.testing.assert_close(model(x), model.head(model.norm(z)[:, 0]))


def test_parameter_counts_by_hand():
    model = visionattn.create_model("vit_small_r50_s16_224")
    resnet50 = visionattn.create_model("resnet50")
    stages_1_3 = _count(resnet50, skip=("layer4", "fc"))
    assert _count(model.patch_embed.backbone) == stages_1_3 == 8_543_296
    proj = 1024 * 384 + 384
    assert _count(model) == stages_1_3 + proj + _vit_body(384, 12, 14 * 14, 1000, 4.0) == 30_692_264
    small = _small()
    r20 = visionattn.create_model("resnet20")
    assert _count(small) == _count(r20, skip=("fc",)) + 64 * 64 + 64 + _vit_body(64, 4, 49, 10, 2.0) == 413_626


def test_configured_as_timm_s_hybrid_it_has_its_count_and_names():
    model = HybridVisionTransformer(stem_type="deep", stem_width=32, backbone_kwargs={"avg_down": True}, dim=768,
                                    depth=8, heads=8, mlp_ratio=3.0)
    assert _count(model) == TIMM_VIT_SMALL_RESNET50D_S16_224
    keys = model.state_dict()
    for key in ("patch_embed.backbone.conv1.0.weight", "patch_embed.backbone.layer3.5.bn3.running_var",
                "patch_embed.proj.weight", "cls_token", "pos_embed", "blocks.7.mlp.fc2.bias", "norm.weight",
                "head.weight"):
        assert key in keys, key
    assert not any(k.startswith("patch_embed.backbone.layer4") or ".fc." in k for k in keys)
    assert model.pretrained_cfg.first_conv == "patch_embed.backbone.conv1.0"


def test_other_image_sizes_resample_the_positions_unless_strict():
    model = _small().eval()
    x = torch.randn(2, 1, 32, 36)  # 8x9 tokens
    with torch.no_grad():
        assert model.forward_features(x).shape == (2, 1 + 8 * 9, 64)
        assert model(x).shape == (2, 10)
        assert model(torch.randn(1, 1, 27, 29)).shape == (1, 10)  # 7x8 (ceil) tokens, no padding needed
    assert HybridVisionTransformer.supports_variable_size
    strict = _small(strict_img_size=True)
    with pytest.raises(UsageError, match="strict_img_size"):
        strict(x)


def test_convolutions_he_and_the_rest_the_vits_initialisation():
    model = _small()
    testing.check_he_init(model)
    assert not model.patch_embed.proj.bias.any()
    assert abs(model.pos_embed.std().item() / 0.02 - 1) < 0.2
    assert abs(model.blocks[0].attn.qkv.weight.std().item() / 0.02 - 1) < 0.1


def test_the_vits_patch_embedding_is_never_built(monkeypatch):
    """The CNN stages are the embedding: no p x p PatchEmbed is made (and its initialisation drawn) to be thrown
    away, and the model is initialised once."""
    built, inits = [], []
    monkeypatch.setattr(vit.PatchEmbed, "__init__", lambda self, *a: built.append(a) or nn.Module.__init__(self))
    original = vit.VisionTransformer.init_weights
    monkeypatch.setattr(vit.VisionTransformer, "init_weights", lambda self: inits.append(1) or original(self))
    model = _small()
    assert not built and len(inits) == 1
    assert not any(isinstance(m, vit.PatchEmbed) for m in model.modules())


def test_model_api():
    model = _small()
    assert model.num_features == 64 and model.get_classifier() is model.head
    x = torch.randn(2, 1, 28, 28)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 64)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.pretrained_cfg.num_classes == 3
    cfg = model.pretrained_cfg
    assert cfg.input_size == (1, 28, 28) and cfg.mean == FASHION_MNIST_MEAN and cfg.classifier == "head"
    assert cfg.first_conv == "patch_embed.backbone.conv1"
    assert visionattn.create_model("vit_small_r50_s16_224").pretrained_cfg.mean == IMAGENET_MEAN
    rows = [name for name, _ in model.info_groups()]
    assert rows[:5] == ["backbone.stem", "backbone.layer1", "backbone.layer2", "backbone.layer3", "embed"]
    assert rows[-1] == "head" and "blocks.3" in rows


def test_recorder_sees_every_block():
    model = _small().eval()
    with AttentionRecorder(model) as rec, torch.no_grad():
        model(torch.randn(2, 1, 28, 28))
    assert sorted(rec.weights) == [f"blocks.{i}.attn.attend" for i in range(4)]
    assert rec.weights["blocks.0.attn.attend"][0].shape == (2, 4, 50, 50)


def test_backbone_arguments():
    model = _small(backbone_kwargs={"attn": "se", "attn_kwargs": {"rd_ratio": 0.25}})
    assert type(model.patch_embed.backbone.layer1[0].se).__name__ == "SqueezeExcite"
    with pytest.raises(UsageError, match="backbone_kwargs: 'in_chans'"):
        _small(backbone_kwargs={"in_chans": 3})
    with pytest.raises(UsageError, match="layers"):
        _small(layers=())


def test_features_only_gives_the_blocks_patch_tokens_as_maps():
    torch.manual_seed(0)
    feats = visionattn.create_model("vit_r20_28", features_only=True, out_indices=(1, -1)).eval()
    torch.manual_seed(0)
    model = _small().eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        maps = feats(x)
        z = model.embed(x)
        for blk in model.blocks:
            z = blk(z)
    assert [tuple(m.shape) for m in maps] == [(2, 64, 7, 7)] * 2
    torch.testing.assert_close(maps[1], z[:, 1:].transpose(1, 2).reshape(2, 64, 7, 7))
