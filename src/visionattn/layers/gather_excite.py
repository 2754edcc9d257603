"""Gather-excite: GE-theta-minus, GE-theta and GE-theta-plus.

Hu et al. 2018, "Gather-Excite: Exploiting Feature Context in Convolutional Neural Networks" (section 6 of the
reference tutorial). A gather operator xi_G pools each channel over an extent e (e = 0: the whole map) and an
excite operator xi_E redistributes it: nearest-neighbour interpolation back to (H, W) and a sigmoid gate.

- GE-theta-minus (eq. 6.1-6.3): parameter-free gather, average pooling with kernel 2e - 1 and stride e.
- GE-theta: the gather is log2(e) depthwise 3x3 stride-2 convolutions, each followed by BatchNorm, with ReLU
  between them; for the global extent, one depthwise convolution as large as the feature map, then BatchNorm.
- GE-theta-plus (eq. 6.4): GE-theta's gather, then a ReLU, then SE's excite MLP (1x1 convolutions, bottleneck
  C / r) before the interpolation. The ReLU between the gather's last BatchNorm and the MLP is the official
  prototxt's (one ``gather/relu`` layer per block, 16 in GE-theta-plus-ResNet-50); GE-theta has none there.

The average pooling pads by e - 1 and leaves the padding out of the mean, so the gathered map has ceil(H / e) rows
at any resolution. In GE-theta the ReLU follows every strided
convolution but the last: after the last one it would make every gathered value >= 0 and so every gate >= 0.5,
leaving the layer unable to suppress a position (GE-theta-plus has it, since its MLP, not the gate, reads the
gathered map). The gate is applied before the interpolation, which gives the same values as eq. 6.2
(nearest-neighbour interpolation commutes with an element-wise gate) on a smaller map.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from visionattn.errors import UsageError
from visionattn.layers.helpers import (
    ConvMlp,
    LayerSpec,
    check_bool,
    check_feature_map,
    check_norm_batch,
    check_positive_int,
    create_act,
    pair,
    reduced_channels,
)
from visionattn.layers.recording import Recordable
from visionattn.registry import register_attn

__all__ = ["GatherExcite"]

_PAPER = "Hu et al. 2018, Gather-Excite"
_EXTENTS = (0, 2, 4, 8, 16, 32)


def _conv_gather(channels: int, extent: int, spatial_size: tuple[int, int] | None,
                 final_relu: bool) -> nn.Sequential:
    """GE-theta's gather; ``final_relu`` ends it with a ReLU after the last BatchNorm (GE-theta-plus)."""
    if extent == 0:
        layers: list[nn.Module] = [nn.Conv2d(channels, channels, spatial_size, groups=channels, bias=False),
                                   nn.BatchNorm2d(channels)]
    else:
        layers = []
        steps = int(math.log2(extent))
        for i in range(steps):
            layers += [nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels, bias=False),
                       nn.BatchNorm2d(channels)]
            if i < steps - 1:
                layers.append(nn.ReLU(inplace=False))
    if final_relu:
        layers.append(nn.ReLU(inplace=False))  # appended last: the parameters keep their indices
    return nn.Sequential(*layers)


@register_attn("ge_theta_plus", paper=_PAPER, family="channel", needs_spatial_size=True,
               defaults={"extra_params": True, "use_mlp": True},
               variants=({"extent": 4},),
               description="GE-theta+: depthwise-conv gather plus SE-style excite MLP (default global extent)")
@register_attn("ge_theta", paper=_PAPER, family="channel", needs_spatial_size=True,
               defaults={"extra_params": True},
               variants=({"extent": 2}, {"extent": 8}),
               description="GE-theta: gather by strided depthwise convs (default: one map-sized depthwise conv)")
@register_attn("ge_theta_minus", paper=_PAPER, family="channel",
               variants=({"extent": 2}, {"extent": 8}),
               description="GE-theta-: parameter-free average-pool gather over extent e, nearest upsample, gate")
class GatherExcite(Recordable, nn.Module):
    """Gather-excite (eq. 6.1-6.4) in its three forms, chosen by ``extra_params`` and ``use_mlp``.

    Args:
        channels: input channels C.
        extent: gather extent e: 0 for global (default), else a power of two.
        extra_params: parameterise the gather with depthwise convolutions (GE-theta).
        use_mlp: add a ReLU and SE's excite MLP after the gather (GE-theta-plus; needs ``extra_params``).
        spatial_size: the input's (H, W); required by GE-theta and GE-theta-plus with the global extent, whose
            depthwise convolution spans the whole map; the input must then have that size.
        rd_ratio, rd_channels, rd_divisor, act_layer: the excite MLP (paper: r = 16, ReLU).
        gate_layer: gate (paper: sigmoid).

    In training mode GE-theta's BatchNorms need more than one value per channel: a batch of one image whose
    gathered map is 1x1 (the global extent, or an input no larger than the extent) gets a UsageError saying so.

    Shape:
        - Input: (B, C, H, W), with (H, W) = ``spatial_size`` where one is required
        - Output: (B, C, H, W)

    Recordable, kind ``"channel"``: the gate before it is resized to the map, (B, C, 1, 1) for the global extent,
    (B, C, ceil(H / e), ceil(W / e)) otherwise.
    """

    record_kind = "channel"

    def __init__(self, channels: int, extent: int = 0, extra_params: bool = False, use_mlp: bool = False,
                 spatial_size: int | tuple[int, int] | None = None, rd_ratio: float = 1 / 16,
                 rd_channels: int | None = None, rd_divisor: int = 1, act_layer: LayerSpec = "relu",
                 gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        if isinstance(extent, bool) or not isinstance(extent, int) or (
            extent != 0 and (extent < 2 or extent & (extent - 1))
        ):
            raise UsageError(f"extent must be 0 (global) or a power of two >= 2, got {extent!r}")
        check_bool("extra_params", extra_params)
        if check_bool("use_mlp", use_mlp) and not extra_params:
            raise UsageError("use_mlp=True (GE-theta-plus) needs extra_params=True")
        self.extent = extent
        self.spatial_size = None if spatial_size is None else pair("spatial_size", spatial_size)
        if extra_params and extent == 0 and self.spatial_size is None:
            raise UsageError("GE-theta with the global extent (extent=0) needs spatial_size=(H, W): its depthwise "
                             "convolution spans the whole feature map")
        self.gather = _conv_gather(channels, extent, self.spatial_size, use_mlp) if extra_params else None
        self.mlp = (ConvMlp(channels, reduced_channels(channels, rd_ratio, rd_channels, rd_divisor), act_layer)
                    if use_mlp else None)
        self.gate = create_act(gate_layer, "gate_layer")

    def gathered(self, x: torch.Tensor) -> torch.Tensor:
        """xi_G(x): (B, C, ceil(H / e), ceil(W / e)), or (B, C, 1, 1) for the global extent."""
        if self.gather is not None:
            return self.gather(x)
        if self.extent == 0:
            return x.mean(dim=(2, 3), keepdim=True)
        e = self.extent
        return F.avg_pool2d(x, 2 * e - 1, stride=e, padding=e - 1, count_include_pad=False)  # eq. 6.1

    def _gathered_size(self, x: torch.Tensor) -> tuple[int, int]:
        if self.extent == 0:
            return (1, 1)
        return (-(-x.shape[-2] // self.extent), -(-x.shape[-1] // self.extent))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.channels, type(self).__name__)
        if self.gather is not None:
            check_norm_batch(self, x, self._gathered_size(x))
        if self.gather is not None and self.extent == 0 and tuple(x.shape[-2:]) != self.spatial_size:
            raise UsageError(f"GatherExcite was built for spatial_size={self.spatial_size} (global depthwise "
                             f"gather), got an input of size {tuple(x.shape[-2:])}")
        z = self.gathered(x)
        if self.mlp is not None:
            z = self.mlp(z)  # eq. 6.4
        a = self.gate(z)
        if self.recorder is not None:
            self.recorder(self, a)
        if a.shape[-2:] != x.shape[-2:]:
            a = F.interpolate(a, size=x.shape[-2:], mode="nearest")  # eq. 6.2
        return x * a  # eq. 6.3
