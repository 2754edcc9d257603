"""A run written before the ecosystem module names (keys stem./stages./head.) resumes: its checkpoint is
converted on load and the log says so (the conversion itself: tests/models/test_legacy.py)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import visionattn
from tests.engine_support import make_fashion_mnist
from visionattn.cli import main
from visionattn.recipe import TrainConfig
from visionattn.train import train

HERE = Path(__file__).parent


def _old_names(model: str) -> list[tuple[str, list[int]]]:
    record = json.loads(gzip.decompress((HERE / "data" / "legacy_state_dict_keys.json.gz").read_bytes()))
    return [(k, shape) for k, shape in record[model]]


def test_an_old_layout_run_resumes_with_a_note(tmp_path, capsys):
    data = make_fashion_mnist(tmp_path / "fmnist", n_train=64, n_test=32)
    run = tmp_path / "run"
    cfg = TrainConfig(model="sk_resnet20", data_dir=str(data), epochs=1, batch_size=32, threads=1,
                      progress=False, run_dir=str(run))
    train(cfg)
    final = load_file(run / "model.safetensors")
    for name in ("result.json", "model.safetensors"):  # as if killed after its last checkpoint
        (run / name).unlink()
    ckpt = next((run / "checkpoints").glob("*.safetensors"))
    tensors = load_file(ckpt)
    with open(ckpt, "rb") as f:  # keep the file's metadata (model name, step)
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    old = {}
    order = list(visionattn.create_model("sk_resnet20").state_dict())  # the file's own order is alphabetical
    for (key, shape), t in zip(_old_names("sk_resnet20"), (tensors[k] for k in order), strict=True):
        assert t.numel() == torch.Size(shape).numel()
        old[key] = t.reshape(shape).contiguous()  # SK's fuse/select were linear: (d, C), not (d, C, 1, 1)
    save_file(old, str(ckpt), metadata=header["__metadata__"])

    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    log = (run / "log.txt").read_text()
    assert "converted on load" in log
    for k, v in load_file(run / "model.safetensors").items():
        assert torch.equal(v, final[k]), k
