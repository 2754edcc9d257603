"""Everything a training run checks before it does any work: :func:`preflight`, and the model build it shares
with the trainer.

The order is the user's: the recipe's values, the device, the model and its ``--model-arg`` keywords (built on
the ``meta`` device, so no memory or time is spent), the data source (found, not loaded) and the run directory
(a new or empty one; an earlier run only with ``--resume`` or ``--overwrite``). Each failure is a
:class:`~visionattn.errors.UsageError` that names the option, what it got and what it needs.
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visionattn.errors import UsageError, check_writable_dir, did_you_mean, unknown_name
from visionattn.recipe import TrainConfig
from visionattn.runlog import RUN_FILES

if TYPE_CHECKING:
    from torch import nn

__all__ = ["preflight", "build_model", "saved_config", "clear_run_dir", "finished_result"]

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
    _check_model(cfg)
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


def _check_keywords(cfg: TrainConfig) -> None:
    from visionattn.registry import get_model_entry

    accepted = _accepted_keywords(get_model_entry(cfg.model).factory)
    for key in cfg.model_args:
        if key in _SET_BY_DATA:
            raise UsageError(f"--model-arg {key}: set by the trainer from the data (classes, channels, image size); "
                             "needed another keyword (use --image-size / --channels for the input)")
        if accepted is not None and key not in accepted:
            choices = [k for k in accepted if k not in _SET_BY_DATA]
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
    10 for folders; no factory here depends on it)."""
    if cfg.data == "fashion-mnist":
        return _FASHION_MNIST
    if cfg.image_size and cfg.channels != "auto":
        return ((1 if cfg.channels == "grey" else 3, cfg.image_size, cfg.image_size), 10)
    return None


def _check_model(cfg: TrainConfig) -> None:
    import visionattn.models  # noqa: F401  (registers the models)
    from visionattn.registry import MODELS, list_models

    if not cfg.model:
        raise UsageError("--model: missing; needed a registered model name (see `visionattn models`)")
    if cfg.model not in MODELS:
        raise unknown_name("--model", "model", cfg.model, list_models())
    known = _known_input(cfg)
    if known is None:
        _check_keywords(cfg)
        return
    import torch

    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        build_model(cfg, *known)


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


def clear_run_dir(path: Path) -> None:
    """Delete what a run wrote into ``path`` (for ``--overwrite``); other files stay."""
    for name in RUN_FILES:
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
