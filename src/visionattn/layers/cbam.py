"""Convolutional block attention module (CBAM): channel attention, then spatial attention.

Woo et al. 2018, "CBAM: Convolutional Block Attention Module" (section 4 of the reference tutorial). Channel part:
eq. 4.1-4.4 (average AND max pooling through one shared MLP, summed, then the gate); spatial part: eq. 4.5-4.8
(channel-wise max and mean, a k x k convolution to one map, then the gate).

The spatial part stacks its two maps as [max, mean], the official code's order (its ``ChannelPool``); the paper
writes [AvgPool; MaxPool]. The two orders give the same family of functions (the 7x7 kernel's two input channels
swap), but only the official order loads the official weights correctly.
"""

from __future__ import annotations

import torch
from torch import nn

from visionattn.layers.helpers import (
    ConvMlp,
    LayerSpec,
    check_bool,
    check_feature_map,
    check_odd,
    check_positive_int,
    create_act,
    reduced_channels,
)
from visionattn.layers.recording import Recordable
from visionattn.registry import register_attn

__all__ = ["CbamChannelAttention", "CbamSpatialAttention", "ConvBlockAttention"]

_PAPER = "Woo et al. 2018, CBAM"


@register_attn("cbam_channel", paper=_PAPER, family="channel",
               description="CBAM's channel part: shared MLP over average- and max-pooled channels")
class CbamChannelAttention(Recordable, nn.Module):
    """CBAM channel attention (eq. 4.1-4.4): ``x * sigmoid(MLP(avg_hw(x)) + MLP(max_hw(x)))``.

    Args:
        channels: input channels C.
        rd_ratio, rd_channels, rd_divisor: the shared MLP's bottleneck C / r (paper: r = 16).
        act_layer: activation inside the MLP (paper: ReLU).
        gate_layer: gate (paper: sigmoid).
        bias: biases on the MLP's layers (the official code has them).

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C, H, W)

    Recordable, kind ``"channel"``: the gate a, (B, C, 1, 1).
    """

    record_kind = "channel"

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_channels: int | None = None,
                 rd_divisor: int = 1, act_layer: LayerSpec = "relu", gate_layer: LayerSpec = "sigmoid",
                 bias: bool = True) -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        self.fc = ConvMlp(channels, reduced_channels(channels, rd_ratio, rd_channels, rd_divisor), act_layer,
                          bias=bias)
        self.gate = create_act(gate_layer, "gate_layer")

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The channel attention vector a (eq. 4.4), shape (B, C, 1, 1)."""
        check_feature_map(x, self.channels, type(self).__name__)
        z_avg = x.mean(dim=(2, 3), keepdim=True)  # eq. 4.1
        z_max = x.amax(dim=(2, 3), keepdim=True)  # eq. 4.2
        return self.gate(self.fc(z_avg) + self.fc(z_max))  # eq. 4.3-4.4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attention(x)
        if self.recorder is not None:
            self.recorder(self, a)
        return x * a


@register_attn("cbam_spatial", paper=_PAPER, family="channel",
               description="CBAM's spatial part: channel mean and max, 7x7 conv, sigmoid pixel gate")
class CbamSpatialAttention(Recordable, nn.Module):
    """CBAM spatial attention (eq. 4.5-4.8): ``x * sigmoid(conv_kxk([max_c(x); mean_c(x)]))``.

    The max map is input channel 0 and the mean map channel 1 of the convolution, as in the official code (the
    paper writes them the other way round; see the module docstring).

    Args:
        channels: input channels C (only checked: the layer has no per-channel parameters).
        kernel_size: odd k of the convolution (paper: 7).
        norm: BatchNorm on the one-channel map before the gate, as in the paper's official code (eq. 4.7 omits
            it). Without it the convolution carries a bias instead.
        gate_layer: gate (paper: sigmoid).

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C, H, W)

    Recordable, kind ``"spatial"``: the map A, (B, 1, H, W).
    """

    record_kind = "spatial"

    def __init__(self, channels: int, kernel_size: int = 7, norm: bool = True,
                 gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        check_odd("kernel_size", kernel_size, "so the attention map keeps the input size")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=not check_bool("norm", norm))
        self.bn = nn.BatchNorm2d(1) if norm else nn.Identity()
        self.gate = create_act(gate_layer, "gate_layer")

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial attention map A (eq. 4.7), shape (B, 1, H, W)."""
        check_feature_map(x, self.channels, type(self).__name__)
        z = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)  # eq. 4.6, 4.5
        return self.gate(self.bn(self.conv(z)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attention(x)
        if self.recorder is not None:
            self.recorder(self, a)
        return x * a  # eq. 4.8


@register_attn("cbam", paper=_PAPER, family="channel",
               description="CBAM: channel attention (avg+max pooled MLP) then spatial attention (7x7 conv)")
class ConvBlockAttention(nn.Module):
    """CBAM: :class:`CbamChannelAttention` followed by :class:`CbamSpatialAttention`.

    Args:
        channels: input channels C.
        rd_ratio, rd_channels, rd_divisor, act_layer, bias: of the channel part (paper: r = 16, ReLU).
        kernel_size, norm: of the spatial part (paper: 7, BatchNorm in the official code).
        gate_layer: gate of both parts (paper: sigmoid).

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C, H, W)
    """

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_channels: int | None = None,
                 rd_divisor: int = 1, act_layer: LayerSpec = "relu", gate_layer: LayerSpec = "sigmoid",
                 bias: bool = True, kernel_size: int = 7, norm: bool = True) -> None:
        super().__init__()
        self.channel = CbamChannelAttention(channels, rd_ratio, rd_channels, rd_divisor, act_layer, gate_layer,
                                            bias)
        self.spatial = CbamSpatialAttention(channels, kernel_size, norm, gate_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))
