"""Efficient channel attention (ECA).

Wang et al. 2020, "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks" (section 3 of the
reference tutorial): SE's squeeze, then a 1-D convolution of size k across the pooled channels (eq. 3.4) with k
chosen from the channel count by eq. 3.5, then a sigmoid gate.

Which k a network uses: by default every ECA layer picks k from its own channel count by eq. 3.5, which in a
bottleneck ResNet (stage outputs 256, 512, 1024, 2048 channels) gives k = [5, 5, 5, 7] per stage. The official
ImageNet checkpoints were trained with an explicit per-stage k instead: [3, 5, 5, 7] for ECA-ResNet-50 and
[3, 3, 5, 7] for ECA-ResNet-101 and -152 (their file names: ``eca_resnet50_k3557``, ``eca_resnet101_k3357``,
``eca_resnet152_k3357``); the model zoo registers both layouts. The 1-D kernel keeps PyTorch's default
initialisation in a network too: the official code (and timm) initialise only 2-D convolutions.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from visionattn.errors import check_finite, check_positive
from visionattn.layers.helpers import LayerSpec, check_odd, check_positive_int
from visionattn.layers.squeeze_excite import ChannelGate
from visionattn.registry import register_attn

__all__ = ["EfficientChannelAttention", "eca_kernel_size"]


def eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
    """Eq. 3.5: ``k = |log2(C) / gamma + beta / gamma|_odd``.

    ``|t|_odd`` is taken as the paper's code does: truncate t to an integer and, if that is even, add one. With
    gamma=2, beta=1 this gives k=3 for 64 channels, 5 for 256 and 512, 7 for 2048.
    """
    check_positive_int("channels", channels)
    check_positive("gamma", gamma)
    check_finite("beta", beta)
    t = int(abs((math.log2(channels) + beta) / gamma))
    return max(t if t % 2 else t + 1, 1)


@register_attn("eca", paper="Wang et al. 2020, ECA-Net", family="channel",
               description="efficient channel attention: 1-D conv of adaptive size k across pooled channels")
class EfficientChannelAttention(ChannelGate):
    """ECA (eq. 3.4-3.5): ``x * sigmoid(conv1d_k(mean_hw(x)))`` across the channel axis, no bias.

    Args:
        channels: input channels C.
        kernel_size: fixed odd k (e.g. the official checkpoints' per-stage k); ``None`` (default) picks it
            adaptively by eq. 3.5.
        gamma, beta: the constants of eq. 3.5 (paper: 2 and 1).
        gate_layer: gate (paper: sigmoid).

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C, H, W)
    """

    def __init__(self, channels: int, kernel_size: int | None = None, gamma: float = 2, beta: float = 1,
                 gate_layer: LayerSpec = "sigmoid") -> None:
        super().__init__(channels, gate_layer)
        if kernel_size is None:
            kernel_size = eca_kernel_size(channels, gamma, beta)
        check_odd("kernel_size", kernel_size, "so the 1-D convolution keeps C outputs")
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def excite(self, z: torch.Tensor) -> torch.Tensor:
        b, c = z.shape[:2]
        # the pooled channels become a length-C sequence so one shared kernel slides across them (eq. 3.4)
        return self.conv(z.view(b, 1, c)).view(b, c, 1, 1)
