"""A folder of images in the common layout, read with Pillow into uint8 tensors.

Two layouts are understood:

* ``root/train/<class>/*`` and ``root/val/<class>/*`` (``test`` is accepted for ``val``);
* ``root/<class>/*``, split into training and validation per class by a fixed seed.

Every image is converted to grey (``L``) or RGB and resized to one size. A file Pillow cannot read is skipped
and listed once in :attr:`DataSplits.skipped`; a class without a readable image, or no images at all, is an
error.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from visionattn.data.arrays import ArrayDataset, DataSplits
from visionattn.data.idx import DataError

__all__ = ["load_image_folder", "CHANNEL_MODES"]

CHANNEL_MODES = ("auto", "grey", "rgb")
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def _class_dirs(folder: Path) -> list[Path]:
    dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise DataError(f"{folder}: no class sub-folders; needed {folder}/<class>/<image files>")
    return dirs


def _files(class_dir: Path) -> list[Path]:
    return sorted(p for p in class_dir.rglob("*") if p.is_file() and not p.name.startswith("."))


def _decode(path: Path, size: tuple[int, int] | None) -> tuple[np.ndarray, bool]:
    """(H, W, 3) uint8 RGB pixels and whether the file is grey; raises OSError/ValueError for a bad file."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        grey = img.mode in _GREY_MODES
        rgb = img.convert("RGB")
    if size is not None and rgb.size != (size[1], size[0]):
        rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8), grey


def _read_classes(
    class_dirs: list[Path], classes: list[str], size: tuple[int, int] | None, skipped: list[str]
) -> tuple[list[np.ndarray], list[int], list[bool], tuple[int, int] | None]:
    pixels, labels, greys = [], [], []
    for class_dir in class_dirs:
        if class_dir.name not in classes:
            raise DataError(f"{class_dir}: class {class_dir.name!r} is not a training class ({classes})")
        count = 0
        for path in _files(class_dir):
            try:
                array, grey = _decode(path, size)
            except (OSError, ValueError, SyntaxError) as err:  # PIL raises all three for damaged files
                skipped.append(f"{path}: {type(err).__name__}: {err}")
                continue
            size = size or array.shape[:2]
            pixels.append(array)
            labels.append(classes.index(class_dir.name))
            greys.append(grey)
            count += 1
        if count == 0:
            raise DataError(f"{class_dir}: class {class_dir.name!r} has no readable image; each needs one")
    return pixels, labels, greys, size


def _to_dataset(pixels: list[np.ndarray], labels: list[int], grey: bool, classes: list[str]) -> ArrayDataset:
    images = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)
    images = images[:, :1] if grey else images
    return ArrayDataset(images.contiguous(), torch.tensor(labels, dtype=torch.int64), classes)


def _seeded_split(labels: list[int], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class a fixed-seed shuffle; the first ``round(val_fraction * n)`` (at least 1) go to validation."""
    rng = np.random.default_rng(seed)
    labels_np = np.asarray(labels)
    train, val = [], []
    for label in np.unique(labels_np):
        members = rng.permutation(np.flatnonzero(labels_np == label))
        if len(members) < 2:
            raise DataError(f"class {label} has {len(members)} readable image; a split needs at least 2")
        n_val = min(max(1, round(val_fraction * len(members))), len(members) - 1)
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def load_image_folder(root: str | os.PathLike, image_size: int | tuple[int, int] | None = None,
                      channels: str = "auto", val_fraction: float = 0.2, seed: int = 0) -> DataSplits:
    """Load an image folder into memory.

    Args:
        root: the folder (either layout above).
        image_size: resize every image to this (H, W) (an int means square); ``None``: the first image's size.
        channels: ``"grey"``, ``"rgb"``, or ``"auto"`` (grey when every readable image is grey).
        val_fraction: share of each class held out when ``root`` has no ``train``/``val`` split.
        seed: seed of that split; the same seed always gives the same split.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if channels not in CHANNEL_MODES:
        raise ValueError(f"channels: got {channels!r}, needed one of {CHANNEL_MODES}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction: got {val_fraction}, needed a number in (0, 1)")
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    val_root = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    split = (root / "train").is_dir() and val_root is not None
    train_dirs = _class_dirs(root / "train" if split else root)
    classes = [d.name for d in train_dirs]
    skipped: list[str] = []
    pixels, labels, greys, size = _read_classes(train_dirs, classes, size, skipped)
    if split:
        val_pixels, val_labels, val_greys, _ = _read_classes(_class_dirs(val_root), classes, size, skipped)
    grey = channels == "grey" or (channels == "auto" and all(greys) and (not split or all(val_greys)))
    if split:
        train = _to_dataset(pixels, labels, grey, classes)
        test = _to_dataset(val_pixels, val_labels, grey, classes)
    else:
        full = _to_dataset(pixels, labels, grey, classes)
        train_idx, val_idx = _seeded_split(labels, val_fraction, seed)
        train, test = full.subset(torch.from_numpy(train_idx)), full.subset(torch.from_numpy(val_idx))
    return DataSplits(name=str(root), source=str(root), train=train, test=test, skipped=skipped)
