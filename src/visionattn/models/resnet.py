"""ResNet, ResNeXt, ResNet-D and their small-image versions, with one attention plug.

He et al. 2016, "Deep Residual Learning for Image Recognition"; Xie et al. 2017 (ResNeXt); He et al. 2019
(ResNet-D). The ``attn`` argument puts any registered layer where its paper does (see
:mod:`visionattn.models.plug`); the named models of the reference tables are in :mod:`visionattn.models.zoo`.

Initialisation is one rule for the whole network, applied once it is built (:meth:`ResNet.init_weights`):
every 2-D convolution, the attention layers' own included (SK's paths and its fuse and select layers, which
are 1x1 convolutions as in timm; SplAt; the excite MLPs' 1x1 convolutions; SASA's query/key/value
projections), gets He's normal initialisation with fan-out and the ReLU gain, as torchvision, timm and the
official SE, ECA, SK and ResNeSt code do; each expert of a CondConv or dynamic-convolution bank is initialised
the same way, like the convolution it replaces (CondConv's official code). Left at PyTorch's default, as in
those codes: linear layers (the classifier, the routers), ECA's 1-D convolution, the relative position
embeddings, and BatchNorm (weight 1, bias 0; with ``zero_init_last`` the last BN of each residual branch
starts at 0). A layer that declares ``keeps_own_init = True`` (HaloNet's attention, whose q/kv projections and
relative tables timm initialises truncated-normal) gets its ``reset_parameters()`` called after that rule.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from visionattn.errors import UsageError, check_choice, check_range
from visionattn.layers.cond_conv import ExpertConv2d
from visionattn.layers.helpers import LayerSpec, check_bool, check_images, check_positive_int, create_act, pair
from visionattn.models.blocks import BLOCKS, GlobalAvgPool, downsampled, make_stem
from visionattn.models.plug import AttnPlug, init_conv
from visionattn.models.pretrained import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PretrainedCfg,
)

__all__ = ["ResNet"]


def _block_class(block: str | type[nn.Module]) -> type[nn.Module]:
    """The block class ``block`` names (:data:`~visionattn.models.blocks.BLOCKS`), or ``block`` itself when it is
    a module class."""
    if isinstance(block, type) and issubclass(block, nn.Module):
        return block
    if not isinstance(block, str):
        raise UsageError(f"block: got {block!r}, needed one of {', '.join(sorted(BLOCKS))} or an nn.Module "
                         "subclass built as a residual block")
    check_choice("block", block, sorted(BLOCKS))
    return BLOCKS[block]


class ResNet(nn.Module):
    """A ResNet with an attention plug: stem, stages of residual blocks, global pool and classifier.

    Args:
        block: ``"basic"`` (two 3x3) or ``"bottleneck"`` (1x1-3x3-1x1, expansion 4), or a block class of your
            own, built as ``block(in_chs, planes, stride, feat_size=, in_size=, groups=, base_width=, plug=,
            avg_down=, avd=, stride_in_1x1=, act_layer=)`` with an ``out_channels`` attribute (subclass
            :class:`~visionattn.models.blocks.BasicBlock` or ``Bottleneck`` to keep the plug's placements).
        layers: blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50, ``(3, 3, 3)`` for ResNet-20.
        widths: nominal width (planes) of each stage; default ``(64, 128, 256, 512)``. The first stage keeps
            the resolution, every later one halves it.
        num_classes: classifier outputs; 0 leaves out the classifier (the pooled features come out).
        in_chans: image channels.
        img_size: the input (H, W) the network is built for. Only layers with a fixed spatial size (GE-theta
            with the global extent) depend on it; other networks accept any size.
        groups: cardinality of the 3x3 convolutions (ResNeXt: 32).
        base_width: channels per group at planes = 64 (ResNet: 64, ResNeXt 32x4d: 4).
        stem_type: ``"basic"`` (7x7), ``"deep"`` (three 3x3, ResNet-D / ResNeSt) or ``"tiered"`` (three 3x3 of
            widths 3w/4, w, 2w, timm's tiered stem of ``botnet26t_256``).
        stem_width: width of the first stem conv (deep stem: the stem outputs twice this; tiered: the middle
            conv's width, the stem outputs twice this).
        small_input: the small-image stem (3x3 stride 1, no max pool) for 28x28 and 32x32 inputs.
        avg_down: ResNet-D shortcut (average pool, then 1x1 conv at stride 1).
        avd: ResNeSt's average-pool downsampling after the 3x3 of strided blocks (bottleneck only).
        stride_in_1x1: ResNet v1's stride on the first 1x1 of strided bottlenecks (default: on the 3x3, v1.5).
        attn: registered attention layer name (``visionattn.list_attn()``), or None.
        attn_kwargs: keyword arguments for every instance of ``attn``.
        attn_stage_kwargs: one mapping per stage merged over ``attn_kwargs`` there, e.g. ECA's per-stage
            ``kernel_size`` of the official checkpoints (``eca_resnet50_k3557``); None for the same everywhere.
        attn_where: ``"block"``, ``"stage"``, ``"after"`` or ``"conv"`` to override the paper's placement.
        attn_stages: the stages (1 = ``layer1``) that get ``attn``; None for all (BoTNet: ``(4,)``).
        attn_every: only every n-th block of those stages gets it (non-local ResNet-50: 2); or one n per
            entry of ``attn_stages`` (``botnet26t_256``: ``(2, 1)``).
        drop_rate: dropout before the classifier.
        zero_init_last: start each residual branch's last BN at zero (the block starts as the identity).
        act_layer: the activation of the stem and the blocks (ReLU; timm's ``*ts`` networks such as
            ``halonet50ts``: ``"silu"``). Layers with their own activation (SK, SplAt, the excite MLPs) keep it.

    Every convolution is initialised by one rule once the network is built: see :meth:`init_weights`.

    The modules carry torchvision's and timm's names, so their checkpoints load with ``strict=True``: the stem
    ``conv1``, ``bn1``, ``act1``, ``maxpool``; the stages ``layer1`` ... ``layer4`` (blocks ``0``, ``1``, ...,
    named inside as :mod:`visionattn.models.blocks` describes; a stage-end layer such as BAM is ``attn`` after
    the blocks); then ``global_pool``, ``drop`` and the classifier ``fc``. The timm model API comes with them:
    :meth:`forward_features`, :meth:`forward_head`, :meth:`reset_classifier`, :meth:`get_classifier`,
    ``num_features`` and ``feature_info`` (channels and reduction of ``act1`` and of every stage, the outputs that
    ``create_model(name, features_only=True)`` returns).

    Shape:
        - Input: (B, in_chans, H, W), (H, W) = ``img_size`` when ``attn`` needs a fixed size
        - Output: (B, num_classes), or (B, num_features) when ``num_classes`` = 0
    """

    def __init__(self, block: str | type[nn.Module] = "bottleneck", layers: Sequence[int] = (3, 4, 6, 3),
                 widths: Sequence[int] = (64, 128, 256, 512), num_classes: int = 1000, in_chans: int = 3,
                 img_size: int | tuple[int, int] = 224, groups: int = 1, base_width: int = 64,
                 stem_type: str = "basic", stem_width: int = 64, small_input: bool = False,
                 avg_down: bool = False, avd: bool = False, stride_in_1x1: bool = False, attn: str | None = None,
                 attn_kwargs: Mapping[str, Any] | None = None, attn_where: str | None = None,
                 drop_rate: float = 0.0, zero_init_last: bool = False,
                 attn_stage_kwargs: Sequence[Mapping[str, Any]] | None = None,
                 attn_stages: Sequence[int] | None = None, attn_every: int | Sequence[int] = 1,
                 act_layer: LayerSpec = "relu") -> None:
        super().__init__()
        block_cls = _block_class(block)
        for name, values in (("layers", layers), ("widths", widths)):
            if isinstance(values, (str, Mapping)) or not isinstance(values, Sequence):
                raise UsageError(f"{name} must be a sequence of ints, one per stage, got {values!r}")
        if len(layers) != len(widths) or not layers:
            raise UsageError(f"layers and widths need one entry per stage, got layers={tuple(layers)}, "
                             f"widths={tuple(widths)}")
        for name, values in (("layers", layers), ("widths", widths)):
            for v in values:
                check_positive_int(name, v)
        check_positive_int("num_classes", num_classes, minimum=0)
        check_range("drop_rate", drop_rate, 0.0, 1.0, high_open=True)
        for flag, value in (("small_input", small_input), ("avg_down", avg_down), ("avd", avd),
                            ("stride_in_1x1", stride_in_1x1), ("zero_init_last", zero_init_last)):
            check_bool(flag, value)
        self.img_size = pair("img_size", img_size)
        self.input_size = (in_chans, *self.img_size)
        self.zero_init_last = zero_init_last
        plug = AttnPlug(attn, {} if attn_kwargs is None else attn_kwargs, attn_where,
                        () if attn_stage_kwargs is None else attn_stage_kwargs, attn_stages, attn_every)

        conv1, stem_chs, stem_stride = make_stem(in_chans, stem_type, stem_width, small_input, act_layer)
        self.in_chans = in_chans
        self.conv1 = conv1
        self.bn1 = nn.BatchNorm2d(stem_chs)
        self.act1 = create_act(act_layer, inplace=True)
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(3, stride=2, padding=1)
        self.feature_info: list[dict[str, Any]] = [{"module": "act1", "num_chs": stem_chs, "reduction": stem_stride}]
        self.stem_reduction = 1 if small_input else 4
        block_kwargs = {"groups": groups, "base_width": base_width, "plug": plug, "avg_down": avg_down,
                        "avd": avd, "stride_in_1x1": stride_in_1x1, "act_layer": act_layer}
        self.num_stages = len(layers)
        self._make_stages(block_cls, layers, widths, plug, block_kwargs)
        self.num_features = self.feature_info[-1]["num_chs"]
        self.global_pool = GlobalAvgPool()
        self.drop = nn.Dropout(drop_rate)
        self.num_classes = num_classes
        self.fc: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        # what the weights expect: ImageNet's normalisation and timm's default evaluation crop, or for the
        # small-image networks the statistics of Fashion-MNIST that they default to
        self.pretrained_cfg = PretrainedCfg(
            input_size=self.input_size, mean=FASHION_MNIST_MEAN if small_input else IMAGENET_MEAN,
            std=FASHION_MNIST_STD if small_input else IMAGENET_STD, crop_pct=1.0 if small_input else 0.875,
            num_classes=num_classes, first_conv="conv1" if stem_type == "basic" else "conv1.0")
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """One rule for every convolution of the network, the attention layers' own included.

        He initialisation (normal, fan-out, ReLU gain) of every ``nn.Conv2d`` and of every expert of a
        CondConv / dynamic-convolution bank; then, with ``zero_init_last``, each residual branch's last BN
        weight at zero. Linear layers, ECA's 1-D convolution and BatchNorm keep PyTorch's initialisation (see
        the module docstring). A layer with ``keeps_own_init`` is reset to its own rule afterwards (as timm's
        blocks call ``reset_parameters`` of their attention). A subclass that rebuilds parts of the network calls
        it again.
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                init_conv(m)
            elif isinstance(m, ExpertConv2d):
                for expert in m.weight:  # each expert is a convolution kernel of its own
                    nn.init.kaiming_normal_(expert, mode="fan_out", nonlinearity="relu")
        for m in self.modules():
            if getattr(m, "keeps_own_init", False):
                m.reset_parameters()
        if self.zero_init_last:
            for m in self.modules():
                if hasattr(m, "last_bn"):
                    nn.init.zeros_(m.last_bn().weight)

    def _make_stages(self, block: type, layers: Sequence[int], widths: Sequence[int], plug: AttnPlug,
                     block_kwargs: dict[str, Any]) -> None:
        """Stage i (``layer{i + 1}``) has ``layers[i]`` blocks of width ``widths[i]``; stages after the first
        start at stride 2.

        Each block learns its output size (for layers that need it); stage-end attention (BAM) closes every
        stage but the last, as the stage's ``attn``. Fills ``feature_info`` (channels and reduction of each
        stage's output) after the stem's entry.
        """
        del self.feature_info[1:]
        feat = downsampled(self.img_size, self.stem_reduction)
        in_chs, reduction = self.feature_info[0]["num_chs"], self.stem_reduction
        for i, (depth, planes) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            in_size = feat
            feat, reduction = downsampled(feat, stride), reduction * stride
            stage_plug = plug.for_stage(i, len(layers))
            kwargs = {**block_kwargs, "plug": stage_plug}
            blocks: OrderedDict[str, nn.Module] = OrderedDict()
            for j in range(depth):
                blocks[str(j)] = block(in_chs, planes, stride if j == 0 else 1, feat_size=feat,
                                       in_size=in_size if j == 0 else feat,
                                       **{**kwargs, "plug": stage_plug.for_block(j)})
                in_chs = blocks[str(j)].out_channels
            if i < len(layers) - 1 and plug.where == "stage":
                blocks["attn"] = stage_plug.stage_attn(in_chs, feat)
            setattr(self, f"layer{i + 1}", nn.Sequential(blocks))
            self.feature_info.append({"module": f"layer{i + 1}", "num_chs": in_chs, "reduction": reduction})

    def stages(self) -> list[nn.Sequential]:
        """The stages ``layer1``, ``layer2``, ... in order."""
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def info_groups(self) -> list[tuple[str, list[nn.Module]]]:
        """The rows of ``visionattn info``: the stem, each stage, the head, each as its modules in order."""
        stem = [self.conv1, self.bn1, self.act1, self.maxpool]
        head = [self.global_pool, self.drop, self.fc]
        return [("stem", stem), *((f"layer{i + 1}", [s]) for i, s in enumerate(self.stages())), ("head", head)]

    def check_input(self, x: torch.Tensor) -> None:
        """A UsageError unless ``x`` is a batch of images with the network's channel count."""
        check_images(x, self.in_chans)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """``maxpool(act1(bn1(conv1(x))))``: (B, C_stem, H / 4, W / 4) (H / 1 for small input)."""
        self.check_input(x)
        return self.maxpool(self.act1(self.bn1(self.conv1(x))))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map, (B, num_features, H / 32, W / 32) (H / 4 for small input)."""
        x = self.forward_stem(x)
        for stage in self.stages():
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, dropout and classify a :meth:`forward_features` map; ``pre_logits``: stop before ``fc``.

        Shape:
            - Input: (B, num_features, h, w)
            - Output: (B, num_classes), or (B, num_features) with ``pre_logits`` or ``num_classes`` = 0
        """
        x = self.drop(self.global_pool(x))
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A new classifier for ``num_classes`` (0: none, the pooled features come out), freshly initialised."""
        check_positive_int("num_classes", num_classes, minimum=0)
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self.pretrained_cfg = self.pretrained_cfg.replace(num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
