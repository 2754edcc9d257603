"""The trainer's error path: every bad setting refused before any work, a diverging loss stopped with the last
good checkpoint kept, Ctrl-C reported as one line that resumes exactly, finished runs left as they are."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.engine_support import ROOT, make_fashion_mnist, register_tiny_models
from visionattn.cli import build_parser, main
from visionattn.errors import UsageError
from visionattn.recipe import TrainConfig, config_from_args
from visionattn.runlog import RunLog
from visionattn.train import Trainer, TrainingDiverged, TrainingInterrupted, preflight, train

register_tiny_models()


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory) -> Path:
    return make_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=64, n_test=16)


def _cfg(fmnist: Path, run_dir: Path | None, **kw) -> TrainConfig:
    base = {"model": "test_tiny", "data_dir": str(fmnist), "epochs": 2, "batch_size": 8, "threads": 1,
            "progress": False, "run_dir": None if run_dir is None else str(run_dir), "ckpt_every": 3,
            "device": "cpu"}
    return TrainConfig(**{**base, **kw})


def _parse(*argv: str):
    return build_parser().parse_args(["train", *argv])


# ------------------------------------------------------------------------------------- the recipe's values
INF, NAN = float("inf"), float("nan")


@pytest.mark.bad_input
@pytest.mark.parametrize("kw,message", [
    ({"lr": INF}, "--lr: got inf, needed a finite number"),
    ({"lr": NAN}, "--lr: got nan, needed a finite number"),
    ({"lr": -1.0}, "--lr: got -1.0, needed a positive number"),
    ({"lr": 0.0}, "--lr: got 0.0, needed a positive number"),
    ({"weight_decay": NAN}, "--weight-decay: got nan, needed a finite number"),
    ({"weight_decay": INF}, "--weight-decay: got inf, needed a finite number"),
    ({"weight_decay": -1e-4}, "--weight-decay: got -0.0001, needed a number >= 0"),
    ({"momentum": 1.0}, r"--momentum: got 1.0, needed a value in \[0.0, 1.0\)"),
    ({"momentum": NAN}, "--momentum: got nan, needed a finite number"),
    ({"min_lr": 0.5}, "--min-lr: got 0.5, needed at most the peak --lr 0.1"),
    ({"min_lr": -0.1}, "--min-lr: got -0.1, needed a number >= 0"),
    ({"min_lr": INF}, "--min-lr: got inf, needed a finite number"),
    ({"warmup_epochs": 20.0}, "--warmup-epochs: got 20.0, needed at most the 15 --epochs"),
    ({"warmup_epochs": -1.0}, "--warmup-epochs: got -1.0, needed a number >= 0"),
    ({"warmup_epochs": NAN}, "--warmup-epochs: got nan, needed a finite number"),
    ({"threads": 0}, "--threads: got 0, needed a whole number >= 1"),
    ({"threads": -1}, "--threads: got -1, needed a whole number >= 1"),
    ({"threads": 1.5}, "--threads: got 1.5, needed a whole number"),
    ({"epochs": 0}, "--epochs: got 0, needed a whole number >= 1"),
    ({"epochs": 2.5}, "--epochs: got 2.5, needed a whole number"),
    ({"epochs": True}, "--epochs: got True, needed a whole number"),
    ({"batch_size": 0}, "--batch-size: got 0, needed a whole number >= 1"),
    ({"eval_batch_size": -1}, "--eval-batch-size: got -1, needed a whole number >= 1"),
    ({"ckpt_every": 0}, "--ckpt-every: got 0, needed a whole number >= 1"),
    ({"keep_checkpoints": 0}, "--keep-checkpoints: got 0, needed a whole number >= 1"),
    ({"label_smoothing": 1.0}, r"--label-smoothing: got 1.0, needed a value in \[0.0, 1.0\)"),
    ({"erasing": 1.5}, r"--erasing: got 1.5, needed a value in \[0.0, 1.0\]"),
    ({"val_fraction": 0.0}, r"--val-fraction: got 0.0, needed a share in \(0, 1\)"),
    ({"val_fraction": 1.0}, r"--val-fraction: got 1.0, needed a share in \(0, 1\)"),
    ({"crop_padding": -1}, "--crop-padding: got -1, needed a whole number >= 0"),
    ({"seed": -1}, "--seed: got -1, needed a whole number >= 0"),
    ({"seed": 2**32}, "--seed: got 4294967296, needed a whole number below 2\\*\\*32"),
    ({"temperature_epochs": -1.0}, "--temperature-epochs: got -1.0, needed a number >= 0"),
    ({"train_subset": 0}, "--train-subset: got 0, needed a whole number >= 1"),
    ({"image_size": 0}, "--image-size: got 0, needed a whole number >= 1"),
    ({"optimizer": "adam"}, "--optimizer: got 'adam', needed one of 'sgd', 'adamw'; did you mean 'adamw'"),
    ({"optimizer": "lamb"}, "--optimizer: got 'lamb', needed one of 'sgd', 'adamw'"),
    ({"precision": "fp16"}, "--precision: got 'fp16', needed one of 'fp32', 'bf16'; did you mean"),
    ({"channels": "gray"}, "--channels: got 'gray', needed one of 'auto', 'grey', 'rgb'; did you mean 'grey'"),
    ({"device": "gpu"}, "--device: got 'gpu', needed auto, cpu, cuda, cuda:N .* or mps; did you mean 'cuda'"),
    ({"device": "cuda:x"}, "--device: got 'cuda:x', needed auto, cpu, cuda, cuda:N"),
    ({"device": "cuda:-1"}, "--device: got 'cuda:-1', needed auto, cpu, cuda, cuda:N"),
    ({"device": "CPU"}, "--device: got 'CPU', needed .*; did you mean 'cpu'"),
    ({"device": "tpu"}, "--device: got 'tpu', needed auto, cpu, cuda, cuda:N"),
    ({"flip": "yes"}, "--flip: got 'yes', needed True or False"),
    ({"model_args": ["attn=se"]}, "--model-arg: got \\['attn=se'\\], needed a dict"),
    ({"run_dir": ""}, "--run-dir: got '', needed a non-empty string or None"),
])
def test_bad_config_values_name_the_flag_and_what_is_needed(kw, message):
    with pytest.raises(UsageError, match=message):
        TrainConfig(model="m", **kw)


def test_a_config_changed_after_it_was_made_is_checked_again(fmnist, tmp_path):
    cfg = _cfg(fmnist, tmp_path / "r")
    cfg.lr = INF
    with pytest.raises(UsageError, match="--lr: got inf"):
        preflight(cfg)


@pytest.mark.bad_input
@pytest.mark.parametrize("argv,message", [
    (["--model-arg", "attn"], "--model-arg: got 'attn', needed KEY=VALUE"),
    (["--model-arg", "=se"], "--model-arg: got '=se', needed KEY=VALUE"),
    (["--model-arg", "attn=se", "--model-arg", "attn=eca"], "--model-arg: got 'attn' twice"),
    (["--model-arg", "1x=3"], "--model-arg: got the key '1x' in '1x=3', needed a keyword name"),
])
def test_bad_model_arg_syntax(argv, message):
    with pytest.raises(UsageError, match=message):
        config_from_args(_parse("--model", "resnet20", *argv))


# ------------------------------------------------------------------------------------------------- devices
@pytest.mark.bad_input
@pytest.mark.parametrize("device,gpus,message", [
    ("cuda", 0, "--device: got 'cuda', but CUDA is not available on this machine"),
    ("cuda:0", 0, "--device: got 'cuda:0', but CUDA is not available"),
    ("cuda:3", 1, r"--device: got 'cuda:3' \(GPU 3\), but this machine has 1 GPU\(s\): cuda:0..cuda:0"),
    ("cuda:2", 2, "--device: got 'cuda:2' .*this machine has 2 GPU"),
    ("mps", 0, "--device: got 'mps', but Apple's Metal backend is not available"),
])
def test_unavailable_devices_are_refused_before_any_work(fmnist, tmp_path, monkeypatch, device, gpus, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(UsageError, match=message):
        train(_cfg(fmnist, tmp_path / "r", device=device))
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------- models, data
@pytest.mark.bad_input
@pytest.mark.parametrize("kw,message", [
    ({"model": "resnet2O"}, "--model: unknown model .*'resnet2O'; did you mean .*'resnet20'"),
    ({"model": ""}, "--model: missing; needed a registered model name"),
    ({"model": "resnet20", "model_args": {"atn": "se"}},
     "--model-arg atn: model 'resnet20' has no keyword 'atn'; did you mean 'attn'"),
    ({"model": "resnet20", "model_args": {"zzz": 1}},
     "--model-arg zzz: model 'resnet20' has no keyword 'zzz'; it takes block, layers"),
    ({"model": "resnet20", "model_args": {"attn": "sse"}},
     "--model-arg: model 'resnet20' with attn='sse': cannot be built .*unknown attention layer.*did you mean 'se'"),
    ({"model": "resnet20", "model_args": {"num_classes": 5}}, "--model-arg num_classes: set by the trainer"),
    ({"model": "resnet20", "model_args": {"in_chans": 3}}, "--model-arg in_chans: set by the trainer"),
    ({"model": "resnet20", "model_args": {"layers": [1]}},
     r"--model-arg: model 'resnet20' with layers=\[1\]: cannot be built for 1x28x28 images of 10 classes"),
    ({"model": "resnet20", "model_args": {"drop_rate": "x"}}, "--model-arg: .*drop_rate='x'"),
    ({"data": "fashion_mnist"}, "--data: got 'fashion_mnist', which is neither .*did you mean 'fashion-mnist'"),
    ({"data": "no/such/folder"}, "--data: got 'no/such/folder', which is neither a dataset"),
    ({"image_size": 32}, "--image-size: got 32 for fashion-mnist, whose images are 28x28"),
    ({"channels": "rgb"}, "--channels: got 'rgb' for fashion-mnist, whose images are grey"),
    ({"data_dir": "no/such/dir"}, "data_dir: got 'no/such/dir', which does not exist"),
])
def test_bad_models_and_data_are_refused_before_any_work(fmnist, tmp_path, kw, message):
    with pytest.raises(UsageError, match=message):
        train(_cfg(fmnist, tmp_path / "r", **kw))
    assert not (tmp_path / "r").exists()


@pytest.mark.bad_input
@pytest.mark.parametrize("case", ["data_is_a_file", "fashion_mnist_missing"])
def test_missing_data_files(fmnist, tmp_path, case):
    if case == "data_is_a_file":
        (tmp_path / "f.txt").write_text("x")
        cfg, message = _cfg(fmnist, tmp_path / "r", data=str(tmp_path / "f.txt")), "--data: got .*f.txt', a file"
    else:
        (tmp_path / "empty").mkdir()
        cfg, message = _cfg(tmp_path / "empty", tmp_path / "r"), "Fashion-MNIST not found.*--download"
    with pytest.raises(UsageError, match=message):
        preflight(cfg)


@pytest.mark.bad_input
@pytest.mark.parametrize(("kw", "message"), [
    ({"data_dir": "/somewhere"}, "--data-dir: applies to --data fashion-mnist only"),
    ({"download": True}, "--download: applies to --data fashion-mnist only"),
])
def test_fashion_mnist_options_with_an_image_folder_are_refused(fmnist, tmp_path, kw, message):
    (tmp_path / "images").mkdir()
    cfg = _cfg(fmnist, tmp_path / "r", **{"data": str(tmp_path / "images"), "data_dir": None, **kw})
    with pytest.raises(UsageError, match=message):
        preflight(cfg)


# ------------------------------------------------------------------------------------------ run directories
def _finished_run(fmnist: Path, run: Path) -> Path:
    train(_cfg(fmnist, run, epochs=1))
    return run


@pytest.fixture(scope="module")
def done_run(fmnist, tmp_path_factory) -> Path:
    return _finished_run(fmnist, tmp_path_factory.mktemp("done") / "run")


@pytest.mark.bad_input
@pytest.mark.parametrize("case,message", [
    ("existing_run", "--run-dir: .* holds a run of 'test_tiny' already: use --resume .* another --run-dir, or "
                     "--overwrite to replace it"),
    ("file", "--run-dir: got .*, a file; needed a directory"),
    ("parent_is_file", "--run-dir: got .*, but .*afile is a file; needed a directory path"),
    ("foreign_files", r"--run-dir: .* holds other files \(notes.txt\); needed a new or empty directory"),
    ("read_only", "--run-dir: got .*, but .* is not writable"),
    ("resume_missing", "--resume: .* does not exist; needed the directory of an earlier run"),
    ("resume_file", "--resume: .* is a file; needed the directory of an earlier run"),
    ("resume_no_config", "--resume: .* holds no config.json"),
    ("resume_and_overwrite", "--overwrite: cannot be combined with --resume"),
])
def test_run_directory_policy(fmnist, done_run, tmp_path, monkeypatch, case, message):
    resume, overwrite, target = False, False, tmp_path / "r"
    if case == "existing_run":
        target = done_run
    elif case in ("file", "resume_file"):
        target.write_text("not a directory")
        resume = case == "resume_file"
    elif case == "parent_is_file":
        (tmp_path / "afile").write_text("x")
        target = tmp_path / "afile" / "run"
    elif case == "foreign_files":
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    elif case == "read_only":
        import visionattn.errors as errors  # the one writability check (check_writable_dir)

        monkeypatch.setattr(errors.os, "access", lambda path, mode: False)  # chmod is no test as root
    elif case in ("resume_missing", "resume_no_config"):
        resume = True
        if case == "resume_no_config":
            target.mkdir()
    elif case == "resume_and_overwrite":
        target, resume, overwrite = done_run, True, True
    before = sorted(p.name for p in target.iterdir()) if target.is_dir() else None
    with pytest.raises(UsageError, match=message):
        train(_cfg(fmnist, target), resume=resume, overwrite=overwrite)
    assert (sorted(p.name for p in target.iterdir()) if target.is_dir() else None) == before


@pytest.mark.bad_input
@pytest.mark.parametrize("content", ["{not json", '{"config": 3}'])
def test_unreadable_saved_config_on_resume(tmp_path, capsys, content):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(content)
    assert main(["train", "--resume", str(tmp_path / "run")]) == 2
    assert "config.json: unreadable run configuration" in capsys.readouterr().err


@pytest.mark.bad_input
@pytest.mark.parametrize("argv,message", [
    (["--lr", "inf"], "visionattn train: error: --lr: got inf, needed a finite number"),
    (["--weight-decay", "nan"], "visionattn train: error: --weight-decay: got nan"),
    (["--min-lr", "1"], "visionattn train: error: --min-lr: got 1.0, needed at most the peak --lr 0.1"),
    (["--threads", "-1"], "visionattn train: error: --threads: got -1"),
    (["--device", "cuda:x"], "visionattn train: error: --device: got 'cuda:x'"),
])
def test_command_line_errors_start_nothing(fmnist, tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--model", "test_tiny", "--data-dir", str(fmnist), "--no-progress", *argv])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_start_that_fails_while_loading_leaves_no_directory(tmp_path, monkeypatch):
    data = make_fashion_mnist(tmp_path / "fm", n_train=16, n_test=8)
    images = data / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:-100])  # found by preflight, broken when read
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="cannot decompress"):
        train(_cfg(data, None))
    assert not (tmp_path / "runs").exists()


def test_overwrite_replaces_a_run_and_keeps_other_files(fmnist, tmp_path):
    run = _finished_run(fmnist, tmp_path / "run")
    (run / "checkpoints" / "stale.state.pt").write_bytes(b"old")
    (run / "notes.txt").write_text("mine")
    result = train(_cfg(fmnist, run, epochs=1, seed=1), overwrite=True)
    assert len(result.history) == 1 and json.loads((run / "config.json").read_text())["config"]["seed"] == 1
    assert not (run / "checkpoints" / "stale.state.pt").exists() and (run / "notes.txt").read_text() == "mine"
    assert (run / "log.txt").read_text().count("data fashion-mnist") == 1  # the old log went too


def test_a_directory_left_by_a_failed_start_is_reused(fmnist, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.txt").write_text("a start that failed\n")
    assert train(_cfg(fmnist, tmp_path / "run", epochs=1)).run_dir == tmp_path / "run"


def test_resuming_a_finished_run_rewrites_nothing(fmnist, tmp_path, capsys):
    run = _finished_run(fmnist, tmp_path / "run")
    saved = {name: (run / name).read_bytes() for name in ("result.json", "metrics.jsonl", "model.safetensors")}
    first = json.loads(saved["result.json"])
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "already finished" in capsys.readouterr().out
    assert {name: (run / name).read_bytes() for name in saved} == saved
    again = train(_cfg(fmnist, run, epochs=1), resume=True)
    assert again.extra == first and again.test_acc == first["test_acc"] and len(again.history) == 1
    weights = load_file(run / "model.safetensors")
    assert all(torch.equal(weights[k], v) for k, v in again.model.state_dict().items())


# -------------------------------------------------------------------------------------------- divergence
def _strict_json_lines(path: Path) -> list[dict]:
    def refuse(constant: str):
        raise AssertionError(f"bare {constant} in {path}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def test_a_huge_learning_rate_stops_the_run_and_names_the_step(fmnist, tmp_path):
    with pytest.raises(TrainingDiverged) as info:
        train(_cfg(fmnist, tmp_path / "r", lr=1e4))
    message = str(info.value)
    assert message.startswith("training diverged: the loss is nan at step 6 (epoch 1, step 6 of 8)")
    assert "last good checkpoint (step 3 in" in message and "a lower --lr (this run: 10000)" in message
    assert not (tmp_path / "r" / "result.json").exists()
    assert message in (tmp_path / "r" / "log.txt").read_text()
    for path in (tmp_path / "r" / "checkpoints").glob("*.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(path).values()), path


def test_a_nan_loss_keeps_the_last_good_checkpoint(fmnist, tmp_path, monkeypatch):
    forward = Trainer._forward

    def poisoned(self, net, images):  # the 11th training step (global_step counts the 10 before it) gives NaN
        logits = forward(self, net, images)
        return logits * math.nan if net.training and self.global_step == 10 else logits

    monkeypatch.setattr(Trainer, "_forward", poisoned)
    with pytest.raises(TrainingDiverged, match=r"the loss is nan at step 11 \(epoch 2, step 3 of 8\)") as info:
        train(_cfg(fmnist, tmp_path / "r"))
    assert "last good checkpoint (step 9 in" in str(info.value)
    pointer = json.loads((tmp_path / "r" / "checkpoints" / "latest.json").read_text())
    assert pointer["step"] == 9
    weights = load_file(tmp_path / "r" / "checkpoints" / pointer["weights"])
    assert all(torch.isfinite(t).all() for t in weights.values())
    rows = _strict_json_lines(tmp_path / "r" / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1]


def test_metrics_and_results_are_strict_json(tmp_path):
    log = RunLog(tmp_path / "r")
    log.write_metrics([{"epoch": 1, "train_loss": NAN, "train_acc": 0.1, "test_loss": INF, "test_acc": 0.1}])
    log.write_json("result.json", {"test_acc": NAN, "best": [1.0, -INF]})
    log.close()
    assert _strict_json_lines(tmp_path / "r" / "metrics.jsonl")[0]["train_loss"] is None
    assert json.loads((tmp_path / "r" / "result.json").read_text()) == {"test_acc": None, "best": [1.0, None]}


# ---------------------------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_reports_the_resume_command_and_resume_is_exact(fmnist, tmp_path, monkeypatch):
    reference = train(_cfg(fmnist, tmp_path / "ref"))
    step = Trainer._train_step

    def interrupt(self, index, params):
        if self.global_step == 10:
            raise KeyboardInterrupt
        return step(self, index, params)

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_train_step", interrupt)
        with pytest.raises(TrainingInterrupted) as info:
            train(_cfg(fmnist, run, progress=True))
    message = str(info.value)
    assert isinstance(info.value, KeyboardInterrupt) and "\n" not in message
    assert message == (f"training stopped at step 10 (epoch 2, step 2 of 8); the last checkpoint is step 9 in "
                       f"{run / 'checkpoints'}; continue with: visionattn train --resume {run}")
    resumed = train(_cfg(fmnist, run), resume=True)
    want = reference.model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in resumed.model.state_dict().items())
    strip = [{k: v for k, v in r.items() if k != "time_s"} for r in resumed.history]
    assert strip == [{k: v for k, v in r.items() if k != "time_s"} for r in reference.history]


def test_ctrl_c_before_the_first_checkpoint(fmnist, tmp_path, monkeypatch):
    def interrupt(self, index, params):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_train_step", interrupt)
    with pytest.raises(TrainingInterrupted, match="no checkpoint yet: `visionattn train --resume .*` starts"):
        train(_cfg(fmnist, tmp_path / "r"))


# ------------------------------------------------------------------------------------------------- options
def test_every_option_shows_its_default_including_zero():
    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    helps = {a.option_strings[0]: a.help for a in train_parser._actions if a.option_strings and a.help}
    missing = [option for option, text in helps.items() if option not in ("-h", "--model") and "(default" not in text]
    assert missing == []
    for option, default in [("--min-lr", "0.0"), ("--erasing", "0.0"), ("--label-smoothing", "0.0"),
                            ("--seed", "0"), ("--epochs", "15"), ("--channels-last", "off"), ("--flip", "on"),
                            ("--download", "off"), ("--overwrite", "off"), ("--device", "auto")]:
        assert helps[option].endswith(f"(default {default})"), (option, helps[option])


def test_recipe_imports_without_torch():
    code = "import sys, visionattn.recipe; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT / "src")}).stdout
    assert out.strip() == "[]"


def test_ctrl_c_on_the_command_line_prints_one_line_and_exits_130(fmnist, tmp_path, monkeypatch, capsys):
    def interrupt(self, index, params):
        if self.global_step == 4:
            raise KeyboardInterrupt
        return step(self, index, params)

    step = Trainer._train_step
    monkeypatch.setattr(Trainer, "_train_step", interrupt)
    run = tmp_path / "run"
    code = main(["train", "--model", "test_tiny", "--data-dir", str(fmnist), "--batch-size", "8", "--threads", "1",
                 "--ckpt-every", "3", "--run-dir", str(run)])
    err = capsys.readouterr().err
    assert code == 130 and "Traceback" not in err
    assert f"the last checkpoint is step 3 in {run / 'checkpoints'}; continue with: visionattn train --resume {run}" \
        in err.strip().splitlines()[-1]


def test_a_named_recipe_sets_its_values_under_the_flags_given():
    from visionattn.recipe import RECIPES, add_train_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--model", "resnet20", "--recipe", "vit", "--lr", "0.002"]))
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay) == ("adamw", 0.002, RECIPES["vit"]["weight_decay"])
    assert (cfg.label_smoothing, cfg.warmup_epochs) == (RECIPES["vit"]["label_smoothing"],
                                                        RECIPES["vit"]["warmup_epochs"])
    plain = config_from_args(parser.parse_args(["--model", "resnet20"]))
    assert (plain.optimizer, plain.lr) == ("sgd", 0.1)
    with pytest.raises(UsageError, match="--recipe: got 'vti'.*did you mean 'vit'"):
        config_from_args(parser.parse_args(["--model", "resnet20", "--recipe", "vti"]))
