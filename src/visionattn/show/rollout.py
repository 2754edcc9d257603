"""Attention rollout: Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers", sec. 3.

The attention of a layer is mixed with the residual connection and renormalised, then the layers are multiplied
from the first to the last:

    A^_l = normalize_rows(mean_heads(A_l) + I),      R = A^_L A^_{L-1} ... A^_1,

so that R[i, j] is how much of input token j reaches output token i through the attention and the skip paths.
Every A^_l is row-stochastic (each row sums to 1, the "normalize_rows"), hence so is R. (A widely copied script
divides by the sum over the wrong axis, which makes the columns sum to 1 instead: the tests check the rows.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from visionattn.errors import UsageError

__all__ = ["residual_attention", "attention_rollout"]


def residual_attention(weights: torch.Tensor) -> torch.Tensor:
    """One layer's A^ = (mean over heads of A + I), each row divided by its sum.

    Shape:
        - Input: (B, heads, N, N)
        - Output: (B, N, N), rows summing to 1
    """
    if weights.dim() != 4 or weights.shape[-1] != weights.shape[-2]:
        raise UsageError(f"weights: needed (B, heads, N, N) self-attention weights, got {tuple(weights.shape)}")
    mixed = weights.float().mean(1) + torch.eye(weights.shape[-1], device=weights.device)
    return mixed / mixed.sum(-1, keepdim=True)


def attention_rollout(layers: Sequence[torch.Tensor]) -> torch.Tensor:
    """R = A^_L ... A^_1 over ``layers`` given from the first to the last (:func:`residual_attention` each).

    Shape:
        - Input: L tensors (B, heads, N, N)
        - Output: (B, N, N); row i: what each input token contributes to output token i
    """
    if not layers:
        raise UsageError("layers: needed the attention weights of at least one layer")
    rollout = residual_attention(layers[0])
    for weights in layers[1:]:
        rollout = residual_attention(weights) @ rollout
    return rollout
