"""``visionattn igpt train``: next-pixel prediction through the classification trainer: bits per dimension every
epoch (checked against a direct computation), the palette saved with the run, exact resume, --max-steps, and the
errors that stop a run before any work."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.engine_support import HERE, child_env, make_fashion_mnist, register_tiny_models
from tests.igpt_support import ATTENTION, TINY, tiny_argv, tiny_config
from visionattn.cli import main
from visionattn.errors import UsageError
from visionattn.igpt_recipe import NextPixelConfig
from visionattn.igpt_task import evaluate_tokens, token_sums
from visionattn.recipe import TrainConfig
from visionattn.registry import create_model
from visionattn.runlog import read_metrics
from visionattn.train import Trainer, TrainingInterrupted, train

register_tiny_models()


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory) -> Path:
    return make_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=64, n_test=16)


@pytest.fixture(scope="module")
def done(fmnist, tmp_path_factory):
    run = tmp_path_factory.mktemp("igpt") / "run"
    return train(tiny_config(fmnist, run)), run


def _strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "time_s"} for row in rows]


# ---------------------------------------------------------------------------------------------- the metric
def test_token_sums_by_hand():
    """Two positions, three levels: CE = -ln p(target); the argmax of the second row is wrong."""
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]]])
    tokens = torch.tensor([[0, 1]])
    p0 = math.exp(2) / (math.exp(2) + 2)
    p1 = math.exp(1) / (1 + math.exp(1) + math.exp(3))
    loss, correct, count = token_sums(logits, tokens).tolist()
    assert loss == pytest.approx(-math.log(p0) - math.log(p1), rel=1e-6) and (correct, count) == (1, 2)


def test_a_fresh_model_scores_the_uniform_four_bits():
    """The output layer starts at zero (the official initialisation): every level gets 1/16, log2(16) = 4 bits."""
    torch.manual_seed(0)
    model = create_model("igpt_fashion", **TINY)
    tokens = torch.randint(0, 16, (3, 784))
    assert evaluate_tokens(model, tokens)["bpd"] == pytest.approx(4.0, abs=1e-6)


def test_a_run_reports_bits_per_dim_every_epoch_and_saves_its_palette(done, fmnist):
    result, run = done
    rows = read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2] and _strip(rows) == _strip(result.history)
    for row in rows:
        assert row["test_bpd"] == pytest.approx(row["test_loss"] / math.log(2), rel=1e-12)
        assert row["train_bpd"] == pytest.approx(row["train_loss"] / math.log(2), rel=1e-12)
        assert 0 < row["test_bpd"] < 4.0  # below the uniform model after a few steps
    saved = json.loads((run / "result.json").read_text())
    assert saved["test_bpd"] == rows[-1]["test_bpd"] and saved["unit"] == "bits per pixel of the 16-level image"
    assert saved["best_test_bpd"] == min(r["test_bpd"] for r in rows) and saved["levels"] == 16
    log = (run / "log.txt").read_text()
    assert "bits per pixel of the 16-level image" in log and "palette: 16 grey levels" in log
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "next-pixel" and config["config"]["levels"] == 16 and config["data"]["train_size"] == 64
    with safe_open(str(run / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["palette"]) == config["palette"] and meta["task"] == "next-pixel"
    assert len(config["palette"]["centroids"]) == 16


def test_test_bits_per_dim_by_hand(done, fmnist):
    """Recompute the last epoch's test figure: tokens by the nearest centroid, -log2 softmax at each target."""
    from visionattn.data import load_fashion_mnist

    result, run = done
    centroids = torch.tensor(json.loads((run / "config.json").read_text())["palette"]["centroids"])[:, 0]
    images = load_fashion_mnist(fmnist).test.images.flatten(1).double() / 255
    tokens = (images[:, :, None] - centroids.double()).abs().argmin(-1)
    model = create_model("igpt_fashion", **TINY, attention=ATTENTION)
    model.load_state_dict(load_file(run / "model.safetensors"))
    model.eval()
    bits, count = 0.0, 0
    with torch.no_grad():
        for image in tokens:
            logp = torch.log_softmax(model(image[None]).double()[0], -1)
            bits -= logp[torch.arange(784), image].sum().item() / math.log(2)
            count += 784
    assert result.extra["test_bpd"] == pytest.approx(bits / count, rel=1e-5)


# --------------------------------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_interrupted_then_resumed_in_a_new_process_equals_the_uninterrupted_run(fmnist, tmp_path, monkeypatch):
    """Dropout draws from the global RNG: the checkpoint's RNG state, position and palette make it exact."""
    kw = {"model_args": {**TINY, "dropout": 0.1}}
    reference = train(tiny_config(fmnist, tmp_path / "ref", **kw))
    step = Trainer._train_step

    def interrupt(self, index, params):
        if self.global_step == 7:  # 4 steps per epoch, checkpoints every 3: the last one is step 6, mid-epoch
            raise KeyboardInterrupt
        return step(self, index, params)

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_train_step", interrupt)
        with pytest.raises(TrainingInterrupted, match="continue with: visionattn igpt train --resume"):
            train(tiny_config(fmnist, run, **kw))
    resumed = subprocess.run([sys.executable, str(HERE / "engine_support.py"), "igpt", "train", "--resume",
                              str(run)], env=child_env(threads=1), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from step 6" in resumed.stdout and "(saved in the checkpoint resumed from)" in resumed.stdout
    got, want = load_file(run / "model.safetensors"), reference.model.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], v) for k, v in want.items())
    assert _strip(read_metrics(run)) == _strip(reference.history)


def test_a_resumed_run_keeps_its_palette(fmnist, tmp_path, monkeypatch):
    """The palette comes from the checkpoint: fitting it again is not even tried."""
    run = tmp_path / "run"
    train(tiny_config(fmnist, run, epochs=1))
    for name in ("result.json", "model.safetensors"):  # as if killed after its last checkpoint
        (run / name).unlink()
    monkeypatch.setattr("visionattn.models.palette.Palette.fit", lambda *a, **k: pytest.fail("palette refitted"))
    assert main(["igpt", "train", "--resume", str(run), "--no-progress"]) == 0


def test_max_steps_ends_the_run_inside_an_epoch_with_the_schedule_done(fmnist, tmp_path):
    result = train(tiny_config(fmnist, tmp_path / "r", epochs=3, max_steps=6, warmup_epochs=0.5))
    assert [(r["epoch"], r["step"]) for r in result.history] == [(1, 4), (2, 6)]
    assert result.history[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # the cosine ends at the last step
    assert "6 steps in all (--max-steps)" in (tmp_path / "r" / "log.txt").read_text()


def test_resuming_a_finished_run_rewrites_nothing(done, capsys):
    _, run = done
    saved = {name: (run / name).read_bytes() for name in ("result.json", "metrics.jsonl", "model.safetensors")}
    assert main(["igpt", "train", "--resume", str(run), "--no-progress"]) == 0
    assert "already finished: test " in capsys.readouterr().out
    assert {name: (run / name).read_bytes() for name in saved} == saved


@pytest.mark.slow
def test_two_processes_under_torchrun_match_one(fmnist, tmp_path):
    """One palette for both processes (rank 0's), the global batch split between them: the one-process run's
    figures, and its weights up to the order of floating-point sums."""
    script = [str(HERE / "engine_support.py"), *tiny_argv(fmnist, tmp_path / "two")]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          *script], env=child_env(threads=1), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    one = train(tiny_config(fmnist, tmp_path / "one"))
    rows = read_metrics(tmp_path / "two")
    for a, b in zip(rows, one.history):
        assert a["test_bpd"] == pytest.approx(b["test_bpd"], rel=1e-5)
        assert a["train_bpd"] == pytest.approx(b["train_bpd"], rel=1e-5)
    got = load_file(tmp_path / "two" / "model.safetensors")
    for k, v in one.model.state_dict().items():
        torch.testing.assert_close(got[k], v, rtol=1e-4, atol=1e-5, msg=k)
    assert "2 process(es) on cpu" in (tmp_path / "two" / "log.txt").read_text()


# --------------------------------------------------------------------------------------------------- errors
@pytest.mark.bad_input
@pytest.mark.parametrize("argv,message", [
    (["--model", "igpt_fashon"], "--model: unknown model name 'igpt_fashon'; did you mean 'igpt_fashion'"),
    (["--model", "resnet20"], "--model: 'resnet20' is a resnet-small model, not an Image GPT; needed one of "
                              "igpt_fashion, igpt_l, igpt_m, igpt_s"),
    (["--levels", "1"], "--levels: got 1, needed a whole number of palette levels from 2 to 4096"),
    (["--levels", "300"], "--levels: got 300 for grey images, which have at most 256 values"),
    (["--attention", "sparse"], "--attention: got 'sparse', needed one of 'dense', 'strided', 'fixed'"),
    (["--model-arg", "vocab_size=8"], "--model-arg vocab_size: set by the trainer from the data (the palette's "
                                      "levels and the image size)"),
    (["--model-arg", "dimm=8"], "--model-arg dimm: model 'igpt_fashion' has no keyword 'dimm'; did you mean 'dim'"),
    (["--model-arg", "norm=batch"], "--model-arg: model 'igpt_fashion' with dim=16, depth=2, heads=2, norm='batch' "
                                    "cannot be built for 28x28 images at 16 levels: norm: got 'batch'"),
    (["--lr", "nan"], "--lr: got nan, needed a finite number"),
    (["--flip"], "unrecognized arguments: --flip"),
    (["--batch-size", "100"], "--batch-size: got 100, needed at most the 64 training images"),
])
def test_bad_options_are_refused_before_any_work(fmnist, tmp_path, capsys, argv, message):
    assert main([*tiny_argv(fmnist, tmp_path / "r"), *argv]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # argparse's own errors print the usage first
    assert last.startswith("visionattn igpt train: error: ") and message in last, last
    assert not (tmp_path / "r").exists()


@pytest.mark.bad_input
def test_a_classifier_run_and_an_image_gpt_run_are_not_mixed_up(fmnist, done, tmp_path, capsys):
    _, igpt_run = done
    assert main(["train", "--model", "igpt_fashion", "--data-dir", str(fmnist), "--run-dir", str(tmp_path / "a")]) == 2
    assert "--model: 'igpt_fashion' is an Image GPT, which predicts pixels" in capsys.readouterr().err
    assert main(["train", "--resume", str(igpt_run)]) == 2
    err = capsys.readouterr().err
    assert (f"--resume: {igpt_run} is a next-pixel run (of `visionattn igpt train`), not a classification run of "
            f"`visionattn train`; resume it with `visionattn igpt train --resume {igpt_run}`") in err
    classifier = tmp_path / "clf"
    train(TrainConfig(model="test_tiny", data_dir=str(fmnist), epochs=1, batch_size=32, threads=1, progress=False,
                      run_dir=str(classifier)))
    assert main(["igpt", "train", "--resume", str(classifier)]) == 2
    assert "is a classification run (of `visionattn train`), not a next-pixel run" in capsys.readouterr().err
    with pytest.raises(UsageError, match="is a classification run"):
        train(tiny_config(fmnist, classifier), resume=True)
    assert main(["igpt", "train", "--resume", str(igpt_run), "--levels", "8"]) == 2
    assert "--resume: the options --levels differ from the saved run's configuration" in capsys.readouterr().err


@pytest.mark.bad_input
@pytest.mark.parametrize("kw,message", [
    ({"flip": True}, "flip: got True, needed False for next-pixel prediction"),
    ({"crop_padding": 2}, "crop_padding: got 2, needed 0"),
    ({"levels": 16.0}, "--levels: got 16.0, needed a whole number"),
    ({"attention": "dense "}, "--attention: got 'dense ', needed one of"),
])
def test_bad_config_values(kw, message):
    with pytest.raises(UsageError, match=message):
        NextPixelConfig(**kw)


def test_the_defaults_are_the_reference_recipe():
    cfg = NextPixelConfig()
    assert (cfg.model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.levels) == (
        "igpt_fashion", "adamw", 3e-3, 0.0, 64, 16)
    assert (cfg.crop_padding, cfg.flip, cfg.erasing, cfg.label_smoothing) == (0, False, 0.0, 0.0)
    assert NextPixelConfig(optimizer="sgd").lr == 0.1 and "levels" not in TrainConfig().to_dict()
