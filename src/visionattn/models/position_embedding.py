"""Learned absolute position embeddings on a grid of patches, resampled to another grid.

A ViT learns one embedding per patch position of its training grid; for another image size the grid of vectors
is treated as a D-channel image and resized, bicubic with antialiasing as timm does (antialiasing matters when
shrinking: plain bilinear or bicubic interpolation then skips vectors instead of averaging them). The prefix
tokens' embeddings (class token) are kept as they are. The arithmetic runs in float32 whatever the dtype (as
timm's ``resample_abs_pos_embed``, which this equals: ``tests/models/test_vit.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from visionattn.errors import UsageError
from visionattn.layers.helpers import pair

__all__ = ["resample_pos_embed"]


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int],
                       num_prefix_tokens: int = 1) -> torch.Tensor:
    """``pos_embed`` of an ``old_grid`` (rows, cols) of patches resampled to ``new_grid`` (the same tensor when
    the grids are equal), the first ``num_prefix_tokens`` entries unchanged.

    Shape:
        - Input: (1, prefix + old_rows * old_cols, D)
        - Output: (1, prefix + new_rows * new_cols, D)
    """
    new_grid, old_grid = pair("new_grid", tuple(new_grid)), pair("old_grid", tuple(old_grid))
    if pos_embed.dim() != 3:
        raise UsageError(f"pos_embed: needed a (1, prefix + rows * cols, D) tensor, got shape {tuple(pos_embed.shape)}")
    n = pos_embed.shape[1] - num_prefix_tokens
    if n != old_grid[0] * old_grid[1]:
        raise UsageError(f"pos_embed: {n} patch positions do not form the grid {old_grid[0]}x{old_grid[1]}")
    if tuple(new_grid) == tuple(old_grid):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dtype = grid.dtype
    grid = rearrange(grid, "b (h w) d -> b d h w", h=old_grid[0], w=old_grid[1]).float()
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", antialias=True, align_corners=False)
    grid = rearrange(grid, "b d h w -> b (h w) d").to(dtype)
    return torch.cat([prefix, grid], dim=1)
