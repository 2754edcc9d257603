"""The Swin Transformer: Liu et al. 2021, "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows"
(sec. 3.1, fig. 3).

    patch partition + linear embedding: p x p patches to C channels, LayerNorm          (H/p, W/p, C)
    stage 1: blocks alternating W-MSA and SW-MSA (eq. 3, :class:`~visionattn.layers.window_attention.SwinBlock`)
    stage i > 1: patch merging (2x2 neighbours concatenated, LayerNorm, linear 4C' -> 2C'), then blocks
    LayerNorm, global average pooling, linear classifier

Module and parameter names are timm's (>= 0.9: the patch merging at the start of stages 1-3, ``layers.i.
downsample``; ``patch_embed.proj/norm``, ``layers.i.blocks.j.norm1/attn.qkv/attn.relative_position_bias_table/
attn.proj/norm2/mlp.fc1/mlp.fc2``, ``norm``, ``head.fc``), so timm's checkpoints load with ``strict=True`` and give
timm's outputs (``benchmarks/record_timm_swin.py`` records what ``tests/models/test_swin.py`` compares). A file in
the official code's layout (merging at the end of stages 0-2, ``head.weight``, the index and mask buffers saved)
is converted when it loads (:meth:`SwinTransformer.adapt_pretrained_state`), and bias tables of another window
are resampled (bicubic, as timm).

Windows: M in every stage (Swin-T/S/B: 7), cut to a stage's map where the map built for ``img_size`` is smaller,
and no shift where the window covers the map (timm's and the official code's rule, which they apply silently;
here every block records it, ``shift_note``, and :meth:`SwinTransformer.window_plan` lists them). Swin-T at 224
has this in its last stage: the 7x7 map is one window, the shift is dropped.

Other image sizes: any input works. An image is zero-padded to a multiple of the patch; each block pads its map
to its window and masks the padding out of the attention (see :mod:`visionattn.layers.window_attention`; at
sizes where nothing is padded the output is timm's); patch merging pads an odd side with one zero row or column
(timm's way; the merge is linear, like a convolution's zero padding, so nothing is masked there). The windows
and shifts stay those of the built size, as in timm's ``dynamic_img_size`` mode.

Initialisation: the official code's and timm's: truncated normal (std 0.02) for every linear layer with zero
biases and for the bias tables; LayerNorms 1 and 0; the patch embedding keeps PyTorch's default. Stochastic
depth rises linearly over all blocks from 0 to ``drop_path_rate``. ``forward_features`` returns the tokens
(B, N, C) after the final norm, as this library's ViT does (timm 1.0 returns the same numbers as (B, H, W, C)).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from visionattn.errors import UsageError, check_choice, check_range
from visionattn.layers.helpers import check_bool, check_positive_int, pair
from visionattn.layers.relative_position import resample_bias_table
from visionattn.layers.window_attention import SwinBlock, WindowAttention
from visionattn.models.pretrained import PretrainedCfg
from visionattn.models.vit import NORM_STATS, PatchEmbed, PatchInput, take_indices

__all__ = ["SwinPatchEmbed", "PatchMerging", "SwinStage", "SwinTransformer", "convert_official_swin_state_dict"]

Size = tuple[int, int]
_TABLE = "relative_position_bias_table"


class SwinPatchEmbed(PatchEmbed):
    """ViT's patch embedding (a stride-p convolution) with Swin's LayerNorm after it, channels last.

    Shape:
        - Input: (B, in_chans, H, W), H and W multiples of the patch (see :meth:`pad`)
        - Output: (B, H / p, W / p, dim)
    """

    def __init__(self, in_chans: int, dim: int, patch_size: int) -> None:
        super().__init__(in_chans, dim, patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(rearrange(self.proj(x), "b d h w -> b h w d"))


class PatchMerging(nn.Module):
    """Swin's downsampling (sec. 3.1): each 2x2 group of neighbours concatenated to 4C channels, in the official
    code's order (x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]), LayerNorm, and a linear layer to
    ``out_dim`` (2C) without bias. An odd side first gets one zero row or column (timm).

    Shape:
        - Input: (B, H, W, C)
        - Output: (B, ceil(H / 2), ceil(W / 2), out_dim)
    """

    def __init__(self, dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.dim, self.out_dim = dim, 2 * dim if out_dim is None else out_dim
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, self.out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))
        return self.reduction(self.norm(rearrange(x, "b (h h2) (w w2) c -> b h w (w2 h2 c)", h2=2, w2=2)))


class SwinStage(nn.Module):
    """One stage: patch merging (but in the first stage), then ``depth`` blocks, W-MSA in the even ones and SW-MSA
    in the odd ones (fig. 3b), all built for the stage's map ``input_resolution``.

    Shape:
        - Input: (B, H, W, dim)
        - Output: (B, H', W', out_dim), H' = ceil(H / 2) after a merging, else H
    """

    def __init__(self, dim: int, out_dim: int, depth: int, heads: int, window_size: Size, input_resolution: Size,
                 downsample: bool, drop_path: Sequence[float], mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, impl: str = "auto") -> None:
        super().__init__()
        if not downsample and dim != out_dim:
            raise UsageError(f"SwinStage: without patch merging the width stays, got dim={dim}, out_dim={out_dim}")
        self.downsample: nn.Module = PatchMerging(dim, out_dim) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*(
            SwinBlock(out_dim, heads, window_size, shift=i % 2 == 1, input_resolution=input_resolution,
                      mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop, attn_drop=attn_drop, drop_path=rate,
                      impl=impl) for i, rate in enumerate(drop_path[:depth])))
        if len(self.blocks) != depth:
            raise UsageError(f"drop_path: one rate per block, got {len(drop_path)} for depth {depth}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class ClassifierHead(nn.Module):
    """The mean of the tokens, dropout, a linear classifier (timm's names: ``head.drop``, ``head.fc``).

    Shape:
        - Input: (B, N, C)
        - Output: (B, num_classes), or (B, C) with ``pre_logits`` or no classes
    """

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc: nn.Module = nn.Linear(in_features, num_classes) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(x.mean(1))
        return x if pre_logits else self.fc(x)


def _stage_args(depths: Sequence[int], heads: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    for name, values in (("depths", depths), ("heads", heads)):
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise UsageError(f"{name} must be a non-empty list with one whole number per stage, got {values!r}")
        for v in values:
            check_positive_int(name, v)
    if len(depths) != len(heads):
        raise UsageError(f"heads: one per stage, got {len(heads)} heads {tuple(heads)} for {len(depths)} stages "
                         f"(depths {tuple(depths)})")
    return tuple(depths), tuple(heads)


class SwinTransformer(PatchInput, nn.Module):
    """Swin: patch embedding, stages of (shifted) window attention with patch merging between them, a linear head.

    Args:
        img_size: the input (H, W) the windows are fitted to (see the module docstring).
        patch_size: p (Swin: 4).
        in_chans: image channels; num_classes: classifier outputs (0: none).
        dim: C, the first stage's width (Swin-T/S: 96, Swin-B: 128); stage i has C 2^i.
        depths: blocks per stage (Swin-T: 2, 2, 6, 2); heads: attention heads per stage (Swin-T: 3, 6, 12, 24).
        window_size: M (7).
        mlp_ratio: MLP width over the stage's (4); qkv_bias: biases on q, k, v.
        drop_rate: dropout before the classifier; proj_drop_rate: after the attention projection and in the
            MLPs; attn_drop_rate: on the attention weights.
        drop_path_rate: stochastic depth, rising linearly from 0 in the first block to this in the last (timm's
            default 0.1; the paper trains Swin-T / S / B from scratch with 0.2 / 0.3 / 0.5).
        strict_img_size: only accept ``img_size`` inputs.
        impl: the attention core's path, ``"auto"`` / ``"fused"`` / ``"explicit"``.
        norm_stats: the data the weights are for, recorded in ``pretrained_cfg`` (ViT's ``NORM_STATS``).

    Shape:
        - Input: (B, in_chans, H, W)
        - Output: (B, num_classes)
    """

    size_hint = "sides padded to the patch and the windows"

    supports_variable_size = True
    # the smallest input whose every parameter gets a gradient in the contract: at 32x32 Swin's last stage is one
    # token, whose softmax over one key passes nothing to q and k
    min_input_size = (3, 64, 64)

    def __init__(self, img_size: int | Size = 224, patch_size: int = 4, in_chans: int = 3, num_classes: int = 1000,
                 dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2), heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: int | Size = 7, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 strict_img_size: bool = False, impl: str = "auto", norm_stats: str = "imagenet") -> None:
        super().__init__()
        self.img_size, self.window_size = pair("img_size", img_size), pair("window_size", window_size)
        self.patch_size = check_positive_int("patch_size", patch_size)
        depths, heads = _stage_args(depths, heads)
        for name, value in (("in_chans", in_chans), ("dim", dim)):
            check_positive_int(name, value)
        check_positive_int("num_classes", num_classes, minimum=0)
        check_range("drop_path_rate", drop_path_rate, 0.0, 1.0, high_open=True)
        check_choice("norm_stats", norm_stats, NORM_STATS)
        self.strict_img_size = check_bool("strict_img_size", strict_img_size)
        self.in_chans, self.num_classes, self.embed_dim = in_chans, num_classes, dim
        self.input_size = (in_chans, *self.img_size)
        widths = [dim * 2 ** i for i in range(len(depths))]
        self.num_features = widths[-1]

        self.patch_embed = SwinPatchEmbed(in_chans, dim, self.patch_size)
        # timm's calculate_drop_path_rates, on the CPU whatever the default device (meta-device builds)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").split(list(depths))
        size, stages = self.feature_grid(self.img_size), []
        for i, (depth, n_heads) in enumerate(zip(depths, heads)):
            size = (math.ceil(size[0] / 2), math.ceil(size[1] / 2)) if i else size
            stages.append(SwinStage(widths[max(i - 1, 0)], widths[i], depth, n_heads, self.window_size, size,
                                    downsample=i > 0, drop_path=rates[i].tolist(), mlp_ratio=mlp_ratio,
                                    qkv_bias=qkv_bias, drop=proj_drop_rate, attn_drop=attn_drop_rate, impl=impl))
        self.layers = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = ClassifierHead(self.num_features, num_classes, drop_rate)
        self.feature_info: list[dict[str, Any]] = [
            {"module": f"layers.{i}", "num_chs": w, "reduction": self.patch_size * 2 ** i}
            for i, w in enumerate(widths)]
        mean, std, crop_pct, interpolation = NORM_STATS[norm_stats]
        self.pretrained_cfg = PretrainedCfg(input_size=self.input_size, mean=mean, std=std, crop_pct=crop_pct,
                                            interpolation=interpolation, num_classes=num_classes,
                                            first_conv="patch_embed.proj", classifier="head.fc")
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Truncated normal (std 0.02) linear layers with zero biases (the bias tables are initialised so by
        their layer); LayerNorms and the patch embedding keep PyTorch's defaults, as the official code."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def window_plan(self) -> list[dict[str, Any]]:
        """Every block's window, shift and the reason a shift or window was changed from M (``note``)."""
        return [{"block": f"layers.{i}.blocks.{j}", "window_size": b.window_size, "shift_size": b.shift_size,
                 "note": b.shift_note} for i, stage in enumerate(self.layers) for j, b in enumerate(stage.blocks)]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The patch embedding of the (padded) images, (B, H / p, W / p, C)."""
        self.check_input(x)
        return self.patch_embed(self.patch_embed.pad(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's tokens after ``norm``, (B, N, C) (timm: the same as (B, H, W, C))."""
        return self.norm(self.layers(self.embed(x))).flatten(1, 2)

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> Any:
        """The outputs of chosen stages, as timm's ``forward_intermediates`` (``norm`` applies to the last stage
        only, the one ``norm`` is sized for).

        Shape:
            - Input: (B, in_chans, H, W)
            - Output: a list of (B, C 2^i, ceil(H / (p 2^i)), ceil(W / (p 2^i))), or channels last for "NHWC";
              with the final tokens (B, N, C) first unless ``intermediates_only``
        """
        check_choice("output_fmt", output_fmt, ("NCHW", "NHWC"))
        take = take_indices(indices, len(self.layers))
        x, out, last = self.embed(x), [], len(self.layers) - 1
        for i, stage in enumerate(self.layers):
            x = stage(x)
            if i in take:
                y = self.norm(x) if norm and i == last else x
                out.append(y.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else y)
            if stop_early and i == take[-1]:
                break
        if intermediates_only:
            return out
        return (self.norm(x) if i == last else x).flatten(1, 2), out

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Average the tokens, dropout, classify; takes (B, N, C) tokens or timm's (B, H, W, C)."""
        return self.head(x.flatten(1, 2) if x.dim() == 4 else x, pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier for ``num_classes`` (0: none), freshly initialised, on the model's device and dtype;
        the pooling is the average (``global_pool`` None or ``"avg"``)."""
        check_positive_int("num_classes", num_classes, minimum=0)
        if global_pool is not None:
            check_choice("global_pool", global_pool, ("avg",))
        like = self.norm.weight
        fc = nn.Linear(self.num_features, num_classes, device=like.device, dtype=like.dtype) if num_classes \
            else nn.Identity()
        if num_classes:
            nn.init.trunc_normal_(fc.weight, std=0.02)
            nn.init.zeros_(fc.bias)
        self.head.fc, self.num_classes = fc, num_classes
        self.pretrained_cfg = self.pretrained_cfg.replace(num_classes=num_classes)

    def adapt_pretrained_state(self, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
        """A checkpoint fitted to this model before loading, and what was done, for the load report: a file in
        the official code's layout is converted (:func:`convert_official_swin_state_dict`), and a bias table of
        another (square) window is resampled to the block's window (bicubic; a checkpoint for window 7 into a
        model for window 12, or for an image size whose maps cut the window)."""
        notes = []
        if any(k.endswith(("relative_position_index", "attn_mask")) for k in state) or \
                "layers.0.downsample.reduction.weight" in state:
            state = convert_official_swin_state_dict(state)
            notes.append("the official Swin layout converted to timm's (merging at the start of stages 1-3, "
                         "head.fc; the index and mask buffers left out)")
        state = dict(state)
        done = _resample_tables(self, state)
        if done:
            notes.append(f"{len(done)} relative position bias tables resampled from the file's windows to the "
                         f"model's (bicubic): {', '.join(sorted(set(done)))}")
        return state, notes

    def info_groups(self) -> list[tuple[str, list[nn.Module]]]:
        """The rows of ``visionattn info``: the embedding, each stage, the head."""
        return [("embed", [self.patch_embed]), *((f"layers.{i}", [s]) for i, s in enumerate(self.layers)),
                ("head", [self.norm, self.head])]


def _resample_tables(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Resample, in ``state``, every bias table of a square window other than its block's; returns what was done
    ("7x7 -> 12x12"). A table whose window cannot be told (not a square of an odd side) is left for the loader's
    shape check to report."""
    attns = {name: m for name, m in model.named_modules() if isinstance(m, WindowAttention)}
    done = []
    for key, table in state.items():
        attn = attns.get(key[: -len(_TABLE) - 1]) if key.endswith("." + _TABLE) else None
        if attn is None or table.dim() != 2 or table.shape == attn.relative_position_bias_table.shape:
            continue
        side = math.isqrt(table.shape[0])
        if side * side != table.shape[0] or side % 2 == 0 or table.shape[1] != attn.heads:
            continue
        old = ((side + 1) // 2, (side + 1) // 2)
        state[key] = resample_bias_table(table, old, attn.window_size)
        done.append(f"{old[0]}x{old[1]} -> {attn.window_size[0]}x{attn.window_size[1]}")
    return done


def convert_official_swin_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict of the official Swin code (microsoft/Swin-Transformer) or of timm < 0.9 in timm's layout:
    the patch merging of the end of stage i becomes that of the start of stage i + 1
    (``layers.0.downsample.*`` -> ``layers.1.downsample.*``), ``head.*`` -> ``head.fc.*``, and the buffers the
    model computes itself (``relative_position_index``, ``attn_mask``) are left out. Tensors are not copied."""
    old_layout = "layers.0.downsample.reduction.weight" in state
    out = {}
    for key, value in state.items():
        if key.endswith(("relative_position_index", "attn_mask")):
            continue
        if old_layout:
            key = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", key)
            key = re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", key)
        out[key] = value
    return out
