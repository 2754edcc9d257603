"""Axial-ResNets: ResNets whose bottlenecks attend along the height axis, then the width axis, instead of convolving.

Wang et al. 2020, "Axial-DeepLab: Stand-Alone Axial-Attention for Panoptic Segmentation", sec. 3.2 and 4.1: every
3x3 convolution of a bottleneck ResNet becomes a position-sensitive axial-attention layer
(:class:`~visionattn.layers.axial_attention.AxialAttention2d`, ``"axial"``), the stem stays a convolution (the
"Conv-Stem" ImageNet models). Built as the official code's ``AxialAttentionNet`` (csrhddlam/axial-deeplab,
``lib/models/axialnet.py``), with its initialisation:

- the block (its ``AxialBlock``, here :class:`AxialBottleneck`): 1x1 convolution to the block's width, BN, ReLU;
  the height and the width pass (a strided block attends at its input's resolution and pools 2x2 after the width
  pass); ReLU, with no BatchNorm before it (the attention ends in its own); 1x1 convolution to 2 x the width, BN
  (zero-initialised, ``zero_init_residual=True``); the projection shortcut of a ResNet (1x1 strided conv + BN).
- a width multiplier s: stem of 64 s channels (7x7 stride 2, max pool), block widths (128, 256, 512, 1024) s,
  outputs twice that; 8 heads; global span, the tables of each block built for the map it attends (56, 28,
  14, 7 pixels at 224: the official per-block ``kernel_size``). Other input sizes resample the tables.
- ``axial26s`` (Axial-ResNet-26-S): blocks [1, 2, 4, 1], s = 0.5. ``axial50s`` / ``axial50m`` / ``axial50l``:
  [3, 3 + 1, 6, 3] = [3, 4, 6, 3] blocks with s = 0.5 / 0.75 / 1 (the official ``axial50s``, ``axial50m``,
  ``axial50l``).

Parameter counts (224x224, 1000 classes), counted from the official definitions: one pass of C channels with
tables for K positions has 2C^2 (``qkv_transform``) + 4C (``bn_qkv``) + 48 (``bn_similarity``, 3 x 8 heads) +
4C (``bn_output``) + 2 (C / 8)(2K - 1) (``relative``) parameters; a block of input width C_in adds C_in C
(1x1 down) + 2C (BN) + two passes + 2C^2 (1x1 up) + 4C (BN), and a projection shortcut 2 C_in C + 4C. Summed
(stem 3 x 49 x 64 s + 128 s, classifier 2048 s x 1000 + 1000):

- ``axial26s``: 5,944,936 (the paper and the official model zoo: 5.9M)
- ``axial50s``: 11,586,216; ``axial50m``: 25,179,400; ``axial50l``: 43,973,480

and the models here have exactly these counts, module for module (``tests/models/test_axial_resnet.py`` does the
sum). The similarity shifts of ``bn_similarity`` (24 per pass) cannot train (the softmax cancels them) and are
frozen, so the trainable count (``visionattn.complexity.count_params``) is 384 less for ``axial26s`` (5,944,552).
:func:`convert_official_axial_state_dict` renames an official state dict to this layout. Checked once against the
official code (its random weights converted, BatchNorms randomised, 2 x 3 x 224 x 224 in float64): ``axial26s``
gives its logits within 3e-11 in eval and training mode, its gradients within 3e-11 (relative) and its running
statistics after a training step.

``axial29`` is the small-image version for 1x28x28 that trains on a CPU beside ``botnet29``: the small-image
ResNet (3x3 stride-1 stem of 16 channels, no max pool) with 3 axial blocks per stage at widths 32-64-128
(outputs 64-128-256) attending at 28, 14 and 7 pixels, 4 heads (8 would leave
2-channel queries at width 32): 573,962 parameters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from visionattn.errors import UsageError
from visionattn.layers.axial_attention import AxialAttention2d
from visionattn.models.blocks import Bottleneck
from visionattn.models.plug import AttnPlug
from visionattn.models.resnet import ResNet
from visionattn.models.zoo import IMAGENET, SMALL, register_resnet

__all__ = ["AxialBottleneck", "AxialResNet", "AXIAL_MODELS", "convert_official_axial_state_dict"]

_PAPER = "Wang et al. 2020, Axial-DeepLab: Stand-Alone Axial-Attention for Panoptic Segmentation"
# what the network sets itself: its block and its layer (heads and span are arguments)
_SET_BY_AXIAL = ("block", "attn", "attn_kwargs", "attn_where")


class AxialBottleneck(Bottleneck):
    """The official ``AxialBlock``: a bottleneck of expansion 2 whose 3x3 convolution is axial attention, with no
    BatchNorm after it (the attention's ``bn_output`` ends it; the block's ReLU follows). Where the plug leaves the
    3x3 convolution (a stage without attention), it is an ordinary expansion-2 bottleneck.

    Args: those of :class:`~visionattn.models.blocks.Bottleneck`; the block outputs ``2 * planes`` channels.

    Shape:
        - Input: (B, in_chs, H, W)
        - Output: (B, 2 * planes, ceil(H / stride), ceil(W / stride))
    """

    expansion = 2

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(self.conv2, AxialAttention2d):
            self.bn2 = nn.Identity()


class AxialResNet(ResNet):
    """A ResNet of :class:`AxialBottleneck` blocks whose 3x3 convolutions are axial attention (``"axial"``).

    Args:
        heads: attention heads of every axial layer (official: 8).
        span: None for global attention along each axis (the paper's ImageNet models), or an odd local span.
        attn_stages: the stages with axial attention (default: all, as the paper); the others keep 3x3
            convolutions in the same expansion-2 blocks.
        zero_init_last: start each block's last BN at zero (official: ``zero_init_residual=True``).
        **kwargs: the rest of :class:`~visionattn.models.resnet.ResNet` (layers, widths, stem_width, img_size,
            num_classes, attn_stage_kwargs, attn_every, ...); ``img_size`` sizes the global tables, any other
            input size also works.

    Shape:
        - Input: (B, in_chans, H, W), any H, W (the tables are resampled when the maps differ from ``img_size``'s)
        - Output: (B, num_classes)
    """

    # the relative tables are resampled for any map size (the model contract checks a second size)
    supports_variable_size = True
    # The smallest input whose every parameter gets a gradient: axial50's last blocks attend on a 1x1 map at
    # 32x32 pixels, where the softmax over one key is constant (read by the model contract tests).
    min_input_size = (3, 64, 64)

    def __init__(self, heads: int = 8, span: int | None = None, attn_stages: Sequence[int] | None = None,
                 zero_init_last: bool = True, **kwargs: Any) -> None:
        taken = [k for k in _SET_BY_AXIAL if k in kwargs]
        if taken:
            raise UsageError(f"{taken[0]}: an axial ResNet places its own layer ('axial' in axial bottlenecks of "
                             f"expansion 2); leave it out, or build a ResNet")
        super().__init__(attn="axial", attn_kwargs={"heads": heads, "span": span}, attn_stages=attn_stages,
                         zero_init_last=zero_init_last, **kwargs)

    def _make_stages(self, block: type, layers: Sequence[int], widths: Sequence[int], plug: AttnPlug,
                     block_kwargs: dict[str, Any]) -> None:
        # the official AxialBlock in place of the ResNet's bottleneck (the ResNet takes block names only)
        super()._make_stages(AxialBottleneck, layers, widths, plug, block_kwargs)


# the official names of a block's modules -> ours (the stem, the shortcuts and the classifier keep theirs)
_OFFICIAL_RULES: tuple[tuple[str, str], ...] = (
    (r"^(layer\d+\.\d+)\.conv_down\.", r"\1.conv1."),
    (r"^(layer\d+\.\d+)\.hight_block\.", r"\1.conv2.height_block."),
    (r"^(layer\d+\.\d+)\.width_block\.", r"\1.conv2.width_block."),
    (r"^(layer\d+\.\d+)\.conv_up\.", r"\1.conv3."),
    (r"^(layer\d+\.\d+)\.bn2\.", r"\1.bn3."),
)


def _official_key(key: str) -> str:
    key = key.removeprefix("module.")  # saved from nn.DataParallel, as the official training script does
    for pattern, repl in _OFFICIAL_RULES:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key


def convert_official_axial_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official Axial-DeepLab classification state dict (``axial26s.pth``, ...) under this library's names, for
    ``load_state_dict(strict=True)``: ``layer1.0.conv_down.weight`` -> ``layer1.0.conv1.weight``,
    ``layer1.0.hight_block.relative`` -> ``layer1.0.conv2.height_block.relative``, ``conv_up`` -> ``conv3``, the
    block's ``bn2`` -> ``bn3``; a ``module.`` prefix is dropped, and the ``flatten_index`` buffers (computed at run
    time here) are left out. The shapes are the same. Tensors are not copied."""
    return {_official_key(key): value for key, value in state_dict.items() if not key.endswith(".flatten_index")}


def _official(layers: tuple[int, ...], s: float) -> dict[str, Any]:
    """The official ``AxialAttentionNet(AxialBlock, layers, s=s)`` as a configuration."""
    return {**IMAGENET, "layers": layers, "widths": tuple(int(w * s) for w in (128, 256, 512, 1024)),
            "stem_width": int(64 * s)}


# name: (configuration, description)
AXIAL_MODELS: dict[str, tuple[dict[str, Any], str]] = {
    "axial26s": (_official((1, 2, 4, 1), 0.5),
                 "Axial-ResNet-26-S: [1, 2, 4, 1] axial blocks (expansion 2), widths 64-512, global span, 8 heads"),
    "axial50s": (_official((3, 4, 6, 3), 0.5), "Axial-ResNet-50-S: [3, 4, 6, 3] axial blocks, widths 64-512"),
    "axial50m": (_official((3, 4, 6, 3), 0.75), "Axial-ResNet-50-M: [3, 4, 6, 3] axial blocks, widths 96-768"),
    "axial50l": (_official((3, 4, 6, 3), 1.0), "Axial-ResNet-50-L: [3, 4, 6, 3] axial blocks, widths 128-1024"),
    "axial29": ({**SMALL, "layers": (3, 3, 3), "widths": (32, 64, 128), "stem_width": 16, "heads": 4},
                "Axial-ResNet-29 (small images): 3 x 3 axial blocks at widths 32-64-128, 4 heads"),
}


for _name, (_config, _description) in AXIAL_MODELS.items():
    register_resnet(_name, _config, _PAPER, _description, AxialResNet)
