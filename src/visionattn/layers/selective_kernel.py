"""Selective kernel (SK) convolution: Split into paths, then the attention that Fuses and Selects.

Li et al. 2019, "Selective Kernel Networks" (section 7 of the reference tutorial). M paths of different
receptive fields (eq. 7.1) are summed and squeezed into a descriptor z (eq. 7.2-7.4), from which a softmax
over the paths picks, channel by channel, how much of each path to keep (eq. 7.5-7.7).

The modules carry the ecosystem's names (timm's ``SelectiveKernel``): ``paths.{l}.conv`` / ``paths.{l}.bn``
for the Split, ``attn.fc_reduce`` / ``attn.bn`` / ``attn.fc_select`` for the Fuse and Select, the two fully
connected layers held as 1x1 convolutions (the same parameters), so SK checkpoints load by name.
"""

from __future__ import annotations

import torch
from torch import nn

from visionattn.errors import UsageError
from visionattn.layers.conv_args import check_groups, same_padding
from visionattn.layers.helpers import (
    ConvNormAct,
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

__all__ = ["SKAttention", "SelectiveKernel"]

_PAPER = "Li et al. 2019, Selective Kernel Networks"


class SKAttention(nn.Module):
    """Fuse (eq. 7.2-7.4) and Select (eq. 7.5-7.6): the per-channel path weights a from the stacked paths.

    ``s = mean_hw(sum_l U_l)``, ``z = ReLU(BN(W s))`` (``fc_reduce``, ``bn``), ``a_l = softmax_l(W_l z)``
    per channel (``fc_select``: the M matrices W_l held as one layer with M * C outputs, ordered (l, c)).
    :meth:`select` starts from the summed paths ``U = sum_l U_l`` instead, so that a caller holding the paths
    separately needs no stacked copy of them.

    Args:
        channels: channels C of each path.
        attn_channels: width d of z (the paper's d = max(C / r, L)).
        num_paths: M.
        act_layer: the activation delta.

    Shape:
        - Input: (B, M, C, H, W), the stacked paths
        - Output: (B, M, C, 1, 1), the weights a; they sum to 1 over M
    """

    def __init__(self, channels: int, attn_channels: int, num_paths: int, act_layer: LayerSpec = "relu") -> None:
        super().__init__()
        self.num_paths = num_paths
        self.fc_reduce = nn.Conv2d(channels, attn_channels, 1, bias=False)  # BN follows: a bias is redundant
        self.bn = nn.BatchNorm2d(attn_channels)
        self.act = create_act(act_layer, inplace=True)
        self.fc_select = nn.Conv2d(attn_channels, channels * num_paths, 1, bias=False)

    def forward(self, paths: torch.Tensor) -> torch.Tensor:
        return self.select(paths.sum(dim=1))  # eq. 7.2

    def select(self, fused: torch.Tensor) -> torch.Tensor:
        """The weights a (B, M, C, 1, 1) from the fused map ``U = sum_l U_l`` (B, C, H, W) of eq. 7.2."""
        s = fused.mean(dim=(2, 3), keepdim=True)  # eq. 7.3
        z = self.act(self.bn(self.fc_reduce(s)))  # eq. 7.4
        logits = self.fc_select(z)  # eq. 7.5, (B, M * C, 1, 1)
        b, c = logits.shape[0], logits.shape[1] // self.num_paths
        return logits.view(b, self.num_paths, c, 1, 1).softmax(dim=1)  # eq. 7.6: over the paths, per channel


@register_attn("sk", paper=_PAPER, family="branch", conv_like=True, min_channels=32, own_norm_act=True,
               unit_layout=True,
               description="selective kernel: dilated 3x3 paths mixed per channel by a softmax",
               variants=({"out_channels": 64, "stride": 2}, {"groups": 8, "num_branches": 3},
                         {"groups": 1, "split_input": True}))
class SelectiveKernel(Recordable, nn.Module):
    """Selective kernel convolution, SKNet's unit: Split (eq. 7.1), Fuse (eq. 7.2-7.4), Select (eq. 7.5-7.7).

    ``U_l = ReLU(BN(W_l * X))`` for l = 1..M, path l a kxk convolution with dilation l (the paper's figure
    draws 3x3 and 5x5 kernels; its code, followed here, keeps 3x3 and raises the dilation, so path l sees a
    (2l + 1) x (2l + 1) window at the cost of a 3x3); then ``out = sum_l a_l * U_l`` with the weights of
    :class:`SKAttention`.

    A drop-in for a kxk convolution followed by BN and ReLU (the paths carry their own BN and ReLU, so a
    block should not add another after it). Defaults are the paper's SK[M=2, G=32, r=16, L=32]. With one
    path the softmax is constant 1 and the layer is a plain conv + BN + ReLU. In training mode the
    BatchNorm of the fuse step sees one value per sample, so a batch of one gets a UsageError saying so.

    Args:
        channels: input channels C_in.
        out_channels: output channels C (default C_in).
        stride: stride of every path.
        groups: groups G of every path convolution (paper: 32); must divide the path's input and C.
        num_branches: number of paths (branches) M (paper: 2).
        rd_ratio: 1 / r, the reduction of the fuse layer (paper: r = 16).
        min_rd: lower bound L on the fuse width (paper: 32), so d = max(C * rd_ratio, L).
        rd_channels: fuse width d; overrides ``rd_ratio`` and ``min_rd``.
        kernel_size: kernel of every path, odd (paper: 3).
        dilation: dilation of the first path; path l uses ``l * dilation``.
        split_input: path l sees only the l-th of M equal slices of the input channels (timm's SK-ResNet-18/34;
            not in the paper, which feeds every path the whole input).
        act_layer: the activation delta of eq. 7.1 and 7.4 (paper: ReLU).

    Shape:
        - Input: (B, C_in, H, W)
        - Output: (B, C, ceil(H / stride), ceil(W / stride))

    Recordable, kind ``"branch"``: the weights a, (B, M, C, 1, 1), path l's weight for channel c at [:, l, c].
    """

    record_kind = "branch"

    def __init__(self, channels: int, out_channels: int | None = None, stride: int = 1, groups: int = 32,
                 num_branches: int = 2, rd_ratio: float = 1 / 16, min_rd: int = 32,
                 rd_channels: int | None = None, kernel_size: int = 3, dilation: int = 1,
                 split_input: bool = False, act_layer: LayerSpec = "relu") -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        out_channels = channels if out_channels is None else out_channels
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.num_paths = check_positive_int("num_branches", num_branches)
        self.split_input = check_bool("split_input", split_input)
        if split_input and channels % self.num_paths:
            raise UsageError(f"split_input needs channels divisible by num_branches = {self.num_paths}, got "
                             f"channels={channels}")
        path_in = channels // self.num_paths if split_input else channels
        check_groups(groups, channels=path_in, out_channels=self.out_channels)
        if rd_channels is None:
            attn_channels = max(reduced_channels(self.out_channels, rd_ratio), check_positive_int("min_rd", min_rd))
        else:
            attn_channels = check_positive_int("rd_channels", rd_channels)
        kernel, base = pair("kernel_size", kernel_size), pair("dilation", dilation)
        self.paths = nn.ModuleList()
        for level in range(1, self.num_paths + 1):
            dil = (base[0] * level, base[1] * level)
            conv = nn.Conv2d(path_in, self.out_channels, kernel, pair("stride", stride), same_padding(kernel, dil),
                             dil, groups, bias=False)
            self.paths.append(ConvNormAct(conv, self.out_channels, act_layer))
        self.attn = SKAttention(self.out_channels, attn_channels, self.num_paths, act_layer)

    def _split(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.split_input:
            chunks = torch.split(x, self.channels // self.num_paths, dim=1)
            return [path(chunk) for path, chunk in zip(self.paths, chunks)]
        return [path(x) for path in self.paths]

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """The M paths U_l of eq. 7.1, stacked: (B, M, C, H', W')."""
        return torch.stack(self._split(x), dim=1)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The per-channel path weights a of eq. 7.6, shape (B, M, C); they sum to 1 over M."""
        check_feature_map(x, self.channels, type(self).__name__)
        check_norm_batch(self, x)
        return self.attn(self.split(x)).flatten(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(x, self.channels, type(self).__name__)
        check_norm_batch(self, x)
        # the paths stay separate: no stacked copy of M maps (timm stacks them); the sums run in the same order,
        # so with M = 2 the output and gradients are timm's to the bit, in fp32 and bf16
        paths = self._split(x)
        fused = paths[0]
        for u in paths[1:]:
            fused = fused + u  # eq. 7.2
        a = self.attn.select(fused)
        if self.recorder is not None:
            self.recorder(self, a)
        out = a[:, 0] * paths[0]
        for level in range(1, self.num_paths):
            out += a[:, level] * paths[level]  # eq. 7.7; in place on a fresh product that nothing saved
        return out
