"""Parameter and multiply-add counts, and the table of registered layers.

Multiply-adds come from ``torch.utils.flop_counter.FlopCounterMode`` (one MAC = two FLOPs). It counts matrix
products and convolutions, not element-wise work (pooling, gates, softmax), the convention of the papers' tables.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from visionattn.errors import UsageError
from visionattn.registry import create_attn_for_size, get_attn_entry, list_attn

__all__ = ["count_params", "count_macs", "check_shape", "layer_rows", "buildable_layer_rows", "format_table"]


def count_params(module: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_macs(module: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of one eval-mode forward pass of ``module`` on ``x``."""
    was_training = module.training
    module.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        module(x)
    module.train(was_training)
    return counter.get_total_flops() // 2


def _positive_ints(value: object, length: int) -> tuple[int, ...] | None:
    values = tuple(value) if isinstance(value, (tuple, list)) else ()
    ok = len(values) == length and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
    return values if ok else None


def check_shape(shape: object, argument: str = "input_size") -> tuple[int, int, int]:
    """``shape`` as a (C, H, W) tuple of positive integers, else a :class:`~visionattn.errors.UsageError`."""
    values = _positive_ints(shape, 3)
    if values is None:
        raise UsageError(f"{argument}: got {shape!r}, needed (C, H, W): three positive integers, e.g. (3, 224, 224)")
    return values  # type: ignore[return-value]


def _check_feature_map(channels: int, size: tuple[int, int], arguments: tuple[str, str]) -> None:
    if _positive_ints((channels,), 1) is None:
        raise UsageError(f"{arguments[0]}: got {channels!r}, needed a positive number of channels")
    if _positive_ints(size, 2) is None:
        raise UsageError(f"{arguments[1]}: got {size!r}, needed (H, W): two positive integers")


def buildable_layer_rows(channels: int = 64, size: tuple[int, int] = (56, 56), family: str | None = None,
                         arguments: tuple[str, str] = ("channels", "size")) -> tuple[list[dict[str, object]],
                                                                                      dict[str, str]]:
    """One row per registered layer (of ``family``) that can be built for a (1, C, H, W) input, and for each one
    that cannot (e.g. ``sk``'s 32 groups at 16 channels) the layer's own error message, by name.

    ``arguments`` are the names the errors use for ``channels`` and ``size`` (the command line's ``--channels``).
    """
    _check_feature_map(channels, size, arguments)
    rows, unbuildable = [], {}
    x = torch.randn(1, channels, *size)
    for name in list_attn(family):
        entry = get_attn_entry(name)
        try:
            layer = create_attn_for_size(name, channels, tuple(size))
            macs = count_macs(layer, x)
        except ValueError as err:  # the layer's own argument and shape checks
            unbuildable[name] = str(err)
            continue
        rows.append({"name": name, "family": entry.family, "paper": entry.paper,
                     "params": count_params(layer), "macs": macs, "description": entry.description})
    return rows, unbuildable


def layer_rows(channels: int = 64, size: tuple[int, int] = (56, 56)) -> list[dict[str, object]]:
    """One row per registered layer: name, family, paper, parameters and MACs for a (1, C, H, W) input; a
    :class:`~visionattn.errors.UsageError` when one of them cannot be built at that size."""
    rows, unbuildable = buildable_layer_rows(channels, size)
    if unbuildable:
        name, why = next(iter(unbuildable.items()))
        raise UsageError(f"channels: layer {name!r} cannot be built for {channels}x{size[0]}x{size[1]}: {why}")
    return rows


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def format_table(rows: list[dict[str, object]], columns: list[str], human: tuple[str, ...] = ()) -> str:
    """A Markdown table of ``rows`` restricted to ``columns``; numbers in ``human`` get K/M/G suffixes."""
    cells = [[(_human(r[c]) if c in human else str(r[c])) for c in columns] for r in rows]  # type: ignore[arg-type]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    out = [line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in cells]
    return "\n".join(out)
