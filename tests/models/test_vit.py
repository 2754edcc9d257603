"""The vision transformer: eq. 1-4 against hand-written math, timm's layout and counts, other image sizes.

Formula tests run a tiny ViT (8x8 images of 2 channels, 4x4 patches, width 8, 2 heads); the timm layout is checked
against ``tests/data/timm_vit_state_dict_keys.json.gz``, recorded from timm 1.0.31 by
``benchmarks/record_timm_layout.py`` (``--check-vit`` there also compares the outputs with timm's: equal).
"""

from __future__ import annotations

import gzip
import json
import math
from functools import cache
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import save_file

import visionattn
from visionattn.errors import UsageError
from visionattn.layers.transformer import TransformerBlock
from visionattn.models.position_embedding import resample_pos_embed
from visionattn.models.pretrained import FASHION_MNIST_MEAN, FASHION_MNIST_STD, check_pretrained, load_pretrained
from visionattn.models.vit import VisionTransformer
from visionattn.models.vit_zoo import VIT_PARAMS, VIT_TIMM_NAMES
from visionattn.registry import get_model_entry

RECORD = Path(__file__).resolve().parent.parent / "data" / "timm_vit_state_dict_keys.json.gz"
ISSUE_PARAMS = {"vit_tiny_patch16_224": 5.72e6, "vit_small_patch16_224": 22.05e6, "vit_base_patch16_224": 86.57e6,
                "vit_large_patch16_224": 304.33e6}


def _tiny(**kwargs) -> VisionTransformer:
    torch.manual_seed(0)
    config = {"img_size": 8, "patch_size": 4, "in_chans": 2, "num_classes": 3, "dim": 8, "depth": 2, "heads": 2,
              **kwargs}
    model = VisionTransformer(**config).eval()
    with torch.no_grad():  # LayerNorms and biases off their initial values, so that a skipped one would show
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _meta(name: str, **kwargs):
    with torch.device("meta"):
        return visionattn.create_model(name, **kwargs)


def _layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-6) * norm.weight + norm.bias


@cache
def _record() -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    raw = json.loads(gzip.decompress(RECORD.read_bytes()))
    return {name: [(key, tuple(shape)) for key, shape in entries] for name, entries in raw.items()}


# --- registration, counts, timm's layout -------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(VIT_PARAMS))
def test_parameter_counts_are_timms(name):
    count = sum(p.numel() for p in _meta(name).parameters())
    assert count == VIT_PARAMS[name]
    assert abs(count / ISSUE_PARAMS[name] - 1) < 1e-3


def test_the_registered_configurations():
    assert set(visionattn.list_models(family="vit")) == {*VIT_PARAMS, "vit_patch4_28"}
    tiny = get_model_entry("vit_tiny_patch16_224").defaults
    assert (tiny["dim"], tiny["depth"], tiny["heads"], tiny["patch_size"], tiny["img_size"]) == (192, 12, 3, 16, 224)
    small = visionattn.create_model("vit_patch4_28")
    assert small.input_size == (1, 28, 28) and small.grid == (7, 7) and small.pos_embed.shape == (1, 50, 64)
    assert small.global_pool == "token" and small.num_classes == 10
    cfg = small.pretrained_cfg
    assert (cfg.mean, cfg.std, cfg.first_conv, cfg.classifier) == (FASHION_MNIST_MEAN, FASHION_MNIST_STD,
                                                                   "patch_embed.proj", "head")
    big = _meta("vit_base_patch16_224").pretrained_cfg
    assert (big.mean, big.std, big.crop_pct, big.interpolation) == ((0.5,) * 3, (0.5,) * 3, 0.9, "bicubic")
    assert big.timm_name == "vit_base_patch16_224"


def test_the_record_covers_exactly_the_timm_names():
    assert sorted(_record()) == sorted(VIT_TIMM_NAMES.values())


@pytest.mark.parametrize("ours, theirs", sorted(VIT_TIMM_NAMES.items()))
def test_our_state_dict_has_timms_keys_and_shapes_in_order(ours, theirs):
    got = [(key, tuple(t.shape)) for key, t in _meta(ours).state_dict().items()]
    want = _record()[theirs]
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not extra, f"missing {missing[:5]}, extra {extra[:5]}"
    assert got == want


def test_a_checkpoint_in_timms_layout_loads_strictly_and_round_trips():
    gen = torch.Generator().manual_seed(0)
    checkpoint = {key: torch.randn(shape, generator=gen) for key, shape in _record()["vit_tiny_patch16_224"]}
    model = visionattn.create_model("vit_tiny_patch16_224", depth=12)
    model.load_state_dict(checkpoint, strict=True)
    back = model.state_dict()
    assert list(back) == list(checkpoint) and all(torch.equal(back[k], v) for k, v in checkpoint.items())


def test_avg_pooling_and_no_class_token_follow_timms_norm_placement():
    token = _tiny()
    assert isinstance(token.fc_norm, torch.nn.Identity) and isinstance(token.norm, torch.nn.LayerNorm)
    avg = _tiny(global_pool="avg", class_token=False)
    assert isinstance(avg.norm, torch.nn.Identity) and isinstance(avg.fc_norm, torch.nn.LayerNorm)
    assert avg.cls_token is None and avg.num_prefix_tokens == 0 and avg.pos_embed.shape == (1, 4, 8)
    assert "cls_token" not in avg.state_dict()
    kept = _tiny(global_pool="avg", fc_norm=False)
    assert isinstance(kept.norm, torch.nn.LayerNorm) and isinstance(kept.fc_norm, torch.nn.Identity)


# --- formulas ----------------------------------------------------------------------------------------------------

def test_patch_embedding_class_token_and_positions_eq1():
    model = _tiny()
    x = torch.randn(2, 2, 8, 8)
    conv = model.patch_embed.proj
    patches = rearrange(x, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=4, p2=4)  # x_p^i, flattened
    tokens = patches @ conv.weight.reshape(8, -1).T + conv.bias  # x_p^i E
    z0 = torch.cat([model.cls_token.expand(2, -1, -1), tokens], dim=1) + model.pos_embed
    with torch.no_grad():
        torch.testing.assert_close(model.embed(x), z0)


def test_transformer_block_is_pre_norm_eq2_3():
    torch.manual_seed(0)
    block = TransformerBlock(8, heads=2, mlp_ratio=2.0).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    z = torch.randn(2, 5, 8)

    def msa(u):
        qkv = u @ block.attn.qkv.weight.T + block.attn.qkv.bias
        q, k, v = qkv[..., :8], qkv[..., 8:16], qkv[..., 16:]  # rows [q | k | v], each (heads, d) = (2, 4)
        heads = []
        for h in range(2):
            s = slice(4 * h, 4 * h + 4)
            a = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(4), dim=-1)
            heads.append(a @ v[..., s])
        return torch.cat(heads, -1) @ block.attn.proj.weight.T + block.attn.proj.bias

    def mlp(u):
        hidden = F.gelu(u @ block.mlp.fc1.weight.T + block.mlp.fc1.bias)
        return hidden @ block.mlp.fc2.weight.T + block.mlp.fc2.bias

    z1 = z + msa(_layer_norm(z, block.norm1))
    z2 = z1 + mlp(_layer_norm(z1, block.norm2))
    with torch.no_grad():
        torch.testing.assert_close(block(z), z2, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_pooling_and_head_eq4(pool):
    model = _tiny(global_pool=pool)
    x = torch.randn(2, 2, 8, 8)
    with torch.no_grad():
        z = model.blocks(model.embed(x))
        if pool == "token":  # y = LN(z_L^0), the class token's output
            y = _layer_norm(z, model.norm)[:, 0]
        else:  # the mean of the patch tokens, then the LayerNorm (fc_norm)
            y = _layer_norm(z[:, 1:].mean(1), model.fc_norm)
        torch.testing.assert_close(model(x), y @ model.head.weight.T + model.head.bias)
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True), y)


def test_drop_path_rates_rise_linearly_from_zero():
    model = _tiny(depth=5, drop_path_rate=0.2)
    rates = [(b.drop_path1.p, b.drop_path2.p) for b in model.blocks]
    assert rates == [(pytest.approx(r), pytest.approx(r)) for r in (0.0, 0.05, 0.1, 0.15, 0.2)]


def test_dropout_rates_act_where_timms_do():
    model = _tiny(drop_rate=0.1, pos_drop_rate=0.2, proj_drop_rate=0.3, attn_drop_rate=0.4)
    block = model.blocks[0]
    assert (model.head_drop.p, model.pos_drop.p) == (0.1, 0.2)
    assert (block.attn.proj_drop.p, block.mlp.drop1.p, block.mlp.drop2.p, block.attn.attend.dropout) == (
        0.3, 0.3, 0.3, 0.4)


def test_no_weight_decay_names_the_embeddings():
    model = _tiny()
    assert model.no_weight_decay() == {"pos_embed", "cls_token"}
    assert model.no_weight_decay() <= dict(model.named_parameters()).keys()
    pooled = _tiny(class_token=False, global_pool="avg")  # names only the parameters it has
    assert pooled.no_weight_decay() == {"pos_embed"}


# --- other image sizes -------------------------------------------------------------------------------------------

def test_resampling_to_the_same_grid_is_the_identity():
    pe = torch.randn(1, 1 + 12, 5)
    assert resample_pos_embed(pe, (3, 4), (3, 4)) is pe


def test_resampling_keeps_the_class_token_and_a_constant_grid():
    pe = torch.cat([torch.randn(1, 1, 2), torch.full((1, 49, 2), 0.7)], dim=1)
    out = resample_pos_embed(pe, (10, 4), (7, 7))
    assert out.shape == (1, 41, 2)
    torch.testing.assert_close(out[:, 0], pe[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(out[:, 1:], torch.full((1, 40, 2), 0.7))


def test_shrinking_averages_with_antialiasing():
    # a +-1 checkerboard of 12x12 shrunk to 4x4: its mean (0) with antialiasing; plain interpolation samples
    # every third vector and keeps the +-1 (what timm's antialias=True avoids)
    i = torch.arange(12)
    board = ((i[:, None] + i[None, :]) % 2 * 2 - 1).float()
    pe = torch.cat([torch.zeros(1, 1, 1), board.reshape(1, 144, 1)], dim=1)
    out = resample_pos_embed(pe, (4, 4), (12, 12))[:, 1:]
    assert out.abs().max() < 0.01
    plain = F.interpolate(board[None, None], size=(4, 4), mode="bilinear", align_corners=False)
    assert plain.abs().min() == 1.0


def test_another_size_pads_and_resamples_like_a_model_built_for_it():
    torch.manual_seed(0)
    small = visionattn.create_model("vit_patch4_28", depth=2).eval()  # 7x7 patches
    big = visionattn.create_model("vit_patch4_28", depth=2, img_size=32).eval()  # 8x8 patches
    state = small.state_dict()
    state["pos_embed"] = resample_pos_embed(state["pos_embed"], (8, 8), (7, 7))
    big.load_state_dict(state)
    x = torch.randn(2, 1, 30, 30)  # not a multiple of 4: padded to 32x32, an 8x8 grid
    with torch.no_grad():
        torch.testing.assert_close(small(x), big(F.pad(x, (0, 2, 0, 2))))
        assert small.forward_features(x).shape == (2, 1 + 64, 64)


@pytest.mark.bad_input
def test_strict_img_size_names_the_sizes():
    model = visionattn.create_model("vit_patch4_28", depth=1, strict_img_size=True)
    with pytest.raises(UsageError, match=r"strict_img_size: the network takes 28x28 images, got 32x32"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(UsageError, match=r"img_size: 30x30 is not a multiple of patch_size 4"):
        visionattn.create_model("vit_patch4_28", img_size=30, strict_img_size=True)


@pytest.mark.bad_input
@pytest.mark.parametrize("kwargs, match", [
    ({"global_pool": "token", "class_token": False}, "global_pool: 'token' needs class_token=True"),
    ({"global_pool": "mean"}, "global_pool: got 'mean'"),
    ({"norm_stats": "fashion"}, "norm_stats: got 'fashion'.*did you mean 'fashion_mnist'"),
    ({"fc_norm": "yes"}, "fc_norm must be True or False"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(UsageError, match=match):
        _tiny(**kwargs)


def test_a_checkpoint_of_another_grid_is_resampled_at_load(tmp_path):
    source = visionattn.create_model("vit_patch4_28", depth=1)  # 7x7 grid
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    target = visionattn.create_model("vit_patch4_28", depth=1, img_size=36)  # 9x9 grid
    report = load_pretrained(target, path)
    want = resample_pos_embed(source.pos_embed.detach(), (9, 9), (7, 7))
    torch.testing.assert_close(target.pos_embed.detach(), want, rtol=0, atol=0)
    torch.testing.assert_close(target.patch_embed.proj.weight, source.patch_embed.proj.weight, rtol=0, atol=0)
    assert any("pos_embed resampled from the file's 7x7 grid of patches to the model's 9x9" in n
               for n in report.notes())
    meta = _meta("vit_patch4_28", depth=1, img_size=56)  # the checks before any work, on the meta device
    assert "14x14" in " ".join(check_pretrained(meta, path).notes())


# --- the rest of the timm API ------------------------------------------------------------------------------------

def test_forward_intermediates_drop_the_prefix_and_reshape():
    model = _tiny(depth=3)
    x = torch.randn(2, 2, 8, 8)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, indices=2)  # the last two blocks
        z = model.embed(x)
        outs = []
        for block in model.blocks:
            z = block(z)
            outs.append(z)
        torch.testing.assert_close(final, model.norm(outs[-1]))
        assert len(maps) == 2
        for got, want in zip(maps, outs[1:]):
            torch.testing.assert_close(got, rearrange(want[:, 1:], "b (h w) d -> b d h w", h=2))
        seq = model.forward_intermediates(x, [0], output_fmt="NLC", intermediates_only=True)
        torch.testing.assert_close(seq[0], outs[0][:, 1:])
    with pytest.raises(UsageError, match=r"indices: got 4"):
        model.forward_intermediates(x, indices=4)


def test_reset_classifier_keeps_device_and_dtype_and_changes_the_pool():
    model = _tiny().to(torch.float64)
    model.reset_classifier(5, global_pool="avg")
    assert model.head.weight.dtype == torch.float64 and model.head.out_features == 5
    assert model.global_pool == "avg" and model.pretrained_cfg.num_classes == 5
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        z = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(z, pre_logits=True), z[:, 1:].mean(1))
    model.reset_classifier(0)
    assert model(x).shape == (2, 8)
    with pytest.raises(UsageError, match="global_pool: 'token' needs a class token"):
        _tiny(global_pool="avg", class_token=False).reset_classifier(3, global_pool="token")
