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
    assert len(data.skipped) == 2 and {Path(s.split(":")[0]).name for s in data.skipped} == {"broken.png",
                                                                                         "notes.txt"}
    assert data.describe()["skipped_files"] == 2


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


def test_image_folder_errors(tmp_path):
    root = make_digit_folder(tmp_path / "d")
    (root / "train" / "digit9").mkdir()
    with pytest.raises(DataError, match=r"digit9: class 'digit9' has no readable image"):
        load_image_folder(root)
    (root / "train" / "digit9" / "junk.jpg").write_bytes(b"junk")
    with pytest.raises(DataError, match="digit9.*no readable image"):
        load_image_folder(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        load_image_folder(tmp_path / "empty")
    with pytest.raises(ValueError, match="data: got 'nowhere'"):
        load_dataset("nowhere")


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


def test_augment_argument_checks():
    with pytest.raises(ValueError, match="crop_padding: got -1"):
        Augment(Normalize([0.5], [0.5]), crop_padding=-1)
    with pytest.raises(ValueError, match="erasing: got 1.5"):
        Augment(Normalize([0.5], [0.5]), erasing=1.5)


def test_balanced_subset_is_class_balanced_and_fixed():
    from visionattn.data import ArrayDataset

    labels = torch.tensor([0] * 70 + [1] * 20 + [2] * 10)
    ds = ArrayDataset(torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1), labels, ["a", "b", "c"])
    sub = ds.balanced_subset(30)
    assert torch.bincount(sub.labels).tolist() == [10, 10, 10]
    assert torch.equal(sub.images, ds.balanced_subset(30).images)  # the same images every call
    assert torch.bincount(ds.balanced_subset(45).labels).tolist() == [18, 17, 10]  # class c has only 10
    assert ds.balanced_subset(500) is ds
    with pytest.raises(ValueError, match="subset size"):
        ds.balanced_subset(0)
