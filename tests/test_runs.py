"""The run directory check that every command reading a finished run shares (:func:`visionattn.runs.check_run_dir`);
the runs themselves are reloaded in tests/show/test_inputs.py and tests/test_igpt_commands.py."""

from __future__ import annotations

import json

import pytest

from visionattn.errors import UsageError
from visionattn.runs import RUN_DIR, check_run_dir


def _run(folder, task: str | None) -> None:
    folder.mkdir()
    config = {"config": {"model": "test_tiny"}, **({"task": task} if task else {})}
    (folder / "config.json").write_text(json.dumps(config))


def test_a_run_of_the_task_passes(tmp_path):
    _run(tmp_path / "old", None)  # written before tasks had names: a classification run
    _run(tmp_path / "igpt", "next-pixel")
    check_run_dir(tmp_path / "old", "--checkpoint", "classification")
    check_run_dir(tmp_path / "igpt", "--checkpoint", "next-pixel")
    check_run_dir(tmp_path / "igpt", "--checkpoint")  # any task


@pytest.mark.bad_input
@pytest.mark.parametrize(("name", "task", "message"), [
    ("missing", None, f"--checkpoint: {{path}} does not exist; needed {RUN_DIR}"),
    ("file", "next-pixel", "--checkpoint: {path} is a file; needed the directory of a finished `visionattn igpt "
                           "train` run"),
    ("empty", "classification", "--checkpoint: {path} holds no config.json; needed the directory of a finished "
                                "`visionattn train` run"),
    ("classifier", "next-pixel", "--checkpoint: {path} is a classification run of 'test_tiny' (made by `visionattn "
                                 "train`), not a next-pixel run; needed the directory of a finished `visionattn igpt "
                                 "train` run"),
    ("mystery", "classification", "--checkpoint: {path} is a mystery run of 'test_tiny', not a classification run; "
                                  "needed the directory of a finished `visionattn train` run"),
])
def test_a_wrong_directory_says_what_it_got_what_is_needed_and_which_command_makes_it(tmp_path, name, task, message):
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    _run(tmp_path / "classifier", "classification")
    _run(tmp_path / "mystery", "mystery")
    path = tmp_path / name
    with pytest.raises(UsageError) as caught:
        check_run_dir(path, "--checkpoint", task)
    assert str(caught.value) == message.format(path=path)
