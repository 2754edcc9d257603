"""``visionattn info``: parameters, multiply-adds and the per-stage table."""

from __future__ import annotations

import re

import pytest

from visionattn.cli import main
from visionattn.complexity import human_number
from visionattn.info import build_for_input, model_info
from visionattn.layers.attention_core import Attention


def _run(capsys, *argv: str) -> str:
    assert main(["info", *argv]) == 0
    return capsys.readouterr().out


def test_info_resnet50_reports_4_1_gmacs(capsys):
    out = _run(capsys, "resnet50")
    assert "25,557,032 parameters" in out
    gmacs = float(re.search(r"([\d.]+) GMACs", out).group(1))
    assert gmacs == pytest.approx(4.09, abs=0.01)
    for stage, shape in [("stem", "64x56x56"), ("layer1", "256x56x56"), ("layer4", "2048x7x7"), ("head", "1000")]:
        assert re.search(rf"\| {stage}\s+\| {shape}\s+\|", out), stage


def test_info_rebuilds_for_the_requested_input(capsys):
    out = _run(capsys, "ge_theta_resnet20", "--input", "3x32x32", "--num-classes", "100")
    assert "input 1x3x32x32" in out
    assert re.search(r"\| layer3\s+\| 64x8x8\s+\|", out) and re.search(r"\| head\s+\| 100\s+\|", out)


def test_stage_rows_add_up_to_the_totals():
    model, size = build_for_input("bam_resnet20")
    info = model_info(model, size)
    assert size == (1, 28, 28)
    assert [r["name"] for r in info.rows] == ["stem", "layer1", "layer2", "layer3", "head"]
    assert sum(r["params"] for r in info.rows) == info.params
    assert sum(r["macs"] for r in info.rows) == info.macs > 0


@pytest.mark.bad_input
@pytest.mark.parametrize("argv,match", [
    (["resnet20", "--input", "28x28x"], "--input: got '28x28x', needed CxHxW"),
    (["resnet5"], "unknown model name 'resnet5'; did you mean"),
])
def test_info_rejects_a_bad_input(capsys, argv, match):
    assert main(["info", *argv]) == 2  # one line on stderr, no traceback
    err = capsys.readouterr().err
    assert re.search(match, err) and "Traceback" not in err


def _vit_attention_macs(model) -> tuple[int, int]:
    """Q K^T and A V of one block of a built ViT, by hand from its shape, and the number of blocks."""
    tokens = model.grid[0] * model.grid[1] + model.num_prefix_tokens
    attn = model.blocks[0].attn
    return attn.heads * tokens * tokens * 2 * attn.dim_head, len(model.blocks)


def test_info_shows_attention_macs_beside_the_total(capsys):
    per_block, depth = _vit_attention_macs(build_for_input("vit_patch4_28")[0])
    out = _run(capsys, "vit_patch4_28")
    macs, attn = map(float, re.search(r"([\d.]+) GMACs, ([\d.]+) of them in attention", out).groups())
    assert attn == pytest.approx(depth * per_block / 1e9, abs=5e-4) and 0 < attn < macs
    assert re.search(r"\| name\s+\| output\s+\| params\s+\| macs\s+\| attn_macs\s+\|", out)
    assert re.search(rf"\| blocks\.0\s+\|[^|]+\|[^|]+\|[^|]+\| {re.escape(human_number(per_block))}\s+\|", out)


def test_vit_rows_split_the_attention_macs_by_block():
    model, size = build_for_input("vit_patch4_28")
    per_block, depth = _vit_attention_macs(model)
    info = model_info(model, size)
    assert [r["name"] for r in info.rows] == ["embed", *(f"blocks.{i}" for i in range(depth)), "head"]
    assert [r["attn_macs"] for r in info.rows] == [0, *[per_block] * depth, 0]
    assert info.attn_macs == depth * per_block and sum(r["macs"] for r in info.rows) == info.macs
    for m in model.modules():  # the explicit path counts the same, stage by stage
        if isinstance(m, Attention):
            m.impl = "explicit"
    assert model_info(model, size) == info


def test_an_image_gpt_is_counted_on_the_tokens_of_its_image(capsys):
    model, size = build_for_input("igpt_fashion")
    assert size == (1, 28, 28)
    info = model_info(model, size)
    blocks = [r for r in info.rows if r["name"].startswith("blocks.")]
    assert len(blocks) == len(model.blocks) and all(r["output"] == "784x64" for r in blocks)
    n, dim = 784, 64  # dense causal attention counted in full: Q K^T and A V, n * n * dim each, per block
    assert info.attn_macs == len(blocks) * 2 * n * n * dim == sum(r["attn_macs"] for r in blocks)
    assert main(["info", "igpt_fashion", "--input", "3x28x28"]) == 2
    assert "--input: got 3x28x28" in capsys.readouterr().err


def test_a_cnn_has_no_attention_macs():
    model, size = build_for_input("resnet20")
    info = model_info(model, size)
    assert info.attn_macs == 0 and all(r["attn_macs"] == 0 for r in info.rows) and info.macs > 0
