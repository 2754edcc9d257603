"""Channels-last memory format for whole networks whose parameters are not all 4-D.

``nn.Module.to(memory_format=torch.channels_last)`` refuses any module holding a 5-D parameter (CondConv's and
dynamic convolution's expert banks), so networks are converted tensor by tensor here: every 4-D parameter and
buffer becomes channels-last, the rest stay as they are.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["to_channels_last"]


def to_channels_last(module: nn.Module) -> nn.Module:
    """Convert ``module``'s 4-D parameters and buffers to channels-last in place; return ``module``."""

    def convert(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t

    return module._apply(convert)
