"""MNIST and Fashion-MNIST from their IDX files, local or downloaded.

The registry stores the SHA-256 of the *decompressed* IDX files (``"checksum":
"decompressed"``): the ``.gz`` files of different mirrors differ in their gzip
headers, the content does not.  Every file read, plain or compressed, found on
disk or just downloaded, is checked against it; a download is checked on
pooch's temporary file, before it is moved into the cache.
"""
from __future__ import annotations

import numpy as np

from . import _download, _registry
from ._common import DataError, check_digest, parse_indices, parse_size, read_bytes
from .idx import maybe_gunzip, parse_idx
from .transforms import resize_stack

__all__ = ["mnist", "fashion_mnist"]

_SPLITS = {"train": "train", "test": "t10k"}


def _load_idx_checked(path, expected, what):
    raw = maybe_gunzip(read_bytes(path), what)
    if expected is not None:
        check_digest(raw, expected, what)
    return parse_idx(raw, what)


def _check_arrays(images, labels, what):
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{what}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(f"{what}: expected uint8 labels of shape (N,), got {labels.dtype} {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{what}: {images.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and int(labels.max()) > 9:
        raise DataError(f"{what}: label {int(labels.max())} outside 0..9")


def _idx_file(what, info, base, dims, expected, dirs, cache, root, download, base_url):
    """The path of IDX file ``base`` (plain or ``.gz``), downloading ``base.gz`` if allowed."""
    path = _download.find(dirs, [base, base + ".gz"])
    if path is not None:
        return path
    if root is not None or not download:
        raise _download.missing_error(what, [base + "[.gz]"], dirs, root is not None)

    def verify(tmp, url):
        label = f"{base}.gz downloaded from {url}"
        arr = _load_idx_checked(tmp, expected, label)
        if arr.ndim != dims or arr.dtype != np.uint8:
            raise DataError(f"{label}: expected {dims}-D uint8 data, got {arr.dtype} {arr.shape}")

    urls = _download.download_urls(info, base + ".gz", base_url)
    return _download.fetch(base + ".gz", cache, urls, None, verify, what)


def _idx_dataset(key, what, root, split, size, indices, cache_dir, download, base_url):
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    size_hw = parse_size(size, "size")
    info = _registry.dataset(key)
    sums = _registry.checksums(key)
    dirs, cache = _download.search_dirs(info, root, cache_dir)
    arrays = {}
    for kind, dims in (("images", 3), ("labels", 1)):
        base = f"{_SPLITS[split]}-{kind}-idx{dims}-ubyte"
        path = _idx_file(what, info, base, dims, sums.get(base), dirs, cache, root, download, base_url)
        arrays[kind] = _load_idx_checked(path, sums.get(base), str(path))
    images, labels = arrays["images"], arrays["labels"]
    _check_arrays(images, labels, f"{what} {split} split")
    if indices is not None:
        keep = parse_indices(indices, images.shape[0])
        images, labels = images[keep], labels[keep]
    out = images.astype(np.float64)
    out /= 255.0
    if size_hw is not None:
        out = resize_stack(out, size_hw)
    return out, labels.astype(np.int64)


def mnist(root=None, split="train", size=None, indices=None, cache_dir=None, download=True, base_url=None):
    """MNIST handwritten digits from the original IDX files.

    Parameters
    ----------
    root : str or os.PathLike, optional
        Folder holding ``train-images-idx3-ubyte[.gz]``,
        ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]`` and
        ``t10k-labels-idx1-ubyte[.gz]`` (or a ``mnist/`` subfolder with them),
        plain or gzip-compressed (recognised by content).  When given, only
        this folder is used; otherwise ``$VARLEARN_DATA/mnist``,
        ``$VARLEARN_DATA``, the cache folder and a download are tried.
    split : {"train", "test"}
        60000 training or 10000 test digits.
    size : int or (int, int), optional
        Resize each digit (e.g. 12 gives 12x12, as in the MAID paper).
    indices : int or sequence of int, optional
        0-based positions within the split to keep (sorted, duplicates
        dropped), selected before conversion and resizing; default all.
    cache_dir : str or os.PathLike, optional
        Cache folder (default :func:`get_cache_dir`); files go to its ``mnist/``.
    download : bool, optional
        Download missing ``.gz`` files into the cache (not when ``root`` is given).
    base_url : str or sequence of str, optional
        Download location(s) instead of the registry's URLs and mirrors.

    Returns
    -------
    images : numpy.ndarray, shape (N, 28, 28) or (N, h, w)
        float64 in [0, 1].
    labels : numpy.ndarray, shape (N,)
        int64 in 0..9.

    Raises
    ------
    DataError
        If the SHA-256 of the decompressed data differs from the registry's,
        or a file is not valid IDX (truncated, bad magic, ...).
    FileNotFoundError, DownloadError
        As for :func:`kodak`.
    ValueError
        For a bad ``split`` or an index outside the split.
    """
    return _idx_dataset("mnist", "MNIST", root, split, size, indices, cache_dir, download, base_url)


def fashion_mnist(root=None, split="train", size=None, indices=None, cache_dir=None, download=True, base_url=None):
    """Fashion-MNIST (Zalando), the same format and interface as :func:`mnist`.

    Without ``root``, the registry's ``system_dirs`` (Debian's
    ``dataset-fashion-mnist`` package installs the files in
    ``/usr/share/datasets/fashion-mnist/``) are searched before
    ``$VARLEARN_DATA/fashion-mnist``, ``$VARLEARN_DATA`` and the cache's
    ``fashion-mnist/``; missing files are downloaded from the registry's URL
    (or ``base_url``).

    The decompressed data are checked against the registry.  Upstream
    publishes only MD5 sums of its ``.gz`` files; the SHA-256 values were
    computed from the decompressed files of Debian's package
    0.0~git20200523.55506a9-1 (whose ``.gz`` files differ from upstream's only
    in the gzip header).  A file without a registry entry would be checked for
    IDX structure only.

    Parameters, return values and errors are those of :func:`mnist`.
    """
    return _idx_dataset("fashion-mnist", "Fashion-MNIST", root, split, size, indices, cache_dir, download, base_url)
