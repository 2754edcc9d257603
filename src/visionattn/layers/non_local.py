"""The non-local block: Wang et al. 2018, "Non-local Neural Networks", embedded Gaussian (eq. 1, 3, 6; fig. 2).

    y_i = 1 / C(x) sum_j f(x_i, x_j) g(x_j),   f = exp(theta(x_i)^T phi(x_j)),   C(x) = sum_j f   (eq. 1, 3)
    z_i = BN(W_z y_i) + x_i                                                                      (eq. 6)

i.e. y = softmax(theta(x)^T phi(x)) g(x) over the H * W positions (the paper's observation that the embedded
Gaussian is self-attention): one head, queries theta, keys phi, values g, all 1x1 convolutions to C / 2
channels; W_z (``w_z``) a 1x1 convolution back to C, followed by BatchNorm whose scale starts at 0, so that the
block starts as the identity and can be inserted into a pre-trained network (sec. 3.3). The attention step is
:class:`~visionattn.layers.attention_core.Attention` (fused kernel, recorder).

What follows the official code (facebookresearch/video-nonlocal-net, ``lib/models/nonlocal_helper.py`` and its
config defaults) where the paper is silent or differs:

- the logits are scaled by (C / 2)^-1/2 (``NONLOCAL.USE_SCALE = True``), the attention core's default scale for
  d = C / 2; eq. 3 has no scale (``use_scale=False``);
- subsampling is on by default (``USE_MAXPOOL = True``): a 2x2 max pool of stride 2 is applied to x before phi
  and g (the paper: "after phi and g"; pooling first is the official order, four times cheaper), so the keys
  and values come from a quarter of the positions. Odd sides are pooled with ``ceil_mode`` (the official pooling
  floors; the same for the even maps of its ResNets), so every position is seen and a 1x1 map stays 1x1;
- every 1x1 convolution has a bias; weights are initialised N(0, 0.01^2) (``CONV_INIT_STD``), biases 0, the
  BatchNorm scale 0 (``BN_INIT_GAMMA``) and its shift 0. Inside a ResNet the network's one rule re-initialises
  the convolutions (He, fan-out; :meth:`visionattn.models.resnet.ResNet.init_weights`); with the scale at 0 the
  block is the identity either way.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from visionattn.errors import UsageError
from visionattn.layers.attention_core import Attention
from visionattn.layers.helpers import check_bool, check_feature_map, check_norm_batch, check_positive_int
from visionattn.registry import register_attn

__all__ = ["NonLocal2d", "CONV_INIT_STD"]

CONV_INIT_STD = 0.01  # the official code's NONLOCAL.CONV_INIT_STD


@register_attn("non_local", paper="Wang et al. 2018, Non-local Neural Networks (eq. 1, 3, 6; fig. 2)",
               family="self-attention", placement="after",
               description="Non-local block (embedded Gaussian): softmax(theta^T phi) g at C/2, W_z + zero-init BN, "
                           "residual; 2x2 max-pool subsampling of phi and g",
               variants=({"sub_sample": False, "zero_init": False},
                         {"inner_channels": 8, "use_scale": False, "impl": "explicit", "zero_init": False}))
class NonLocal2d(nn.Module):
    """Embedded-Gaussian non-local block: every position attends to every (subsampled) position, plus x.

    Args:
        channels: C.
        inner_channels: channels of theta, phi and g (default C / 2, the paper's bottleneck).
        sub_sample: 2x2 max pooling of the input of phi and g (official default: on).
        use_scale: scale the logits by inner_channels^-1/2 as the official code does (False: eq. 3 as printed).
        zero_init: start the BatchNorm's scale at 0, so the block starts as the identity (paper sec. 3.3).
        impl: attention path, ``"auto"`` / ``"fused"`` / ``"explicit"`` (see
            :func:`visionattn.layers.attention_core.attention`).

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C, H, W)
    """

    def __init__(self, channels: int, inner_channels: int | None = None, sub_sample: bool = True,
                 use_scale: bool = True, zero_init: bool = True, impl: str = "auto") -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        if inner_channels is None:
            if channels < 2:
                raise UsageError(f"channels: the default inner_channels = channels // 2 needs channels >= 2, got "
                                 f"{channels}; give inner_channels")
            inner_channels = channels // 2
        self.inner_channels = check_positive_int("inner_channels", inner_channels)
        self.sub_sample = check_bool("sub_sample", sub_sample)
        self.zero_init = check_bool("zero_init", zero_init)
        check_bool("use_scale", use_scale)
        self.theta = nn.Conv2d(channels, inner_channels, 1)
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True) if sub_sample else nn.Identity()
        self.phi = nn.Conv2d(channels, inner_channels, 1)
        self.g = nn.Conv2d(channels, inner_channels, 1)
        self.attend = Attention(scale=None if use_scale else 1.0, impl=impl)  # None: inner_channels^-1/2
        self.w_z = nn.Conv2d(inner_channels, channels, 1)
        self.bn = nn.BatchNorm2d(channels)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official initialisation: 1x1 weights N(0, 0.01^2), biases 0, BN scale 0 (or 1 without
        ``zero_init``) and shift 0."""
        for conv in (self.theta, self.phi, self.g, self.w_z):
            nn.init.normal_(conv.weight, std=CONV_INIT_STD)
            nn.init.zeros_(conv.bias)
        nn.init.constant_(self.bn.weight, 0.0 if self.zero_init else 1.0)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.channels, type(self).__name__)
        check_norm_batch(self, x, pooled=tuple(x.shape[-2:]))
        h, w = x.shape[-2:]
        pooled = self.pool(x)
        q = rearrange(self.theta(x), "b c y x -> b 1 (y x) c")
        k, v = (rearrange(conv(pooled), "b c y x -> b 1 (y x) c") for conv in (self.phi, self.g))
        y = rearrange(self.attend(q, k, v), "b 1 (y x) c -> b c y x", y=h, x=w)
        return self.bn(self.w_z(y)) + x

    def extra_repr(self) -> str:
        return f"{self.channels}, inner_channels={self.inner_channels}, sub_sample={self.sub_sample}"
