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

import visionattn
from tests.engine_support import HERE, child_env, make_digit_folder, make_fashion_mnist, register_tiny_models
from visionattn.checkpoint import load_state, save_state
from visionattn.cli import build_parser, main
from visionattn.errors import CheckpointError
from visionattn.recipe import TrainConfig, build_optimizer, build_scheduler, config_from_args
from visionattn.runlog import read_metrics
from visionattn.train import train
from visionattn.weight_decay import STATE_KEY, dimension_rule_names, no_weight_decay_names, resumed_no_decay

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


def _groups(model: torch.nn.Module, **cfg) -> tuple[list[str], list[str]]:
    """The names in build_optimizer's (decayed, not decayed) groups, checking each parameter is in exactly one."""
    opt = build_optimizer(model, TrainConfig(model="m", **cfg))
    assert [g["weight_decay"] for g in opt.param_groups] == [TrainConfig(model="m", **cfg).weight_decay, 0.0]
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [[names[id(p)] for p in g["params"]] for g in opt.param_groups]
    assert sorted(groups[0] + groups[1]) == sorted(names.values())  # each parameter once
    return groups[0], groups[1]


def _by_role(model: torch.nn.Module, spared: set[str]) -> tuple[list[str], list[str]]:
    """Independently of the rule: (weights of linear maps and convolutions, everything a model should not decay:
    biases, norms' parameters and the names in ``spared``), each in named_parameters order."""
    decay, no_decay = [], []
    for prefix, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            full = f"{prefix}.{name}" if prefix else name
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and name == "weight":
                decay.append(full)
            else:
                assert name == "bias" or name in spared or isinstance(module, (torch.nn.LayerNorm,
                                                                                 torch.nn.BatchNorm2d)), full
                no_decay.append(full)
    order = list(dict(model.named_parameters()))
    return sorted(decay, key=order.index), sorted(no_decay, key=order.index)


@pytest.mark.parametrize("name, spared", [
    ("vit_patch4_28", {"pos_embed", "cls_token"}),
    ("swin_patch2_window7_28", {"relative_position_bias_table"}),
    ("vit_r20_28", {"pos_embed", "cls_token"}),
])
def test_weight_decay_spares_what_timm_spares(name, spared):
    """ViT: biases, norms, pos_embed and cls_token undecayed; Swin: biases, norms and every bias table."""
    with torch.device("meta"):
        model = visionattn.create_model(name)
    decay, no_decay = _groups(model, optimizer="adamw")
    assert (decay, no_decay) == _by_role(model, spared)
    assert {n.rsplit(".", 1)[-1] for n in no_decay} >= spared
    assert not any(n.rsplit(".", 1)[-1] in spared for n in decay)
    assert len(no_decay) == sum(p.ndim <= 1 for p in model.parameters()) + (2 if "vit" in name else 6)


def test_window_attention_plugged_into_a_resnet_spares_its_tables():
    with torch.device("meta"):
        model = visionattn.create_model("resnet20", attn="swin")
    decay, no_decay = _groups(model)
    tables = [n for n, _ in model.named_parameters() if n.endswith(".relative_position_bias_table")]
    assert tables and set(tables) <= set(no_decay) and not set(tables) & set(decay)


def test_no_weight_decay_of_a_submodule_counts_with_its_prefix():
    with torch.device("meta"):
        vit = visionattn.create_model("vit_patch4_28")
    wrapper = torch.nn.ModuleDict({"backbone": vit, "extra": torch.nn.Linear(4, 2)})
    decay, no_decay = _groups(wrapper)
    assert {"backbone.pos_embed", "backbone.cls_token", "extra.bias"} <= set(no_decay)
    assert "backbone.pos_embed" not in decay and "extra.weight" in decay

    class Lists(torch.nn.Module):  # a bias-like table by name, a 2-D ".bias", and a name it does not have
        def __init__(self) -> None:
            super().__init__()
            self.table, self.proj = torch.nn.Parameter(torch.zeros(3, 2)), torch.nn.Linear(2, 2)
            self.proj.bias = torch.nn.Parameter(torch.zeros(1, 2))

        def no_weight_decay(self) -> set[str]:
            return {"table", "dist_token"}  # absent names are skipped, as timm's ViT lists a dist_token

    model = Lists()
    model.frozen = torch.nn.Parameter(torch.zeros(2, 2), requires_grad=False)
    opt = build_optimizer(model, TrainConfig(model="m"))
    assert [[id(p) for p in g["params"]] for g in opt.param_groups] == [
        [id(model.proj.weight)], [id(model.table), id(model.proj.bias)]]  # frozen: in neither


@pytest.mark.parametrize("name", ["resnet20", "sk_resnet20", "botnet29", "halonet29", "axial26s", "sasa_resnet26",
                                  "igpt_fashion"])
def test_models_without_no_weight_decay_keep_the_dimension_rule(name):
    """No change for them: weights of 2 or more dimensions decayed (their relative tables and embeddings too, as
    in timm and the official code), the rest not, in the old order."""
    with torch.device("meta"):
        model = visionattn.create_model(name)
    assert not any(hasattr(m, "no_weight_decay") for m in model.modules())
    opt = build_optimizer(model, TrainConfig(model="m", optimizer="adamw"))
    trained = [p for p in model.parameters() if p.requires_grad]  # axial's similarity BatchNorm shifts are frozen
    old = [[p for p in trained if p.ndim > 1], [p for p in trained if p.ndim <= 1]]
    assert [[id(p) for p in g["params"]] for g in opt.param_groups] == [[id(p) for p in g] for g in old]


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


def test_a_run_from_before_the_no_weight_decay_rule_resumes_with_its_own_groups(fmnist, tmp_path, monkeypatch):
    """A ViT run whose checkpoints were written when pos_embed and cls_token were decayed (no record of the groups
    in its trainer state) resumes with that grouping, says so, and ends as it would have uninterrupted."""
    run = tmp_path / "old"
    cfg = _cfg(fmnist, run, model="vit_patch4_28", model_args={"dim": 16, "depth": 1, "heads": 2},
               optimizer="adamw", weight_decay=0.05, ckpt_every=3, keep_checkpoints=10)
    with monkeypatch.context() as m:  # the trainer as it was: weight decay on every parameter of 2+ dimensions
        m.setattr("visionattn.train.no_weight_decay_names", dimension_rule_names)
        final = train(cfg).model.state_dict()
    for name in ("result.json", "model.safetensors"):
        (run / name).unlink()
    folder = run / "checkpoints"
    for path in folder.glob("step-*.*"):
        if int(path.name[5:13]) > 3:  # as if killed after step 3, mid epoch 1
            path.unlink()
    (folder / "latest.json").write_text(json.dumps(
        {"step": 3, "weights": "step-00000003.safetensors", "state": "step-00000003.state.pt"}))
    state = load_state(folder / "step-00000003.state.pt")
    assert "pos_embed" not in state.pop(STATE_KEY)  # the old states had no such record
    save_state(folder / "step-00000003.state.pt", state)

    result = train(cfg, resume=True)
    log = (run / "log.txt").read_text()
    assert "resumed from step 3" in log
    assert ("the checkpoint's optimizer (written before no_weight_decay() and .bias names were spared) decays "
            "cls_token, pos_embed, unlike the current rule") in log
    for k, v in result.model.state_dict().items():
        assert torch.equal(v, final[k]), k
    # its checkpoints now record the groups it keeps, so a second resume needs no guess
    state = load_state(next(folder.glob("step-00000016.state.pt")))
    assert "pos_embed" not in state[STATE_KEY] and "blocks.0.norm1.weight" in state[STATE_KEY]


def test_weight_decay_record_of_a_checkpoint_is_checked():
    with torch.device("meta"):
        model = visionattn.create_model("vit_patch4_28")
    current = no_weight_decay_names(model)
    assert resumed_no_decay(model, {STATE_KEY: current}, "ckpt") == (current, None)
    assert resumed_no_decay(model, {}, "ckpt")[0] == dimension_rule_names(model)
    with torch.device("meta"):
        cnn = visionattn.create_model("resnet20")
    assert resumed_no_decay(cnn, {}, "ckpt") == (no_weight_decay_names(cnn), None)  # the rule is unchanged there
    with pytest.raises(CheckpointError, match=r"ckpt: the trainer state's 'no_weight_decay' record holds "
                                              r"\['head.nope'\], needed names of trainable parameters"):
        resumed_no_decay(model, {STATE_KEY: [*current, "head.nope"]}, "ckpt")


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
