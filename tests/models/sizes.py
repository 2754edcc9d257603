"""A shared test helper: the input size each chosen layer of a network sees in one eval forward pass."""

from __future__ import annotations

import torch
from torch import nn


def sizes_seen(model: nn.Module, x: torch.Tensor, layers: dict[str, nn.Module],
               num_classes: int) -> dict[str, tuple[int, int]]:
    """{name: (H, W) of the input} for every layer in ``layers`` during ``model.eval()(x)``; also checks the
    logits' shape and that they are finite."""
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda m, args, n=n: seen.__setitem__(n, tuple(args[0].shape[-2:])))
             for n, m in layers.items()]
    try:
        with torch.no_grad():
            out = model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    assert out.shape == (x.shape[0], num_classes) and torch.isfinite(out).all()
    return seen
