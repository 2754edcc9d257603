"""The named vision transformers: timm's ViT-Ti/S/B/L-16 at 224 and a small-image ViT for 28x28.

Every name is a :class:`~visionattn.models.vit.VisionTransformer` configuration registered with
``register_model`` (family ``"vit"``); the configuration is the entry's ``defaults``, so
``get_model_entry(name).defaults`` shows what a name means and ``create_model(name, img_size=384)`` overrides it.

The ImageNet models are timm's ``vit_{tiny,small,base,large}_patch16_224`` under timm's names (patch 16, 224x224,
1000 classes, class-token pooling, the normalisation of the Google checkpoints, mean = std = 0.5): their state
dicts load into timm's with ``strict=True`` both ways and give the same logits. Parameters (timm's counts, the
issue's 5.72M / 22.05M / 86.57M / 304.33M): :data:`VIT_PARAMS`. ViT-Ti and ViT-S are DeiT's widths (Touvron et al.
2021), ViT-B and ViT-L the paper's (Dosovitskiy et al. 2021, Table 1).

``vit_patch4_28``: ViT on 1x28x28 images (Fashion-MNIST) with 4x4 patches (7x7 = 49 patch tokens and a class
token), width 64, 6 blocks of 4 heads, MLP ratio 2, 10 classes, normalised with Fashion-MNIST's statistics as
the small ResNets are. Its training recipe is ``visionattn train --recipe vit``.
"""

from __future__ import annotations

from typing import Any

from visionattn.models.vit import VisionTransformer
from visionattn.registry import register_model

__all__ = ["SMALL_VIT", "VIT_MODELS", "VIT_PARAMS", "VIT_TIMM_NAMES"]

_PAPER = "Dosovitskiy et al. 2021, An Image is Worth 16x16 Words"
_DEIT = "Dosovitskiy et al. 2021 (ViT); width of Touvron et al. 2021 (DeiT)"
_IMAGENET: dict[str, Any] = {"img_size": 224, "patch_size": 16, "in_chans": 3, "num_classes": 1000,
                             "global_pool": "token", "norm_stats": "inception"}

# vit_patch4_28's configuration (tuned with the training recipe: width, depth, drop rates)
SMALL_VIT: dict[str, Any] = {"img_size": 28, "patch_size": 4, "in_chans": 1, "num_classes": 10, "dim": 64, "depth": 6,
                             "heads": 4, "mlp_ratio": 2.0, "global_pool": "token", "drop_rate": 0.0,
                             "pos_drop_rate": 0.0, "proj_drop_rate": 0.0, "attn_drop_rate": 0.0,
                             "drop_path_rate": 0.0, "norm_stats": "fashion_mnist"}

# name: (configuration, paper, description)
VIT_MODELS: dict[str, tuple[dict[str, Any], str, str]] = {
    "vit_tiny_patch16_224": ({**_IMAGENET, "dim": 192, "depth": 12, "heads": 3}, _DEIT,
                             "ViT-Ti/16: 12 blocks of width 192, 3 heads"),
    "vit_small_patch16_224": ({**_IMAGENET, "dim": 384, "depth": 12, "heads": 6}, _DEIT,
                              "ViT-S/16: 12 blocks of width 384, 6 heads"),
    "vit_base_patch16_224": ({**_IMAGENET, "dim": 768, "depth": 12, "heads": 12}, _PAPER,
                             "ViT-B/16: 12 blocks of width 768, 12 heads"),
    "vit_large_patch16_224": ({**_IMAGENET, "dim": 1024, "depth": 24, "heads": 16}, _PAPER,
                              "ViT-L/16: 24 blocks of width 1024, 16 heads"),
    "vit_patch4_28": (SMALL_VIT, _PAPER,
                      "ViT for small images: 4x4 patches of 28x28 (49 tokens), 6 blocks of width 64, 4 heads"),
}

# parameters at the defaults (224x224, 1000 classes), as timm 1.0.31 counts them
VIT_PARAMS: dict[str, int] = {
    "vit_tiny_patch16_224": 5_717_416,
    "vit_small_patch16_224": 22_050_664,
    "vit_base_patch16_224": 86_567_656,
    "vit_large_patch16_224": 304_326_632,
}

# our name -> timm's (the same): the architectures whose state dicts are timm's (tests/models/test_vit.py checks
# the names and shapes against a record of timm's, tests/data/timm_vit_state_dict_keys.json.gz)
VIT_TIMM_NAMES: dict[str, str] = {name: name for name in VIT_PARAMS}

for _name, (_config, _paper, _description) in VIT_MODELS.items():
    register_model(_name, paper=_paper, description=_description, family="vit", defaults=_config)(VisionTransformer)
