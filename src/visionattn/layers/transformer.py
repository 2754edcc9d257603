"""The pre-norm transformer block of ViT (Dosovitskiy et al. 2021, eq. 2-3), its MLP and stochastic depth.

    z' = z + DropPath(MSA(LN(z))),    z'' = z' + DropPath(MLP(LN(z'))),

MLP = fc1 (dim -> mlp_ratio * dim), GELU, dropout, fc2, dropout (eq. 3 and appendix B.1: dropout after every
dense layer except the qkv projection). Stochastic depth (Huang et al. 2016) drops a residual branch per sample
while training and scales the kept ones by 1 / (1 - p), as DeiT and timm do. Module names are timm's
(``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``), so that its checkpoints load.
"""

from __future__ import annotations

import torch
from torch import nn

from visionattn.errors import check_positive, check_range
from visionattn.layers.helpers import LayerSpec, create_act
from visionattn.layers.self_attention import MultiHeadSelfAttention, check_tokens

__all__ = ["DropPath", "Mlp", "TransformerBlock", "drop_path"]


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Zero whole samples of a residual branch with probability ``p``, scaling the rest by 1 / (1 - p)."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - p)
    return x * keep.div_(1.0 - p)  # scaled per sample, then one pass over x (not two)


class DropPath(nn.Module):
    """Stochastic depth on a residual branch (per sample; identity in eval mode).

    Shape:
        - Input: (B, *)
        - Output: (B, *)
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = check_range("drop_path", p, 0.0, 1.0, high_open=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """The transformer's two-layer MLP: fc1, activation (GELU), dropout, fc2, dropout.

    Shape:
        - Input: (B, N, dim)
        - Output: (B, N, dim)
    """

    def __init__(self, dim: int, hidden: int, act_layer: LayerSpec = "gelu", drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = create_act(act_layer)
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class TransformerBlock(nn.Module):
    """A pre-norm transformer layer: multi-head self-attention and an MLP, each behind a LayerNorm and a
    residual connection with stochastic depth (ViT eq. 2-3).

    Args:
        dim: token channels.
        heads: attention heads; dim_head: channels per head (default dim / heads).
        mlp_ratio: hidden width of the MLP over ``dim`` (ViT: 4).
        qkv_bias: biases on q, k, v (ViT: yes).
        drop: dropout after the projections and in the MLP; attn_drop: on the attention weights.
        drop_path: stochastic-depth rate of both branches.
        kernel, causal, impl: for the attention (see :class:`MultiHeadSelfAttention`).
        norm_eps: LayerNorm epsilon (timm's ViT: 1e-6).

    Shape:
        - Input: (B, N, dim); optional ``bias`` / ``mask`` for the attention
        - Output: (B, N, dim)
    """

    def __init__(self, dim: int, heads: int, dim_head: int | None = None, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 kernel: str = "softmax", causal: bool = False, impl: str = "auto", act_layer: LayerSpec = "gelu",
                 norm_eps: float = 1e-6) -> None:
        super().__init__()
        check_positive("mlp_ratio", mlp_ratio)
        self.dim = dim
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MultiHeadSelfAttention(dim, heads, dim_head, qkv_bias, attn_drop, drop, kernel, causal,
                                           impl=impl)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer, drop)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        check_tokens(x, self.dim, type(self).__name__)
        x = x + self.drop_path1(self.attn(self.norm1(x), bias, mask))
        return x + self.drop_path2(self.mlp(self.norm2(x)))
