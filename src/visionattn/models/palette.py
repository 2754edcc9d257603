"""Pixels to tokens and back: the k-means colour palette of Image GPT (Chen et al. 2020, section 3.2).

iGPT models a 32x32 RGB image as 1024 tokens: every (R, G, B) pixel is replaced by the nearest of 512 colours
found by k-means ("a 9-bit palette", the official ``kmeans_centers.npy``; ``src/utils.py:color_quantize`` encodes
by the nearest centre, ``src/run.py:sample`` decodes by looking the centre up), read in raster order (token
``y * W + x``). For grey images the same idea in one dimension: 16 levels by 1-D k-means, solved exactly.

- Grey (C = 1): exact 1-D k-means by dynamic programming over the distinct pixel values (an optimal k-means
  partition of sorted values is into contiguous runs; Bellman 1973, Wang & Song 2011 "Ckmeans.1d.dp"). The values
  are first put on the grid of 1 / 4080 (= 1 / (255 * 16)), which holds every 8-bit value exactly, so for 8-bit
  images (Fashion-MNIST) the result is the exact optimum; other images are clustered on that grid.
- RGB (C = 3): Lloyd's k-means (k-means++ start, seeded) on a random sample of pixels, as iGPT's palette was
  fitted on a sample of ImageNet pixels; an emptied cluster is moved to the pixel farthest from its centre.

Encoding is the nearest centroid (grey: by the midpoints of the sorted levels; RGB: by exact squared distances),
so ``decode(encode(x))`` is each pixel's nearest centroid and ``encode(decode(t)) == t``. The palette's state is
one float tensor, ``centroids`` (levels, C), safe to store in a pickle-free checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from einops import rearrange

from visionattn.errors import UsageError
from visionattn.layers.helpers import check_positive_int

__all__ = ["Palette", "kmeans_1d", "kmeans_rgb", "DEFAULT_LEVELS", "GREY_GRID"]

DEFAULT_LEVELS = {1: 16, 3: 512}  # the 16 grey levels; iGPT's 9-bit colour palette
GREY_GRID = 255 * 16  # grey values are clustered on the grid k / 4080: every 8-bit value k / 255 lies on it
_CHUNK = 8192  # pixels per distance block in the RGB assignment (8192 x 512 distances)


def _check_images(images: torch.Tensor, argument: str, channels: tuple[int, ...]) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise UsageError(f"{argument}: needed a (B, C, H, W) tensor of images, got {shape}")
    if images.shape[1] not in channels:
        raise UsageError(f"{argument}: got {images.shape[1]} channels (shape {tuple(images.shape)}), needed "
                         f"{' or '.join(map(str, channels))}")
    if not images.is_floating_point():
        raise UsageError(f"{argument}: needed floating-point pixels in [0, 1], got {images.dtype} (divide 8-bit "
                         "images by 255)")
    if images.numel() and not ((images >= 0) & (images <= 1)).all():  # NaN fails both comparisons
        raise UsageError(f"{argument}: pixel values must lie in [0, 1], got values from {images.min().item():.4g} "
                         f"to {images.max().item():.4g}")


def _check_levels(levels: int, distinct: int) -> int:
    check_positive_int("levels", levels, minimum=2)
    if distinct < levels:
        raise UsageError(f"levels: got {levels}, but the images hold only {distinct} distinct pixel values; needed "
                         f"at most {distinct} levels (or more varied images)")
    return levels


def kmeans_1d(values: torch.Tensor, levels: int) -> torch.Tensor:
    """Exact 1-D k-means of ``values`` (any shape) on the grid k / :data:`GREY_GRID`: the ``levels`` centroids,
    ascending, that minimise the summed squared distance of every value to its nearest centroid.

    Dynamic programming over the u distinct values v_0 < ... < v_{u-1} with counts w: D_k(i), the least cost of
    v_0..v_i in k runs, is min_j D_{k-1}(j - 1) + cost(j, i), cost(j, i) the weighted squared deviation of
    v_j..v_i from their mean (by prefix sums). O(levels * u^2) with u <= 4081 distinct values.

    Shape:
        - Input: values (*), in [0, 1]
        - Output: (levels,) float32, ascending
    """
    grid = torch.round(values.detach().reshape(-1).float() * GREY_GRID).to(torch.int32)  # exact for k / 255
    counts = torch.bincount(grid, minlength=GREY_GRID + 1)
    present = counts.nonzero().squeeze(1)
    _check_levels(levels, present.numel())
    v, w = present.double() / GREY_GRID, counts[present].double()
    zero = v.new_zeros(1)
    sw, s1, s2 = (torch.cat([zero, t.cumsum(0)]) for t in (w, w * v, w * v * v))
    # cost[j, i] of the run v_j..v_i (inf for j > i)
    run_w = sw[1:][None, :] - sw[:-1][:, None]
    run_s1 = s1[1:][None, :] - s1[:-1][:, None]
    cost = (s2[1:][None, :] - s2[:-1][:, None]) - run_s1 ** 2 / run_w.clamp_min(1e-300)
    cost = cost.clamp_min(0).masked_fill(run_w <= 0, float("inf"))
    best, starts = cost[0].clone(), []
    for _ in range(levels - 1):
        prev = torch.cat([best.new_full((1,), float("inf")), best[:-1]])  # D_{k-1}(j - 1) for a run starting at j
        best, start = (prev[:, None] + cost).min(0)
        starts.append(start)
    bounds, end = [], v.numel() - 1
    for start in reversed(starts):  # walk the runs back from the last value
        j = int(start[end])
        bounds.append((j, end))
        end = j - 1
    bounds.append((0, end))
    means = [(s1[i + 1] - s1[j]) / (sw[i + 1] - sw[j]) for j, i in reversed(bounds)]
    return torch.stack(means).float()


def _nearest(pixels: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid (exact squared differences, not the |a|^2 - 2ab + |b|^2 expansion, so that a
    pixel equal to a centroid always maps to it), in blocks of pixels."""
    out = [torch.cdist(p, centroids, compute_mode="donot_use_mm_for_euclid_dist").argmin(1)
           for p in pixels.split(_CHUNK)]
    return torch.cat(out) if out else pixels.new_zeros(0, dtype=torch.long)


def _kmeans_pp(points: torch.Tensor, levels: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centre drawn with probability ~ D(x)^2."""
    centres = [points[torch.randint(points.shape[0], (1,), generator=g)]]
    dist = (points - centres[0]).pow(2).sum(1)
    for _ in range(levels - 1):
        pick = torch.multinomial(dist, 1, generator=g)
        centres.append(points[pick])
        dist = torch.minimum(dist, (points - points[pick]).pow(2).sum(1))
    return torch.cat(centres)


def kmeans_rgb(pixels: torch.Tensor, levels: int, seed: int = 0, iters: int = 30) -> torch.Tensor:
    """Lloyd's k-means of RGB ``pixels`` with a seeded k-means++ start; stops early when no pixel changes cluster.

    Shape:
        - Input: (N, 3)
        - Output: (levels, 3) float32
    """
    check_positive_int("iters", iters)
    points = pixels.detach().float()
    _check_levels(levels, torch.unique(points, dim=0).shape[0])
    g = torch.Generator().manual_seed(seed)
    centres, assign = _kmeans_pp(points, levels, g), None
    for _ in range(iters):
        new = _nearest(points, centres)
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        counts = torch.bincount(assign, minlength=levels)
        sums = torch.zeros_like(centres).index_add_(0, assign, points)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
        empty = (counts == 0).nonzero().squeeze(1)
        if empty.numel():  # move emptied clusters to the pixels farthest from their centres
            far = (points - centres[assign]).pow(2).sum(1).topk(empty.numel()).indices
            centres[empty] = points[far]
    return centres


class Palette:
    """A k-means palette: ``levels`` centroids in pixel space; tokens are the index of the nearest one.

    Build one with :meth:`fit` (or :meth:`from_state_dict`). Grey palettes are exact 1-D k-means, colour
    palettes iGPT's k-means on RGB pixels (see the module docstring).

    Args:
        centroids: (levels, C) float, C = 1 (grey, ascending) or 3 (RGB), values in [0, 1], all distinct.

    Shape:
        - encode: (B, C, H, W) float in [0, 1] -> (B, H * W) long, raster order
        - decode: (B, H * W) long, with (C, H, W) -> (B, C, H, W) float
    """

    def __init__(self, centroids: torch.Tensor) -> None:
        if not isinstance(centroids, torch.Tensor) or centroids.dim() != 2 or centroids.shape[1] not in (1, 3):
            shape = tuple(centroids.shape) if isinstance(centroids, torch.Tensor) else type(centroids).__name__
            raise UsageError(f"centroids: needed a (levels, 1) or (levels, 3) tensor, got {shape}")
        if centroids.shape[0] < 2:
            raise UsageError(f"levels: got {centroids.shape[0]}, needed at least 2")
        if not centroids.is_floating_point() or not ((centroids >= 0) & (centroids <= 1)).all():
            raise UsageError("centroids: needed floating-point values in [0, 1]")
        if torch.unique(centroids, dim=0).shape[0] != centroids.shape[0]:
            raise UsageError("centroids: two levels are equal; every centroid must be distinct")
        if centroids.shape[1] == 1:
            centroids = centroids.sort(0).values
        self.centroids = centroids.detach().float().cpu().contiguous()

    @classmethod
    def fit(cls, images: torch.Tensor, levels: int | None = None, seed: int = 0,
            max_pixels: int = 100_000, iters: int = 30) -> Palette:
        """k-means on the pixels of ``images``: exact 1-D for grey, Lloyd's on a seeded sample of ``max_pixels``
        pixels for RGB (``iters`` rounds at most). ``levels`` defaults to 16 for grey and 512 for RGB."""
        _check_images(images, "images", (1, 3))
        channels = images.shape[1]
        levels = DEFAULT_LEVELS[channels] if levels is None else levels
        check_positive_int("levels", levels, minimum=2)
        check_positive_int("max_pixels", max_pixels)
        if channels == 1:
            return cls(kmeans_1d(images, levels)[:, None])
        pixels = rearrange(images, "b c h w -> (b h w) c")
        if pixels.shape[0] > max_pixels:
            pick = torch.randperm(pixels.shape[0], generator=torch.Generator().manual_seed(seed))[:max_pixels]
            pixels = pixels[pick]
        return cls(kmeans_rgb(pixels, levels, seed, iters))

    @property
    def levels(self) -> int:
        return self.centroids.shape[0]

    @property
    def channels(self) -> int:
        return self.centroids.shape[1]

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The index of each pixel's nearest centroid, in raster order: token ``y * W + x``."""
        _check_images(images, "images", (self.channels,))
        centroids = self.centroids.to(images.device)
        if self.channels == 1:  # the nearest of sorted levels: which midpoints the value passes
            mids = (centroids[1:, 0] + centroids[:-1, 0]) / 2
            return torch.bucketize(images.float().flatten(1).contiguous(), mids)
        pixels = rearrange(images.float(), "b c h w -> (b h w) c")
        return _nearest(pixels, centroids).view(images.shape[0], -1)

    def decode(self, tokens: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
        """Images whose pixels are the centroids ``tokens`` name; ``shape`` is (C, H, W), C the palette's."""
        if not (isinstance(shape, (tuple, list)) and len(shape) == 3 and all(isinstance(s, int) for s in shape)):
            raise UsageError(f"shape: needed (C, H, W), got {shape!r}")
        c, h, w = shape
        if c != self.channels:
            raise UsageError(f"shape: got {c} channels, but the palette has {self.channels}")
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.shape[1] != h * w:
            got = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise UsageError(f"tokens: needed (B, {h * w}) for {h}x{w} images, got {got}")
        if tokens.is_floating_point() or tokens.dtype == torch.bool:
            raise UsageError(f"tokens: needed integer tokens, got {tokens.dtype}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.levels):
            raise UsageError(f"tokens: needed values in [0, {self.levels}), got {tokens.min().item()} to "
                             f"{tokens.max().item()}")
        pixels = self.centroids.to(tokens.device)[tokens.long()]
        return rearrange(pixels, "b (h w) c -> b c h w", h=h, w=w)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only: ``{"centroids": (levels, C)}``."""
        return {"centroids": self.centroids.clone()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> Palette:
        if not isinstance(state, Mapping) or "centroids" not in state:
            raise UsageError(f"palette state: needed a mapping with 'centroids', got "
                             f"{sorted(state) if isinstance(state, Mapping) else type(state).__name__}")
        return cls(state["centroids"])

    def __repr__(self) -> str:
        return f"Palette(levels={self.levels}, channels={self.channels})"
