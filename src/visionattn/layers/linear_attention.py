"""Linear attention: Katharopoulos et al. 2020, "Transformers are RNNs", eq. 4-6 and 8-10.

With a positive feature map phi in place of the softmax's exp(q . k), attention factorises:

    V'_i = phi(Q_i)^T (sum_j phi(K_j) V_j^T) / (phi(Q_i)^T sum_j phi(K_j) + eps),

so the n x n matrix is never formed and the cost is O(n d^2) instead of O(n^2 d). phi(x) = elu(x) + 1 (eq. 7),
evaluated as ``where(x >= 0, x + 1, exp(x))``: the textbook ``F.elu(x) + 1`` computes exp(x) - 1 + 1, which in
bf16 rounds to 0 for x below about -5, a zero feature and a zero normaliser. ``eps = 1e-6`` is the official
code's (fast-transformers). Causal attention (eq. 8-10: the sums run over j <= i) is computed in chunks: inside a
chunk the masked quadratic form, across chunks the running sums S = sum phi(K_j) V_j^T and z = sum phi(K_j) as
exclusive prefix sums, all vectorised. Sums are accumulated in float32 for half-precision inputs.

Attention goes through :class:`visionattn.layers.attention_core.Attention` (``kernel="linear"``); this module
holds the kernel's functions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["EPS", "CHUNK", "elu_feature_map", "linear_attention", "linear_attention_weights"]

EPS = 1e-6
CHUNK = 64


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = elu(x) + 1, as ``where(x >= 0, x + 1, exp(x))`` (exp of the clamped value, so that the branch
    not taken cannot overflow and poison the gradient)."""
    return torch.where(x >= 0, x + 1, torch.exp(x.clamp(max=0)))


def _features(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    acc = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    return elu_feature_map(q.to(acc)), elu_feature_map(k.to(acc)), v.to(acc)


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                     chunk: int = CHUNK) -> torch.Tensor:
    """phi(Q) (phi(K)^T V) / (phi(Q) sum_j phi(K_j) + eps); with ``causal`` the sums run over j <= i.

    Shape:
        - Input: q (B, h, N, d), k (B, h, N, d), v (B, h, N, d_v) (N_q = N_k when causal)
        - Output: (B, h, N, d_v)
    """
    dtype = q.dtype
    fq, fk, v = _features(q, k, v)
    if not causal:
        kv = torch.matmul(fk.transpose(-2, -1), v)  # (B, h, d, d_v)
        norm = torch.matmul(fq, fk.sum(-2, keepdim=True).transpose(-2, -1))  # (B, h, N, 1)
        return (torch.matmul(fq, kv) / (norm + EPS)).to(dtype)
    if q.shape[-2] != k.shape[-2]:
        raise ValueError(f"causal linear attention needs as many queries as keys, got {q.shape[-2]} and "
                         f"{k.shape[-2]}")
    n = q.shape[-2]
    pad = (-n) % chunk
    if pad:  # padded keys sit after every real query, so the causal sums never reach them
        fq, fk, v = (F.pad(t, (0, 0, 0, pad)) for t in (fq, fk, v))
    fq, fk, v = (t.unflatten(-2, (-1, chunk)) for t in (fq, fk, v))  # (B, h, chunks, c, .)
    state = torch.matmul(fk.transpose(-2, -1), v)  # per chunk sum phi(K_j) V_j^T: (B, h, chunks, d, d_v)
    state = state.cumsum(2) - state  # exclusive prefix: the chunks before this one
    zsum = fk.sum(-2)
    zsum = zsum.cumsum(2) - zsum  # (B, h, chunks, d)
    local = torch.matmul(fq, fk.transpose(-2, -1)).tril()  # (B, h, chunks, c, c), j <= i inside the chunk
    num = torch.matmul(fq, state) + torch.matmul(local, v)
    norm = torch.matmul(fq, zsum.unsqueeze(-1)) + local.sum(-1, keepdim=True)
    out = (num / (norm + EPS)).flatten(2, 3)
    return out[..., :n, :].to(dtype)


def linear_attention_weights(q: torch.Tensor, k: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """The matrix linear attention applies to V: A_ij = phi(q_i) . phi(k_j) / (sum_j' phi(q_i) . phi(k_j') +
    eps), over j <= i when ``causal`` (rows sum to 1 up to eps). For pictures and tests; O(N^2) memory.

    Shape:
        - Input: q (B, h, N_q, d), k (B, h, N_k, d)
        - Output: (B, h, N_q, N_k)
    """
    fq, fk, _ = _features(q, k, k[..., :0])
    sim = torch.matmul(fq, fk.transpose(-2, -1))
    if causal:
        sim = sim.tril()
    return (sim / (sim.sum(-1, keepdim=True) + EPS)).to(q.dtype)
