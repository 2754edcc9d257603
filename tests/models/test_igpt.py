"""Image GPT: shapes, causality, the norm and attention formulas, bits/dim by hand, the official parameter counts and
initialisation, the sparse variants against their masks, and cached sampling against uncached."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import visionattn
from visionattn.complexity import count_params
from visionattn.errors import UsageError
from visionattn.layers.sparse_patterns import heads_on_first, sparse_masks
from visionattn.models.igpt import CausalSelfAttention, ImageGPT, bits_per_dim, make_norm
from visionattn.models.igpt_sample import pick_tokens, sample

# (attention, extra arguments): dense, and each sparse pattern with each way of combining its factors
VARIANTS = [("dense", {}), ("strided", {}), ("fixed", {"summary": 2}), ("strided", {"combine": "merged"}),
            ("fixed", {"combine": "per_head", "summary": 1})]


def _tiny(attention: str = "dense", seed: int = 0, **kwargs) -> ImageGPT:
    """A 4x4-image model with random weights of a trained size (the official zero output matrix would make every
    logit equal, and hide what the tests look for)."""
    torch.manual_seed(seed)
    config = {"vocab_size": 8, "seq_len": 16, "dim": 16, "depth": 2, "heads": 2, "attention": attention, **kwargs}
    model = ImageGPT(**config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model.eval()


def _tokens(batch: int, n: int = 16, vocab: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randint(vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------- the model
def test_shapes_of_logits_and_features():
    model = _tiny()
    tokens = _tokens(3)
    assert model(tokens).shape == (3, 16, 8) and model(tokens[:, :5]).shape == (3, 5, 8)
    assert model.features(tokens, 0).shape == model.features(tokens, 2).shape == (3, 16, 16)
    # features(depth) is what the output layer reads, before the final norm
    torch.testing.assert_close(model.head(model.norm(model.features(tokens, 2))), model(tokens))
    pooled = model.features(tokens, 1, normalize=True)
    torch.testing.assert_close(pooled.mean(-1), torch.zeros(3, 16), atol=1e-5, rtol=0)


@pytest.mark.parametrize("attention,extra", VARIANTS[:3])
def test_logits_at_t_see_only_tokens_before_t(attention, extra):
    model = _tiny(attention, stride=4, **extra) if attention != "dense" else _tiny()
    tokens = _tokens(2)
    base = model(tokens)
    for t in (0, 5, 14):
        changed = tokens.clone()
        changed[:, t] = (changed[:, t] + 1) % 8
        out = model(changed)
        torch.testing.assert_close(out[:, :t + 1], base[:, :t + 1], atol=1e-6, rtol=0)  # rows <= t: unchanged
        assert not torch.allclose(out[:, t + 1], base[:, t + 1])  # row t + 1 reads token t


def test_position_0_depends_only_on_the_start_token():
    model = _tiny()
    a, b = model(_tokens(2, seed=3)), model(_tokens(2, seed=4))
    torch.testing.assert_close(a[:, 0], b[:, 0], atol=0, rtol=0)
    with torch.no_grad():  # not a constant shift: LayerNorm would remove it
        model.sos.add_(torch.randn(16, generator=torch.Generator().manual_seed(0)))
    assert not torch.allclose(model(_tokens(2, seed=3))[:, 0], a[:, 0])


def test_rms_norm_is_the_official_formula():
    torch.manual_seed(0)
    norm = make_norm("rms", 6)
    assert [n for n, _ in norm.named_parameters()] == ["weight"]  # a scale g, no bias
    with torch.no_grad():
        norm.weight.normal_()
    x = (torch.randn(3, 5, 6) * 3 + 2).requires_grad_()
    out = norm(x)
    want = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight  # no mean subtracted
    torch.testing.assert_close(out, want)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, norm.weight), grad)
    torch.testing.assert_close(got, torch.autograd.grad(want, (x, norm.weight), grad))
    assert not torch.allclose(out, make_norm("layer", 6)(x) * norm.weight)  # LayerNorm subtracts the mean


def test_bits_per_dim_by_hand_and_the_uniform_model():
    model = _tiny()
    tokens = _tokens(2)
    logits = model(tokens)
    total = 0.0
    for b in range(2):
        for t in range(16):
            row = logits[b, t].double()
            total -= math.log2(row[tokens[b, t]].exp().item() / row.exp().sum().item())
    assert bits_per_dim(logits, tokens).item() == pytest.approx(total / 32, rel=1e-5)
    nats = F.cross_entropy(logits.flatten(0, 1), tokens.flatten())
    assert bits_per_dim(logits, tokens).item() == pytest.approx(nats.item() / math.log(2), rel=1e-6)
    # a fresh model (zero output matrix, as the official code) is the uniform model: 4.00 bits at 16 levels
    fresh = visionattn.create_model("igpt_fashion", depth=1)
    tokens = torch.randint(16, (1, 784), generator=torch.Generator().manual_seed(0))
    assert bits_per_dim(fresh(tokens), tokens).item() == pytest.approx(4.0, abs=1e-6)


def _definition(layer: CausalSelfAttention, n: int) -> torch.Tensor:
    """The (heads, n, n) mask the layer's definition implies: causal for dense; the pattern's factor A(r) per
    block, A(1) u A(2) merged, or one factor per head (sparse_patterns' definitions)."""
    if layer.attention == "dense":
        return torch.ones(n, n, dtype=torch.bool).tril().expand(layer.heads, n, n)
    sparse = layer.attend
    masks = sparse_masks(sparse.pattern, n, sparse.stride, sparse.summary_for(sparse.stride))
    if sparse.combine == "interleaved":
        return masks[sparse.factor].expand(layer.heads, n, n)
    if sparse.combine == "merged":
        return (masks[0] | masks[1]).expand(layer.heads, n, n)
    first = heads_on_first(layer.heads)
    return torch.cat([masks[0].expand(first, n, n), masks[1].expand(layer.heads - first, n, n)])


@pytest.mark.parametrize("attention,extra", [*VARIANTS, ("fixed", {"summary": 2, "factor": 1})])
def test_attention_layer_formula_forward_and_gradients(attention, extra):
    torch.manual_seed(0)
    layer = CausalSelfAttention(8, 2, attention, stride=3, **extra)
    x = torch.randn(2, 11, 8, requires_grad=True)
    q, k, v = (x @ layer.qkv.weight.T).view(2, 11, 3, 2, 4).permute(2, 0, 3, 1, 4)  # (3, B, h, n, d)
    logits = (q @ k.transpose(-1, -2) / 2.0).masked_fill(~_definition(layer, 11), float("-inf"))
    weights = logits.softmax(-1).nan_to_num(0.0)  # a row with no key (fixed A(2) early on) gives 0
    want = (weights @ v).transpose(1, 2).reshape(2, 11, 8) @ layer.proj.weight.T  # no biases
    out = layer(x)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-4)
    grad = torch.randn_like(out)
    params = (x, layer.qkv.weight, layer.proj.weight)
    torch.testing.assert_close(torch.autograd.grad(out, params, grad), torch.autograd.grad(want, params, grad),
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("attention,extra", VARIANTS)
def test_fast_forward_equals_the_masked_core_and_the_cached_logits(attention, extra):
    """The forward pass (dense fused/explicit path or the sparse fast path) equals the cached pass, which applies
    each layer's mask through the core's attention(mask=rows): all at once, and one position at a time."""
    model = _tiny(attention, stride=4, **extra) if attention != "dense" else _tiny()
    tokens = _tokens(2)
    full = model(tokens)
    with torch.no_grad():
        torch.testing.assert_close(model.extend(model.new_cache(2), tokens[:, :-1]), full, atol=1e-5, rtol=1e-5)
        cache = model.new_cache(2)
        steps = [model.extend(cache)] + [model.extend(cache, tokens[:, t:t + 1]) for t in range(15)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_sparse_variants_build_with_the_image_width_as_stride():
    model = visionattn.create_model("igpt_fashion", attention="strided", depth=2)
    assert model.image_size == (28, 28) and model.blocks[0].attn.attend.stride == 28
    assert [b.attn.attend.factor for b in model.blocks] == [0, 1]  # interleaved: block i uses factor i % 2


# ---------------------------------------------------------------------------------- configurations and init
def _official_count(n_embd: int, n_head: int, n_layer: int, n_ctx: int = 1024, n_vocab: int = 512) -> int:
    """The trainable variables of openai/image-gpt ``src/model.py`` as ``src/run.py`` builds it (without --clf,
    no classification head): per block ln_1/g, attn q/k/v/c_proj [n_head, n_embd / n_head, n_embd], ln_2/g,
    mlp c_fc [n_embd, 4 n_embd] and c_proj [4 n_embd, n_embd] (no biases); wpe, wte, wtet, sos, ln_f/g."""
    block = 2 * n_embd + 4 * n_head * (n_embd // n_head) * n_embd + 2 * 4 * n_embd * n_embd
    return n_layer * block + n_ctx * n_embd + 2 * n_vocab * n_embd + 2 * n_embd


@pytest.mark.parametrize("name,official,millions", [("igpt_s", (512, 8, 24), 76), ("igpt_m", (1024, 8, 36), 455),
                                                    ("igpt_l", (1536, 16, 48), 1362)])
def test_parameter_counts_are_the_official_codes(name, official, millions):
    with torch.device("meta"):  # no memory: shapes only
        model = visionattn.create_model(name)
        layer_norm = visionattn.create_model(name, norm="layer")
    assert all(p.is_meta for p in model.parameters())
    count = count_params(model)
    assert count == _official_count(*official)
    assert count // 10**6 == millions  # download.py: "s:76M, m:455M, l:1362M"
    assert abs(count_params(layer_norm) / count - 1) < 1e-3  # LayerNorm's biases add under 0.1 %
    assert (model.dim, model.blocks[0].attn.heads, model.depth, model.seq_len) == (*official, 1024)


def _std_close(t: torch.Tensor, want: float) -> bool:
    return abs(t.detach().std().item() / want - 1) <= 0.1 + 4 / (2 * t.numel()) ** 0.5


def test_initialisation_is_the_official_codes():
    torch.manual_seed(0)
    model = visionattn.create_model("igpt_fashion")
    dim, depth = model.dim, model.depth
    assert _std_close(model.tok_embed.weight, 0.02) and _std_close(model.pos_embed, 0.01)
    assert _std_close(model.sos, 0.02) and not model.head.weight.any()  # wtet: stddev 0.0
    for block in model.blocks:
        assert _std_close(block.attn.qkv.weight, dim ** -0.5)
        assert _std_close(block.attn.proj.weight, (dim * depth) ** -0.5)
        assert _std_close(block.mlp.fc1.weight, 0.02) and _std_close(block.mlp.fc2.weight, 0.02)
        assert torch.equal(block.norm1.weight, torch.ones(dim))
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.bad_input
@pytest.mark.parametrize("call,match", [
    (lambda m: m(torch.rand(1, 4)), "needed integer tokens"),
    (lambda m: m(torch.full((1, 4), 8)), r"values in \[0, 8\)"),
    (lambda m: m(torch.zeros(1, 17, dtype=torch.long)), "needed 1 to 16"),
    (lambda m: m(torch.zeros(4, dtype=torch.long)), r"needed a \(B, L\) tensor"),
    (lambda m: m.features(torch.zeros(1, 4, dtype=torch.long), 3), "layer: got 3, needed an integer from 0 to 2"),
    (lambda m: m.extend(m.new_cache(2), torch.zeros(1, 3, dtype=torch.long)), "cache holds 2"),
    (lambda m: ImageGPT(seq_len=784, image_size=(28, 27)), "needed H \\* W == seq_len"),
    (lambda m: ImageGPT(attention="stridded"), "did you mean 'strided'"),
    (lambda m: ImageGPT(norm="rmsnorm", depth=1, dim=8), "needed one of 'layer', 'rms'"),
])
def test_bad_model_arguments_are_usage_errors(call, match):
    with pytest.raises(UsageError, match=match):
        call(_tiny())


# ----------------------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("attention,extra", VARIANTS)
@pytest.mark.parametrize("prefix_len", [0, 6])
def test_cached_sampling_equals_uncached(attention, extra, prefix_len):
    model = _tiny(attention, stride=4, **extra) if attention != "dense" else _tiny()
    prefix = _tokens(3, prefix_len, seed=5) if prefix_len else None
    draws = [sample(model, 3, prefix, temperature=1.2, top_k=5, generator=torch.Generator().manual_seed(9),
                    cache=cache) for cache in (True, False)]
    assert torch.equal(draws[0], draws[1]) and draws[0].shape == (3, 16)
    if prefix is not None:
        assert torch.equal(draws[0][:, :prefix_len], prefix)


def test_sampling_is_reproducible_keeps_the_mode_and_top_k_1_is_greedy():
    model = _tiny().train()
    a = sample(model, 4, generator=torch.Generator().manual_seed(0))
    assert model.training  # restored
    assert torch.equal(a, sample(model, 4, generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(a, sample(model, 4, generator=torch.Generator().manual_seed(1)))
    greedy = sample(model, 2, top_k=1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(greedy).argmax(-1), greedy)  # every token is the most likely given the past


def test_pick_tokens_draws_from_the_softmax_and_honours_top_k():
    logits = torch.tensor([[math.log(0.5), math.log(0.3), math.log(0.2)]]).expand(20000, 3)
    g = torch.Generator().manual_seed(0)
    freq = torch.bincount(pick_tokens(logits, generator=g), minlength=3).double() / 20000
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.3, 0.2], dtype=torch.double), atol=0.015, rtol=0)
    top2 = torch.bincount(pick_tokens(logits, top_k=2, generator=g), minlength=3).double() / 20000
    torch.testing.assert_close(top2, torch.tensor([0.625, 0.375, 0.0], dtype=torch.double), atol=0.015, rtol=0)
    cold = pick_tokens(logits, temperature=0.05, generator=g)  # p ~ softmax(log p / 0.05): all but certain
    assert (cold == 0).float().mean() > 0.99


@pytest.mark.bad_input
@pytest.mark.parametrize("kwargs,match", [
    ({"temperature": 0.0}, "temperature: got 0.0, needed a number > 0"),
    ({"temperature": -1.0}, "temperature"),
    ({"top_k": 0}, "top_k: got 0, needed an integer from 1"),
    ({"top_k": 9}, "top_k: got 9"),
    ({"prefix": torch.zeros(2, 17, dtype=torch.long)}, "at most the model's seq_len 16"),
    ({"prefix": torch.full((2, 3), 8)}, r"prefix: needed tokens in \[0, 8\)"),
    ({"prefix": torch.zeros(3, 3, dtype=torch.long)}, r"prefix: needed a \(batch=2, P\)"),
    ({"prefix": torch.zeros(2, 3)}, "prefix: needed integer tokens"),
    ({"cache": "yes"}, "cache must be True or False"),
])
def test_bad_sampling_arguments_are_usage_errors(kwargs, match):
    with pytest.raises(UsageError, match=match):
        sample(_tiny(), 2, **kwargs)
