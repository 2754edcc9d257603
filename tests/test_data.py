"""The data layer: IDX files, Fashion-MNIST discovery and download, image folders, augmentation."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.engine_support import make_digit_folder, make_fashion_mnist
from visionattn.data import (
    Augment,
    DataError,
    Normalize,
    channel_stats,
    download_fashion_mnist,
    epoch_generator,
    load_dataset,
    load_fashion_mnist,
    load_image_folder,
    read_idx,
    write_idx,
)
from visionattn.data import fashion_mnist as fm

# ------------------------------------------------------------------------------------------------------ IDX


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_idx_round_trip(tmp_path, suffix):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    write_idx(tmp_path / f"img{suffix}", images)
    write_idx(tmp_path / f"lab{suffix}", labels)
    np.testing.assert_array_equal(read_idx(tmp_path / f"img{suffix}", expect_ndim=3), images)
    np.testing.assert_array_equal(read_idx(tmp_path / f"lab{suffix}", expect_ndim=1), labels)
    raw = (tmp_path / f"img{suffix}").read_bytes()
    header = gzip.decompress(raw)[:16] if suffix else raw[:16]
    assert header[:4] == bytes([0, 0, 8, 3]) and int.from_bytes(header[4:8], "big") == 5  # the format's header


def test_idx_truncated_gzip_is_a_clear_error(tmp_path):
    path = write_idx(tmp_path / "x-idx3-ubyte.gz", np.zeros((20, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError, match=r"x-idx3-ubyte\.gz.*(truncated|decompress)"):
        read_idx(path)


def test_idx_data_shorter_or_longer_than_header(tmp_path):
    body = bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    short = tmp_path / "short-idx3-ubyte.gz"
    short.write_bytes(gzip.compress(body + bytes(28 * 28 * 9)))
    with pytest.raises(DataError, match=r"short-idx3-ubyte\.gz: truncated: header declares shape \(10, 28, 28\)"):
        read_idx(short)
    long = tmp_path / "long-idx3-ubyte"
    long.write_bytes(body + bytes(28 * 28 * 10 + 1))
    with pytest.raises(DataError, match="longer than its header"):
        read_idx(long)


def test_idx_wrong_magic_and_rank(tmp_path):
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"\x1f\x8b\x08\x03" + bytes(100)))
    with pytest.raises(DataError, match="bad magic number 0x1f8b0803"):
        read_idx(bad)
    labels = write_idx(tmp_path / "labels.gz", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="declares 1 dimensions, needed 3"):
        read_idx(labels, expect_ndim=3)
    floats = write_idx(tmp_path / "floats.gz", np.zeros((2, 2), np.float32))
    with pytest.raises(DataError, match="type code 0x0d"):
        read_idx(floats)
    assert read_idx(floats, dtype_code=None).dtype == np.float32


def test_idx_not_gzip(tmp_path):
    path = tmp_path / "plain-text.gz"
    path.write_text("this is not gzip data at all")
    with pytest.raises(DataError, match="plain-text.gz: cannot decompress"):
        read_idx(path)


# ------------------------------------------------------------------------------------------- Fashion-MNIST


def test_load_fashion_mnist_from_generated_files(tmp_path):
    make_fashion_mnist(tmp_path, n_train=30, n_test=20)
    data = load_fashion_mnist(tmp_path)
    assert data.train.images.shape == (30, 1, 28, 28) and data.train.images.dtype == torch.uint8
    assert data.test.images.shape == (20, 1, 28, 28)
    assert data.train.labels.tolist() == [i % 10 for i in range(30)]
    assert data.num_classes == 10 and data.in_chans == 1 and data.train.classes[9] == "Ankle boot"


def test_fashion_mnist_count_and_shape_mismatches(tmp_path):
    make_fashion_mnist(tmp_path, n_train=30, n_test=20)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(29, np.uint8))
    with pytest.raises(DataError, match="29 labels for the 30 images"):
        load_fashion_mnist(tmp_path)
    make_fashion_mnist(tmp_path, n_train=30, n_test=20)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((20, 32, 32), np.uint8))
    with pytest.raises(DataError, match=r"t10k-images.*\(32, 32\), needed \(28, 28\)"):
        load_fashion_mnist(tmp_path)
    make_fashion_mnist(tmp_path, n_train=30, n_test=20)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(20, 10, np.uint8))
    with pytest.raises(DataError, match="label 10, needed 0..9"):
        load_fashion_mnist(tmp_path)


def test_fashion_mnist_search_order_and_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(fm, "CACHE_DIR", tmp_path / "no-cache")
    monkeypatch.setenv(fm.ENV_VAR, str(make_fashion_mnist(tmp_path / "env", n_train=10, n_test=10)))
    assert fm.find_fashion_mnist() == tmp_path / "env"
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fm.find_fashion_mnist(tmp_path / "empty")  # an explicit folder is the only one looked at
    monkeypatch.delenv(fm.ENV_VAR)
    with pytest.raises(FileNotFoundError, match="--download"):
        load_dataset("fashion-mnist")


@pytest.mark.skipif(not fm._complete(fm.DEBIAN_DIR), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_files():
    data = load_fashion_mnist(fm.DEBIAN_DIR)
    assert len(data.train) == 60000 and len(data.test) == 10000
    assert torch.bincount(data.train.labels).tolist() == [6000] * 10


class _Server:
    """A local HTTP server on 127.0.0.1 over ``folder``, counting requests; it stops when the test ends."""

    def __init__(self, folder: Path) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                outer.requests.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(folder)))
        self.httpd.timeout = 5
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def served(tmp_path):
    folder = make_fashion_mnist(tmp_path / "served", n_train=20, n_test=10)
    server = _Server(folder)
    yield folder, server
    server.close()


def _md5s(folder: Path) -> dict[str, str]:
    return {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in fm.FILES.values()}


def test_download_verifies_checksums(tmp_path, served):
    folder, server = served
    dest = download_fashion_mnist(tmp_path / "dl", base_url=server.url, checksums=_md5s(folder), timeout=10)
    assert _md5s(dest) == _md5s(folder)
    assert len(load_fashion_mnist(dest).train) == 20
    requests = len(server.requests)
    download_fashion_mnist(dest, base_url=server.url, checksums=_md5s(folder), timeout=10)
    assert len(server.requests) == requests  # verified files are not fetched again


def test_download_with_wrong_checksum_keeps_nothing(tmp_path, served):
    folder, server = served
    sums = {**_md5s(folder), "train-labels-idx1-ubyte.gz": "0" * 32}
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: MD5 .*, needed 0{32}"):
        download_fashion_mnist(tmp_path / "dl", base_url=server.url, checksums=sums, timeout=10)
    assert not (tmp_path / "dl" / "train-labels-idx1-ubyte.gz").exists()
    assert not list((tmp_path / "dl").glob(".*.part"))


def test_official_checksums_are_complete():
    assert set(fm.OFFICIAL_MD5) == set(fm.FILES.values())
    assert all(len(v) == 32 and int(v, 16) >= 0 for v in fm.OFFICIAL_MD5.values())


# ------------------------------------------------------------------------------------------- image folders


def test_image_folder_train_val_with_corrupt_and_non_image_files(tmp_path):
    root = make_digit_folder(tmp_path / "digits")
    (root / "train" / "digit1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(30))
    (root / "val" / "digit2" / "notes.txt").write_text("not an image")
    data = load_image_folder(root)
    assert data.train.images.shape == (12, 1, 8, 8) and data.test.images.shape == (6, 1, 8, 8)
    assert data.train.classes == ["digit0", "digit1", "digit2"]
    assert sorted(data.train.labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    # the damaged image is skipped and counted; a file that is no image by its name is ignored, not "unreadable"
    assert [Path(s.split(":")[0]).name for s in data.skipped] == ["broken.png"]
    assert [Path(p).name for p in data.ignored] == ["notes.txt"]
    assert data.describe()["skipped_files"] == 1 and data.describe()["ignored_files"] == 1
    assert any("ignored 1 files" in line and ".txt" in line for line in data.notes())
    assert "val/<class>/ for validation" in data.layout


def test_image_folder_resize_and_rgb(tmp_path):
    root = make_digit_folder(tmp_path / "rgb", rgb=True)
    data = load_image_folder(root, image_size=16)
    assert data.train.images.shape == (12, 3, 16, 16)
    grey = load_image_folder(root, image_size=(12, 10), channels="grey")
    assert grey.train.images.shape == (12, 1, 12, 10)


def test_image_folder_seeded_split_is_fixed_and_stratified(tmp_path):
    root = make_digit_folder(tmp_path / "flat", per_class=10, split=False)
    a = load_image_folder(root, val_fraction=0.3, seed=1)
    b = load_image_folder(root, val_fraction=0.3, seed=1)
    c = load_image_folder(root, val_fraction=0.3, seed=2)
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.test.images, c.test.images)
    assert torch.bincount(a.test.labels).tolist() == [3, 3, 3] and len(a.train) == 21
    train_rows = {bytes(x.flatten().tolist()) for x in a.train.images}
    assert not any(bytes(x.flatten().tolist()) in train_rows for x in a.test.images)


# -------------------------------------------------------------------------------------------- augmentation


def _images(n=6, c=2, h=5, w=7):
    return torch.randint(0, 256, (n, c, h, w), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_normalize_and_channel_stats():
    x = _images()
    mean, std = channel_stats(x, chunk=4)
    ref = x.double().numpy() / 255
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(std, ref.std(axis=(0, 2, 3)), rtol=1e-6)
    out = Normalize(mean, std)(x)
    np.testing.assert_allclose(out.mean(dim=(0, 2, 3)).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(dim=(0, 2, 3), unbiased=False).numpy(), 1, atol=1e-5)


def test_crop_and_flip_match_a_per_image_loop():
    x = _images()
    norm = Normalize([0.5, 0.5], [0.25, 0.25])
    aug = Augment(norm, crop_padding=2, flip=True)
    params = aug.sample(10, (5, 7), epoch_generator(0, 0))
    index = torch.tensor([9, 0, 3, 4, 7, 1])
    out = aug(x, params, index)
    for b, i in enumerate(index.tolist()):
        padded = torch.nn.functional.pad(x[b], (2, 2, 2, 2))
        dy, dx = params.offsets[i].tolist()
        crop = padded[:, dy:dy + 5, dx:dx + 7]
        crop = crop.flip(-1) if params.flip[i] else crop
        torch.testing.assert_close(out[b], norm(crop[None])[0])
    assert params.flip.any() and not params.flip.all()


def test_augmentation_depends_on_sample_not_on_batching():
    x = _images(n=8)
    aug = Augment(Normalize([0.5, 0.5], [0.25, 0.25]), crop_padding=2, flip=True, erasing=0.5)
    params = aug.sample(8, (5, 7), epoch_generator(3, 1))
    whole = aug(x, params, torch.arange(8))
    halves = torch.cat([aug(x[:3], params, torch.arange(3)), aug(x[3:], params, torch.arange(3, 8))])
    torch.testing.assert_close(whole, halves, rtol=0, atol=0)
    again = aug.sample(8, (5, 7), epoch_generator(3, 1))
    assert torch.equal(params.offsets, again.offsets) and torch.equal(params.erase, again.erase)
    other = aug.sample(8, (5, 7), epoch_generator(3, 2))
    assert not torch.equal(params.offsets, other.offsets)


def test_random_erasing_zeroes_one_rectangle():
    x = torch.full((200, 1, 28, 28), 255, dtype=torch.uint8)
    aug = Augment(Normalize([0.0], [1.0]), crop_padding=0, flip=False, erasing=0.5)
    params = aug.sample(200, (28, 28), epoch_generator(0, 0))
    out = aug(x, params, torch.arange(200))
    erased = (out == 0).sum(dim=(1, 2, 3))
    y0, x0, h, w = params.erase.unbind(1)
    assert torch.equal(erased, h * w)  # exactly the declared rectangle, inside the image
    assert (y0 + h <= 28).all() and (x0 + w <= 28).all()
    area = (h * w).float()[h > 0] / 784
    assert 60 < int((h > 0).sum()) < 140 and area.min() >= 0.01 and area.max() <= 0.4
    for b in torch.nonzero(h > 0).flatten()[:5].tolist():
        assert (out[b, 0, y0[b]:y0[b] + h[b], x0[b]:x0[b] + w[b]] == 0).all()


def test_balanced_subset_is_class_balanced_and_fixed():
    from visionattn.data import ArrayDataset

    labels = torch.tensor([0] * 70 + [1] * 20 + [2] * 10)
    ds = ArrayDataset(torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1), labels, ["a", "b", "c"])
    sub = ds.balanced_subset(30)
    assert torch.bincount(sub.labels).tolist() == [10, 10, 10]
    assert torch.equal(sub.images, ds.balanced_subset(30).images)  # the same images every call
    assert torch.bincount(ds.balanced_subset(45).labels).tolist() == [18, 17, 10]  # class c has only 10
    assert ds.balanced_subset(100) is ds


# ----------------------------------------------------------------- image folders: layouts, bit depths, modes


def save_image(path: Path, pixels: np.ndarray, mode: str | None = None) -> Path:
    """``pixels`` saved with Pillow (format from the suffix); ``mode`` reads the raw bytes as that mode."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.ascontiguousarray(pixels)
    img = Image.frombytes(mode, pixels.shape[1::-1], pixels.tobytes()) if mode else Image.fromarray(pixels)
    img.save(path)
    return path


def make_folder(root: Path, counts: dict[str, int], size: int = 8) -> Path:
    """``counts[rel]`` tiny grey PNGs in ``root/rel`` (e.g. ``{"train/a": 3}``); image i has the value 16 i + 1."""
    for rel, n in counts.items():
        for i in range(n):
            save_image(root / rel / f"{i}.png", np.full((size, size), 16 * i + 1, np.uint8))
    return root


def test_train_folder_without_val_split_holds_out_per_class(tmp_path):
    root = make_folder(tmp_path / "d", {"train/cat": 5, "train/dog": 5})
    data = load_image_folder(root, val_fraction=0.2, seed=0)
    assert data.train.classes == ["cat", "dog"]  # not one class named "train" at 100 %
    assert torch.bincount(data.train.labels).tolist() == [4, 4]
    assert torch.bincount(data.test.labels).tolist() == [1, 1]
    assert "train/<class>/ with no val/ or test/ split" in data.layout and "held out 0.2" in data.layout
    assert data.notes()[0] == data.layout and data.describe()["layout"] == data.layout
    flat = load_image_folder(make_folder(tmp_path / "flat", {"cat": 5, "dog": 5}), val_fraction=0.2, seed=0)
    assert torch.equal(flat.test.images, data.test.images)  # held out as the root/<class>/ layout does


def test_class_named_like_a_split_in_the_flat_layout(tmp_path):
    data = load_image_folder(make_folder(tmp_path / "f", {"train": 4, "car": 4}), val_fraction=0.25)
    assert data.train.classes == ["car", "train"] and len(data.test) == 2  # train/ holds images, so it is a class


# 8-bit levels k = 0..63 (class "dark") and 255 - k ("light") stored at a deeper bit depth: (mode, suffix, dtype,
# value of level k). Pillow's own convert("L") clipped all of them to (nearly) white.
DEEP_IMAGES = {
    "I;16 png": ("I;16", ".png", "<u2", lambda k: k * 257),
    "I;16B tiff": ("I;16B", ".tif", ">u2", lambda k: k * 257),
    "I tiff": ("I", ".tif", "<i4", lambda k: k * 257),
    "I pgm": ("I", ".pgm", "<i4", lambda k: k * 257),
    "F tiff": ("F", ".tif", "<f4", lambda k: k / 255),
}


@pytest.mark.parametrize("channels", ["auto", "grey", "rgb"])
@pytest.mark.parametrize("kind", list(DEEP_IMAGES))
def test_deep_images_are_scaled_to_8_bits(tmp_path, kind, channels):
    mode, suffix, dtype, value = DEEP_IMAGES[kind]
    levels = {"dark": np.arange(64).reshape(8, 8), "light": 255 - np.arange(64).reshape(8, 8)}
    for split in ("train", "val"):
        for name, k in levels.items():
            save_image(tmp_path / split / name / f"0{suffix}", value(k).astype(dtype), mode)
    data = load_image_folder(tmp_path, channels=channels)
    assert data.in_chans == (3 if channels == "rgb" else 1)
    for split in (data.train, data.test):
        assert split.labels.tolist() == [0, 1]
        assert split.images[0].float().mean().item() == 31.5 and split.images[1].float().mean().item() == 223.5
        for c in range(data.in_chans):
            np.testing.assert_array_equal(split.images[0, c].numpy(), levels["dark"])


def test_sixteen_bit_rounds_to_the_nearest_level():
    from PIL import Image

    from visionattn.data.decode import to_8bit

    values = np.array([[0, 128, 129, 400, 32767, 32768, 65406, 65535]], np.uint16)
    out = np.asarray(to_8bit(Image.frombytes("I;16", (8, 1), values.tobytes())))
    assert out.tolist() == [[0, 0, 1, 2, 127, 128, 254, 255]]  # round(v / 257); v >> 8 would give 1 for 400


def test_mixed_modes_keep_their_labels_and_grey_is_luma(tmp_path):
    blue = np.zeros((8, 8, 3), np.uint8)
    blue[..., 2] = 255
    save_image(tmp_path / "train" / "a" / "blue.png", blue)
    save_image(tmp_path / "train" / "a" / "grey.png", np.full((8, 8), 100, np.uint8))
    save_image(tmp_path / "train" / "b" / "deep.png", np.full((8, 8), 50 * 257, "<u2"), "I;16")
    make_folder(tmp_path, {"val/a": 1, "val/b": 1})
    auto = load_image_folder(tmp_path)
    assert auto.in_chans == 3 and auto.train.labels.tolist() == [0, 0, 1]
    assert auto.train.images[:, :, 0, 0].tolist() == [[0, 0, 255], [100, 100, 100], [50, 50, 50]]
    grey = load_image_folder(tmp_path, channels="grey")
    # Pillow's convert("L") of pure blue is 29; taking the red channel (as before) gave 0
    assert grey.train.images[:, 0, 0, 0].tolist() == [29, 100, 50]


def test_hidden_files_and_folders_are_not_read(tmp_path):
    root = make_folder(tmp_path / "h", {"a": 3, "b": 3, "a/.ipynb_checkpoints": 2, "__MACOSX/a": 2, ".git/x": 1})
    (root / "a" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "b" / "._0.png").write_bytes(b"\0\5\26\7")  # a macOS resource fork
    data = load_image_folder(root, val_fraction=0.34)
    assert data.train.classes == ["a", "b"] and len(data.train) + len(data.test) == 6
    assert not data.skipped and not data.ignored
