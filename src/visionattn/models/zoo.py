"""The named models: one per row of the reference tables, and a small-image version of each family.

Every name is a :class:`~visionattn.models.resnet.ResNet` configuration registered with ``register_model``;
the configuration is the entry's ``defaults``, so ``get_model_entry(name).defaults`` shows exactly what a
name means, and ``create_model(name, num_classes=10, in_chans=1)`` overrides any of it.

ImageNet models default to 3x224x224 inputs and 1000 classes; the small-image models (ResNet-20 with basic
blocks, widths 16-32-64, the CIFAR ResNet of He et al. 2016 sec. 4.2; ResNeXt-29 with bottlenecks at the same
widths) default to 1x28x28 (Fashion-MNIST) and 10 classes, with the 3x3 stride-1 stem and no max pool; build
them with ``in_chans=3, img_size=32`` for CIFAR.

``PUBLISHED`` holds the parameter counts (224x224, 1000 classes) that the official code or the papers give,
and the multiply-adds the papers print (their "GFLOPs" count one multiply-add as one FLOP); the tests and
``benchmarks/model_table.py`` compare against it. Every count matches the official code exactly except the GE
rows, which the GE paper rounds: GE-theta's global gather adds ``C * H * W + 2C`` per block (31,106,600 in
all), GE-theta-plus adds SE's excite MLP on top (33,637,592; the paper's 33.639M is 0.004% away). The papers'
multiply-adds for ResNet, SE, ECA and CBAM are those of ResNet v1 (``stride_in_1x1=True``: 3.858, 3.860 and
3.864 GMACs here); the models default to torchvision's v1.5 layout (4.09 GMACs for ResNet-50), same parameters.

ECA's kernel sizes: ``eca_resnet50``, ``eca_resnet101``, ``eca_resnet152`` pick k per layer from its channel count
by the paper's adaptive rule (eq. 3.5): k = [5, 5, 5, 7] by stage (``eca_resnet20``: [3, 3, 3]). The official
ImageNet checkpoints fix k per stage instead, and ``eca_resnet50_k3557`` ([3, 5, 5, 7]), ``eca_resnet101_k3357``
and ``eca_resnet152_k3357`` ([3, 3, 5, 7]) match them (``attn_stage_kwargs``); any ResNet takes such a per-stage
layout, e.g. ``create_model("eca_resnet50", attn_stage_kwargs=[{"kernel_size": k} for k in (3, 5, 5, 7)])``.

CondConv and dynamic convolution replace every convolution of the residual branches (1x1 and 3x3; the stem,
shortcuts and classifier stay static); neither paper has official ResNet code, so there is no count to match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from visionattn.models.resnet import ResNet
from visionattn.registry import register_model

__all__ = ["PUBLISHED", "Published", "BACKBONES", "IMAGENET", "SMALL", "NAMES", "TIMM_NAMES", "register_resnet"]

IMAGENET: dict[str, Any] = {"num_classes": 1000, "in_chans": 3, "img_size": 224}
SMALL: dict[str, Any] = {"num_classes": 10, "in_chans": 1, "img_size": 28, "small_input": True}

_RESNEXT = {"block": "bottleneck", "groups": 32, "base_width": 4}
_RESNET_D = {"stem_type": "deep", "stem_width": 32, "avg_down": True}

# name: (configuration, paper, description)
BACKBONES: dict[str, tuple[dict[str, Any], str, str]] = {
    "resnet18": ({**IMAGENET, "block": "basic", "layers": (2, 2, 2, 2)}, "He et al. 2016", "ResNet-18"),
    "resnet26": ({**IMAGENET, "layers": (2, 2, 2, 2)}, "He et al. 2016", "ResNet-26 (bottleneck)"),
    "resnet34": ({**IMAGENET, "block": "basic", "layers": (3, 4, 6, 3)}, "He et al. 2016", "ResNet-34"),
    "resnet50": ({**IMAGENET, "layers": (3, 4, 6, 3)}, "He et al. 2016", "ResNet-50"),
    "resnet101": ({**IMAGENET, "layers": (3, 4, 23, 3)}, "He et al. 2016", "ResNet-101"),
    "resnet152": ({**IMAGENET, "layers": (3, 8, 36, 3)}, "He et al. 2016", "ResNet-152"),
    "resnet50d": ({**IMAGENET, "layers": (3, 4, 6, 3), **_RESNET_D}, "He et al. 2019, Bag of Tricks",
                  "ResNet-50-D: deep 3x3 stem, average-pool shortcut"),
    "resnext50_32x4d": ({**IMAGENET, **_RESNEXT, "layers": (3, 4, 6, 3)}, "Xie et al. 2017, ResNeXt",
                        "ResNeXt-50 32x4d"),
    "resnext101_32x4d": ({**IMAGENET, **_RESNEXT, "layers": (3, 4, 23, 3)}, "Xie et al. 2017, ResNeXt",
                         "ResNeXt-101 32x4d"),
    "resnet20": ({**SMALL, "block": "basic", "layers": (3, 3, 3), "widths": (16, 32, 64), "stem_width": 16},
                 "He et al. 2016 (CIFAR ResNet)", "ResNet-20 (small images)"),
    "resnext29_32x4d": ({**SMALL, **_RESNEXT, "layers": (3, 3, 3), "widths": (16, 32, 64), "stem_width": 32},
                        "Xie et al. 2017, ResNeXt", "ResNeXt-29 32x4d (small images)"),
}

_SE = "Hu et al. 2018, Squeeze-and-Excitation Networks"
_ECA = "Wang et al. 2020, ECA-Net"
_CBAM = "Woo et al. 2018, CBAM"
_BAM = "Park et al. 2018, BAM"
_GE = "Hu et al. 2018, Gather-Excite"
_CONDCONV = "Yang et al. 2019, CondConv"
_DYCONV = "Chen et al. 2020, Dynamic Convolution"
_SK = "Li et al. 2019, Selective Kernel Networks"
_SPLAT = "Zhang et al. 2020, ResNeSt"
_ATTN_PAPERS = {"sk": _SK, "splat": _SPLAT,
                "se": _SE, "eca": _ECA, "cbam": _CBAM, "bam": _BAM, "ge_theta_minus": _GE, "ge_theta": _GE,
                "ge_theta_plus": _GE, "condconv": _CONDCONV, "dynamic_conv": _DYCONV}
_DISPLAY = {"sk": "SK (M=2, groups of the block)", "splat": "split attention (radix 2)",
            "se": "SE", "eca": "ECA (adaptive k per layer, eq. 3.5)", "cbam": "CBAM", "bam": "BAM",
            "ge_theta_minus": "GE-theta-minus",
            "ge_theta": "GE-theta (global extent)", "ge_theta_plus": "GE-theta-plus (global extent)",
            "condconv": "CondConv (8 experts)", "dynamic_conv": "dynamic convolution (4 experts)"}
_WHERE = {"sk": "in place of every 3x3 convolution", "splat": "in place of every 3x3 convolution",
          "bam": "at the end of every stage but the last", "condconv": "in place of every block convolution",
          "dynamic_conv": "in place of every block convolution"}

# "{attn}_{backbone}" for every backbone listed with the attention layer: the rows of tables 2.1-10.1.
_PLUGGED: dict[str, tuple[str, ...]] = {
    "se": ("resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x4d", "resnet20",
           "resnext29_32x4d"),
    "eca": ("resnet50", "resnet101", "resnet152", "resnet20"),
    "cbam": ("resnet50", "resnet101", "resnext50_32x4d", "resnext101_32x4d", "resnet20"),
    "bam": ("resnet50", "resnet101", "resnext50_32x4d", "resnet20"),
    "ge_theta_minus": ("resnet50", "resnet101", "resnet20"),
    "ge_theta": ("resnet50", "resnet101", "resnet20"),
    "ge_theta_plus": ("resnet50", "resnet101", "resnet20"),
    "condconv": ("resnet18", "resnet50", "resnet20"),
    "dynamic_conv": ("resnet18", "resnet50", "resnet20"),
    # SK and SplAt on the plain small ResNet, so that one baseline serves the whole comparison bench
    "sk": ("resnet20",),
    "splat": ("resnet20",),
}


# timm's SK-ResNet-18/34 (not in the paper, whose SKNets are ResNeXts): each of the two paths convolves half of
# the input channels, d = max(C / 8, 16).
_SK_BASIC = {"rd_ratio": 1 / 8, "min_rd": 16, "split_input": True}


def _eca_stages(*kernel_sizes: int) -> tuple[dict[str, int], ...]:
    """ECA's explicit per-stage kernel sizes, as ``attn_stage_kwargs``."""
    return tuple({"kernel_size": k} for k in kernel_sizes)


# Networks whose paper (or official checkpoint) fixes more than the layer and its placement.
_NAMED: dict[str, tuple[str, dict[str, Any], str, str]] = {
    "sknet50": ("resnext50_32x4d", {"attn": "sk"}, "Li et al. 2019, Selective Kernel Networks",
                "SKNet-50: SK[M=2, G=32, r=16] in place of ResNeXt-50's 3x3"),
    "sknet101": ("resnext101_32x4d", {"attn": "sk"}, "Li et al. 2019, Selective Kernel Networks",
                 "SKNet-101: SK in place of ResNeXt-101's 3x3"),
    "sknet29": ("resnext29_32x4d", {"attn": "sk"}, "Li et al. 2019, Selective Kernel Networks",
                "SK-ResNeXt-29 for small images"),
    "skresnet18": ("resnet18", {"attn": "sk", "attn_kwargs": _SK_BASIC}, "Li et al. 2019, Selective Kernel Networks",
                   "SK-ResNet-18 as timm's: SK (M=2, G=1, r=8, L=16, split input) in place of the first 3x3"),
    "skresnet34": ("resnet34", {"attn": "sk", "attn_kwargs": _SK_BASIC}, "Li et al. 2019, Selective Kernel Networks",
                   "SK-ResNet-34 as timm's: SK (M=2, G=1, r=8, L=16, split input) in place of the first 3x3"),
    "eca_resnet50d": ("resnet50d", {"attn": "eca"}, _ECA,
                      "ECA-ResNet-50-D as timm's ecaresnet50d: adaptive k per layer, deep stem, avg-pool shortcut"),
    "eca_resnet50_k3557": ("resnet50", {"attn": "eca", "attn_stage_kwargs": _eca_stages(3, 5, 5, 7)}, _ECA,
                           "ECA-ResNet-50 as the official checkpoint: k = [3, 5, 5, 7] by stage"),
    "eca_resnet101_k3357": ("resnet101", {"attn": "eca", "attn_stage_kwargs": _eca_stages(3, 3, 5, 7)}, _ECA,
                            "ECA-ResNet-101 as the official checkpoint: k = [3, 3, 5, 7] by stage"),
    "eca_resnet152_k3357": ("resnet152", {"attn": "eca", "attn_stage_kwargs": _eca_stages(3, 3, 5, 7)}, _ECA,
                            "ECA-ResNet-152 as the official checkpoint: k = [3, 3, 5, 7] by stage"),
    "resnest50": ("resnet50d", {"attn": "splat", "avd": True}, "Zhang et al. 2020, ResNeSt",
                  "ResNeSt-50 (2s1x64d): SplAt in place of ResNet-50-D's 3x3, avd"),
    "resnest29": ("resnet20", {"attn": "splat", "avd": True, "block": "bottleneck", "stem_type": "deep",
                               "avg_down": True}, "Zhang et al. 2020, ResNeSt",
                  "ResNeSt-29 (2s1x16d, deep stem, avd) for small images"),
}


# At ResNet-20's widths (16-64) the papers' r = 16 leaves 1-4 hidden units in the excite MLP, and a single
# ReLU unit that dies at initialisation freezes the gate; its small versions use r = 4 (4-16 units, what
# r = 16 gives at ResNeXt-29's widths 64-256).
_SMALL_RD = {"rd_ratio": 1 / 4}
_SMALL_RD_LAYERS = ("se", "cbam", "bam", "ge_theta_plus")
NAMES: list[str] = []  # the registered names in the order above (backbones, plugged, redesigned)


def _attn_config(attn: str, backbone: str) -> dict[str, Any]:
    config = {**BACKBONES[backbone][0], "attn": attn}
    if backbone == "resnet20" and attn in _SMALL_RD_LAYERS:
        config["attn_kwargs"] = dict(_SMALL_RD)
    return config


def register_resnet(name: str, config: dict[str, Any], paper: str, description: str, factory: type = ResNet) -> None:
    """Register a ResNet-family network: family ``"resnet-small"`` for small-image configurations, else
    ``"resnet"`` (the rule every ResNet-based model file uses; ``factory`` is ResNet or a subclass)."""
    family = "resnet-small" if config.get("small_input") else "resnet"
    register_model(name, paper=paper, description=description, family=family, defaults=config)(factory)


def _register(name: str, config: dict[str, Any], paper: str, description: str) -> None:
    NAMES.append(name)
    register_resnet(name, config, paper, description)


def _register_all() -> None:
    for name, (config, paper, description) in BACKBONES.items():
        _register(name, config, paper, description)
    for attn, backbones in _PLUGGED.items():
        for backbone in backbones:
            where = _WHERE.get(attn, "in every block")
            _register(f"{attn}_{backbone}", _attn_config(attn, backbone), _ATTN_PAPERS[attn],
                      f"{BACKBONES[backbone][2]} with {_DISPLAY[attn]} {where}")
    for name, (backbone, extra, paper, description) in _NAMED.items():
        _register(name, {**BACKBONES[backbone][0], **extra}, paper, description)


_register_all()


# Our name -> timm's, for every architecture both have: the same modules under the same names, so a checkpoint
# of either loads into the other with strict=True and gives the same outputs (tests/models/test_timm_layout.py
# checks the names and shapes against a record of timm's; benchmarks/timm_parity.py compares outputs and speed).
TIMM_NAMES: dict[str, str] = {
    "resnet18": "resnet18", "resnet26": "resnet26", "resnet34": "resnet34", "resnet50": "resnet50",
    "resnet101": "resnet101", "resnet152": "resnet152", "resnet50d": "resnet50d",
    "resnext50_32x4d": "resnext50_32x4d", "resnext101_32x4d": "resnext101_32x4d",
    "se_resnet50": "seresnet50", "se_resnet101": "seresnet101", "se_resnet152": "seresnet152",
    "se_resnext50_32x4d": "seresnext50_32x4d", "se_resnext101_32x4d": "seresnext101_32x4d",
    "sknet50": "skresnext50_32x4d", "skresnet18": "skresnet18", "skresnet34": "skresnet34",
    "resnest50": "resnest50d", "eca_resnet50d": "ecaresnet50d",
}


@dataclass(frozen=True)
class Published:
    """A published figure for a named model at 224x224, 1000 classes.

    Args:
        params: parameter count from the official code (or the paper where the code gives the same).
        gmacs: the paper's multiply-adds in billions (its "GFLOPs"), or None where not used here.
        source: where the figures come from.
        stride_in_1x1: the paper's network is ResNet v1 (stride on the first 1x1 of a strided bottleneck):
            same parameters, fewer multiply-adds than the v1.5 layout these models default to.
    """

    params: int
    gmacs: float | None
    source: str
    stride_in_1x1: bool = False


PUBLISHED: dict[str, Published] = {
    "resnet50": Published(25_557_032, 3.8, "torchvision; He et al. 2016 Table 1", True),
    "se_resnet50": Published(28_088_024, 3.87, "Hu et al. 2018; official Caffe model", True),
    "eca_resnet50": Published(25_557_032, 3.86, "Wang et al. 2020: ResNet-50 plus fewer than 100", True),
    "cbam_resnet50": Published(28_089_624, 3.864, "Woo et al. 2018 (28.09M); imgclsmob", True),
    "bam_resnet50": Published(25_915_099, None, "Park et al. 2018 (25.92M); official code, imgclsmob"),
    "ge_theta_resnet50": Published(31_107_000, None, "Hu et al. 2018 (GE), global extent"),
    "ge_theta_plus_resnet50": Published(33_639_000, None, "Hu et al. 2018 (GE), global extent"),
    "se_resnext50_32x4d": Published(27_559_896, 4.25, "Hu et al. 2018 (27.56M); official model"),
    "sknet50": Published(27_479_784, 4.47, "Li et al. 2019 (27.5M); imgclsmob"),
    "resnest50": Published(27_483_240, 5.4, "Zhang et al. 2020 (27.5M); official code"),
}
