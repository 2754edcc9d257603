"""The hybrid vision transformer: Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words", sec. 3.1 "Hybrid
Architecture" (reference 002: "image -> resnet, then apply transformer").

    z_0 = [x_class; flatten(W_p * F(x))] + E_pos,   then the ViT's blocks, norm and head (eq. 1-4),

``F`` the stem and first stages of one of our ResNets, ``W_p`` a 1x1 convolution from the stage's channels to
the transformer's width D (the paper's special case of patches of spatial size 1x1 of the feature map), each of
the h x w positions one token. Everything after the embedding is
:class:`~visionattn.models.vit.VisionTransformer`'s: class token, learned position embeddings (resampled for
another image size, bicubic with antialiasing), pre-norm :class:`~visionattn.layers.transformer.TransformerBlock`
s, ``norm``, token or average pooling, ``head``. Module names are timm's hybrid ViT's (``patch_embed.backbone``
holding the ResNet's ``conv1``, ``bn1``, ``layer1`` ..., ``patch_embed.proj``, then ``cls_token``, ``pos_embed``,
``blocks``, ``norm``, ``head``): built as ResNet-50-D stages 1-3 with D = 768, 8 blocks of 8 heads, MLP ratio 3
(``stem_type="deep", stem_width=32, backbone_kwargs={"avg_down": True}, dim=768, depth=8, heads=8,
mlp_ratio=3.0``) it is timm's ``vit_small_resnet50d_s16_224`` (57,531,976 parameters): its state dict loads with
``strict=True`` and gives the same logits.

Initialisation: the ViT's (truncated normal for linear layers and position embeddings), and every convolution,
the 1x1 projection included, He-initialised (fan-out, ReLU gain) as the ResNets' are.

Registered: ``vit_small_r50_s16_224`` (ResNet-50's stem and stages 1-3: stride 16, 1024 channels, 14x14 tokens
at 224 as the paper's R50+ViT, which however moves stage 4's blocks into stage 3, ``layers=(3, 4, 9)``, and uses
GroupNorm with standardised weights; here ResNet-50's own ``(3, 4, 6)`` with BatchNorm, as timm's ``resnet50d``
hybrids; 1x1 projection to 384; ViT-S: 12 blocks of 6 heads; **30,692,264** parameters at
224 with 1000 classes: 8,543,296 of ResNet-50 up to ``layer3``, 393,600 of the projection, 21,755,368 of ViT-S
without its patch embedding) and ``vit_r20_28`` (ResNet-20's small-image stem and its three stages on 1x28x28: stride
4, 64 channels, 7x7 = 49 tokens; D = 64, 4 blocks of 4 heads, MLP ratio 2; 10 classes; 413,626 parameters).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from einops import rearrange
from torch import nn

from visionattn.errors import UsageError
from visionattn.models.plug import init_conv
from visionattn.models.resnet import ResNet
from visionattn.models.vit import VisionTransformer
from visionattn.registry import register_model

__all__ = ["HybridEmbed", "HybridVisionTransformer", "HYBRIDS"]

_PAPER = "Dosovitskiy et al. 2021, An Image is Worth 16x16 Words (sec. 3.1, hybrid)"
_RESERVED = frozenset({"num_classes", "in_chans", "img_size", "block", "layers", "widths", "stem_type",
                       "stem_width", "small_input", "zero_init_last"})


class HybridEmbed(nn.Module):
    """Tokens from a CNN: the backbone's last feature map, a 1x1 convolution to ``dim``, one token per position
    (row-major), in place of the ViT's :class:`~visionattn.models.vit.PatchEmbed`.

    Shape:
        - Input: (B, in_chans, H, W)
        - Output: (B, h * w, dim), h = ceil(H / r), w = ceil(W / r) for the backbone's reduction r
    """

    def __init__(self, backbone: ResNet, dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.proj = nn.Conv2d(backbone.num_features, dim, 1)
        self.patch_size = backbone.feature_info[-1]["reduction"]  # one token per r x r pixels

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """No padding: the convolutions take any size (their "same" padding gives ceil(H / r))."""
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.proj(self.backbone.forward_features(x)), "b d h w -> b (h w) d")


class HybridVisionTransformer(VisionTransformer):
    """ViT on the feature map of ResNet stages (a ResNet of ``layers`` / ``widths`` without its classifier).

    Args:
        block, layers, widths, stem_type, stem_width, small_input, zero_init_last: the backbone's
            :class:`~visionattn.models.resnet.ResNet` arguments (its stages are all kept: give the first three
            of ResNet-50, ``layers=(3, 4, 6)``, for stride 16).
        backbone_kwargs: any other ResNet argument (e.g. ``avg_down``, ``groups``, ``attn``).
        img_size, in_chans, num_classes: the input the position embeddings are learned for, and the head.
        dim, depth, heads, mlp_ratio, qkv_bias, class_token, global_pool, fc_norm, drop_rate, pos_drop_rate,
            proj_drop_rate, attn_drop_rate, drop_path_rate, strict_img_size, kernel, norm_eps: the
            transformer's, as for :class:`~visionattn.models.vit.VisionTransformer` (``patch_size`` is the
            backbone's reduction; the token grid of an (H, W) image is (ceil(H / r), ceil(W / r))).

    Shape:
        - Input: (B, in_chans, H, W)
        - Output: (B, num_classes)
    """

    supports_variable_size = True

    def __init__(self, block: str = "bottleneck", layers: Sequence[int] = (3, 4, 6),
                 widths: Sequence[int] = (64, 128, 256), stem_type: str = "basic", stem_width: int = 64,
                 small_input: bool = False, zero_init_last: bool = False,
                 backbone_kwargs: Mapping[str, Any] | None = None, img_size: int | tuple[int, int] = 224,
                 in_chans: int = 3, num_classes: int = 1000, dim: int = 384, depth: int = 12, heads: int = 6,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, class_token: bool = True,
                 global_pool: str = "token", fc_norm: bool | None = None, drop_rate: float = 0.0,
                 pos_drop_rate: float = 0.0, proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, strict_img_size: bool = False, kernel: str = "softmax",
                 norm_eps: float = 1e-6) -> None:
        extra = dict(backbone_kwargs or {})
        taken = sorted(set(extra) & _RESERVED)
        if taken:
            raise UsageError(f"backbone_kwargs: {taken[0]!r} is an argument of the hybrid itself; pass it directly")
        backbone = ResNet(block, layers, widths, num_classes=0, in_chans=in_chans, img_size=img_size,
                          stem_type=stem_type, stem_width=stem_width, small_input=small_input,
                          zero_init_last=zero_init_last, **extra)
        embed = HybridEmbed(backbone, dim)
        super().__init__(img_size=img_size, patch_size=embed.patch_size, in_chans=in_chans, num_classes=num_classes,
                         dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                         class_token=class_token, global_pool=global_pool, fc_norm=fc_norm, drop_rate=drop_rate,
                         pos_drop_rate=pos_drop_rate, proj_drop_rate=proj_drop_rate,
                         attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
                         strict_img_size=strict_img_size, kernel=kernel, norm_eps=norm_eps,
                         embed=embed)  # in place of the ViT's p x p patches: the token grid is the same
        self.zero_init_last = zero_init_last
        self.pretrained_cfg = backbone.pretrained_cfg.replace(num_classes=num_classes,
                                                              first_conv=f"patch_embed.backbone.{_first(backbone)}",
                                                              classifier="head")

    @torch.no_grad()
    def init_weights(self) -> None:
        """The ViT's initialisation, then He (fan-out) for every convolution and the backbone's own BN rule."""
        super().init_weights()
        if isinstance(self.patch_embed, HybridEmbed):  # (the ViT's constructor calls this, once)
            self.patch_embed.backbone.init_weights()
            init_conv(self.patch_embed.proj)
            nn.init.zeros_(self.patch_embed.proj.bias)

    def info_groups(self) -> list[tuple[str, list[nn.Module]]]:
        """The rows of ``visionattn info``: the backbone's stem and stages, the projection, each block, the head."""
        backbone = [(f"backbone.{n}", m) for n, m in self.patch_embed.backbone.info_groups() if n != "head"]
        return [*backbone, ("embed", [self.patch_embed.proj, self.pos_drop]), *super().info_groups()[1:]]


def _first(backbone: ResNet) -> str:
    return backbone.pretrained_cfg.first_conv or "conv1"


_R50_S16: dict[str, Any] = {"block": "bottleneck", "layers": (3, 4, 6), "widths": (64, 128, 256)}
_R20: dict[str, Any] = {"block": "basic", "layers": (3, 3, 3), "widths": (16, 32, 64), "stem_width": 16,
                        "small_input": True}

# name: (configuration, description)
HYBRIDS: dict[str, tuple[dict[str, Any], str]] = {
    "vit_small_r50_s16_224": ({**_R50_S16, "img_size": 224, "in_chans": 3, "num_classes": 1000, "dim": 384,
                               "depth": 12, "heads": 6},
                              "R50+ViT-S/16 hybrid: ResNet-50 stem and stages 1-3 (14x14 tokens at 224), ViT-S"),
    "vit_r20_28": ({**_R20, "img_size": 28, "in_chans": 1, "num_classes": 10, "dim": 64, "depth": 4, "heads": 4,
                    "mlp_ratio": 2.0},
                   "R20+ViT hybrid for small images: ResNet-20's three stages (7x7 tokens), 4 blocks of width 64"),
}

for _name, (_config, _description) in HYBRIDS.items():
    register_model(_name, paper=_PAPER, description=_description, family="vit-hybrid",
                   defaults=_config)(HybridVisionTransformer)
