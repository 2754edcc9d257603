"""The numeric precision and memory format a network runs in: one place for the trainer and the benchmarks.

``precision`` is ``"fp32"`` or ``"bf16"`` (bfloat16 autocast). Channels-last: ``nn.Module.to(memory_format=
torch.channels_last)`` refuses any module holding a 5-D parameter (CondConv's and dynamic convolution's expert
banks), so networks are converted tensor by tensor here: every 4-D parameter and buffer becomes channels-last,
the rest stay as they are.

Importing this module does not import torch (the command line checks ``--precision`` before it loads torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from visionattn.errors import check_choice

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["PRECISIONS", "check_precision", "autocast", "to_channels_last"]

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str, argument: str = "precision") -> str:
    """``precision`` when it is one of :data:`PRECISIONS`, else a :class:`~visionattn.errors.UsageError`."""
    return check_choice(argument, precision, PRECISIONS)


def autocast(device_type: str, precision: str) -> torch.autocast:
    """The autocast context of ``precision`` on ``device_type`` (disabled for fp32); reusable, not nestable."""
    import torch

    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=check_precision(precision) == "bf16")


def to_channels_last(module: nn.Module) -> nn.Module:
    """Convert ``module``'s 4-D parameters and buffers to channels-last in place; return ``module``."""
    import torch

    def convert(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t

    return module._apply(convert)
