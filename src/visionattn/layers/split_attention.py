"""Split attention (SplAt): SplAt-0 and the full SplAt with cardinal groups, the unit of ResNeSt.

Zhang et al. 2020, "ResNeSt: Split-Attention Networks" (section 8 of the reference tutorial). The radix r
branches come from one grouped convolution, each branch seeing C_in / r input channels and giving C channels,
with BN and ReLU (eq. 8.1); the rest is SK's fuse and select (eq. 7.2-7.7) with the official code's choices:
the MLP is FC + BN + ReLU + FC with biases, a sigmoid replaces the softmax when r = 1, and with K cardinal
groups every convolution has K times the groups, so each group runs its own SplAt-0 and the softmax runs
within each group.
"""

from __future__ import annotations

import torch
from torch import nn

from visionattn.errors import UsageError
from visionattn.layers.conv_args import check_groups, same_padding
from visionattn.layers.helpers import (
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

__all__ = ["SplitAttention", "SplitAttention0", "split_attention_width"]

_PAPER = "Zhang et al. 2020, ResNeSt"


def split_attention_width(channels: int, radix: int, groups: int, rd_ratio: float = 0.25, min_rd: int = 32,
                          rd_channels: int | None = None) -> int:
    """Width of the attention MLP: ``max(C_in * radix * rd_ratio, min_rd)`` (ResNeSt: ``max(C_in*r/4, 32)``).

    Rounded up to a multiple of ``groups`` so the grouped MLP splits evenly; ``rd_channels`` wins when given.
    """
    if rd_channels is None:
        width = max(reduced_channels(channels * radix, rd_ratio), check_positive_int("min_rd", min_rd))
        return -(-width // groups) * groups
    return check_groups(groups, rd_channels=check_positive_int("rd_channels", rd_channels))


@register_attn("splat", paper=_PAPER, family="branch", conv_like=True, own_norm_act=True,
               description="split attention (ResNeSt): radix branches, softmax within each cardinal group",
               variants=({"out_channels": 64, "stride": 2}, {"groups": 2, "radix": 4, "dilation": 2}))
class SplitAttention(Recordable, nn.Module):
    """Split-attention convolution (SplAt, eq. 8.1 then the fuse/select of eq. 7.2-7.7, per cardinal group).

    With cardinality K (``groups``) and radix R the input's channels are read as R x K blocks (radix-major,
    as in the official code); block (i, k) feeds branch i of cardinal group k. For each group k separately:
    ``U_i = ReLU(BN(W_i * X_(i,k)))`` (eq. 8.1), ``s = mean_hw(sum_i U_i)``, ``z = ReLU(BN(W1 s + b1))``,
    ``a = softmax_i(W2 z + b2)`` per channel (sigmoid if R = 1), ``out = sum_i a_i * U_i``. The groups'
    outputs are concatenated along the channels. Like SK it carries its own BN and ReLU, so a block adds
    none after it. In training mode the BatchNorm of the attention MLP sees one pooled value per sample, so a
    batch of one gets a UsageError saying so.

    Args:
        channels: input channels C_in; must be divisible by ``groups * radix``.
        out_channels: output channels C (default C_in); must be divisible by ``groups``.
        kernel_size: kernel of the branch convolution (odd; padding keeps ``ceil(H / stride)``).
        stride: stride of the branch convolution.
        dilation: dilation of the branch convolution.
        groups: cardinality K (ResNeSt-50: 1).
        radix: number of branches R (ResNeSt: 2; 1 gives a sigmoid gate, SE-like).
        rd_ratio: attention width ratio (ResNeSt: 1/4 of C_in * R).
        min_rd: lower bound on the attention width (ResNeSt: 32).
        rd_channels: attention width; overrides ``rd_ratio`` and ``min_rd`` (must be divisible by ``groups``).
        bias: bias on the branch convolution (ResNeSt: none, BN follows).
        act_layer: activation after each BN (ResNeSt: ReLU).

    Shape:
        - Input: (B, C_in, H, W)
        - Output: (B, C, ceil(H / stride), ceil(W / stride))

    Recordable, kind ``"branch"``: the weights a, (B, R, C, 1, 1), with the output channels C in the output's
    order (cardinal group-major); a sigmoid gate, (B, 1, C, 1, 1), when R = 1.
    """

    record_kind = "branch"

    def __init__(self, channels: int, out_channels: int | None = None, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, groups: int = 1, radix: int = 2, rd_ratio: float = 0.25, min_rd: int = 32,
                 rd_channels: int | None = None, bias: bool = False, act_layer: LayerSpec = "relu") -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        out_channels = channels if out_channels is None else out_channels
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.radix = check_positive_int("radix", radix)
        self.groups = check_groups(groups, out_channels=self.out_channels)
        if channels % (groups * radix):
            raise UsageError(f"channels must be divisible by groups * radix = {groups} * {radix}, got "
                             f"channels={channels}")
        attn_channels = split_attention_width(channels, radix, groups, rd_ratio, min_rd, rd_channels)
        kernel, dil = pair("kernel_size", kernel_size), pair("dilation", dilation)
        self.conv = nn.Conv2d(channels, self.out_channels * radix, kernel, pair("stride", stride),
                              same_padding(kernel, dil), dil, groups=groups * radix, bias=check_bool("bias", bias))
        self.bn0 = nn.BatchNorm2d(self.out_channels * radix)
        self.act0 = create_act(act_layer, inplace=True)  # both on a BatchNorm's fresh output, as timm's
        self.fc1 = nn.Conv2d(self.out_channels, attn_channels, 1, groups=groups)
        self.bn1 = nn.BatchNorm2d(attn_channels)
        self.act1 = create_act(act_layer, inplace=True)
        self.fc2 = nn.Conv2d(attn_channels, self.out_channels * radix, 1, groups=groups)

    def branches(self, x: torch.Tensor) -> torch.Tensor:
        """The R branches U_i of eq. 8.1, shape (B, R, C, H', W')."""
        u = self.act0(self.bn0(self.conv(x)))
        b, _, h, w = u.shape
        return u.view(b, self.radix, self.out_channels, h, w)  # (b, (r c), h, w) -> (b, r, c, h, w): a view

    def _attention(self, u: torch.Tensor) -> torch.Tensor:
        s = u.sum(dim=1).mean(dim=(2, 3), keepdim=True)  # eq. 7.2-7.3
        logits = self.fc2(self.act1(self.bn1(self.fc1(s))))  # eq. 7.4-7.5, grouped: each cardinal group alone
        # fc2's outputs are ordered (group k, radix i, channel c); the output channels are ordered (k, c):
        # (b, (k r c), 1, 1) -> (b, k, r, c) -> (b, r, k, c) -> (b, r, (k c)); a view when k = 1
        b, c = logits.shape[0], self.out_channels // self.groups
        logits = logits.view(b, self.groups, self.radix, c).transpose(1, 2).reshape(b, self.radix, self.out_channels)
        return logits.softmax(dim=1) if self.radix > 1 else logits.sigmoid()  # eq. 7.6, within each group

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The branch weights a, shape (B, R, C); for R > 1 they sum to 1 over R."""
        check_feature_map(x, self.channels, type(self).__name__)
        check_norm_batch(self, x)
        return self._attention(self.branches(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.channels, type(self).__name__)
        check_norm_batch(self, x)
        u = self.branches(x)
        a = self._attention(u)[..., None, None]  # (b, r, c) -> (b, r, c, 1, 1)
        if self.recorder is not None:
            self.recorder(self, a)
        return (a * u).sum(dim=1)  # eq. 7.7


@register_attn("splat0", paper=_PAPER, family="branch", conv_like=True, own_norm_act=True,
               variants=({"radix": 1},),
               description="SplAt-0: split attention without cardinal groups (radix branches, one softmax)")
class SplitAttention0(SplitAttention):
    """SplAt-0 (section 8): :class:`SplitAttention` with one cardinal group; softmax over r branches.

    Sigmoid instead of softmax when r = 1. Takes the same arguments as :class:`SplitAttention`; ``groups`` is
    accepted for the common convolution signature but must be 1.

    Shape:
        - Input: (B, C_in, H, W)
        - Output: (B, C, ceil(H / stride), ceil(W / stride))
    """

    def __init__(self, channels: int, out_channels: int | None = None, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, groups: int = 1, **kwargs) -> None:
        if groups != 1:
            raise UsageError(f"groups (cardinality) of SplAt-0 must be 1, got {groups!r}; use 'splat' for "
                             "cardinal groups")
        super().__init__(channels, out_channels, kernel_size, stride, dilation, 1, **kwargs)
