"""The generic layer contract: every registered layer, registered now or later, passes these without extra code."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import visionattn
from visionattn import testing
from visionattn.registry import create_attn_for_size, get_attn_entry

CHANNELS = 32
SIZES = ((8, 8), (12, 10))


def _cases() -> list[tuple[str, dict[str, Any]]]:
    cases = []
    for name in visionattn.list_attn():
        entry = get_attn_entry(name)
        for i, variant in enumerate(({}, *entry.variants)):
            cases.append(pytest.param(name, dict(variant), id=f"{name}-{i}" if i else name))
    return cases


def _build(name: str, variant: dict[str, Any], size: tuple[int, int], channels: int = CHANNELS):
    torch.manual_seed(0)
    return create_attn_for_size(name, max(channels, get_attn_entry(name).min_channels), size, **variant)


def _input(name: str, size: tuple[int, int], batch: int = 3, channels: int = CHANNELS) -> torch.Tensor:
    c = max(channels, get_attn_entry(name).min_channels)
    return torch.randn(batch, c, *size, generator=torch.Generator().manual_seed(1))


def _expected(name: str, variant: dict[str, Any], x: torch.Tensor) -> tuple[int, ...]:
    b, c, h, w = x.shape
    if not get_attn_entry(name).conv_like:
        return (b, c, h, w)
    stride = variant.get("stride", 1)
    return (b, variant.get("out_channels", c), math.ceil(h / stride), math.ceil(w / stride))


CASES = _cases()


@pytest.mark.parametrize("name,variant", CASES)
def test_output_shape_and_resolutions(name, variant):
    sizes = SIZES[:1] if get_attn_entry(name).needs_spatial_size else SIZES
    for size in sizes:
        layer = _build(name, variant, size)
        x = _input(name, size)
        testing.check_output_shape(layer, x, _expected(name, variant, x))


@pytest.mark.parametrize("name,variant", CASES)
def test_gradients_reach_every_parameter(name, variant):
    layer = _build(name, variant, SIZES[0])
    testing.check_grads_reach_params(layer, _input(name, SIZES[0]))


@pytest.mark.parametrize("name,variant", CASES)
def test_finite_for_large_inputs(name, variant):
    layer = _build(name, variant, SIZES[0])
    testing.check_finite(layer, _input(name, SIZES[0]) * 1e3)


@pytest.mark.parametrize("name,variant", CASES)
def test_eval_batch_independence(name, variant):
    layer = _build(name, variant, SIZES[0])
    layer.train()(_input(name, SIZES[0]))  # move BatchNorm running statistics off their initial values
    testing.check_batch_independence(layer, _input(name, SIZES[0], batch=4))


@pytest.mark.parametrize("name,variant", CASES)
def test_empty_batch_gives_an_empty_output(name, variant):
    layer = _build(name, variant, SIZES[0])
    x = _input(name, SIZES[0], batch=0)
    testing.check_empty_batch(layer, x, _expected(name, variant, x))


@pytest.mark.parametrize("name,variant", CASES)
def test_batch_of_one_in_training_works_or_says_why(name, variant):
    layer = _build(name, variant, SIZES[0])
    x = _input(name, SIZES[0], batch=1)
    worked = testing.check_batch_of_one(layer, x, _expected(name, variant, x))
    # those whose BatchNorm normalises a pooled map cannot train on one sample; every other layer can
    assert worked == (name not in BATCH_NORM_OVER_POOLED or _gathers_to_more_than_1x1(name, variant))


BATCH_NORM_OVER_POOLED = {"bam", "ge_theta", "ge_theta_plus", "sk", "splat", "splat0"}


def _gathers_to_more_than_1x1(name: str, variant: dict[str, Any]) -> bool:
    """GE-theta with a local extent e gathers an 8x8 map to (8 / e)^2 positions: a BatchNorm sees several."""
    extent = variant.get("extent", 0)
    return name.startswith("ge_theta") and 0 < extent < min(SIZES[0])


@pytest.mark.parametrize("name,variant", CASES)
def test_bf16_forward(name, variant):
    layer = _build(name, variant, SIZES[0])
    testing.check_bf16(layer, _input(name, SIZES[0]))


@pytest.mark.parametrize("name,variant", CASES)
def test_compile_matches_eager(name, variant):
    layer = _build(name, variant, SIZES[0])
    testing.check_compile(layer, _input(name, SIZES[0]))


@pytest.mark.parametrize("name,variant", CASES)
def test_gradcheck_float64(name, variant):
    size = (4, 4) if get_attn_entry(name).needs_spatial_size else (5, 4)
    layer = _build(name, variant, size, channels=8)
    testing.check_gradcheck(layer, _input(name, size, batch=2, channels=8))


@pytest.mark.parametrize("name,variant", CASES)
def test_bad_input_raises_value_error(name, variant):
    layer = _build(name, variant, SIZES[0])
    x = _input(name, SIZES[0])
    with pytest.raises(ValueError, match="4-D"):
        layer(x[0])
    with pytest.raises(ValueError, match="channels"):
        layer(torch.cat([x, x[:, :1]], dim=1))


def test_registry_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown attention layer name 'nope'"):
        visionattn.create_attn("nope", 8)


def test_every_entry_is_documented():
    for name in visionattn.list_attn():
        entry = get_attn_entry(name)
        assert entry.paper and entry.description and entry.family, name
        doc = entry.factory.__doc__ or ""
        assert "Shape:" in doc, f"{name}: docstring needs a Shape: section"
