"""Bad input to the data layer: each gets a clear error naming what is wrong, or (an unreadable file) is skipped."""

from __future__ import annotations

import http.server
import socket
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_data import make_folder, save_image
from visionattn.data import (
    ArrayDataset,
    Augment,
    DataError,
    Normalize,
    download_fashion_mnist,
    load_dataset,
    load_image_folder,
)
from visionattn.data import fashion_mnist as fm
from visionattn.data import folder as folder_module
from visionattn.errors import UsageError

pytestmark = pytest.mark.bad_input

TWO_CLASSES = {"a": 3, "b": 3}

# ------------------------------------------------------------------------------------- options of load_dataset

OPTION_CASES = {  # name: (keyword arguments, regex the message must match)
    "image_size 0": ({"image_size": 0}, r"image_size: got 0, needed a positive whole number"),
    "image_size negative": ({"image_size": -3}, r"image_size: got -3, needed a positive"),
    "image_size pair with 0": ({"image_size": (8, 0)}, r"image_size: got \(8, 0\), needed .* pair"),
    "image_size float": ({"image_size": 2.5}, r"image_size: got 2.5"),
    "image_size one number in a tuple": ({"image_size": (8,)}, r"image_size: got \(8,\)"),
    "channels gray": ({"channels": "gray"}, r"channels: got 'gray', needed one of 'auto', 'grey', 'rgb'; did you "
                                            r"mean 'grey'\?"),
    "channels rgba": ({"channels": "rgba"}, r"channels: got 'rgba'.*did you mean 'rgb'\?"),
    "val_fraction 0": ({"val_fraction": 0.0}, r"val_fraction: got 0.0, needed a number strictly between 0 and 1"),
    "val_fraction 1": ({"val_fraction": 1}, r"val_fraction: got 1, needed a number strictly between 0 and 1"),
    "val_fraction negative": ({"val_fraction": -0.1}, r"val_fraction: got -0.1"),
    "val_fraction nan": ({"val_fraction": float("nan")}, r"val_fraction: got nan, needed a finite number"),
    "seed negative": ({"seed": -1}, r"seed: got -1, needed a whole number >= 0"),
}


@pytest.mark.parametrize("spec", ["folder", "fashion-mnist"])
@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_bad_option_is_refused_before_reading(tmp_path, monkeypatch, case, spec):
    kwargs, match = OPTION_CASES[case]
    monkeypatch.setattr(folder_module, "_layout", None)  # nothing may be read before the options are checked
    monkeypatch.setattr(fm, "find_fashion_mnist", None)
    with pytest.raises(UsageError, match=match):
        load_dataset(str(tmp_path) if spec == "folder" else spec, **kwargs)


@pytest.mark.parametrize("spec, kwargs, match", [
    ("fashion-mnist", {"image_size": 32}, r"image_size: got 32 for fashion-mnist, whose images are 28x28"),
    ("fashion-mnist", {"channels": "rgb"}, r"channels: got 'rgb' for fashion-mnist, whose images are grey"),
    ("fashion_mnist", {}, r"data: got 'fashion_mnist', which is not an existing folder; needed a dataset name "
                          r"\(fashion-mnist\) or a folder of images; did you mean 'fashion-mnist'\?"),
    ("fmnist", {}, r"data: got 'fmnist'.*did you mean 'fashion-mnist'\?"),
    ("FashionMNIST", {}, r"data: got 'FashionMNIST'.*did you mean 'fashion-mnist'\?"),
    ("", {}, r"data: got '', which is not an existing folder"),
    ("nowhere/at/all", {}, r"data: got 'nowhere/at/all', which is not an existing folder"),
    ("FILE", {}, r"data: got '.*notes.txt', which is a file; needed a dataset name"),
    ("fashion-mnist", {"data_dir": "MISSING"}, r"data_dir: got '.*missing', which does not exist; needed the "
                                               r"folder holding the Fashion-MNIST files.*--download"),
    ("fashion-mnist", {"data_dir": "FILE"}, r"data_dir: got '.*notes.txt', which is a file; needed the folder"),
])
def test_bad_data_name_or_data_dir(tmp_path, spec, kwargs, match):
    file = tmp_path / "notes.txt"
    file.write_text("not data")
    spec = str(file) if spec == "FILE" else spec
    paths = {"MISSING": str(tmp_path / "missing"), "FILE": str(file)}
    kwargs = {k: paths.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(DataError, match=match):
        load_dataset(spec, **kwargs)


# ------------------------------------------------------------------------------------------ folder layouts

LAYOUT_CASES = {  # name: (folders and their image counts, load_image_folder keywords, regex of the message)
    "one class": ({"a": 4}, {}, r"one class \('a'\); needed at least 2 classes"),
    "one class in train/": ({"train/a": 4}, {}, r"train: one class \('a'\); needed at least 2 classes"),
    "one class in train/ and val/": ({"train/a": 4, "val/a": 2}, {}, r"needed at least 2 classes"),
    "val misses a class": ({"train/a": 2, "train/b": 2, "val/a": 1}, {},
                           r"val: the validation classes differ .*: missing \['b'\], extra \[\]"),
    "val has an extra class": ({"train/a": 2, "train/b": 2, "val/a": 1, "val/b": 1, "val/c": 1}, {},
                               r"val: .*missing \[\], extra \['c'\]; needed the same class folders"),
    "test has other classes": ({"train/a": 2, "train/b": 2, "test/a": 1, "test/x": 1}, {},
                               r"test: .*missing \['b'\], extra \['x'\]"),
    "val with no class folders": ({"train/a": 2, "train/b": 2, "val": 0}, {},
                                  r"val: no class sub-folders in the validation split \(remove the folder"),
    "val class without images": ({"train/a": 2, "train/b": 2, "val/a": 1, "val/b": 0}, {},
                                 r"val/b: class 'b' has no readable image \(0 image files tried\)"),
    "splits inside the classes": ({"a/train": 2, "a/val": 1, "b/train": 2, "b/val": 1}, {},
                                  r"a: class folder holds split folders \['train', 'val'\]; the split folders go "
                                  r"above the classes"),
    "val/ without train/": ({"val/a": 2, "val/b": 2, "c": 2}, {}, r"val: a val split of class folders, but .* has "
                                                                  r"no train/ split beside it"),
    "train/ beside class folders": ({"train/a": 2, "train/b": 2, "c": 2}, {},
                                    r"holds the split folder train/ and also \['c'\]"),
    "no validation image left": ({"a": 2, "b": 4}, {"val_fraction": 0.2},
                                 r"class 'a' has 2 readable images: val_fraction 0.2 holds out 0 of them, leaving "
                                 r"no validation image; needed val_fraction above 0.25"),
    "no training image left": ({"a": 4, "b": 2}, {"val_fraction": 0.8},
                               r"class 'b' has 2 readable images: val_fraction 0.8 holds out 2 of them, leaving no "
                               r"training image; needed val_fraction below 0.75"),
    "one image in a class": ({"a": 1, "b": 4}, {"val_fraction": 0.5},
                             r"class 'a' has 1 readable image: .*needed at least 2"),
    "no class folders": ({"": 0}, {}, r"no class sub-folders in the training split"),
}


@pytest.mark.parametrize("case", list(LAYOUT_CASES))
def test_bad_folder_layout(tmp_path, case):
    counts, kwargs, match = LAYOUT_CASES[case]
    for rel in counts:  # the folders with no image too
        (tmp_path / "d" / rel).mkdir(parents=True, exist_ok=True)
    make_folder(tmp_path / "d", counts)
    with pytest.raises(DataError, match=match):
        load_image_folder(tmp_path / "d", **kwargs)


@pytest.mark.parametrize("what", ["missing", "file"])
def test_image_folder_that_is_not_a_folder(tmp_path, what):
    path = tmp_path / "x.png"
    if what == "file":
        path.write_bytes(b"")
    needed = "is a file" if what == "file" else "does not exist"
    with pytest.raises(DataError, match=rf"image folder: got '.*x.png', which {needed}; needed a folder"):
        load_image_folder(path)


def test_class_whose_files_are_all_unreadable_names_the_reason(tmp_path):
    make_folder(tmp_path, {"a": 2})
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "0.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"class 'b' has no readable image \(1 image files tried; the first was "
                                        r"skipped: .*0.png: UnidentifiedImageError"):
        load_image_folder(tmp_path)


def test_idx_path_that_is_a_folder(tmp_path):
    from visionattn.data import read_idx

    folder = tmp_path / "train-images-idx3-ubyte"
    folder.mkdir()
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: a folder, needed an IDX file"):
        read_idx(folder)


# ----------------------------------------------------------------------------- unreadable files are skipped


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` grey pixels (with a few bytes of data)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(16)))
            + chunk(b"IEND", b""))


def _truncated_png(path: Path) -> None:
    save_image(path, np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:70])


def _raises(error: BaseException):
    """A stand-in for decode that fails on the file named bad.* the way a Pillow plugin can."""
    real = folder_module.decode

    def decode(path, size):
        if path.stem == "bad":
            raise error
        return real(path, size)
    return decode


SKIP_CASES = {  # name: (how to write root/a/bad.*, what the skipped entry must say)
    "decompression bomb 40000x40000": (lambda p: p.with_suffix(".png").write_bytes(_png_header(40000, 40000)),
                                       "DecompressionBombError"),
    "truncated png": (lambda p: _truncated_png(p.with_suffix(".png")), "OSError: image file is truncated"),
    "not an image": (lambda p: p.with_suffix(".jpg").write_text("hello"), "UnidentifiedImageError"),
    "float image beyond [0, 1]": (lambda p: save_image(p.with_suffix(".tif"), np.full((8, 8), 200, "<f4"), "F"),
                                  r"ValueError: mode F pixel values in [200, 200], needed [0, 1]"),
    "negative 32-bit image": (lambda p: save_image(p.with_suffix(".tif"), np.full((8, 8), -5, "<i4"), "I"),
                              "ValueError: mode I pixel values in [-5, -5], needed [0, 65535]"),
}
PLUGIN_ERRORS = {"SyntaxError": SyntaxError("broken PNG chunk"), "EOFError": EOFError("no more frames"),
                 "struct.error": struct.error("unpack requires a buffer"), "zlib.error": zlib.error("bad data"),
                 "ValueError": ValueError("unknown raw mode")}


@pytest.mark.parametrize("case", list(SKIP_CASES) + [f"plugin raises {name}" for name in PLUGIN_ERRORS])
def test_unreadable_file_is_skipped_and_listed(tmp_path, monkeypatch, case):
    root = make_folder(tmp_path / "d", TWO_CLASSES)
    if case in SKIP_CASES:
        write, reason = SKIP_CASES[case]
        write(root / "a" / "bad")
    else:
        name = case.removeprefix("plugin raises ")
        save_image(root / "a" / "bad.png", np.zeros((8, 8), np.uint8))
        monkeypatch.setattr(folder_module, "decode", _raises(PLUGIN_ERRORS[name]))
        reason = type(PLUGIN_ERRORS[name]).__name__
    data = load_image_folder(root, val_fraction=0.34)
    assert len(data.skipped) == 1 and Path(data.skipped[0].split(":")[0]).stem == "bad"
    assert reason in data.skipped[0]
    assert len(data.train) + len(data.test) == 6 and data.describe()["skipped_files"] == 1


def test_decompression_bomb_warning_is_skipped_too(tmp_path, monkeypatch):
    from PIL import Image

    root = make_folder(tmp_path / "d", TWO_CLASSES, size=4)
    save_image(root / "a" / "big.png", np.zeros((12, 12), np.uint8))  # 144 pixels: above 100, below 2 x 100
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    data = load_image_folder(root, val_fraction=0.34)
    assert len(data.skipped) == 1 and "big.png: DecompressionBombWarning" in data.skipped[0]


# ---------------------------------------------------------------------------------------- a failed download


class _Refuse(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path.endswith("short.gz"):  # promises 1000 bytes, sends 10, hangs up
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(bytes(10))
        else:
            self.send_error(404, "File not found")

    def log_message(self, *args):
        pass


@pytest.fixture
def http_404():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refuse)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


@pytest.mark.parametrize("case, file, match", [
    ("404", "train-images-idx3-ubyte.gz", r"HTTPError: HTTP Error 404"),
    ("cut short", "short.gz", r"ConnectionError: connection closed with 990 bytes still to come"),
    ("refused", "train-images-idx3-ubyte.gz", r"ConnectionRefusedError"),
    ("no answer", "train-images-idx3-ubyte.gz", r"(TimeoutError|timeout|timed out)"),
])
def test_failed_download_is_a_data_error(tmp_path, http_404, case, file, match):
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # accepts the connection in the kernel, never answers
        url = {"refused": _closed_port(), "no answer": f"http://127.0.0.1:{listener.getsockname()[1]}/"}.get(
            case, http_404)
        with pytest.raises(DataError, match=match) as err:
            download_fashion_mnist(tmp_path / "dl", base_url=url, checksums={file: "0" * 32}, timeout=0.5)
    finally:
        listener.close()
    message = str(err.value)
    assert f"download of {url}{file} failed" in message
    assert "dataset-fashion-mnist" in message and "--data-dir" in message
    assert not [p for p in (tmp_path / "dl").iterdir()]  # nothing partial kept


def test_download_without_network_through_load_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "OFFICIAL_URL", _closed_port())
    with pytest.raises(DataError, match=r"download of http://127.0.0.1:\d+/.*failed \(ConnectionRefusedError"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "new", download=True)


@pytest.mark.parametrize("dest, timeout, match", [
    ("file", 10.0, r"data_dir: cannot write the download into '.*notes.txt' \(FileExistsError"),
    ("dir", 0.0, r"timeout: got 0.0, needed a positive number"),
])
def test_download_bad_destination_or_timeout(tmp_path, dest, timeout, match):
    (tmp_path / "notes.txt").write_text("a file")
    target = tmp_path / ("notes.txt" if dest == "file" else "dl")
    with pytest.raises(UsageError, match=match):
        download_fashion_mnist(target, base_url=_closed_port(), checksums={"x.gz": "0" * 32}, timeout=timeout)


# ------------------------------------------------------------------------------ subsets and normalisation


@pytest.mark.parametrize("size", [0, 2, 31, 2.5, True])
def test_balanced_subset_size_out_of_range(size):
    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 10)
    ds = ArrayDataset(torch.zeros(30, 1, 1, 1, dtype=torch.uint8), labels, ["a", "b", "c"])
    with pytest.raises(UsageError, match=rf"train_subset: got {size!r}, needed a whole number of images from 3 "
                                         r"\(one of each of the 3 classes\) to 30 \(all the training images\)"):
        ds.balanced_subset(size)


@pytest.mark.parametrize("mean, std", [([0.5], [0.0]), ([0.5], [float("nan")]), ([float("inf")], [0.5]),
                                       ([0.5, 0.5], [0.5]), ([], [])])
def test_bad_normalisation(mean, std):
    with pytest.raises(UsageError, match=r"std: got mean .* needed one finite mean and one finite positive std"):
        Normalize(mean, std)


@pytest.mark.parametrize("kwargs, match", [
    ({"crop_padding": -1}, r"crop_padding: got -1, needed a whole number of pixels >= 0"),
    ({"crop_padding": 1.5}, r"crop_padding: got 1.5"),
    ({"erasing": 1.5}, r"erasing: got 1.5, needed a value in \[0.0, 1.0\]"),
    ({"erasing": float("nan")}, r"erasing: got nan, needed a finite number"),
])
def test_bad_augment_arguments(kwargs, match):
    with pytest.raises(UsageError, match=match):
        Augment(Normalize([0.5], [0.5]), **kwargs)
