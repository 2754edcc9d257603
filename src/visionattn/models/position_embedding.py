"""Learned absolute position embeddings on a grid of patches, resampled to another grid.

A ViT learns one embedding per patch position of its training grid; for another image size the grid of vectors
is treated as a D-channel image and resized, bicubic with antialiasing as timm does (antialiasing matters when
shrinking: plain bilinear or bicubic interpolation then skips vectors instead of averaging them). The prefix
tokens' embeddings (class token) are kept as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from visionattn.errors import UsageError

__all__ = ["resample_pos_embed"]


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int],
                       num_prefix_tokens: int = 1) -> torch.Tensor:
    """``pos_embed`` of an ``old_grid`` (rows, cols) of patches resampled to ``new_grid``.

    Shape:
        - Input: (1, prefix + old_rows * old_cols, D)
        - Output: (1, prefix + new_rows * new_cols, D)
    """
    n = pos_embed.shape[1] - num_prefix_tokens
    if n != old_grid[0] * old_grid[1]:
        raise UsageError(f"pos_embed: {n} patch positions do not form the grid {old_grid[0]}x{old_grid[1]}")
    if tuple(new_grid) == tuple(old_grid):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dtype = grid.dtype
    grid = grid.reshape(1, *old_grid, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).flatten(1, 2).to(dtype)
    return torch.cat([prefix, grid], dim=1)
