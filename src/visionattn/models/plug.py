"""The attention plug: where a registered layer goes inside a ResNet, decided once for every block type.

A network takes one layer name (``attn="se"``) and an :class:`AttnPlug` says where its paper puts it:

- ``"block"``: inside every residual block, on the residual branch after its last BatchNorm and before the
  addition (SE, ECA, CBAM, GE-theta-minus / theta / theta-plus).
- ``"stage"``: once at the end of every stage but the last, on the stage's output (BAM: "at the bottlenecks"
  between stages, i.e. after stages 1-3 of a four-stage ResNet).
- ``"conv"``: in place of convolutions of the block (every conv-like layer of the registry). Layers that end
  with their own BN and ReLU (SK, SplAt) replace the kxk convolution that is followed by BN + ReLU (the 3x3 of
  a bottleneck, the first 3x3 of a basic block); the mixture-of-experts convolutions (CondConv, dynamic
  convolution) replace every convolution of the residual branch, 1x1 and 3x3, and keep the block's BN and
  activation. The stem, the projection shortcut and the classifier stay static, as in both papers.

The plug is the only place that knows these rules; the blocks ask it for their pieces.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from visionattn.registry import create_attn, get_attn_entry

__all__ = ["AttnPlug", "PLACEMENTS", "conv2d", "init_conv"]

PLACEMENTS = ("block", "stage", "conv")
# BAM's paper puts it at the bottlenecks between stages, not in every block.
_STAGE_END = frozenset({"bam"})
# these carry their own BN + ReLU after the convolution (SK eq. 7.1, SplAt eq. 8.1)
_OWN_NORM_ACT = frozenset({"sk", "splat", "splat0"})
# these replace every convolution of the residual branch, not only the kxk one
_EVERY_CONV = frozenset({"condconv", "dynamic_conv"})


def init_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """He (fan-out) initialisation, as the ResNet papers and torchvision use; returns ``conv``."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def conv2d(in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """A bias-free, He-initialised convolution with "same" padding (``ceil(H / stride)`` output rows)."""
    return init_conv(nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False))


def default_placement(name: str) -> str:
    """Where the paper of layer ``name`` puts it: ``"conv"``, ``"stage"`` or ``"block"``."""
    if get_attn_entry(name).conv_like:
        return "conv"
    return "stage" if name in _STAGE_END else "block"


@dataclass(frozen=True)
class AttnPlug:
    """One attention layer and where it goes; builds the pieces the blocks and stages ask for.

    Args:
        name: registered layer name (``visionattn.list_attn()``), or None for a plain network.
        kwargs: keyword arguments for every instance of the layer (e.g. ``{"rd_ratio": 1 / 8}``).
        where: ``"block"``, ``"stage"`` or ``"conv"``; None takes the paper's placement for ``name``.
    """

    name: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    where: str | None = None

    def __post_init__(self) -> None:
        if self.name is None:
            if self.kwargs or self.where is not None:
                raise ValueError(f"attn_kwargs / attn_where need an attn layer, got attn=None with "
                                 f"attn_kwargs={dict(self.kwargs)!r}, attn_where={self.where!r}")
            return
        entry = get_attn_entry(self.name)  # raises a ValueError listing the registered names
        where = default_placement(self.name) if self.where is None else self.where
        if where not in PLACEMENTS:
            raise ValueError(f"attn_where must be one of {PLACEMENTS} or None, got {where!r}")
        if (where == "conv") != entry.conv_like:
            raise ValueError(f"attn_where={where!r} does not fit {self.name!r}: only conv-like layers "
                             f"(takes out_channels and stride) go in place of convolutions")
        object.__setattr__(self, "where", where)

    def _build(self, channels: int, feat_size: tuple[int, int] | None, **extra: Any) -> nn.Module:
        assert self.name is not None
        kwargs = {**self.kwargs, **extra}
        if get_attn_entry(self.name).needs_spatial_size and "spatial_size" not in kwargs:
            if feat_size is None:
                raise ValueError(f"attn {self.name!r} needs the feature map size; build the network with "
                                 f"img_size=(H, W)")
            kwargs["spatial_size"] = feat_size
        return create_attn(self.name, channels, **kwargs)

    def block_attn(self, channels: int, feat_size: tuple[int, int] | None) -> nn.Module:
        """The layer for the end of a residual branch, or Identity if it does not go there."""
        return self._build(channels, feat_size) if self.where == "block" else nn.Identity()

    def stage_attn(self, channels: int, feat_size: tuple[int, int] | None) -> nn.Module:
        """The layer for the end of a (non-final) stage, or Identity if it does not go there."""
        return self._build(channels, feat_size) if self.where == "stage" else nn.Identity()

    def replaces(self, kernel_size: int, act: bool) -> bool:
        """Whether the plug takes the place of a ``kernel_size`` convolution (followed by an activation?)."""
        if self.where != "conv":
            return False
        if self.name in _EVERY_CONV:
            return True
        return kernel_size > 1 and act

    def conv_unit(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, groups: int = 1,
                  act: bool = True) -> nn.Module:
        """Convolution + BN (+ ReLU if ``act``), with the plug's layer in place of the convolution if it
        replaces this one; SK and SplAt bring their own BN + ReLU, so nothing is added after them.

        Shape:
            - Input: (B, in_chs, H, W)
            - Output: (B, out_chs, ceil(H / stride), ceil(W / stride))
        """
        if not self.replaces(kernel_size, act):
            conv: nn.Module = conv2d(in_chs, out_chs, kernel_size, stride, groups)
        else:
            conv = self._build(in_chs, None, out_channels=out_chs, kernel_size=kernel_size, stride=stride,
                               groups=groups)
            if self.name in _OWN_NORM_ACT:
                return conv
        layers = [conv, nn.BatchNorm2d(out_chs)]
        if act:
            layers.append(nn.ReLU(inplace=True))
        return nn.Sequential(*layers)
