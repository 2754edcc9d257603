"""The data layer: Fashion-MNIST from its IDX files, folders of images, and tensor-op augmentation.

Everything is held in memory as uint8 tensors; :func:`load_dataset` turns the trainer's ``--data`` argument
(``fashion-mnist`` or a folder path) into a :class:`DataSplits`.
"""

from __future__ import annotations

import os
from pathlib import Path

from visionattn.data.arrays import ArrayDataset, DataSplits
from visionattn.data.augment import Augment, AugmentParams, Normalize, channel_stats, epoch_generator
from visionattn.data.fashion_mnist import (
    check_data_dir,
    download_fashion_mnist,
    find_fashion_mnist,
    load_fashion_mnist,
)
from visionattn.data.folder import check_folder_options, load_image_folder
from visionattn.data.idx import DataError, read_idx, write_idx
from visionattn.errors import did_you_mean

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
    "check_folder_options",
    "check_data_dir",
    "load_dataset",
    "DATASETS",
]

DATASETS = ("fashion-mnist",)


def load_dataset(spec: str, data_dir: str | os.PathLike | None = None, download: bool = False,
                 image_size: int | None = None, channels: str = "auto", val_fraction: float = 0.2,
                 seed: int = 0) -> DataSplits:
    """Load ``spec``: a dataset name from :data:`DATASETS` or the path of an image folder.

    Every option is checked before anything is read.

    Args:
        spec: ``"fashion-mnist"`` or a folder (see :func:`load_image_folder` for the layouts).
        data_dir: where the named dataset's files are (``None``: the usual places).
        download: fetch a named dataset's files when they are missing.
        image_size, channels, val_fraction, seed: for image folders, see :func:`load_image_folder`.

    Raises:
        DataError: a bad option, a name that is neither a dataset nor a folder, or data that cannot be used.
    """
    size = check_folder_options(image_size, channels, val_fraction, seed)
    if spec == "fashion-mnist":
        if size not in (None, (28, 28)):
            raise DataError(f"image_size: got {image_size!r} for fashion-mnist, whose images are 28x28; needed 28 "
                            "or None")
        if channels == "rgb":
            raise DataError("channels: got 'rgb' for fashion-mnist, whose images are grey; needed 'auto' or 'grey'")
        return load_fashion_mnist(data_dir, download=download)
    path = Path(spec)
    if str(spec).strip() and path.is_dir():
        return load_image_folder(path, image_size=image_size, channels=channels, val_fraction=val_fraction,
                                 seed=seed)
    what = "a file" if str(spec).strip() and path.exists() else "not an existing folder"
    hint = did_you_mean(str(spec).strip().lower(), DATASETS)
    raise DataError(f"data: got {str(spec)!r}, which is {what}; needed a dataset name ({', '.join(DATASETS)}) or a "
                    f"folder of images{hint}")
