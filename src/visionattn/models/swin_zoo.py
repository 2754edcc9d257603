"""The named Swin Transformers: timm's Swin-T/S/B (patch 4, window 7, 224x224) and a small-image Swin for 28x28.

Every name is a :class:`~visionattn.models.swin.SwinTransformer` configuration registered with ``register_model``
(family ``"swin"``); ``get_model_entry(name).defaults`` shows it and keywords override it.

The ImageNet models are timm's ``swin_{tiny,small,base}_patch4_window7_224`` under timm's names (Liu et al. 2021,
Table 1 / sec. 3.3: C = 96, 96, 128; layers 2-2-6-2, 2-2-18-2, 2-2-18-2; heads of 32 channels), 1000 classes,
ImageNet normalisation (crop 0.9, bicubic). Parameters: :data:`SWIN_PARAMS` (timm 1.0.31's counts; the paper's
28M / 50M / 88M, the issue's 28.29M / 49.61M / 87.77M); multiply-adds at 224 the paper's 4.5G / 8.7G / 15.4G
(:data:`SWIN_GMACS`, checked by ``tests/models/test_swin.py`` with :func:`visionattn.complexity.mac_counts`). The
stochastic depth is timm's default, 0.1 (the paper trains from scratch with 0.2 / 0.3 / 0.5: pass
``drop_path_rate``).

``swin_patch2_window7_28``: Swin on 1x28x28 images (Fashion-MNIST) with 2x2 patches, so the first stage's 14x14
map holds 2x2 windows of 7 and its odd blocks shift them (with 4x4 patches the 7x7 map would be a single window
and the shift would be dropped everywhere). Three stages of width 32-64-128 (2 blocks each, heads of 16
channels, MLP ratio 2) at 14x14, 7x7 (one window: no shift, recorded in its blocks' ``shift_note``) and 4x4 (the
merging pads 7 to 8; the window is cut to 4), 10 classes, Fashion-MNIST's statistics. About 0.39M parameters; its
widths and rates are a first choice, not tuned.
"""

from __future__ import annotations

from typing import Any

from visionattn.models.swin import SwinTransformer
from visionattn.registry import register_model

__all__ = ["SMALL_SWIN", "SWIN_MODELS", "SWIN_PARAMS", "SWIN_GMACS", "SWIN_TIMM_NAMES"]

_PAPER = "Liu et al. 2021, Swin Transformer: Hierarchical Vision Transformer using Shifted Windows"
_IMAGENET: dict[str, Any] = {"img_size": 224, "patch_size": 4, "in_chans": 3, "num_classes": 1000, "window_size": 7,
                             "norm_stats": "imagenet"}

SMALL_SWIN: dict[str, Any] = {"img_size": 28, "patch_size": 2, "in_chans": 1, "num_classes": 10, "dim": 32,
                              "depths": (2, 2, 2), "heads": (2, 4, 8), "window_size": 7, "mlp_ratio": 2.0,
                              "drop_path_rate": 0.1, "norm_stats": "fashion_mnist"}

# name: (configuration, description)
SWIN_MODELS: dict[str, tuple[dict[str, Any], str]] = {
    "swin_tiny_patch4_window7_224": (
        {**_IMAGENET, "dim": 96, "depths": (2, 2, 6, 2), "heads": (3, 6, 12, 24)},
        "Swin-T: C = 96, stages of 2-2-6-2 blocks, shifted 7x7 windows"),
    "swin_small_patch4_window7_224": (
        {**_IMAGENET, "dim": 96, "depths": (2, 2, 18, 2), "heads": (3, 6, 12, 24)},
        "Swin-S: C = 96, stages of 2-2-18-2 blocks, shifted 7x7 windows"),
    "swin_base_patch4_window7_224": (
        {**_IMAGENET, "dim": 128, "depths": (2, 2, 18, 2), "heads": (4, 8, 16, 32)},
        "Swin-B: C = 128, stages of 2-2-18-2 blocks, shifted 7x7 windows"),
    "swin_patch2_window7_28": (
        SMALL_SWIN, "Swin for small images: 2x2 patches of 28x28, shifted 7x7 windows on the 14x14 map, widths "
                    "32-64-128"),
}

# parameters at the defaults (224x224, 1000 classes), as timm 1.0.31 counts them
SWIN_PARAMS: dict[str, int] = {
    "swin_tiny_patch4_window7_224": 28_288_354,
    "swin_small_patch4_window7_224": 49_606_258,
    "swin_base_patch4_window7_224": 87_768_224,
}

# the paper's FLOPs at 224x224 (Table 1; a FLOP there is a multiply-add)
SWIN_GMACS: dict[str, float] = {
    "swin_tiny_patch4_window7_224": 4.5,
    "swin_small_patch4_window7_224": 8.7,
    "swin_base_patch4_window7_224": 15.4,
}

# our name -> timm's (the same): the architectures whose state dicts are timm's
SWIN_TIMM_NAMES: dict[str, str] = {name: name for name in SWIN_PARAMS}

for _name, (_config, _description) in SWIN_MODELS.items():
    register_model(_name, paper=_PAPER, description=_description, family="swin", defaults=_config)(SwinTransformer)
