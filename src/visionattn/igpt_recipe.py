"""The settings of a next-pixel (Image GPT) training run and the options of ``visionattn igpt train``.

:class:`NextPixelConfig` is the trainer's :class:`~visionattn.recipe.TrainConfig` with the next-pixel task's own
settings (the palette's ``levels``, the ``attention`` the model uses) and the defaults of the small reference
Image GPT for Fashion-MNIST (github teddykoker/image-gpt, ``configs/xxs_gen.yml``: Adam at lr 3e-3, batch 64,
about half an epoch of linear warm-up then cosine decay, no weight decay). The images are not augmented
(the next-pixel loss is a likelihood of the images themselves), so the augmentation settings must stay off.

Importing this module does not import torch: the command line checks every option before it loads anything.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from visionattn.errors import UsageError, check_choice
from visionattn.recipe import TrainConfig, add_train_arguments

__all__ = ["NextPixelConfig", "ATTENTIONS", "MAX_LEVELS", "add_igpt_train_arguments", "IGPT_LR"]

ATTENTIONS = ("dense", "strided", "fixed")
MAX_LEVELS = 4096  # a palette's size; grey images have at most 256 values (checked once the data are known)
IGPT_LR = 3e-3
# settings of the classification recipe that do not apply (the value they must keep)
_NOT_FOR_NEXT_PIXEL = {"crop_padding": 0, "flip": False, "erasing": 0.0, "label_smoothing": 0.0, "pretrained": None,
                       "channels_last": False}
# `visionattn train` options that `visionattn igpt train` leaves out (the above) or words for itself
_EXCLUDED = ("--model", "--crop-padding", "--flip", "--erasing", "--label-smoothing", "--pretrained",
             "--channels-last", "--temperature-epochs", "--recipe", "--lr", "--weight-decay")


@dataclass
class NextPixelConfig(TrainConfig):
    """A :class:`~visionattn.recipe.TrainConfig` for next-pixel prediction (:mod:`visionattn.igpt_task`).

    ``levels`` is the palette's size (16 grey levels: 4 bits per pixel; iGPT's 512 colours for RGB), fitted by
    k-means on the training images at the start of the run; ``attention`` is the model's attention (``None``:
    the registered model's own). ``lr`` and ``weight_decay`` left as ``None`` take 3e-3 and 0 with AdamW (the
    reference's), the SGD defaults with SGD.
    """

    task = "next-pixel"

    model: str = "igpt_fashion"
    levels: int = 16
    attention: str | None = None
    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 200
    optimizer: str = "adamw"
    warmup_epochs: float = 0.5
    crop_padding: int = 0
    flip: bool = False

    def __post_init__(self) -> None:
        if self.optimizer == "adamw":
            self.lr = IGPT_LR if self.lr is None else self.lr
            self.weight_decay = 0.0 if self.weight_decay is None else self.weight_decay
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or not 2 <= self.levels <= MAX_LEVELS:
            raise UsageError(f"--levels: got {self.levels!r}, needed a whole number of palette levels from 2 to "
                             f"{MAX_LEVELS} (16 for 4-bit grey images)")
        if self.attention is not None:
            check_choice("--attention", self.attention, ATTENTIONS)
        for name, value in _NOT_FOR_NEXT_PIXEL.items():
            if getattr(self, name) != value:
                raise UsageError(f"{name}: got {getattr(self, name)!r}, needed {value!r} for next-pixel prediction "
                                 "(the images are modelled as they are: no augmentation, smoothing, channels-last "
                                 "or pretrained classifier weights)")


def add_igpt_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``visionattn igpt train``: the trainer's shared ones and the next-pixel task's own."""
    parser.add_argument("--model", default=argparse.SUPPRESS,
                        help="registered Image GPT model (family igpt, see `visionattn models --family igpt`) "
                             f"(default {NextPixelConfig.model})")
    parser.add_argument("--levels", type=int, default=argparse.SUPPRESS,
                        help="palette size: grey levels (k-means on the training images' pixel values) or colours "
                             f"(k-means on RGB); the model's vocabulary (default {NextPixelConfig.levels})")
    parser.add_argument("--attention", default=argparse.SUPPRESS, metavar="|".join(ATTENTIONS),
                        help="the model's attention: dense causal, or the Sparse Transformer's strided or fixed "
                             "pattern (default: the model's own)")
    parser.add_argument("--lr", type=float, default=argparse.SUPPRESS,
                        help=f"peak learning rate (default {IGPT_LR} for adamw, 0.1 for sgd)")
    parser.add_argument("--weight-decay", type=float, default=argparse.SUPPRESS,
                        help="weight decay on weights, not on biases or norms (default 0 for adamw, 5e-4 for sgd)")
    add_train_arguments(parser, exclude=_EXCLUDED, kind=NextPixelConfig)
