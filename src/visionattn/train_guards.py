"""What stops a training run early, and how it says so: a loss that is no longer finite, and Ctrl-C.

A non-finite loss (NaN or inf) is noticed without a host synchronisation per step: :class:`DivergenceWatch`
records on the device the first step whose loss is not finite, and the trainer reads it back every
:data:`CHECK_EVERY` steps and before every checkpoint, where it also checks that the weights are finite, so no
checkpoint ever holds NaN weights and the last good one is kept.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from visionattn import distributed
from visionattn.errors import UsageError

if TYPE_CHECKING:
    from torch import nn

    from visionattn.recipe import TrainConfig

__all__ = ["TrainingDiverged", "TrainingInterrupted", "DivergenceWatch", "CHECK_EVERY", "diverged",
           "interrupted"]

CHECK_EVERY = 10  # steps between reads of the divergence flag (one host sync each)
_NONE = -1.0e18


class TrainingDiverged(UsageError):
    """The training loss (or the weights) stopped being finite: the run stopped, its last good checkpoint kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; ``str()`` is one line: where the last checkpoint is and the command to resume."""


class DivergenceWatch:
    """The first step whose loss was not finite, kept on the loss's device until :meth:`check` reads it."""

    def __init__(self, device: torch.device) -> None:
        self.first_step = torch.full((), -1, dtype=torch.long, device=device)
        self.loss = torch.zeros((), dtype=torch.float32, device=device)

    def record(self, loss: torch.Tensor, step: int) -> None:
        """Note ``loss`` of global step ``step`` (no synchronisation)."""
        new = ~torch.isfinite(loss) & (self.first_step < 0)
        self.first_step = torch.where(new, step, self.first_step)
        self.loss = torch.where(new, loss.detach().float(), self.loss)

    def check(self, model: nn.Module | None = None) -> tuple[int, float] | None:
        """``(step, loss)`` of the first non-finite loss on any process, ``(0, nan)`` when only ``model``'s
        weights are not finite, or ``None`` when all is well. A collective: every process calls it together."""
        first = int(self.first_step.item())
        weights_bad = model is not None and not bool(torch.stack(
            [torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()]).all())
        any_bad, neg_first, any_weights = distributed.all_reduce_max(
            [float(first >= 0), -float(first) if first >= 0 else _NONE, float(weights_bad)], self.loss.device)
        if any_bad:
            step = int(-neg_first)
            return step, float(self.loss.item()) if step == first else float("nan")
        return (0, float("nan")) if any_weights else None


def _where(step: int, steps_per_epoch: int) -> str:
    return f"epoch {(step - 1) // steps_per_epoch + 1}, step {(step - 1) % steps_per_epoch + 1} of {steps_per_epoch}"


def _last_checkpoint(step: int | None, folder: Path) -> str:
    return f"step {step} in {folder}" if step is not None else "none was written yet"


def diverged(cfg: TrainConfig, found: tuple[int, float], steps_per_epoch: int, last_step: int | None,
             folder: Path) -> TrainingDiverged:
    """The error for a run whose loss became ``found = (step, loss)`` (step 0: only the weights are non-finite)."""
    step, loss = found
    what = (f"the loss is {loss if not math.isnan(loss) else 'nan'} at step {step} ({_where(step, steps_per_epoch)})"
            if step else "the weights are no longer finite")
    tips = [f"a lower --lr (this run: {cfg.lr:g})", f"a longer --warmup-epochs (this run: {cfg.warmup_epochs:g})"]
    if cfg.precision != "fp32":
        tips.append(f"--precision fp32 (this run: {cfg.precision})")
    tips.append(f"a smaller --weight-decay (this run: {cfg.weight_decay:g})")
    return TrainingDiverged(
        f"training diverged: {what}; the run stopped and kept its last good checkpoint "
        f"({_last_checkpoint(last_step, folder)}). Start a new run with {', '.join(tips)}; if it still diverges, "
        f"look for exploding gradients in {cfg.model}{' with ' + str(cfg.model_args) if cfg.model_args else ''} "
        "or for broken images in the data")


def interrupted(global_step: int, steps_per_epoch: int, last_step: int | None, run_dir: Path,
                command: str = "visionattn train") -> TrainingInterrupted:
    """The one-line report of a run stopped by Ctrl-C after ``global_step`` steps (``command`` resumes it)."""
    where = f"training stopped at step {global_step}" + (f" ({_where(global_step, steps_per_epoch)})"
                                                          if global_step else "")
    command = f"{command} --resume {shlex.quote(str(run_dir))}"
    if last_step is None:
        return TrainingInterrupted(f"{where}; no checkpoint yet: `{command}` starts the run again from the beginning")
    return TrainingInterrupted(f"{where}; the last checkpoint is step {last_step} in {run_dir / 'checkpoints'}; "
                               f"continue with: {command}")
