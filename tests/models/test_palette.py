"""The k-means palette: exact 1-D k-means for grey, Lloyd's for RGB, the round trip, raster order, the state, errors."""

from __future__ import annotations

import itertools

import pytest
import torch

from visionattn.errors import UsageError
from visionattn.models.palette import Palette, kmeans_1d, kmeans_rgb


def _eight_bit(shape, seed: int, high: int = 256) -> torch.Tensor:
    """Images on the 8-bit grid k / 255, as Fashion-MNIST's (skewed towards dark pixels, as its are)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) ** 3 * high).floor().clamp_max(high - 1) / 255


def _sse(values: torch.Tensor, centroids: torch.Tensor) -> float:
    v = values.reshape(-1, 1).double()
    return (v - centroids.double().reshape(1, -1)).pow(2).min(1).values.sum().item()


def _brute_force_1d(values: torch.Tensor, levels: int) -> float:
    """The least k-means cost over every split of the sorted distinct values into ``levels`` contiguous runs
    (an optimal 1-D partition is contiguous), each run's centroid its weighted mean."""
    distinct, counts = torch.unique(values.double(), return_counts=True)
    best = float("inf")
    for cuts in itertools.combinations(range(1, distinct.numel()), levels - 1):
        edges = (0, *cuts, distinct.numel())
        cost = 0.0
        for a, b in zip(edges[:-1], edges[1:]):
            v, w = distinct[a:b], counts[a:b].double()
            mean = (v * w).sum() / w.sum()
            cost += (w * (v - mean) ** 2).sum().item()
        best = min(best, cost)
    return best


@pytest.mark.parametrize("levels", [2, 3, 4])
def test_grey_kmeans_is_the_exact_optimum(levels):
    values = _eight_bit((400,), seed=levels, high=10)  # 10 distinct 8-bit values: every split can be tried
    centroids = kmeans_1d(values, levels)
    assert centroids.shape == (levels,) and (centroids.diff() > 0).all()
    assert _sse(values, centroids) == pytest.approx(_brute_force_1d(values, levels), rel=1e-9, abs=1e-12)


def test_grey_palette_of_8_bit_images_has_16_sorted_levels_and_is_deterministic():
    images = _eight_bit((20, 1, 28, 28), seed=0)
    palette = Palette.fit(images)
    assert palette.levels == 16 and palette.channels == 1
    assert (palette.centroids[1:] > palette.centroids[:-1]).all()
    assert torch.equal(Palette.fit(images).centroids, palette.centroids)
    # every centroid is the mean of the pixels nearest to it (a k-means fixed point)
    tokens = palette.encode(images).flatten()
    for i in range(16):
        assert palette.centroids[i, 0].item() == pytest.approx(images.flatten()[tokens == i].mean().item(), abs=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_decode_of_encode_is_the_nearest_centroid(channels):
    images = torch.rand(3, channels, 5, 6, generator=torch.Generator().manual_seed(1))
    palette = Palette.fit(images, levels=8 if channels == 1 else 20, seed=0)
    pixels = images.permute(0, 2, 3, 1).reshape(-1, channels)
    nearest = palette.centroids[((pixels[:, None] - palette.centroids[None]) ** 2).sum(-1).argmin(1)]
    want = nearest.reshape(3, 5, 6, channels).permute(0, 3, 1, 2)
    assert torch.equal(palette.decode(palette.encode(images), (channels, 5, 6)), want)


@pytest.mark.parametrize("channels", [1, 3])
def test_encode_of_decode_is_the_identity(channels):
    images = torch.rand(4, channels, 8, 8, generator=torch.Generator().manual_seed(2))
    palette = Palette.fit(images, levels=16 if channels == 1 else 64, seed=3)
    tokens = torch.randint(palette.levels, (5, 12), generator=torch.Generator().manual_seed(4))
    assert torch.equal(palette.encode(palette.decode(tokens, (channels, 3, 4))), tokens)


def test_tokens_are_in_raster_order():
    palette = Palette(torch.tensor([[0.0], [0.5], [1.0]]))
    image = torch.tensor([[[0.0, 0.5, 1.0], [1.0, 1.0, 0.0]]])[None]  # (1, 1, 2, 3): rows y, columns x
    assert palette.encode(image).tolist() == [[0, 1, 2, 2, 2, 0]]  # token y * W + x


def test_rgb_palette_is_seeded_and_a_lloyd_fixed_point():
    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    a = Palette.fit(images, levels=32, seed=7, max_pixels=1000)
    assert torch.equal(a.centroids, Palette.fit(images, levels=32, seed=7, max_pixels=1000).centroids)
    assert not torch.equal(a.centroids, Palette.fit(images, levels=32, seed=8, max_pixels=1000).centroids)
    pixels = torch.rand(500, 3, generator=torch.Generator().manual_seed(6))
    centroids = kmeans_rgb(pixels, 10, seed=0, iters=100)
    assign = ((pixels[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    for i in range(10):
        torch.testing.assert_close(centroids[i], pixels[assign == i].mean(0), atol=1e-5, rtol=0)


def test_rgb_default_is_the_9_bit_palette():
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    palette = Palette.fit(images, seed=0, iters=2)
    assert palette.levels == 512 and palette.channels == 3


def test_state_is_tensors_and_round_trips():
    images = _eight_bit((4, 1, 10, 10), seed=3)
    palette = Palette.fit(images, levels=6)
    state = palette.state_dict()
    assert set(state) == {"centroids"} and all(isinstance(v, torch.Tensor) for v in state.values())
    again = Palette.from_state_dict(state)
    assert again.levels == 6 and torch.equal(again.encode(images), palette.encode(images))


@pytest.mark.bad_input
@pytest.mark.parametrize("call,match", [
    (lambda p: Palette.fit(torch.rand(2, 2, 4, 4)), "images: got 2 channels"),
    (lambda p: p.encode(torch.rand(2, 3, 4, 4)), "images: got 3 channels .* needed 1"),
    (lambda p: p.encode(torch.rand(1, 1, 4, 4) * 2), r"values must lie in \[0, 1\]"),
    (lambda p: p.encode(torch.full((1, 1, 2, 2), float("nan"))), r"values must lie in \[0, 1\]"),
    (lambda p: p.encode(torch.ones(1, 1, 2, 2, dtype=torch.uint8)), "floating-point pixels"),
    (lambda p: Palette.fit(torch.rand(1, 1, 4, 4), levels=1), "levels must be an integer >= 2"),
    (lambda p: Palette.fit(torch.tensor([0.0, 1.0]).repeat(8).view(1, 1, 4, 4), levels=3), "only 2 distinct"),
    (lambda p: p.decode(torch.tensor([[0, 9]]), (1, 1, 2)), r"values in \[0, 3\)"),
    (lambda p: p.decode(torch.tensor([[0, 1]]), (1, 2, 2)), r"needed \(B, 4\)"),
    (lambda p: p.decode(torch.tensor([[0, 1]]), (3, 1, 2)), "palette has 1"),
    (lambda p: Palette.from_state_dict({"centres": torch.zeros(2, 1)}), "with 'centroids'"),
    (lambda p: Palette(torch.tensor([[0.5], [0.5]])), "distinct"),
])
def test_bad_input_is_a_usage_error(call, match):
    palette = Palette(torch.tensor([[0.0], [0.5], [1.0]]))
    with pytest.raises(UsageError, match=match):
        call(palette)
