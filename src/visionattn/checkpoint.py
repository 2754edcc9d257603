"""Checkpoints that survive a kill at any moment and say clearly what is wrong when they cannot be used.

A checkpoint is two files: the model's weights in safetensors (no code runs when they are read) and the trainer's
state (optimizer, schedule, RNG states, position in the run) written by ``torch.save`` and read back with
``weights_only=True``. Every file is written to a temporary name, flushed to disk and renamed over the old one, so
a reader sees either the previous file or the new one, never half of one. A pointer, ``latest.json``, is renamed
into place after both files of a checkpoint are complete; resuming follows it, so a kill between the two files
still resumes from the last complete pair.

Weights written before commit 9b8d90e renamed the ResNet family's modules (keys ``stem.``, ``stages.``,
``head.``) are converted on load (:mod:`visionattn.models.legacy`); :func:`load_weights` says so in the metadata
it returns (entry :data:`CONVERTED`), :meth:`CheckpointDir.load` in the trainer state, for the log. The converted
SK networks' fuse and select weights gain two unit axes, and :func:`fit_optimizer_state` gives the optimizer's
saved momenta the same shapes.
"""

from __future__ import annotations

import io
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from visionattn.errors import CheckpointError, UsageError

__all__ = [
    "CheckpointError",
    "CONVERTED",
    "atomic_write",
    "save_weights",
    "load_weights",
    "read_weights",
    "fit_optimizer_state",
    "save_state",
    "load_state",
    "CheckpointDir",
    "capture_rng",
    "restore_rng",
]


_UMASK = os.umask(0)
os.umask(_UMASK)


CONVERTED = "converted"
"""The entry that :func:`load_weights` adds to the metadata it returns, and :meth:`CheckpointDir.load` to the trainer
state, when the weights were in the layout before 9b8d90e and were converted: a one-line note for the log."""


def atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that ``path`` always holds either its old content or all of ``data``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode open() would have
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:  # make the rename itself durable
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def save_weights(path: str | os.PathLike, model: nn.Module, metadata: dict[str, str] | None = None) -> Path:
    """Write ``model``'s state dict (parameters and buffers) as safetensors, atomically."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in _unwrap(model).state_dict().items()}
    return atomic_write(path, save(tensors, metadata={k: str(v) for k, v in (metadata or {}).items()}))


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a safetensors file; :class:`CheckpointError` when it cannot be parsed."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint weights {path} do not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as err:  # safetensors raises its own SafetensorError, or OSError/ValueError
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err}); it is "
                              "truncated or corrupt") from None


def _mismatches(path: Path, tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> list[str]:
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing from the file (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} tensors the model does not have (e.g. {unexpected[:3]})")
    shapes = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches ({'; '.join(shapes[:3])})")
    return problems


def _convert_legacy(path: Path, tensors: dict[str, torch.Tensor],
                    expected: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str | None]:
    """``tensors`` under today's names when they are in the layout before 9b8d90e, with the note for the log."""
    from visionattn.models.legacy import LEGACY_COMMIT, convert_legacy_state_dict, is_legacy_state_dict

    if not is_legacy_state_dict(tensors):
        return tensors, None
    try:
        converted = convert_legacy_state_dict(tensors, expected)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    reshaped = sum(old.shape != new.shape for old, new in zip(tensors.values(), converted.values()))
    note = (f"{path.name}: weights in the module layout before {LEGACY_COMMIT} (stem., stages., head.); converted "
            f"on load to today's names (conv1, layer1.., fc): {len(converted)} tensors renamed, {reshaped} "
            "reshaped")
    return converted, note


def load_weights(path: str | os.PathLike, model: nn.Module, model_name: str | None = None) -> dict[str, str]:
    """Load a safetensors checkpoint into ``model`` after checking that it fits; returns the file's metadata.

    A file in the layout before 9b8d90e (keys ``stem.``, ``stages.``, ``head.``) is converted first
    (:func:`visionattn.models.legacy.convert_legacy_state_dict`); the returned metadata then has the entry
    :data:`CONVERTED`, a note for the log.

    Raises:
        CheckpointError: unreadable file, written for another model (``model_name`` differs from the file's
            ``model`` metadata), or names and shapes that differ from ``model``'s; the message names the file.
    """
    path = Path(path)
    tensors, metadata = read_weights(path)
    metadata.pop(CONVERTED, None)  # only this function says so
    if model_name is not None and metadata.get("model", model_name) != model_name:
        raise CheckpointError(f"{path}: written for model {metadata['model']!r}, this run builds {model_name!r}")
    target = _unwrap(model)
    expected = target.state_dict()
    tensors, note = _convert_legacy(path, tensors, expected)
    problems = _mismatches(path, tensors, expected)
    if problems:
        raise CheckpointError(f"{path} does not fit {type(target).__name__}: " + "; ".join(problems))
    target.load_state_dict(tensors)
    if note is not None:
        metadata[CONVERTED] = note
    return metadata


def _without_trailing_ones(shape: torch.Size) -> tuple[int, ...]:
    dims = list(shape)
    while dims and dims[-1] == 1:
        dims.pop()
    return tuple(dims)


def fit_optimizer_state(optimizer: torch.optim.Optimizer) -> int:
    """Give each saved per-parameter tensor of ``optimizer``'s state its parameter's shape where the two differ only
    by trailing axes of size 1; returns how many tensors were reshaped.

    Call it after ``optimizer.load_state_dict``: a trainer state saved before 9b8d90e holds SK's fuse and select
    momenta as (d, C) and (M C, d), the parameters are now (d, C, 1, 1) and (M C, d, 1, 1) (``load_state_dict``
    maps by position and does not check shapes). Tensors that differ otherwise are left as they are: scalars such
    as Adam's ``step``, and factored states of other optimizers (Adafactor's row and column variances).
    """
    reshaped = 0
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param)
            for name, value in (state or {}).items():
                if (isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape
                        and _without_trailing_ones(value.shape) == _without_trailing_ones(param.shape)):
                    state[name] = value.reshape(param.shape)
                    reshaped += 1
    return reshaped


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write the trainer's state with ``torch.save``, atomically; only tensors and plain Python values."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write(path, buffer.getvalue())


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a trainer state written by :func:`save_state`, with ``weights_only=True`` (no code is run)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"trainer state {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip archives and foreign pickles raise several types
        raise CheckpointError(f"{path}: not a readable trainer state ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); it is truncated or corrupt") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, needed a dict of trainer state")
    return state


def capture_rng() -> dict[str, Any]:
    """The global RNG states of torch (CPU and CUDA), numpy and Python, as weights-only-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng` returned."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointDir:
    """The checkpoints of one run: ``step-NNNNNNNN.safetensors`` + ``step-NNNNNNNN.state.pt`` + ``latest.json``.

    Args:
        folder: where they live (created on the first save).
        keep: how many checkpoints to keep; older ones are deleted after a newer one is complete.
    """

    POINTER = "latest.json"

    def __init__(self, folder: str | os.PathLike, keep: int = 1) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise UsageError(f"keep: got {keep!r}, needed a whole number >= 1")
        self.folder, self.keep = Path(folder), keep

    def save(self, step: int, model: nn.Module, state: dict[str, Any], metadata: dict[str, str]) -> Path:
        """Write checkpoint ``step``, then point ``latest.json`` at it, then prune old ones."""
        stem = f"step-{step:08d}"
        save_weights(self.folder / f"{stem}.safetensors", model, {**metadata, "step": str(step)})
        save_state(self.folder / f"{stem}.state.pt", {**state, "step": step})
        pointer = {"step": step, "weights": f"{stem}.safetensors", "state": f"{stem}.state.pt"}
        atomic_write(self.folder / self.POINTER, json.dumps(pointer).encode())
        self._prune()
        return self.folder / f"{stem}.safetensors"

    def _prune(self) -> None:
        stems = sorted({p.name.split(".")[0] for p in self.folder.glob("step-*.*")})
        for stem in stems[:-self.keep]:
            for p in self.folder.glob(f"{stem}.*"):
                p.unlink(missing_ok=True)
        for p in self.folder.glob(".*.tmp"):  # left by a writer killed mid-write; this run is the only writer
            p.unlink(missing_ok=True)

    def exists(self) -> bool:
        return (self.folder / self.POINTER).is_file()

    def latest_step(self) -> int | None:
        """The step ``latest.json`` points at, or ``None`` when there is no readable pointer yet."""
        try:
            return int(json.loads((self.folder / self.POINTER).read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def load(self, model: nn.Module, model_name: str | None = None) -> dict[str, Any]:
        """Load the latest checkpoint's weights into ``model`` and return its trainer state.

        Weights in the layout before 9b8d90e are converted (:func:`load_weights`); the state then has the entry
        :data:`CONVERTED`, the note for the log. Its optimizer state needs :func:`fit_optimizer_state` once
        loaded into the optimizer.
        """
        pointer_path = self.folder / self.POINTER
        if not pointer_path.is_file():
            raise CheckpointError(f"no checkpoint to resume from: {pointer_path} does not exist")
        try:
            pointer = json.loads(pointer_path.read_text())
            weights, state_file, step = pointer["weights"], pointer["state"], int(pointer["step"])
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{pointer_path}: unreadable checkpoint pointer ({err})") from None
        state = load_state(self.folder / state_file)
        metadata = load_weights(self.folder / weights, model, model_name)
        if int(metadata.get("step", step)) != step or int(state.get("step", step)) != step:
            raise CheckpointError(f"{self.folder}: {weights} (step {metadata.get('step')}) and {state_file} "
                                  f"(step {state.get('step')}) do not belong to step {step} named by {self.POINTER}")
        if CONVERTED in metadata:
            state[CONVERTED] = metadata[CONVERTED]
        return state
