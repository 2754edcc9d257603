"""Squeeze-and-excitation and its SE-Var-1/2/3 ablations.

SE: Hu et al. 2018, "Squeeze-and-Excitation Networks"; the variants: Wang et al. 2020, "ECA-Net" (section 3 of the
reference tutorial). All four share the squeeze (global average pooling, eq. 2.1) and the final scaling (eq. 2.3)
and differ only in the excitation F_ex.
"""

from __future__ import annotations

import torch
from torch import nn

from visionattn.layers.helpers import (
    LayerSpec,
    check_bool,
    check_feature_map,
    check_positive_int,
    create_act,
    reduced_channels,
)
from visionattn.layers.recording import Recordable
from visionattn.registry import register_attn

__all__ = ["ChannelGate", "SqueezeExcite", "SEVar1", "SEVar2", "SEVar3"]

_SE_PAPER = "Hu et al. 2018, Squeeze-and-Excitation Networks"
_ECA_PAPER = "Wang et al. 2020, ECA-Net (SE-Var ablations)"


class ChannelGate(Recordable, nn.Module):
    """Squeeze (eq. 2.1), an excitation ``self.excite`` that subclasses define, gate, scale (eq. 2.3).

    Recordable, kind ``"channel"``: the gate a, (B, C, 1, 1), that multiplies the input.
    """

    record_kind = "channel"

    def __init__(self, channels: int, gate_layer: LayerSpec) -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        self.gate = create_act(gate_layer, "gate_layer")

    def excite(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The attention vector a, shape (B, C, 1, 1)."""
        check_feature_map(x, self.channels, type(self).__name__)
        z = x.mean(dim=(2, 3), keepdim=True)  # eq. 2.1
        return self.gate(self.excite(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attention(x)
        if self.recorder is not None:
            self.recorder(self, a)
        return x * a  # eq. 2.3


@register_attn("se", paper=_SE_PAPER, family="channel",
               description="squeeze-and-excitation: global average pool, bottleneck MLP, sigmoid channel gate")
class SqueezeExcite(ChannelGate):
    """Squeeze-and-excitation (eq. 2.1-2.3): ``x * sigmoid(W2 relu(W1 mean_hw(x)))``.

    Args:
        channels: input channels C.
        rd_ratio: bottleneck ratio 1/r (paper: r = 16).
        rd_channels: bottleneck width; overrides ``rd_ratio``.
        rd_divisor: round the bottleneck width to a multiple of this (1 keeps C / r exactly).
        act_layer: activation between the two layers (paper: ReLU, delta in eq. 2.2).
        gate_layer: gate (paper: sigmoid).
        bias: biases on the two fully-connected layers (the paper's code has them; eq. 2.2 omits them).

    The two fully connected layers are 1x1 convolutions named ``fc1`` and ``fc2`` (W1 and W2), as in timm's and
    torchvision's SE-ResNets, so their checkpoints load by name.

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C, H, W)
    """

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_channels: int | None = None,
                 rd_divisor: int = 1, act_layer: LayerSpec = "relu", gate_layer: LayerSpec = "sigmoid",
                 bias: bool = True) -> None:
        super().__init__(channels, gate_layer)
        hidden = reduced_channels(channels, rd_ratio, rd_channels, rd_divisor)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=check_bool("bias", bias))  # W1
        self.act = create_act(act_layer, inplace=True)  # on fc1's fresh output
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=bias)  # W2

    def excite(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(z)))  # eq. 2.2 without the gate


@register_attn("se_var1", paper=_ECA_PAPER, family="channel",
               description="SE-Var-1: parameter-free, sigmoid of the pooled channels")
class SEVar1(ChannelGate):
    """SE-Var-1 (eq. 3.1): ``F_ex(z) = sigmoid(z)``; no parameters.

    Args:
        channels: input channels C.
        gate_layer: gate (paper: sigmoid).

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C, H, W)
    """

    def __init__(self, channels: int, gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels, gate_layer)

    def excite(self, z: torch.Tensor) -> torch.Tensor:
        return z


@register_attn("se_var2", paper=_ECA_PAPER, family="channel",
               description="SE-Var-2: per-channel weight on the pooled channels, no channel interaction")
class SEVar2(ChannelGate):
    """SE-Var-2 (eq. 3.2): ``F_ex(z; w) = sigmoid(w * z)``, a diagonal excitation.

    Args:
        channels: input channels C.
        gate_layer: gate (paper: sigmoid).
        bias: add a per-channel bias (``sigmoid(w * z + b)``); the weight starts at 1 and the bias at 0, so the
            layer starts as SE-Var-1.

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C, H, W)
    """

    def __init__(self, channels: int, gate_layer: LayerSpec = "sigmoid", bias: bool = True) -> None:
        super().__init__(channels, gate_layer)
        self.weight = nn.Parameter(torch.ones(channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(channels, 1, 1)) if check_bool("bias", bias) else None

    def excite(self, z: torch.Tensor) -> torch.Tensor:
        out = self.weight * z
        return out if self.bias is None else out + self.bias


@register_attn("se_var3", paper=_ECA_PAPER, family="channel",
               description="SE-Var-3 (= eSE): one full C x C layer on the pooled channels, no bottleneck")
class SEVar3(ChannelGate):
    """SE-Var-3 (eq. 3.3): ``F_ex(z; W) = sigmoid(W z)`` with a full C x C matrix; the same as eSE.

    Args:
        channels: input channels C.
        gate_layer: gate (paper: sigmoid).
        bias: bias on the fully-connected layer (eSE has one).

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C, H, W)
    """

    def __init__(self, channels: int, gate_layer: LayerSpec = "sigmoid", bias: bool = True) -> None:
        super().__init__(channels, gate_layer)
        self.fc = nn.Conv2d(channels, channels, 1, bias=check_bool("bias", bias))

    def excite(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(z)
