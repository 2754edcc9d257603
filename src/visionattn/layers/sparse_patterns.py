"""The factorized attention patterns of the Sparse Transformer: Child et al. 2019, "Generating Long Sequences with
Sparse Transformers" (sec. 4.2-4.3, fig. 3), and the ways the paper combines them (sec. 5.2, eq. 6-8).

A pattern gives every query i of a sequence of n positions two sets of keys, A(1)_i and A(2)_i, both causal
(j <= i), with the stride l:

**strided** (sec. 4.3; for data with a period such as an image in raster order, l its width):

    A(1)_i = {j : 0 <= i - j < l}                 the previous l positions, i included
    A(2)_i = {j <= i : (i - j) mod l = 0}         every l-th earlier position

(with l the image's width W: the last W pixels, i.e. its row so far and the rest of the row above, and its column)

The paper writes A(1)_i = {t, ..., i}, t = max(0, i - l), which is l + 1 positions, beside the words "the previous
l locations"; we follow the words and the official code (``openai/sparse_attention``, ``attn_mode="local"`` with
``local_attn_ctx = l``: key j is masked when j + l <= i), which gives l.

**fixed** (sec. 4.3; for data without a period, such as text), with c = ``summary`` summary positions per block:

    A(1)_i = {j <= i : floor(j / l) = floor(i / l)}         its own block of l, so far
    A(2)_i = {j <= i : j mod l in {l - c, ..., l - 1}}      the last c positions of every block, so far

(the paper's {t, ..., l} with t = l - c: j mod l never reaches l, so these are c positions). The paper found
c in {8, 16, 32} good for l in {128, 256}; the default here is c = l / 8 (rounded down, at least 1), which gives
16 and 32 there. A fixed A(2) alone leaves the first l - c positions with no key (no summary position has come
yet); their attention output is zero, the attention core's rule. Every other factor, and each union, contains
j = i, so no row is empty.

**Combinations** (sec. 5.2): ``"interleaved"``, one factor per residual block in turn, attention(X) = W_p
attend(X, A(r mod 2)) (eq. 6; a block is built with its ``factor`` r mod 2); ``"merged"``, one head over the union
A(1) u A(2) (eq. 7; what the official code's ``"fixed"`` block-sparse layout computes); ``"per_head"``, multi-head
attention whose heads take the factors (eq. 8): the first ceil(h / 2) heads A(1), the other floor(h / 2) heads
A(2), so an odd head count gives the extra head to A(1).
"""

from __future__ import annotations

import torch

from visionattn.errors import UsageError, check_choice
from visionattn.layers.helpers import check_positive_int

__all__ = ["PATTERNS", "COMBINES", "default_summary", "check_pattern", "check_combine", "heads_on_first",
           "sparse_masks", "combined_mask"]

PATTERNS = ("strided", "fixed")
COMBINES = ("interleaved", "merged", "per_head")


def default_summary(stride: int) -> int:
    """c for the fixed pattern when none is given: l / 8 rounded down, at least 1 (16 and 32 for the paper's
    l = 128 and 256, inside its c in {8, 16, 32})."""
    return max(1, stride // 8)


def check_pattern(pattern: str, stride: int | None, summary: int | None) -> int | None:
    """Validate a pattern's arguments (``stride`` None: given later); returns c for ``"fixed"`` (the default when
    ``summary`` is None and the stride is known), None for ``"strided"``."""
    check_choice("pattern", pattern, PATTERNS)
    if stride is not None:
        check_positive_int("stride", stride)
    if pattern == "strided":
        if summary is not None:
            raise UsageError(f"summary: got {summary!r}, but only the 'fixed' pattern has summary positions; "
                             "leave it None for 'strided'")
        return None
    if summary is None:
        return None if stride is None else default_summary(stride)
    check_positive_int("summary", summary)
    if stride is not None and summary > stride:
        raise UsageError(f"summary: got {summary}, needed at most stride = {stride} (the last c positions of "
                         "each block of l)")
    return summary


def check_combine(combine: str, factor: int) -> None:
    """``combine`` is one of :data:`COMBINES`; ``factor`` is 0 or 1, and only set for ``"interleaved"``."""
    check_choice("combine", combine, COMBINES)
    if factor not in (0, 1) or isinstance(factor, bool):
        raise UsageError(f"factor: got {factor!r}, needed 0 (A(1)) or 1 (A(2)): the factor this block uses")
    if factor and combine != "interleaved":
        raise UsageError(f"factor: got {factor!r} with combine={combine!r}; a factor is chosen per block only "
                         "when combine='interleaved'")


def heads_on_first(heads: int) -> int:
    """For ``"per_head"``: how many of the heads (the first ones) take A(1); the rest take A(2)."""
    if heads < 2:
        raise UsageError(f"heads: combine='per_head' needs at least 2 heads (one per factor), got {heads}")
    return (heads + 1) // 2


def sparse_masks(pattern: str, n: int, stride: int, summary: int | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """The two factors A(1), A(2) of ``pattern`` over ``n`` positions as boolean masks (True: query i may attend
    key j); the definition the fast path is tested against (see the module docstring).

    Shape:
        - Output: (2, n, n), bool; [0] is A(1), [1] is A(2)
    """
    check_positive_int("stride", stride)
    summary = check_pattern(pattern, stride, summary)
    check_positive_int("n", n)
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    causal = j <= i
    if pattern == "strided":
        first = causal & (i - j < stride)
        second = causal & ((i - j) % stride == 0)
    else:
        first = causal & (j // stride == i // stride)
        second = causal & (j % stride >= stride - summary)
    return torch.stack([first, second])


def combined_mask(pattern: str, n: int, stride: int, summary: int | None, combine: str, factor: int = 0,
                  heads: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
    """The mask a combination applies (sec. 5.2): A(factor) for ``"interleaved"``, A(1) u A(2) for ``"merged"``,
    one factor per head for ``"per_head"`` (:func:`heads_on_first`).

    Shape:
        - Output: (heads, n, n) for ``"per_head"``, (1, n, n) otherwise; bool
    """
    check_combine(combine, factor)
    masks = sparse_masks(pattern, n, stride, summary, device)
    if combine == "interleaved":
        return masks[factor : factor + 1]
    if combine == "merged":
        return (masks[0] | masks[1])[None]
    first = heads_on_first(heads)
    return torch.cat([masks[:1].expand(first, n, n), masks[1:].expand(heads - first, n, n)])
