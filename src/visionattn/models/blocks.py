"""The pieces of a ResNet: the stem, the projection shortcut, the basic and bottleneck blocks.

He et al. 2016 (ResNet), Xie et al. 2017 (ResNeXt: grouped 3x3, width ``planes * base_width / 64 * groups``),
He et al. 2019 ("Bag of Tricks", ResNet-D: deep 3x3 stem and average-pool downsampling in the shortcut), and
Zhang et al. 2020 (ResNeSt's ``avd``: the 3x3 runs at stride 1 and a 3x3 average pool downsamples after it).
Every attention layer is placed by an :class:`~visionattn.models.plug.AttnPlug`; the blocks only ask it.

Module names are the ecosystem's, so that torchvision's and timm's checkpoints load by name (``strict=True``):
a block holds ``conv1``, ``bn1``, ``act1``, ``conv2``, ... in order, the block attention as ``se`` (timm's name
for every attention slot of a ResNet block, whatever the layer) and the projection shortcut as ``downsample``
(``downsample.0`` conv and ``downsample.1`` BN, or ``downsample.0`` pool, ``.1`` conv, ``.2`` BN for ResNet-D).
A layer with its own BN and ReLU in place of a convolution (SplAt) leaves ``bn2`` and ``act2`` as identities,
as timm's ResNeSt does. The SK networks follow timm's SKNet layout instead (``layout="units"``): each
convolution is a unit with ``conv``, ``bn``, ``act`` children (``conv1.conv``, ``conv1.bn``), and SK is
``conv2`` itself. The last convolution's activation comes after the addition, under the last index (``act3`` of
a bottleneck, ``act2`` of a basic block). A layer placed after the block (the non-local block) is ``attn``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from visionattn.errors import UsageError, check_choice
from visionattn.layers.helpers import ConvNormAct, LayerSpec, check_positive_int, create_act, get_act_layer
from visionattn.models.plug import AttnPlug, conv2d

__all__ = ["BasicBlock", "Bottleneck", "GlobalAvgPool", "make_stem", "make_shortcut", "downsampled", "BLOCKS",
           "LAYOUTS", "STEM_TYPES"]

Size = tuple[int, int]
LAYOUTS = ("flat", "units")
STEM_TYPES = ("basic", "deep", "tiered")


def downsampled(size: Size | None, stride: int) -> Size | None:
    """Feature size after a stride-``stride`` layer with "same" padding: ``ceil(H / stride)``."""
    if size is None:
        return None
    return (-(-size[0] // stride), -(-size[1] // stride))


def make_stem(in_chans: int, stem_type: str = "basic", stem_width: int = 64,
              small_input: bool = False, act_layer: LayerSpec = "relu") -> tuple[nn.Module, int, int]:
    """The stem's convolution ``conv1`` (the ResNet adds ``bn1``, ``act1`` and ``maxpool``); returns
    ``(conv1, out_channels, stride)``.

    - ``"basic"``: one 7x7 stride-2 convolution (ResNet).
    - ``"deep"``: three 3x3 convolutions (stride 2, 1, 1) of widths w, w, 2w with BN + ReLU between them, as
      one ``nn.Sequential`` (indices 0-6, the layout of timm's ResNet-D and ResNeSt checkpoints).
    - ``"tiered"``: the same with widths 3w/4, w, 2w (timm's ``stem_type="tiered"``: 24, 32, 64 for w = 32, the
      stem of ``botnet26t_256``).
    - ``small_input=True``: the same at stride 1 with a 3x3 kernel, for 28x28 and 32x32 images (CIFAR-style).

    ``act_layer`` is the activation between the deep and tiered stems' convolutions (ReLU; timm's ``*ts``
    networks such as ``halonet50ts``: SiLU).
    """
    check_positive_int("in_chans", in_chans)
    check_positive_int("stem_width", stem_width)
    check_choice("stem_type", stem_type, STEM_TYPES)
    stride = 1 if small_input else 2
    if stem_type == "basic":
        return conv2d(in_chans, stem_width, 3 if small_input else 7, stride), stem_width, stride
    w = stem_width
    first = 3 * w // 4 if stem_type == "tiered" else w
    if first == 0:
        raise UsageError(f"stem_width: the tiered stem's first convolution has 3 * stem_width / 4 channels, none "
                         f"for stem_width={w}; needs at least 2")
    convs = nn.Sequential(conv2d(in_chans, first, 3, stride), nn.BatchNorm2d(first),
                          create_act(act_layer, inplace=True), conv2d(first, w, 3), nn.BatchNorm2d(w),
                          create_act(act_layer, inplace=True), conv2d(w, 2 * w, 3))
    return convs, 2 * w, stride


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


class GlobalAvgPool(nn.Module):
    """Global average pooling to a vector (the classifier's input).

    Shape:
        - Input: (B, C, H, W)
        - Output: (B, C)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class _Residual(nn.Module):
    """``act(se(branch(x)) + downsample(x))``: what both blocks share once their convolutions are added.

    The branch is the sequence of named modules in ``_path`` (``conv1``, ``bn1``, ``act1``, ...), so the
    modules carry the ecosystem's names and the forward pass reads them in order.
    """

    def __init__(self, plug: AttnPlug, act_layer: LayerSpec = "relu") -> None:
        super().__init__()
        get_act_layer(act_layer)  # a UsageError naming act_layer before anything is built
        self.act_layer = act_layer
        self.layout = plug.layout
        self._path: list[str] = []
        self._units = 0
        self._size: Size | None = None  # the (H, W) the next convolution sees, while the block is built

    def _start(self, in_size: Size | None, feat_size: Size | None, stride: int) -> None:
        """Track the map size through the branch from the block's input size (the output size when the block
        keeps the resolution and no input size is given), for layers in place of a convolution that need it."""
        self._size = in_size if in_size is not None else (feat_size if stride == 1 else None)

    def _add_conv(self, plug: AttnPlug, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1,
                  groups: int = 1, act: bool = True) -> None:
        """Convolution number i (1, 2, ...) with its BN and (unless it is the last) its ReLU."""
        self._units += 1
        i = self._units
        conv, own_norm = plug.conv(in_chs, out_chs, kernel_size, stride, groups, act, in_size=self._size)
        self._size = downsampled(self._size, stride)
        if self.layout == "units":
            unit = conv if own_norm else ConvNormAct(conv, out_chs, self.act_layer if act else None)
            setattr(self, f"conv{i}", unit)
            self._path.append(f"conv{i}")
            return
        setattr(self, f"conv{i}", conv)
        setattr(self, f"bn{i}", nn.Identity() if own_norm else nn.BatchNorm2d(out_chs))
        self._path += [f"conv{i}", f"bn{i}"]
        if act:
            setattr(self, f"act{i}", nn.Identity() if own_norm else create_act(self.act_layer, inplace=True))
            self._path.append(f"act{i}")

    def _add_module_to_path(self, name: str, module: nn.Module) -> None:
        setattr(self, name, module)
        self._path.append(name)

    def _finish(self, in_chs: int, out_chs: int, stride: int, plug: AttnPlug, feat_size: Size | None,
                avg_down: bool) -> None:
        self.se = plug.block_attn(out_chs, feat_size)
        after = plug.after_attn(out_chs, feat_size)
        if after is not None:  # named only where present, so plain blocks keep the ecosystem's module tree
            self.attn = after
        setattr(self, f"act{self._units}", create_act(self.act_layer, inplace=True))  # after the addition
        self.downsample = make_shortcut(in_chs, out_chs, stride, avg_down)
        self._act_out = f"act{self._units}"
        self.in_chs, self.out_channels = in_chs, out_chs

    def last_bn(self) -> nn.BatchNorm2d:
        """The BatchNorm that ends the residual branch (zeroed by ``zero_init_last``)."""
        last = getattr(self, f"conv{self._units}") if self.layout == "units" else self
        return getattr(last, "bn" if self.layout == "units" else f"bn{self._units}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for name in self._path:
            out = getattr(self, name)(out)
        out = self.se(out)
        out += self.downsample(x)  # in place, as timm: the branch's last BN output is not needed by autograd
        out = getattr(self, self._act_out)(out)
        return self.attn(out) if hasattr(self, "attn") else out


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
        in_size: the block's input (H, W), for a layer in place of a convolution that needs its input's size
            (BoTNet's MHSA); None: ``feat_size`` when ``stride`` is 1.
        act_layer: the activation after each BN but the last and after the addition (ReLU; SiLU in timm's
            ``*ts`` networks).

    Shape:
        - Input: (B, in_chs, H, W)
        - Output: (B, planes, ceil(H / stride), ceil(W / stride))
    """

    expansion = 1

    def __init__(self, in_chs: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64,
                 plug: AttnPlug | None = None, feat_size: Size | None = None, avg_down: bool = False,
                 avd: bool = False, stride_in_1x1: bool = False, in_size: Size | None = None,
                 act_layer: LayerSpec = "relu") -> None:
        if groups != 1 or base_width != 64 or avd or stride_in_1x1:
            raise UsageError(f"BasicBlock supports groups=1, base_width=64, avd=False, stride_in_1x1=False only, "
                             f"got groups={groups}, base_width={base_width}, avd={avd}, "
                             f"stride_in_1x1={stride_in_1x1}; use the bottleneck block")
        plug = plug or AttnPlug()
        super().__init__(plug, act_layer)
        self._start(in_size, feat_size, stride)
        self._add_conv(plug, in_chs, planes, 3, stride)
        self._add_conv(plug, planes, planes, 3, act=False)
        self._finish(in_chs, planes, stride, plug, feat_size, avg_down)


class Bottleneck(_Residual):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand x4 (ResNet-50/101/152, ResNeXt, SKNet, ResNeSt).

    The stride sits on the 3x3 convolution (ResNet v1.5, as torchvision and timm), on the first 1x1 with
    ``stride_in_1x1`` (ResNet v1, the original Caffe models the SE, CBAM and GE papers start from: same
    parameters, ~6% fewer multiply-adds), or, with ``avd``, on a 3x3 average pool ``avd`` after the 3x3
    (ResNeSt).

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
        in_size: the block's input (H, W), for a layer in place of a convolution that needs its input's size
            (BoTNet's MHSA attends at the input resolution of a strided block, then pools); None:
            ``feat_size`` when ``stride`` is 1.
        act_layer: the activation after each BN but the last and after the addition (ReLU; SiLU in timm's
            ``*ts`` networks). A layer with its own BN and ReLU in place of a convolution (SK, SplAt) keeps its
            ReLU.

    Shape:
        - Input: (B, in_chs, H, W)
        - Output: (B, 4 * planes, ceil(H / stride), ceil(W / stride))
    """

    expansion = 4

    def __init__(self, in_chs: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64,
                 plug: AttnPlug | None = None, feat_size: Size | None = None, avg_down: bool = False,
                 avd: bool = False, stride_in_1x1: bool = False, in_size: Size | None = None,
                 act_layer: LayerSpec = "relu") -> None:
        check_positive_int("groups", groups)
        if avd and stride_in_1x1:
            raise UsageError("avd and stride_in_1x1 both place the block's stride; choose one")
        check_positive_int("base_width", base_width)
        width = int(planes * base_width / 64) * groups
        if width == 0:
            raise UsageError(f"base_width too small: planes={planes} * base_width={base_width} / 64 gives no "
                             f"channels per group")
        plug = plug or AttnPlug()
        super().__init__(plug, act_layer)
        out_chs = planes * self.expansion
        pool_after = avd and stride > 1
        mid_stride = 1 if pool_after or stride_in_1x1 else stride
        self._start(in_size, feat_size, stride)
        self._add_conv(plug, in_chs, width, 1, stride if stride_in_1x1 else 1)
        self._add_conv(plug, width, width, 3, mid_stride, groups)
        if pool_after:
            self._add_module_to_path("avd", nn.AvgPool2d(3, stride, padding=1))
            self._size = downsampled(self._size, stride)
        self._add_conv(plug, width, out_chs, 1, act=False)
        self._finish(in_chs, out_chs, stride, plug, feat_size, avg_down)


BLOCKS: dict[str, type[_Residual]] = {"basic": BasicBlock, "bottleneck": Bottleneck}
