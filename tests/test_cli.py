"""The ``visionattn`` command line: one error path for every sub-command, parsing without torch, the listings.

Bad inputs are run in-process through :func:`visionattn.cli.main` (fast); each must exit with status 2, print
``visionattn CMD: error:`` naming the argument and what it needs, and write nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine_support import ROOT, child_env, register_tiny_models
from visionattn import cli

register_tiny_models()

def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory with a file and a folder to aim outputs at; relative outputs land here."""
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder").mkdir()
    monkeypatch.chdir(tmp_path)

    def no_work(*args, **kwargs):
        raise AssertionError("a bad input reached the trainer")

    import visionattn.train

    monkeypatch.setattr(visionattn.train, "Trainer", no_work)
    return tmp_path


_BENCH = ["bench", "--layers", "se", "--input", "4x4x4", "--batch", "2", "--reps", "1", "--warmup", "0"]
_COMPARE = ["compare", "--models", "test_tiny", "--epochs", "1", "--no-progress"]

BAD = [
    # layers
    (["layers", "--channels", "0"], "--channels", "positive integer"),
    (["layers", "--channels", "-3"], "--channels", "positive integer"),
    (["layers", "--channels", "x"], "--channels", "positive integer"),
    (["layers", "--size", "0", "0"], "--size", "positive integer"),
    (["layers", "--size", "8", "-1"], "--size", "positive integer"),
    (["layers", "--size", "8"], "--size", "expected 2 arguments"),
    (["layers", "--family", "chanel"], "--family", "did you mean 'channel'"),
    (["layers", "--bogus"], "unrecognized arguments", "--bogus"),
    # models
    (["models", "--family", "resnet-smal"], "--family", "did you mean 'resnet-small'"),
    (["models", "--family", "qqqq"], "--family", "family names are"),
    # info
    (["info", "resnt20"], "model", "did you mean 'resnet20'"),
    (["info", "qqqq"], "model", "model names are"),
    (["info"], "model", "required"),
    (["info", "resnet20", "--input", "3x0x224"], "--input", "CxHxW"),
    (["info", "resnet20", "--input", ""], "--input", "CxHxW"),
    (["info", "resnet20", "--input", "28x28x"], "--input", "CxHxW"),
    (["info", "resnet20", "--input", "3x8"], "--input", "CxHxW"),
    (["info", "resnet20", "--input", "axbxc"], "--input", "CxHxW"),
    (["info", "resnet20", "--num-classes", "0"], "--num-classes", "positive integer"),
    (["info", "resnet20", "--num-classes", "-1"], "--num-classes", "positive integer"),
    (["info", "resnet20", "--num-classes", "ten"], "--num-classes", "positive integer"),
    # bench
    ([*_BENCH, "--reps", "0"], "--reps", "positive integer"),
    ([*_BENCH, "--reps", "-1"], "--reps", "positive integer"),
    ([*_BENCH, "--batch", "0"], "--batch", "positive integer"),
    ([*_BENCH, "--batch", "-2"], "--batch", "positive integer"),
    ([*_BENCH, "--batch", "2.5"], "--batch", "positive integer"),
    ([*_BENCH, "--warmup", "-1"], "--warmup", "integer >= 0"),
    ([*_BENCH, "--warmup", "x"], "--warmup", "integer >= 0"),
    (["bench", "--layers", ""], "--layers", "comma-separated names"),
    (["bench", "--layers", ",,"], "--layers", "comma-separated names"),
    (["bench", "--models", ""], "--models", "comma-separated names"),
    ([*_BENCH, "--input", ""], "--input", "CxHxW"),
    ([*_BENCH, "--input", "3x0x224"], "--input", "CxHxW"),
    ([*_BENCH, "--input", "3x224"], "--input", "CxHxW"),
    ([*_BENCH, "--threads", "-1"], "--threads", "positive integer"),
    ([*_BENCH, "--threads", "0"], "--threads", "positive integer"),
    ([*_BENCH, "--device", "tpu"], "--device", "needed auto, cpu, cuda"),
    ([*_BENCH, "--device", "cuda:x"], "--device", "needed auto, cpu, cuda"),
    ([*_BENCH, "--precision", "fp16"], "--precision", "invalid choice"),
    (["bench", "--layers", "sx"], "--layers", "attention layer names are"),
    (["bench", "--layers", "se,ecaa"], "--layers", "did you mean 'eca'"),
    (["bench", "--models", "resnt20"], "--models", "did you mean 'resnet20'"),
    (["bench", "--models", "resnet20,qqqq"], "--models", "'qqqq'"),
    (["bench", "--models", "resnet20", "--num-classes", "0"], "--num-classes", "positive integer"),
    (["bench"], "--models", "required"),
    (["bench", "--models", "resnet20", "--layers", "se"], "--layers", "not allowed with argument --models"),
    ([*_BENCH, "--csv", "a_folder"], "--csv", "is a folder"),
    ([*_BENCH, "--csv", "missing/out.csv"], "--csv", "does not exist"),
    ([*_BENCH, "--csv", "a_file/out.csv"], "--csv", "is not a folder"),
    ([*_BENCH, "--csv", ""], "--csv", "empty path"),
    # compare: every check before the first model trains
    (["compare", "--models", ""], "--models", "comma-separated names"),
    (["compare", "--models", "resnt20"], "--models", "did you mean 'resnet20'"),
    (["compare", "--models", "test_tiny,resnt20"], "--models", "did you mean 'resnet20'"),
    (["compare", "--models", "test_tiny,test_tiny"], "--models", "'test_tiny' is given 2 times"),
    ([*_COMPARE, "--seeds", "1,1"], "--seeds", "seed 1 is given 2 times"),
    ([*_COMPARE, "--seeds", "0,1,0"], "--seeds", "seed 0 is given 2 times"),
    ([*_COMPARE, "--seeds", "x"], "--seeds", "comma-separated integers"),
    ([*_COMPARE, "--seeds", ""], "--seeds", "comma-separated integers"),
    ([*_COMPARE, "--seeds", "1.5"], "--seeds", "comma-separated integers"),
    ([*_COMPARE, "--baseline", "resnet20"], "--baseline", "needed one of 'test_tiny'"),
    ([*_COMPARE, "--out", "a_file"], "--out", "is a file"),
    ([*_COMPARE, "--out", "a_file/cmp"], "--out", "is a file"),
    ([*_COMPARE, "--out", ""], "--out", "empty path"),
    ([*_COMPARE, "--cost-batch", "0"], "--cost-batch", "positive integer"),
    ([*_COMPARE, "--cost-batch", "x"], "--cost-batch", "positive integer"),
    ([*_COMPARE, "--lr", "inf"], "--lr", "finite"),
    ([*_COMPARE, "--weight-decay", "nan"], "--weight-decay", "finite"),
    ([*_COMPARE, "--epochs", "0"], "--epochs", ""),
    ([*_COMPARE, "--batch-size", "0"], "--batch-size", ""),
    ([*_COMPARE, "--device", "tpu"], "--device", "needed auto, cpu, cuda"),
    ([*_COMPARE, "--data", "no_such_folder"], "--data", "neither a dataset"),
    ([*_COMPARE, "--model-arg", "oops"], "--model-arg", "KEY=VALUE"),
    ([*_COMPARE, "--overwrite"], "unrecognized arguments", "--overwrite"),
    ([*_COMPARE, "--run-dir", "x"], "unrecognized arguments", "--run-dir"),
    ([*_COMPARE, "--resume", "x"], "unrecognized arguments", "--resume"),
    # train goes through the same path
    (["train", "--model", "resnt20"], "--model", "did you mean 'resnet20'"),
    (["train", "--model", "test_tiny", "--lr", "inf"], "--lr", "finite"),
    (["train", "--model", "test_tiny", "--device", "tpu"], "--device", "needed auto, cpu, cuda"),
    # the top level
    ([], "COMMAND", "required"),
    (["trian"], "invalid choice", "'trian'"),
]


@pytest.mark.bad_input
@pytest.mark.parametrize(("argv", "argument", "needs"), BAD, ids=[" ".join(a[0]) or "nothing" for a in BAD])
def test_bad_input_is_one_clear_error_and_writes_nothing(workdir, capsys, argv, argument, needs):
    before = _snapshot(workdir)
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    prefix = f"visionattn {argv[0]}: error:" if argv and argv[0] in cli.COMMANDS else "visionattn: error:"
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith(prefix), captured.err
    assert argument in last and needs in last, last
    assert "Traceback" not in captured.err and captured.out == ""
    assert _snapshot(workdir) == before  # no run directory, no csv, no comparison folder


@pytest.mark.bad_input
@pytest.mark.skipif(_cuda_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("argv", [[*_BENCH, "--device", "cuda"], [*_BENCH, "--device", "cuda:1"],
                                  [*_COMPARE, "--device", "cuda"]], ids=["bench", "bench-cuda1", "compare"])
def test_cuda_without_a_gpu_is_a_clear_error(workdir, capsys, argv):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"visionattn {argv[0]}: error: --device: got 'cuda") and "not available" in err
    assert _snapshot(workdir) == {"a_file", "a_folder"}


@pytest.mark.bad_input
@pytest.mark.parametrize("command", ["train", "compare"])
def test_a_missing_train_extra_names_the_install_command_before_any_work(monkeypatch, capsys, command):
    real = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: None if name == "tqdm" else real(name))
    ran = dataclasses.replace(cli.COMMANDS[command], run=lambda args: pytest.fail("ran without the extra"))
    monkeypatch.setitem(cli.COMMANDS, command, ran)
    assert cli.main([command, "--model" if command == "train" else "--models", "resnet20"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"visionattn {command}: error:") and "missing: tqdm" in err
    assert "pip install 'visionattn[train]'" in err and "make install" in err


@pytest.mark.bad_input
@pytest.mark.parametrize(("raised", "shown"), [
    (FileNotFoundError(2, "No such file or directory", "data/x.png"), "data/x.png: No such file or directory"),
    (PermissionError(13, "Permission denied", "/root/out.csv"), "/root/out.csv: Permission denied"),
    (IsADirectoryError(21, "Is a directory", "runs"), "runs: Is a directory"),
    (ValueError("kernel_size: got 4, needed an odd number"), "kernel_size: got 4, needed an odd number"),
    (ModuleNotFoundError("No module named 'PIL'", name="PIL"), "pip install 'visionattn[train]'"),
])
def test_engine_errors_take_the_one_error_path(monkeypatch, capsys, raised, shown):
    def fail(args):
        raise raised

    monkeypatch.setitem(cli.COMMANDS, "info", dataclasses.replace(cli.COMMANDS["info"], run=fail))
    assert cli.main(["info", "resnet20"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("visionattn info: error: ") and shown in err and "Traceback" not in err


def test_other_import_errors_are_not_disguised(monkeypatch):
    def fail(args):
        raise ModuleNotFoundError("No module named 'nope'", name="nope")

    monkeypatch.setitem(cli.COMMANDS, "info", dataclasses.replace(cli.COMMANDS["info"], run=fail))
    with pytest.raises(ModuleNotFoundError):
        cli.main(["info", "resnet20"])


def test_ctrl_c_in_compare_prints_one_line_with_the_command_to_resume(monkeypatch, capsys, tmp_path):
    def interrupted(args):
        raise KeyboardInterrupt("visionattn train --resume runs/x")  # the inner run's hint is not compare's

    monkeypatch.setitem(cli.COMMANDS, "compare", dataclasses.replace(cli.COMMANDS["compare"], run=interrupted))
    argv = ["compare", "--models", "resnet20,se_resnet20", "--out", str(tmp_path / "my cmp"), "--epochs", "2"]
    assert cli.main(argv) == 130
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("visionattn compare: interrupted; ")
    assert lines[0].endswith(f"visionattn compare --models resnet20,se_resnet20 --out '{tmp_path / 'my cmp'}' "
                             "--epochs 2")


def test_ctrl_c_in_train_prints_the_trainers_one_line(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt("last checkpoint runs/x/checkpoints; resume with: visionattn train --resume runs/x")

    monkeypatch.setitem(cli.COMMANDS, "train", dataclasses.replace(cli.COMMANDS["train"], run=interrupted))
    assert cli.main(["train", "--model", "resnet20"]) == 130
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["visionattn train: interrupted; last checkpoint runs/x/checkpoints; resume with: visionattn "
                     "train --resume runs/x"]


def test_help_and_version_do_not_import_torch():
    code = ("import sys\nfrom visionattn.cli import COMMANDS, main\n"
            "codes = [main(['--help']), main(['--version'])] + [main([c, '--help']) for c in COMMANDS]\n"
            "print(codes, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), check=True,
                         cwd=ROOT).stdout.strip().splitlines()
    assert out[-1] == f"{[0] * (2 + len(cli.COMMANDS))} False", out


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("visionattn 0.")


def _options(parser: argparse.ArgumentParser):
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        for action in command._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                yield name, action


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_option_shows_its_default(command):
    missing = [a.option_strings[0] for name, a in _options(cli.build_parser())
               if name == command and not any(w in (a.help or "") for w in ("default", "required")) and not a.required
               and not isinstance(a, argparse.BooleanOptionalAction)]
    assert not missing, f"{command}: no default in the help of {missing}"


def test_models_lists_every_model_and_filters_by_family(capsys):
    import visionattn

    assert cli.main(["models"]) == 0
    text = capsys.readouterr().out
    assert all(f"| {name} " in text for name in visionattn.list_models())
    assert cli.main(["models", "--family", "sasa"]) == 0
    text = capsys.readouterr().out
    assert "| sasa_resnet26 " in text and "| resnet20 " not in text and "SASA" in text


def test_layers_at_16_channels_lists_the_rest_and_says_why_sk_cannot(capsys):
    import visionattn

    assert cli.main(["layers", "--channels", "16", "--size", "4", "4"]) == 0
    text = capsys.readouterr().out
    table, note = text.split("Not buildable at 16 channels")
    assert all(f"| {n} " in table for n in visionattn.list_attn() if n != "sk") and "| sk " not in table
    assert "- sk: channels must be divisible by groups=32" in note


def test_bench_stderr_is_empty_for_a_tiny_model(tmp_path):
    """The profiler's own lines (USDT ... profiler_start, CPUAllocator ... unknown size) no longer reach stderr."""
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "engine_support.py"), "bench", "--models", "test_tiny",
                           "--input", "1x8x8", "--batch", "2", "--reps", "1", "--warmup", "0", "--csv",
                           str(tmp_path / "b.csv")], capture_output=True, text=True, env=child_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "| test_tiny " in proc.stdout and (tmp_path / "b.csv").is_file()


def test_quiet_profiler_keeps_other_stderr_lines(capfd):
    import os

    from visionattn.bench import _quiet_profiler

    with _quiet_profiler():
        os.write(2, b"USDT:2026-12-02 01:18:05 6023:6023 SyncActivityProfilerHandler.cpp:52] profiler_start\n")
        os.write(2, b"a real error\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "a real error\nafter\n"
    with pytest.raises(RuntimeError), _quiet_profiler():
        raise RuntimeError("boom")
    os.write(2, b"restored\n")  # fd 2 is back after an exception too
    assert capfd.readouterr().err == "restored\n"


def test_compare_cli_validates_the_plan_without_creating_the_folder(workdir, capsys):
    out = workdir / "cmp"
    out.mkdir()
    (out / "plan.json").write_text(json.dumps({"recipe": {"epochs": 9}}))
    assert cli.main([*_COMPARE, "--out", str(out)]) == 2
    assert "--out: " in capsys.readouterr().err and not (out / "runs").exists()
