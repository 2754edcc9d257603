"""The Swin Transformer: timm's layout, counts and outputs, the paper's multiply-adds, the small-image model, other
sizes and windows, pretrained files in timm's and the official layout, the rest of the timm API.

timm's side is ``tests/data/timm_swin.json.gz``, recorded from timm 1.0.31 by ``benchmarks/record_timm_swin.py``
(its ``--check`` compares full-size Swin-T/S/B with timm's too). The big models are built on the meta device.
"""

from __future__ import annotations

import gzip
import json
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import visionattn
from visionattn.complexity import count_params, mac_counts
from visionattn.errors import UsageError
from visionattn.layers.relative_position import resample_bias_table
from visionattn.models.pretrained import check_pretrained, load_pretrained
from visionattn.models.swin import SwinTransformer, convert_official_swin_state_dict
from visionattn.models.swin_zoo import SWIN_GMACS, SWIN_PARAMS, SWIN_TIMM_NAMES
from visionattn.weight_decay import no_weight_decay_names

RECORD = Path(__file__).resolve().parent.parent / "data" / "timm_swin.json.gz"
ISSUE_PARAMS = {"swin_tiny_patch4_window7_224": 28.29e6, "swin_small_patch4_window7_224": 49.61e6,
                "swin_base_patch4_window7_224": 87.77e6}
SMALL = "swin_patch2_window7_28"


@cache
def _record() -> dict:
    return json.loads(gzip.decompress(RECORD.read_bytes()))


def _meta(name: str, **kwargs):
    with torch.device("meta"):
        return visionattn.create_model(name, **kwargs)


def _small(**kwargs) -> SwinTransformer:
    torch.manual_seed(0)
    return visionattn.create_model(SMALL, **kwargs)


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """``benchmarks/record_timm_layout.randomise``: in state-dict order, LayerNorm scales 1 + 0.1 N(0, 1), every
    other tensor 0.05 N(0, 1), from one seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            noise = torch.randn(tensor.shape, generator=gen)
            tensor.copy_(1 + 0.1 * noise if name.endswith(".weight") and tensor.dim() == 1 else 0.05 * noise)


# --- timm's counts, layout and outputs ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SWIN_PARAMS))
def test_parameter_counts_are_timms_and_the_issues(name):
    count = count_params(_meta(name))
    assert count == SWIN_PARAMS[name] == _record()["params"][name]
    assert abs(count / ISSUE_PARAMS[name] - 1) < 1e-3


@pytest.mark.parametrize("ours, theirs", sorted(SWIN_TIMM_NAMES.items()))
def test_state_dict_has_timms_keys_and_shapes_in_order(ours, theirs):
    got = [[key, list(t.shape)] for key, t in _meta(ours).state_dict().items()]
    want = _record()["layouts"][theirs]
    missing = sorted({k for k, _ in want} - {k for k, _ in got})
    extra = sorted({k for k, _ in got} - {k for k, _ in want})
    assert not missing and not extra, f"missing {missing[:5]}, extra {extra[:5]}"
    assert got == want


@pytest.mark.parametrize("case", ["shifted_two_stages", "swin_patch2_window7_28", "non_square"])
def test_outputs_equal_timms_with_the_same_tensors(case):
    record = _record()["outputs"][case]
    config = dict(record["config"])
    config["dim"], config["heads"] = config.pop("embed_dim"), config.pop("num_heads")
    model = SwinTransformer(**config).eval()
    _randomise(model, record["param_seed"])
    x = torch.randn(2, *record["input_size"], generator=torch.Generator().manual_seed(record["input_seed"]))
    with torch.no_grad():
        torch.testing.assert_close(model(x), torch.tensor(record["logits"]), atol=1e-5, rtol=1e-4)


def test_a_checkpoint_in_timms_layout_loads_strictly_and_round_trips():
    gen = torch.Generator().manual_seed(0)
    layout = _record()["layouts"]["swin_tiny_patch4_window7_224"]
    checkpoint = {key: torch.randn(shape, generator=gen) for key, shape in layout}
    model = visionattn.create_model("swin_tiny_patch4_window7_224")
    model.load_state_dict(checkpoint, strict=True)
    back = model.state_dict()
    assert list(back) == list(checkpoint) and all(torch.equal(back[k], v) for k, v in checkpoint.items())


# --- multiply-adds -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SWIN_GMACS))
def test_multiply_adds_are_the_papers_with_the_window_attention_counted(name):
    """On the meta device (shapes only). The attention share is QK^T and AV of every window: per block
    2 (H W) N C for an H x W map of C channels in windows of N = 49 tokens."""
    model = _meta(name)
    macs = mac_counts(model, torch.empty(1, 3, 224, 224, device="meta"))
    assert abs(macs.total / 1e9 / SWIN_GMACS[name] - 1) < 0.01, macs
    want = sum(2 * (56 // 2 ** i) ** 2 * 49 * model.embed_dim * 2 ** i * len(stage.blocks)
               for i, stage in enumerate(model.layers))
    assert macs.attention == want


# --- the small-image model ---------------------------------------------------------------------------------------

def test_the_small_model_shifts_in_its_first_stage_and_says_why_not_later():
    model = _small()
    assert model.input_size == (1, 28, 28) and model.num_classes == 10
    assert 300_000 < count_params(model) < 500_000
    plan = {p["block"]: p for p in model.window_plan()}
    assert [plan[f"layers.0.blocks.{j}"]["shift_size"] for j in (0, 1)] == [(0, 0), (3, 3)]
    assert plan["layers.0.blocks.1"]["note"] == ""
    assert plan["layers.1.blocks.1"]["shift_size"] == (0, 0)
    note = plan["layers.1.blocks.1"]["note"]
    assert "7x7 map" in note and "one window covers it" in note
    assert plan["layers.2.blocks.0"]["window_size"] == (4, 4) and "window (7, 7) -> (4, 4)" in \
        plan["layers.2.blocks.0"]["note"]
    assert "one window covers it" in repr(model.layers[1].blocks[1])
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    # with 4x4 patches the first map is 7x7, one window: no block shifts, and each odd one says why
    patch4 = _meta(SMALL, patch_size=4).window_plan()
    assert all(p["shift_size"] == (0, 0) for p in patch4)
    assert all("7x7 window along both sides" in p["note"] for p in patch4[1::2])


def test_the_small_model_learns_on_a_cpu():
    model = _small().train()
    x, y = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.arange(8) % 10
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(6):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


def test_other_image_sizes_are_padded_not_rejected():
    model = _small().eval()
    with torch.no_grad():
        for size in ((30, 30), (26, 33), (9, 9)):
            out = model(torch.randn(2, 1, *size))
            assert out.shape == (2, 10) and torch.isfinite(out).all()
        maps = model.forward_intermediates(torch.randn(1, 1, 30, 26), intermediates_only=True)
    assert [tuple(m.shape[1:]) for m in maps] == [(32, 15, 13), (64, 8, 7), (128, 4, 4)]
    strict = _small(strict_img_size=True)
    with pytest.raises(UsageError, match=r"strict_img_size: the network takes 28x28 images, got 30x30"):
        strict(torch.randn(1, 1, 30, 30))


# --- pretrained files --------------------------------------------------------------------------------------------

def _save(state: dict, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_a_file_in_the_official_layout_is_converted(tmp_path):
    source = _small()
    official = {}
    for key, value in source.state_dict().items():  # merging at the end of the stage before, head.weight
        for i in (1, 2):
            key = key.replace(f"layers.{i}.downsample.", f"layers.{i - 1}.downsample.")
        official[key.replace("head.fc.", "head.")] = value
    official["layers.0.blocks.1.attn_mask"] = torch.zeros(4, 49, 49)
    official["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    assert convert_official_swin_state_dict(official).keys() == source.state_dict().keys()
    target = _small()
    report = load_pretrained(target, _save(official, tmp_path / "official.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), source.state_dict().values()))
    assert any("official Swin layout converted" in n for n in report.notes())


def test_a_file_of_another_window_size_is_resampled(tmp_path):
    source = _small()  # window 7 in stages 0-1 (tables of 13 x 13), 4 in stage 2
    path = _save(source.state_dict(), tmp_path / "w7.safetensors")
    target = _small(window_size=5)  # window 5 in stages 0-1, 4 in stage 2 (the 4x4 map cuts it)
    report = load_pretrained(target, path)
    key = "layers.0.blocks.1.attn.relative_position_bias_table"
    want = resample_bias_table(source.state_dict()[key], (7, 7), (5, 5))
    torch.testing.assert_close(target.state_dict()[key], want, rtol=0, atol=0)
    last = "layers.2.blocks.0.attn.relative_position_bias_table"
    assert torch.equal(target.state_dict()[last], source.state_dict()[last])
    assert any("4 relative position bias tables resampled" in n and "7x7 -> 5x5" in n for n in report.notes())
    meta = _meta(SMALL, img_size=64)  # maps 32, 16, 8: window 7 everywhere; checked before any work
    assert "4x4 -> 7x7" in " ".join(check_pretrained(meta, path).notes())


# --- the rest of the timm API ------------------------------------------------------------------------------------

def test_forward_intermediates_features_and_head():
    model = _small().eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert [tuple(m.shape) for m in maps] == [(2, 32, 14, 14), (2, 64, 7, 7), (2, 128, 4, 4)]
        torch.testing.assert_close(final, model.forward_features(x))
        last = model.forward_intermediates(x, indices=1, norm=True, output_fmt="NHWC", intermediates_only=True)
        torch.testing.assert_close(last[0].flatten(1, 2), final)
        early = model.forward_intermediates(x, [0], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early[0], maps[0])
        features = visionattn.create_model(SMALL, features_only=True, out_indices=(1, 2))
        features.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("head")},
                                 strict=False)
        for got, want in zip(features.eval()(x), maps[1:]):
            torch.testing.assert_close(got, want)
        nhwc = final.unflatten(1, (4, 4))  # timm's forward_features layout goes into forward_head too
        torch.testing.assert_close(model.forward_head(nhwc), model(x))
        torch.testing.assert_close(model.forward_head(final, pre_logits=True), final.mean(1))


def test_no_weight_decay_names_the_bias_tables_and_reset_classifier():
    model = _small().double()
    tables = {f"layers.{i}.blocks.{j}.attn.relative_position_bias_table" for i in range(3) for j in range(2)}
    assert tables <= set(no_weight_decay_names(model))  # each window attention names its own table
    assert not {n for n in no_weight_decay_names(model) if n.endswith("table")} - tables
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3 and model.get_classifier().weight.dtype == torch.float64
    assert model.pretrained_cfg.num_classes == 3 and model.pretrained_cfg.classifier == "head.fc"
    model.reset_classifier(0)
    assert model(torch.randn(1, 1, 28, 28, dtype=torch.float64)).shape == (1, 128)
    with pytest.raises(UsageError, match="global_pool: got 'max'"):
        model.reset_classifier(3, global_pool="max")


@pytest.mark.bad_input
@pytest.mark.parametrize("kwargs, match", [
    ({"depths": (2, 2), "heads": (2, 4, 8)}, r"heads: one per stage, got 3 heads"),
    ({"depths": ()}, "depths must be a non-empty list"),
    ({"heads": (2, 0, 8)}, "heads must be an integer >= 1"),
    ({"window_size": 0}, "window_size"),
    ({"dim": 33}, "heads: dim=33 must divide into heads=2"),
    ({"norm_stats": "fashion"}, "norm_stats: got 'fashion'.*did you mean 'fashion_mnist'"),
    ({"drop_path_rate": 1.0}, "drop_path_rate"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(UsageError, match=match):
        _small(**kwargs)
