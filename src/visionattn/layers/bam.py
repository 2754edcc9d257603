"""Bottleneck attention module (BAM).

Park et al. 2018, "BAM: Bottleneck Attention Module" (section 5 of the reference tutorial). A channel branch
(eq. 5.1: SE's MLP with BatchNorm before the ReLU and no gate) and a spatial branch (1x1 reduction, dilated 3x3
convolutions, 1x1 to one map) give unnormalised attention a' (B, C, 1, 1) and A' (B, 1, H, W); they are combined
as ``X * (1 + sigmoid(a' * A'))`` (eq. 5.2-5.3), as in the paper's official code. The paper's text combines the
branches by a sum instead; ``combine="add"`` gives that.
"""

from __future__ import annotations

import torch
from torch import nn

from visionattn.errors import check_choice
from visionattn.layers.helpers import (
    ConvMlp,
    LayerSpec,
    check_feature_map,
    check_norm_batch,
    check_positive_int,
    create_act,
    get_act_layer,
    reduced_channels,
)
from visionattn.layers.recording import Recordable
from visionattn.registry import register_attn

__all__ = ["BamChannelAttention", "BamSpatialAttention", "BottleneckAttention"]


class BamChannelAttention(nn.Module):
    """BAM's channel branch (eq. 5.1): ``a' = W2 relu(BN(W1 mean_hw(x)))``, returned without a gate.

    Args:
        channels: input channels C.
        hidden: bottleneck width C / r.
        act_layer: activation (paper: ReLU).

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C, 1, 1), the unnormalised channel attention
    """

    def __init__(self, channels: int, hidden: int, act_layer: LayerSpec = "relu") -> None:
        super().__init__()
        self.fc = ConvMlp(channels, hidden, act_layer, norm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3), keepdim=True))


class BamSpatialAttention(nn.Module):
    """BAM's spatial branch: 1x1 conv to C / r, ``num_dilated`` dilated 3x3 convs, 1x1 conv to one map.

    Every convolution but the last is followed by BatchNorm and the activation.

    Args:
        channels: input channels C.
        hidden: reduced width C / r.
        dilation: dilation of the 3x3 convolutions (paper: 4).
        num_dilated: how many dilated 3x3 convolutions (paper: 2).
        act_layer: activation (paper: ReLU).

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, 1, H, W), the unnormalised spatial attention
    """

    def __init__(self, channels: int, hidden: int, dilation: int = 4, num_dilated: int = 2,
                 act_layer: LayerSpec = "relu") -> None:
        super().__init__()
        act = get_act_layer(act_layer)
        layers: list[nn.Module] = [nn.Conv2d(channels, hidden, 1), nn.BatchNorm2d(hidden), act()]
        for _ in range(num_dilated):
            layers += [nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation), nn.BatchNorm2d(hidden),
                       act()]
        layers.append(nn.Conv2d(hidden, 1, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@register_attn("bam", paper="Park et al. 2018, BAM", family="channel", placement="stage",
               description="BAM: channel MLP (BN, no gate) x dilated-conv spatial map, X * (1 + sigmoid(.))")
class BottleneckAttention(Recordable, nn.Module):
    """BAM (eq. 5.1-5.3): ``x * (1 + sigmoid(a' * A'))``.

    Args:
        channels: input channels C.
        rd_ratio, rd_channels, rd_divisor: the bottleneck C / r of both branches (paper: r = 16).
        dilation: dilation of the spatial branch's 3x3 convolutions (paper: 4).
        num_dilated: number of dilated 3x3 convolutions (paper: 2).
        act_layer: activation (paper: ReLU).
        gate_layer: gate (paper: sigmoid).
        combine: ``"mul"`` (eq. 5.2 and the official code) or ``"add"`` (the paper's text).

    In training mode the channel branch's BatchNorm sees one pooled value per sample, so a batch needs at least
    two samples (a UsageError says so otherwise); eval mode takes any batch.

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C, H, W)

    Recordable, kind ``"spatial"``: the 3-D map A = sigmoid(a' * A') (or of the sum), (B, C, H, W).
    """

    record_kind = "spatial"

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_channels: int | None = None,
                 rd_divisor: int = 1, dilation: int = 4, num_dilated: int = 2, act_layer: LayerSpec = "relu",
                 gate_layer: LayerSpec = "sigmoid", combine: str = "mul") -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        check_positive_int("dilation", dilation)
        check_positive_int("num_dilated", num_dilated, minimum=0)
        self.combine = check_choice("combine", combine, ("mul", "add"))
        hidden = reduced_channels(channels, rd_ratio, rd_channels, rd_divisor)
        self.channel = BamChannelAttention(channels, hidden, act_layer)
        self.spatial = BamSpatialAttention(channels, hidden, dilation, num_dilated, act_layer)
        self.gate = create_act(gate_layer, "gate_layer")

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised attention tensor A of eq. 5.2, shape (B, C, H, W)."""
        check_feature_map(x, self.channels, type(self).__name__)
        check_norm_batch(self, x)
        a_c, a_s = self.channel(x), self.spatial(x)
        return self.gate(a_c * a_s if self.combine == "mul" else a_c + a_s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attention(x)
        if self.recorder is not None:
            self.recorder(self, a)
        return x * (1 + a)  # eq. 5.3
