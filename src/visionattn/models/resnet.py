"""ResNet, ResNeXt, ResNet-D and their small-image versions, with one attention plug.

He et al. 2016, "Deep Residual Learning for Image Recognition"; Xie et al. 2017 (ResNeXt); He et al. 2019
(ResNet-D). The ``attn`` argument puts any registered layer where its paper does (see
:mod:`visionattn.models.plug`); the named models of the reference tables are in :mod:`visionattn.models.zoo`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from visionattn.layers.helpers import check_positive_int, pair
from visionattn.models.blocks import BLOCKS, Stem, downsampled
from visionattn.models.plug import AttnPlug

__all__ = ["ResNet"]


class ResNet(nn.Module):
    """A ResNet with an attention plug: stem, stages of residual blocks, global pool and classifier.

    Args:
        block: ``"basic"`` (two 3x3) or ``"bottleneck"`` (1x1-3x3-1x1, expansion 4).
        layers: blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50, ``(3, 3, 3)`` for ResNet-20.
        widths: nominal width (planes) of each stage; default ``(64, 128, 256, 512)``. The first stage keeps
            the resolution, every later one halves it.
        num_classes: classifier outputs; 0 leaves out the classifier (the pooled features come out).
        in_chans: image channels.
        img_size: the input (H, W) the network is built for. Only layers with a fixed spatial size (GE-theta
            with the global extent) depend on it; other networks accept any size.
        groups: cardinality of the 3x3 convolutions (ResNeXt: 32).
        base_width: channels per group at planes = 64 (ResNet: 64, ResNeXt 32x4d: 4).
        stem_type: ``"basic"`` (7x7) or ``"deep"`` (three 3x3, ResNet-D / ResNeSt).
        stem_width: width of the first stem conv (deep stem: the stem outputs twice this).
        small_input: the small-image stem (3x3 stride 1, no max pool) for 28x28 and 32x32 inputs.
        avg_down: ResNet-D shortcut (average pool, then 1x1 conv at stride 1).
        avd: ResNeSt's average-pool downsampling after the 3x3 of strided blocks (bottleneck only).
        stride_in_1x1: ResNet v1's stride on the first 1x1 of strided bottlenecks (default: on the 3x3, v1.5).
        attn: registered attention layer name (``visionattn.list_attn()``), or None.
        attn_kwargs: keyword arguments for every instance of ``attn``.
        attn_where: ``"block"``, ``"stage"`` or ``"conv"`` to override the paper's placement.
        drop_rate: dropout before the classifier.
        zero_init_last: start each residual branch's last BN at zero (the block starts as the identity).

    Shape:
        - Input: (B, in_chans, H, W), (H, W) = ``img_size`` when ``attn`` needs a fixed size
        - Output: (B, num_classes), or (B, num_features) when ``num_classes`` = 0
    """

    def __init__(self, block: str = "bottleneck", layers: Sequence[int] = (3, 4, 6, 3),
                 widths: Sequence[int] = (64, 128, 256, 512), num_classes: int = 1000, in_chans: int = 3,
                 img_size: int | tuple[int, int] = 224, groups: int = 1, base_width: int = 64,
                 stem_type: str = "basic", stem_width: int = 64, small_input: bool = False,
                 avg_down: bool = False, avd: bool = False, stride_in_1x1: bool = False, attn: str | None = None,
                 attn_kwargs: Mapping[str, Any] | None = None, attn_where: str | None = None,
                 drop_rate: float = 0.0, zero_init_last: bool = False) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {block!r}")
        if len(layers) != len(widths) or not layers:
            raise ValueError(f"layers and widths need one entry per stage, got layers={tuple(layers)}, "
                             f"widths={tuple(widths)}")
        for name, values in (("layers", layers), ("widths", widths)):
            for v in values:
                check_positive_int(name, v)
        check_positive_int("num_classes", num_classes, minimum=0)
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}")
        self.img_size = pair("img_size", img_size)
        self.input_size = (in_chans, *self.img_size)
        plug = AttnPlug(attn, dict(attn_kwargs or {}), attn_where)

        self.stem = Stem(in_chans, stem_type, stem_width, small_input)
        self.feature_info: list[dict[str, Any]] = []
        block_kwargs = {"groups": groups, "base_width": base_width, "plug": plug, "avg_down": avg_down,
                        "avd": avd, "stride_in_1x1": stride_in_1x1}
        self.stages = self._make_stages(BLOCKS[block], layers, widths, plug, block_kwargs)
        self.num_features = self.feature_info[-1]["num_chs"]
        in_chs = self.num_features
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Dropout(drop_rate),
                                  nn.Linear(in_chs, num_classes) if num_classes else nn.Identity())
        self.num_classes = num_classes
        if zero_init_last:
            for m in self.modules():
                if hasattr(m, "last_bn"):
                    nn.init.zeros_(m.last_bn().weight)

    def _make_stages(self, block: type, layers: Sequence[int], widths: Sequence[int], plug: AttnPlug,
                     block_kwargs: dict[str, Any]) -> nn.Sequential:
        """Stage i has ``layers[i]`` blocks of width ``widths[i]``; stages after the first start at stride 2.

        Each block learns its output size (for layers that need it); stage-end attention (BAM) closes every
        stage but the last. Fills ``feature_info`` (channels and reduction of each stage's output).
        """
        feat = downsampled(self.img_size, self.stem.reduction)
        in_chs, reduction = self.stem.out_channels, self.stem.reduction
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        for i, (depth, planes) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            feat, reduction = downsampled(feat, stride), reduction * stride
            blocks: list[nn.Module] = []
            for j in range(depth):
                blocks.append(block(in_chs, planes, stride if j == 0 else 1, feat_size=feat, **block_kwargs))
                in_chs = blocks[-1].out_channels
            if i < len(layers) - 1 and plug.where == "stage":
                blocks.append(plug.stage_attn(in_chs, feat))
            stages[f"stage{i + 1}"] = nn.Sequential(*blocks)
            self.feature_info.append({"module": f"stages.stage{i + 1}", "num_chs": in_chs,
                                      "reduction": reduction})
        return nn.Sequential(stages)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map, (B, num_features, H / 32, W / 32) (H / 4 for small input)."""
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
