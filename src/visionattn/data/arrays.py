"""In-memory datasets: the whole split as one uint8 image tensor and one label tensor.

Small-image datasets (Fashion-MNIST is 47 MB) fit in memory many times over; holding them as tensors lets the
trainer index a batch and augment it with batched tensor ops, with no loader processes at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from visionattn.errors import UsageError

__all__ = ["ArrayDataset", "DataSplits"]


@dataclass
class ArrayDataset:
    """Images and labels of one split.

    Args:
        images: uint8 tensor of shape (N, C, H, W).
        labels: int64 tensor of shape (N,), values in ``[0, len(classes))``.
        classes: class names, index = label.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images: got {self.images.dtype} of shape {tuple(self.images.shape)}, "
                             "needed uint8 of shape (N, C, H, W)")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels: got shape {tuple(self.labels.shape)}, "
                             f"needed ({self.images.shape[0]},) to match the images")
        self.labels = self.labels.long()
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            lo, hi = int(self.labels.min()), int(self.labels.max())
            raise ValueError(f"labels: values in [{lo}, {hi}], needed [0, {len(self.classes) - 1}] for "
                             f"{len(self.classes)} classes")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, index: torch.Tensor) -> ArrayDataset:
        return ArrayDataset(self.images[index], self.labels[index], list(self.classes))

    def balanced_subset(self, size: int, seed: int = 0, argument: str = "train_subset") -> ArrayDataset:
        """``size`` images, as equally many of each class as the data allows, drawn by a fixed ``seed``.

        Every call with the same ``size`` and ``seed`` returns the same images, so runs with different training
        seeds (a comparison's) see the same subset.

        Raises:
            UsageError: ``size`` (named ``argument`` in the message) is below the number of classes present, so
                some class would get no image, or above the number of images, so the run would not train on
                ``size`` images as it says.
        """
        present = int(torch.unique(self.labels).numel())
        if isinstance(size, bool) or not isinstance(size, int) or not max(present, 1) <= size <= len(self):
            raise UsageError(f"{argument}: got {size!r}, needed a whole number of images from {max(present, 1)} "
                             f"(one of each of the {present} classes) to {len(self)} (all the training images)")
        if size == len(self):
            return self
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        # rank of each image within its class in the random order; taking ranks round by round balances classes
        labels = self.labels[order]
        rank = torch.zeros_like(labels)
        for c in range(len(self.classes)):
            members = labels == c
            rank[members] = torch.arange(int(members.sum()))
        chosen = order[torch.argsort(rank * len(self) + torch.arange(len(self)), stable=True)[:size]]
        return self.subset(torch.sort(chosen).values)


@dataclass
class DataSplits:
    """A training split, an evaluation split and what the trainer needs to know about them.

    Args:
        name: what was loaded, e.g. ``"fashion-mnist"`` or a folder path.
        train: the split the model learns from.
        test: the split the run reports accuracy on (the test set, or the validation folder or split).
        source: where the data came from (a directory).
        skipped: files that could not be read and were left out, as ``"path: reason"``.
        ignored: files that are not images by their name (``notes.txt``), left out without trying to read them.
        layout: how the source was read, for the run log (e.g. which folder layout, and the held-out share).
    """

    name: str
    train: ArrayDataset
    test: ArrayDataset
    source: str = ""
    skipped: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    layout: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    @property
    def in_chans(self) -> int:
        return self.train.image_shape[0]

    def describe(self) -> dict:
        """A JSON-ready summary for the run's configuration file."""
        c, h, w = self.train.image_shape
        return {"name": self.name, "source": self.source, "classes": list(self.train.classes),
                "num_classes": self.num_classes, "in_chans": c, "image_size": [h, w],
                "train_size": len(self.train), "test_size": len(self.test),
                "skipped_files": len(self.skipped), "ignored_files": len(self.ignored), "layout": self.layout}

    def notes(self) -> list[str]:
        """Lines for the run log: the layout that was read and the files left out unread (not the skipped ones)."""
        lines = [self.layout] if self.layout else []
        if self.ignored:
            suffixes = sorted({Path(p).suffix or Path(p).name for p in self.ignored})
            lines.append(f"ignored {len(self.ignored)} files that are not images by their name "
                         f"({', '.join(suffixes[:8])}{', ...' if len(suffixes) > 8 else ''}), e.g. {self.ignored[0]}")
        return lines
