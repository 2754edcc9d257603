"""Everything a training run checks before it does any work: :func:`preflight`, and the model build it shares
with the trainer.

The order is the user's: the recipe's values, the device, the model and its ``--model-arg`` keywords (built on
the ``meta`` device, so no memory or time is spent), the ``--pretrained`` file (read and fitted to that model,
:func:`visionattn.models.pretrained.check_pretrained`), the data source (found, not loaded) and the run directory
(a new or empty one; an earlier run only with ``--resume`` or ``--overwrite``). Each failure is a
:class:`~visionattn.errors.UsageError` that names the option, what it got and what it needs.

The trainer shares the model build, the pretrained load (:func:`load_pretrained_file`) and the rule for the
normalisation that pretrained weights need (:func:`pretrained_normalization`, :func:`normalization`).
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visionattn.errors import CheckpointError, UsageError, check_writable_dir, did_you_mean, unknown_name
from visionattn.recipe import TrainConfig
from visionattn.runlog import RUN_FILES

if TYPE_CHECKING:
    import torch
    from torch import nn

    from visionattn.models.pretrained import LoadReport

__all__ = ["preflight", "build_model", "load_pretrained_file", "pretrained_normalization", "normalization",
           "saved_config", "saved_task", "check_run_task", "clear_run_dir", "finished_result"]

_SET_BY_DATA = ("num_classes", "in_chans", "img_size")  # the trainer passes these from the data
_FASHION_MNIST = ((1, 28, 28), 10)


def preflight(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> None:
    """Raise :class:`UsageError` for anything that would stop ``cfg``'s run, before any work is done."""
    cfg.validate()
    if resume and overwrite:
        raise UsageError("--overwrite: cannot be combined with --resume (one continues the run in the directory, "
                         "the other replaces it); give one of them")
    from visionattn.distributed import check_device_available

    check_device_available(cfg.device)
    if resume and cfg.run_dir and (Path(cfg.run_dir) / "config.json").is_file():
        check_run_task(cfg.run_dir, cfg)  # before the model: another task's run has another kind of model
    _check_model(cfg, resume)
    _check_data(cfg)
    if resume:
        if not cfg.run_dir:
            raise UsageError("--resume: needed the directory of an earlier run")
        _check_resumable(Path(cfg.run_dir))
    else:
        _check_new_run_dir(cfg, overwrite)


# ------------------------------------------------------------------------------------------------ the model
def _accepted_keywords(factory: Any) -> list[str] | None:
    """The keyword names ``factory`` takes, or ``None`` when it takes any (``**kwargs``) or cannot be read."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _check_keywords(cfg: TrainConfig, set_by_data: tuple[str, ...] = _SET_BY_DATA,
                    why: str = "classes, channels, image size", instead: str = "--image-size / --channels") -> None:
    """``cfg.model_args`` are keywords the model's factory takes, none of those the trainer sets (``set_by_data``:
    ``why`` says from what, ``instead`` which flags set them)."""
    from visionattn.registry import get_model_entry

    accepted = _accepted_keywords(get_model_entry(cfg.model).factory)
    for key in cfg.model_args:
        if key in set_by_data:
            raise UsageError(f"--model-arg {key}: set by the trainer from the data ({why}); needed another keyword "
                             f"(use {instead} for the input)")
        if accepted is not None and key not in accepted:
            choices = [k for k in accepted if k not in set_by_data]
            hint = did_you_mean(key, choices) or f"; it takes {', '.join(choices)}"
            raise UsageError(f"--model-arg {key}: model {cfg.model!r} has no keyword {key!r}{hint}")


def build_model(cfg: TrainConfig, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """``cfg.model`` with ``cfg.model_args`` for ``input_shape`` (C, H, W) images of ``num_classes`` classes;
    a keyword or value the factory refuses is a :class:`UsageError` naming ``--model-arg``."""
    from visionattn.info import build_for_input

    _check_keywords(cfg)
    given = ", ".join(f"{k}={v!r}" for k, v in cfg.model_args.items())
    shape = "x".join(map(str, input_shape))
    try:
        return build_for_input(cfg.model, input_shape, num_classes=num_classes, **cfg.model_args)[0]
    except TypeError as err:
        if not cfg.model_args:
            raise
        raise UsageError(f"--model-arg: model {cfg.model!r} cannot be built with {given}: {err}") from None
    except ValueError as err:  # the factory's own checks, and unknown layer names (UsageError)
        argument = f"--model-arg: model {cfg.model!r} with {given}" if cfg.model_args else f"--model {cfg.model}"
        raise UsageError(f"{argument}: cannot be built for {shape} images of {num_classes} classes: {err}") from None


def _known_input(cfg: TrainConfig) -> tuple[tuple[int, int, int], int] | None:
    """The input shape and class count when they are known without reading the data (class count: a guess of
    10 for folders; no factory here depends on it, and a pretrained file's classifier is refitted anyway)."""
    if cfg.data == "fashion-mnist":
        return _FASHION_MNIST
    if cfg.image_size and cfg.channels != "auto":
        return ((1 if cfg.channels == "grey" else 3, cfg.image_size, cfg.image_size), 10)
    return None


def _guessed_input(cfg: TrainConfig) -> tuple[tuple[int, int, int], int]:
    """An input to check a ``--pretrained`` file against when the data's is not known before reading it: one
    channel (any stem adapts to one, so only the architecture is checked) at ``--image-size`` or the model's
    default size (which only layers built for a fixed size, GE-theta's gather, depend on)."""
    from visionattn.registry import get_model_entry

    size = cfg.image_size or get_model_entry(cfg.model).defaults.get("img_size", 224)
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return (1, height, width), 10


def _check_model(cfg: TrainConfig, resume: bool = False) -> None:
    import visionattn.models  # noqa: F401  (registers the models)
    from visionattn.registry import MODELS
    from visionattn.tasks import task_for

    if not cfg.model:
        raise UsageError("--model: missing; needed a registered model name (see `visionattn models`)")
    task = task_for(cfg)
    if cfg.model not in MODELS:
        raise unknown_name("--model", "model", cfg.model, task.model_choices())
    task.check_model(cfg)
    # a resumed run takes its weights from its checkpoint: the file it started from is not read again
    check_file = bool(cfg.pretrained) and not (resume and _has_checkpoint(cfg))
    known = _known_input(cfg)
    if known is None and not check_file:
        task.check_keywords(cfg)
        return
    import torch

    shape, num_classes = known or _guessed_input(cfg)
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        model = task.build_model(cfg, shape, num_classes)
    if check_file:  # the fit, and metadata the normalisation will read
        pretrained_normalization(model, load_pretrained_file(model, str(cfg.pretrained), check_only=True), shape[0])


def _has_checkpoint(cfg: TrainConfig) -> bool:
    return bool(cfg.run_dir) and (Path(str(cfg.run_dir)) / "checkpoints" / "latest.json").is_file()


# -------------------------------------------------------------------------------------- pretrained weights
def load_pretrained_file(model: nn.Module, path: str, check_only: bool = False) -> LoadReport:
    """Load (or with ``check_only`` only check, e.g. on a meta-device model) ``--pretrained`` into ``model``;
    errors name ``--pretrained``."""
    from visionattn.models.pretrained import check_pretrained, load_pretrained

    return (check_pretrained if check_only else load_pretrained)(model, path, argument="--pretrained")


def _file_statistics(report: LoadReport) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The ``mean``/``std`` metadata of the file (JSON lists, as :mod:`visionattn.train` writes them), if any."""
    import math

    meta = report.metadata
    if "mean" not in meta and "std" not in meta:
        return None
    try:
        mean, std = json.loads(meta["mean"]), json.loads(meta["std"])
        valid = (isinstance(mean, list) and isinstance(std, list) and 0 < len(mean) == len(std)
                 and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                         for v in mean + std) and all(v > 0 for v in std))
    except (KeyError, ValueError, TypeError):
        valid = False
    if not valid:
        raise CheckpointError(f"--pretrained: {report.path} has the metadata mean={meta.get('mean')!r}, "
                              f"std={meta.get('std')!r}; needed both, as JSON lists of one length of finite "
                              "numbers (std > 0), as `visionattn train` writes them")
    return tuple(map(float, mean)), tuple(map(float, std))


def _named(mean: tuple[float, ...]) -> str:
    from visionattn.models.pretrained import FASHION_MNIST_MEAN, IMAGENET_MEAN

    return {IMAGENET_MEAN: "ImageNet's ", FASHION_MNIST_MEAN: "Fashion-MNIST's "}.get(tuple(mean), "its ")


def pretrained_normalization(model: nn.Module, report: LoadReport,
                             in_chans: int) -> tuple[list[float], list[float], str] | None:
    """(mean, std, where from) for images fed to weights loaded from a file, or None when nothing says (the
    model has no ``pretrained_cfg``: the trainer then uses the data's own statistics).

    The file's own ``mean``/``std`` metadata come first (a run of ``visionattn train`` records its normalisation
    there), else the model's :class:`~visionattn.models.pretrained.PretrainedCfg`: what its published weights were
    trained with, ImageNet's mean and std for the ImageNet models (timm's ``pretrained_cfg``). Three channels
    for one-channel data are averaged (:meth:`PretrainedCfg.normalization`), as the stem's RGB filters are summed.
    """
    from visionattn.models.pretrained import PretrainedCfg

    found = _file_statistics(report)
    record = getattr(model, "pretrained_cfg", None)
    if found is not None:
        record = PretrainedCfg((len(found[0]), 1, 1), *found)
        where = "the weights file's own metadata (the statistics of the run that wrote it)"
    elif isinstance(record, PretrainedCfg):
        where = (f"the pretrained model's record ({_named(record.mean)}mean and std, {record.architecture}'s "
                 "pretrained_cfg)")
    else:
        return None
    mean, std = record.normalization(in_chans, argument=f"--pretrained {report.path}")
    if len(record.mean) != in_chans:
        where += f", {'averaged' if in_chans == 1 else 'repeated'} for {in_chans}-channel images"
    return mean, std, where


def normalization(model: nn.Module, report: LoadReport | None,
                  images: torch.Tensor) -> tuple[list[float], list[float], str]:
    """(mean, std, where from) for a new run: :func:`pretrained_normalization` when weights were loaded from a
    file (``report``) and it has an answer, else the training ``images``' (N, C, H, W) own per-channel statistics."""
    from visionattn.data import channel_stats

    found = pretrained_normalization(model, report, images.shape[1]) if report is not None else None
    if found is not None:
        return found
    mean, std = channel_stats(images)
    note = " (the model has no pretrained_cfg saying what its weights expect)" if report is not None else ""
    return mean, std, "the training images' own statistics" + note


# ------------------------------------------------------------------------------------------------- the data
def _check_data(cfg: TrainConfig) -> None:
    from visionattn.data import DATASETS, DataError, check_data_dir, find_fashion_mnist

    if cfg.data == "fashion-mnist":
        if cfg.image_size not in (None, 28):
            raise UsageError(f"--image-size: got {cfg.image_size} for fashion-mnist, whose images are 28x28; "
                             "needed 28 or no --image-size")
        if cfg.channels == "rgb":
            raise UsageError("--channels: got 'rgb' for fashion-mnist, whose images are grey; needed auto or grey")
        check_data_dir(cfg.data_dir, cfg.download)
        if not cfg.download:
            try:
                find_fashion_mnist(cfg.data_dir)
            except FileNotFoundError as err:
                raise DataError(f"--data fashion-mnist: {err}") from None
        return
    path = Path(cfg.data)
    if path.is_dir():
        for flag, given in (("--data-dir", cfg.data_dir), ("--download", cfg.download)):
            if given:  # they only locate or fetch the Fashion-MNIST files: silently ignoring them would mislead
                raise UsageError(f"{flag}: applies to --data fashion-mnist only, got it with the image folder "
                                 f"{cfg.data!r}; leave it out")
        return
    if path.exists():
        raise DataError(f"--data: got {cfg.data!r}, a file; needed {' or '.join(DATASETS)} or an image folder")
    hint = did_you_mean(cfg.data.lower(), DATASETS)
    raise DataError(f"--data: got {cfg.data!r}, which is neither a dataset ({', '.join(DATASETS)}) nor an "
                    f"existing folder{hint}")


# -------------------------------------------------------------------------------------------- run directory
def _holds_run(path: Path) -> bool:
    return any((path / name).exists() for name in ("config.json", "result.json", "checkpoints/latest.json"))


def _run_model(path: Path) -> str:
    try:
        return repr(json.loads((path / "config.json").read_text())["config"]["model"])
    except (OSError, ValueError, KeyError, TypeError):
        return "a model"


def _check_new_run_dir(cfg: TrainConfig, overwrite: bool) -> None:
    if cfg.run_dir is None:
        check_writable_dir(Path("runs"), "--run-dir (default runs/<model>-<timestamp>)")
        return
    path = Path(cfg.run_dir)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--run-dir: got {cfg.run_dir!r}, a file; needed a directory (a new one, or an earlier "
                         "run's with --resume)")
    check_writable_dir(path, "--run-dir")
    if not path.is_dir() or overwrite:
        return
    if _holds_run(path):
        raise UsageError(f"--run-dir: {path} holds a run of {_run_model(path)} already: use --resume {path} to "
                         "continue it, another --run-dir, or --overwrite to replace it")
    foreign = sorted(p.name for p in path.iterdir() if p.name not in RUN_FILES and not p.name.startswith("."))
    if foreign:
        raise UsageError(f"--run-dir: {path} holds other files ({', '.join(foreign[:5])}"
                         f"{', ...' if len(foreign) > 5 else ''}); needed a new or empty directory (or --overwrite "
                         "to write the run's files beside them)")


def _check_resumable(path: Path) -> None:
    if not path.exists():
        raise UsageError(f"--resume: {path} does not exist; needed the directory of an earlier run")
    if not path.is_dir():
        raise UsageError(f"--resume: {path} is a file; needed the directory of an earlier run")
    if not (path / "config.json").is_file():
        raise UsageError(f"--resume: {path} holds no config.json; needed the directory of an earlier run (one that "
                         "`visionattn train` wrote)")
    check_writable_dir(path, "--resume")


def saved_config(run_dir: str | Path) -> dict[str, Any]:
    """The configuration an earlier run saved in ``run_dir/config.json``."""
    from visionattn.checkpoint import CheckpointError

    path = Path(run_dir)
    _check_resumable(path)
    try:
        config = json.loads((path / "config.json").read_text())["config"]
        if not isinstance(config, dict):
            raise TypeError(f"'config' is a {type(config).__name__}")
        return dict(config)
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path / 'config.json'}: unreadable run configuration ({err})") from None


def saved_task(run_dir: str | Path) -> str:
    """The task of the run in ``run_dir`` (``config.json``'s ``task``; runs written before tasks had names, and
    unreadable files, which :func:`saved_config` reports, count as classification)."""
    try:
        task = json.loads((Path(run_dir) / "config.json").read_text()).get("task", "classification")
    except (OSError, ValueError, AttributeError):
        return "classification"
    return task if isinstance(task, str) else "classification"


def check_run_task(run_dir: str | Path, cfg: TrainConfig | type[TrainConfig], argument: str = "--resume") -> None:
    """Refuse to continue the run in ``run_dir`` as ``cfg``'s task when it is a run of another task."""
    from visionattn.tasks import TASKS, task_for

    found = saved_task(run_dir)
    if found != cfg.task:
        if found not in TASKS:
            raise UsageError(f"{argument}: {run_dir} is a run of the unknown task {found!r}; needed a {cfg.task} "
                             f"run of `{task_for(cfg).command}`")
        command = task_for(found).command
        raise UsageError(f"{argument}: {run_dir} is a {found} run (of `{command}`), not a {cfg.task} run of "
                         f"`{task_for(cfg).command}`; resume it with `{command} --resume {run_dir}`")


# what other commands write into a run directory besides the run's own files (--overwrite deletes them too)
ADDED_FILES = ("probe.json",)


def clear_run_dir(path: Path) -> None:
    """Delete what a run wrote into ``path`` (for ``--overwrite``), and what commands added (``probe.json``);
    other files stay."""
    for name in (*RUN_FILES, *ADDED_FILES):
        target = path / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def finished_result(run_dir: Path) -> dict[str, Any] | None:
    """The saved ``result.json`` of a finished run, or ``None`` while it is unfinished."""
    try:
        result = json.loads((run_dir / "result.json").read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and (run_dir / "model.safetensors").is_file() else None
