"""HaloNet: ResNets whose bottlenecks attend inside blocks with a halo instead of convolving.

Vaswani et al. 2021, "Scaling Local Self-Attention for Parameter Efficient Visual Backbones": the 3x3 convolution
of a bottleneck becomes blocked local self-attention (:class:`~visionattn.layers.halo_attention.HaloAttention2d`,
``"halo"``): b x b query blocks attend to their (b + 2h)^2 neighbourhood with 2D relative logits. The ResNet plug
puts it in place of the 3x3 convolutions of the stages in ``attn_stages`` (every ``attn_every``-th block), so
everything else is the ResNet's, as for :mod:`~visionattn.models.botnet`.

The two ImageNet models are timm's hybrids of that name (``timm/models/byoanet.py``; the paper's own H0-H7 put
the attention in every stage and have no public code), with timm's state-dict layout under our names
(:func:`convert_timm_halonet_state_dict`):

- ``halonet26t`` (12,480,288 parameters, timm 1.0.31's count; 12.48M): the tiered stem 24-32-64 with a 3x3 max
  pool, bottlenecks [2, 2, 2, 2]; halo attention (b = 8, h = 2, 8 heads) in the second block of stage 3 (timm's
  ``interleave_blocks``) and both blocks of stage 4, the first of which is strided (queries at stride 2: 4 x 4
  per block, keys from the 12 x 12 window at full resolution).
- ``halonet50ts`` (22,733,280 parameters, timm 1.0.31; 22.73M): the same stem and ResNet-50's [3, 4, 6, 3] with
  SiLU everywhere (timm's ``act_layer='silu'``); b = 8, h = 3, in the fourth block of stage 2 (4 heads: timm's
  stage-2 ``self_attn_kwargs``), the 2nd, 4th and 6th of stage 3 and the 2nd of stage 4 (8 heads), none strided.
- ``halonet29``: a HaloNet for 1x28x28 images that trains on a CPU beside ``botnet29``, on its backbone (the
  small-image ResNet: a 3x3 stride-1 stem of 16, 3 bottlenecks per stage of widths 16-32-64 at 28, 14 and 7
  pixels). Local attention where BoTNet-29 has none: every block of stages 2 and 3, with blocks of b = 4 and a
  halo of h = 2 (8 x 8 windows, 4 heads). b = 4 rather than 7 so that the strided first blocks use the paper's
  strided queries (7 is odd: timm's rule would average-pool instead); 14 and 7 are padded to 16 and 8, whose
  padded keys the mask removes.

Built for 256x256 (``img_size``), any input size works: no table depends on the map size, and maps that are no
multiple of the block are padded with the padded keys masked (timm asserts the size). ``mask_padding=False``
computes timm's function instead, in which the zero-padded keys beyond the border take part in the softmax (the
8 x 8 stage-4 map of a 256 input is one block whose 12 x 12 (h = 2) or 14 x 14 window is mostly padding): pass it
for equal outputs with timm's weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from visionattn.errors import UsageError
from visionattn.models.byoanet import convert_timm_byoanet_state_dict
from visionattn.models.resnet import ResNet
from visionattn.models.zoo import BACKBONES, register_resnet

__all__ = ["HaloNet", "HALONET_MODELS", "convert_timm_halonet_state_dict"]

_PAPER = "Vaswani et al. 2021, Scaling Local Self-Attention for Parameter Efficient Visual Backbones"
# what HaloNet sets itself: the layer, its placement and its keywords (given as HaloNet's own arguments)
_SET_BY_HALONET = ("attn", "attn_kwargs", "attn_where")


class HaloNet(ResNet):
    """A ResNet with HaloNet's blocked local attention (``"halo"``) in place of the 3x3 convolutions of some stages.

    Args:
        heads: attention heads of every halo layer (timm: 8).
        block_size: b, the query block (the paper and timm: 8).
        halo_size: h, the halo around it (the paper: 3; timm's ``halonet26t``: 2).
        mask_padding: mask padded keys out of the softmax (default); False computes timm's function, in which the
            zero padding beyond the border takes part.
        attn_stages: the stages with halo attention (1 = ``layer1``).
        attn_every: every n-th block of those stages, or one n per stage (``halonet50ts``: ``(4, 2, 2)``).
        **kwargs: the rest of :class:`~visionattn.models.resnet.ResNet` (layers, widths, stem_type, act_layer,
            attn_stage_kwargs for per-stage heads or halos, img_size, num_classes, ...).

    Shape:
        - Input: (B, in_chans, H, W), any H, W
        - Output: (B, num_classes)
    """

    supports_variable_size = True
    # The smallest input whose every parameter gets a gradient: on a 1x1 last-stage map the softmax over one key
    # is constant, so q and the relative tables learn nothing (read by the model contract tests).
    min_input_size = (3, 64, 64)

    def __init__(self, heads: int = 8, block_size: int = 8, halo_size: int = 3, mask_padding: bool = True,
                 attn_stages: Sequence[int] | None = (3, 4), attn_every: int | Sequence[int] = 1,
                 **kwargs: Any) -> None:
        taken = [k for k in _SET_BY_HALONET if k in kwargs]
        if taken:
            raise UsageError(f"{taken[0]}: HaloNet places its own layer ('halo' in place of the 3x3 convolutions "
                             f"of attn_stages); leave it out, or build a ResNet")
        attn_kwargs = {"heads": heads, "block_size": block_size, "halo_size": halo_size,
                       "mask_padding": mask_padding}
        super().__init__(attn="halo", attn_kwargs=attn_kwargs, attn_stages=attn_stages, attn_every=attn_every,
                         **kwargs)


def convert_timm_halonet_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's ``halonet26t`` / ``halonet50ts`` state dict under this library's names
    (``stages.3.0.self_attn.q.weight`` -> ``layer4.0.conv2.q.weight``, ``stages.1.3.self_attn.pos_embed.width_rel``
    -> ``layer2.3.conv2.rel_pos.width_rel``, ``stem.conv1.conv.weight`` -> ``conv1.0.weight``, ...), for
    ``load_state_dict(strict=True)``: the rules of every timm ByoaNet, shared with BoTNet
    (:func:`~visionattn.models.byoanet.convert_timm_byoanet_state_dict`). Tensors are not copied."""
    return convert_timm_byoanet_state_dict(state_dict, caller="convert_timm_halonet_state_dict")


_TIMM_STEM = {"img_size": 256, "stem_type": "tiered", "stem_width": 32}

# name: (configuration, description)
HALONET_MODELS: dict[str, tuple[dict[str, Any], str]] = {
    "halonet26t": ({**BACKBONES["resnet26"][0], **_TIMM_STEM, "attn_stages": (3, 4), "attn_every": (2, 1),
                    "halo_size": 2},
                   "timm's halonet26t: tiered stem, [2, 2, 2, 2] bottlenecks, halo attention (b 8, h 2) in stages "
                   "3 and 4"),
    "halonet50ts": ({**BACKBONES["resnet50"][0], **_TIMM_STEM, "act_layer": "silu", "attn_stages": (2, 3, 4),
                     "attn_every": (4, 2, 2), "attn_stage_kwargs": ({}, {"heads": 4}, {}, {})},
                    "timm's halonet50ts: tiered stem, ResNet-50 depths, SiLU, halo attention (b 8, h 3) in "
                    "stages 2-4"),
    "halonet29": ({**BACKBONES["resnet20"][0], "block": "bottleneck", "attn_stages": (2, 3), "heads": 4,
                   "block_size": 4, "halo_size": 2},
                  "HaloNet-29 (small images): 3 x 3 bottlenecks at widths 16-32-64, halo attention (b 4, h 2) in "
                  "stages 2 and 3"),
}


for _name, (_config, _description) in HALONET_MODELS.items():
    register_resnet(_name, _config, _PAPER, _description, HaloNet)
