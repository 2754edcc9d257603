"""The training recipe: its settings, their command-line options, and the optimizer and schedule they build.

Defaults are for small images (Fashion-MNIST, CIFAR-sized folders): SGD with momentum 0.9 and lr 0.1 for a
global batch of 128, one epoch of linear warm-up then cosine decay to zero (Loshchilov & Hutter 2017, SGDR eq. 5,
without restarts), weight decay 5e-4 on weights but not on biases and normalisation parameters, random crop with
2-pixel padding and horizontal flip.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from visionattn.formats import PRECISIONS, check_precision

__all__ = ["TrainConfig", "OPTIMIZERS", "PRECISIONS", "add_train_arguments", "config_from_args", "build_optimizer",
           "build_scheduler", "RESUME_OVERRIDES"]

OPTIMIZERS = ("sgd", "adamw")
_DEFAULT_LR = {"sgd": 0.1, "adamw": 1e-3}
_DEFAULT_WD = {"sgd": 5e-4, "adamw": 0.05}


@dataclass
class TrainConfig:
    """Everything that decides a training run; saved as the run's resolved configuration.

    ``lr`` and ``weight_decay`` left as ``None`` take the optimizer's default (SGD: 0.1 and 5e-4, AdamW: 1e-3 and
    0.05). ``batch_size`` is the global batch: with N processes each takes ``batch_size / N``.
    """

    model: str = ""
    data: str = "fashion-mnist"
    data_dir: str | None = None
    download: bool = False
    image_size: int | None = None
    channels: str = "auto"
    val_fraction: float = 0.2
    train_subset: int | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    epochs: int = 15
    batch_size: int = 128
    eval_batch_size: int = 500
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    warmup_epochs: float = 1.0
    min_lr: float = 0.0
    label_smoothing: float = 0.0
    crop_padding: int = 2
    flip: bool = True
    erasing: float = 0.0
    temperature_epochs: float = 10.0
    seed: int = 0
    precision: str = "fp32"
    channels_last: bool = False
    device: str = "auto"
    threads: int | None = None
    ckpt_every: int = 200
    keep_checkpoints: int = 1
    run_dir: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: got {self.optimizer!r}, needed one of {OPTIMIZERS}")
        check_precision(self.precision)
        self.lr = _DEFAULT_LR[self.optimizer] if self.lr is None else self.lr
        self.weight_decay = _DEFAULT_WD[self.optimizer] if self.weight_decay is None else self.weight_decay
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size,
                    "lr": self.lr, "ckpt_every": self.ckpt_every, "keep_checkpoints": self.keep_checkpoints}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name}: got {value}, needed a positive number")
        if self.train_subset is not None and self.train_subset < 1:
            raise ValueError(f"train_subset: got {self.train_subset}, needed a positive number of images or None")
        for name, value in {"label_smoothing": self.label_smoothing, "momentum": self.momentum}.items():
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}: got {value}, needed a value in [0, 1)")
        if not 0.0 <= self.erasing <= 1.0:
            raise ValueError(f"erasing: got {self.erasing}, needed a probability in [0, 1]")
        non_negative = {"weight_decay": self.weight_decay, "warmup_epochs": self.warmup_epochs,
                        "min_lr": self.min_lr, "crop_padding": self.crop_padding,
                        "temperature_epochs": self.temperature_epochs}
        for name, value in non_negative.items():
            if value < 0:
                raise ValueError(f"{name}: got {value}, needed >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# settings a resumed run may change: they do not affect the numbers it computes
RESUME_OVERRIDES = ("device", "threads", "progress", "ckpt_every", "keep_checkpoints", "data_dir", "download")

# (flag, type, help); the field is the flag without dashes, '-' -> '_'; bools get --x/--no-x
_OPTIONS: list[tuple[str, Any, str]] = [
    ("--model", str, "registered model name, e.g. resnet20 (see visionattn.list_models())"),
    ("--data", str, "'fashion-mnist' or an image folder (root/train/<class>/* with root/val/<class>/*, "
                    "or root/<class>/*)"),
    ("--data-dir", str, "folder holding the Fashion-MNIST files (default: $VISIONATTN_DATA_DIR, then "
                        "/usr/share/datasets/fashion-mnist)"),
    ("--download", bool, "download the official Fashion-MNIST files (MD5-checked) when they are missing"),
    ("--image-size", int, "image folders: resize every image to this square size (default: the first image's)"),
    ("--channels", str, "image folders: auto, grey or rgb"),
    ("--val-fraction", float, "image folders without a val split: share held out per class (fixed by --seed)"),
    ("--train-subset", int, "train on this many training images only, balanced over the classes and the same "
                            "for every seed (default: all)"),
    ("--epochs", int, "training epochs"),
    ("--batch-size", int, "global batch size (divided among processes under torchrun)"),
    ("--eval-batch-size", int, "batch size for evaluation"),
    ("--optimizer", str, "sgd (with momentum) or adamw"),
    ("--lr", float, "peak learning rate (default 0.1 for sgd, 1e-3 for adamw)"),
    ("--momentum", float, "SGD momentum"),
    ("--weight-decay", float, "weight decay on weights, not on biases or norms (default 5e-4 sgd, 0.05 adamw)"),
    ("--warmup-epochs", float, "linear warm-up length in epochs, before the cosine decay"),
    ("--min-lr", float, "learning rate at the end of the cosine decay"),
    ("--label-smoothing", float, "label smoothing of the training loss"),
    ("--crop-padding", int, "random crop with this zero padding (0: no crop)"),
    ("--flip", bool, "random horizontal flip"),
    ("--erasing", float, "random erasing probability (0: off)"),
    ("--temperature-epochs", float, "dynamic convolution: epochs to anneal the softmax temperature 30 -> 1"),
    ("--seed", int, "seed of initialisation, data order and augmentation"),
    ("--precision", str, "fp32, or bf16 (autocast; about 2x faster on CPUs with AVX512-BF16/AMX and on GPUs)"),
    ("--channels-last", bool, "channels-last memory format (often faster with bf16)"),
    ("--device", str, "auto, cpu, cuda or cuda:N"),
    ("--threads", int, "torch CPU threads per process (default: torch's choice)"),
    ("--ckpt-every", int, "also write a checkpoint every this many steps (besides every epoch end)"),
    ("--keep-checkpoints", int, "how many checkpoints to keep"),
    ("--run-dir", str, "run directory (default runs/<model>-<timestamp>)"),
    ("--progress", bool, "progress bars"),
]


def add_train_arguments(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """The ``visionattn train`` options but those in ``exclude`` (e.g. ``("--model", "--resume")`` for a command
    that sets them itself); only options given on the command line reach the namespace."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for flag, kind, text in _OPTIONS:
        if flag in exclude:
            continue
        name = flag[2:].replace("-", "_")
        shown = defaults.get(name)
        text = f"{text} (default {shown})" if shown not in (None, "", False) else text
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
        else:
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=text)
    parser.add_argument("--model-arg", action="append", default=argparse.SUPPRESS, metavar="KEY=VALUE",
                        help="extra keyword for the model factory, e.g. attn=se (value parsed as JSON if it can be)")
    if "--resume" not in exclude:
        parser.add_argument("--resume", metavar="RUN_DIR", default=None,
                            help="continue the run in RUN_DIR from its last checkpoint, with its saved configuration")


def _parse_model_args(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-arg: got {pair!r}, needed KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def config_from_args(args: argparse.Namespace, saved: dict[str, Any] | None = None) -> TrainConfig:
    """Build the config from the options given; with ``saved`` (a resumed run's config) they may only change
    :data:`RESUME_OVERRIDES`, since anything else would make the resumed run differ from the one it continues."""
    names = {f.name for f in fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    if "model_arg" in vars(args):
        given["model_args"] = _parse_model_args(args.model_arg)
    if saved is None:
        if not given.get("model"):
            raise ValueError("--model: missing; needed a registered model name (or --resume RUN_DIR)")
        return TrainConfig(**given)
    conflicts = [k for k, v in given.items() if k not in RESUME_OVERRIDES and saved.get(k) != v]
    if conflicts:
        raise ValueError(f"--resume: the options {conflicts} differ from the saved run's configuration; a resumed "
                         f"run keeps its recipe (only {list(RESUME_OVERRIDES)} may change)")
    return TrainConfig(**{**{k: v for k, v in saved.items() if k in names}, **given})


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW; weight decay only on parameters with two or more dimensions."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warm-up to ``lr`` over ``warmup_epochs``, then cosine decay to ``min_lr``."""
    total = cfg.epochs * steps_per_epoch
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total - 1)
    floor = cfg.min_lr / cfg.lr

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
