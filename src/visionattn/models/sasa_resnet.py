"""SASA-ResNet: ResNets whose spatial convolutions are all stand-alone local self-attention.

Ramachandran et al. 2019, "Stand-Alone Self-Attention in Vision Models", section 4: every 3x3 convolution of
the bottleneck blocks becomes a k = 7, 8-head local attention layer (stride 2 as attention then 2x2 average
pooling); the 1x1 convolutions, the projection shortcuts and the convolutional stem stay. The block layouts
are the paper's: ResNet-26 [1, 2, 4, 1], ResNet-38 [2, 3, 5, 2], ResNet-50 [3, 4, 6, 3] bottleneck blocks.
The conv ResNets of the same layouts are registered beside them (``resnet26_sasa_conv``, ...), the baseline of
the paper's Table 1 (note ``resnet26`` in the zoo is timm's [2, 2, 2, 2] layout, not the paper's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from visionattn.models.blocks import Bottleneck
from visionattn.models.plug import AttnPlug
from visionattn.models.resnet import ResNet
from visionattn.registry import create_attn, register_model

__all__ = ["SasaResNet", "SASA_LAYERS"]

_PAPER = "Ramachandran et al. 2019, Stand-Alone Self-Attention in Vision Models"
SASA_LAYERS: dict[int, tuple[int, ...]] = {26: (1, 2, 4, 1), 38: (2, 3, 5, 2), 50: (3, 4, 6, 3)}


class _SasaPlug(AttnPlug):
    """The conv plug with the attention's own window: SASA replaces a 3x3 convolution by a 7x7 attention,
    where the generic plug would hand the layer the convolution's kernel size."""

    def conv_unit(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, groups: int = 1,
                  act: bool = True) -> nn.Module:
        if not self.replaces(kernel_size, act):
            return super().conv_unit(in_chs, out_chs, kernel_size, stride, groups, act)
        assert self.name is not None
        layer = create_attn(self.name, in_chs, **{**self.kwargs, "out_channels": out_chs, "stride": stride,
                                                  "groups": groups})
        return nn.Sequential(layer, nn.BatchNorm2d(out_chs), nn.ReLU(inplace=True))


class SasaResNet(ResNet):
    """A bottleneck ResNet with local self-attention (``sasa``) in place of every 3x3 convolution.

    Args:
        layers: bottleneck blocks per stage (:data:`SASA_LAYERS`).
        kernel_size: attention window k (paper: 7).
        heads: attention heads (paper: 8).
        border: how windows meet the image border (``"mask"``, ``"zero"``, ``"clamp"``).
        **kwargs: the rest of :class:`~visionattn.models.resnet.ResNet` (num_classes, in_chans, img_size, ...).

    Shape:
        - Input: (B, in_chans, H, W)
        - Output: (B, num_classes)
    """

    def __init__(self, layers: Sequence[int] = SASA_LAYERS[50], kernel_size: int = 7, heads: int = 8,
                 border: str = "mask", **kwargs: Any) -> None:
        super().__init__(block="bottleneck", layers=layers, **kwargs)
        # ResNet builds its stages with the generic plug; rebuild them with the attention's own window
        plug = _SasaPlug("sasa", {"kernel_size": kernel_size, "heads": heads, "border": border}, "conv")
        block_kwargs = {"groups": 1, "base_width": 64, "plug": plug, "avg_down": kwargs.get("avg_down", False),
                        "avd": False}
        self.feature_info = []
        self.stages = self._make_stages(Bottleneck, layers, kwargs.get("widths", (64, 128, 256, 512)), plug,
                                        block_kwargs)


def _register(depth: int) -> None:
    layers = SASA_LAYERS[depth]
    config = {"num_classes": 1000, "in_chans": 3, "img_size": 224, "layers": layers}
    register_model(f"sasa_resnet{depth}", paper=_PAPER, family="sasa", defaults=config,
                   description=f"SASA-ResNet-{depth}: k=7, 8-head local attention for every spatial conv")(SasaResNet)
    register_model(f"resnet{depth}_sasa_conv", paper=_PAPER, family="sasa", defaults=config,
                   description=f"the conv baseline of SASA-ResNet-{depth} ({list(layers)} bottlenecks)")(ResNet)


for _depth in SASA_LAYERS:
    _register(_depth)
