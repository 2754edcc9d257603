"""Linear attention: Katharopoulos et al. 2020, "Transformers are RNNs", eq. 4-7 (non-causal) and 8-10 (causal).

With a positive feature map phi in place of the softmax's exp(q . k) (eq. 3), attention factorises (eq. 4-5):

    V'_i = phi(Q_i)^T (sum_j phi(K_j) V_j^T) / (phi(Q_i)^T sum_j phi(K_j) + eps),

so the n x n matrix is never formed and the cost is O(n d d_v) instead of O(n^2 d). phi(x) = elu(x) + 1 (eq. 7),
evaluated as ``where(x >= 0, x + 1, exp(x))``: the textbook ``F.elu(x) + 1`` computes (exp(x) - 1) + 1, which
in bf16 keeps only multiples of 2^-8 of the small feature (x = -6 gives 0.0039 for 0.0025) and rounds it to 0
below x = -7: a zero feature, and for a key row of such features a zero normaliser. ``eps = 1e-6`` is the
official code's (fast-transformers, ``LinearAttention``), added to the normaliser as there.

Causal attention (eq. 8-10: the sums run over j <= i, S_i = sum_{j <= i} phi(K_j) V_j^T, Z_i = sum_{j <= i}
phi(K_j)) is computed in chunks of ``chunk`` tokens, vectorised: inside a chunk the masked quadratic form, across
chunks S and Z as exclusive prefix sums over the chunks before. Memory is O(n / chunk * d * d_v + n * chunk),
time O(n * chunk * d + n d d_v); the official code runs the same recurrence as a CUDA kernel instead. Half-
precision inputs are computed in float32 (features, sums and the division) and the output cast back.

Attention goes through :class:`visionattn.layers.attention_core.Attention` (``kernel="linear"``); this module
holds the kernel's functions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from visionattn.errors import UsageError

__all__ = ["EPS", "CHUNK", "elu_feature_map", "linear_attention", "linear_attention_weights"]

EPS = 1e-6
CHUNK = 64
_HALF = (torch.float16, torch.bfloat16)


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = elu(x) + 1 (eq. 7), as ``where(x >= 0, x + 1, exp(x))``: positive in every dtype.

    The exponential is taken of ``min(x, 0)`` so that the branch ``where`` discards cannot overflow: an
    ``inf`` there would turn the gradient of a large positive x into ``0 * inf = NaN``.
    """
    return torch.where(x >= 0, x + 1, torch.exp(x.clamp(max=0)))


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None = None) -> None:
    tensors = (("q", q), ("k", k)) + ((("v", v),) if v is not None else ())
    for name, t in tensors:
        if t.dim() != 4:
            raise UsageError(f"linear attention: {name} must be 4-D (B, heads, N, d), got shape {tuple(t.shape)}")
    if q.shape[-1] != k.shape[-1] or q.shape[:2] != k.shape[:2] or (v is not None and k.shape[:3] != v.shape[:3]):
        got = f"q {tuple(q.shape)}, k {tuple(k.shape)}" + (f", v {tuple(v.shape)}" if v is not None else "")
        raise UsageError(f"linear attention: {got} do not fit: needed q (B, h, N_q, d), k (B, h, N_k, d), "
                         "v (B, h, N_k, d_v)")


def _features(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    acc = torch.float32 if q.dtype in _HALF else q.dtype
    return elu_feature_map(q.to(acc)), elu_feature_map(k.to(acc))


def _exclusive_cumsum(x: torch.Tensor, dim: int) -> torch.Tensor:
    """sum over the entries before each one along ``dim`` (the first gets 0): a shifted cumsum, exact."""
    total = x.cumsum(dim)
    return torch.cat([torch.zeros_like(total.narrow(dim, 0, 1)), total.narrow(dim, 0, x.shape[dim] - 1)], dim)


def _causal(fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor, chunk: int) -> torch.Tensor:
    """Eq. 8-10 by chunks: the prefix sums S, Z of the chunks before, plus the masked quadratic form within."""
    n = fq.shape[-2]
    chunk = min(chunk, n)
    pad = (-n) % chunk
    if pad:  # zero features: padded keys add nothing to any sum, padded queries are cut off at the end
        fq, fk, v = (F.pad(t, (0, 0, 0, pad)) for t in (fq, fk, v))
    fq, fk, v = (t.unflatten(-2, (-1, chunk)) for t in (fq, fk, v))  # (B, h, chunks, c, .)
    state = _exclusive_cumsum(torch.matmul(fk.transpose(-2, -1), v), 2)  # S before each chunk: (B, h, n_c, d, d_v)
    zsum = _exclusive_cumsum(fk.sum(-2), 2).unsqueeze(-1)  # Z before each chunk: (B, h, n_c, d, 1)
    local = torch.matmul(fq, fk.transpose(-2, -1)).tril()  # (B, h, n_c, c, c): j <= i inside the chunk
    num = torch.matmul(fq, state) + torch.matmul(local, v)
    norm = torch.matmul(fq, zsum) + local.sum(-1, keepdim=True)
    return (num / (norm + EPS)).flatten(2, 3)[..., :n, :]


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                     chunk: int = CHUNK) -> torch.Tensor:
    """phi(Q) (phi(K)^T V) / (phi(Q) sum_j phi(K_j) + eps) (eq. 4-6); with ``causal`` the sums run over j <= i
    (eq. 8-10, computed ``chunk`` tokens at a time; the result does not depend on ``chunk``).

    Shape:
        - Input: q (B, h, N_q, d), k (B, h, N_k, d), v (B, h, N_k, d_v) (N_q = N_k when causal)
        - Output: (B, h, N_q, d_v), in q's dtype
    """
    _check(q, k, v)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise UsageError(f"chunk must be an integer >= 1, got {chunk!r}")
    fq, fk = _features(q, k)
    v_acc = v.to(fq.dtype)
    if not causal:
        kv = torch.matmul(fk.transpose(-2, -1), v_acc)  # sum_j phi(K_j) V_j^T: (B, h, d, d_v)
        norm = torch.matmul(fq, fk.sum(-2).unsqueeze(-1))  # phi(Q_i) . sum_j phi(K_j): (B, h, N_q, 1)
        return (torch.matmul(fq, kv) / (norm + EPS)).to(q.dtype)
    if q.shape[-2] != k.shape[-2]:
        raise UsageError(f"causal linear attention needs as many queries as keys, got {q.shape[-2]} queries and "
                         f"{k.shape[-2]} keys")
    return _causal(fq, fk, v_acc, chunk).to(q.dtype)


def linear_attention_weights(q: torch.Tensor, k: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """The matrix linear attention applies to V: A_ij = phi(q_i) . phi(k_j) / (sum_j' phi(q_i) . phi(k_j') +
    eps), over j <= i when ``causal`` (rows sum to 1 up to eps; ``A @ V`` is :func:`linear_attention`'s
    output). For pictures and tests; O(N^2) memory.

    Shape:
        - Input: q (B, h, N_q, d), k (B, h, N_k, d)
        - Output: (B, h, N_q, N_k), in q's dtype
    """
    _check(q, k)
    fq, fk = _features(q, k)
    sim = torch.matmul(fq, fk.transpose(-2, -1))
    if causal:
        sim = sim.tril()
    return (sim / (sim.sum(-1, keepdim=True) + EPS)).to(q.dtype)
