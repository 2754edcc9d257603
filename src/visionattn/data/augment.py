"""Standard small-image augmentation and normalisation as batched tensor ops.

Random crop with zero padding and horizontal flip (the ResNet CIFAR recipe, He et al. 2016, sec. 4.2) and
random erasing (Zhong et al. 2020, Algorithm 1: with probability p erase a rectangle of area s ~ U(0.02, 0.33)
of the image and aspect r, log r ~ U(log 0.3, log 3.3); erased pixels take the value 0 after normalisation, i.e.
the mean).

The random choices of one epoch are drawn for every *sample* at once from a generator seeded by (seed, epoch),
and a batch looks its samples' choices up. An image is therefore augmented the same way whatever the batch it
lands in, the number of processes, or whether the run was interrupted and resumed -- which is what makes resume
exact and a two-process run comparable to a one-process run.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from visionattn.errors import UsageError, check_range

__all__ = ["Augment", "AugmentParams", "Normalize", "channel_stats", "epoch_generator"]


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A torch generator determined by (seed, epoch, stream) alone, with well-mixed bits for nearby seeds."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def channel_stats(images: torch.Tensor, chunk: int = 8192) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of uint8 images (N, C, H, W), on the [0, 1] scale."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk].double() / 255.0
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()


class Normalize:
    """uint8 (B, C, H, W) -> float32 ``(x / 255 - mean) / std`` per channel."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        finite = all(isinstance(v, numbers.Real) and math.isfinite(v) for v in [*mean, *std])
        if not mean or len(mean) != len(std) or not finite or min(std) <= 0:
            raise UsageError(f"std: got mean {mean} and std {std}, needed one finite mean and one finite positive "
                             "std per channel")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() / 255.0 - self.mean.to(images.device)) / self.std.to(images.device)


@dataclass
class AugmentParams:
    """One epoch's random choices, one row per sample of the training set."""

    offsets: torch.Tensor  # (N, 2) crop offsets (dy, dx) into the padded image, in [0, 2 * padding]
    flip: torch.Tensor  # (N,) bool
    erase: torch.Tensor  # (N, 4) rectangle (y0, x0, h, w); h = 0 means no erasing


class Augment:
    """Random crop with padding, horizontal flip and optional random erasing, then normalisation.

    Args:
        normalize: the normalisation applied after the geometric ops.
        crop_padding: zero padding on each side before the random crop; 0 disables cropping.
        flip: flip horizontally with probability 1/2.
        erasing: probability of random erasing per image; 0 disables it.
    """

    def __init__(self, normalize: Normalize, crop_padding: int = 2, flip: bool = True, erasing: float = 0.0):
        if isinstance(crop_padding, bool) or not isinstance(crop_padding, int) or crop_padding < 0:
            raise UsageError(f"crop_padding: got {crop_padding!r}, needed a whole number of pixels >= 0")
        check_range("erasing", erasing, 0.0, 1.0)
        self.normalize, self.crop_padding, self.flip, self.erasing = normalize, crop_padding, flip, erasing

    def sample(self, n: int, size: tuple[int, int], generator: torch.Generator) -> AugmentParams:
        """Draw the choices for ``n`` samples of spatial ``size`` (H, W)."""
        h, w = size
        offsets = torch.randint(0, 2 * self.crop_padding + 1, (n, 2), generator=generator)
        flip = torch.rand(n, generator=generator) < 0.5
        apply, area, log_r, pos = (torch.rand(n, generator=generator), torch.rand(n, generator=generator),
                                   torch.rand(n, generator=generator), torch.rand(n, 2, generator=generator))
        area = (0.02 + area * (0.33 - 0.02)) * h * w
        aspect = torch.exp(math.log(0.3) + log_r * (math.log(3.3) - math.log(0.3)))
        eh = torch.sqrt(area * aspect).round().clamp(1, h)
        ew = torch.sqrt(area / aspect).round().clamp(1, w)
        eh = torch.where(apply < self.erasing, eh, torch.zeros_like(eh))
        y0 = (pos[:, 0] * (h - eh + 1)).floor().clamp(max=h - 1)
        x0 = (pos[:, 1] * (w - ew + 1)).floor().clamp(max=w - 1)
        return AugmentParams(offsets, flip, torch.stack([y0, x0, eh, ew], dim=1).long())

    def __call__(self, images: torch.Tensor, params: AugmentParams, index: torch.Tensor) -> torch.Tensor:
        """Augment the uint8 batch ``images`` whose samples have dataset indices ``index``; float32 out."""
        b, _, h, w = images.shape
        x = images
        if self.crop_padding:
            p = self.crop_padding
            padded = F.pad(x, (p, p, p, p))
            off = params.offsets[index].to(x.device)
            rows = (off[:, :1] + torch.arange(h, device=x.device)).view(b, 1, h, 1)
            cols = (off[:, 1:] + torch.arange(w, device=x.device)).view(b, 1, 1, w)
            batch = torch.arange(b, device=x.device).view(b, 1, 1, 1)
            chans = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
            x = padded[batch, chans, rows, cols]
        if self.flip:
            flip = params.flip[index].to(x.device).view(b, 1, 1, 1)
            x = torch.where(flip, x.flip(-1), x)
        x = self.normalize(x)
        if self.erasing:
            y0, x0, eh, ew = (t.view(b, 1, 1, 1) for t in params.erase[index].to(x.device).unbind(1))
            ys = torch.arange(h, device=x.device).view(1, 1, h, 1)
            xs = torch.arange(w, device=x.device).view(1, 1, 1, w)
            inside = (ys >= y0) & (ys < y0 + eh) & (xs >= x0) & (xs < x0 + ew)
            x = x.masked_fill(inside, 0.0)
        return x
