"""``visionattn info``: parameters, multiply-adds and the per-stage table."""

from __future__ import annotations

import re

import pytest

from visionattn.cli import main
from visionattn.info import build_for_input, model_info


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
