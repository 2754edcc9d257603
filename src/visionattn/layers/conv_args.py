"""Argument checks shared by the convolution-like layers: SK, split attention, CondConv, dynamic conv."""

from __future__ import annotations

from visionattn.errors import UsageError
from visionattn.layers.helpers import check_positive_int

__all__ = ["check_groups", "same_padding", "check_padding"]


def check_groups(groups: int, **channel_counts: int) -> int:
    """Return ``groups`` if it divides every named channel count, else raise a UsageError naming the count."""
    check_positive_int("groups", groups)
    for name, count in channel_counts.items():
        if count % groups:
            raise UsageError(f"{name} must be divisible by groups={groups}, got {name}={count}")
    return groups


def same_padding(kernel_size: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int]:
    """Padding that keeps ``ceil(H / stride)``; needs odd kernels (else no symmetric padding exists)."""
    if kernel_size[0] % 2 == 0 or kernel_size[1] % 2 == 0:
        raise UsageError(f"kernel_size must be odd when padding is chosen for you ('same'), "
                         f"got {kernel_size}")
    return (dilation[0] * (kernel_size[0] - 1) // 2, dilation[1] * (kernel_size[1] - 1) // 2)


def check_padding(padding: int | tuple[int, int]) -> tuple[int, int]:
    """``1 -> (1, 1)``; a pair of ints >= 0 passes through; anything else is a UsageError."""
    if isinstance(padding, int) and not isinstance(padding, bool):
        padding = (padding, padding)
    if not (isinstance(padding, (tuple, list)) and len(padding) == 2):
        raise UsageError(f"padding must be None, an int or a pair of ints, got {padding!r}")
    return (check_positive_int("padding", padding[0], 0), check_positive_int("padding", padding[1], 0))
