"""The training recipe: its settings, their command-line options, and the optimizer and schedule they build.

Defaults are for small images (Fashion-MNIST, CIFAR-sized folders): SGD with momentum 0.9 and lr 0.1 for a
global batch of 128, one epoch of linear warm-up then cosine decay to zero (Loshchilov & Hutter 2017, SGDR eq. 5,
without restarts), weight decay 5e-4 on weights but not on biases, normalisation parameters and what the model
lists in ``no_weight_decay()`` (position embeddings, class tokens, relative position bias tables:
:func:`build_optimizer`), random crop with 2-pixel padding and horizontal flip.

``--recipe vit`` starts from the recipe vision transformers need on small data instead (:data:`RECIPES`): AdamW,
a longer warm-up, cosine decay, label smoothing (DeiT, Touvron et al. 2021, and the small-data ViT studies
of Lee et al. 2021; the values were tuned on Fashion-MNIST, see ``benchmarks/vit_fashion_mnist.md``). Flags
given beside it override its values.

Importing this module does not import torch: the command line builds ``visionattn train --help`` and checks
every option from it before it loads anything heavy. Every error names the setting by its command-line flag
(``--lr``, ``--weight-decay``; the Python field is the flag without dashes, ``-`` read as ``_``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from collections.abc import Collection
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from visionattn.errors import (
    UsageError,
    check_choice,
    check_finite,
    check_non_negative,
    check_positive,
    check_range,
    did_you_mean,
)
from visionattn.formats import PRECISIONS, check_precision

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["TrainConfig", "RECIPES", "recipe_settings",
           "OPTIMIZERS", "PRECISIONS", "CHANNEL_MODES", "add_train_arguments", "config_from_args",
           "build_optimizer", "build_scheduler", "total_steps", "RESUME_OVERRIDES", "flag", "check_device_syntax"]

OPTIMIZERS = ("sgd", "adamw")
CHANNEL_MODES = ("auto", "grey", "rgb")  # as visionattn.data.folder reads them (that module imports torch)
_DEFAULT_LR = {"sgd": 0.1, "adamw": 1e-3}
_DEFAULT_WD = {"sgd": 5e-4, "adamw": 0.05}
_DEVICE = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)")
_DEVICE_EXAMPLES = ("auto", "cpu", "cuda", "cuda:0", "mps")
_DEVICE_ALIASES = {"gpu": "cuda", "cuda0": "cuda:0", "nvidia": "cuda", "metal": "mps"}


# named starting points for the settings; options given on the command line override them
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    "vit": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 3.0, "label_smoothing": 0.1,
            "epochs": 40},
}


def recipe_settings(name: Any, argument: str = "--recipe") -> dict[str, Any]:
    """The settings of the named recipe (:data:`RECIPES`); unknown names get a "did you mean"."""
    check_choice(argument, name, RECIPES)
    return dict(RECIPES[name])


def flag(name: str) -> str:
    """The command-line flag of a config field: ``weight_decay`` -> ``--weight-decay``."""
    return "--model-arg" if name == "model_args" else "--" + name.replace("_", "-")


def check_device_syntax(device: Any, argument: str = "--device") -> str:
    """``device`` when it reads as auto, cpu, cuda, cuda:N or mps (whether it exists is checked at start)."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        text = str(device).strip().lower()
        hint = f"; did you mean {_DEVICE_ALIASES[text]!r}?" if text in _DEVICE_ALIASES else did_you_mean(
            text, _DEVICE_EXAMPLES)
        raise UsageError(f"{argument}: got {device!r}, needed auto, cpu, cuda, cuda:N (N = 0, 1, ...) or mps{hint}")
    return device


def _check_int(name: str, value: Any, minimum: int | None = None, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{flag(name)}: got {value!r}, needed a whole number" + (" or None" if optional else ""))
    if minimum is not None and value < minimum:
        raise UsageError(f"{flag(name)}: got {value!r}, needed a whole number >= {minimum}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise UsageError(f"{flag(name)}: got {value!r}, needed True or False")


def _check_str(name: str, value: Any, optional: bool = False) -> None:
    if not (optional and value is None) and (not isinstance(value, str) or not value):
        raise UsageError(f"{flag(name)}: got {value!r}, needed a non-empty string" + (" or None" if optional else ""))


@dataclass
class TrainConfig:
    """Everything that decides a training run; saved as the run's resolved configuration.

    ``lr`` and ``weight_decay`` left as ``None`` take the optimizer's default (SGD: 0.1 and 5e-4, AdamW: 1e-3 and
    0.05). ``pretrained`` is a local weights file the run starts from (kept as an absolute path, so that the
    saved configuration names the file wherever the run is resumed from). ``batch_size`` is the global batch:
    with N processes each takes ``batch_size / N``. Every value is checked when the config is made
    (:meth:`validate`); whether the model, the device, the data, the pretrained file and the run directory exist
    and fit is checked by :func:`visionattn.train.preflight` before a run starts.

    ``max_steps`` ends the run after that many optimizer steps when the epochs have not ended before: the
    schedule then spans those steps and the last epoch is a partial one (a budget for a run on the clock).
    ``task`` (a class attribute, not a setting) names what the run learns (:mod:`visionattn.tasks`); a subclass
    for another task adds its own settings (:class:`visionattn.igpt_recipe.NextPixelConfig`).
    """

    task = "classification"

    model: str = ""
    data: str = "fashion-mnist"
    data_dir: str | None = None
    download: bool = False
    image_size: int | None = None
    channels: str = "auto"
    val_fraction: float = 0.2
    train_subset: int | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None
    epochs: int = 15
    max_steps: int | None = None
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
        check_choice(flag("optimizer"), self.optimizer, OPTIMIZERS)
        self.lr = _DEFAULT_LR[self.optimizer] if self.lr is None else self.lr
        self.weight_decay = _DEFAULT_WD[self.optimizer] if self.weight_decay is None else self.weight_decay
        self.validate()
        if self.pretrained is not None:
            self.pretrained = os.path.abspath(self.pretrained)

    def validate(self) -> None:
        """Check every value (types, ranges, finiteness, names); :class:`UsageError` naming the flag."""
        self._check_names()
        self._check_counts()
        self._check_rates()

    def _check_names(self) -> None:
        for name in ("model", "data"):
            if not isinstance(getattr(self, name), str):
                raise UsageError(f"{flag(name)}: got {getattr(self, name)!r}, needed a string")
        for name in ("data_dir", "run_dir", "pretrained"):
            _check_str(name, getattr(self, name), optional=True)
        for name in ("download", "flip", "channels_last", "progress"):
            _check_bool(name, getattr(self, name))
        check_choice(flag("optimizer"), self.optimizer, OPTIMIZERS)
        check_precision(self.precision, flag("precision"))
        check_choice(flag("channels"), self.channels, CHANNEL_MODES)
        check_device_syntax(self.device)
        if not isinstance(self.model_args, dict) or not all(isinstance(k, str) and k for k in self.model_args):
            raise UsageError(f"--model-arg: got {self.model_args!r}, needed a dict of keyword names to values")

    def _check_counts(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "ckpt_every", "keep_checkpoints"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("image_size", "train_subset", "threads", "max_steps"):
            _check_int(name, getattr(self, name), minimum=1, optional=True)
        _check_int("crop_padding", self.crop_padding, minimum=0)
        _check_int("seed", self.seed, minimum=0)
        if self.seed >= 2**32:  # numpy's global seed is 32-bit
            raise UsageError(f"--seed: got {self.seed}, needed a whole number below 2**32")

    def _check_rates(self) -> None:
        check_positive(flag("lr"), self.lr)
        check_non_negative(flag("weight_decay"), self.weight_decay)
        check_range(flag("momentum"), self.momentum, 0.0, 1.0, high_open=True)
        check_range(flag("label_smoothing"), self.label_smoothing, 0.0, 1.0, high_open=True)
        check_range(flag("erasing"), self.erasing, 0.0, 1.0)
        check_finite(flag("val_fraction"), self.val_fraction)
        if not 0.0 < self.val_fraction < 1.0:
            raise UsageError(f"--val-fraction: got {self.val_fraction!r}, needed a share in (0, 1)")
        check_non_negative(flag("temperature_epochs"), self.temperature_epochs)
        check_non_negative(flag("min_lr"), self.min_lr)
        if self.min_lr > self.lr:
            raise UsageError(f"--min-lr: got {self.min_lr!r}, needed at most the peak --lr {self.lr!r} (the cosine "
                             "decays from --lr down to --min-lr; a higher floor would make it climb)")
        check_non_negative(flag("warmup_epochs"), self.warmup_epochs)
        if self.warmup_epochs > self.epochs:
            raise UsageError(f"--warmup-epochs: got {self.warmup_epochs!r}, needed at most the {self.epochs} "
                             "--epochs (the warm-up is part of the run)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# settings a resumed run may change: they do not affect the numbers it computes
RESUME_OVERRIDES = ("device", "threads", "progress", "ckpt_every", "keep_checkpoints", "data_dir", "download")

# (flag, type, help); the field is the flag without dashes, '-' -> '_'; bools get --x/--no-x
_OPTIONS: list[tuple[str, Any, str]] = [
    ("--model", str, "registered model name, e.g. resnet20 (see `visionattn models`); required unless --resume"),
    ("--data", str, "'fashion-mnist' or an image folder (root/train/<class>/* with root/val/<class>/*, "
                    "or root/<class>/*)"),
    ("--data-dir", str, "folder holding the Fashion-MNIST files (default: $VISIONATTN_DATA_DIR, then "
                        "/usr/share/datasets/fashion-mnist)"),
    ("--download", bool, "download the official Fashion-MNIST files (MD5-checked) when they are missing"),
    ("--image-size", int, "image folders: resize every image to this square size, e.g. 224 for ImageNet weights "
                          "(default: the first image's)"),
    ("--channels", str, "image folders: auto, grey or rgb"),
    ("--val-fraction", float, "image folders without a val split: share held out per class (fixed by --seed)"),
    ("--train-subset", int, "train on this many training images only, balanced over the classes and the same "
                            "for every seed (default: all)"),
    ("--pretrained", str, "start from the weights in this local file: .safetensors, or a PyTorch state dict (read "
                          "with weights_only=True), e.g. timm's model.safetensors of the same architecture or an "
                          "earlier run's model.safetensors; nothing is downloaded. The classifier is refitted to the "
                          "data's classes, a 1-channel stem sums the RGB filters, and images are normalised as the "
                          "weights were trained (the file's mean/std, else the model's: ImageNet's for ImageNet "
                          "models) instead of with the data's statistics. ImageNet weights fine-tune at any image "
                          "size (the networks are fully convolutional); --image-size resizes image folders "
                          "(default: random initialisation)"),
    ("--epochs", int, "training epochs"),
    ("--max-steps", int, "stop after this many optimizer steps if the epochs have not ended before; the schedule "
                         "spans them and the last epoch is partial (default: --epochs whole epochs)"),
    ("--batch-size", int, "global batch size (divided among processes under torchrun)"),
    ("--eval-batch-size", int, "batch size for evaluation"),
    ("--optimizer", str, "sgd (with momentum) or adamw"),
    ("--lr", float, "peak learning rate (default 0.1 for sgd, 1e-3 for adamw)"),
    ("--momentum", float, "SGD momentum"),
    ("--weight-decay", float, "weight decay on weights, not on biases, norms or what the model's no_weight_decay() "
                              "lists (ViT's pos_embed and cls_token, Swin's relative position bias tables) "
                              "(default 5e-4 sgd, 0.05 adamw)"),
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
    ("--device", str, "auto (a GPU when there is one, else the CPU), cpu, cuda, cuda:N or mps"),
    ("--threads", int, "torch CPU threads per process (default: torch's choice)"),
    ("--ckpt-every", int, "also write a checkpoint every this many steps (besides every epoch end)"),
    ("--keep-checkpoints", int, "how many checkpoints to keep"),
    ("--run-dir", str, "run directory (default runs/<model>-<timestamp>)"),
    ("--progress", bool, "progress bars"),
]


def add_train_arguments(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = (),
                        kind: type[TrainConfig] = TrainConfig) -> None:
    """The ``visionattn train`` options but those in ``exclude`` (e.g. ``("--model", "--resume")`` for a command
    that sets them itself), with the defaults of ``kind`` (a :class:`TrainConfig` or a task's subclass); only
    options given on the command line reach the namespace."""
    defaults = {f.name: f.default for f in fields(kind)}
    for option, kind, text in _OPTIONS:
        if option in exclude:
            continue
        text = _with_default(text, defaults.get(option[2:].replace("-", "_")))
        if kind is bool:
            parser.add_argument(option, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
        else:
            parser.add_argument(option, type=kind, default=argparse.SUPPRESS, help=text)
    parser.add_argument("--model-arg", action="append", default=argparse.SUPPRESS, metavar="KEY=VALUE",
                        help="extra keyword for the model factory, e.g. attn=se; the value is read as JSON when it "
                             "can be; repeat for several (default none)")
    if "--recipe" not in exclude:
        parser.add_argument("--recipe", default=argparse.SUPPRESS, metavar="NAME",
                            help=f"named starting settings, overridden by the options given: {', '.join(RECIPES)} "
                                 "(vit: AdamW lr 1e-3, weight decay 0.05, 3 warm-up epochs, label smoothing 0.1, "
                                 "40 epochs) (default default: the SGD recipe above)")
    if "--resume" not in exclude:
        parser.add_argument("--resume", metavar="RUN_DIR", default=None,
                            help="continue the run in RUN_DIR from its last checkpoint, with its saved configuration "
                                 "(default: start a new run)")
    if "--overwrite" not in exclude:
        parser.add_argument("--overwrite", action="store_true", default=False,
                            help="replace the run already in --run-dir (its checkpoints, metrics and result are "
                                 "deleted) instead of refusing (default off)")


def _with_default(text: str, default: Any) -> str:
    """``text (default X)``; 0 and False are shown too (only None and '' have nothing to show)."""
    if default is None or default == "" or "(default" in text:
        return text
    shown = ("on" if default else "off") if isinstance(default, bool) else default
    return f"{text} (default {shown})"


def _parse_model_args(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--model-arg: got {pair!r}, needed KEY=VALUE (e.g. attn=se)")
        if not key.isidentifier():
            raise UsageError(f"--model-arg: got the key {key!r} in {pair!r}, needed a keyword name "
                             "(letters, digits, _)")
        if key in out:
            raise UsageError(f"--model-arg: got {key!r} twice ({key}={out[key]!r} and {pair!r}), needed each key "
                             "once")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def config_from_args(args: argparse.Namespace, saved: dict[str, Any] | None = None,
                     kind: type[TrainConfig] = TrainConfig) -> TrainConfig:
    """Build the config (a ``kind``: :class:`TrainConfig` or a task's subclass) from the options given; with
    ``saved`` (a resumed run's config) they may only change :data:`RESUME_OVERRIDES`, since anything else would
    make the resumed run differ from the one it continues."""
    names = {f.name for f in fields(kind)}
    given = {k: v for k, v in vars(args).items() if k in names}
    if "recipe" in vars(args):  # the preset's values, under the options given
        given = {**recipe_settings(args.recipe), **given}
    if "model_arg" in vars(args):
        given["model_args"] = _parse_model_args(args.model_arg)
    if isinstance(given.get("pretrained"), str) and given["pretrained"]:
        given["pretrained"] = os.path.abspath(given["pretrained"])  # as the saved configuration holds it
    if saved is None:
        if not given.get("model", kind.model):
            raise UsageError("--model: missing; needed a registered model name (or --resume RUN_DIR)")
        return kind(**given)
    conflicts = [k for k, v in given.items() if k not in RESUME_OVERRIDES and saved.get(k) != v]
    if conflicts:
        raise UsageError(f"--resume: the options {', '.join(flag(k) for k in conflicts)} differ from the saved run's "
                         f"configuration; a resumed run keeps its recipe (only "
                         f"{', '.join(flag(k) for k in RESUME_OVERRIDES)} may change)")
    return kind(**{**{k: v for k, v in saved.items() if k in names}, **given})


def total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """The optimizer steps of the whole run: ``epochs`` whole epochs, or ``max_steps`` when that comes first."""
    whole = cfg.epochs * steps_per_epoch
    return whole if cfg.max_steps is None else min(cfg.max_steps, whole)


def build_optimizer(model: nn.Module, cfg: TrainConfig,
                    no_decay: Collection[str] | None = None) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW over two parameter groups: ``cfg.weight_decay`` on the first, none on the second.

    A trainable parameter goes to the second group (timm's rule, :mod:`visionattn.weight_decay`) when it has at
    most one dimension (biases, normalisation scales and shifts), when its name ends in ``.bias``, or when the
    model or one of its submodules lists it in a ``no_weight_decay()`` method returning parameter names relative
    to that module: a ViT's ``pos_embed`` and ``cls_token``, Swin's relative position bias tables. Every other
    trainable parameter goes to the first; frozen ones to neither. Each group keeps ``model.named_parameters()``
    order, and the groups keep their order (decayed first), as a checkpoint's optimizer state maps by position.

    Args:
        model: the network (not a DistributedDataParallel wrapper: names are the model's own).
        cfg: the recipe (``optimizer``, ``lr``, ``momentum``, ``weight_decay``).
        no_decay: the names of the second group instead of the rule's: a resumed run's checkpoint grouping
            (:func:`visionattn.weight_decay.resumed_no_decay`).
    """
    import torch

    from visionattn.weight_decay import no_weight_decay_names, split_by_decay

    decay, spared = split_by_decay(model, no_weight_decay_names(model) if no_decay is None else no_decay)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": spared, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warm-up to ``lr`` over ``warmup_epochs``, then cosine decay to ``min_lr`` at the
    run's last step (``epochs`` whole epochs, or ``max_steps`` when that comes first)."""
    import torch

    total = total_steps(cfg, steps_per_epoch)
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total - 1)
    floor = cfg.min_lr / cfg.lr

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
