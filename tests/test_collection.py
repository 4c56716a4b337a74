"""ImageCollection: folders, zarr, Dask and NumPy arrays give the same images and the same noise."""
import pickle
import sys

import numpy as np
import pytest

from varlearn.datasets import DataError, ImageCollection, image_noise


def _write_pngs(folder, images, names):
    import imageio.v3 as iio

    folder.mkdir(parents=True, exist_ok=True)
    for img, name in zip(images, names):
        iio.imwrite(folder / f"{name}.png", img)


@pytest.fixture
def pixels():
    # uint8 images: PNG stores them losslessly, so every kind of collection sees the same values
    return np.random.default_rng(7).integers(0, 256, size=(7, 32, 32), dtype=np.uint8)


@pytest.fixture
def folder(tmp_path, pixels):
    # names sort differently from their creation order: the collection is sorted by name
    names = [f"img{k:02d}" for k in (3, 0, 6, 1, 5, 2, 4)]
    order = np.argsort(names)
    _write_pngs(tmp_path / "clean", pixels[np.argsort(order)], names)
    return tmp_path / "clean"


def _collections(folder, pixels, tmp_path):
    out = {"folder": ImageCollection.from_folder(folder), "array": ImageCollection.from_array(pixels)}
    try:
        import dask.array as da
    except ImportError:
        pass
    else:
        out["dask"] = ImageCollection.from_dask(da.from_array(pixels, chunks=(3, 32, 32)))
    try:
        import zarr
    except ImportError:
        pass
    else:
        z = zarr.open(str(tmp_path / "data.zarr"), mode="w", shape=pixels.shape, chunks=(2, 32, 32),
                      dtype="uint8")
        z[:] = pixels
        out["zarr"] = ImageCollection.from_zarr(tmp_path / "data.zarr")
    return out


def test_every_kind_gives_the_same_batches_and_noise(folder, pixels, tmp_path):
    colls = _collections(folder, pixels, tmp_path)
    expected = pixels.astype(np.float64) / 255.0
    batch = [5, 1, 3, 1]  # order and repeats are kept
    for kind, coll in colls.items():
        assert len(coll) == 7 and coll.image_shape == (32, 32) and coll.dtype == np.float64, kind
        np.testing.assert_array_equal(coll.read(batch), expected[batch], err_msg=kind)
        clean, noisy = coll.read_pairs(batch, sigma=0.1, seed=11)
        np.testing.assert_array_equal(clean, expected[batch], err_msg=kind)
        np.testing.assert_array_equal(noisy, clean + image_noise(batch, (32, 32), 0.1, 11), err_msg=kind)
        # the noise of an image does not depend on the batch it is read in
        _, alone = coll.read_pairs([3], sigma=0.1, seed=11)
        np.testing.assert_array_equal(alone[0], noisy[2], err_msg=kind)
        # what a task receives reads the same images
        sub = pickle.loads(pickle.dumps(coll.for_task(batch)))
        np.testing.assert_array_equal(sub.read_pairs(batch, sigma=0.1, seed=11)[1], noisy, err_msg=kind)
    assert {"folder", "array"} <= set(colls)


def test_noise_is_counter_based():
    idx = [4, 0, 9]
    got = image_noise(idx, (5, 6), 0.2, seed=3)
    for k, i in enumerate(idx):
        gen = np.random.Generator(np.random.PCG64(np.random.SeedSequence([3, i])))
        np.testing.assert_array_equal(got[k], 0.2 * gen.standard_normal((5, 6)))
    e1 = image_noise(idx, (5, 6), 0.2, seed=3, epoch=1)
    e2 = image_noise(idx, (5, 6), 0.2, seed=3, epoch=2)
    assert not np.array_equal(e1, e2) and not np.array_equal(e1, got)
    gen = np.random.Generator(np.random.PCG64(np.random.SeedSequence([3, 9, 2])))
    np.testing.assert_array_equal(e2[2], 0.2 * gen.standard_normal((5, 6)))
    assert image_noise(idx, (5, 6), 0.2, seed=3, dtype=np.float32).dtype == np.float32
    with pytest.raises(ValueError, match="sigma"):
        image_noise(idx, (5, 6), -1.0, seed=3)
    with pytest.raises(ValueError, match="seed"):
        image_noise(idx, (5, 6), 0.1, seed=-2)


def test_folder_pairs_crop_and_errors(tmp_path, pixels):
    names = [f"p{k}" for k in range(4)]
    noisy_px = pixels[:4][:, ::-1].copy()
    _write_pngs(tmp_path / "c", pixels[:4], names)
    _write_pngs(tmp_path / "n", noisy_px, names)
    coll = ImageCollection.from_folder(tmp_path / "c", tmp_path / "n", crop=20)
    assert coll.has_noisy and coll.image_shape == (20, 20)
    clean, noisy = coll.read_pairs([2, 0])
    np.testing.assert_array_equal(clean, pixels[[2, 0], 6:26, 6:26] / 255.0)
    np.testing.assert_array_equal(noisy, noisy_px[[2, 0], 6:26, 6:26] / 255.0)
    with pytest.raises(ValueError, match="sigma must be None"):
        coll.read_pairs([0], sigma=0.1)
    with pytest.raises(DataError, match="resize"):
        ImageCollection.from_folder(tmp_path / "c", tmp_path / "n", size=16)
    _write_pngs(tmp_path / "n", noisy_px[:1], ["extra"])
    with pytest.raises(DataError, match="extra"):
        ImageCollection.from_folder(tmp_path / "c", tmp_path / "n")
    clean_only = ImageCollection.from_folder(tmp_path / "c", size=16)
    assert clean_only.read([1]).shape == (1, 16, 16)
    with pytest.raises(ValueError, match="sigma is required"):
        clean_only.read_pairs([0])
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 4\), got 4"):
        clean_only.read([0, 4])
    with pytest.raises(ValueError, match="indices"):
        clean_only.read([])
    _write_pngs(tmp_path / "c", np.zeros((1, 8, 8), np.uint8), ["p9"])
    odd = ImageCollection.from_folder(tmp_path / "c")
    with pytest.raises(DataError, match="p9.png"):
        odd.read([4])


def test_fingerprint_tracks_the_data(folder, pixels):
    coll = ImageCollection.from_folder(folder)
    fp = coll.fingerprint()
    assert fp == ImageCollection.from_folder(folder).fingerprint() and len(fp) == 64
    assert ImageCollection.from_folder(folder, crop=30).fingerprint() != fp
    last = sorted(folder.iterdir())[-1]  # the first file is read to fix the shape
    # same name and byte size, other content: only verify="content" sees it
    raw = bytearray(last.read_bytes())
    content = coll.fingerprint(verify="content")
    raw[-20] ^= 0xFF
    last.write_bytes(bytes(raw))
    assert ImageCollection.from_folder(folder).fingerprint() == fp
    assert ImageCollection.from_folder(folder).fingerprint(verify="content") != content
    # same names, another byte size (an all-black PNG compresses to fewer bytes)
    size_before = last.stat().st_size
    _write_pngs(folder, np.zeros((1, 32, 32), np.uint8), [last.stem])
    fp2 = ImageCollection.from_folder(folder).fingerprint()
    assert last.stat().st_size != size_before and fp2 != fp
    (folder / "zz.png").write_bytes(last.read_bytes())  # one more file
    assert ImageCollection.from_folder(folder).fingerprint() != fp2
    a = ImageCollection.from_array(pixels)
    b = pixels.copy()
    b[3, 4, 5] ^= 1
    assert a.fingerprint() != ImageCollection.from_array(b).fingerprint()
    with pytest.raises(ValueError, match="verify"):
        a.fingerprint(verify="bytes")


def test_references_not_pixels(tmp_path):
    big = np.random.default_rng(0).integers(0, 256, size=(12, 64, 64), dtype=np.uint8)
    _write_pngs(tmp_path / "f", big, [f"a{k:02d}" for k in range(12)])
    coll = ImageCollection.from_folder(tmp_path / "f")
    assert len(pickle.dumps(coll)) < 4000  # the 12 x 64 x 64 pixels are 49152 bytes
    # what a task receives names only its own files
    assert len(pickle.dumps(coll.for_task([3]))) < len(pickle.dumps(coll)) / 2
    np.testing.assert_array_equal(coll.for_task([3]).read([3]), big[[3]] / 255.0)
    arr = ImageCollection.from_array(big.astype(np.float64))
    one = len(pickle.dumps(arr.for_task([3])))
    two = len(pickle.dumps(arr.for_task([3, 7, 3])))
    assert 64 * 64 * 8 < one < 2 * 64 * 64 * 8 < two < 3 * 64 * 64 * 8  # only the rows a task needs


def test_bad_arguments():
    with pytest.raises(TypeError, match="array"):
        ImageCollection.from_array(np.zeros((2, 4, 4), dtype=np.int16))
    with pytest.raises(ValueError, match="shape"):
        ImageCollection.from_array(np.zeros((2, 4, 4, 3)))
    with pytest.raises(ValueError, match="noisy"):
        ImageCollection.from_array(np.zeros((2, 4, 4)), noisy=np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="dtype"):
        ImageCollection.from_array(np.zeros((2, 4, 4)), dtype=np.int32)
    with pytest.raises(DataError, match="NaN"):
        ImageCollection.from_array(np.full((2, 4, 4), np.nan)).read([0])


def test_zarr_is_optional(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "zarr", None)
    with pytest.raises(ImportError, match=r"varlearn\[zarr\]"):
        ImageCollection.from_zarr(tmp_path / "x.zarr")


def test_zarr_group_with_noisy_images(tmp_path):
    zarr = pytest.importorskip("zarr")
    rng = np.random.default_rng(2)
    clean, noisy = rng.random((2, 5, 8, 8))
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("clean", shape=clean.shape, dtype="float64", chunks=(2, 8, 8))[:] = clean
    group.create_array("noisy", shape=noisy.shape, dtype="float64", chunks=(2, 8, 8))[:] = noisy
    coll = ImageCollection.from_zarr(tmp_path / "g.zarr", component="clean", noisy_component="noisy")
    assert coll.has_noisy and len(coll) == 5
    got_clean, got_noisy = pickle.loads(pickle.dumps(coll)).read_pairs([4, 0, 4])
    np.testing.assert_array_equal(got_clean, clean[[4, 0, 4]])
    np.testing.assert_array_equal(got_noisy, noisy[[4, 0, 4]])
    assert len(pickle.dumps(coll)) < 2000  # a reference to the store, not its pixels
