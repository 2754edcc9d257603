"""The data layer: Fashion-MNIST from its IDX files, folders of images, and tensor-op augmentation.

Everything is held in memory as uint8 tensors; :func:`load_dataset` turns the trainer's ``--data`` argument
(``fashion-mnist`` or a folder path) into a :class:`DataSplits`.
"""

from __future__ import annotations

import os
from pathlib import Path

from visionattn.data.arrays import ArrayDataset, DataSplits
from visionattn.data.augment import Augment, AugmentParams, Normalize, channel_stats, epoch_generator
from visionattn.data.fashion_mnist import download_fashion_mnist, find_fashion_mnist, load_fashion_mnist
from visionattn.data.folder import load_image_folder
from visionattn.data.idx import DataError, read_idx, write_idx

__all__ = [
    "ArrayDataset",
    "DataSplits",
    "DataError",
    "Augment",
    "AugmentParams",
    "Normalize",
    "channel_stats",
    "epoch_generator",
    "read_idx",
    "write_idx",
    "find_fashion_mnist",
    "load_fashion_mnist",
    "download_fashion_mnist",
    "load_image_folder",
    "load_dataset",
    "DATASETS",
]

DATASETS = ("fashion-mnist",)


def load_dataset(spec: str, data_dir: str | os.PathLike | None = None, download: bool = False,
                 image_size: int | None = None, channels: str = "auto", val_fraction: float = 0.2,
                 seed: int = 0) -> DataSplits:
    """Load ``spec``: a dataset name from :data:`DATASETS` or the path of an image folder.

    Args:
        spec: ``"fashion-mnist"`` or a folder (see :func:`load_image_folder` for the layouts).
        data_dir: where the named dataset's files are (``None``: the usual places).
        download: fetch a named dataset's files when they are missing.
        image_size, channels, val_fraction, seed: for image folders, see :func:`load_image_folder`.
    """
    if spec == "fashion-mnist":
        if image_size not in (None, 28):
            raise ValueError(f"image_size: got {image_size} for fashion-mnist, whose images are 28x28")
        return load_fashion_mnist(data_dir, download=download)
    if Path(spec).is_dir():
        return load_image_folder(spec, image_size=image_size, channels=channels, val_fraction=val_fraction,
                                 seed=seed)
    raise ValueError(f"data: got {spec!r}, needed one of {DATASETS} or an existing image folder")
