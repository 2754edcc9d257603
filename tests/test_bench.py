"""`visionattn bench`: shape checks, the peak-memory probe, multiply-adds per image, and a tiny end-to-end run."""

import argparse

import pytest
import torch

from tests.engine_support import TinyNet, register_tiny_models
from visionattn import bench, cli
from visionattn.complexity import count_macs, count_params
from visionattn.errors import UsageError, check_output_file

register_tiny_models()


def test_shape_argument():
    assert cli.shape_arg("3x224x224") == (3, 224, 224) and cli.shape_arg("3X8x8") == (3, 8, 8)
    for bad in ("3x224", "axbxc", "0x8x8", "", "3x-1x8", "3x8x8x8"):
        with pytest.raises(argparse.ArgumentTypeError, match="CxHxW"):
            cli.shape_arg(bad)


@pytest.mark.bad_input
@pytest.mark.parametrize(("call", "match"), [
    (lambda: bench.bench_layers(["se"], (4, 4), batch=1), r"shape: got \(4, 4\), needed \(C, H, W\)"),
    (lambda: bench.bench_layers(["se"], (4, 0, 4), batch=1), r"shape: got \(4, 0, 4\)"),
    (lambda: bench.bench_layers(["se"], (4, 4, 4), batch=0), r"batch: got 0, needed a positive number"),
    (lambda: bench.bench_layers(["se"], (4, 4, 4), reps=0), r"reps: got 0, needed a positive number"),
    (lambda: bench.bench_layers(["se"], (4, 4, 4), warmup=-1), r"warmup: got -1, needed a number >= 0"),
    (lambda: bench.bench_layers([], (4, 4, 4)), r"names: got no names"),
    (lambda: bench.bench_layers(["sx"], (4, 4, 4)), r"names: unknown attention layer"),
    (lambda: bench.bench_layers(["se"], (4, 4, 4), device="tpu"), r"device: got 'tpu'"),
    (lambda: bench.bench_models(["resnt20"], (1, 8, 8)), r"names: unknown model .*did you mean 'resnet20'"),
    (lambda: bench.bench_models(["resnet20"], (1, 8, 8), num_classes=0), r"num_classes: got 0"),
    (lambda: bench.bench_module("x", torch.nn.Identity(), torch.ones(0, 3)), r"x: got shape \(0, 3\)"),
])
def test_bench_api_refuses_bad_input_before_measuring(call, match):
    with pytest.raises(UsageError, match=match):
        call()


@pytest.mark.bad_input
@pytest.mark.parametrize(("path", "match"), [("", "empty path"), (".", "is a folder"), ("nope/x.csv", "does not exist"),
                                             ("f/x.csv", "is not a folder")])
def test_output_file_is_checked_before_measuring(tmp_path, monkeypatch, path, match):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f").write_text("")
    with pytest.raises(UsageError, match=f"csv: .*{match}"):
        check_output_file(path)
    assert check_output_file("ok.csv").name == "ok.csv" and not (tmp_path / "ok.csv").exists()


def test_macs_are_per_image_and_the_model_keeps_its_own_class_count():
    """Old bench reported multiply-adds per batch and built every model with 1000 classes."""
    (res,) = bench.bench_models(["test_tiny"], (1, 8, 8), batch=3, warmup=0, reps=1)
    tiny = TinyNet()  # 10 classes, the registered model's own
    assert res.macs == count_macs(tiny, torch.randn(1, 1, 8, 8)) and res.batch == 3
    assert res.params == count_params(tiny)
    (hundred,) = bench.bench_models(["test_tiny"], (1, 8, 8), batch=3, num_classes=100, warmup=0, reps=1)
    assert hundred.params == count_params(TinyNet(num_classes=100))


def test_peak_memory_sees_a_known_allocation():
    def fn():
        a = torch.ones(1024, 1024)  # 4 MiB
        b = a * 2  # 4 MiB more while a is alive
        del a
        return b.sum()

    peak = bench.peak_memory_bytes(fn, torch.device("cpu"))
    assert 8 * 2**20 <= peak < 9 * 2**20


def test_bench_layers_reports_positive_figures():
    (res,) = bench.bench_layers(["se"], (16, 8, 8), batch=2, warmup=1, reps=2)
    assert res.name == "se" and res.params == (16 * 1 + 1) + (1 * 16 + 16)  # fc1 16->1 and fc2 1->16, with biases
    assert res.forward_ms > 0 and res.train_ms > 0 and res.train_peak_mb > 0
    assert res.forward_images_per_s == pytest.approx(2 / res.forward_ms * 1e3)


def test_cli_bench_layers(capsys, tmp_path):
    out_csv = tmp_path / "bench.csv"
    assert cli.main(["bench", "--layers", "eca,cbam", "--input", "8x6x6", "--batch", "2", "--reps", "1",
                     "--warmup", "0", "--csv", str(out_csv)]) == 0
    text = capsys.readouterr().out
    assert "| eca " in text and "| cbam " in text and "train_img_s" in text
    assert out_csv.read_text().splitlines()[0].startswith("name,params,macs")


def test_cli_layers_lists_every_layer(capsys):
    import visionattn

    assert cli.main(["layers", "--channels", "32", "--size", "8", "8"]) == 0
    text = capsys.readouterr().out
    for name in visionattn.list_attn():
        assert f"| {name} " in text


class _RecordsDtype(torch.nn.Module):
    """A conv that remembers the dtype and memory format its convolution ran in."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.seen = set()

    def forward(self, x):
        y = self.conv(x)
        if x.shape[0] > 1:  # the timed runs, not the one-image multiply-add count
            self.seen.add((y.dtype, x.is_contiguous(memory_format=torch.channels_last)))
        return y


def test_bench_module_runs_in_the_requested_precision_and_format():
    x = torch.randn(2, 4, 6, 6)
    plain = _RecordsDtype()
    bench.bench_module("plain", plain, x, warmup=0, reps=1)
    assert plain.seen == {(torch.float32, False)}
    mixed = _RecordsDtype()
    bench.bench_module("bf16", mixed, x, warmup=0, reps=1, precision="bf16", channels_last=True)
    assert mixed.seen == {(torch.bfloat16, True)}
    with pytest.raises(ValueError, match="precision: got 'fp16'"):
        bench.bench_module("bad", _RecordsDtype(), x, precision="fp16")


def test_cli_bench_models_bf16_names_the_precision(capsys):
    assert cli.main(["bench", "--models", "resnet20", "--input", "1x16x16", "--batch", "2", "--reps", "1",
                     "--warmup", "0", "--num-classes", "10", "--precision", "bf16", "--channels-last"]) == 0
    assert "bf16, channels-last" in capsys.readouterr().out


def test_bench_counts_the_fused_attention_path():
    """F.scaled_dot_product_attention's CPU kernel counted 0 multiply-adds: a fused layer looked cheaper than
    the same layer on the explicit path."""
    from visionattn.layers.self_attention import SelfAttention2d

    x = torch.randn(2, 8, 4, 4)
    fused, explicit = (bench.bench_module(impl, SelfAttention2d(8, heads=2, impl=impl), x, warmup=0, reps=1)
                       for impl in ("fused", "explicit"))
    assert fused.macs == explicit.macs == count_macs(SelfAttention2d(8, heads=2, impl="explicit"), x[:1])
    projections = 16 * 8 * 3 * 8 + 16 * 8 * 8  # qkv and proj, 1x1 over 16 pixels
    assert fused.macs == projections + 2 * 16 * 16 * (4 + 4)  # and Q K^T, A V over 2 heads of 4
