"""What a training run learns, factored out of the trainer: the task protocol and the classification task.

The trainer (:class:`visionattn.train.Trainer`) owns everything that is the same for every task: the loop over
epochs in ``DistributedSampler`` order, the optimizer and schedule, checkpoints with exact resume, the divergence
watch, Ctrl-C, progress bars, ``torchrun`` and the run directory. A :class:`Task` owns what differs:

- the model it builds (:meth:`Task.build_model`, also used by the checks before a run and to reload a run),
- how the data become inputs and targets (:meth:`Task.prepare`, once the checkpoint, if any, is read; what it
  decides there, e.g. the normalisation or a palette, is :meth:`Task.record`: saved in every checkpoint, in
  ``config.json``, and in the weights' metadata (:meth:`Task.metadata`), so a resumed run does exactly the same),
- the loss of a batch and the three running sums every task keeps: (loss sum, correct predictions, count), so
  the trainer's accumulators, their all-reduce and their checkpointing are one for all tasks,
- the epoch's metrics, the log line, the final result fields.

Tasks are named (:data:`TASKS`); a config's class attribute ``task`` picks one (:func:`task_for`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from visionattn import train_checks
from visionattn.data import Augment, Normalize, epoch_generator

if TYPE_CHECKING:
    from visionattn.recipe import TrainConfig
    from visionattn.train import Trainer

__all__ = ["Task", "ClassificationTask", "TASKS", "task_for", "count_sums"]

# name -> "module:class"; imported when asked for, so that a task's module loads only when it is used
TASKS = {"classification": "visionattn.tasks:ClassificationTask",
         "next-pixel": "visionattn.igpt_task:NextPixelTask"}


def task_for(cfg: TrainConfig | str) -> type[Task]:
    """The task class of a config (its class attribute ``task``) or of a task name."""
    name = cfg if isinstance(cfg, str) else cfg.task
    module, _, attr = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def count_sums(loss_sum: torch.Tensor, correct: torch.Tensor, count: int) -> torch.Tensor:
    """The (loss sum, correct, count) triple every task accumulates, as float64 on the loss's device (a mean
    loss is best scaled to the sum in float64: ``loss.detach().double() * count``)."""
    return torch.stack([loss_sum.detach().double(), correct.double(),
                        torch.tensor(float(count), dtype=torch.float64, device=loss_sum.device)])


class Task:
    """The part of a training run that depends on what is learnt; see the module docstring.

    Attributes (class level):
        name: the task's name in :data:`TASKS` and in ``config.json``.
        command: the command that trains and resumes runs of this task (for messages).
    """

    name = ""
    command = "visionattn train"

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    # ------------------------------------------------------------------------------ before a run, and after
    @classmethod
    def model_choices(cls) -> list[str]:
        """The registered models this task trains (the "did you mean" of an unknown ``--model``)."""
        from visionattn.registry import list_models

        return list_models()

    @classmethod
    def check_model(cls, cfg: TrainConfig) -> None:
        """Refuse a registered model this task cannot train (:class:`~visionattn.errors.UsageError`)."""

    @classmethod
    def check_keywords(cls, cfg: TrainConfig) -> None:
        """Refuse ``--model-arg`` keywords the model does not take, or that the trainer sets, before the input is
        known (:meth:`build_model` checks them too)."""
        train_checks._check_keywords(cfg)

    @classmethod
    def build_model(cls, cfg: TrainConfig, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        """``cfg.model`` for ``input_shape`` (C, H, W) images of ``num_classes`` classes."""
        raise NotImplementedError

    @classmethod
    def headline(cls, result: dict[str, Any]) -> str:
        """The final figure of a result, e.g. ``test accuracy 91.20%``."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------- the run
    def prepare(self, state: dict[str, Any] | None) -> None:
        """Set up the inputs and targets, from the checkpoint's :meth:`record` when resuming (``state``)."""
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        """What :meth:`prepare` decided, for the checkpoints and ``config.json`` (plain values)."""
        return {}

    def metadata(self) -> dict[str, str]:
        """Entries for the weights files' metadata, besides the model's name."""
        return {}

    def epoch_params(self, epoch: int) -> Any:
        """Anything fixed per epoch that :meth:`batch_loss` takes (e.g. the epoch's augmentation draws)."""
        return None

    def batch_loss(self, index: torch.Tensor, params: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean loss to minimise, :func:`count_sums` of the batch) for the training images ``index``."""
        raise NotImplementedError

    def eval_sums(self, index: torch.Tensor) -> torch.Tensor:
        """:func:`count_sums` of the test images ``index`` (no gradients; the model is in eval mode)."""
        raise NotImplementedError

    def metrics(self, train_loss: float, train_acc: float, test_loss: float, test_acc: float) -> dict[str, float]:
        """The epoch's row entries from the averaged sums."""
        return {"train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc}

    def describe(self, row: dict[str, Any]) -> str:
        """The epoch's log line, between ``epoch k/n:`` and the time."""
        raise NotImplementedError

    def postfix(self, row: dict[str, Any]) -> dict[str, str]:
        """What the epochs' progress bar shows after an epoch."""
        raise NotImplementedError

    def summary(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """The result's task fields (between ``epochs`` and ``train_time_s`` in ``result.json``)."""
        raise NotImplementedError


class ClassificationTask(Task):
    """Images and labels: normalised, augmented images (:mod:`visionattn.data.augment`), cross-entropy with
    label smoothing, accuracy. Normalisation: the ``--pretrained`` weights' statistics, or the training
    images' own (:func:`visionattn.train_checks.normalization`); a resumed run takes its checkpoint's."""

    name = "classification"

    @classmethod
    def check_model(cls, cfg: TrainConfig) -> None:
        from visionattn.errors import UsageError
        from visionattn.registry import get_model_entry

        if get_model_entry(cfg.model).family == "igpt":
            raise UsageError(f"--model: {cfg.model!r} is an Image GPT, which predicts pixels, not classes; train it "
                             "with `visionattn igpt train`, or give a classification model here")

    @classmethod
    def build_model(cls, cfg: TrainConfig, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        return train_checks.build_model(cfg, input_shape, num_classes)

    @classmethod
    def headline(cls, result: dict[str, Any]) -> str:
        return f"test accuracy {100 * result['test_acc']:.2f}%"

    def prepare(self, state: dict[str, Any] | None) -> None:
        """Normalise as the resumed run did (its checkpoint's record), else as :func:`train_checks.normalization`
        says for this run (the ``--pretrained`` weights' statistics, or the training images' own)."""
        tr, cfg = self.trainer, self.trainer.cfg
        saved = state.get("normalize") if state is not None else None
        if saved is not None:
            self.mean, self.std, self.source = list(saved["mean"]), list(saved["std"]), str(saved["source"])
        else:  # also for checkpoints from before the record: those runs used the data's statistics, as here
            self.mean, self.std, self.source = train_checks.normalization(tr.model, tr.pretrained_report,
                                                                          tr.data.train.images)
        tr.log.info(f"normalisation: mean {[round(v, 4) for v in self.mean]}, std {[round(v, 4) for v in self.std]}"
                    f", {self.source}" + (" (saved in the checkpoint resumed from)" if saved else ""))
        self.normalize = Normalize(self.mean, self.std)
        self.augment = Augment(self.normalize, cfg.crop_padding, cfg.flip, cfg.erasing)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def record(self) -> dict[str, Any]:
        return {"normalize": {"mean": self.mean, "std": self.std, "source": self.source}}

    def metadata(self) -> dict[str, str]:
        """The normalisation a run fine-tuned from these weights needs (:func:`train_checks.normalization`)."""
        import json

        return {"mean": json.dumps(self.mean), "std": json.dumps(self.std)}

    def epoch_params(self, epoch: int) -> Any:
        train = self.trainer.data.train
        return self.augment.sample(len(train), train.image_shape[1:], epoch_generator(self.trainer.cfg.seed, epoch))

    def batch_loss(self, index: torch.Tensor, params: Any) -> tuple[torch.Tensor, torch.Tensor]:
        tr = self.trainer
        images = self.augment(tr.train_images[index.to(tr.info.device)], params, index)
        labels = tr.data.train.labels[index].to(tr.info.device)
        logits = tr._forward(tr.net, images)
        loss = self.criterion(logits, labels)
        n = labels.numel()
        return loss, count_sums(loss.detach().double() * n, (logits.argmax(1) == labels).sum(), n)

    def eval_sums(self, index: torch.Tensor) -> torch.Tensor:
        tr = self.trainer
        logits = tr._forward(tr.model, self.normalize(tr.test_images[index.to(tr.info.device)]))
        labels = tr.data.test.labels[index].to(tr.info.device)
        loss = nn.functional.cross_entropy(logits, labels, reduction="sum")
        return count_sums(loss, (logits.argmax(1) == labels).sum(), len(index))

    def describe(self, row: dict[str, Any]) -> str:
        return (f"train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}% | test loss "
                f"{row['test_loss']:.4f} acc {100 * row['test_acc']:.2f}%")

    def postfix(self, row: dict[str, Any]) -> dict[str, str]:
        return {"test_acc": f"{100 * row['test_acc']:.2f}%"}

    def summary(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        accs = [row["test_acc"] for row in history]
        return {"test_acc": accs[-1] if accs else float("nan"), "best_test_acc": max(accs, default=float("nan"))}
