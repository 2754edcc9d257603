"""The attention plug: where a registered layer goes inside a ResNet, decided once for every block type.

A network takes one layer name (``attn="se"``) and an :class:`AttnPlug` says where its paper puts it:

- ``"block"``: inside every residual block, on the residual branch after its last BatchNorm and before the
  addition (SE, ECA, CBAM, GE-theta-minus / theta / theta-plus).
- ``"stage"``: once at the end of every stage but the last, on the stage's output (BAM: "at the bottlenecks"
  between stages, i.e. after stages 1-3 of a four-stage ResNet).
- ``"after"``: on the output of a residual block, after the addition and ReLU (the non-local block of Wang et
  al. 2018, "added after a residual block"; it carries its own residual connection).
- ``"conv"``: in place of convolutions of the block (every conv-like layer of the registry). Layers that end
  with their own BN and ReLU (SK, SplAt) replace the kxk convolution that is followed by BN + ReLU (the 3x3 of
  a bottleneck, the first 3x3 of a basic block); the mixture-of-experts convolutions (CondConv, dynamic
  convolution) replace every convolution of the residual branch, 1x1 and 3x3, and keep the block's BN and
  activation. The stem, the projection shortcut and the classifier stay static, as in both papers.

``stages`` restricts the layer to some stages (numbered as ``layer1`` ... ``layerN``; BoTNet: the last) and
``every`` to every n-th block of them (blocks n, 2n, ... counting from 1; the non-local ResNet-50: every other
block of stages 2 and 3, the official code's ``i % 2 == 1``); elsewhere the network stays plain.

Which of these a layer takes is said where it is registered (:class:`~visionattn.registry.Entry`: ``placement``,
``conv_like``, ``own_norm_act``, ``unit_layout``, ``every_conv``), so a layer registered outside this package is
placed by the same rules; the plug is the only place that applies them, and the blocks ask it for their pieces. It
also checks the layer's keyword arguments before anything is built: an unknown keyword gets a "did you mean", and a
keyword the network sets for every layer itself (``channels``; ``out_channels``, ``stride``, ``groups`` and
``kernel_size`` of a replaced convolution) is refused rather than silently overridden.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from visionattn.errors import UsageError, check_choice
from visionattn.registry import PLACEMENTS as LAYER_PLACEMENTS
from visionattn.registry import create_attn, get_attn_entry

__all__ = ["AttnPlug", "PLACEMENTS", "conv2d", "init_conv"]

PLACEMENTS = (*LAYER_PLACEMENTS, "conv")  # a registered layer's own placements, and in place of a convolution
# what the plug passes to every layer it builds, so a user's value would be overridden without a word
_SET_BY_NETWORK = frozenset({"channels"})
_SET_IN_PLACE_OF_CONV = frozenset({"out_channels", "stride", "groups"})


def init_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """He (fan-out) initialisation, as the ResNet papers, torchvision and timm use; returns ``conv``.

    The networks apply it to every convolution once they are built
    (:meth:`visionattn.models.resnet.ResNet.init_weights`), so a layer's own convolutions get it too.
    """
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def conv2d(in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """A bias-free convolution with "same" padding (``ceil(H / stride)`` output rows); the network initialises
    it with every other convolution."""
    return nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)


def _check_layer_kwargs(name: str, kwargs: Mapping[str, Any], argument: str, reserved: frozenset[str]) -> None:
    """Refuse keywords the layer does not take (with a "did you mean") and those the network sets itself."""
    taken = sorted(set(kwargs) & reserved)
    if taken:
        raise UsageError(f"{argument}: {taken[0]!r} is set by the network for every {name!r} layer it builds; "
                         f"leave it out")
    get_attn_entry(name).check_keywords(kwargs, argument)


def default_placement(name: str) -> str:
    """Where the paper of layer ``name`` puts it: ``"conv"`` for a conv-like layer, else its registry entry's
    ``placement`` (``"block"``, ``"stage"`` or ``"after"``)."""
    entry = get_attn_entry(name)
    return "conv" if entry.conv_like else entry.placement


@dataclass(frozen=True)
class AttnPlug:
    """One attention layer and where it goes; builds the pieces the blocks and stages ask for.

    Args:
        name: registered layer name (``visionattn.list_attn()``), or None for a plain network.
        kwargs: keyword arguments for every instance of the layer (e.g. ``{"rd_ratio": 1 / 8}``).
        where: ``"block"``, ``"stage"`` or ``"conv"``; None takes the paper's placement for ``name``.
        stage_kwargs: one mapping per stage, merged over ``kwargs`` for that stage's layers (e.g. the official
            ECA-ResNet-50's ``[{"kernel_size": 3}, {"kernel_size": 5}, {"kernel_size": 5}, {"kernel_size": 7}]``);
            empty for the same keywords everywhere. :meth:`for_stage` gives a stage's plug.
        stages: the stage numbers (1 = ``layer1``) that get the layer; None for all.
        every: only every ``every``-th block of those stages gets it (:meth:`for_block`); or one such number
            per entry of ``stages`` (timm's ``botnet26t_256``: ``stages=(3, 4), every=(2, 1)``, the second block
            of stage 3 and every block of stage 4).
    """

    name: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    where: str | None = None
    stage_kwargs: Sequence[Mapping[str, Any]] = ()
    stages: Sequence[int] | None = None
    every: int | Sequence[int] = 1

    def __post_init__(self) -> None:
        if not isinstance(self.kwargs, Mapping):
            raise UsageError(f"attn_kwargs must be a mapping of keyword arguments, got {self.kwargs!r}")
        if isinstance(self.stage_kwargs, (str, Mapping)) or not isinstance(self.stage_kwargs, Sequence) or not all(
                isinstance(k, Mapping) for k in self.stage_kwargs):
            raise UsageError(f"attn_stage_kwargs must be a list of mappings, one per stage, got {self.stage_kwargs!r}")
        if self.stages is not None:
            if isinstance(self.stages, (str, Mapping)) or not isinstance(self.stages, Sequence) or not all(
                    isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in self.stages):
                raise UsageError(f"attn_stages must be a list of stage numbers (1 = layer1), got {self.stages!r}")
            object.__setattr__(self, "stages", tuple(self.stages))
        self._check_every()
        if self.name is None:
            if self.kwargs or self.where is not None or self.stage_kwargs or self.stages is not None or \
                    self.every != 1:
                raise UsageError(f"attn_kwargs / attn_stage_kwargs / attn_where / attn_stages / attn_every need an "
                                 f"attn layer, got attn=None "
                                 f"with attn_kwargs={dict(self.kwargs)!r}, attn_where={self.where!r}")
            return
        entry = get_attn_entry(self.name)  # raises a UsageError with a "did you mean"
        where = default_placement(self.name) if self.where is None else self.where
        check_choice("attn_where", where, PLACEMENTS)
        if (where == "conv") != entry.conv_like:
            raise UsageError(f"attn_where={where!r} does not fit {self.name!r}: only conv-like layers "
                             f"(takes out_channels and stride) go in place of convolutions")
        object.__setattr__(self, "where", where)
        reserved = _SET_BY_NETWORK | (_SET_IN_PLACE_OF_CONV if where == "conv" else frozenset())
        _check_layer_kwargs(self.name, self.kwargs, "attn_kwargs", reserved)
        for stage in self.stage_kwargs:
            _check_layer_kwargs(self.name, stage, "attn_stage_kwargs", reserved)

    def _check_every(self) -> None:
        """``every``: a whole number >= 1, or a list of them with one entry per stage of ``stages``."""
        def whole(n: object) -> bool:
            return isinstance(n, int) and not isinstance(n, bool) and n >= 1

        if whole(self.every):
            return
        if isinstance(self.every, (str, Mapping)) or not isinstance(self.every, Sequence) or not all(
                whole(n) for n in self.every):
            raise UsageError(f"attn_every must be a whole number >= 1 (every n-th block), or one per stage of "
                             f"attn_stages, got {self.every!r}")
        if self.stages is None or len(self.every) != len(self.stages):
            raise UsageError(f"attn_every: a list needs one entry per stage of attn_stages, got attn_every="
                             f"{list(self.every)!r}, attn_stages={self.stages!r}")
        object.__setattr__(self, "every", tuple(self.every))

    def for_stage(self, index: int, num_stages: int) -> AttnPlug:
        """The plug for stage ``index`` (0-based) of ``num_stages``: ``kwargs`` updated by that stage's
        ``stage_kwargs``; a plain plug for a stage not in ``stages``."""
        if self.stages is not None:
            beyond = [i for i in self.stages if i > num_stages]
            if beyond:
                raise UsageError(f"attn_stages: stage {beyond[0]} does not exist, the network has {num_stages} "
                                 f"stages (layer1 ... layer{num_stages})")
            if index + 1 not in self.stages:
                return AttnPlug()
            if not isinstance(self.every, int):
                return dataclasses.replace(self, every=self.every[self.stages.index(index + 1)]).for_stage(
                    index, num_stages)
        if not self.stage_kwargs:
            return dataclasses.replace(self, stages=None) if self.stages is not None else self
        if len(self.stage_kwargs) != num_stages:
            raise UsageError(f"attn_stage_kwargs needs one mapping per stage ({num_stages}), got "
                             f"{len(self.stage_kwargs)}")
        return dataclasses.replace(self, kwargs={**self.kwargs, **self.stage_kwargs[index]}, stage_kwargs=(),
                                   stages=None)

    def for_block(self, index: int) -> AttnPlug:
        """The plug for block ``index`` (0-based) of a stage: a plain plug unless ``index + 1`` is a multiple of
        ``every``."""
        if self.every == 1:
            return self
        return dataclasses.replace(self, every=1) if (index + 1) % self.every == 0 else AttnPlug()

    def _build(self, channels: int, feat_size: tuple[int, int] | None, **extra: Any) -> nn.Module:
        assert self.name is not None
        kwargs = {**self.kwargs, **extra}
        if get_attn_entry(self.name).needs_spatial_size and "spatial_size" not in kwargs:
            if feat_size is None:
                raise UsageError(f"attn {self.name!r} needs the feature map size; build the network with "
                                 f"img_size=(H, W)")
            kwargs["spatial_size"] = feat_size
        return create_attn(self.name, channels, **kwargs)

    def block_attn(self, channels: int, feat_size: tuple[int, int] | None) -> nn.Module:
        """The layer for the end of a residual branch, or Identity if it does not go there."""
        return self._build(channels, feat_size) if self.where == "block" else nn.Identity()

    def stage_attn(self, channels: int, feat_size: tuple[int, int] | None) -> nn.Module:
        """The layer for the end of a (non-final) stage, or Identity if it does not go there."""
        return self._build(channels, feat_size) if self.where == "stage" else nn.Identity()

    def after_attn(self, channels: int, feat_size: tuple[int, int] | None) -> nn.Module | None:
        """The layer for a residual block's output, or None if it does not go there."""
        return self._build(channels, feat_size) if self.where == "after" else None

    def replaces(self, kernel_size: int, act: bool) -> bool:
        """Whether the plug takes the place of a ``kernel_size`` convolution (followed by an activation?)."""
        if self.where != "conv":
            return False
        if get_attn_entry(self.name).every_conv:
            return True
        return kernel_size > 1 and act

    @property
    def layout(self) -> str:
        """How a block names its convolutions: ``"units"`` (``conv1.conv``, ``conv1.bn``: timm's SKNet layout)
        for SK, ``"flat"`` (``conv1``, ``bn1``: torchvision's and timm's ResNet layout) for everything else."""
        return "units" if self.name is not None and get_attn_entry(self.name).unit_layout else "flat"

    def conv(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, groups: int = 1,
             act: bool = True, in_size: tuple[int, int] | None = None) -> tuple[nn.Module, bool]:
        """The convolution of a block, or the plug's layer in its place if it replaces this one; and whether
        that module brings its own BN and ReLU (SK, SplAt), so that the block adds none after it.

        ``in_size`` is the (H, W) of the convolution's input: a layer that needs the feature-map size
        (``needs_spatial_size``, BoTNet's MHSA) gets it as ``spatial_size``, so a strided replacement is built
        for the resolution it attends at, before its pooling.

        Shape:
            - Input: (B, in_chs, H, W)
            - Output: (B, out_chs, ceil(H / stride), ceil(W / stride))
        """
        if not self.replaces(kernel_size, act):
            return conv2d(in_chs, out_chs, kernel_size, stride, groups), False
        extra = self.replacement_kwargs(out_chs, kernel_size, stride, groups)
        if "kernel_size" in self.kwargs and "kernel_size" in extra:
            raise UsageError(f"attn_kwargs: 'kernel_size' is set by the network for every {self.name!r} layer "
                             f"(the kernel of the convolution it replaces); leave it out")
        layer = self._build(in_chs, in_size, **extra)
        return layer, get_attn_entry(self.name).own_norm_act

    def replacement_kwargs(self, out_chs: int, kernel_size: int, stride: int, groups: int) -> dict[str, Any]:
        """What the layer in place of a convolution is told about it (its width, kernel, stride, groups)."""
        return {"out_channels": out_chs, "kernel_size": kernel_size, "stride": stride, "groups": groups}
