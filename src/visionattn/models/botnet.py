"""BoTNet: ResNets whose last bottlenecks attend globally instead of convolving.

Srinivas et al. 2021, "Bottleneck Transformers for Visual Recognition": a BoT block is a bottleneck whose 3x3
convolution is multi-head self-attention over all pixels with 2D relative position logits
(:class:`~visionattn.layers.bot_attention.BoTSelfAttention2d`, ``"bot_mhsa"``); a strided block attends at its
input's resolution and average-pools after the attention. The ResNet plug puts it in place of the 3x3
convolutions of the stages in ``attn_stages`` (every ``attn_every``-th block), so everything else is the ResNet's.

- ``botnet50`` (BoT50, the paper's Table 1 / fig. 3): ResNet-50 with the three 3x3 convolutions of stage 5
  (``layer4``) replaced, 4 heads. The paper gives 20.8M parameters; with ResNet-50's other parts (torchvision's
  layout, 1000 classes, built for 224x224) it has exactly 20,852,008: ResNet-50's 25,557,032, minus the three
  3x3 convolutions (3 x 2,359,296), plus three q/k/v projections (3 x 786,432) and the relative tables of
  (2 * 14 - 1 + 2 * 14 - 1) x 128 (the first block attends at 14x14) and twice (13 + 13) x 128 (7x7).
- ``botnet26t_256``: timm's network of that name (12,488,672 parameters, checked against timm 1.0.31): the
  tiered stem 24-32-64 (three 3x3, BN + ReLU after each, 3x3 max pool), bottlenecks [2, 2, 2, 2], BoT blocks
  in the second block of stage 3 and both blocks of stage 4, built for 256x256 (tables for 16x16 and 8x8), with
  timm's unscaled relative logits (``scale_pos_embed=False``). :func:`convert_timm_botnet_state_dict` renames a
  timm state dict to this model's keys (the shapes are the same).
- ``botnet29``: a BoT network for 1x28x28 images that trains on a CPU beside the CNNs: the small-image ResNet
  (3x3 stride-1 stem of 16, stages of widths 16-32-64 at 28, 14 and 7 pixels) with 3 bottlenecks per stage, as
  the zoo's ResNeXt-29 and ResNeSt-29, and BoT blocks in the last stage (the first attends at 14x14, then pools;
  4 heads of 16 channels). Bottlenecks and not ResNet-20's basic blocks, because a BoT block is a bottleneck:
  the first 3x3 of a basic block changes the width, which an attention without output projection cannot.

Other input sizes work (the official code and timm assert the built size): the relative tables are resampled
to the map size at run time (:class:`~visionattn.layers.relative_position.RelativePositionLogits2d`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from visionattn.errors import UsageError
from visionattn.models.byoanet import convert_timm_byoanet_state_dict
from visionattn.models.resnet import ResNet
from visionattn.models.zoo import BACKBONES, register_resnet

__all__ = ["BoTNet", "BOTNET_MODELS", "convert_timm_botnet_state_dict"]

_PAPER = "Srinivas et al. 2021, Bottleneck Transformers for Visual Recognition"
# what BoTNet sets itself: the layer, its placement and its keywords (heads and scale_pos_embed are arguments)
_SET_BY_BOTNET = ("attn", "attn_kwargs", "attn_where", "attn_stage_kwargs")


class BoTNet(ResNet):
    """A ResNet with BoTNet's MHSA (``"bot_mhsa"``) in place of the 3x3 convolutions of some stages.

    Args:
        heads: attention heads of every BoT block (the paper: 4).
        scale_pos_embed: scale the relative logits by d^-1/2 like q k^T (BoTNet's official code: True; timm's
            ``BottleneckAttn``: False).
        attn_stages: the stages with BoT blocks (1 = ``layer1``; BoT50: ``(4,)``, the paper's c5).
        attn_every: every n-th block of those stages is a BoT block, or one n per stage (timm's
            ``botnet26t_256``: ``(2, 1)``).
        **kwargs: the rest of :class:`~visionattn.models.resnet.ResNet` (layers, widths, stem_type, img_size,
            num_classes, ...); ``img_size`` sizes the relative tables, any other input size also works.

    Shape:
        - Input: (B, in_chans, H, W), any H, W (the tables are resampled when the maps differ from ``img_size``'s)
        - Output: (B, num_classes)
    """

    # the relative tables are resampled for any map size (the layer contract checks a second size)
    supports_variable_size = True
    # The smallest input whose every parameter gets a gradient: on a 1x1 last-stage map the softmax over one key
    # is constant, so q, k and the relative tables learn nothing (read by the model contract tests).
    min_input_size = (3, 64, 64)

    def __init__(self, heads: int = 4, scale_pos_embed: bool = True, attn_stages: Sequence[int] | None = (4,),
                 attn_every: int | Sequence[int] = 1, **kwargs: Any) -> None:
        taken = [k for k in _SET_BY_BOTNET if k in kwargs]
        if taken:
            raise UsageError(f"{taken[0]}: BoTNet places its own layer ('bot_mhsa' in place of the 3x3 "
                             f"convolutions of attn_stages); leave it out, or build a ResNet")
        super().__init__(attn="bot_mhsa", attn_kwargs={"heads": heads, "scale_pos_embed": scale_pos_embed},
                         attn_stages=attn_stages, attn_every=attn_every, **kwargs)


def convert_timm_botnet_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's ``botnet26t_256`` state dict under this library's names (``stem.conv1.conv.weight`` ->
    ``conv1.0.weight``, ``stages.2.1.self_attn.pos_embed.height_rel`` -> ``layer3.1.conv2.rel_pos.height_rel``,
    ``head.fc.weight`` -> ``fc.weight``, ...), for ``load_state_dict(strict=True)``. Tensors are not copied.
    The rules are those of every timm ByoaNet (:func:`~visionattn.models.byoanet.convert_timm_byoanet_state_dict`,
    shared with HaloNet)."""
    return convert_timm_byoanet_state_dict(state_dict, caller="convert_timm_botnet_state_dict")


# name: (configuration, description)
BOTNET_MODELS: dict[str, tuple[dict[str, Any], str]] = {
    "botnet50": ({**BACKBONES["resnet50"][0], "attn_stages": (4,)},
                 "BoT50: ResNet-50 with MHSA (4 heads, 2D relative logits) in place of layer4's three 3x3 convs"),
    "botnet26t_256": ({**BACKBONES["resnet26"][0], "img_size": 256, "stem_type": "tiered", "stem_width": 32,
                       "attn_stages": (3, 4), "attn_every": (2, 1), "scale_pos_embed": False},
                      "timm's botnet26t_256: tiered stem, [2, 2, 2, 2] bottlenecks, BoT blocks in stages 3 and 4"),
    "botnet29": ({**BACKBONES["resnet20"][0], "block": "bottleneck", "attn_stages": (3,)},
                 "BoT-ResNet-29 (small images): 3 x 3 bottlenecks at widths 16-32-64, MHSA in the last stage"),
}


for _name, (_config, _description) in BOTNET_MODELS.items():
    register_resnet(_name, _config, _PAPER, _description, BoTNet)
