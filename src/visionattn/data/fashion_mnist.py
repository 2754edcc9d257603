"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 70,000 grey 28x28 images of clothing in 10 classes.

Read from the four official IDX ``.gz`` files. They are looked for in ``--data-dir``, then
``$VISIONATTN_DATA_DIR``, then the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``),
then the download cache. :func:`download_fashion_mnist` fetches the official files and checks their MD5 sums
before keeping them.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from visionattn.data.arrays import ArrayDataset, DataSplits
from visionattn.data.idx import DataError, read_idx
from visionattn.errors import check_positive

__all__ = [
    "load_fashion_mnist_test",
    "CLASSES",
    "FILES",
    "OFFICIAL_MD5",
    "OFFICIAL_URL",
    "DEBIAN_DIR",
    "ENV_VAR",
    "find_fashion_mnist",
    "load_fashion_mnist",
    "download_fashion_mnist",
    "check_data_dir",
]

CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# MD5 of the files as Zalando publishes them (the sums torchvision and the project's README use). Debian's
# package re-compresses them, so its .gz sums differ while the decompressed IDX data is the same; local files are
# therefore checked by their IDX headers, downloads by these sums.
OFFICIAL_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
OFFICIAL_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "VISIONATTN_DATA_DIR"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "visionattn" / "fashion-mnist"


def _complete(folder: Path) -> bool:
    return all((folder / f).is_file() or (folder / f[:-3]).is_file() for f in FILES.values())


def candidate_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where the files are looked for, in order."""
    dirs = [Path(data_dir)] if data_dir else []
    if os.environ.get(ENV_VAR):
        dirs.append(Path(os.environ[ENV_VAR]))
    return dirs + [DEBIAN_DIR, CACHE_DIR]


def find_fashion_mnist(data_dir: str | os.PathLike | None = None) -> Path:
    """The first candidate directory holding all four files; an explicit ``data_dir`` is the only one."""
    dirs = [Path(data_dir)] if data_dir else candidate_dirs()
    for folder in dirs:
        if _complete(folder):
            return folder
    raise FileNotFoundError(
        "Fashion-MNIST not found: looked for " + ", ".join(FILES.values())
        + " in " + ", ".join(map(str, dirs)) + ". Install it with `apt-get install dataset-fashion-mnist`, "
        + f"point --data-dir or ${ENV_VAR} at a folder holding the files, or pass --download")


def _read_split(folder: Path, images_name: str, labels_name: str) -> ArrayDataset:
    def path_of(name: str) -> Path:
        return folder / name if (folder / name).is_file() else folder / name[:-3]

    images = read_idx(path_of(images_name), expect_ndim=3)
    labels = read_idx(path_of(labels_name), expect_ndim=1)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{path_of(images_name)}: images of shape {images.shape[1:]}, needed (28, 28)")
    if len(labels) != len(images):
        raise DataError(f"{path_of(labels_name)}: {len(labels)} labels for the {len(images)} images of "
                        f"{path_of(images_name)}; the counts must match")
    if len(labels) and labels.max() >= len(CLASSES):
        raise DataError(f"{path_of(labels_name)}: label {int(labels.max())}, needed 0..{len(CLASSES) - 1}")
    return ArrayDataset(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)),
                        list(CLASSES))


def check_data_dir(data_dir: str | os.PathLike | None, download: bool = False) -> None:
    """``data_dir`` must be a folder, or a path that does not exist yet when ``download`` will create it."""
    if not data_dir:
        return
    path = Path(data_dir)
    if path.exists() and not path.is_dir():
        raise DataError(f"data_dir: got {str(path)!r}, which is a file; needed the folder holding the Fashion-MNIST "
                        f"files ({', '.join(FILES.values())})")
    if not path.exists() and not download:
        raise DataError(f"data_dir: got {str(path)!r}, which does not exist; needed the folder holding the "
                        f"Fashion-MNIST files ({', '.join(FILES.values())}), or --download to fetch them into it")


def _download_failed(url: str, err: BaseException) -> DataError:
    if isinstance(err, urllib.error.URLError) and not isinstance(err, urllib.error.HTTPError):
        err = err.reason if isinstance(err.reason, BaseException) else err  # the socket's own error says more
    detail = f"{type(err).__name__}: {err}"
    return DataError(f"download of {url} failed ({detail}). Without a network, install the Debian package "
                     "dataset-fashion-mnist (apt-get install dataset-fashion-mnist), or copy the four files "
                     f"({', '.join(FILES.values())}) into a folder and pass --data-dir FOLDER (or set ${ENV_VAR})")


def load_fashion_mnist(data_dir: str | os.PathLike | None = None, download: bool = False) -> DataSplits:
    """Load both splits as uint8 tensors (train 60,000 x 1 x 28 x 28, test 10,000 x 1 x 28 x 28).

    Args:
        data_dir: folder holding the four files (``.gz`` or decompressed); ``None`` searches the usual places.
        download: fetch the official files into ``data_dir`` (or the cache) when they are not found.
    """
    check_data_dir(data_dir, download)
    try:
        folder = find_fashion_mnist(data_dir)
    except FileNotFoundError:
        if not download:
            raise
        folder = download_fashion_mnist(data_dir or CACHE_DIR, base_url=OFFICIAL_URL)  # looked up now: tests serve it
    return DataSplits(name="fashion-mnist", source=str(folder),
                      train=_read_split(folder, FILES["train_images"], FILES["train_labels"]),
                      test=_read_split(folder, FILES["test_images"], FILES["test_labels"]))


def md5sum(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_fashion_mnist(dest: str | os.PathLike, base_url: str = OFFICIAL_URL,
                           checksums: Mapping[str, str] = OFFICIAL_MD5, timeout: float = 60.0) -> Path:
    """Download the files named in ``checksums`` from ``base_url`` into ``dest``, keeping only verified files.

    Each file goes to a temporary name in ``dest`` and is renamed into place only after its MD5 matches, so an
    interrupted or corrupted download never leaves a file that looks complete. Files already present with the
    right sum are not fetched again.

    Raises:
        DataError: ``dest`` cannot be created or written; a download that fails (no network, an HTTP error, a
            timeout after ``timeout`` seconds without data, a connection cut short), naming the URL, the error and
            the ways to do without a network; a downloaded file whose MD5 differs from ``checksums``. Nothing
            incomplete is kept.
    """
    check_positive("timeout", timeout)
    dest = Path(dest)
    for name, expected in checksums.items():
        target = dest / name
        if target.is_file() and md5sum(target) == expected:
            continue
        url = base_url.rstrip("/") + "/" + name
        try:
            dest.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{name}.", suffix=".part")
        except OSError as err:
            raise DataError(f"data_dir: cannot write the download into {str(dest)!r} ({type(err).__name__}: "
                            f"{err}); needed a writable folder") from None
        try:
            try:
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                    shutil.copyfileobj(response, out)
                    if getattr(response, "length", None):  # read() returns b"" when the server hangs up early
                        raise ConnectionError(f"connection closed with {response.length} bytes still to come")
            except (OSError, http.client.HTTPException) as err:  # URLError, HTTPError and timeouts are OSErrors
                raise _download_failed(url, err) from None
            got = md5sum(Path(tmp))
            if got != expected:
                raise DataError(f"{url}: MD5 {got}, needed {expected}; the download is corrupt or not the "
                                "official file, nothing was kept")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return dest


def load_fashion_mnist_test(data_dir: str | os.PathLike | None = None) -> ArrayDataset:
    """The test split alone (10,000 x 1 x 28 x 28 uint8, a sixth of the reading of :func:`load_fashion_mnist`),
    from the usual places or ``data_dir`` (a FileNotFoundError when they are not there); nothing is downloaded."""
    return _read_split(find_fashion_mnist(data_dir), FILES["test_images"], FILES["test_labels"])
