"""SASA local attention through FlexAttention: the fused path for CUDA.

FlexAttention (``torch.nn.attention.flex_attention``) compiles one fused attention kernel, forward and backward,
from two small functions: a ``mask_mod`` that says which keys a query sees and a ``score_mod`` that edits each
logit. Local attention is then

- the sequence of the image's pixels, row-major, as queries; as keys the same pixels (``"mask"``, ``"clamp"``)
  or those of the zero-padded image (``"zero"``: the padding takes part with k = v = 0);
- ``mask_mod``: the key lies in the query's k x k window (the clamped window for ``"clamp"``);
- ``score_mod``: adds the relative term. The logit of SASA is ``scale * q . (k + r)``; flex computes
  ``scale * q . k`` and the score modification adds ``scale * q . r_t`` read from a (B, heads, HW, T^2) table
  computed once per call, t the key's offset in the window. The table is an ordinary tensor made from q and
  the relative embeddings, so the gradients of both flow through flex's backward.

The block mask (which 128 x 128 tiles of the HW x HW logits hold any window) makes the kernel skip the tiles
outside every window: at 56 x 56 with k = 7 about 80% of them. Nothing of size k^2 x d is materialised; the
relative table holds T^2 numbers per query, as many as the window's logits.

On the CPU, FlexAttention compiles a forward but has no backward (torch 2.13); there the C++ kernel
(:mod:`visionattn.kernels.local_attention`) is the fast path. The formulation here (windows, offsets, borders)
is tested on the CPU against the reference through :func:`dense_attention`, which evaluates the same
``score_mod`` and ``mask_mod`` densely with autograd.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["flex_available", "flex_inputs", "flex_local_attention", "dense_attention", "dense_local_attention",
           "Window"]


def flex_available(device: torch.device) -> bool:
    """FlexAttention with a backward: CUDA with Triton."""
    if device.type != "cuda":
        return False
    try:
        import triton  # noqa: F401
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


class Window:
    """Which key a query sees in an (H, W) image and at which relative offset, as tensor arithmetic on flat
    indices (so flex can trace it and :func:`dense_attention` can broadcast it).

    Keys index the image row-major, or for ``"zero"`` the image padded by k // 2 on every side.
    """

    def __init__(self, height: int, width: int, kernel_size: int, border: str) -> None:
        self.h, self.w, self.k, self.border = height, width, kernel_size, border
        self.c = kernel_size // 2
        self.pad = self.c if border == "zero" else 0
        self.key_h, self.key_w = height + 2 * self.pad, width + 2 * self.pad
        self.t = 2 * kernel_size - 1 if border == "clamp" else kernel_size

    @property
    def keys(self) -> int:
        return self.key_h * self.key_w

    def _axis(self, qpos: Tensor, kpos: Tensor, size: int) -> tuple[Tensor, Tensor]:
        """(key in the window, relative index) along one axis; kpos in image coordinates."""
        if self.border == "clamp":
            start = (qpos - self.c).clamp(0, max(size - self.k, 0))
            return (kpos >= start) & (kpos < start + self.k), kpos - qpos + self.k - 1
        return (kpos - qpos).abs() <= self.c, kpos - qpos + self.c

    def locate(self, q_idx: Tensor, kv_idx: Tensor) -> tuple[Tensor, Tensor]:
        """(the key takes part in the query's softmax, flat index into the (T, T) relative table)."""
        qy, qx = q_idx // self.w, q_idx % self.w
        ky, kx = kv_idx // self.key_w - self.pad, kv_idx % self.key_w - self.pad
        in_y, ry = self._axis(qy, ky, self.h)
        in_x, rx = self._axis(qx, kx, self.w)
        return in_y & in_x, ry.clamp(0, self.t - 1) * self.t + rx.clamp(0, self.t - 1)


def _head_dim(d: int) -> int:
    """Flex's kernels want a power-of-two head dimension of at least 16: zeros fill the rest."""
    return max(16, 1 << (d - 1).bit_length())


def flex_inputs(qkv: Tensor, rel: Tensor, heads: int, kernel_size: int, border: str,
                scale: float) -> tuple[Tensor, Tensor, Tensor, Callable, Callable]:
    """Queries, keys, values (B, heads, N, d'), ``score_mod`` and ``mask_mod`` of local attention.

    Shape:
        - Input: qkv (B, 3 * heads * d, H, W); rel (heads, T, T, d)
        - Output: q (B, heads, HW, d'), k and v (B, heads, N_keys, d'), d' >= d (zero-filled)
    """
    b, c3, h, w = qkv.shape
    d = c3 // 3 // heads
    win = Window(h, w, kernel_size, border)
    q, k, v = qkv.chunk(3, dim=1)
    if win.pad:
        k, v = (F.pad(t, (win.pad,) * 4) for t in (k, v))
    q, k, v = (t.reshape(b, heads, d, -1).transpose(2, 3) for t in (q, k, v))
    # scale * q . r_t for every query and offset t: the relative half of the logits, T^2 numbers per query
    rel_logits = scale * torch.einsum("bhnd,htd->bhnt", q, rel.reshape(heads, win.t * win.t, d))
    extra = _head_dim(d) - d
    if extra:
        q, k, v = (F.pad(t, (0, extra)) for t in (q, k, v))

    def score_mod(score, b_idx, h_idx, q_idx, kv_idx):
        _, t = win.locate(q_idx, kv_idx)
        return score + rel_logits[b_idx, h_idx, q_idx, t]

    def mask_mod(b_idx, h_idx, q_idx, kv_idx):
        return win.locate(q_idx, kv_idx)[0]

    return q, k, v, score_mod, mask_mod


def _to_image(out: Tensor, d: int, h: int, w: int) -> Tensor:
    b, heads = out.shape[:2]
    return out[..., :d].transpose(2, 3).reshape(b, heads * d, h, w)


def dense_attention(q: Tensor, k: Tensor, v: Tensor, score_mod: Callable, mask_mod: Callable,
                    scale: float) -> Tensor:
    """What flex computes, evaluated densely with broadcast index tensors (a test oracle, any device).

    Shape:
        - Input: q (B, heads, N, d); k, v (B, heads, M, d)
        - Output: (B, heads, N, d)
    """
    b, heads, n, _ = q.shape
    m = k.shape[2]
    idx = [torch.arange(s, device=q.device).view(*(-1 if i == j else 1 for j in range(4)))
           for i, s in enumerate((b, heads, n, m))]
    logits = score_mod(scale * q @ k.transpose(-1, -2), *idx)
    logits = logits.masked_fill(~mask_mod(*idx), float("-inf"))
    return logits.softmax(-1) @ v


def _local_attention_with(attend: Callable, qkv: Tensor, rel: Tensor, heads: int, kernel_size: int, border: str,
                          scale: float) -> Tensor:
    """Local attention of stacked projections, the attention itself by ``attend(q, k, v, score_mod, mask_mod)``."""
    _, c3, h, w = qkv.shape
    out = attend(*flex_inputs(qkv, rel, heads, kernel_size, border, scale))
    return _to_image(out, c3 // 3 // heads, h, w)


def dense_local_attention(qkv: Tensor, rel: Tensor, heads: int, kernel_size: int, border: str,
                          scale: float) -> Tensor:
    """:func:`flex_local_attention` with :func:`dense_attention` in place of flex (differentiable anywhere).

    Shape:
        - Input: qkv (B, 3 * heads * d, H, W); rel (heads, T, T, d)
        - Output: (B, heads * d, H, W)
    """
    return _local_attention_with(lambda q, k, v, score_mod, mask_mod: dense_attention(
        q, k, v, score_mod, mask_mod, scale), qkv, rel, heads, kernel_size, border, scale)


@lru_cache(maxsize=64)
def _block_mask(height: int, width: int, kernel_size: int, border: str, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    win = Window(height, width, kernel_size, border)
    return create_block_mask(lambda b, h, q, kv: win.locate(q, kv)[0], None, None, height * width, win.keys,
                             device=device)


@lru_cache(maxsize=1)
def _compiled_flex() -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_local_attention(qkv: Tensor, rel: Tensor, heads: int, kernel_size: int, border: str,
                         scale: float) -> Tensor:
    """Local attention with compiled FlexAttention (CUDA: forward and backward; CPU: forward only).

    Shape:
        - Input: qkv (B, 3 * heads * d, H, W); rel (heads, T, T, d)
        - Output: (B, heads * d, H, W)
    """
    mask = _block_mask(qkv.shape[2], qkv.shape[3], kernel_size, border, str(qkv.device))

    def attend(q: Tensor, k: Tensor, v: Tensor, score_mod: Callable, mask_mod: Callable) -> Tensor:
        return _compiled_flex()(q.contiguous(), k.contiguous(), v.contiguous(), score_mod=score_mod,
                                block_mask=mask, scale=scale)

    return _local_attention_with(attend, qkv, rel, heads, kernel_size, border, scale)
