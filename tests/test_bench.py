"""`visionattn bench`: shape parsing, the peak-memory probe, and a tiny end-to-end run."""

import pytest
import torch

from visionattn import bench, cli


def test_parse_shape():
    assert bench.parse_shape("3x224x224") == (3, 224, 224)
    for bad in ("3x224", "axbxc", "0x8x8", ""):
        with pytest.raises(ValueError, match="CxHxW"):
            bench.parse_shape(bad)


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
