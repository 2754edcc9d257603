"""Local (windowed) self-attention in plain PyTorch: the reference the fast kernels are tested against.

Ramachandran et al. 2019, "Stand-Alone Self-Attention in Vision Models", eq. 2-3: for every pixel (i, j),

    y_ij = sum_{(a, b) in N_k(i, j)} softmax_ab( q_ij . (k_ab + r_{a-i, b-j}) ) v_ab,

per head, where N_k(i, j) is the k x k window centred on (i, j) and r the relative embedding of the offset.
This file gathers the k^2 keys and values of every window explicitly: simple to read and slow, so it is only
the oracle of the tests and the fallback where no kernel can be built.

How the window meets the border is the ``border`` argument (``BORDERS``):

- ``"mask"``: positions outside the image are left out of the softmax (the default);
- ``"zero"``: the image is zero-padded, so outside positions take part with k = v = 0 but keep their relative
  embedding (logit q . r); this is what the common ``unfold``-based open implementations compute;
- ``"clamp"``: the window is shifted to stay inside the image, so every pixel sees k x k real neighbours
  (neighbourhood attention, Hassani et al. 2023); the offsets then reach +-(k - 1), so the relative table
  has 2k - 1 entries per axis instead of k.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

from visionattn.errors import check_choice
from visionattn.layers.relative_position import relative_table

__all__ = ["BORDERS", "rel_table_size", "relative_table", "window_index", "local_attention_weights",
           "apply_window_weights", "local_attention_reference", "local_attention_unfold"]

BORDERS = ("mask", "zero", "clamp")


def rel_table_size(kernel_size: int, border: str) -> int:
    """Entries per axis of the relative table: k, or 2k - 1 for ``"clamp"`` (offsets up to +-(k - 1))."""
    return 2 * kernel_size - 1 if border == "clamp" else kernel_size


def _axis_index(size: int, kernel_size: int, border: str) -> tuple[torch.Tensor, ...]:
    """For every query position i (rows) and window slot w (columns) along one axis: the key position, whether
    it lies in the image, whether it takes part in the softmax, and its index in the relative table."""
    c = kernel_size // 2
    i = torch.arange(size)[:, None]
    w = torch.arange(kernel_size)[None, :]
    if border == "clamp":
        start = (i - c).clamp(0, max(size - kernel_size, 0))
        pos = start + w
        rel = pos - i + kernel_size - 1
    else:
        pos = i - c + w
        rel = w.expand(size, kernel_size)
    inside = (pos >= 0) & (pos < size)
    attends = inside if border != "zero" else torch.ones_like(inside)
    return pos.clamp(0, size - 1), inside, attends, rel


def window_index(height: int, width: int, kernel_size: int, border: str) -> tuple[torch.Tensor, ...]:
    """Gather indices of the k x k windows of an (H, W) map, flattened row-major.

    Under ``torch.compile`` the indices are computed eagerly, outside the graph: as graph constants the integer
    bookkeeping trips inductor's range analysis. The ``torch.compiler.disable`` wrapper that does this is made
    on the first compiled call, not at import (which would import ``torch._dynamo``, about 2 s); eager calls
    never need it.

    Returns:
        key: (HW, k^2) flat index of each window slot's key (clamped into the image; see ``inside``).
        inside: (HW, k^2) the slot lies in the image.
        attends: (HW, k^2) the slot takes part in the softmax.
        rel: (HW, k^2) flat index into the (T, T) relative table, T = :func:`rel_table_size`.
    """
    check_choice("border", border, BORDERS)
    if not torch.compiler.is_compiling():
        return _window_index(height, width, kernel_size, border)
    if not _EAGER_WINDOW_INDEX:  # the first compiled call: dynamo is imported already, since it is tracing us
        _EAGER_WINDOW_INDEX.append(torch.compiler.disable(_window_index))
    return _EAGER_WINDOW_INDEX[0](height, width, kernel_size, border)


_EAGER_WINDOW_INDEX: list = []  # the compiler-disabled window_index, once a compiled call has made it


def _window_index(height: int, width: int, kernel_size: int, border: str) -> tuple[torch.Tensor, ...]:
    ry, iy, ay, rely = _axis_index(height, kernel_size, border)
    rx, ix, ax, relx = _axis_index(width, kernel_size, border)
    t = rel_table_size(kernel_size, border)

    def outer(a: torch.Tensor, b: torch.Tensor, op) -> torch.Tensor:
        return rearrange(op(a[:, None, :, None], b[None, :, None, :]), "y x u v -> (y x) (u v)")

    key = outer(ry, rx, lambda a, b: a * width + b)
    inside = outer(iy, ix, torch.logical_and)
    attends = outer(ay, ax, torch.logical_and)
    rel = outer(rely, relx, lambda a, b: a * t + b)
    return key, inside, attends, rel


def _gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` of ``t``'s token axis: (..., N, d) -> (..., HW, k^2, d)."""
    return t.index_select(-2, index.flatten()).unflatten(-2, index.shape)


def local_attention_weights(q: torch.Tensor, k: torch.Tensor, rel: torch.Tensor, kernel_size: int,
                            border: str = "mask", scale: float = 1.0) -> torch.Tensor:
    """The window weights of eq. 2-3: every pixel's softmax over its k x k window of ``scale * q . (k + r)``,
    the window's slots in raster order (row offset, then column offset; see :func:`window_index` for where each
    slot lies). Slots outside the image have weight 0 with ``border="mask"``.

    Args:
        q, k: (B, heads * d, H, W) queries and keys, heads split along the channels.
        rel: (heads, T, T, d) relative embeddings r, T = :func:`rel_table_size`.
        kernel_size, border, scale: as for :func:`local_attention_reference`.

    Shape:
        - Input: q, k (B, heads * d, H, W); rel (heads, T, T, d)
        - Output: (B, heads, H * W, k^2)
    """
    heads = rel.shape[0]
    height, width = q.shape[-2:]
    key, inside, attends, rel_idx = (t.to(q.device) for t in window_index(height, width, kernel_size, border))
    q, k = (rearrange(t, "b (h d) y x -> b h (y x) d", h=heads) for t in (q, k))
    k_win = _gather(k, key) * inside[..., None].to(q.dtype)  # (B, heads, HW, k^2, d); zero padding: outside k = 0
    r_win = _gather(rearrange(rel, "h u v d -> h (u v) d"), rel_idx)  # (heads, HW, k^2, d)
    logits = torch.einsum("bhpd,bhpwd->bhpw", q, k_win + r_win) * scale
    return logits.masked_fill(~attends, float("-inf")).softmax(dim=-1)


def apply_window_weights(attn: torch.Tensor, v: torch.Tensor, kernel_size: int, border: str = "mask") -> torch.Tensor:
    """The output of eq. 2: every pixel's window weights times its window's values (zero outside the image).

    Shape:
        - Input: attn (B, heads, H * W, k^2) (:func:`local_attention_weights`); v (B, heads * d, H, W)
        - Output: (B, heads * d, H, W)
    """
    heads, height, width = attn.shape[1], v.shape[-2], v.shape[-1]
    key, inside, _, _ = (t.to(v.device) for t in window_index(height, width, kernel_size, border))
    v_win = _gather(rearrange(v, "b (h d) y x -> b h (y x) d", h=heads), key) * inside[..., None].to(v.dtype)
    out = torch.einsum("bhpw,bhpwd->bhpd", attn, v_win)
    return rearrange(out, "b h (y x) d -> b (h d) y x", y=height)


def local_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel: torch.Tensor,
                              kernel_size: int, border: str = "mask", scale: float = 1.0) -> torch.Tensor:
    """Local attention by gathering every window (k^2 copies of keys and values): the weights
    (:func:`local_attention_weights`) applied to the windows' values (:func:`apply_window_weights`).

    Args:
        q, k, v: (B, heads * d, H, W) queries, keys and values, heads split along the channels.
        rel: (heads, T, T, d) relative embeddings r, T = :func:`rel_table_size`.
        kernel_size: k, odd.
        border: ``"mask"``, ``"zero"`` or ``"clamp"`` (module docstring).
        scale: factor on the logits ``q . (k + r)``.

    Shape:
        - Input: q, k, v (B, heads * d, H, W); rel (heads, T, T, d)
        - Output: (B, heads * d, H, W)
    """
    return apply_window_weights(local_attention_weights(q, k, rel, kernel_size, border, scale), v, kernel_size,
                                border)


def local_attention_unfold(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel: torch.Tensor,
                           kernel_size: int, scale: float = 1.0) -> torch.Tensor:
    """Local attention as the common open SASA implementations compute it: ``unfold`` the zero-padded keys and
    values into (B, heads, d, H, W, k^2) windows, add the relative embedding, multiply by the queries and sum
    over d, softmax over the window, then contract with the value windows. The ``"zero"`` border; the baseline
    of ``benchmarks/local_attention.py`` (several tensors of k^2 times the activations' size).

    Shape:
        - Input: q, k, v (B, heads * d, H, W); rel (heads, k, k, d)
        - Output: (B, heads * d, H, W)
    """
    heads, _, _, d = rel.shape
    b, c, h, w = q.shape
    p = kernel_size // 2

    def windows(t: torch.Tensor) -> torch.Tensor:
        t = F.pad(t, (p, p, p, p)).unfold(2, kernel_size, 1).unfold(3, kernel_size, 1)
        return t.contiguous().view(b, heads, d, h, w, kernel_size * kernel_size)

    k_win = windows(k) + rearrange(rel, "n u v d -> n d (u v)")[None, :, :, None, None, :]
    logits = (q.view(b, heads, d, h, w, 1) * k_win).sum(dim=2) * scale
    attn = logits.softmax(dim=-1)
    return torch.einsum("bnhwk,bnchwk->bnchw", attn, windows(v)).reshape(b, c, h, w)
