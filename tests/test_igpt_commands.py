"""``visionattn igpt sample|complete``: PNG grids of the right size from a run's final weights and palette,
reproducible by seed, completions that keep the top half; every mistake one clear error before any work."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.engine_support import ROOT, child_env, make_fashion_mnist, register_tiny_models
from tests.igpt_support import tiny_config
from visionattn.cli import build_parser, main
from visionattn.data import load_fashion_mnist
from visionattn.igpt_commands import SUBCOMMANDS, complete_images, grid_size, sample_images
from visionattn.igpt_task import encode_images, load_run
from visionattn.recipe import TrainConfig
from visionattn.train import train

register_tiny_models()


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory) -> Path:
    return make_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_train=64, n_test=16)


@pytest.fixture(scope="module")
def run(fmnist, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("igpt") / "run"
    train(tiny_config(fmnist, folder, epochs=1))
    return folder


def test_sample_writes_a_grid_of_the_right_size(run, tmp_path, capsys):
    out = tmp_path / "samples.png"
    argv = ["igpt", "sample", "--checkpoint", str(run), "--num", "5", "--scale", "2", "--threads", "1", "--out"]
    assert main([*argv, str(out)]) == 0
    assert "5 samples" in capsys.readouterr().out
    with Image.open(out) as picture:  # 5 images: 2 rows of 3 columns, the last cell blank
        assert picture.size == grid_size(2, 3, 28, 28, 2) == (3 * 56 + 4 * 2, 2 * 56 + 3 * 2) and picture.mode == "L"
        pixels = torch.from_numpy(np.array(picture))
    assert (pixels[60:, 118:] == 255).all() and not (pixels[2:58, 2:58] == 255).all()
    again = tmp_path / "again.png"
    assert main([*argv, str(again)]) == 0 and again.read_bytes() == out.read_bytes()  # the seed fixes the draws
    assert main([*argv, str(again)]) == 0 and again.read_bytes() == out.read_bytes()  # an existing --out is replaced


def test_samples_depend_on_the_seed_and_use_the_palette(run):
    loaded = load_run(run)
    a, b, c = (sample_images(loaded, 2, seed=s) for s in (0, 0, 1))
    assert a.shape == (2, 1, 28, 28) and torch.equal(a, b) and not torch.equal(a, c)
    levels = loaded.palette.centroids[:, 0]
    assert torch.isin(a, levels).all()  # every pixel is one of the palette's levels


def test_complete_keeps_the_top_half_and_writes_originals_beside_completions(run, fmnist, tmp_path):
    loaded = load_run(run)
    images = load_fashion_mnist(fmnist).test.images[:3]
    grid = complete_images(loaded, images, completions=2, seed=0)
    rendered = loaded.palette.decode(encode_images(loaded.palette, images).long(), (1, 28, 28))
    assert grid.shape == (3, 3, 1, 28, 28) and torch.equal(grid[:, 0], rendered)
    for k in (1, 2):
        assert torch.equal(grid[:, k, :, :14], rendered[:, :, :14])  # the kept rows
    assert not torch.equal(grid[:, 1, :, 14:], grid[:, 2, :, 14:])  # two draws of the rest
    out = tmp_path / "complete.png"
    assert main(["igpt", "complete", "--checkpoint", str(run), "--num-images", "3", "--completions", "2",
                 "--threads", "1", "--out", str(out)]) == 0
    with Image.open(out) as picture:
        assert picture.size == grid_size(3, 3, 28, 28, 4)


# --------------------------------------------------------------------------------------------------- errors
@pytest.fixture(scope="module")
def other_runs(fmnist, run, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("others")
    train(TrainConfig(model="test_tiny", data_dir=str(fmnist), epochs=1, batch_size=32, threads=1, progress=False,
                      run_dir=str(root / "classifier")))
    shutil.copytree(run, root / "unfinished")
    (root / "unfinished" / "model.safetensors").unlink()
    (root / "empty").mkdir()
    (root / "a_file").write_text("x")
    return {"classifier": root / "classifier", "unfinished": root / "unfinished", "empty": root / "empty",
            "file": root / "a_file", "missing": root / "missing"}


@pytest.mark.bad_input
@pytest.mark.parametrize("command,checkpoint,extra,message", [
    ("sample", "missing", [], "--checkpoint: {path} does not exist; needed the directory of a finished `visionattn "
                              "igpt train` run"),
    ("sample", "file", [], "--checkpoint: {path} is a file; needed the directory of a finished `visionattn igpt "
                           "train` run"),
    ("complete", "empty", [], "--checkpoint: {path} holds no config.json; needed the directory of a finished "
                              "`visionattn igpt train` run"),
    ("sample", "classifier", [], "--checkpoint: {path} is a classification run of 'test_tiny' (made by `visionattn "
                                 "train`), not a next-pixel run; needed the directory of a finished `visionattn igpt "
                                 "train` run"),
    ("complete", "unfinished", [], "--checkpoint: {path} has no final weights (model.safetensors): the run is "
                                   "unfinished; finish it with `visionattn igpt train --resume {path}`"),
    ("probe", "unfinished", [], "has no final weights"),
    ("sample", "run", ["--top-k", "17"], "--top-k: got 17, needed at most the run's 16 palette levels"),
    ("complete", "run", ["--num-images", "17"], "--num-images: got 17, needed at most the 16 test images"),
    ("sample", "run", ["--temperature", "0"], "argument --temperature: got '0', needed a number > 0"),
    ("sample", "run", ["--num", "0"], "argument --num: got '0', needed a positive integer"),
    ("probe", "run", ["--layer", "3"], "--layer: got 3, needed 0 to 2 (the run's model has 2 blocks"),
])
def test_mistakes_are_one_clear_error(run, other_runs, tmp_path, capsys, command, checkpoint, extra, message):
    path = run if checkpoint == "run" else other_runs[checkpoint]
    out = ["--out", str(tmp_path / "x.png")] if command != "probe" else []
    assert main(["igpt", command, "--checkpoint", str(path), *out, *extra]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"visionattn igpt {command}: error: ") and message.format(path=path) in last, last
    assert not (tmp_path / "x.png").exists()


@pytest.mark.bad_input
@pytest.mark.parametrize("out,message", [
    ("x.jpg", "--out: got '{tmp}/x.jpg', needed a .png file"),
    (".", "--out: got '{tmp}/.', needed a .png file"),
    ("nowhere/x.png", "--out: cannot write '{tmp}/nowhere/x.png': '{tmp}/nowhere' does not exist"),
    ("folder.png", "--out: '{tmp}/folder.png' is a folder, needed a file path"),
])
def test_a_bad_output_file_is_refused_before_the_run_is_read(tmp_path, capsys, out, message):
    (tmp_path / "folder.png").mkdir()
    assert main(["igpt", "sample", "--checkpoint", str(tmp_path / "missing"), "--out", f"{tmp_path}/{out}"]) == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- options
def _igpt_parsers() -> dict:
    top = build_parser()._subparsers._group_actions[0].choices["igpt"]
    return top._subparsers._group_actions[0].choices


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_option_shows_its_default(name):
    parser = _igpt_parsers()[name]
    missing = [a.option_strings[0] for a in parser._actions if a.option_strings and a.help
               and a.option_strings[0] != "-h" and not any(w in a.help for w in ("default", "required"))]
    assert missing == []


def test_the_sub_commands_answer_help_without_torch():
    code = ("import sys\nfrom visionattn.cli import main\nfrom visionattn.igpt_commands import SUBCOMMANDS\n"
            "codes = [main(['igpt', '--help'])] + [main(['igpt', c, '--help']) for c in SUBCOMMANDS]\n"
            "print(codes, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), check=True,
                         cwd=ROOT).stdout.strip().splitlines()
    assert out[-1] == f"{[0] * (1 + len(SUBCOMMANDS))} False", out
