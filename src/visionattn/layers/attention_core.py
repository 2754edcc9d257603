"""The attention core: scaled dot-product attention, written once for every token attention of the library.

Eq. 11.2-11.4 of the self-attention section (reference 003), with the additions the later mechanisms need:

    A = softmax(scale * Q K^T + bias, masked),   S = dropout(A) V,

``Q`` (B, h, N_q, d), ``K`` (B, h, N_k, d), ``V`` (B, h, N_k, d_v); ``bias`` an additive term on the logits
(relative positions), ``mask`` a boolean "may attend" pattern, ``causal`` the lower triangle (query i sees keys
j <= i, aligned at the top left as in ``torch.nn.functional.scaled_dot_product_attention``). A query left with no
key it may attend gets a zero output and zero weights, on both paths. The linear kernel (Katharopoulos et al.
2020, :mod:`visionattn.layers.linear_attention`) runs through the same module.

Two paths compute the same function:

- ``"fused"``: ``F.scaled_dot_product_attention`` (on the CPU a flash kernel with a backward; on CUDA flash /
  memory-efficient / cuDNN): the n x n matrix is never stored.
- ``"explicit"``: the weights are formed, softmaxed and multiplied; the oracle in the tests, and the way the
  weights are obtained for a picture.

``"auto"`` (the default) takes the fused path, except for short sequences on the CPU: there the flash kernel's
fixed cost per batch and head outweighs the work, and at up to :data:`CPU_EXPLICIT_MAX_PAIRS` query-key pairs
per head (a window of 7 x 7 or 10 x 10 tokens, a small ViT's 50) the explicit path is faster, forward and
backward alike (``benchmarks/attention_paths.py``; 1.2-1.8x at 49 tokens for forward + backward). Its weight
tensor is then at most that many elements per batch and head.

:class:`Attention` is the module every layer holds (as ``attend``): it picks the path and, while an
:class:`AttentionRecorder` (any :class:`~visionattn.layers.recording.Recorder`) is attached, also hands the
weights to it -- recomputed from the same q, k, bias and mask, so the output still comes from the fused path and
recording costs nothing when it is off.

Attention's share of a model's multiply-adds (:class:`visionattn.complexity.MacCounter`) is the products run
inside the modules whose class says ``attention_products = True``: :class:`Attention`, and a module that computes
another term of a step's logits for it, such as relative-position logits passed as ``bias``
(:class:`~visionattn.layers.relative_position.RelativePositionLogits2d`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from visionattn.errors import UsageError, check_choice, check_range
from visionattn.layers.linear_attention import linear_attention, linear_attention_weights
from visionattn.layers.recording import Recordable, Recorder

__all__ = ["IMPLS", "CPU_EXPLICIT_MAX_PAIRS", "resolve_impl", "KERNELS", "attention", "attention_weights", "Attention",
           "AttentionRecorder", "causal_mask"]

IMPLS = ("auto", "fused", "explicit")
# "auto" on the CPU: the explicit path at up to this many query-key pairs per head (N_q * N_k)
CPU_EXPLICIT_MAX_PAIRS = 10_000
KERNELS = ("softmax", "linear")
_HALF = (torch.float16, torch.bfloat16)


def causal_mask(n_q: int, n_k: int, device: torch.device | None = None) -> torch.Tensor:
    """(n_q, n_k) boolean: query i may attend key j when j <= i (top-left aligned, as PyTorch's ``is_causal``)."""
    return torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril()


def resolve_impl(impl: str, q: torch.Tensor, k: torch.Tensor) -> str:
    """The path ``impl`` stands for on these q and k: ``"auto"`` is ``"explicit"`` for at most
    :data:`CPU_EXPLICIT_MAX_PAIRS` query-key pairs on the CPU, ``"fused"`` otherwise."""
    if impl != "auto":
        return impl
    if q.device.type == "cpu" and q.shape[-2] * k.shape[-2] <= CPU_EXPLICIT_MAX_PAIRS:
        return "explicit"
    return "fused"


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
           mask: torch.Tensor | None) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise UsageError(f"attention: {name} must be 4-D (B, heads, N, d), got shape {tuple(t.shape)}")
    if q.shape[-1] != k.shape[-1] or k.shape[:3] != v.shape[:3] or q.shape[:2] != k.shape[:2]:
        raise UsageError(f"attention: q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} do not fit: "
                         "needed q (B, h, N_q, d), k (B, h, N_k, d), v (B, h, N_k, d_v)")
    if mask is not None and mask.dtype != torch.bool:
        raise UsageError(f"attention: mask must be boolean (True = may attend), got {mask.dtype}; an additive "
                         "float term goes in bias")
    if bias is not None and not bias.is_floating_point():
        raise UsageError(f"attention: bias must be floating point, got {bias.dtype}")


def _combined_mask(n_q: int, n_k: int, mask: torch.Tensor | None, causal: bool,
                   device: torch.device) -> torch.Tensor | None:
    if causal:
        tri = causal_mask(n_q, n_k, device)
        return tri if mask is None else mask & tri
    return mask


def attention_weights(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None,
                      mask: torch.Tensor | None = None, causal: bool = False,
                      scale: float | None = None) -> torch.Tensor:
    """A = softmax(scale * Q K^T + bias) over the keys a query may attend (eq. 11.2-11.3); rows with none are 0.

    Shape:
        - Input: q (B, h, N_q, d), k (B, h, N_k, d); bias and mask broadcastable to (B, h, N_q, N_k)
        - Output: (B, h, N_q, N_k)
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dtype = q.dtype
    # logits in fp32 for half inputs, as the fused kernels keep them: a bf16 logit of 10 is off by up to 0.04,
    # which moves its softmax weight by 4 %; the scale on q (N_q d products) rather than on the logits (N_q N_k).
    # Under autocast the product is taken in the autocast dtype whatever its inputs are (timm's explicit
    # attention computes the same): converting q and k first would be two copies for nothing
    if q.dtype in _HALF and not torch.is_autocast_enabled(q.device.type):
        q, k = q.float(), k.float()
    logits = torch.matmul(q * scale, k.transpose(-2, -1))
    allowed = _combined_mask(q.shape[-2], k.shape[-2], mask, causal, q.device)
    empty = None if allowed is None else ~allowed.any(-1, keepdim=True)  # rows with no key they may attend
    if allowed is not None and bias is not None and _smaller(bias, allowed, logits):
        # the mask folded into the (smaller) bias: one pass over the logits instead of two; a row with no key
        # keeps its bias (a finite softmax, zeroed below), so that no NaN reaches the gradients
        bias, allowed = bias.masked_fill(~allowed & ~empty, float("-inf")), None
    if bias is not None:
        logits = logits + bias
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    # softmax in fp32 for half inputs (a bf16 row sum drifts by 1e-2), in the input's precision otherwise
    weights = logits.softmax(-1).to(dtype)
    # a row with nothing to attend is all -inf (or, folded, uniform): zero it, as the fused path does; checked on
    # the mask's own (broadcastable) shape, and always under compile (no data-dependent branch in a graph) and on
    # the meta device (no data: the cost tables count models there)
    if empty is not None and (torch.compiler.is_compiling() or empty.is_meta or empty.any()):
        weights = weights.masked_fill(empty, 0.0)
    return weights


def _smaller(bias: torch.Tensor, mask: torch.Tensor, logits: torch.Tensor) -> bool:
    """Whether bias and mask broadcast together to fewer elements than the logits."""
    return math.prod(torch.broadcast_shapes(bias.shape, mask.shape)) < logits.numel()


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
              mask: torch.Tensor | None = None, causal: bool = False, dropout_p: float = 0.0,
              scale: float | None = None, impl: str = "auto") -> torch.Tensor:
    """Scaled dot-product attention S = dropout(A) V (eq. 11.2-11.4), on the fused path or the explicit one.

    Args:
        q, k, v: queries, keys and values, heads on axis 1.
        bias: additive logits (e.g. relative positions), broadcastable to (B, h, N_q, N_k).
        mask: boolean, True where a query may attend a key, broadcastable to (B, h, N_q, N_k).
        causal: also restrict query i to keys j <= i.
        dropout_p: dropout on the weights (pass 0 in eval mode; :class:`Attention` does).
        scale: factor on Q K^T; None is d^-1/2.
        impl: ``"fused"`` (``F.scaled_dot_product_attention``), ``"explicit"``, or ``"auto"`` (fused, except for
            short sequences on the CPU: :func:`resolve_impl`).

    Shape:
        - Input: q (B, h, N_q, d), k (B, h, N_k, d), v (B, h, N_k, d_v)
        - Output: (B, h, N_q, d_v)
    """
    check_choice("impl", impl, IMPLS)
    _check(q, k, v, bias, mask)
    if resolve_impl(impl, q, k) == "explicit":
        weights = attention_weights(q, k, bias, mask, causal, scale)
        return torch.matmul(F.dropout(weights, dropout_p) if dropout_p else weights, v)
    attn_mask = None
    if bias is not None or mask is not None:
        allowed = _combined_mask(q.shape[-2], k.shape[-2], mask, causal, q.device)
        attn_mask = bias.to(q.dtype) if bias is not None else None
        if allowed is not None:
            attn_mask = allowed if attn_mask is None else attn_mask.masked_fill(~allowed, float("-inf"))
        causal = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=causal,
                                          scale=scale)


class Attention(Recordable, nn.Module):
    """The attention step every token-attention layer holds (as ``attend``): no parameters, one of two kernels.
    Recordable, kind ``"attention"``.

    Args:
        kernel: ``"softmax"`` (eq. 11.2-11.4, :func:`attention`) or ``"linear"`` (phi(Q) (phi(K)^T V) normalised,
            phi = elu + 1; Katharopoulos et al. 2020, :func:`~visionattn.layers.linear_attention.linear_attention`).
        causal: query i attends keys j <= i only.
        dropout: dropout on the softmax weights while training (the softmax kernel only).
        scale: factor on the logits; None is d^-1/2 (softmax kernel; the linear kernel has none).
        impl: ``"auto"``, ``"fused"`` or ``"explicit"`` for the softmax kernel (see :func:`attention`).

    Shape:
        - Input: q (B, h, N_q, d), k (B, h, N_k, d), v (B, h, N_k, d_v); bias / mask broadcastable to
          (B, h, N_q, N_k)
        - Output: (B, h, N_q, d_v)
    """

    record_kind = "attention"
    attention_products = True  # the MAC count takes what runs in here as attention's share

    def __init__(self, kernel: str = "softmax", causal: bool = False, dropout: float = 0.0,
                 scale: float | None = None, impl: str = "auto") -> None:
        super().__init__()
        check_choice("kernel", kernel, KERNELS)
        check_choice("impl", impl, IMPLS)
        check_range("attn_drop", dropout, 0.0, 1.0, high_open=True)
        if kernel == "linear" and (dropout or scale is not None):
            raise UsageError("kernel='linear' has no attention dropout and no logit scale (phi(q) . phi(k) is "
                             f"not a softmax logit); got dropout={dropout!r}, scale={scale!r}")
        self.kernel, self.causal, self.dropout, self.scale, self.impl = kernel, causal, dropout, scale, impl

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.kernel == "linear":
            if bias is not None or mask is not None:
                raise UsageError("kernel='linear' takes no bias or mask: phi(K)^T V sums over every key "
                                 "(use causal=True for the prefix form)")
            out = linear_attention(q, k, v, causal=self.causal)
        else:
            out = attention(q, k, v, bias, mask, self.causal, self.dropout if self.training else 0.0, self.scale,
                            self.impl)
        if self.recorder is not None:
            self.recorder(self, self.weights(q, k, bias, mask).detach())
        return out

    def weights(self, q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """The (B, h, N_q, N_k) matrix this step applies to V (before dropout), computed explicitly."""
        with torch.no_grad():
            if self.kernel == "linear":
                return linear_attention_weights(q, k, causal=self.causal)
            return attention_weights(q, k, bias, mask, self.causal, self.scale)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel!r}, causal={self.causal}, dropout={self.dropout}, impl={self.impl!r}"


class AttentionRecorder(Recorder):
    """A :class:`~visionattn.layers.recording.Recorder` of the attention matrices only (kind ``"attention"``):
    the weights of every :class:`Attention` step in a model, whichever path computes them.

    Each step's weights are recomputed explicitly from its q, k, bias and mask while the recorder is attached
    (the fused kernels never form the matrix), so the forward output is unchanged. Weights are kept by the
    step's module name (e.g. ``"blocks.3.attn.attend"``), one tensor per call, on the CPU unless ``device`` says
    otherwise.

    Example:
        >>> with AttentionRecorder(model) as rec:
        ...     model(images)
        >>> rec.weights["blocks.0.attn.attend"][0].shape   # (B, heads, N, N)
    """

    def __init__(self, model: nn.Module, names: list[str] | None = None, device: str | torch.device = "cpu") -> None:
        super().__init__(model, kinds=["attention"], names=names, device=device)

    @staticmethod
    def _nothing(kinds: list[str]) -> str:
        return "attention step (no Attention module)"

    @property
    def weights(self) -> dict[str, list[torch.Tensor]]:
        """``{step name: [(B, h, N_q, N_k) weights of each call, ...]}``."""
        return self.records
