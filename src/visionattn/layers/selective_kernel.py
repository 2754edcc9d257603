"""Selective kernel (SK) convolution as its three named parts: Split, Fuse, Select.

Li et al. 2019, "Selective Kernel Networks" (section 7 of the reference tutorial). M branches of different
receptive fields (eq. 7.1) are summed and squeezed into a descriptor z (eq. 7.2-7.4), from which a softmax
over the branches picks, channel by channel, how much of each branch to keep (eq. 7.5-7.7).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from visionattn.layers.conv_args import check_groups, same_padding
from visionattn.layers.helpers import (
    LayerSpec,
    check_feature_map,
    check_norm_batch,
    check_positive_int,
    create_act,
    pair,
    reduced_channels,
)
from visionattn.registry import register_attn

__all__ = ["SKSplit", "SKFuse", "SKSelect", "SelectiveKernel"]

_PAPER = "Li et al. 2019, Selective Kernel Networks"


class SKSplit(nn.Module):
    """Split (eq. 7.1): ``U_l = ReLU(BN(W_l * X))`` for l = 1..M, branch l a kxk conv with dilation l.

    The paper's figure draws 3x3 and 5x5 kernels; its code, followed here, keeps 3x3 and raises the
    dilation, so branch l sees a (2l + 1) x (2l + 1) window at the cost of a 3x3 convolution.

    Args:
        channels: input channels C_in.
        out_channels: channels C of every branch.
        stride: stride of every branch.
        groups: groups of every branch convolution (paper: G = 32).
        num_branches: M.
        kernel_size: kernel of every branch (odd).
        dilation: dilation of the first branch; branch l uses ``l * dilation``.
        act_layer: the activation delta.

    Shape:
        - Input: (B, C_in, H, W)
        - Output: (B, M, C, ceil(H / stride), ceil(W / stride))
    """

    def __init__(self, channels: int, out_channels: int, stride: int = 1, groups: int = 32,
                 num_branches: int = 2, kernel_size: int = 3, dilation: int = 1,
                 act_layer: LayerSpec = "relu") -> None:
        super().__init__()
        check_positive_int("num_branches", num_branches)
        check_groups(groups, channels=channels, out_channels=out_channels)
        kernel, base = pair("kernel_size", kernel_size), pair("dilation", dilation)
        self.branches = nn.ModuleList()
        for level in range(1, num_branches + 1):
            dil = (base[0] * level, base[1] * level)
            conv = nn.Conv2d(channels, out_channels, kernel, pair("stride", stride),
                             same_padding(kernel, dil), dil, groups, bias=False)
            self.branches.append(nn.Sequential(conv, nn.BatchNorm2d(out_channels), create_act(act_layer)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([branch(x) for branch in self.branches], dim=1)


class SKFuse(nn.Module):
    """Fuse (eq. 7.2-7.4): ``z = ReLU(BN(W s))`` with ``s = mean_hw(sum_l U_l)``.

    Args:
        channels: channels C of each branch.
        attn_channels: width d of z (the paper's d = max(C / r, L)).
        act_layer: the activation delta.

    Shape:
        - Input: (B, M, C, H, W), the stacked branches
        - Output: (B, d)
    """

    def __init__(self, channels: int, attn_channels: int, act_layer: LayerSpec = "relu") -> None:
        super().__init__()
        self.fc = nn.Linear(channels, attn_channels, bias=False)  # BN follows, so a bias would be redundant
        self.bn = nn.BatchNorm1d(attn_channels)
        self.act = create_act(act_layer)

    def forward(self, branches: torch.Tensor) -> torch.Tensor:
        s = branches.sum(dim=1).mean(dim=(2, 3))  # eq. 7.2, 7.3
        return self.act(self.bn(self.fc(s)))  # eq. 7.4


class SKSelect(nn.Module):
    """Select (eq. 7.5-7.7): ``a_l = softmax_l(W_l z)`` per channel, ``X~ = sum_l a_l * U_l``.

    The M matrices W_l are held as one linear layer with M * C outputs, equivalent to M separate layers.

    Args:
        channels: channels C of each branch.
        attn_channels: width d of z.
        num_branches: M.

    Shape:
        - Input: branches (B, M, C, H, W) and z (B, d)
        - Output: (B, C, H, W)
    """

    def __init__(self, channels: int, attn_channels: int, num_branches: int) -> None:
        super().__init__()
        self.num_branches = num_branches
        self.fc = nn.Linear(attn_channels, num_branches * channels, bias=False)

    def attention(self, z: torch.Tensor) -> torch.Tensor:
        """The normalised attention a of eq. 7.6, shape (B, M, C)."""
        logits = rearrange(self.fc(z), "b (m c) -> b m c", m=self.num_branches)  # eq. 7.5
        return logits.softmax(dim=1)  # eq. 7.6: over the branches, separately for every channel

    def forward(self, branches: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        a = rearrange(self.attention(z), "b m c -> b m c 1 1")
        return (a * branches).sum(dim=1)  # eq. 7.7


@register_attn("sk", paper=_PAPER, family="branch", conv_like=True, min_channels=32,
               description="selective kernel: dilated 3x3 branches mixed per channel by a softmax",
               variants=({"out_channels": 64, "stride": 2}, {"groups": 8, "num_branches": 3}))
class SelectiveKernel(nn.Module):
    """Selective kernel convolution, SKNet's unit: Split (eq. 7.1), Fuse (eq. 7.2-7.4), Select (eq. 7.5-7.7).

    A drop-in for a kxk convolution followed by BN and ReLU (the branches carry their own BN and ReLU, so a
    block should not add another after it). Defaults are the paper's SK[M=2, G=32, r=16, L=32]. With one
    branch the softmax is constant 1 and the layer is a plain conv + BN + ReLU. In training mode the
    BatchNorm of the fuse step sees one value per sample, so a batch of one gets a UsageError saying so.

    Args:
        channels: input channels C_in.
        out_channels: output channels C (default C_in).
        stride: stride of every branch.
        groups: groups G of every branch convolution (paper: 32); must divide C_in and C.
        num_branches: number of branches M (paper: 2).
        rd_ratio: 1 / r, the reduction of the fuse layer (paper: r = 16).
        min_rd: lower bound L on the fuse width (paper: 32), so d = max(C * rd_ratio, L).
        rd_channels: fuse width d; overrides ``rd_ratio`` and ``min_rd``.
        kernel_size: kernel of every branch, odd (paper: 3).
        dilation: dilation of the first branch; branch l uses ``l * dilation``.
        act_layer: the activation delta of eq. 7.1 and 7.4 (paper: ReLU).

    Shape:
        - Input: (B, C_in, H, W)
        - Output: (B, C, ceil(H / stride), ceil(W / stride))
    """

    def __init__(self, channels: int, out_channels: int | None = None, stride: int = 1, groups: int = 32,
                 num_branches: int = 2, rd_ratio: float = 1 / 16, min_rd: int = 32,
                 rd_channels: int | None = None, kernel_size: int = 3, dilation: int = 1,
                 act_layer: LayerSpec = "relu") -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        out_channels = channels if out_channels is None else out_channels
        self.out_channels = check_positive_int("out_channels", out_channels)
        if rd_channels is None:
            attn_channels = max(reduced_channels(self.out_channels, rd_ratio),
                                check_positive_int("min_rd", min_rd))
        else:
            attn_channels = check_positive_int("rd_channels", rd_channels)
        self.split = SKSplit(channels, self.out_channels, stride, groups, num_branches, kernel_size, dilation,
                             act_layer)
        self.fuse = SKFuse(self.out_channels, attn_channels, act_layer)
        self.select = SKSelect(self.out_channels, attn_channels, num_branches)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The per-channel branch weights a of eq. 7.6, shape (B, M, C); they sum to 1 over M."""
        check_feature_map(x, self.channels, type(self).__name__)
        check_norm_batch(self, x)
        return self.select.attention(self.fuse(self.split(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.channels, type(self).__name__)
        check_norm_batch(self, x)
        branches = self.split(x)
        return self.select(branches, self.fuse(branches))
