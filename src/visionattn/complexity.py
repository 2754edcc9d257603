"""Parameter and multiply-add counts, and the table of registered layers.

Multiply-adds come from ``torch.utils.flop_counter.FlopCounterMode`` (one MAC = two FLOPs). It counts matrix
products and convolutions, not element-wise work (pooling, gates, softmax), the convention of the papers' tables.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from visionattn.registry import create_attn_for_size, get_attn_entry, list_attn

__all__ = ["count_params", "count_macs", "layer_rows", "format_table"]


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


def layer_rows(channels: int = 64, size: tuple[int, int] = (56, 56)) -> list[dict[str, object]]:
    """One row per registered layer: name, family, paper, parameters and MACs for a (1, C, H, W) input."""
    rows = []
    x = torch.randn(1, channels, *size)
    for name in list_attn():
        entry = get_attn_entry(name)
        layer = create_attn_for_size(name, channels, size)
        rows.append({"name": name, "family": entry.family, "paper": entry.paper,
                     "params": count_params(layer), "macs": count_macs(layer, x),
                     "description": entry.description})
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
