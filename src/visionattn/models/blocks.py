"""The pieces of a ResNet: stems, the projection shortcut, the basic and bottleneck blocks.

He et al. 2016 (ResNet), Xie et al. 2017 (ResNeXt: grouped 3x3, width ``planes * base_width / 64 * groups``),
He et al. 2019 ("Bag of Tricks", ResNet-D: deep 3x3 stem and average-pool downsampling in the shortcut), and
Zhang et al. 2020 (ResNeSt's ``avd``: the 3x3 runs at stride 1 and a 3x3 average pool downsamples after it).
Every attention layer is placed by an :class:`~visionattn.models.plug.AttnPlug`; the blocks only ask it.
"""

from __future__ import annotations

import torch
from torch import nn

from visionattn.errors import UsageError, check_choice
from visionattn.layers.helpers import check_positive_int
from visionattn.models.plug import AttnPlug, conv2d

__all__ = ["Stem", "BasicBlock", "Bottleneck", "make_shortcut", "downsampled", "BLOCKS"]

Size = tuple[int, int]


def downsampled(size: Size | None, stride: int) -> Size | None:
    """Feature size after a stride-``stride`` layer with "same" padding: ``ceil(H / stride)``."""
    if size is None:
        return None
    return (-(-size[0] // stride), -(-size[1] // stride))


class Stem(nn.Module):
    """The ResNet stem: the input to the first stage.

    - ``"basic"``: 7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max pool (ResNet); output stride 4.
    - ``"deep"``: three 3x3 convs (stride 2, 1, 1) of widths w, w, 2w with BN + ReLU, then the max pool
      (ResNet-C/D, ResNeSt); output stride 4.
    - ``small_input=True``: the same convolutions at stride 1 with a 3x3 kernel and no max pool, for 28x28
      and 32x32 images (CIFAR-style); output stride 1.

    Args:
        in_chans: image channels.
        stem_type: ``"basic"`` or ``"deep"``.
        stem_width: w, the width of the (first) stem conv; the stem gives w (basic) or 2w (deep) channels.
        small_input: use the small-image stem.

    Shape:
        - Input: (B, in_chans, H, W)
        - Output: (B, out_channels, ceil(H / s), ceil(W / s)), s = ``reduction`` (4, or 1 for small input)
    """

    def __init__(self, in_chans: int, stem_type: str = "basic", stem_width: int = 64,
                 small_input: bool = False) -> None:
        super().__init__()
        check_positive_int("in_chans", in_chans)
        check_positive_int("stem_width", stem_width)
        stride = 1 if small_input else 2
        check_choice("stem_type", stem_type, ("basic", "deep"))
        if stem_type == "basic":
            widths, kernels = [stem_width], [3 if small_input else 7]
        else:
            widths, kernels = [stem_width, stem_width, 2 * stem_width], [3, 3, 3]
        layers: list[nn.Module] = []
        for i, (width, k) in enumerate(zip(widths, kernels)):
            layers += [conv2d(in_chans if i == 0 else widths[i - 1], width, k, stride if i == 0 else 1),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        self.pool = nn.Identity() if small_input else nn.MaxPool2d(3, stride=2, padding=1)
        self.in_chans, self.out_channels = in_chans, widths[-1]
        self.reduction = 1 if small_input else 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise UsageError(f"the network expects images (B, {self.in_chans}, H, W), got a tensor of shape "
                             f"{tuple(x.shape)}; set in_chans to match")
        return self.pool(self.convs(x))


def make_shortcut(in_chs: int, out_chs: int, stride: int, avg_down: bool = False) -> nn.Module:
    """Identity when shapes match, else a 1x1 projection + BN (ResNet option B).

    With ``avg_down`` (ResNet-D) a 2x2 average pool does the downsampling and the 1x1 conv runs at stride 1,
    so the shortcut no longer discards three quarters of its input.
    """
    if stride == 1 and in_chs == out_chs:
        return nn.Identity()
    if avg_down:
        pool: nn.Module = (nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
                           if stride > 1 else nn.Identity())
        return nn.Sequential(pool, conv2d(in_chs, out_chs, 1), nn.BatchNorm2d(out_chs))
    return nn.Sequential(conv2d(in_chs, out_chs, 1, stride), nn.BatchNorm2d(out_chs))


class _Residual(nn.Module):
    """``ReLU(attn(branch(x)) + shortcut(x))``: what both blocks share once their branch is built."""

    branch: nn.Module

    def _finish(self, in_chs: int, out_chs: int, stride: int, plug: AttnPlug, feat_size: Size | None,
                avg_down: bool) -> None:
        self.attn = plug.block_attn(out_chs, feat_size)
        self.shortcut = make_shortcut(in_chs, out_chs, stride, avg_down)
        self.act = nn.ReLU(inplace=True)
        self.in_chs, self.out_channels = in_chs, out_chs

    def last_bn(self) -> nn.BatchNorm2d:
        """The BatchNorm that ends the residual branch (zeroed by ``zero_init_last``)."""
        bns = [m for m in self.branch[-1].modules() if isinstance(m, nn.BatchNorm2d)]
        return bns[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.attn(self.branch(x)) + self.shortcut(x))


class BasicBlock(_Residual):
    """Two 3x3 convolutions (ResNet-18/34, and the CIFAR ResNet-20/32/56).

    Args:
        in_chs: input channels.
        planes: width of both convolutions; the block outputs ``planes`` channels (expansion 1).
        stride: stride of the first convolution (and of the shortcut).
        groups, base_width: must stay 1 and 64 (grouped basic blocks are not a ResNet).
        plug: the attention plug (in-block attention, or a conv-like layer in place of the first 3x3).
        feat_size: the block's output (H, W), for layers that need it (GE-theta, global extent).
        avg_down: ResNet-D shortcut.
        avd, stride_in_1x1: accepted for a common signature; must be False (bottleneck options).

    Shape:
        - Input: (B, in_chs, H, W)
        - Output: (B, planes, ceil(H / stride), ceil(W / stride))
    """

    expansion = 1

    def __init__(self, in_chs: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64,
                 plug: AttnPlug | None = None, feat_size: Size | None = None, avg_down: bool = False,
                 avd: bool = False, stride_in_1x1: bool = False) -> None:
        super().__init__()
        if groups != 1 or base_width != 64 or avd or stride_in_1x1:
            raise UsageError(f"BasicBlock supports groups=1, base_width=64, avd=False, stride_in_1x1=False only, "
                             f"got groups={groups}, base_width={base_width}, avd={avd}, "
                             f"stride_in_1x1={stride_in_1x1}; use the bottleneck block")
        plug = plug or AttnPlug()
        self.branch = nn.Sequential(plug.conv_unit(in_chs, planes, 3, stride),
                                    plug.conv_unit(planes, planes, 3, act=False))
        self._finish(in_chs, planes, stride, plug, feat_size, avg_down)


class Bottleneck(_Residual):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand x4 (ResNet-50/101/152, ResNeXt, SKNet, ResNeSt).

    The stride sits on the 3x3 convolution (ResNet v1.5, as torchvision and timm), on the first 1x1 with
    ``stride_in_1x1`` (ResNet v1, the original Caffe models the SE, CBAM and GE papers start from: same
    parameters, ~6% fewer multiply-adds), or, with ``avd``, on a 3x3 average pool after the 3x3 (ResNeSt).

    Args:
        in_chs: input channels.
        planes: the stage's nominal width; the block outputs ``4 * planes`` channels.
        stride: downsampling of the block.
        groups: cardinality of the 3x3 (ResNeXt-50 32x4d: 32).
        base_width: width per group at planes = 64 (ResNeXt-50 32x4d: 4); the 3x3 has
            ``int(planes * base_width / 64) * groups`` channels.
        plug: the attention plug.
        feat_size: the block's output (H, W), for layers that need it.
        avg_down: ResNet-D shortcut.
        avd: ResNeSt's average-pool downsampling after the 3x3.
        stride_in_1x1: put the stride on the first 1x1 convolution (ResNet v1).

    Shape:
        - Input: (B, in_chs, H, W)
        - Output: (B, 4 * planes, ceil(H / stride), ceil(W / stride))
    """

    expansion = 4

    def __init__(self, in_chs: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64,
                 plug: AttnPlug | None = None, feat_size: Size | None = None, avg_down: bool = False,
                 avd: bool = False, stride_in_1x1: bool = False) -> None:
        super().__init__()
        check_positive_int("groups", groups)
        if avd and stride_in_1x1:
            raise UsageError("avd and stride_in_1x1 both place the block's stride; choose one")
        check_positive_int("base_width", base_width)
        plug = plug or AttnPlug()
        width = int(planes * base_width / 64) * groups
        if width == 0:
            raise UsageError(f"base_width too small: planes={planes} * base_width={base_width} / 64 gives no "
                             f"channels per group")
        out_chs = planes * self.expansion
        pool_after = avd and stride > 1
        mid_stride = 1 if pool_after or stride_in_1x1 else stride
        self.branch = nn.Sequential(
            plug.conv_unit(in_chs, width, 1, stride if stride_in_1x1 else 1),
            plug.conv_unit(width, width, 3, mid_stride, groups),
            nn.AvgPool2d(3, stride, padding=1) if pool_after else nn.Identity(),
            plug.conv_unit(width, out_chs, 1, act=False),
        )
        self._finish(in_chs, out_chs, stride, plug, feat_size, avg_down)


BLOCKS: dict[str, type[_Residual]] = {"basic": BasicBlock, "bottleneck": Bottleneck}
