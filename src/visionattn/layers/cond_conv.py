"""Conditionally parameterized convolution (CondConv) and the expert-mixing convolution it shares with DY-CNN.

Yang et al. 2019, "CondConv: Conditionally Parameterized Convolutions for Efficient Inference" (section 9 of
the reference tutorial). A router turns the input into one weight per expert (eq. 9.1); the experts' kernels
mixed by those weights (eq. 9.2) convolve the input (eq. 9.3). Every sample has its own kernel, so the batch
is folded into the channels and convolved once with ``groups * B`` groups. :class:`ExpertConv2d` holds that
shared part; the routers are in :class:`CondConv2d` (sigmoid) and
:class:`visionattn.layers.dynamic_conv.DynamicConv2d` (softmax with temperature).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from visionattn.layers.conv_args import check_groups, check_padding, same_padding
from visionattn.layers.helpers import check_bool, check_feature_map, check_positive_int, pair
from visionattn.layers.recording import Recordable
from visionattn.registry import register_attn

__all__ = ["ExpertConv2d", "CondConv2d", "per_sample_conv2d"]


def per_sample_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int],
                      groups: int) -> torch.Tensor:
    """Convolve sample b of ``x`` with its own kernel ``weight[b]`` (eq. 9.3), as one grouped convolution.

    Args:
        x: input (B, C, H, W).
        weight: per-sample kernels (B, O, C / groups, kh, kw).
        bias: per-sample biases (B, O), or None.
        stride, padding, dilation, groups: as for ``F.conv2d``.

    Shape:
        - Output: (B, O, H', W'); an empty batch (B = 0) gives an empty output of that shape
    """
    b = x.shape[0]
    if b == 0:  # groups * B would be 0 groups; any kernel of the right shape gives the empty output's size
        return F.conv2d(x, weight.new_zeros(weight.shape[1:]), None, stride, padding, dilation, groups)
    out = F.conv2d(rearrange(x, "b c h w -> 1 (b c) h w"), rearrange(weight, "b o i kh kw -> (b o) i kh kw"),
                   None if bias is None else bias.flatten(), stride, padding, dilation, groups * b)
    return rearrange(out, "1 (b o) h w -> b o h w", b=b)


class ExpertConv2d(Recordable, nn.Module):
    """n expert convolutions mixed per sample (eq. 9.2) and applied over the batch at once (eq. 9.3).

    Subclasses define the router, :meth:`route`, from the input to (B, n) weights (eq. 9.1 or 10.1).

    Args:
        channels: input channels C.
        out_channels: output channels O (default C).
        kernel_size: kernel size k of every expert.
        stride, dilation, groups: as for ``nn.Conv2d``; ``groups`` must divide C and O.
        padding: as for ``nn.Conv2d``; None pads to keep ``ceil(H / stride)`` (needs an odd kernel).
        bias: each expert has a bias, mixed like the weights.
        num_experts: n.

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, O, H', W'), ``H' = ceil(H / stride)`` when ``padding`` is None

    Recordable, kind ``"branch"``: the router's expert weights a, (B, n).
    """

    record_kind = "branch"

    def __init__(self, channels: int, out_channels: int | None, kernel_size: int, stride: int,
                 padding: int | None, dilation: int, groups: int, bias: bool, num_experts: int) -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        out_channels = channels if out_channels is None else out_channels
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.num_experts = check_positive_int("num_experts", num_experts)
        self.groups = check_groups(groups, channels=channels, out_channels=self.out_channels)
        self.kernel_size, self.dilation = pair("kernel_size", kernel_size), pair("dilation", dilation)
        self.stride = pair("stride", stride)
        self.padding = (same_padding(self.kernel_size, self.dilation) if padding is None
                        else check_padding(padding))
        self.weight = nn.Parameter(torch.empty(num_experts, self.out_channels, channels // groups,
                                               *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(num_experts, self.out_channels)) if check_bool("bias", bias) else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each expert starts as ``nn.Conv2d`` would (Kaiming-uniform weight, uniform bias).

        A network re-initialises every expert by its rule for convolutions (the ResNets: He, fan-out, per
        expert, as CondConv's official code initialises each expert like the convolution it replaces).
        """
        for expert in self.weight:
            nn.init.kaiming_uniform_(expert, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight[0, 0].numel())
            nn.init.uniform_(self.bias, -bound, bound)

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """The router: (B, C, H, W) -> (B, n) expert weights."""
        raise NotImplementedError

    def routing_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The expert weights a of the router, shape (B, n)."""
        check_feature_map(x, self.channels, type(self).__name__)
        return self.route(x)

    def mix_experts(self, routing: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Eq. 9.2: ``W = sum_l a_l W_l`` (biases alike) per sample; shapes (B, O, C/g, k, k), (B, O)."""
        weight = torch.einsum("bn,noikl->boikl", routing, self.weight)
        bias = None if self.bias is None else routing @ self.bias
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.channels, type(self).__name__)
        routing = self.route(x)
        if self.recorder is not None:
            self.recorder(self, routing)
        weight, bias = self.mix_experts(routing)
        return per_sample_conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}, num_experts={self.num_experts}")


@register_attn("condconv", paper="Yang et al. 2019, CondConv", family="branch", conv_like=True, every_conv=True,
               description="CondConv: per-sample kernel, a sigmoid-routed mixture of n expert kernels",
               variants=({"out_channels": 64, "stride": 2, "groups": 4, "bias": True},))
class CondConv2d(ExpertConv2d):
    """CondConv: ``a = sigmoid(W_r mean_hw(X) + b_r)`` (9.1), ``W = sum_l a_l W_l`` (9.2), ``W * X`` (9.3).

    The routing weights are independent sigmoids, so they need not sum to 1 (contrast dynamic convolution).

    Args:
        channels: input channels C.
        out_channels: output channels O (default C).
        kernel_size: kernel size of every expert.
        stride: as for ``nn.Conv2d``.
        padding: as for ``nn.Conv2d``; None pads to keep ``ceil(H / stride)`` (needs an odd kernel).
        dilation: as for ``nn.Conv2d``.
        groups: as for ``nn.Conv2d``; must divide C and O.
        bias: each expert carries a bias, mixed like the weights (eq. 9.2).
        num_experts: number of experts n (paper: 8 in most experiments).

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, O, H', W'), ``H' = ceil(H / stride)`` when ``padding`` is None
    """

    def __init__(self, channels: int, out_channels: int | None = None, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None, dilation: int = 1, groups: int = 1, bias: bool = False,
                 num_experts: int = 8) -> None:
        super().__init__(channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         num_experts)
        self.router = nn.Linear(channels, num_experts)

    def route(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.router(x.mean(dim=(2, 3))))  # eq. 9.1
