"""The vision transformer: Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words" (eq. 1-4).

    z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos,           (eq. 1: patch embedding, class token, positions)
    z_l = TransformerBlock(z_{l-1}),  l = 1..L                (eq. 2-3, pre-norm)
    y = head(LN(z_L^0))                                       (eq. 4; or the mean of the patch tokens)

The patch embedding is a p x p convolution of stride p (equal to flattening patches and a linear layer). Module
and parameter names are timm's ``VisionTransformer`` (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.i``, ``norm``, ``fc_norm``, ``head``), so a timm ViT checkpoint loads with ``strict=True``.
Initialisation follows timm's default: truncated normal (std 0.02) for linear layers and the position
embeddings, zero biases, std 1e-6 for the class token; the patch embedding is LeCun-normal (the official code).

Other image sizes: the learned position embeddings of the ``img_size`` grid are resampled to the input's grid
(bicubic with antialiasing, as timm; :func:`visionattn.models.position_embedding.resample_pos_embed`) in the
forward pass, unless ``strict_img_size``; an image whose sides are not multiples of the patch is zero-padded on
the right and bottom (with ``strict_img_size`` it is an error).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from visionattn.errors import UsageError, check_choice, check_range
from visionattn.layers.helpers import check_bool, check_positive_int, pair
from visionattn.layers.transformer import TransformerBlock
from visionattn.models.position_embedding import resample_pos_embed
from visionattn.models.pretrained import PretrainedCfg

__all__ = ["PatchEmbed", "VisionTransformer", "POOLS"]

POOLS = ("token", "avg")


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches, each projected to ``dim`` channels (ViT eq. 1, E): a stride-p convolution.

    Shape:
        - Input: (B, in_chans, H, W), H and W multiples of the patch (see :meth:`pad`)
        - Output: (B, N, dim) with N = (H / p) * (W / p)
    """

    def __init__(self, in_chans: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = check_positive_int("patch_size", patch_size)
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad the right and bottom to the next multiple of the patch."""
        p = self.patch_size
        return F.pad(x, (0, (-x.shape[-1]) % p, 0, (-x.shape[-2]) % p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """ViT: patches, a class token and learned positions, pre-norm transformer blocks, a linear head.

    Args:
        img_size: the input (H, W) the position embeddings are learned for.
        patch_size: p.
        in_chans: image channels; num_classes: classifier outputs (0: none).
        dim: token width D; depth: blocks L; heads: attention heads; mlp_ratio: MLP width / D.
        qkv_bias: biases on q, k, v.
        class_token: prepend the learned class token (ViT); without it ``global_pool`` must be ``"avg"``.
        global_pool: ``"token"`` (the class token's output, ViT) or ``"avg"`` (mean of the patch tokens; then a
            LayerNorm ``fc_norm`` follows the mean instead of ``norm`` preceding it, as in timm).
        drop_rate: dropout on the embeddings, after projections and in the MLPs; attn_drop_rate: on the
            attention weights; pos_drop_rate: on the embedded tokens (default: drop_rate).
        drop_path_rate: stochastic depth, rising linearly from 0 in the first block to this in the last.
        strict_img_size: only accept ``img_size`` inputs (no resampling, no padding).
        kernel: the attention kernel, ``"softmax"`` or ``"linear"``.

    Shape:
        - Input: (B, in_chans, H, W)
        - Output: (B, num_classes)
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, dim: int = 768, depth: int = 12, heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, class_token: bool = True, global_pool: str = "token", drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, pos_drop_rate: float | None = None, drop_path_rate: float = 0.0,
                 strict_img_size: bool = False, kernel: str = "softmax", norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.img_size = pair("img_size", img_size)
        for name, value in (("in_chans", in_chans), ("dim", dim), ("depth", depth), ("heads", heads)):
            check_positive_int(name, value)
        check_positive_int("num_classes", num_classes, minimum=0)
        check_choice("global_pool", global_pool, POOLS)
        check_bool("class_token", class_token)
        check_bool("strict_img_size", strict_img_size)
        if global_pool == "token" and not class_token:
            raise UsageError("global_pool='token' needs class_token=True (there is no class token to read); use "
                             "global_pool='avg'")
        check_range("drop_path_rate", drop_path_rate, 0.0, 1.0, high_open=True)
        patch = check_positive_int("patch_size", patch_size)
        if strict_img_size and (self.img_size[0] % patch or self.img_size[1] % patch):
            raise UsageError(f"img_size {self.img_size} is not a multiple of patch_size {patch} (strict_img_size "
                             "allows no padding)")
        self.in_chans, self.num_classes, self.global_pool = in_chans, num_classes, global_pool
        self.input_size = (in_chans, *self.img_size)
        self.strict_img_size, self.num_features = strict_img_size, dim
        self.grid = (math.ceil(self.img_size[0] / patch), math.ceil(self.img_size[1] / patch))
        self.num_prefix_tokens = 1 if class_token else 0

        self.patch_embed = PatchEmbed(in_chans, dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + self.grid[0] * self.grid[1], dim))
        self.pos_drop = nn.Dropout(drop_rate if pos_drop_rate is None else pos_drop_rate)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # no tensor: meta-device builds
        self.blocks = nn.Sequential(*(TransformerBlock(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                                                       drop=drop_rate, attn_drop=attn_drop_rate, drop_path=r,
                                                       kernel=kernel, norm_eps=norm_eps) for r in rates))
        use_fc_norm = global_pool == "avg"
        self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(dim, eps=norm_eps)
        self.fc_norm = nn.LayerNorm(dim, eps=norm_eps) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head: nn.Module = nn.Linear(dim, num_classes) if num_classes else nn.Identity()
        self.feature_info: list[dict[str, Any]] = [
            {"module": f"blocks.{i}", "num_chs": dim, "reduction": patch} for i in range(depth)]
        self.pretrained_cfg = PretrainedCfg(input_size=self.input_size, mean=(0.5,) * 3 if in_chans == 3 else
                                            (0.5,) * in_chans, std=(0.5,) * in_chans, crop_pct=0.9,
                                            interpolation="bicubic", num_classes=num_classes,
                                            first_conv="patch_embed.proj", classifier="head")
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """timm's default ViT initialisation (see the module docstring)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        proj = self.patch_embed.proj
        nn.init.trunc_normal_(proj.weight, std=math.sqrt(1.0 / (proj.weight[0].numel())) / 0.87962566)
        nn.init.zeros_(proj.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)

    def check_input(self, x: torch.Tensor) -> None:
        """A UsageError unless ``x`` is (B, in_chans, H, W), of ``img_size`` when ``strict_img_size``."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise UsageError(f"the network expects images (B, {self.in_chans}, H, W), got a tensor of shape "
                             f"{tuple(x.shape)}; set in_chans to match")
        if self.strict_img_size and tuple(x.shape[-2:]) != self.img_size:
            raise UsageError(f"strict_img_size: the network takes {self.img_size[0]}x{self.img_size[1]} images, "
                             f"got {x.shape[-2]}x{x.shape[-1]}; build it with img_size={tuple(x.shape[-2:])} or "
                             "strict_img_size=False (position embeddings resampled)")

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """The position embeddings for a ``grid`` of patches (resampled from the built grid if it differs)."""
        if grid == self.grid:
            return self.pos_embed
        return resample_pos_embed(self.pos_embed, grid, self.grid, self.num_prefix_tokens)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 1: patch tokens, the class token and the position embeddings, (B, prefix + N, D)."""
        self.check_input(x)
        x = self.patch_embed.pad(x)
        grid = (x.shape[-2] // self.patch_embed.patch_size, x.shape[-1] // self.patch_embed.patch_size)
        tokens = self.patch_embed(x)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return self.pos_drop(tokens + self.pos_embed_for(grid))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's tokens after ``norm``, (B, prefix + N, D)."""
        return self.norm(self.blocks(self.embed(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool (class token or mean of the patch tokens), norm, dropout, classify.

        Shape:
            - Input: (B, prefix + N, D)
            - Output: (B, num_classes), or (B, D) with ``pre_logits`` or ``num_classes`` = 0
        """
        x = x[:, self.num_prefix_tokens:].mean(1) if self.global_pool == "avg" else x[:, 0]
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """A new classifier for ``num_classes`` (0: none), freshly initialised."""
        check_positive_int("num_classes", num_classes, minimum=0)
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        if num_classes:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        self.pretrained_cfg = self.pretrained_cfg.replace(num_classes=num_classes)

    def info_groups(self) -> list[tuple[str, list[nn.Module]]]:
        """The rows of ``visionattn info``: the embedding, each block, the head."""
        embed = [self.patch_embed, self.pos_drop]
        head = [self.norm, self.fc_norm, self.head_drop, self.head]
        return [("embed", embed), *((f"blocks.{i}", [b]) for i, b in enumerate(self.blocks)), ("head", head)]
