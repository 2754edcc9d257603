"""A folder of images in the common layouts, read with Pillow into uint8 tensors.

Three layouts are understood (a split folder is one named ``train``, ``val`` or ``test`` that holds sub-folders):

* ``root/train/<class>/*`` and ``root/val/<class>/*`` (``test`` is accepted for ``val``; with both, ``val``);
* ``root/train/<class>/*`` alone: the classes of ``train``, split into training and validation per class;
* ``root/<class>/*``: split the same way. The split holds out ``round(val_fraction * n)`` of the ``n`` images of
  each class by a fixed seed; a class left without a training or a validation image is an error.

There must be at least two classes, and a validation split must have the same classes as the training one. A
class's images may sit in sub-folders of it, but not in ones named like splits (``cat/train/``: the split folders
go above the classes). Hidden files and folders (``.name``, ``__MACOSX``) are not looked at; a file whose suffix
is no image format Pillow opens (``notes.txt``) is ignored and counted in :attr:`DataSplits.ignored`. Every image
is scaled to 8 bits (see :mod:`visionattn.data.decode` for 16-bit and float images), made grey or RGB and resized
to one size. An image file that cannot be decoded (damaged, truncated, too large) is skipped and listed in
:attr:`DataSplits.skipped`; a class without a readable image is an error.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from visionattn.data.arrays import ArrayDataset, DataSplits
from visionattn.data.decode import decode, decode_errors, image_extensions, luma
from visionattn.data.idx import DataError
from visionattn.errors import check_choice, check_finite

__all__ = ["load_image_folder", "check_folder_options", "CHANNEL_MODES", "SPLIT_NAMES"]

CHANNEL_MODES = ("auto", "grey", "rgb")
SPLIT_NAMES = ("train", "val", "test")


def check_folder_options(image_size: int | tuple[int, int] | None, channels: str, val_fraction: float,
                         seed: int) -> tuple[int, int] | None:
    """Check the image-folder options before anything is read; returns ``image_size`` as (H, W) or ``None``."""
    check_choice("channels", channels, CHANNEL_MODES)
    check_finite("val_fraction", val_fraction)
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction: got {val_fraction!r}, needed a number strictly between 0 and 1")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed: got {seed!r}, needed a whole number >= 0")
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    whole = isinstance(size, (tuple, list)) and all(isinstance(s, int) and not isinstance(s, bool) for s in size)
    if not whole or len(size) != 2 or min(size) < 1:
        raise DataError(f"image_size: got {image_size!r}, needed a positive whole number of pixels, a pair "
                        "(height, width) of them, or None for the first image's size")
    return tuple(size)  # type: ignore[return-value]


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _sub_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _hidden(p.name))


def _layout(root: Path, val_fraction: float, seed: int) -> tuple[Path, Path | None, str]:
    """(folder of the training classes, folder of the validation classes or None, a line saying which layout)."""
    dirs = {d.name: d for d in _sub_dirs(root)}
    held_out = f"held out {val_fraction:g} of each class for validation (seed {seed})"
    train = dirs.get("train")
    if train is not None and _sub_dirs(train):
        others = sorted(set(dirs) - set(SPLIT_NAMES))
        if others:
            raise DataError(f"{root}: holds the split folder train/ and also {others}; needed either "
                            f"{root}/train/<class>/ (with val/<class>/ or test/<class>/) or {root}/<class>/ alone")
        val = dirs.get("val") or dirs.get("test")
        if val is None:
            return train, None, f"image folder {root}: train/<class>/ with no val/ or test/ split, so {held_out}"
        unused = " (test/ is not used)" if val.name == "val" and "test" in dirs else ""
        return train, val, f"image folder {root}: train/<class>/, with {val.name}/<class>/ for validation{unused}"
    for name in ("val", "test"):
        if name in dirs and _sub_dirs(dirs[name]):
            raise DataError(f"{dirs[name]}: a {name} split of class folders, but {root} has no train/ split beside "
                            f"it; needed {root}/train/<class>/ too, or {root}/<class>/ alone")
    return root, None, f"image folder {root}: <class>/ folders; {held_out}"


def _class_dirs(folder: Path, what: str) -> list[Path]:
    dirs = _sub_dirs(folder)
    if not dirs:
        raise DataError(f"{folder}: no class sub-folders in the {what}; needed {folder}/<class>/<image files>")
    for class_dir in dirs:
        inner = [d.name for d in _sub_dirs(class_dir) if d.name in SPLIT_NAMES]
        if inner:
            raise DataError(f"{class_dir}: class folder holds split folders {inner}; the split folders go above "
                            "the classes: needed root/train/<class>/ and root/val/<class>/")
    return dirs


def _files(class_dir: Path, extensions: frozenset[str], ignored: list[str]) -> list[Path]:
    """The files of a class (in its sub-folders too) that may be images, hidden ones left out, in a fixed order."""
    found = []
    for path in sorted(class_dir.rglob("*")):
        if any(_hidden(part) for part in path.relative_to(class_dir).parts) or not path.is_file():
            continue
        if path.suffix and path.suffix.lower() not in extensions:
            ignored.append(str(path))
        else:
            found.append(path)
    return found


def _read_classes(class_dirs: list[Path], classes: list[str], size: tuple[int, int] | None, skipped: list[str],
                  ignored: list[str]) -> tuple[list[np.ndarray], list[int], list[bool], tuple[int, int] | None]:
    pixels, labels, greys = [], [], []
    extensions, errors = image_extensions(), decode_errors()
    for class_dir in class_dirs:
        files, first_skip, count = _files(class_dir, extensions, ignored), len(skipped), 0
        for path in files:
            try:
                array, grey = decode(path, size)
            except errors as err:
                skipped.append(f"{path}: {type(err).__name__}: {err}")
                continue
            size = size or array.shape[:2]
            pixels.append(array)
            labels.append(classes.index(class_dir.name))
            greys.append(grey)
            count += 1
        if count == 0:
            why = f"; the first was skipped: {skipped[first_skip]}" if files else ""
            raise DataError(f"{class_dir}: class {class_dir.name!r} has no readable image ({len(files)} image "
                            f"files tried{why}); each class needs at least one")
    return pixels, labels, greys, size


def _to_dataset(pixels: list[np.ndarray], labels: list[int], grey: bool, classes: list[str]) -> ArrayDataset:
    rgb = np.stack(pixels)
    images = torch.from_numpy(luma(rgb)[..., None] if grey else rgb).permute(0, 3, 1, 2)
    return ArrayDataset(images.contiguous(), torch.tensor(labels, dtype=torch.int64), classes)


def _seeded_split(labels: list[int], classes: list[str], val_fraction: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class a fixed-seed shuffle; the first ``round(val_fraction * n)`` go to validation, the rest to training."""
    rng = np.random.default_rng(seed)
    labels_np = np.asarray(labels)
    train, val = [], []
    for label in np.unique(labels_np):
        members = rng.permutation(np.flatnonzero(labels_np == label))
        n, n_val = len(members), round(val_fraction * len(members))
        if not 0 < n_val < n:
            left = "validation" if n_val == 0 else "training"
            bound = f"above {0.5 / n:.3g}" if n_val == 0 else f"below {1 - 0.5 / n:.3g}"
            fix = f"needed val_fraction {bound}, or more images of the class" if n >= 2 else "needed at least 2"
            raise DataError(f"class {classes[label]!r} has {n} readable image{'s' if n != 1 else ''}: val_fraction "
                            f"{val_fraction:g} holds out {n_val} of them, leaving no {left} image; {fix}")
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _check_val_classes(val_dirs: list[Path], val_root: Path, classes: list[str]) -> None:
    names = [d.name for d in val_dirs]
    missing, extra = [c for c in classes if c not in names], [c for c in names if c not in classes]
    if missing or extra:
        raise DataError(f"{val_root}: the validation classes differ from the training classes {classes}: "
                        f"missing {missing}, extra {extra}; needed the same class folders in both splits")


def load_image_folder(root: str | os.PathLike, image_size: int | tuple[int, int] | None = None,
                      channels: str = "auto", val_fraction: float = 0.2, seed: int = 0) -> DataSplits:
    """Load an image folder into memory.

    Args:
        root: the folder (any layout above).
        image_size: resize every image to this (H, W) (an int means square); ``None``: the first image's size.
        channels: ``"grey"``, ``"rgb"``, or ``"auto"`` (grey when every readable image is grey). RGB images made
            grey get their luma (as Pillow's ``convert("L")``), grey images made RGB three equal channels.
        val_fraction: share of each class held out when ``root`` has no validation split.
        seed: seed of that split; the same seed always gives the same split.

    Raises:
        DataError: a bad option, a layout that cannot be read as one of the above, fewer than two classes, a
            class without a readable image, or one that the held-out share leaves without training or validation.
    """
    size = check_folder_options(image_size, channels, val_fraction, seed)
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder: got {str(root)!r}, which {'is a file' if root.exists() else 'does not exist'}"
                        "; needed a folder of class sub-folders of images")
    train_root, val_root, layout = _layout(root, val_fraction, seed)
    train_dirs = _class_dirs(train_root, "training split")
    classes = [d.name for d in train_dirs]
    if len(classes) < 2:
        raise DataError(f"{train_root}: one class ({classes[0]!r}); needed at least 2 classes, each a sub-folder "
                        "of images")
    val_dirs = _class_dirs(val_root, "validation split (remove the folder to hold out val_fraction of the "
                           "training images instead)") if val_root else []
    if val_root:
        _check_val_classes(val_dirs, val_root, classes)
    skipped: list[str] = []
    ignored: list[str] = []
    pixels, labels, greys, size = _read_classes(train_dirs, classes, size, skipped, ignored)
    val_pixels, val_labels, val_greys, _ = _read_classes(val_dirs, classes, size, skipped, ignored)
    grey = channels == "grey" or (channels == "auto" and all(greys) and all(val_greys))
    if val_root:
        train = _to_dataset(pixels, labels, grey, classes)
        test = _to_dataset(val_pixels, val_labels, grey, classes)
    else:
        train_idx, val_idx = _seeded_split(labels, classes, val_fraction, seed)
        full = _to_dataset(pixels, labels, grey, classes)
        train, test = full.subset(torch.from_numpy(train_idx)), full.subset(torch.from_numpy(val_idx))
    return DataSplits(name=str(root), source=str(root), train=train, test=test, skipped=skipped, ignored=ignored,
                      layout=layout)
