"""SASA-ResNet: ResNets whose spatial convolutions are all stand-alone local self-attention.

Ramachandran et al. 2019, "Stand-Alone Self-Attention in Vision Models", section 4: every 3x3 convolution of
the bottleneck blocks becomes a k = 7, 8-head local attention layer (stride 2 as attention then 2x2 average
pooling); the 1x1 convolutions and the projection shortcuts stay. The block layouts are the paper's:
ResNet-26 [1, 2, 4, 1], ResNet-38 [2, 3, 5, 2], ResNet-50 [3, 4, 6, 3] bottleneck blocks.

The stem is the ResNet's convolutional one (``stem="conv"``, ``sasa_resnet26``, ..., the paper's "conv-stem +
attention") or the attention stem of section 3.2 (``stem="attention"``, ``sasa_stem_resnet26``, ..., "full
attention"): as section 4.1 describes it, :class:`~visionattn.layers.attention_stem.AttentionStem2d` (spatial
extent 4, 4 value mixtures) at the image's full resolution, then BatchNorm and a 4 x 4 stride-4 max pooling, in
place of the 7x7 stride-2 convolution, BN, ReLU and 3x3 stride-2 max pooling (the same output stride 4). The
paper names no ReLU there and none is added: the max pooling follows the BatchNorm directly. It has 2,176
parameters where the 7x7 convolution has 9,408, so the full-attention models are 7,232 smaller: 10.335M
(ResNet-26), 14.183M (38), 18.031M (50), 1000 classes.
The conv ResNets of the same layouts are registered beside them (``resnet26_sasa_conv``, ...), the baseline of
the paper's Table 1 (note ``resnet26`` in the zoo is timm's [2, 2, 2, 2] layout, not the paper's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from visionattn.errors import UsageError, check_choice
from visionattn.models.blocks import Bottleneck
from visionattn.models.plug import AttnPlug
from visionattn.models.resnet import ResNet
from visionattn.registry import create_attn, register_model

__all__ = ["SasaResNet", "SASA_LAYERS", "STEMS", "attention_stem"]

_PAPER = "Ramachandran et al. 2019, Stand-Alone Self-Attention in Vision Models"
SASA_LAYERS: dict[int, tuple[int, ...]] = {26: (1, 2, 4, 1), 38: (2, 3, 5, 2), 50: (3, 4, 6, 3)}
STEMS = ("conv", "attention")


def attention_stem(in_chans: int, width: int) -> nn.Module:
    """The paper's stem layer: spatially aware attention (extent 4, 4 mixtures) at full resolution. The
    network's ``bn1`` follows it, then (no ReLU) the 4 x 4 max pooling ``maxpool`` (:class:`SasaResNet`)."""
    return create_attn("sasa_stem", in_chans, out_channels=width, kernel_size=4, mixtures=4)


class _SasaPlug(AttnPlug):
    """The conv plug with the attention's own window: SASA replaces a 3x3 convolution by a 7x7 attention,
    where the generic plug would hand the layer the convolution's kernel size."""

    def replacement_kwargs(self, out_chs: int, kernel_size: int, stride: int, groups: int) -> dict[str, Any]:
        return {"out_channels": out_chs, "stride": stride, "groups": groups}


class SasaResNet(ResNet):
    """A bottleneck ResNet with local self-attention (``sasa``) in place of every 3x3 convolution.

    Args:
        layers: bottleneck blocks per stage (:data:`SASA_LAYERS`).
        kernel_size: attention window k (paper: 7).
        heads: attention heads (paper: 8).
        border: how windows meet the image border (``"mask"``, ``"zero"``, ``"clamp"``).
        stem: ``"conv"`` (the ResNet's 7x7 convolution) or ``"attention"`` (the spatially aware attention stem,
            :func:`attention_stem`, and a 4 x 4 max pooling in place of the convolution stem; with
            ``small_input`` the stem keeps stride 1 and has no pooling).
        **kwargs: the rest of :class:`~visionattn.models.resnet.ResNet` (num_classes, in_chans, img_size, ...).

    Shape:
        - Input: (B, in_chans, H, W)
        - Output: (B, num_classes)
    """

    # The smallest input whose every parameter gets a gradient: on a 1x1 last-stage map a window holds one key,
    # the softmax is constant and the relative embeddings learn nothing (read by the model contract tests).
    min_input_size = (3, 64, 64)

    def __init__(self, layers: Sequence[int] = SASA_LAYERS[50], kernel_size: int = 7, heads: int = 8,
                 border: str = "mask", stem: str = "conv", **kwargs: Any) -> None:
        check_choice("stem", stem, STEMS)
        if stem == "attention" and kwargs.get("stem_type", "basic") != "basic":
            raise UsageError(f"the attention stem replaces the basic stem's convolution; got stem_type="
                             f"{kwargs['stem_type']!r}, needs 'basic'")
        super().__init__(block="bottleneck", layers=layers, **kwargs)
        if stem == "attention":
            self.conv1 = attention_stem(self.in_chans, self.feature_info[0]["num_chs"])
            self.act1 = nn.Identity()
            self.pretrained_cfg = self.pretrained_cfg.replace(first_conv=None)  # no convolution to adapt
            self.feature_info[0]["reduction"] = 1  # the attention runs at the image's full resolution
            if not kwargs.get("small_input", False):  # ceil_mode: ceil(H / 4) like the conv stem's pooling
                self.maxpool = nn.MaxPool2d(4, stride=4, ceil_mode=True)
        # ResNet builds its stages with the generic plug; rebuild them with the attention's own window
        plug = _SasaPlug("sasa", {"kernel_size": kernel_size, "heads": heads, "border": border}, "conv")
        block_kwargs = {"groups": 1, "base_width": 64, "plug": plug, "avg_down": kwargs.get("avg_down", False),
                        "avd": False}
        self._make_stages(Bottleneck, layers, kwargs.get("widths", (64, 128, 256, 512)), plug, block_kwargs)
        self.init_weights()  # the rebuilt stages and stem get the network's rule too (q/k/v projections included)


def _register(depth: int) -> None:
    layers = SASA_LAYERS[depth]
    config = {"num_classes": 1000, "in_chans": 3, "img_size": 224, "layers": layers}
    register_model(f"sasa_resnet{depth}", paper=_PAPER, family="sasa", defaults=config,
                   description=f"SASA-ResNet-{depth}: k=7, 8-head local attention for every spatial conv")(SasaResNet)
    register_model(f"sasa_stem_resnet{depth}", paper=_PAPER, family="sasa", defaults={**config, "stem": "attention"},
                   description=f"SASA-ResNet-{depth} with the attention stem: no conv wider than 1x1")(SasaResNet)
    register_model(f"resnet{depth}_sasa_conv", paper=_PAPER, family="sasa", defaults=config,
                   description=f"the conv baseline of SASA-ResNet-{depth} ({list(layers)} bottlenecks)")(ResNet)


for _depth in SASA_LAYERS:
    _register(_depth)
