"""The trainer: recipe, run directory, determinism, DY-CNN annealing, kill-and-resume, bad checkpoints."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.engine_support import HERE, child_env, make_digit_folder, make_fashion_mnist, register_tiny_models
from visionattn.cli import build_parser, main
from visionattn.recipe import TrainConfig, build_optimizer, build_scheduler, config_from_args
from visionattn.runlog import read_metrics
from visionattn.train import train

register_tiny_models()


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory) -> Path:
    return make_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=256, n_test=64)


def _cfg(fmnist: Path, run_dir: Path, **kw) -> TrainConfig:
    base = {"model": "test_tiny", "data_dir": str(fmnist), "epochs": 2, "batch_size": 32, "threads": 1,
            "progress": False, "run_dir": str(run_dir)}
    return TrainConfig(**{**base, **kw})


# ------------------------------------------------------------------------------------------------- recipe


def test_schedule_warms_up_linearly_then_follows_the_cosine():
    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(model="m", epochs=3, lr=0.2, min_lr=0.02, warmup_epochs=1)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch=4)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.05, 0.1, 0.15, 0.2])
    cosine = [0.02 + 0.18 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert lrs[4:] == pytest.approx(cosine)


def test_weight_decay_spares_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    groups = build_optimizer(model, TrainConfig(model="m")).param_groups
    assert [len(g["params"]) for g in groups] == [1, 3]
    assert groups[0]["weight_decay"] == 5e-4 and groups[1]["weight_decay"] == 0.0
    adamw = build_optimizer(model, TrainConfig(model="m", optimizer="adamw"))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["lr"] == 1e-3


def test_options_and_resume_rules():
    parse = build_parser().parse_args
    cfg = config_from_args(parse(["train", "--model", "m", "--epochs", "3", "--no-flip", "--model-arg", "attn=se",
                                  "--model-arg", "drop_rate=0.1"]))
    assert (cfg.epochs, cfg.flip, cfg.model_args, cfg.batch_size) == (3, False, {"attn": "se", "drop_rate": 0.1}, 128)
    with pytest.raises(ValueError, match="--model: missing"):
        config_from_args(parse(["train", "--epochs", "3"]))
    saved = cfg.to_dict()
    resumed = config_from_args(parse(["train", "--resume", "r", "--threads", "2"]), saved)
    assert resumed.epochs == 3 and resumed.threads == 2
    with pytest.raises(ValueError, match=r"--resume: the options --lr differ"):
        config_from_args(parse(["train", "--resume", "r", "--lr", "0.5"]), saved)


# ----------------------------------------------------------------------------------------------- training


def test_run_directory_and_determinism(fmnist, tmp_path):
    a = train(_cfg(fmnist, tmp_path / "a", model="test_tiny_bn"))
    b = train(_cfg(fmnist, tmp_path / "b", model="test_tiny_bn"))
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    files = {p.name for p in (tmp_path / "a").iterdir()}
    assert {"config.json", "log.txt", "metrics.jsonl", "curves.png", "result.json", "model.safetensors",
            "checkpoints"} <= files
    rows = read_metrics(tmp_path / "a")
    assert [r["epoch"] for r in rows] == [1, 2] and rows == a.history
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    assert result["test_acc"] == rows[-1]["test_acc"] == a.test_acc
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["config"]["lr"] == 0.1 and config["data"]["train_size"] == 256
    assert config["steps_per_epoch"] == 8
    saved = load_file(tmp_path / "a" / "model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in a.model.state_dict().items())
    c = train(_cfg(fmnist, tmp_path / "c", model="test_tiny_bn", seed=1))
    assert not torch.equal(c.model.head.weight, a.model.head.weight)


def test_training_learns(fmnist, tmp_path):
    result = train(_cfg(fmnist, tmp_path / "r", epochs=5, optimizer="adamw", lr=0.02, weight_decay=0.0))
    rows = result.history
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.5
    assert result.test_acc >= 0.3  # chance is 0.1


def test_dynamic_convolution_temperature_is_annealed(fmnist, tmp_path):
    result = train(_cfg(fmnist, tmp_path / "r", model="test_tiny_dynamic", epochs=3, temperature_epochs=2))
    temps = [row["temperature"] for row in result.history]
    assert temps == pytest.approx([15.5, 1.0, 1.0])  # 30 -> 1 linearly over 16 steps, then flat
    layer = result.model.features[4]
    assert layer.temperature == 1.0


def test_image_folder_run_logs_skipped_files(tmp_path, capsys):
    root = make_digit_folder(tmp_path / "digits")
    (root / "train" / "digit0" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    code = main(["train", "--model", "test_tiny", "--data", str(root), "--epochs", "1", "--batch-size", "4",
                 "--image-size", "12", "--threads", "1", "--no-progress", "--run-dir", str(tmp_path / "run")])
    assert code == 0
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "1 files skipped" in log and log.count("skipped unreadable file") == 1 and "corrupt.png" in log
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["image_size"] == [12, 12]


def test_truncated_data_file_stops_the_run_at_once(tmp_path, capsys):
    data = make_fashion_mnist(tmp_path / "fm", n_train=40, n_test=20)
    images = data / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:-200])
    code = main(["train", "--model", "test_tiny", "--data-dir", str(data), "--no-progress", "--run-dir",
                 str(tmp_path / "r")])
    assert code == 2 and f"{images}: cannot decompress" in capsys.readouterr().err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_batch_larger_than_dataset_is_an_error(fmnist, tmp_path, capsys):
    code = main(["train", "--model", "test_tiny", "--data-dir", str(fmnist), "--batch-size", "512",
                 "--no-progress", "--run-dir", str(tmp_path / "r")])
    assert code == 2 and "--batch-size: got 512, needed at most the 256 training images" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- checkpoints, resume


def test_bad_checkpoint_on_resume_names_the_file(fmnist, tmp_path, capsys):
    run = tmp_path / "run"
    train(_cfg(fmnist, run, epochs=1))
    for name in ("result.json", "model.safetensors"):  # as if killed after its last checkpoint
        (run / name).unlink()
    weights = next((run / "checkpoints").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:50])
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert f"{weights}: not a readable safetensors file" in capsys.readouterr().err
    # a checkpoint of another model with other shapes
    train(_cfg(fmnist, tmp_path / "other", model="test_tiny_dynamic", epochs=1))
    for name in ("latest.json",):
        (run / "checkpoints" / name).unlink()
    for src in (tmp_path / "other" / "checkpoints").iterdir():
        (run / "checkpoints" / src.name).write_bytes(src.read_bytes())
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "step-00000008.safetensors: written for model 'test_tiny_dynamic', this run builds 'test_tiny'" in err


def _train_cmd(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(HERE / "engine_support.py"), "train", "--model", "test_tiny_slow", "--data-dir",
            *extra, "--epochs", "3", "--batch-size", "32", "--threads", "1", "--ckpt-every", "3",
            "--no-progress", "--run-dir", str(run_dir)]


def _wait_for_step(pointer: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            found = json.loads(pointer.read_text())["step"]
            if found >= step:
                return found
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.005)
    raise AssertionError(f"no checkpoint of step >= {step} appeared (process exit code {proc.poll()})")


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(fmnist, tmp_path):
    """Exact equality: a checkpoint holds every source of randomness and the position within the epoch."""
    env = child_env(threads=1)
    subprocess.run(_train_cmd(tmp_path / "ref", str(fmnist)), env=env, check=True, capture_output=True,
                   timeout=300)
    proc = subprocess.Popen(_train_cmd(tmp_path / "killed", str(fmnist)), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        # 8 steps per epoch, checkpoints every 3 steps: step 9 is the 1st step of epoch 2; each step sleeps 60 ms
        step = _wait_for_step(tmp_path / "killed" / "checkpoints" / "latest.json", 9, proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and step < 24 and step % 8 != 0, "not killed mid-epoch"
    assert not (tmp_path / "killed" / "result.json").exists()
    resumed = subprocess.run([sys.executable, str(HERE / "engine_support.py"), "train", "--resume",
                              str(tmp_path / "killed"), "--no-progress"], env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from step {step}" in resumed.stdout
    ref, got = load_file(tmp_path / "ref" / "model.safetensors"), load_file(tmp_path / "killed" / "model.safetensors")
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    strip = [{k: v for k, v in row.items() if k != "time_s"} for row in read_metrics(tmp_path / "ref")]
    assert strip == [{k: v for k, v in row.items() if k != "time_s"} for row in read_metrics(tmp_path / "killed")]
