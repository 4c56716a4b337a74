"""Tests of varlearn.datasets: image folders, noise, IDX parsing, Kodak/MNIST loading and downloads.

Tests that need the data in ``shared/data`` (beside the repository, or the
folder named by ``VARLEARN_SHARED_DATA``) skip when it is absent.  Downloads are
tested against a loopback HTTP server serving those files; nothing touches the
network or the user's cache.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import shutil
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import skimage.io

from varlearn import datasets as ds
from varlearn.datasets import DataError, DownloadError

SHARED = Path(os.environ.get("VARLEARN_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


# --------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No user data folder, a throw-away default cache, no proxy for loopback, no system Fashion-MNIST."""
    monkeypatch.delenv("VARLEARN_DATA", raising=False)
    monkeypatch.setenv("VARLEARN_CACHE", str(tmp_path / "default-cache"))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(ds, "FASHION_MNIST_SYSTEM_DIRS", ())


def _need_shared(sub):
    folder = SHARED / sub
    if not folder.is_dir():
        pytest.skip(f"shared data folder {folder} is absent (set VARLEARN_SHARED_DATA to use another copy)")
    return folder


@pytest.fixture
def shared_kodak():
    return _need_shared("kodak")


@pytest.fixture
def shared_mnist():
    return _need_shared("mnist")


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server naming)
        self.server.requests.append(self.path)
        super().do_GET()

    def log_message(self, format, *args):  # noqa: A002 - silence the request log
        pass


@pytest.fixture
def serve():
    """``serve(folder)`` -> (base URL, list of requested paths); servers shut down after the test."""
    servers = []

    def start(folder):
        handler = functools.partial(_Handler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.requests = []
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}", server.requests

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port_url():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/"


def _files_under(folder):
    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def _idx_bytes(arr, code):
    arr = np.asarray(arr)
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(dtype).tobytes()


def _write_fake_mnist(folder, n=5, gz_images=False, gz_labels=True, split="t10k", seed=0):
    """Small MNIST-like IDX pair; returns (images uint8, labels uint8, {name: sha of raw bytes})."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    sums = {}
    for kind, arr, dims, gz in (("images", images, 3, gz_images), ("labels", labels, 1, gz_labels)):
        base = f"{split}-{kind}-idx{dims}-ubyte"
        raw = _idx_bytes(arr, 0x08)
        sums[base] = _sha(raw)
        if gz:
            (folder / (base + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / base).write_bytes(raw)
    return images, labels, sums


# --------------------------------------------------------------------------
# built-in images


def test_builtin_images_default():
    a = ds.builtin_images()
    assert a.shape == (len(ds.BUILTIN_NAMES), 300, 384)  # cropped to the smallest common shape
    assert a.dtype == np.float64
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert a.std() > 0.05
    np.testing.assert_array_equal(a, ds.builtin_images())


def test_builtin_images_names_and_size():
    a = ds.builtin_images("camera", size=64)
    assert a.shape == (1, 64, 64)
    b = ds.builtin_images(["camera", "coffee"], size=(32, 48))
    assert b.shape == (2, 32, 48) and b.dtype == np.float64
    np.testing.assert_allclose(b[0], ds.builtin_images(["camera"], size=(32, 48))[0])
    assert 0.0 <= b.min() and b.max() <= 1.0
    with pytest.raises(ValueError, match="eagle"):
        ds.builtin_images(["camera", "eagle"])
    with pytest.raises(ValueError, match="size"):
        ds.builtin_images(size=0)
    with pytest.raises(TypeError, match="size"):
        ds.builtin_images(size=1.5)


# --------------------------------------------------------------------------
# image files and folders


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "imgs"
    folder.mkdir()
    u8 = rng.integers(0, 256, size=(16, 20), dtype=np.uint8)
    u16 = rng.integers(0, 65536, size=(16, 20), dtype=np.uint16)
    f64 = rng.random((16, 20))
    skimage.io.imsave(folder / "b.png", u8, check_contrast=False)
    skimage.io.imsave(folder / "a.png", u16, check_contrast=False)
    skimage.io.imsave(folder / "c.tif", f64, check_contrast=False)
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    return folder, {"a.png": u16 / 65535.0, "b.png": u8 / 255.0, "c.tif": f64}


def test_load_image_dtypes(image_folder):
    folder, expected = image_folder
    for name, want in expected.items():
        got = ds.load_image(folder / name)
        assert got.dtype == np.float64 and got.shape == (16, 20)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_load_image_colour(tmp_path):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, size=(8, 9, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((8, 9, 1), 7, np.uint8)], axis=-1)
    skimage.io.imsave(tmp_path / "rgb.png", rgb, check_contrast=False)
    skimage.io.imsave(tmp_path / "rgba.png", rgba, check_contrast=False)
    gray = ds.load_image(tmp_path / "rgb.png")
    want = (rgb / 255.0) @ np.array([0.2125, 0.7154, 0.0721])
    assert gray.shape == (8, 9)
    np.testing.assert_allclose(gray, want, atol=1e-12)
    np.testing.assert_allclose(ds.load_image(tmp_path / "rgba.png"), want, atol=1e-12)  # alpha dropped
    colour = ds.load_image(tmp_path / "rgb.png", as_gray=False)
    assert colour.shape == (8, 9, 3)
    np.testing.assert_allclose(colour, rgb / 255.0)


def test_load_images_sorted_and_filtered(image_folder):
    folder, expected = image_folder
    images, names = ds.load_images(folder)
    assert names == ["a.png", "b.png", "c.tif"]
    assert images.shape == (3, 16, 20) and images.dtype == np.float64
    for img, name in zip(images, names):
        np.testing.assert_allclose(img, expected[name], atol=1e-12)
    # string path works too
    _, names2 = ds.load_images(str(folder))
    assert names2 == names


def test_load_images_crop_then_resize(image_folder):
    folder, expected = image_folder
    cropped, _ = ds.load_images(folder, crop=(10, 12))
    assert cropped.shape == (3, 10, 12)
    np.testing.assert_allclose(cropped[1], expected["b.png"][3:13, 4:16], atol=1e-12)
    both, _ = ds.load_images(folder, crop=10, size=5)
    assert both.shape == (3, 5, 5)
    np.testing.assert_allclose(both, ds.resize(cropped[:, :, 1:11], 5), atol=1e-12)
    with pytest.raises(DataError, match=r"cannot crop 16x20 image to 17x17"):
        ds.load_images(folder, crop=17)


def test_load_images_different_shapes(tmp_path):
    skimage.io.imsave(tmp_path / "p.png", np.zeros((10, 10), np.uint8), check_contrast=False)
    skimage.io.imsave(tmp_path / "q.png", np.zeros((12, 10), np.uint8), check_contrast=False)
    with pytest.raises(DataError, match=r"different shapes.*p\.png is 10x10.*q\.png is 12x10"):
        ds.load_images(tmp_path)
    images, _ = ds.load_images(tmp_path, size=8)
    assert images.shape == (2, 8, 8)
    images, _ = ds.load_images(tmp_path, crop=(10, 9))
    assert images.shape == (2, 10, 9)


def test_non_image_file(tmp_path):
    (tmp_path / "x.png").write_bytes(b"\x00garbage bytes, not a PNG" * 4)
    with pytest.raises(DataError, match=r"x\.png"):
        ds.load_image(tmp_path / "x.png")
    with pytest.raises(DataError, match=r"x\.png.*not an image"):
        ds.load_images(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png"):
        ds.load_image(tmp_path / "empty.png")


def test_nan_tiff(tmp_path):
    data = np.random.default_rng(3).random((6, 7))
    data[2, 3] = np.nan
    skimage.io.imsave(tmp_path / "nan.tif", data, check_contrast=False)
    with pytest.raises(DataError, match=r"nan\.tif.*1 NaN"):
        ds.load_image(tmp_path / "nan.tif")
    with pytest.raises(DataError, match=r"nan\.tif"):
        ds.load_images(tmp_path)


def test_empty_and_missing_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"folder: no image files"):
        ds.load_images(empty)
    (empty / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match=r"no image files.*1 file\(s\) with other extensions"):
        ds.load_images(empty)
    with pytest.raises(FileNotFoundError, match=r"folder: no such folder.*does-not-exist"):
        ds.load_images(tmp_path / "does-not-exist")
    with pytest.raises(FileNotFoundError, match=r"no such file.*missing\.png"):
        ds.load_image(tmp_path / "missing.png")
    with pytest.raises(TypeError, match="folder"):
        ds.load_images(42)


def _pair_folders(tmp_path):
    rng = np.random.default_rng(4)
    clean, noisy = tmp_path / "clean", tmp_path / "noisy"
    clean.mkdir()
    noisy.mkdir()
    a = rng.integers(0, 256, size=(9, 11), dtype=np.uint8)
    b = rng.integers(0, 256, size=(9, 11), dtype=np.uint8)
    an = rng.random((9, 11))
    bn = rng.integers(0, 256, size=(9, 11), dtype=np.uint8)
    skimage.io.imsave(clean / "a.png", a, check_contrast=False)
    skimage.io.imsave(clean / "b.png", b, check_contrast=False)
    skimage.io.imsave(noisy / "a.tif", an, check_contrast=False)
    skimage.io.imsave(noisy / "b.png", bn, check_contrast=False)
    return clean, noisy, (a / 255.0, b / 255.0), (an, bn / 255.0)


def test_load_pairs_by_stem(tmp_path):
    clean_dir, noisy_dir, clean_want, noisy_want = _pair_folders(tmp_path)
    clean, noisy, names = ds.load_pairs(clean_dir, noisy_dir)
    assert names == ["a", "b"]
    assert clean.shape == noisy.shape == (2, 9, 11)
    np.testing.assert_allclose(clean, np.stack(clean_want), atol=1e-12)
    np.testing.assert_allclose(noisy, np.stack(noisy_want), atol=1e-12)
    c2, n2, _ = ds.load_pairs(clean_dir, noisy_dir, crop=8, size=4)
    assert c2.shape == n2.shape == (2, 4, 4)


def test_load_pairs_mismatched_names(tmp_path):
    clean_dir, noisy_dir, _, _ = _pair_folders(tmp_path)
    skimage.io.imsave(clean_dir / "c.png", np.zeros((9, 11), np.uint8), check_contrast=False)
    skimage.io.imsave(noisy_dir / "d.png", np.zeros((9, 11), np.uint8), check_contrast=False)
    with pytest.raises(DataError, match=r"only in clean_dir .*: c; only in noisy_dir .*: d"):
        ds.load_pairs(clean_dir, noisy_dir)


def test_load_pairs_mismatched_sizes(tmp_path):
    clean_dir, noisy_dir, _, _ = _pair_folders(tmp_path)
    skimage.io.imsave(noisy_dir / "b.png", np.zeros((9, 12), np.uint8), check_contrast=False)
    with pytest.raises(DataError, match=r"pair 'b'.*b\.png is 9x11.*b\.png is 9x12"):
        ds.load_pairs(clean_dir, noisy_dir)
    # a size does not hide the mismatch
    with pytest.raises(DataError, match=r"pair 'b'"):
        ds.load_pairs(clean_dir, noisy_dir, size=5)


def test_load_pairs_duplicate_stem(tmp_path):
    clean_dir, noisy_dir, _, _ = _pair_folders(tmp_path)
    skimage.io.imsave(clean_dir / "a.tif", np.zeros((9, 11)), check_contrast=False)
    with pytest.raises(DataError, match=r"share the stem 'a'"):
        ds.load_pairs(clean_dir, noisy_dir)


# --------------------------------------------------------------------------
# crop, resize, noise


def test_center_crop_and_resize():
    img = np.arange(6 * 8, dtype=np.float64).reshape(6, 8)
    np.testing.assert_array_equal(ds.center_crop(img, (2, 4)), img[2:4, 2:6])
    stack = np.stack([img, img + 1])
    assert ds.center_crop(stack, 3).shape == (2, 3, 3)
    with pytest.raises(ValueError, match="larger than the images"):
        ds.center_crop(img, 7)
    const = np.full((2, 20, 30), 0.25)
    out = ds.resize(const, (5, 6))
    assert out.shape == (2, 5, 6) and out.dtype == np.float64
    np.testing.assert_allclose(out, 0.25)
    assert ds.resize(img.astype(np.float32), 4).dtype == np.float32
    # a stack is resized image by image
    rng = np.random.default_rng(5)
    stack = rng.random((3, 28, 28))
    np.testing.assert_allclose(ds.resize(stack, 12)[1], ds.resize(stack[1], 12), atol=1e-14)
    with pytest.raises(ValueError, match="images must be 2-D"):
        ds.resize(np.zeros((2, 2, 2, 2)), 1)


def test_add_noise_statistics():
    clean = np.full((4, 256, 256), 0.5)
    noisy = ds.add_noise(clean, 0.1, rng=0)
    noise = noisy - clean
    assert noisy.dtype == np.float64 and noisy.shape == clean.shape
    assert abs(noise.mean()) < 1e-3
    assert abs(noise.std() - 0.1) < 1e-3
    np.testing.assert_array_equal(noisy, ds.add_noise(clean, 0.1, rng=0))
    np.testing.assert_array_equal(noisy, ds.add_noise(clean, 0.1, rng=np.random.default_rng(0)))
    assert not np.array_equal(noisy, ds.add_noise(clean, 0.1, rng=1))
    assert noisy.max() > 0.9 and noisy.min() < 0.1  # 4-sigma tails are kept: no clipping
    np.testing.assert_array_equal(clean, 0.5)  # input untouched
    zero = ds.add_noise(clean, 0.0, rng=0)
    np.testing.assert_array_equal(zero, clean)
    assert zero is not clean


def test_add_noise_no_clipping_and_dtype():
    x = np.zeros((64, 64), dtype=np.float32)
    y = ds.add_noise(x, 0.5, rng=2)
    assert y.dtype == np.float32
    assert y.min() < 0.0
    y64 = ds.add_noise(x.astype(np.float64), 0.5, rng=2)
    np.testing.assert_allclose(y, y64, rtol=1e-6, atol=1e-6)  # same draws for both dtypes


@pytest.mark.parametrize("sigma", [-0.1, float("nan"), float("inf")])
def test_add_noise_bad_sigma(sigma):
    with pytest.raises(ValueError, match="sigma"):
        ds.add_noise(np.zeros(3), sigma)


def test_add_noise_bad_types():
    with pytest.raises(TypeError, match="sigma"):
        ds.add_noise(np.zeros(3), "0.1")
    with pytest.raises(TypeError, match="sigma"):
        ds.add_noise(np.zeros(3), True)
    with pytest.raises(TypeError, match="images must have a floating dtype"):
        ds.add_noise(np.zeros(3, dtype=np.uint8), 0.1)
    with pytest.raises(TypeError, match="rng"):
        ds.add_noise(np.zeros(3), 0.1, rng="seed")


# --------------------------------------------------------------------------
# IDX parser


@pytest.mark.parametrize(
    ("code", "dtype"),
    [(0x08, np.uint8), (0x09, np.int8), (0x0B, np.int16), (0x0C, np.int32), (0x0D, np.float32), (0x0E, np.float64)],
)
def test_idx_round_trip(tmp_path, code, dtype):
    rng = np.random.default_rng(6)
    arr = (rng.random((3, 4, 5)) * 100).astype(dtype)
    raw = _idx_bytes(arr, code)
    (tmp_path / "plain.idx").write_bytes(raw)
    (tmp_path / "packed.bin").write_bytes(gzip.compress(raw))  # detected by magic bytes, not name
    for got in (ds.read_idx(tmp_path / "plain.idx"), ds.read_idx(tmp_path / "packed.bin"), ds.read_idx(raw)):
        assert got.dtype == np.dtype(dtype) and got.dtype.isnative
        np.testing.assert_array_equal(got, arr)


def test_idx_one_dimensional():
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    np.testing.assert_array_equal(ds.read_idx(_idx_bytes(labels, 0x08)), labels)


def test_idx_errors(tmp_path):
    raw = _idx_bytes(np.zeros((2, 3, 3), np.uint8), 0x08)
    (tmp_path / "short").write_bytes(raw[:-1])
    with pytest.raises(DataError, match=r"short: truncated IDX file"):
        ds.read_idx(tmp_path / "short")
    (tmp_path / "short.gz").write_bytes(gzip.compress(raw[:10]))
    with pytest.raises(DataError, match=r"truncated IDX file"):
        ds.read_idx(tmp_path / "short.gz")
    (tmp_path / "badgz").write_bytes(gzip.compress(raw)[:-12])
    with pytest.raises(DataError, match=r"badgz: corrupt or truncated gzip"):
        ds.read_idx(tmp_path / "badgz")
    with pytest.raises(DataError, match="bad magic"):
        ds.read_idx(b"\x01\x00\x08\x01" + raw[4:])
    with pytest.raises(DataError, match="unknown IDX data type code 0x07"):
        ds.read_idx(b"\x00\x00\x07" + raw[3:])
    with pytest.raises(DataError, match="trailing bytes"):
        ds.read_idx(raw + b"\x00")
    with pytest.raises(DataError, match="truncated"):
        ds.read_idx(b"\x00\x00")
    with pytest.raises(FileNotFoundError, match="nothere"):
        ds.read_idx(tmp_path / "nothere")


# --------------------------------------------------------------------------
# MNIST-like loaders on small synthetic files


def test_mnist_synthetic_root(tmp_path, monkeypatch):
    images, labels, sums = _write_fake_mnist(tmp_path / "mnist", n=7)
    monkeypatch.setattr(ds, "MNIST_SHA256", dict(ds.MNIST_SHA256, **sums))
    x, y = ds.mnist(root=tmp_path, split="test")
    assert x.shape == (7, 28, 28) and x.dtype == np.float64
    assert y.dtype == np.int64
    np.testing.assert_allclose(x, images / 255.0)
    np.testing.assert_array_equal(y, labels)
    x12, _ = ds.mnist(root=tmp_path / "mnist", split="test", size=12)
    assert x12.shape == (7, 12, 12) and 0 <= x12.min() and x12.max() <= 1
    with pytest.raises(ValueError, match="split"):
        ds.mnist(root=tmp_path, split="valid")


def test_mnist_checksum_mismatch(tmp_path):
    _write_fake_mnist(tmp_path, n=3)  # real MNIST checksums do not match these
    with pytest.raises(DataError, match=r"SHA-256 mismatch for .*t10k-images-idx3-ubyte: expected 0fa7898d"):
        ds.mnist(root=tmp_path, split="test")


def test_mnist_structure_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(ds, "FASHION_MNIST_SHA256", {})
    folder = tmp_path / "fashion-mnist"
    _write_fake_mnist(folder, n=4)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(np.arange(3, dtype=np.uint8), 0x08)))
    with pytest.raises(DataError, match="4 images but 3 labels"):
        ds.fashion_mnist(root=tmp_path, split="test")
    bad_labels = _idx_bytes(np.array([1, 2, 3, 12], np.uint8), 0x08)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bad_labels))
    with pytest.raises(DataError, match="label 12 outside 0..9"):
        ds.fashion_mnist(root=tmp_path, split="test")


def test_fashion_mnist_search_order(tmp_path, monkeypatch):
    monkeypatch.setattr(ds, "FASHION_MNIST_SHA256", {})  # structure-only check for synthetic files
    system = tmp_path / "system"
    images, labels, _ = _write_fake_mnist(system, n=3, split="train", seed=1)
    monkeypatch.setattr(ds, "FASHION_MNIST_SYSTEM_DIRS", (str(system),))
    x, y = ds.fashion_mnist(split="train", download=False)
    np.testing.assert_allclose(x, images / 255.0)
    np.testing.assert_array_equal(y, labels)
    # VARLEARN_DATA/fashion-mnist when the system folder lacks the files
    monkeypatch.setattr(ds, "FASHION_MNIST_SYSTEM_DIRS", (str(tmp_path / "nothing"),))
    images2, _, _ = _write_fake_mnist(tmp_path / "data" / "fashion-mnist", n=2, split="train", seed=2)
    monkeypatch.setenv("VARLEARN_DATA", str(tmp_path / "data"))
    x2, _ = ds.fashion_mnist(split="train", download=False)
    np.testing.assert_allclose(x2, images2 / 255.0)
    monkeypatch.delenv("VARLEARN_DATA")
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte\[\.gz\] not found.*download=True"):
        ds.fashion_mnist(split="train", download=False)
    with pytest.raises(FileNotFoundError, match="root"):
        ds.fashion_mnist(root=tmp_path / "missing-root")


def test_fashion_mnist_download_structure_only(tmp_path, monkeypatch, serve):
    monkeypatch.setattr(ds, "FASHION_MNIST_SHA256", {})
    served = tmp_path / "served"
    images, labels, _ = _write_fake_mnist(served, n=4, gz_images=True, gz_labels=True)
    url, requests = serve(served)
    x, y = ds.fashion_mnist(split="test", cache_dir=tmp_path / "cache", base_url=url)
    np.testing.assert_allclose(x, images / 255.0)
    np.testing.assert_array_equal(y, labels)
    assert _files_under(tmp_path / "cache") == [
        "fashion-mnist/t10k-images-idx3-ubyte.gz",
        "fashion-mnist/t10k-labels-idx1-ubyte.gz",
    ]
    assert len(requests) == 2
    # a truncated file on the server is rejected and nothing is left in the cache
    raw = gzip.decompress((served / "t10k-images-idx3-ubyte.gz").read_bytes())
    (served / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz.*truncated IDX file"):
        ds.fashion_mnist(split="test", cache_dir=tmp_path / "cache2", base_url=url)
    assert _files_under(tmp_path / "cache2") == []


# --------------------------------------------------------------------------
# Kodak and MNIST from the shared data (local folder and loopback downloads)


def test_kodak_local_root(shared_kodak):
    images, names = ds.kodak(root=shared_kodak.parent)
    assert images.shape == (24, 96, 96) and images.dtype == np.float64
    assert names == sorted(names) and names[0] == "kodim01.png" and names[-1] == "kodim24.png"
    assert 0.0 <= images.min() and images.max() <= 1.0
    sub, sub_names = ds.kodak(root=shared_kodak, indices=[5, 0, 5], size=32)
    assert sub_names == ["kodim01.png", "kodim06.png"] and sub.shape == (2, 32, 32)
    native, _ = ds.kodak(root=shared_kodak, indices=[0], size=None)
    assert native.shape == (1, 512, 768)
    colour, _ = ds.kodak(root=shared_kodak, indices=[0], gray=False, size=16)
    assert colour.shape == (1, 16, 16, 3)
    with pytest.raises(DataError, match="differ in shape"):
        ds.kodak(root=shared_kodak, size=None)
    with pytest.raises(ValueError, match="indices"):
        ds.kodak(root=shared_kodak, indices=[24])


def test_kodak_from_env(shared_kodak, monkeypatch):
    monkeypatch.setenv("VARLEARN_DATA", str(shared_kodak.parent))
    images, names = ds.kodak(indices=[1], download=False)
    assert names == ["kodim02.png"] and images.shape == (1, 96, 96)


def test_kodak_local_corrupt(shared_kodak, tmp_path):
    data = bytearray((shared_kodak / "kodim01.png").read_bytes())
    data[-20] ^= 0xFF
    (tmp_path / "kodim01.png").write_bytes(bytes(data))
    bad = _sha(bytes(data))
    with pytest.raises(DataError, match=rf"kodim01\.png: expected {ds.KODAK_SHA256['kodim01.png']}, got {bad}"):
        ds.kodak(root=tmp_path, indices=[0])
    with pytest.raises(FileNotFoundError, match=r"kodim02\.png not found"):
        ds.kodak(root=tmp_path, indices=[1])


def test_kodak_download_and_cache(shared_kodak, tmp_path, serve, monkeypatch):
    url, requests = serve(shared_kodak.parent)
    cache = tmp_path / "cache"
    images, names = ds.kodak(indices=[0, 5], cache_dir=cache, base_url=url + "/kodak/")
    assert names == ["kodim01.png", "kodim06.png"]
    assert images.shape == (2, 96, 96)
    assert sorted(requests) == ["/kodak/kodim01.png", "/kodak/kodim06.png"]
    assert _files_under(cache) == ["kodak/kodim01.png", "kodak/kodim06.png"]
    for name in names:
        assert _sha((cache / "kodak" / name).read_bytes()) == ds.KODAK_SHA256[name]
    # second call: served from the cache, no new request
    again, _ = ds.kodak(indices=[0, 5], cache_dir=cache, base_url=url + "/kodak/")
    assert len(requests) == 2
    np.testing.assert_array_equal(again, images)
    local, _ = ds.kodak(root=shared_kodak, indices=[0, 5])
    np.testing.assert_array_equal(local, images)
    # VARLEARN_CACHE is the default cache folder
    monkeypatch.setenv("VARLEARN_CACHE", str(cache))
    ds.kodak(indices=[5], download=False)
    assert len(requests) == 2


def test_kodak_download_corrupt_is_rejected(shared_kodak, tmp_path, serve):
    served = tmp_path / "served"
    served.mkdir()
    data = bytearray((shared_kodak / "kodim01.png").read_bytes())
    data[1000] ^= 0x01
    (served / "kodim01.png").write_bytes(bytes(data))
    url, requests = serve(served)
    cache = tmp_path / "cache"
    want = rf"kodim01\.png downloaded from .*: expected {ds.KODAK_SHA256['kodim01.png']}, got {_sha(bytes(data))}"
    with pytest.raises(DataError, match=want):
        ds.kodak(indices=[0], cache_dir=cache, base_url=url)
    assert requests == ["/kodim01.png"]
    assert _files_under(cache) == []


def test_download_offline_message(tmp_path, closed_port_url):
    cache = tmp_path / "cache"
    want = r"could not download Kodak file kodim03\.png.*root=.*--data-dir.*VARLEARN_DATA"
    with pytest.raises(DownloadError, match=want):
        ds.kodak(indices=[2], cache_dir=cache, base_url=closed_port_url)
    with pytest.raises(DownloadError, match=r"MNIST file t10k-images-idx3-ubyte\.gz"):
        ds.mnist(split="test", cache_dir=cache, base_url=closed_port_url)
    assert _files_under(cache) == []
    with pytest.raises(ValueError, match="base_url"):
        ds.kodak(indices=[2], cache_dir=cache, base_url="ftp://example.invalid/")


def test_mnist_download_and_cache(shared_mnist, tmp_path, serve, closed_port_url, monkeypatch):
    url, requests = serve(shared_mnist)
    cache = tmp_path / "cache"
    # the first mirror is down, the second one serves the files
    monkeypatch.setattr(ds, "MNIST_MIRRORS", (closed_port_url, url + "/"))
    x_test, y_test = ds.mnist(split="test", cache_dir=cache)
    x_train, y_train = ds.mnist(split="train", cache_dir=cache)
    assert x_test.shape == (10000, 28, 28) and x_train.shape == (60000, 28, 28)
    assert x_train.dtype == np.float64 and y_train.dtype == np.int64
    assert 0.0 == x_test.min() and x_test.max() == 1.0
    assert set(np.unique(y_train)) == set(range(10)) and set(np.unique(y_test)) == set(range(10))
    assert len(requests) == 4
    assert _files_under(cache) == sorted(f"mnist/{n}.gz" for n in ds.MNIST_SHA256)
    for name, digest in ds.MNIST_SHA256.items():
        assert _sha(gzip.decompress((cache / "mnist" / f"{name}.gz").read_bytes())) == digest
    x12, y12 = ds.mnist(split="test", size=12, cache_dir=cache)
    assert x12.shape == (10000, 12, 12) and len(requests) == 4
    np.testing.assert_array_equal(y12, y_test)


def test_mnist_download_corrupt_is_rejected(shared_mnist, tmp_path, serve):
    served = tmp_path / "served"
    served.mkdir()
    raw = bytearray(gzip.decompress((shared_mnist / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # still a valid IDX file, wrong content
    (served / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    shutil.copy(shared_mnist / "t10k-images-idx3-ubyte.gz", served)
    url, _ = serve(served)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz downloaded from .*expected ff7bcfd4"):
        ds.mnist(split="test", cache_dir=cache, base_url=url)
    assert _files_under(cache) == ["mnist/t10k-images-idx3-ubyte.gz"]  # the good file was kept


def test_mnist_local_root(shared_mnist):
    x, y = ds.mnist(root=shared_mnist.parent, split="test", size=12)
    assert x.shape == (10000, 12, 12) and y.shape == (10000,)
    assert 0.0 <= x.min() and x.max() <= 1.0
