"""Finished runs reloaded for use: the model a ``visionattn train`` run trained, built as the trainer built it, with
what it needs to be fed (input shape, normalisation, class names). Nothing pickled is read. (An ``igpt train``
run: :func:`visionattn.igpt_task.load_run`.)"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from visionattn.errors import CheckpointError, UsageError

if TYPE_CHECKING:
    from visionattn.recipe import TrainConfig

__all__ = ["RUN_DIR", "ClassificationRun", "check_run_dir", "load_classification_run"]

RUN_DIR = "the directory of a finished `visionattn train` (or `visionattn igpt train`) run"


@dataclass
class ClassificationRun:
    """A finished ``visionattn train`` run: its config, final model (eval mode, CPU), input (C, H, W), class names,
    the normalisation it trained with and its ``result.json``."""

    folder: Path
    cfg: TrainConfig
    model: nn.Module
    image_shape: tuple[int, int, int]
    classes: list[str]
    mean: list[float]
    std: list[float]
    result: dict[str, Any]


def check_run_dir(folder: Path, argument: str, task: str | None = None) -> None:
    """``folder`` is a run directory (one with a ``config.json``) and, with ``task`` (a name in
    :data:`visionattn.tasks.TASKS`), a run of that task; else a UsageError naming ``argument`` that says what it got,
    what is needed and which command makes such a run."""
    from visionattn.tasks import TASKS, task_for
    from visionattn.train_checks import _run_model, saved_task

    needed = RUN_DIR if task is None else f"the directory of a finished `{task_for(task).command}` run"
    if not folder.is_dir():
        what = "is a file" if folder.exists() else "does not exist"
        raise UsageError(f"{argument}: {folder} {what}; needed {needed}")
    if not (folder / "config.json").is_file():
        raise UsageError(f"{argument}: {folder} holds no config.json; needed {needed}")
    if task is None:
        return
    found = saved_task(folder)
    if found != task:
        made_by = f" (made by `{task_for(found).command}`)" if found in TASKS else ""
        raise UsageError(f"{argument}: {folder} is a {found} run of {_run_model(folder)}{made_by}, not a {task} run; "
                         f"needed {needed}")


def _normalisation(config: dict[str, Any], metadata: dict[str, str]) -> tuple[list[float], list[float]]:
    """The run's (mean, std): ``config.json``'s record, else the weights' metadata (both written by the trainer)."""
    record = config.get("normalize") or {"mean": json.loads(metadata["mean"]), "std": json.loads(metadata["std"])}
    return [float(v) for v in record["mean"]], [float(v) for v in record["std"]]


def load_classification_run(run_dir: str | os.PathLike, argument: str = "--checkpoint") -> ClassificationRun:
    """Reload a finished ``visionattn train`` run from its directory (``config.json``, ``result.json`` and
    ``model.safetensors``; nothing pickled is read), its model built as the trainer built it.

    Raises:
        UsageError: ``argument`` is not a run directory, a run of another task, or unfinished.
        CheckpointError: an unreadable configuration, or weights that do not fit the model.
    """
    from visionattn.checkpoint import load_weights
    from visionattn.recipe import TrainConfig
    from visionattn.tasks import ClassificationTask
    from visionattn.train_checks import finished_result

    folder = Path(run_dir)
    check_run_dir(folder, argument, ClassificationTask.name)
    result = finished_result(folder)
    if result is None:
        raise UsageError(f"{argument}: {folder} has no final weights and result (model.safetensors, result.json): "
                         f"the run is unfinished; finish it with `visionattn train --resume {folder}`")
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text())
        names = {f.name for f in fields(TrainConfig)}
        cfg = TrainConfig(**{k: v for k, v in config["config"].items() if k in names})
        data = config["data"]
        shape = (int(data["in_chans"]), *(int(v) for v in data["image_size"]))
        num_classes, classes = int(data["num_classes"]), [str(c) for c in data.get("classes") or []]
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise CheckpointError(f"{config_path}: unreadable run configuration ({err})") from None
    model = ClassificationTask.build_model(cfg, shape, num_classes)  # type: ignore[arg-type]
    metadata = load_weights(folder / "model.safetensors", model, cfg.model)
    try:
        mean, std = _normalisation(config, metadata)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{config_path}: no readable normalisation ({err}); needed a run of `visionattn "
                              "train`, which records it") from None
    return ClassificationRun(folder, cfg, model.eval(), shape, classes, mean, std, result)  # type: ignore[arg-type]
