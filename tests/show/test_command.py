"""``visionattn show``: a trained run's model or an untrained default drawn to a PNG, the listing, and one clear
line with exit status 2 for every bad input, with nothing written. The command is run in-process through
:func:`visionattn.cli.main` with a picture registered by the test (the real pictures have their own tests)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.engine_support import ROOT, child_env, register_tiny_models
from visionattn.cli import main
from visionattn.show import command
from visionattn.show.catalog import PICTURES
from visionattn.show.registry import Picture

register_tiny_models()


@pytest.fixture
def drawn(monkeypatch, tmp_path):
    """Registers the picture ``testpic`` (Fashion-MNIST images, default model test_tiny) and ``testbn`` (needs a
    BatchNorm layer); returns the subjects they were drawn from. The working directory is a fresh folder."""
    subjects = []

    def draw(subject):
        import matplotlib.pyplot as plt  # the command chose the Agg backend

        subjects.append(subject)
        fig = plt.figure(figsize=(2, 2))  # a pyplot figure: the command must close it
        fig.add_subplot().imshow(subject.display[0].numpy())
        fig.suptitle(subject.title("test picture"))
        return fig

    def has_bn(model):
        return any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())

    monkeypatch.setitem(PICTURES, "testpic", Picture("testpic", "a test picture", draw, "test_tiny", "fashion-mnist",
                                                     options=("pixel", "head", "layer", "completions", "summary",
                                                              "scale")))
    monkeypatch.setitem(PICTURES, "testbn", Picture("testbn", "needs batch norm", draw, "test_tiny_bn",
                                                    "fashion-mnist", has_bn, "a BatchNorm layer"))
    monkeypatch.chdir(tmp_path)
    return subjects


def _snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ------------------------------------------------------------------------------------------------ round trips
def test_a_run_is_drawn_with_its_trained_weights(drawn, run, fmnist, tmp_path, capsys):
    out = tmp_path / "pic.png"
    assert main(["show", "testpic", "--checkpoint", str(run), "--data-dir", str(fmnist), "--count", "2",
                 "--out", str(out)]) == 0
    subject, = drawn
    saved = load_file(str(run / "model.safetensors"))
    assert all(torch.equal(subject.model.state_dict()[k], v) for k, v in saved.items())
    assert subject.trained and subject.title("x") == "x: test_tiny" and subject.images.shape == (20, 1, 28, 28)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [str(out), f"a test picture: test_tiny; weights: {run / 'model.safetensors'}; images: 20 "
                               "Fashion-MNIST test images (2 a class)"]
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (240, 240)  # 2 x 2 inches at 120 dpi
    assert not sys.modules["matplotlib.pyplot"].get_fignums()  # the command closed the figure


def test_without_a_checkpoint_the_model_is_untrained_and_the_default_out_is_never_overwritten(drawn, fmnist,
                                                                                              tmp_path, capsys):
    argv = ["show", "testpic", "--data-dir", str(fmnist), "--count", "1"]
    assert main(argv) == 0
    out = tmp_path / "runs" / "show" / "testpic.png"
    assert drawn[0].title("x") == "x: test_tiny (untrained: random weights)" and not drawn[0].trained
    assert "(untrained: random weights)" in capsys.readouterr().out
    before = out.read_bytes()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("visionattn show: error: --out (default runs/show/MECHANISM.png): 'runs/show/testpic.png' "
                          "exists; give --overwrite") and len(err.splitlines()) == 1
    assert out.read_bytes() == before and len(drawn) == 1  # refused before any work
    assert main([*argv, "--overwrite", "--pixel", "3,4", "--head", "1", "--layer", "features.0", "--option",
                 "completions=5", "--option", "summary=row", "--option", "scale=0.5"]) == 0
    assert drawn[1].options == {"pixel": (3, 4), "head": 1, "layer": "features.0", "completions": 5,
                                "summary": "row", "scale": 0.5}


@pytest.mark.parametrize(("extra", "message"), [
    (["--pixel", "1,2"], "--pixel: the testbn picture does not read 'pixel'; it takes no option"),
    (["--option", "completion=3"], "--option completion: the testpic picture does not read 'completion'; did you "
                                   "mean 'completions'?; its options are pixel, head, layer, completions, summary, "
                                   "scale"),
])
def test_an_option_the_picture_does_not_read_is_refused(drawn, fmnist, capsys, extra, message):
    name = "testbn" if extra[0] == "--pixel" else "testpic"
    assert main(["show", name, "--data-dir", str(fmnist), "--count", "1", *extra]) == 2
    assert capsys.readouterr().err.strip() == f"visionattn show: error: {message}" and not drawn


def test_a_real_picture_draws_from_the_subject(monkeypatch, fmnist, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["show", "se", "--data-dir", str(fmnist), "--count", "1", "--threads", "1"]) == 0
    assert (tmp_path / "runs/show/se.png").is_file() and "se_resnet20 (untrained" in capsys.readouterr().out


def test_list_names_every_picture_with_its_default_model(drawn, capsys):
    assert main(["show", "--list"]) == 0
    listing = capsys.readouterr().out
    assert main(["show", "list"]) == 0
    assert capsys.readouterr().out == listing
    assert "| testbn " in listing and "test_tiny_bn" in listing and "needs batch norm" in listing
    assert all(f"| {name} " in listing for name in PICTURES)


def test_the_names_in_the_help_are_the_registered_pictures():
    assert sorted(command.PICTURE_NAMES) == sorted(PICTURES)


def test_help_lists_the_pictures_without_importing_torch():
    code = ("import sys\nfrom visionattn.cli import main\ncode = main(['show', '--help'])\n"
            "print(code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), check=True,
                         cwd=ROOT).stdout
    assert out.strip().splitlines()[-1] == "0 False"
    assert "cbam, bam, se" in " ".join(out.split())


# ---------------------------------------------------------------------------------------------- bad input
def _unfinished(run: Path, folder: Path) -> Path:
    shutil.copytree(run, folder)
    (folder / "model.safetensors").unlink()
    return folder


BAD = [
    (["cbm"], "MECHANISM: unknown picture name 'cbm'; did you mean 'cbam'"),
    ([], "MECHANISM: missing; needed one of"),
    (["testpic", "--pixel", "3"], "argument --pixel: got '3', needed Y,X: two integers >= 0"),
    (["testpic", "--pixel=-1,2"], "argument --pixel: got '-1,2', needed Y,X"),
    (["testpic", "--pixel", "a,b"], "argument --pixel: got 'a,b', needed Y,X"),
    (["testpic", "--count", "0"], "argument --count: got '0', needed a positive integer"),
    (["testpic", "--option", "completions"], "argument --option: got 'completions', needed KEY=VALUE"),
    (["testpic", "--option", "pixel=[1,2]"], "--option: got pixel=[1, 2]; give it as --pixel"),
    (["testpic", "--option", "seed=1", "--option", "seed=2"], "--option: got 'seed' twice (seed=1 and seed=2)"),
    (["testpic", "--out", "pic.jpg"], "--out: got 'pic.jpg', needed a .png file"),
    (["testpic", "--out", "a_file"], "--out: got 'a_file', needed a .png file"),
    (["testpic", "--out", "nowhere/pic.png"], "--out: cannot write 'nowhere/pic.png': 'nowhere' does not exist"),
    (["testpic", "--out", "exists.png"], "--out: 'exists.png' exists; give --overwrite"),
    (["testpic", "--image", "missing.png"], "--image: got 'missing.png', which does not exist"),
    (["testpic", "--image", "a_folder"], "--image: got 'a_folder', a folder; needed an image file"),
    (["testpic", "--image", "notes.png"], "--image: cannot read 'notes.png' as an image"),
    (["testpic", "--image", "x.png", "--data-dir", "a_folder"], "--data-dir: applies to Fashion-MNIST images only, "
                                                                "and the --image files are shown"),
    (["testpic", "--model", "test_tin"], "--model: unknown model name 'test_tin'; did you mean 'test_tiny'"),
    (["testbn", "--checkpoint", "RUN"], "--checkpoint: RUN is a run of test_tiny, which does not have a BatchNorm "
                                        "layer (what the testbn picture shows)"),
    (["testbn", "--checkpoint", "RUN", "--model", "test_tiny_bn"], "--model: got 'test_tiny_bn', but the run in RUN "
                                                                   "is of 'test_tiny'"),
    (["testpic", "--checkpoint", "UNFINISHED"], "--checkpoint: UNFINISHED has no final weights"),
    (["testpic", "--checkpoint", "a_folder"], "--checkpoint: a_folder holds no config.json"),
]


@pytest.mark.bad_input
@pytest.mark.parametrize(("argv", "needs"), BAD)
def test_bad_input_is_one_clear_line_and_writes_nothing(drawn, run, fmnist, tmp_path, capsys, argv, needs):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "exists.png").write_bytes(b"keep")
    unfinished = str(_unfinished(run, tmp_path / "unfinished"))
    before = _snapshot(tmp_path)
    names = {"RUN": str(run), "UNFINISHED": unfinished}
    argv = ["show", *(names.get(a, a) for a in argv), *([] if "--image" in argv else ["--data-dir", str(fmnist)])]
    assert main(argv) == 2
    err = capsys.readouterr().err
    needs = needs.replace("UNFINISHED", unfinished).replace("RUN", str(run))
    last = err.strip().splitlines()[-1]
    assert last.startswith("visionattn show: error: ") and needs in last and "Traceback" not in err, err
    assert err.startswith("usage:") or len(err.splitlines()) == 1, err  # argparse's errors show the usage first
    assert not drawn and _snapshot(tmp_path) == before and (tmp_path / "exists.png").read_bytes() == b"keep"
