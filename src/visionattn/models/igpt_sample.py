"""Drawing images from an :class:`~visionattn.models.igpt.ImageGPT`, one token at a time, with a key-value cache.

Token t is drawn from softmax(logits_t / temperature), optionally restricted to the ``top_k`` most likely tokens,
given every token before it (eq. 1 of Chen et al. 2020, read as a sampler). With ``cache=True`` each step feeds only
the newest token through the model and attends the keys and values that every layer has kept for the earlier
positions (:class:`~visionattn.models.igpt.KVCache`; a sparse layer applies row t of its pattern's mask), so a
784-pixel image costs one pass over 784 positions instead of 784 passes over up to 784. ``cache=False`` runs the
whole sequence so far through the model at every step (as the official ``run.py:sample`` does over the full
length): the reference the cached sampler is tested against, and the baseline of ``benchmarks/igpt_sampling.py``.

Both draw token t by inverse transform sampling from one uniform number per sequence and step, taken from
``generator`` in the same order, so the same seed gives the same images on both paths (the cached logits equal
the full forward's to float rounding).
"""

from __future__ import annotations

import torch

from visionattn.errors import UsageError, check_finite
from visionattn.layers.helpers import check_bool, check_positive_int
from visionattn.models.igpt import ImageGPT

__all__ = ["sample", "pick_tokens", "check_sampling"]


def check_sampling(model: ImageGPT, batch: int, prefix: torch.Tensor | None, temperature: float,
                   top_k: int | None) -> None:
    """The sampler's arguments, checked before any work: a UsageError naming the first bad one."""
    if not isinstance(model, ImageGPT):
        raise UsageError(f"model: needed an ImageGPT, got {type(model).__name__}")
    check_positive_int("batch", batch)
    check_finite("temperature", temperature)
    if temperature <= 0:
        raise UsageError(f"temperature: got {temperature!r}, needed a number > 0 (1 samples the model as it is)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                              or not 1 <= top_k <= model.vocab_size):
        raise UsageError(f"top_k: got {top_k!r}, needed an integer from 1 to the vocabulary size "
                         f"{model.vocab_size} (or None for no restriction)")
    if prefix is None:
        return
    if not isinstance(prefix, torch.Tensor) or prefix.dim() != 2 or prefix.shape[0] != batch:
        got = tuple(prefix.shape) if isinstance(prefix, torch.Tensor) else type(prefix).__name__
        raise UsageError(f"prefix: needed a (batch={batch}, P) tensor of tokens, got {got}")
    if prefix.is_floating_point() or prefix.dtype == torch.bool:
        raise UsageError(f"prefix: needed integer tokens, got {prefix.dtype}")
    if prefix.shape[1] > model.seq_len:
        raise UsageError(f"prefix: got {prefix.shape[1]} tokens, needed at most the model's seq_len {model.seq_len}")
    if prefix.numel() and (prefix.min() < 0 or prefix.max() >= model.vocab_size):
        raise UsageError(f"prefix: needed tokens in [0, {model.vocab_size}), got {prefix.min().item()} to "
                         f"{prefix.max().item()}")


def pick_tokens(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of ``logits`` from softmax(logits / temperature) over its ``top_k`` largest entries:
    the first token whose cumulative probability exceeds a uniform draw u in [0, 1) (inverse transform sampling).

    Shape:
        - Input: (B, vocab)
        - Output: (B,) long
    """
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        keep = logits.topk(top_k, dim=-1).indices
        logits = torch.full_like(logits, float("-inf")).scatter(-1, keep, logits.gather(-1, keep))
    cdf = logits.softmax(-1).cumsum(-1)
    device = generator.device if generator is not None else logits.device
    u = torch.rand(logits.shape[0], 1, generator=generator, device=device).to(logits.device)
    return (cdf <= u * cdf[:, -1:]).sum(-1).clamp_max(logits.shape[-1] - 1)


def _cached(model: ImageGPT, tokens: torch.Tensor, start: int, draw) -> None:
    cache = model.new_cache(tokens.shape[0])
    logits = model.extend(cache, tokens[:, :start] if start else None)[:, -1]
    for t in range(start, model.seq_len):
        tokens[:, t] = draw(logits)
        if t + 1 < model.seq_len:
            logits = model.extend(cache, tokens[:, t:t + 1])[:, -1]


def _uncached(model: ImageGPT, tokens: torch.Tensor, start: int, draw) -> None:
    for t in range(start, model.seq_len):
        tokens[:, t] = draw(model(tokens[:, :t + 1])[:, -1])  # row t sees tokens < t only


@torch.no_grad()
def sample(model: ImageGPT, batch: int, prefix: torch.Tensor | None = None, temperature: float = 1.0,
           top_k: int | None = None, generator: torch.Generator | None = None, cache: bool = True) -> torch.Tensor:
    """Sample ``batch`` token sequences of the model's ``seq_len`` (in eval mode; the mode is restored).

    Args:
        model: an :class:`ImageGPT`.
        batch: sequences to draw.
        prefix: (batch, P) given first tokens, kept as they are (completion: the top rows of an image).
        temperature: > 0; below 1 sharpens, above 1 flattens the distribution.
        top_k: sample among the k most likely tokens only (None: all).
        generator: the source of the uniform draws (for reproducibility; on any device).
        cache: reuse keys and values (True) or rerun the whole prefix every step (False, the reference).

    Shape:
        - Output: (batch, seq_len) long, on the model's device
    """
    check_sampling(model, batch, prefix, temperature, top_k)
    check_bool("cache", cache)
    device = model.head.weight.device
    tokens = torch.zeros(batch, model.seq_len, dtype=torch.long, device=device)
    start = 0 if prefix is None else prefix.shape[1]
    if start:
        tokens[:, :start] = prefix.to(device)
    if start == model.seq_len:
        return tokens
    was_training = model.training
    model.eval()
    try:
        draw = lambda logits: pick_tokens(logits, temperature, top_k, generator)  # noqa: E731
        (_cached if cache else _uncached)(model, tokens, start, draw)
    finally:
        model.train(was_training)
    return tokens
