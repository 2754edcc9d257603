"""Image GPT: a GPT-2 decoder over the pixels of an image (Chen et al. 2020, "Generative Pretraining from Pixels").

Section 2.1-2.3 of the paper, as the official code (github openai/image-gpt, ``src/model.py``) builds it:

    p(x) = prod_i p(x_i | x_1 .. x_{i-1})                       (eq. 1, raster order; tokens from a palette)
    h^0 = [sos; W_te x_1; ..; W_te x_{n-1}] + W_pe              (the input shifted right by a learned start token)
    n^l = norm(h^l),  a^l = h^l + attention(n^l),  h^{l+1} = a^l + mlp(norm(a^l))     (section 2.3, pre-norm)
    logits = norm(h^L) W_out^T                                  (an untied output matrix, no bias)

so position t's logits predict token t from tokens < t. ``norm="rms"`` is the official code's ``norm``, which
despite its docstring does not subtract the mean and has no bias: ``x * rsqrt(mean(x^2) + 1e-5) * g``
(``torch.nn.RMSNorm``); ``norm="layer"`` is GPT-2's LayerNorm. The MLP is 4x wide with the official ``gelu2``,
``x * sigmoid(1.702 x)`` (:class:`QuickGELU`). Attention is dense causal (the core's ``Attention(causal=True)``)
or a factorised sparse pattern of Child et al. 2019 (``"strided"`` / ``"fixed"``,
:class:`visionattn.layers.sparse_attention.SparseAttention`); with ``combine="interleaved"`` block i uses factor
i % 2 (the paper's "one pattern per residual block in turn"). None of the official code's layers has a bias
(``bias=False``, the default).

Initialisation as the official code (not GPT-2's): token embedding N(0, 0.02), position embedding N(0, 0.01), start
token N(0, 0.02), the output matrix zero (``wtet``, stddev 0.0: a fresh model predicts the uniform distribution),
q / k / v projections N(0, 1 / sqrt(dim)), the attention output projection N(0, 1 / sqrt(dim * depth)), both MLP
layers N(0, 0.02), norm scales 1 (and any bias 0).

Sampling reuses each layer's keys and values through an explicit :class:`KVCache` (``forward`` of
:class:`CausalSelfAttention` and :meth:`ImageGPT.extend` take it); see :mod:`visionattn.models.igpt_sample`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from visionattn.errors import UsageError, check_choice, check_range
from visionattn.layers.attention_core import attention, causal_mask
from visionattn.layers.helpers import LayerSpec, check_bool, check_positive_int, pair
from visionattn.layers.self_attention import MultiHeadSelfAttention, check_tokens
from visionattn.layers.transformer import Mlp
from visionattn.registry import register_model

__all__ = ["ImageGPT", "CausalSelfAttention", "IGPTBlock", "AttentionCache", "KVCache", "QuickGELU", "make_norm",
           "bits_per_dim", "NORMS", "ATTENTIONS", "IGPT_MODELS"]

NORMS = ("layer", "rms")
ATTENTIONS = ("dense", "strided", "fixed")
NORM_EPS = 1e-5  # the official norm's epsilon


class QuickGELU(nn.Module):
    """The official code's ``gelu2``: x * sigmoid(1.702 x), the sigmoid approximation of GELU.

    Shape:
        - Input: (*)
        - Output: (*)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_norm(norm: str, dim: int) -> nn.Module:
    """``"layer"``: LayerNorm; ``"rms"``: the official iGPT norm, x * rsqrt(mean(x^2) + eps) * g (no mean, no bias)."""
    check_choice("norm", norm, NORMS)
    return nn.LayerNorm(dim, eps=NORM_EPS) if norm == "layer" else nn.RMSNorm(dim, eps=NORM_EPS)


def _drop_bias(*linears: nn.Linear) -> None:
    """The official layers have no bias: remove a Linear's (F.linear takes bias None)."""
    for linear in linears:
        linear.register_parameter("bias", None)


@dataclass
class AttentionCache:
    """The keys and values one attention layer has computed for positions 0 .. ``length`` - 1, in buffers
    preallocated for the whole sequence (so a step writes one slot instead of copying the past).

    ``pattern`` is the layer's full (heads or 1, n, n) "may attend" mask, made on first use: a new query row t
    attends the cached keys with row t of it.

    Shape:
        - keys, values: (B, heads, seq_len, dim_head)
    """

    keys: torch.Tensor
    values: torch.Tensor
    length: int = 0
    pattern: torch.Tensor | None = None

    @property
    def capacity(self) -> int:
        return self.keys.shape[-2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions' keys and values; returns every cached position's."""
        end = self.length + k.shape[-2]
        if end > self.capacity:
            raise UsageError(f"cache: {end} positions would not fit the sequence length {self.capacity}")
        self.keys[:, :, self.length:end] = k
        self.values[:, :, self.length:end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]


@dataclass
class KVCache:
    """One :class:`AttentionCache` per block of an :class:`ImageGPT` (made by :meth:`ImageGPT.new_cache`)."""

    layers: list[AttentionCache]

    @property
    def length(self) -> int:
        return self.layers[0].length


def _sparse_attention(attention: str, stride: int, summary: int | None, combine: str, factor: int,
                      dropout: float) -> nn.Module:
    from visionattn.layers.sparse_attention import SparseAttention  # helper S's layer

    kwargs = {"summary": summary} if summary is not None else {}  # SparseAttention refuses one for "strided"
    if combine == "interleaved":
        kwargs["factor"] = factor
    return SparseAttention(pattern=attention, stride=stride, combine=combine, dropout=dropout, **kwargs)


class CausalSelfAttention(MultiHeadSelfAttention):
    """Causal multi-head self-attention with an optional key-value cache: :class:`MultiHeadSelfAttention`'s
    ``qkv`` / ``proj`` (here without biases, as the official code) and, as ``attend``, either the core's dense
    causal :class:`~visionattn.layers.attention_core.Attention` or a :class:`SparseAttention`.

    Args:
        dim, heads: width and heads (dim_head = dim / heads).
        attention: ``"dense"``, ``"strided"`` or ``"fixed"``; stride, summary, combine, factor: the sparse pattern's.
        dropout: on the attention weights and after ``proj``; bias: biases on qkv and proj.
        impl: the dense core's path (``"auto"``, ``"fused"``, ``"explicit"``).

    Shape:
        - Input: (B, N, dim); with a cache, N new positions after the ``cache.length`` cached ones
        - Output: (B, N, dim)
    """

    def __init__(self, dim: int, heads: int, attention: str = "dense", stride: int = 32, summary: int | None = None,
                 combine: str = "interleaved", factor: int = 0, dropout: float = 0.0, bias: bool = False,
                 impl: str = "auto") -> None:
        check_choice("attention", attention, ATTENTIONS)
        super().__init__(dim, heads, qkv_bias=bias, attn_drop=dropout, proj_drop=dropout, causal=True, impl=impl)
        if not bias:
            _drop_bias(self.proj)
        self.attention, self.dropout, self.impl = attention, dropout, impl
        if attention != "dense":
            self.attend = _sparse_attention(attention, stride, summary, combine, factor, dropout)

    def pattern(self, n: int, device: torch.device | None = None) -> torch.Tensor:
        """The (heads or 1, n, n) boolean mask this layer's attention computes (True = may attend)."""
        if self.attention == "dense":
            return causal_mask(n, n, device)[None]
        return self.attend.mask(n, self.heads, device)

    def forward(self, x: torch.Tensor, cache: AttentionCache | None = None) -> torch.Tensor:  # type: ignore[override]
        check_tokens(x, self.dim, type(self).__name__)
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads).unbind(0)
        if cache is None:
            out = self.attend(q, k, v)
        else:  # the new rows of the pattern against every cached key, through the core
            start, m = cache.length, q.shape[-2]
            k, v = cache.append(k, v)
            if cache.pattern is None:
                cache.pattern = self.pattern(cache.capacity, x.device)
            rows = cache.pattern[..., start:start + m, :start + m]
            out = attention(q, k, v, mask=rows, dropout_p=self.dropout if self.training else 0.0, impl=self.impl)
        return self.proj_drop(self.proj(rearrange(out, "b h n d -> b n (h d)")))


class IGPTBlock(nn.Module):
    """One decoder block (section 2.3): a = h + attention(norm(h)); h' = a + mlp(norm(a)).

    Shape:
        - Input: (B, N, dim), optional :class:`AttentionCache`
        - Output: (B, N, dim)
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, norm: str = "layer", dropout: float = 0.0,
                 bias: bool = False, act_layer: LayerSpec = QuickGELU, **attention_kwargs) -> None:
        super().__init__()
        self.norm1 = make_norm(norm, dim)
        self.attn = CausalSelfAttention(dim, heads, dropout=dropout, bias=bias, **attention_kwargs)
        self.norm2 = make_norm(norm, dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer, dropout)
        if not bias:
            _drop_bias(self.mlp.fc1, self.mlp.fc2)

    def forward(self, x: torch.Tensor, cache: AttentionCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cache)
        return x + self.mlp(self.norm2(x))


class ImageGPT(nn.Module):
    """Image GPT (Chen et al. 2020): a causal transformer predicting each palette token from the ones before it.

    Args:
        vocab_size: palette levels (512 for iGPT's colours, 16 grey levels).
        seq_len: tokens per image (H * W), the position embedding's length.
        dim, depth, heads: width, blocks, attention heads (official n_embd, n_layer, n_head).
        mlp_ratio: MLP width over ``dim`` (4).
        norm: ``"layer"`` (LayerNorm) or ``"rms"`` (the official code's norm, no mean subtraction and no bias).
        attention: ``"dense"`` (causal) or ``"strided"`` / ``"fixed"`` (Child et al. 2019).
        stride: the sparse pattern's l (default: the image width, so a strided head sees its row and column).
        summary: the fixed pattern's c; combine: ``"interleaved"`` (block i uses factor i % 2), ``"merged"`` or
            ``"per_head"``.
        dropout: on the embeddings, the attention weights and after every residual branch (official: 0).
        bias: biases on every linear layer (official: none). act_layer: the MLP's activation (official gelu2).
        image_size: (H, W) of the images, H * W = ``seq_len`` (default: a square of ``seq_len``).
        impl: the dense attention core's path.

    Shape:
        - Input: tokens (B, L) long, 1 <= L <= seq_len, values in [0, vocab_size)
        - Output: logits (B, L, vocab_size); row t predicts token t from tokens < t
    """

    generative = True  # the model contract checks it on token sequences, not images

    def __init__(self, vocab_size: int = 512, seq_len: int = 1024, dim: int = 512, depth: int = 24, heads: int = 8,
                 mlp_ratio: float = 4.0, norm: str = "layer", attention: str = "dense", stride: int | None = None,
                 summary: int | None = None, combine: str = "interleaved", dropout: float = 0.0, bias: bool = False,
                 act_layer: LayerSpec = QuickGELU, image_size: int | tuple[int, int] | None = None,
                 impl: str = "auto") -> None:
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("seq_len", seq_len), ("depth", depth)):
            check_positive_int(name, value)
        check_choice("norm", norm, NORMS)
        check_choice("attention", attention, ATTENTIONS)
        check_range("mlp_ratio", mlp_ratio, 1e-9, math.inf)
        check_range("dropout", dropout, 0.0, 1.0, high_open=True)
        check_bool("bias", bias)
        side = math.isqrt(seq_len)
        self.image_size = pair("image_size", image_size if image_size is not None else side)
        if self.image_size[0] * self.image_size[1] != seq_len:
            raise UsageError(f"image_size: {self.image_size} holds {self.image_size[0] * self.image_size[1]} pixels, "
                             f"but seq_len is {seq_len}; needed H * W == seq_len")
        stride = self.image_size[1] if stride is None else check_positive_int("stride", stride)
        self.vocab_size, self.seq_len, self.dim, self.depth = vocab_size, seq_len, dim, depth
        self.tok_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.zeros(seq_len, dim))
        self.sos = nn.Parameter(torch.zeros(dim))
        self.embed_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([
            IGPTBlock(dim, heads, mlp_ratio, norm, dropout, bias, act_layer, attention=attention, stride=stride,
                      summary=summary, combine=combine, factor=i % 2, impl=impl) for i in range(depth)])
        self.norm = make_norm(norm, dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The official code's initialisation (see the module docstring)."""
        nn.init.normal_(self.tok_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)
        nn.init.normal_(self.sos, std=0.02)
        nn.init.zeros_(self.head.weight)
        for block in self.blocks:
            nn.init.normal_(block.attn.qkv.weight, std=self.dim ** -0.5)
            nn.init.normal_(block.attn.proj.weight, std=(self.dim * self.depth) ** -0.5)
            nn.init.normal_(block.mlp.fc1.weight, std=0.02)
            nn.init.normal_(block.mlp.fc2.weight, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                module.reset_parameters()

    def _check_tokens(self, tokens: torch.Tensor, start: int = 0, argument: str = "tokens") -> None:
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
            got = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise UsageError(f"{argument}: needed a (B, L) tensor of palette tokens, got {got}")
        if tokens.dtype not in (torch.long, torch.int32, torch.int16, torch.uint8):
            raise UsageError(f"{argument}: needed integer tokens, got {tokens.dtype}")
        if not 0 < start + tokens.shape[1] <= self.seq_len:
            raise UsageError(f"{argument}: got {tokens.shape[1]} tokens after {start}, needed 1 to {self.seq_len} "
                             "in all (the model's seq_len)")
        if torch.compiler.is_compiling() or not tokens.numel():  # no data-dependent check in a compiled graph
            return
        if tokens.min() < 0 or tokens.max() >= self.vocab_size:
            raise UsageError(f"{argument}: needed values in [0, {self.vocab_size}), got {tokens.min().item()} to "
                             f"{tokens.max().item()}")

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """h^0: the start token, then the embeddings of tokens 0 .. L-2, plus the position embeddings 0 .. L-1."""
        self._check_tokens(tokens)
        b, n = tokens.shape
        x = torch.cat([self.sos.expand(b, 1, -1), self.tok_embed(tokens[:, :-1])], dim=1)
        return self.embed_drop(x + self.pos_embed[:n])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    def features(self, tokens: torch.Tensor, layer: int, normalize: bool = False) -> torch.Tensor:
        """The hidden states h^layer after block ``layer``, counted from 1 (``layer=0``: the embedded input,
        ``layer=depth``: the last block's output, before the final norm). ``normalize`` applies a parameter-free
        LayerNorm, the paper's n^l = layer_norm(h^l) whose average over positions is the linear probe's f^l
        (section 2.4, 3.3).

        Shape:
            - Input: tokens (B, L)
            - Output: (B, L, dim)
        """
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer <= self.depth:
            raise UsageError(f"layer: got {layer!r}, needed an integer from 0 to {self.depth} (the blocks, from 1)")
        x = self.embed(tokens)
        for block in self.blocks[:layer]:
            x = block(x)
        return F.layer_norm(x, (self.dim,), eps=NORM_EPS) if normalize else x

    def new_cache(self, batch: int, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> KVCache:
        """An empty :class:`KVCache` for ``batch`` sequences (on the model's device and dtype by default)."""
        check_positive_int("batch", batch)
        ref = self.head.weight
        shape = (batch, self.blocks[0].attn.heads, self.seq_len, self.blocks[0].attn.dim_head)
        kw = {"device": ref.device if device is None else device, "dtype": ref.dtype if dtype is None else dtype}
        return KVCache([AttentionCache(torch.zeros(shape, **kw), torch.zeros(shape, **kw)) for _ in self.blocks])

    def extend(self, cache: KVCache, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Feed the next inputs through the model, keeping their keys and values in ``cache``: the start token when
        the cache is empty, then ``tokens`` (the tokens whose successors come next). Returns the logits of every
        new position: row r predicts token ``cache.length`` (before the call) + r.

        Shape:
            - Input: tokens (B, m) or None (only on an empty cache)
            - Output: (B, m + 1, vocab) on an empty cache, else (B, m, vocab)
        """
        start, batch = cache.length, cache.layers[0].keys.shape[0]
        parts = [self.sos.expand(batch, 1, -1)] if start == 0 else []
        if tokens is not None:
            self._check_tokens(tokens, start + len(parts))
            if tokens.shape[0] != batch:
                raise UsageError(f"tokens: got a batch of {tokens.shape[0]}, but the cache holds {batch} sequences")
            parts.append(self.tok_embed(tokens))
        if not parts:
            raise UsageError("tokens: needed the next tokens (B, m); only an empty cache starts without them")
        x = torch.cat(parts, dim=1)
        x = self.embed_drop(x + self.pos_embed[start:start + x.shape[1]])
        for block, layer_cache in zip(self.blocks, cache.layers):
            x = block(x, layer_cache)
        return self.head(self.norm(x))


def bits_per_dim(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean negative log2-likelihood of ``tokens`` under ``logits``: cross-entropy in nats / ln 2, in bits per
    pixel of the palette image (for a 16-level image a uniform model scores 4.00; not 8-bit bits/dim).

    Shape:
        - Input: logits (B, L, vocab), tokens (B, L)
        - Output: scalar
    """
    return F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten().long()) / math.log(2)


# ---------------------------------------------------------------------------------------------- the named models
_PAPER = "Chen et al. 2020, Generative Pretraining from Pixels"
_OFFICIAL = {"vocab_size": 512, "seq_len": 1024, "image_size": 32, "norm": "rms"}  # 32x32, the 9-bit palette

# name: (configuration, description). iGPT-S/M/L: the official README's n_embd / n_head / n_layer at 32x32 with
# the official norm; parameters as the official code builds them without the optional classification head
# (``run.py`` without --clf): 76,571,648 / 455,157,760 / 1,362,250,752 (download.py: "s:76M, m:455M, l:1362M").
IGPT_MODELS: dict[str, tuple[dict, str]] = {
    "igpt_s": ({**_OFFICIAL, "dim": 512, "depth": 24, "heads": 8}, "iGPT-S: 24 blocks of width 512, 8 heads, 32x32"),
    "igpt_m": ({**_OFFICIAL, "dim": 1024, "depth": 36, "heads": 8}, "iGPT-M: 36 blocks of width 1024, 8 heads, 32x32"),
    "igpt_l": ({**_OFFICIAL, "dim": 1536, "depth": 48, "heads": 16},
               "iGPT-L: 48 blocks of width 1536, 16 heads, 32x32"),
    # 28x28 grey at 16 levels, small enough to train on 2 CPU cores in an hour (dense causal attention at n = 784
    # takes the core's fused path)
    "igpt_fashion": ({"vocab_size": 16, "seq_len": 784, "image_size": 28, "dim": 64, "depth": 4, "heads": 4,
                      "norm": "layer"}, "Image GPT for 28x28 grey images at 16 levels: 4 blocks of width 64, 4 heads"),
}

for _name, (_config, _description) in IGPT_MODELS.items():
    register_model(_name, paper=_PAPER, description=_description, family="igpt", defaults=_config)(ImageGPT)
