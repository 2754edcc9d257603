"""``visionattn train --pretrained``: the run starts from the file's weights (classifier refitted, stem adapted),
normalises as the weights were trained, refuses a file that does not fit before any work, and resumes exactly.

The "timm checkpoints" are state dicts of our own models, which have timm's names and shapes
(tests/models/test_timm_layout.py checks that against a record of timm's).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import visionattn
from tests.engine_support import make_digit_folder, make_fashion_mnist
from visionattn.cli import main
from visionattn.compare import check_comparison
from visionattn.errors import UsageError
from visionattn.models.pretrained import FASHION_MNIST_MEAN, IMAGENET_MEAN, IMAGENET_STD
from visionattn.recipe import TrainConfig
from visionattn.train import Trainer, TrainingInterrupted, train


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory) -> Path:
    return make_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=64, n_test=16)


def _save(model: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None) -> Path:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=metadata)
    return path


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> tuple[dict[str, torch.Tensor], Path]:
    """An ImageNet ResNet-18 in timm's layout (1000 classes, RGB), with BatchNorm statistics off their defaults."""
    torch.manual_seed(7)
    model = visionattn.create_model("resnet18")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 1.5), m.num_batches_tracked.fill_(9)
    path = _save(model, tmp_path_factory.mktemp("weights") / "resnet18.safetensors")
    return load_file(path), path


def _cfg(fmnist: Path, run_dir: Path, **kw) -> TrainConfig:
    base = {"model": "resnet20", "data_dir": str(fmnist), "epochs": 1, "batch_size": 16, "threads": 1,
            "progress": False, "run_dir": str(run_dir), "device": "cpu"}
    return TrainConfig(**{**base, **kw})


def _started(cfg: TrainConfig, monkeypatch) -> Trainer:
    """The trainer as it is before its first step (``train`` returns what ``Trainer.run`` returns)."""
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "run", lambda self: self)
        return train(cfg)


@pytest.mark.parametrize("data", ["fashion-mnist", "rgb folder"])
def test_a_pretrained_run_starts_from_the_file(fmnist, resnet18_file, tmp_path, monkeypatch, data):
    weights, path = resnet18_file
    rgb = data == "rgb folder"
    extra = ({"data": str(make_digit_folder(tmp_path / "digits", rgb=True)), "data_dir": None, "image_size": 32,
              "batch_size": 4} if rgb else {})
    trainer = _started(_cfg(fmnist, tmp_path / "run", model="resnet18", pretrained=str(path), **extra), monkeypatch)
    state = trainer.model.state_dict()
    assert {k for k in weights if k.startswith("fc.")} == {"fc.weight", "fc.bias"}
    for key, value in weights.items():
        if key.startswith("fc."):
            continue
        want = value if rgb or key != "conv1.weight" else value.sum(dim=1, keepdim=True)  # grey: RGB filters summed
        torch.testing.assert_close(state[key], want, rtol=0, atol=0, msg=key)
    # the classifier is the run's own, as the seed initialises it without a file
    torch.manual_seed(0)
    fresh = visionattn.create_model("resnet18", in_chans=3 if rgb else 1, num_classes=3 if rgb else 10,
                                    img_size=32 if rgb else 28)
    torch.testing.assert_close(state["fc.weight"], fresh.fc.weight, rtol=0, atol=0)
    # ImageNet's normalisation, its average for grey images; not the data's own statistics
    mean, std = (list(IMAGENET_MEAN), list(IMAGENET_STD)) if rgb else ([sum(IMAGENET_MEAN) / 3],
                                                                       [sum(IMAGENET_STD) / 3])
    assert trainer.mean == pytest.approx(mean, abs=1e-12) and trainer.std == pytest.approx(std, abs=1e-12)
    log = (tmp_path / "run" / "log.txt").read_text()
    assert f"pretrained weights from {path}: 120 tensors loaded" in log
    assert ("first convolution adapted from 3 to 1 input channels" in log) is not rgb
    assert "classifier replaced" in log and "ImageNet's mean and std, resnet18's pretrained_cfg" in log
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["config"]["pretrained"] == str(path) and config["normalize"]["mean"] == trainer.mean


def test_fine_tuning_from_a_run_takes_its_normalisation(fmnist, tmp_path, monkeypatch):
    """A run's model.safetensors records its normalisation; a run fine-tuned from it on other data uses that."""
    train(_cfg(fmnist, tmp_path / "source"))
    final = tmp_path / "source" / "model.safetensors"
    with safe_open(str(final), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["mean"]) == source_mean(tmp_path / "source") and meta["model"] == "resnet20"
    assert source_mean(tmp_path / "source") != pytest.approx(list(FASHION_MNIST_MEAN), abs=1e-3)  # generated data
    digits = make_digit_folder(tmp_path / "digits", per_class=8)
    trainer = _started(_cfg(None, tmp_path / "tuned", data=str(digits), data_dir=None, image_size=28,
                            batch_size=4, pretrained=str(final)), monkeypatch)
    assert trainer.mean == json.loads(meta["mean"]) and trainer.std == json.loads(meta["std"])
    assert "the weights file's own metadata" in (tmp_path / "tuned" / "log.txt").read_text()
    weights = load_file(final)
    state = trainer.model.state_dict()
    assert state["fc.weight"].shape == (3, 64) and torch.equal(state["layer3.2.conv2.weight"],
                                                               weights["layer3.2.conv2.weight"])


def source_mean(run: Path) -> list[float]:
    return json.loads((run / "config.json").read_text())["normalize"]["mean"]


def test_resume_normalises_as_before_without_the_file(fmnist, tmp_path, monkeypatch, capsys):
    torch.manual_seed(3)
    path = _save(visionattn.create_model("resnet20"), tmp_path / "resnet20.safetensors",
                 {"mean": "[0.5]", "std": "[0.25]"})  # neither the data's nor the model's record
    kw = {"pretrained": str(path), "epochs": 2, "ckpt_every": 3}
    reference = train(_cfg(fmnist, tmp_path / "ref", **kw))
    assert reference.extra["test_acc"] is not None
    step = Trainer._train_step

    def interrupt(self, index, params):
        if self.global_step == 7:  # 4 steps per epoch: the last checkpoint is step 6, mid-epoch
            raise KeyboardInterrupt
        return step(self, index, params)

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_train_step", interrupt)
        with pytest.raises(TrainingInterrupted, match="the last checkpoint is step 6"):
            train(_cfg(fmnist, run, **kw))
    path.unlink()  # the weights now come from the checkpoint; the normalisation from its record
    other = _save(visionattn.create_model("resnet20"), tmp_path / "other.safetensors")
    assert main(["train", "--resume", str(run), "--pretrained", str(other)]) == 2
    assert "--resume: the options --pretrained differ" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    log = (run / "log.txt").read_text()
    assert "normalisation: mean [0.5], std [0.25], the weights file's own metadata" in log
    assert "(saved in the checkpoint resumed from)" in log and "not read on resume" in log
    got, want = load_file(run / "model.safetensors"), reference.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in want.items())


# ------------------------------------------------------------------------------------------------ refused
@pytest.mark.bad_input
@pytest.mark.parametrize("case,message", [
    ("missing", r"--pretrained: .*nothing\.safetensors does not exist"),
    ("folder", "--pretrained: .*weights is not a file"),
    ("architecture", "--pretrained: .*resnet18.safetensors does not fit the architecture 'resnet34': 80 model "
                     r"tensors not in the file \(first: layer1\.2\.conv1\.weight"),
    ("architecture, folder of unknown input", "--pretrained: .*resnet18.safetensors does not fit the architecture "
                                              "'resnet34'"),
    ("metadata", r"--pretrained: .*bad.safetensors has the metadata mean='\[0.5, 0.5\]', std='\[0.25\]'; needed"),
])
def test_a_file_that_does_not_fit_is_refused_before_any_work(fmnist, resnet18_file, tmp_path, monkeypatch, capsys,
                                                            case, message):
    def no_data(*args, **kwargs):
        raise AssertionError("data were loaded")

    monkeypatch.setattr("visionattn.train.load_dataset", no_data)
    model, data = "resnet34", ["--data-dir", str(fmnist)]
    path = resnet18_file[1]
    if case == "missing":
        path = tmp_path / "nothing.safetensors"
    elif case == "folder":
        (path := tmp_path / "weights").mkdir()
    elif case.endswith("unknown input"):
        data = ["--data", str(make_digit_folder(tmp_path / "digits"))]  # channels and size known only once read
    elif case == "metadata":
        model, path = "resnet20", _save(visionattn.create_model("resnet20"), tmp_path / "bad.safetensors",
                                        {"mean": "[0.5, 0.5]", "std": "[0.25]"})
    code = main(["train", "--model", model, *data, "--pretrained", str(path), "--no-progress", "--run-dir",
                 str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert err.startswith("visionattn train: error: --pretrained") and re.search(message, err)
    assert not (tmp_path / "run").exists()


@pytest.mark.bad_input
def test_an_empty_pretrained_path_is_refused():
    with pytest.raises(UsageError, match="--pretrained: got '', needed a non-empty string or None"):
        TrainConfig(model="resnet20", pretrained="")


@pytest.mark.bad_input
def test_a_grey_file_into_rgb_images_names_the_flag(tmp_path, capsys):
    """The input is known only once the folder is read (no --image-size): refused when the model is built,
    before the run directory exists."""
    path = _save(visionattn.create_model("resnet20"), tmp_path / "grey.safetensors")
    folder = make_digit_folder(tmp_path / "digits", rgb=True)
    code = main(["train", "--model", "resnet20", "--data", str(folder), "--channels", "rgb", "--batch-size", "4",
                 "--pretrained", str(path), "--no-progress", "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and f"visionattn train: error: --pretrained {path}: the file's first convolution takes 1 " \
        "channels; adapting it to 3 is defined from 3 (RGB) only" in err
    assert not (tmp_path / "run").exists()


def test_compare_checks_the_file_against_every_model(fmnist, resnet18_file, tmp_path):
    """``visionattn compare --pretrained`` shares the recipe: each model must fit the file, checked first."""
    base = _cfg(fmnist, tmp_path / "unused", model="resnet18", pretrained=str(resnet18_file[1]))
    check_comparison(["resnet18"], [0, 1], base, tmp_path / "cmp")
    with pytest.raises(UsageError, match="--pretrained: .* does not fit the architecture 'resnet34'"):
        check_comparison(["resnet18", "resnet34"], [0], base, tmp_path / "cmp")
    assert not (tmp_path / "cmp").exists()
