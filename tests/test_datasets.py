"""Tests of varlearn.datasets: image files and bit depths, folders and pairs, noise, IDX parsing,
the data registry, Kodak/MNIST loading and downloads through pooch.

Tests that need the Kodak or MNIST files use :func:`varlearn.datasets.shared_data_dir` and skip
when no local copy is found (set ``VARLEARN_SHARED_DATA`` to point at one).  Downloads are tested
against a loopback HTTP server; nothing touches the network or the user's cache.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import json
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import skimage.io
import tifffile

from varlearn import datasets as ds
from varlearn.datasets import DataError, DownloadError
from varlearn.datasets.transforms import resize_hw

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No user data folder, a throw-away cache, no proxy for loopback, no system folders, no retries."""
    shared = ds.shared_data_dir()  # looked up before VARLEARN_DATA is removed
    if shared is not None:
        monkeypatch.setenv("VARLEARN_SHARED_DATA", str(shared))
    monkeypatch.delenv("VARLEARN_DATA", raising=False)
    monkeypatch.setenv("VARLEARN_CACHE", str(tmp_path / "default-cache"))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setitem(ds.registry()["datasets"]["fashion-mnist"], "system_dirs", [])
    monkeypatch.setattr(ds, "DOWNLOAD_RETRIES", 0)


def _need_shared(sub):
    folder = ds.shared_data_dir(sub)
    if folder is None:
        pytest.skip(f"no local copy of {sub}/ found by varlearn.datasets.shared_data_dir (set VARLEARN_SHARED_DATA)")
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
        if self.server.fail_first > 0:
            self.server.fail_first -= 1
            self.send_error(503, "try again")
            return
        super().do_GET()

    def log_message(self, format, *args):  # noqa: A002 - silence the request log
        pass


@pytest.fixture
def serve():
    """``serve(folder, fail_first=0)`` -> (base URL, requested paths); servers shut down after the test."""
    servers = []

    def start(folder, fail_first=0):
        handler = functools.partial(_Handler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.requests = []
        server.fail_first = fail_first
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


def _set_checksums(monkeypatch, key, sums):
    """Point the registry entry of data set ``key`` at the given {IDX base name: SHA-256} (or drop all)."""
    files = ds.registry()["datasets"][key]["files"]
    for name in list(files):
        base = name[:-3]
        if sums is None:
            monkeypatch.delitem(files, name)
        elif base in sums:
            monkeypatch.setitem(files, name, dict(files[name], sha256=sums[base]))


# --------------------------------------------------------------------------
# built-in images


def test_builtin_images_default():
    a = ds.builtin_images()
    assert a.shape == (len(ds.BUILTIN_NAMES), 300, 384)  # cropped to the smallest common shape
    # camera (512x512) is center-cropped to 300x384, values divided by 255
    np.testing.assert_allclose(a[0], skimage.data.camera()[106:406, 64:448] / 255.0, atol=1e-15)
    assert a.std() > 0.05
    np.testing.assert_array_equal(a, ds.builtin_images())


def test_builtin_images_names_and_size():
    b = ds.builtin_images(["camera", "coffee"], size=(32, 48))
    assert b.shape == (2, 32, 48) and b.dtype == np.float64
    np.testing.assert_allclose(b[0], ds.resize(skimage.data.camera() / 255.0, (32, 48)), atol=1e-12)
    np.testing.assert_allclose(b[0], ds.builtin_images(["camera"], size=(32, 48))[0])
    assert 0.0 <= b.min() and b.max() <= 1.0
    with pytest.raises(ValueError, match="eagle"):
        ds.builtin_images(["camera", "eagle"])
    with pytest.raises(TypeError, match=r"names must hold str, got 3"):
        ds.builtin_images(["camera", 3])
    with pytest.raises(ValueError, match="names must not be empty"):
        ds.builtin_images([])
    with pytest.raises(ValueError, match="size"):
        ds.builtin_images(size=0)
    with pytest.raises(TypeError, match="size"):
        ds.builtin_images(size=1.5)


# --------------------------------------------------------------------------
# image files and bit depths


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
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_int32_tiff_with_16bit_values_is_refused(tmp_path):
    """Issue 9: an int32 TIFF of 16-bit values became an all-black image (divided by 2**31 - 1), silently."""
    rng = np.random.default_rng(7)
    data = rng.integers(0, 65536, size=(12, 10)).astype(np.int32)
    tifffile.imwrite(tmp_path / "deep.tif", data)
    with pytest.raises(DataError, match=r"deep\.tif: int32 image with values in \[\d+, \d+\].*bit_depth=16"):
        ds.load_image(tmp_path / "deep.tif")
    with pytest.raises(DataError, match=r"deep\.tif"):
        ds.load_images(tmp_path)
    np.testing.assert_allclose(ds.load_image(tmp_path / "deep.tif", bit_depth=16), data / 65535.0, atol=1e-15)
    np.testing.assert_allclose(ds.load_images(tmp_path, bit_depth=16)[0][0], data / 65535.0, atol=1e-15)
    # data that use the int32 range are scaled by it
    wide = (data.astype(np.int64) << 15).astype(np.int32)
    tifffile.imwrite(tmp_path / "wide.tif", wide)
    np.testing.assert_allclose(ds.load_image(tmp_path / "wide.tif"), wide / (2.0**31 - 1), atol=1e-15)
    small = np.arange(12 * 10, dtype=np.int32).reshape(12, 10)  # 0..119: 8-bit values
    tifffile.imwrite(tmp_path / "small.tif", small)
    with pytest.raises(DataError, match=r"looks like 8-bit data.*bit_depth=8"):
        ds.load_image(tmp_path / "small.tif")


def test_12bit_data_in_16bit_container(tmp_path):
    rng = np.random.default_rng(8)
    data = rng.integers(0, 4096, size=(9, 11)).astype(np.uint16)
    data[0, 0] = 4095
    skimage.io.imsave(tmp_path / "raw12.png", data, check_contrast=False)
    with pytest.raises(DataError, match=r"raw12\.png: uint16 .*\[\d+, 4095\].*12-bit data.*bit_depth=12"):
        ds.load_image(tmp_path / "raw12.png")
    np.testing.assert_allclose(ds.load_image(tmp_path / "raw12.png", bit_depth=12), data / 4095.0, atol=1e-15)
    # a really dark 16-bit image: the container's depth keeps the old scale
    np.testing.assert_allclose(ds.load_image(tmp_path / "raw12.png", bit_depth=16), data / 65535.0, atol=1e-15)
    # just above 4095 the data use the 16-bit range
    data[0, 0] = 4096
    skimage.io.imsave(tmp_path / "raw13.png", data, check_contrast=False)
    np.testing.assert_allclose(ds.load_image(tmp_path / "raw13.png"), data / 65535.0, atol=1e-15)
    with pytest.raises(DataError, match=r"bit_depth=12 allows values up to 4095.*values up to 4096"):
        ds.load_image(tmp_path / "raw13.png", bit_depth=12)
    # all-zero images and 8-bit images are not affected
    skimage.io.imsave(tmp_path / "zero.png", np.zeros((4, 4), np.uint16), check_contrast=False)
    np.testing.assert_array_equal(ds.load_image(tmp_path / "zero.png"), 0.0)
    dark8 = np.full((4, 4), 3, np.uint8)
    skimage.io.imsave(tmp_path / "dark8.png", dark8, check_contrast=False)
    np.testing.assert_allclose(ds.load_image(tmp_path / "dark8.png", bit_depth=12), 3 / 255.0)
    with pytest.raises(ValueError, match="bit_depth must lie in 1..64"):
        ds.load_image(tmp_path / "zero.png", bit_depth=0)
    with pytest.raises(TypeError, match="bit_depth"):
        ds.load_image(tmp_path / "zero.png", bit_depth=12.0)


def test_12bit_data_in_signed_16bit_container(tmp_path):
    data = np.array([[0, 4095], [17, 2000]], dtype=np.int16)
    tifffile.imwrite(tmp_path / "ct.tif", data)
    with pytest.raises(DataError, match=r"ct\.tif: int16 .*top 4 bits of its 16-bit container.*bit_depth=12.*"
                       r"bit_depth=15 to keep"):
        ds.load_image(tmp_path / "ct.tif")
    np.testing.assert_allclose(ds.load_image(tmp_path / "ct.tif", bit_depth=12), data / 4095.0, atol=1e-15)
    np.testing.assert_allclose(ds.load_image(tmp_path / "ct.tif", bit_depth=15), data / 32767.0, atol=1e-15)
    tifffile.imwrite(tmp_path / "full.tif", np.array([[0, 30000]], dtype=np.int16))
    np.testing.assert_allclose(ds.load_image(tmp_path / "full.tif"), [[0.0, 30000 / 32767]], atol=1e-15)


def test_negative_signed_image_refused(tmp_path):
    tifffile.imwrite(tmp_path / "neg.tif", np.array([[-1, 5000], [3, 4]], dtype=np.int16))
    with pytest.raises(DataError, match=r"neg\.tif: signed integer image \(int16\) with negative values"):
        ds.load_image(tmp_path / "neg.tif")


def test_load_image_colour(tmp_path):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, size=(8, 9, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((8, 9, 1), 7, np.uint8)], axis=-1)
    skimage.io.imsave(tmp_path / "rgb.png", rgb, check_contrast=False)
    skimage.io.imsave(tmp_path / "rgba.png", rgba, check_contrast=False)
    gray = ds.load_image(tmp_path / "rgb.png")
    want = (rgb / 255.0) @ np.array([0.2125, 0.7154, 0.0721])
    np.testing.assert_allclose(gray, want, atol=1e-12)
    np.testing.assert_allclose(ds.load_image(tmp_path / "rgba.png"), want, atol=1e-12)  # alpha dropped
    np.testing.assert_allclose(ds.load_image(tmp_path / "rgb.png", as_gray=False), rgb / 255.0)


def test_load_images_sorted_and_filtered(image_folder):
    folder, expected = image_folder
    images, names = ds.load_images(folder)
    assert names == ["a.png", "b.png", "c.tif"]
    assert images.dtype == np.float64
    np.testing.assert_allclose(images, np.stack([expected[n] for n in names]), atol=1e-12)
    _, names2 = ds.load_images(str(folder))
    assert names2 == names


def test_load_images_crop_then_resize(image_folder):
    folder, expected = image_folder
    cropped, _ = ds.load_images(folder, crop=(10, 12))
    np.testing.assert_allclose(cropped[1], expected["b.png"][3:13, 4:16], atol=1e-12)
    both, _ = ds.load_images(folder, crop=10, size=5)
    np.testing.assert_allclose(both, ds.resize(cropped[:, :, 1:11], 5), atol=1e-12)
    with pytest.raises(DataError, match=r"cannot crop 16x20 image to 17x17"):
        ds.load_images(folder, crop=17)


def test_load_images_different_shapes(tmp_path):
    rng = np.random.default_rng(9)
    p = rng.integers(0, 256, size=(10, 10), dtype=np.uint8)
    q = rng.integers(0, 256, size=(12, 10), dtype=np.uint8)
    skimage.io.imsave(tmp_path / "p.png", p, check_contrast=False)
    skimage.io.imsave(tmp_path / "q.png", q, check_contrast=False)
    with pytest.raises(DataError, match=r"different shapes.*p\.png is 10x10.*q\.png is 12x10"):
        ds.load_images(tmp_path)
    images, _ = ds.load_images(tmp_path, size=8)
    np.testing.assert_allclose(images[1], ds.resize(q / 255.0, 8), atol=1e-12)
    images, _ = ds.load_images(tmp_path, crop=(10, 9))
    np.testing.assert_allclose(images[1], q[1:11, 0:9] / 255.0, atol=1e-15)


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


# --------------------------------------------------------------------------
# clean/noisy pairs


def _pair_folders(tmp_path, shape=(9, 11)):
    rng = np.random.default_rng(4)
    clean, noisy = tmp_path / "clean", tmp_path / "noisy"
    clean.mkdir()
    noisy.mkdir()
    a = rng.integers(0, 256, size=shape, dtype=np.uint8)
    b = rng.integers(0, 256, size=shape, dtype=np.uint8)
    an = rng.random(shape)
    bn = rng.integers(0, 256, size=shape, dtype=np.uint8)
    skimage.io.imsave(clean / "a.png", a, check_contrast=False)
    skimage.io.imsave(clean / "b.png", b, check_contrast=False)
    skimage.io.imsave(noisy / "a.tif", an, check_contrast=False)
    skimage.io.imsave(noisy / "b.png", bn, check_contrast=False)
    return clean, noisy, (a / 255.0, b / 255.0), (an, bn / 255.0)


def test_load_pairs_by_stem(tmp_path):
    clean_dir, noisy_dir, clean_want, noisy_want = _pair_folders(tmp_path)
    clean, noisy, names = ds.load_pairs(clean_dir, noisy_dir)
    assert names == ["a", "b"]
    np.testing.assert_allclose(clean, np.stack(clean_want), atol=1e-12)
    np.testing.assert_allclose(noisy, np.stack(noisy_want), atol=1e-12)
    c2, n2, _ = ds.load_pairs(clean_dir, noisy_dir, crop=(5, 7))
    np.testing.assert_allclose(c2, np.stack(clean_want)[:, 2:7, 2:9], atol=1e-12)
    np.testing.assert_allclose(n2, np.stack(noisy_want)[:, 2:7, 2:9], atol=1e-12)


def test_load_pairs_refuses_resizing_noisy_images(tmp_path):
    """Issue 9: size= resized the noisy images too, averaging the noise away (sigma 0.1 looked like 0.02)."""
    rng = np.random.default_rng(10)
    clean_dir, noisy_dir = tmp_path / "clean", tmp_path / "noisy"
    clean_dir.mkdir()
    noisy_dir.mkdir()
    clean = np.full((64, 64), 0.5)
    noisy = clean + 0.1 * rng.standard_normal(clean.shape)
    skimage.io.imsave(clean_dir / "x.tif", clean, check_contrast=False)
    skimage.io.imsave(noisy_dir / "x.tif", noisy, check_contrast=False)
    # why: a 2x down-size removes most of the noise
    assert np.std(ds.resize(noisy, 32) - 0.5) < 0.05
    with pytest.raises(DataError, match=r"size=32x32 would resize the noisy image .*x\.tif \(64x64\).*crop=32 gives"):
        ds.load_pairs(clean_dir, noisy_dir, size=32)
    with pytest.raises(DataError, match=r"size=80x80 would resize .*cropped but not resized"):
        ds.load_pairs(clean_dir, noisy_dir, size=80)
    with pytest.raises(DataError, match=r"size=16x16 would resize the noisy image .*\(32x32\)"):
        ds.load_pairs(clean_dir, noisy_dir, crop=32, size=16)
    # crops keep the noise level; a size equal to the (cropped) shape is no resize
    c, n, _ = ds.load_pairs(clean_dir, noisy_dir, crop=32, size=32)
    np.testing.assert_allclose(n[0], noisy[16:48, 16:48], atol=1e-15)
    assert abs(np.std(n - c) - 0.1) < 0.015


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
    with pytest.raises(DataError, match=r"pair 'b'"):  # a crop does not hide the mismatch
        ds.load_pairs(clean_dir, noisy_dir, crop=5)


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
    np.testing.assert_array_equal(ds.center_crop(stack, 3), stack[:, 1:4, 2:5])
    np.testing.assert_array_equal(ds.center_crop(img, (3, 5)), img[1:4, 1:6])  # odd margins: extra row at bottom
    with pytest.raises(ValueError, match="larger than the images"):
        ds.center_crop(img, 7)
    const = np.full((2, 20, 30), 0.25)
    out = ds.resize(const, (5, 6))
    assert out.shape == (2, 5, 6) and out.dtype == np.float64
    np.testing.assert_allclose(out, 0.25)
    assert ds.resize(img.astype(np.float32), 4).dtype == np.float32
    # a linear ramp stays a linear ramp under bilinear up-sizing (no blur when growing)
    ramp = np.tile(np.linspace(0.0, 1.0, 5), (5, 1))
    up = ds.resize(ramp, (5, 9))
    np.testing.assert_allclose(np.diff(up[:, 1:-1], axis=1), 0.25 * 5 / 9, atol=1e-12)  # pixel-centre alignment
    rng = np.random.default_rng(5)
    stack = rng.random((3, 28, 28))
    np.testing.assert_allclose(ds.resize(stack, 12)[1], ds.resize(stack[1], 12), atol=1e-14)
    with pytest.raises(ValueError, match="images must be 2-D"):
        ds.resize(np.zeros((2, 2, 2, 2)), 1)


def test_add_noise_statistics():
    clean = np.full((4, 256, 256), 0.5)
    noisy = ds.add_noise(clean, 0.1, rng=0)
    noise = noisy - clean
    assert noisy.dtype == np.float64
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
# the data registry and data/


def test_registry_is_read_by_the_loaders(tmp_path, monkeypatch):
    reg = ds.registry()
    assert reg["format"] == "varlearn-data-registry" and reg["version"] == 1
    kodak = reg["datasets"]["kodak"]
    assert sorted(kodak["files"]) == [f"kodim{i:02d}.png" for i in range(1, 25)]
    assert kodak["files"]["kodim07.png"]["url"] == "http://r0k.us/graphics/kodak/kodak/kodim07.png"
    assert reg["datasets"]["mnist"]["checksum"] == "decompressed"
    assert ds.MNIST_SHA256["t10k-labels-idx1-ubyte"].startswith("ff7bcfd4")
    # a registry entry changed at run time is what the loader checks against
    images, labels, sums = _write_fake_mnist(tmp_path / "mnist", n=3)
    with pytest.raises(DataError, match="SHA-256 mismatch"):
        ds.mnist(root=tmp_path, split="test")
    _set_checksums(monkeypatch, "mnist", sums)
    x, _ = ds.mnist(root=tmp_path, split="test")
    np.testing.assert_allclose(x, images / 255.0)


def test_public_names_of_the_former_module_remain():
    former = {
        "DataError", "DownloadError", "BUILTIN_NAMES", "IMAGE_EXTENSIONS", "KODAK_BASE_URL", "KODAK_FILES",
        "KODAK_SHA256", "MNIST_MIRRORS", "MNIST_SHA256", "FASHION_MNIST_MIRRORS", "FASHION_MNIST_SHA256",
        "FASHION_MNIST_SYSTEM_DIRS", "DATA_ENV", "CACHE_ENV", "builtin_images", "load_image", "load_images",
        "load_pairs", "add_noise", "center_crop", "resize", "read_idx", "get_cache_dir", "kodak", "mnist",
        "fashion_mnist",
    }
    assert former <= set(ds.__all__)
    assert all(hasattr(ds, name) for name in ds.__all__)
    assert issubclass(DataError, ValueError) and issubclass(DownloadError, OSError)
    assert ds.KODAK_BASE_URL == "http://r0k.us/graphics/kodak/kodak/"
    assert ds.MNIST_MIRRORS == ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
    assert ds.FASHION_MNIST_SYSTEM_DIRS == ("/usr/share/datasets/fashion-mnist",)


def test_registry_validation():
    good = json.loads(ds.REGISTRY_FILE.read_text())
    from varlearn.datasets._registry import validate

    assert validate(good) is good
    bad = json.loads(ds.REGISTRY_FILE.read_text())
    bad["datasets"]["kodak"]["files"]["kodim01.png"]["sha256"] = "abc"
    with pytest.raises(DataError, match=r"'kodak' file 'kodim01\.png': sha256 must be 64"):
        validate(bad)
    bad = json.loads(ds.REGISTRY_FILE.read_text())
    bad["datasets"]["mnist"]["mirrors"] = ["ftp://example.invalid/"]
    with pytest.raises(DataError, match=r"'mnist' mirrors: expected an http\(s\) URL"):
        validate(bad)
    del bad["datasets"]["mnist"]["license"]
    with pytest.raises(DataError, match="'mnist' lacks license"):
        validate(bad)


def test_data_folder_documents_the_registry():
    readme = REPO / "data" / "README.md"
    if not readme.is_file():
        pytest.skip("not a source checkout (data/ is not installed)")
    link = REPO / "data" / "registry.json"
    assert link.resolve() == ds.REGISTRY_FILE.resolve()
    text = readme.read_text()
    for name, info in ds.registry()["datasets"].items():
        assert f"`{name}`" in text, name
        assert info["license"].split(" (")[0] in text, name
        assert info["homepage"] in text, name
    for var in ("VARLEARN_DATA", "VARLEARN_CACHE", "VARLEARN_SHARED_DATA", "--data-dir"):
        assert var in text


def test_registry_matches_shared_checksum_files(shared_kodak, shared_mnist):
    def sums(path):
        return {n: h for h, n in (line.split() for line in path.read_text().splitlines() if line.strip())}

    assert sums(shared_kodak / "SHA256SUMS") == ds.KODAK_SHA256
    assert sums(shared_mnist / "SHA256SUMS.raw") == ds.MNIST_SHA256


def test_shared_data_dir_order(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    (first / "mnist").mkdir(parents=True)
    (second / "kodak").mkdir(parents=True)
    monkeypatch.setenv("VARLEARN_SHARED_DATA", str(first))
    monkeypatch.setenv("VARLEARN_DATA", str(second))
    assert ds.shared_data_dir() == first
    assert ds.shared_data_dir("mnist") == first / "mnist"
    assert ds.shared_data_dir("kodak") == second / "kodak"
    monkeypatch.chdir(tmp_path)
    assert ds.shared_data_dir("no-such-set") is None


# --------------------------------------------------------------------------
# MNIST-like loaders on small synthetic files


def test_mnist_synthetic_root(tmp_path, monkeypatch):
    images, labels, sums = _write_fake_mnist(tmp_path / "mnist", n=7)
    _set_checksums(monkeypatch, "mnist", sums)
    x, y = ds.mnist(root=tmp_path, split="test")
    assert x.dtype == np.float64 and y.dtype == np.int64
    np.testing.assert_allclose(x, images / 255.0)
    np.testing.assert_array_equal(y, labels)
    x12, _ = ds.mnist(root=tmp_path / "mnist", split="test", size=12)
    np.testing.assert_allclose(x12, ds.resize(images / 255.0, 12), atol=1e-12)
    with pytest.raises(ValueError, match="split"):
        ds.mnist(root=tmp_path, split="valid")


def test_mnist_indices(tmp_path, monkeypatch):
    images, labels, sums = _write_fake_mnist(tmp_path / "mnist", n=6)
    _set_checksums(monkeypatch, "mnist", sums)
    x, y = ds.mnist(root=tmp_path, split="test", indices=[4, 1, 4], size=14)
    np.testing.assert_allclose(x, ds.resize(images[[1, 4]] / 255.0, 14), atol=1e-12)
    np.testing.assert_array_equal(y, labels[[1, 4]])
    x3, y3 = ds.mnist(root=tmp_path, split="test", indices=3)
    np.testing.assert_allclose(x3, images[3:4] / 255.0)
    assert y3.tolist() == [labels[3]]
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 6\), got 6"):
        ds.mnist(root=tmp_path, split="test", indices=[0, 6])
    with pytest.raises(TypeError, match="indices must hold ints"):
        ds.mnist(root=tmp_path, split="test", indices=[0.5])


def test_mnist_checksum_mismatch(tmp_path):
    _write_fake_mnist(tmp_path, n=3)  # real MNIST checksums do not match these
    with pytest.raises(DataError, match=r"SHA-256 mismatch for .*t10k-images-idx3-ubyte: expected 0fa7898d"):
        ds.mnist(root=tmp_path, split="test")


def test_mnist_structure_errors(tmp_path, monkeypatch):
    _set_checksums(monkeypatch, "fashion-mnist", None)
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
    _set_checksums(monkeypatch, "fashion-mnist", None)  # structure-only check for synthetic files
    entry = ds.registry()["datasets"]["fashion-mnist"]
    system = tmp_path / "system"
    images, labels, _ = _write_fake_mnist(system, n=3, split="train", seed=1)
    monkeypatch.setitem(entry, "system_dirs", [str(system)])
    x, y = ds.fashion_mnist(split="train", download=False)
    np.testing.assert_allclose(x, images / 255.0)
    np.testing.assert_array_equal(y, labels)
    # VARLEARN_DATA/fashion-mnist when the system folder lacks the files
    monkeypatch.setitem(entry, "system_dirs", [str(tmp_path / "nothing")])
    images2, _, _ = _write_fake_mnist(tmp_path / "data" / "fashion-mnist", n=2, split="train", seed=2)
    monkeypatch.setenv("VARLEARN_DATA", str(tmp_path / "data"))
    x2, _ = ds.fashion_mnist(split="train", download=False)
    np.testing.assert_allclose(x2, images2 / 255.0)
    monkeypatch.delenv("VARLEARN_DATA")
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte\[\.gz\] not found.*download=True"):
        ds.fashion_mnist(split="train", download=False)
    with pytest.raises(FileNotFoundError, match="root"):
        ds.fashion_mnist(root=tmp_path / "missing-root")


def test_fashion_mnist_download_structure_only(tmp_path, monkeypatch, serve, capfd):
    _set_checksums(monkeypatch, "fashion-mnist", None)
    served = tmp_path / "served"
    images, labels, _ = _write_fake_mnist(served, n=4, gz_images=True, gz_labels=True)
    url, requests = serve(served)
    x, y = ds.fashion_mnist(split="test", cache_dir=tmp_path / "cache", base_url=url)
    assert capfd.readouterr().err == ""  # the library does not write to stderr (pooch's logger is kept quiet)
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


def test_download_is_retried(tmp_path, monkeypatch, serve):
    """pooch retries a failed attempt (here an HTTP 503) before giving up on a location."""
    monkeypatch.setattr(ds, "DOWNLOAD_RETRIES", 1)
    waits = []
    monkeypatch.setattr("pooch.core.time.sleep", waits.append)
    images, labels, sums = _write_fake_mnist(tmp_path / "served", n=2, gz_images=True)
    _set_checksums(monkeypatch, "mnist", sums)
    url, requests = serve(tmp_path / "served", fail_first=1)
    x, y = ds.mnist(split="test", cache_dir=tmp_path / "cache", base_url=url)
    np.testing.assert_allclose(x, images / 255.0)
    np.testing.assert_array_equal(y, labels)
    assert requests == ["/t10k-images-idx3-ubyte.gz"] * 2 + ["/t10k-labels-idx1-ubyte.gz"]
    assert waits == [1]  # pooch waited once before its second attempt
    # with no retries left, the same failure ends the download
    monkeypatch.setattr(ds, "DOWNLOAD_RETRIES", 0)
    url2, _ = serve(tmp_path / "served", fail_first=1)
    with pytest.raises(DownloadError, match=r"t10k-images-idx3-ubyte\.gz.*503"):
        ds.mnist(split="test", cache_dir=tmp_path / "cache2", base_url=url2)


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
    with pytest.raises(TypeError, match="base_url must hold str"):
        ds.kodak(indices=[2], cache_dir=cache, base_url=[closed_port_url, 7])


# --------------------------------------------------------------------------
# Kodak and MNIST from the shared data (local folder and loopback downloads)


def test_kodak_local_root(shared_kodak):
    sub, sub_names = ds.kodak(root=shared_kodak.parent, indices=[5, 0, 5], size=32)
    assert sub_names == ["kodim01.png", "kodim06.png"]
    np.testing.assert_allclose(sub[1], ds.resize(ds.load_image(shared_kodak / "kodim06.png"), 32), atol=1e-12)
    native, _ = ds.kodak(root=shared_kodak, indices=[0], size=None)
    np.testing.assert_array_equal(native[0], ds.load_image(shared_kodak / "kodim01.png"))
    colour, _ = ds.kodak(root=shared_kodak, indices=[0], gray=False, size=16)
    rgb = ds.load_image(shared_kodak / "kodim01.png", as_gray=False)
    np.testing.assert_allclose(colour[0], resize_hw(rgb, (16, 16)), atol=1e-12)
    with pytest.raises(DataError, match="differ in shape"):
        ds.kodak(root=shared_kodak, indices=[0, 3], size=None)  # kodim04 is portrait
    with pytest.raises(ValueError, match="indices"):
        ds.kodak(root=shared_kodak, indices=[24])


@pytest.mark.slow
def test_kodak_all_images(shared_kodak):
    images, names = ds.kodak(root=shared_kodak.parent)
    assert images.shape == (24, 96, 96) and names == list(ds.KODAK_FILES)
    np.testing.assert_allclose(images[23], ds.resize(ds.load_image(shared_kodak / "kodim24.png"), 96), atol=1e-12)


def test_kodak_from_env(shared_kodak, monkeypatch):
    monkeypatch.setenv("VARLEARN_DATA", str(shared_kodak.parent))
    images, names = ds.kodak(indices=[1], download=False)
    assert names == ["kodim02.png"]
    np.testing.assert_allclose(images[0], ds.resize(ds.load_image(shared_kodak / "kodim02.png"), 96), atol=1e-12)


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
    want = rf"kodim01\.png downloaded from .*{ds.KODAK_SHA256['kodim01.png']}.*{_sha(bytes(data))}"
    with pytest.raises(DataError, match=want):
        ds.kodak(indices=[0], cache_dir=cache, base_url=url)
    assert requests == ["/kodim01.png"]
    assert _files_under(cache) == []


def test_mnist_download_and_cache(tmp_path, serve, closed_port_url, monkeypatch):
    images, labels, sums = _write_fake_mnist(tmp_path / "served", n=30, gz_images=True, seed=3)
    _set_checksums(monkeypatch, "mnist", sums)
    url, requests = serve(tmp_path / "served")
    cache = tmp_path / "cache"
    # the registry's own location is down, its mirror serves the files
    entry = ds.registry()["datasets"]["mnist"]
    files = {name: dict(e, url=closed_port_url + name) for name, e in entry["files"].items()}
    monkeypatch.setitem(entry, "files", files)
    monkeypatch.setitem(entry, "mirrors", [url + "/"])
    x_test, y_test = ds.mnist(split="test", cache_dir=cache)
    assert requests == ["/t10k-images-idx3-ubyte.gz", "/t10k-labels-idx1-ubyte.gz"]
    np.testing.assert_allclose(x_test, images / 255.0)
    np.testing.assert_array_equal(y_test, labels)
    assert _files_under(cache) == ["mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz"]
    x12, y12 = ds.mnist(split="test", size=12, indices=range(0, 30, 10), cache_dir=cache)
    assert len(requests) == 2  # from the cache
    np.testing.assert_allclose(x12, ds.resize(x_test[::10], 12), atol=1e-12)
    np.testing.assert_array_equal(y12, y_test[::10])


def test_mnist_download_corrupt_is_rejected(shared_mnist, tmp_path, serve):
    served = tmp_path / "served"
    served.mkdir()
    raw = bytearray(gzip.decompress((shared_mnist / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # still a valid IDX file, wrong content
    (served / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    (served / "t10k-images-idx3-ubyte.gz").write_bytes((shared_mnist / "t10k-images-idx3-ubyte.gz").read_bytes())
    url, _ = serve(served)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz downloaded from .*expected ff7bcfd4"):
        ds.mnist(split="test", cache_dir=cache, base_url=url)
    assert _files_under(cache) == ["mnist/t10k-images-idx3-ubyte.gz"]  # the good file was kept


@pytest.mark.slow
def test_mnist_local_root_train(shared_mnist):
    x, y = ds.mnist(root=shared_mnist.parent, split="train", size=12)
    assert x.shape == (60000, 12, 12)
    np.testing.assert_allclose(x[:5], ds.resize(ds.read_idx(shared_mnist / "train-images-idx3-ubyte.gz")[:5] / 255, 12))
    assert np.bincount(y).min() > 5000  # every digit is well represented


@pytest.mark.gpu
def test_noise_and_crop_on_cupy():
    from varlearn.backend import cupy_unusable_reason, cupy_usable, to_device

    if not cupy_usable():
        pytest.skip(f"CuPy backend not usable: {cupy_unusable_reason()}")
    host = np.random.default_rng(12).random((2, 10, 12)).astype(np.float32)
    dev = to_device(host, "cupy")
    noisy = ds.add_noise(dev, 0.1, rng=5)
    assert type(noisy).__module__.startswith("cupy") and noisy.dtype == np.float32
    np.testing.assert_array_equal(noisy.get(), ds.add_noise(host, 0.1, rng=5))  # same draws on both backends
    np.testing.assert_array_equal(ds.center_crop(dev, (4, 6)).get(), host[:, 3:7, 3:9])
    with pytest.raises(TypeError, match="resize works on NumPy arrays"):
        ds.resize(dev, 4)
