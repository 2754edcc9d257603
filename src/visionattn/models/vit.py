"""The vision transformer: Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words" (eq. 1-4).

    z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos,           (eq. 1: patch embedding, class token, positions)
    z_l = TransformerBlock(z_{l-1}),  l = 1..L                (eq. 2-3, pre-norm)
    y = head(LN(z_L^0))                                       (eq. 4; or the mean of the patch tokens)

The patch embedding is a p x p convolution of stride p (equal to flattening patches and a linear layer). Module
and parameter names, argument semantics and defaults are timm's ``VisionTransformer`` (timm 1.0; ``dim`` and
``heads`` are its ``embed_dim`` and ``num_heads``): ``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.i``, ``norm``, ``fc_norm``, ``head``, so a timm ViT checkpoint loads with ``strict=True`` and gives the
same outputs (``benchmarks/record_timm_layout.py`` records its layout, ``tests/models/test_vit.py`` checks it).
Dropout follows timm too: ``drop_rate`` is the head's dropout only, ``pos_drop_rate`` acts on the embedded tokens,
``proj_drop_rate`` after the attention projection and in the MLPs (the paper's dropout "after every dense layer
except the qkv-projections and directly after adding positional- to patch embeddings", appendix B.1, is
``pos_drop_rate = proj_drop_rate = 0.1``). LayerNorm epsilon 1e-6 (timm's and the official JAX code's).

Initialisation: timm's default for everything timm initialises (truncated normal, std 0.02, for every linear
layer with zero biases; std 0.02 for the position embeddings; std 1e-6 for the class token); the patch embedding,
which timm's default leaves at PyTorch's uniform initialisation, is LeCun normal (truncated at two standard
deviations, as ``flax.linen.Conv``'s default in the official code and timm's ``jax`` mode) with a zero bias.

Other image sizes: the learned position embeddings of the ``img_size`` grid are resampled to the input's grid
(bicubic with antialiasing, as timm; :func:`visionattn.models.position_embedding.resample_pos_embed`) in the
forward pass, and a checkpoint's are resampled to the model's grid when it loads (:meth:`adapt_pretrained_state`).
An image whose sides are not multiples of the patch is zero-padded on the right and bottom (timm's
``dynamic_img_pad``). With ``strict_img_size`` only ``img_size`` inputs are accepted (timm's default).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from visionattn.errors import UsageError, check_choice, check_range
from visionattn.layers.helpers import check_bool, check_images, check_positive_int, pair
from visionattn.layers.transformer import TransformerBlock
from visionattn.models.features import resolve_out_indices
from visionattn.models.position_embedding import resample_pos_embed
from visionattn.models.pretrained import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PretrainedCfg,
)

__all__ = ["PatchEmbed", "PatchInput", "VisionTransformer", "POOLS", "NORM_STATS", "lecun_normal_", "take_indices"]

POOLS = ("token", "avg")
# the data a model's weights are for: (mean, std, crop_pct, interpolation) of its pretrained_cfg.
# "inception" is timm's ViT default (mean = std = 0.5: the Google checkpoints), "imagenet" the DeiT-style one.
NORM_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...], float, str]] = {
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 0.9, "bicubic"),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD, 0.9, "bicubic"),
    "fashion_mnist": (FASHION_MNIST_MEAN, FASHION_MNIST_STD, 1.0, "bilinear"),
}


@torch.no_grad()
def lecun_normal_(weight: torch.Tensor) -> torch.Tensor:
    """LeCun normal, truncated at +-2 standard deviations and rescaled to keep variance 1 / fan_in (the JAX rule:
    ``variance_scaling(1, "fan_in", "truncated_normal")``; 0.8796 is the std of a unit normal cut at +-2)."""
    std = math.sqrt(1.0 / weight[0].numel()) / 0.87962566103423978
    return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


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
        right, bottom = (-x.shape[-1]) % p, (-x.shape[-2]) % p
        return F.pad(x, (0, right, 0, bottom)) if right or bottom else x  # F.pad copies even when it adds nothing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.proj(x), "b d h w -> b (h w) d")


class PatchInput:
    """The input rules of a patch-embedding network (ViT, Swin): the patch grid of an image and the check of an
    input against ``in_chans`` and, with ``strict_img_size``, ``img_size``. ``size_hint`` says what a
    non-strict model does with another size."""

    patch_size: int
    in_chans: int
    img_size: tuple[int, int]
    strict_img_size: bool
    size_hint = "position embeddings resampled, sides padded to the patch"

    def feature_grid(self, size: Sequence[int]) -> tuple[int, int]:
        """The grid of patch tokens for an (H, W) input: (ceil(H / p), ceil(W / p)), padding included."""
        return (math.ceil(size[0] / self.patch_size), math.ceil(size[1] / self.patch_size))

    def check_input(self, x: torch.Tensor) -> None:
        """A UsageError unless ``x`` is (B, in_chans, H, W), of ``img_size`` when ``strict_img_size``."""
        check_images(x, self.in_chans)
        if self.strict_img_size and tuple(x.shape[-2:]) != self.img_size:
            raise UsageError(f"strict_img_size: the network takes {self.img_size[0]}x{self.img_size[1]} images, "
                             f"got {x.shape[-2]}x{x.shape[-1]}; build it with img_size={tuple(x.shape[-2:])} or "
                             f"strict_img_size=False ({self.size_hint})")


class VisionTransformer(PatchInput, nn.Module):
    """ViT: patches, a class token and learned positions, pre-norm transformer blocks, a linear head.

    Args:
        img_size: the input (H, W) the position embeddings are learned for.
        patch_size: p.
        in_chans: image channels; num_classes: classifier outputs (0: none).
        global_pool: ``"token"`` (the class token's output, ViT eq. 4) or ``"avg"`` (mean of the patch tokens).
        dim: token width D; depth: blocks L; heads: attention heads; mlp_ratio: MLP width / D.
        qkv_bias: biases on q, k, v.
        class_token: prepend the learned class token (ViT); without it ``global_pool`` must be ``"avg"``.
        fc_norm: the final LayerNorm after pooling (``fc_norm``) instead of before it on every token (``norm``);
            None: after, exactly when ``global_pool="avg"`` (timm's rule).
        drop_rate: dropout before the head; pos_drop_rate: on the embedded tokens; proj_drop_rate: after the
            attention projection and in the MLPs; attn_drop_rate: on the attention weights.
        drop_path_rate: stochastic depth, rising linearly from 0 in the first block to this in the last.
        strict_img_size: only accept ``img_size`` inputs (no resampling, no padding).
        kernel: the attention kernel, ``"softmax"`` or ``"linear"``.
        norm_eps: LayerNorm epsilon.
        norm_stats: the data the weights are for, recorded in ``pretrained_cfg`` (:data:`NORM_STATS`).
        embed: the patch embedding, in place of :class:`PatchEmbed` (timm's ``embed_layer``): a module from
            (B, in_chans, H, W) to (B, grid_h * grid_w, dim) tokens on the grid ``patch_size`` gives, with
            PatchEmbed's ``pad`` (the hybrid's CNN stages: :mod:`visionattn.models.hybrid`).

    Shape:
        - Input: (B, in_chans, H, W)
        - Output: (B, num_classes)
    """

    supports_variable_size = True

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, global_pool: str = "token", dim: int = 768, depth: int = 12,
                 heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True, class_token: bool = True,
                 fc_norm: bool | None = None, drop_rate: float = 0.0, pos_drop_rate: float = 0.0,
                 proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 strict_img_size: bool = False, kernel: str = "softmax", norm_eps: float = 1e-6,
                 norm_stats: str = "inception", embed: nn.Module | None = None) -> None:
        super().__init__()
        self.img_size = pair("img_size", img_size)
        patch = check_positive_int("patch_size", patch_size)
        self._check_args(in_chans, num_classes, global_pool, dim, depth, heads, class_token, fc_norm,
                         drop_path_rate, strict_img_size, norm_stats)
        if strict_img_size and (self.img_size[0] % patch or self.img_size[1] % patch):
            raise UsageError(f"img_size: {self.img_size[0]}x{self.img_size[1]} is not a multiple of patch_size "
                             f"{patch}, and strict_img_size=True allows no padding; use a multiple of {patch} or "
                             "strict_img_size=False")
        self.in_chans, self.num_classes, self.global_pool = in_chans, num_classes, global_pool
        self.input_size = (in_chans, *self.img_size)
        self.strict_img_size, self.patch_size = strict_img_size, patch
        self.num_features = self.embed_dim = dim
        self.num_prefix_tokens = 1 if class_token else 0
        self.grid = self.feature_grid(self.img_size)

        self.patch_embed = PatchEmbed(in_chans, dim, patch) if embed is None else embed
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + self.grid[0] * self.grid[1], dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        # timm's calculate_drop_path_rates, on the CPU whatever the default device (meta-device builds)
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.Sequential(*(TransformerBlock(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                                                       drop=proj_drop_rate, attn_drop=attn_drop_rate, drop_path=r,
                                                       kernel=kernel, norm_eps=norm_eps) for r in rates))
        use_fc_norm = global_pool == "avg" if fc_norm is None else fc_norm
        self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(dim, eps=norm_eps)
        self.fc_norm = nn.LayerNorm(dim, eps=norm_eps) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head: nn.Module = nn.Linear(dim, num_classes) if num_classes else nn.Identity()
        self.feature_info: list[dict[str, Any]] = [
            {"module": f"blocks.{i}", "num_chs": dim, "reduction": patch} for i in range(depth)]
        mean, std, crop_pct, interpolation = NORM_STATS[norm_stats]
        self.pretrained_cfg = PretrainedCfg(input_size=self.input_size, mean=mean, std=std, crop_pct=crop_pct,
                                            interpolation=interpolation, num_classes=num_classes,
                                            first_conv="patch_embed.proj", classifier="head")
        self.init_weights()

    @staticmethod
    def _check_args(in_chans: int, num_classes: int, global_pool: str, dim: int, depth: int, heads: int,
                    class_token: bool, fc_norm: bool | None, drop_path_rate: float, strict_img_size: bool,
                    norm_stats: str) -> None:
        for name, value in (("in_chans", in_chans), ("dim", dim), ("depth", depth), ("heads", heads)):
            check_positive_int(name, value)
        check_positive_int("num_classes", num_classes, minimum=0)
        check_choice("global_pool", global_pool, POOLS)
        check_choice("norm_stats", norm_stats, NORM_STATS)
        check_bool("class_token", class_token)
        check_bool("strict_img_size", strict_img_size)
        if fc_norm is not None:
            check_bool("fc_norm", fc_norm)
        if global_pool == "token" and not class_token:
            raise UsageError("global_pool: 'token' needs class_token=True (there is no class token to read); use "
                             "global_pool='avg'")
        check_range("drop_path_rate", drop_path_rate, 0.0, 1.0, high_open=True)

    @torch.no_grad()
    def init_weights(self) -> None:
        """timm's default ViT initialisation, LeCun normal for the patch embedding (see the module docstring)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if isinstance(self.patch_embed, PatchEmbed):
            lecun_normal_(self.patch_embed.proj.weight)
            nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)

    def no_weight_decay(self) -> set[str]:
        """The parameters timm (and the official code) train without weight decay: the position embeddings and the
        class token (when there is one); :func:`visionattn.recipe.build_optimizer` reads them."""
        return {"pos_embed"} | ({"cls_token"} if self.cls_token is not None else set())

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """The position embeddings for a ``grid`` of patches (resampled from the built grid if it differs)."""
        if tuple(grid) == self.grid:
            return self.pos_embed
        return resample_pos_embed(self.pos_embed, grid, self.grid, self.num_prefix_tokens)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 1: patch tokens, the class token and the position embeddings, (B, prefix + N, D)."""
        self.check_input(x)
        x = self.patch_embed.pad(x)
        tokens = self.patch_embed(x)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return self.pos_drop(tokens + self.pos_embed_for(self.feature_grid(x.shape[-2:])))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's tokens after ``norm``, (B, prefix + N, D)."""
        return self.norm(self.blocks(self.embed(x)))

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> Any:
        """The outputs of chosen blocks, as timm's ``forward_intermediates``.

        Args:
            x: images.
            indices: blocks (= ``feature_info`` entries): a sequence (negative from the end), an int n for the
                last n, or None for all.
            norm: pass each through ``norm``.
            stop_early: run no block after the last one asked for.
            output_fmt: ``"NCHW"`` (patch tokens as a map) or ``"NLC"`` (patch tokens as a sequence).
            intermediates_only: return only the list (else ``(forward_features-like tokens, list)``).

        Shape:
            - Input: (B, in_chans, H, W)
            - Output: a list of (B, D, ceil(H / p), ceil(W / p)) (prefix tokens dropped), or (B, N, D) for NLC
        """
        check_choice("output_fmt", output_fmt, ("NCHW", "NLC"))
        take = take_indices(indices, len(self.blocks))
        grid = self.feature_grid(x.shape[-2:])
        tokens, out = self.embed(x), []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i in take:
                out.append(self.norm(tokens) if norm else tokens)
            if stop_early and i == take[-1]:
                break
        out = [t[:, self.num_prefix_tokens:] for t in out]
        if output_fmt == "NCHW":
            out = [rearrange(t, "b (h w) d -> b d h w", h=grid[0], w=grid[1]).contiguous() for t in out]
        return out if intermediates_only else (self.norm(tokens), out)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool (class token or mean of the patch tokens), ``fc_norm``, dropout, classify (eq. 4).

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

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier for ``num_classes`` (0: none), freshly initialised, on the model's device and dtype;
        ``global_pool`` changes the pooling (the norm stays where it is, as in timm)."""
        check_positive_int("num_classes", num_classes, minimum=0)
        if global_pool is not None:
            check_choice("global_pool", global_pool, POOLS)
            if global_pool == "token" and self.cls_token is None:
                raise UsageError("global_pool: 'token' needs a class token; this model has none (class_token=False)")
            self.global_pool = global_pool
        self.num_classes = num_classes
        like = self.pos_embed
        self.head = nn.Linear(self.num_features, num_classes, device=like.device, dtype=like.dtype) \
            if num_classes else nn.Identity()
        if num_classes:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        self.pretrained_cfg = self.pretrained_cfg.replace(num_classes=num_classes)

    def adapt_pretrained_state(self, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
        """A checkpoint's tensors fitted to this model before loading, and what was done, for the load report:
        a ``pos_embed`` of another (square) grid of patches is resampled to the model's grid (a 224 checkpoint
        into a model built for 384, or for small images). Called by :func:`~visionattn.models.pretrained.
        load_pretrained`; anything it cannot fit is left for the shape check to report."""
        pe = state.get("pos_embed")
        if not isinstance(pe, torch.Tensor) or pe.dim() != 3 or pe.shape == self.pos_embed.shape:
            return state, []
        n = pe.shape[1] - self.num_prefix_tokens
        side = math.isqrt(max(n, 0))
        if n <= 0 or side * side != n or pe.shape[2] != self.pos_embed.shape[2]:
            return state, []
        state = {**state, "pos_embed": resample_pos_embed(pe, self.grid, (side, side), self.num_prefix_tokens)}
        return state, [f"pos_embed resampled from the file's {side}x{side} grid of patches to the model's "
                       f"{self.grid[0]}x{self.grid[1]} (bicubic, antialiased)"]

    def info_groups(self) -> list[tuple[str, list[nn.Module]]]:
        """The rows of ``visionattn info``: the embedding, each block, the head."""
        embed = [self.patch_embed, self.pos_drop]
        head = [self.norm, self.fc_norm, self.head_drop, self.head]
        return [("embed", embed), *((f"blocks.{i}", [b]) for i, b in enumerate(self.blocks)), ("head", head)]


def take_indices(indices: int | Sequence[int] | None, count: int) -> tuple[int, ...]:
    """timm's ``feature_take_indices``: an int n takes the last n blocks; a sequence those blocks; None all."""
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 1 <= indices <= count:
            raise UsageError(f"indices: got {indices}, needed a count of last blocks in [1, {count}] (or a sequence "
                             "of block indices)")
        return tuple(range(count - indices, count))
    return resolve_out_indices(indices, count)
