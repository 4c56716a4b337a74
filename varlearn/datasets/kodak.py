"""The Kodak Lossless True Color Image Suite (24 images), local or downloaded."""
from __future__ import annotations

import numpy as np

from . import _download, _registry
from ._common import DataError, check_digest, parse_indices, parse_size, read_bytes
from .images import load_image
from .transforms import resize_hw

__all__ = ["kodak"]


def kodak(root=None, size=96, gray=True, indices=None, cache_dir=None, download=True, base_url=None):
    """The Kodak Lossless True Color Image Suite (24 images).

    File names, checksums and the download location come from the data
    registry (:func:`varlearn.datasets.registry`, entry ``"kodak"``).

    Parameters
    ----------
    root : str or os.PathLike, optional
        Folder holding ``kodim01.png`` ... ``kodim24.png`` (or a ``kodak/``
        subfolder with them).  When given, only this folder is used.  Otherwise
        ``$VARLEARN_DATA/kodak``, ``$VARLEARN_DATA``, the cache folder, and
        finally a download are tried (see :mod:`varlearn.datasets`).
    size : int, (int, int) or None, optional
        Resize every image to ``(size, size)`` (default 96, as in the MAID
        paper's TV experiment; the 3:2 aspect ratio is *not* preserved, the
        images are squashed).  ``None`` keeps the native 768x512 / 512x768,
        which then requires ``indices`` of one orientation.
    gray : bool, optional
        Grayscale via :func:`skimage.color.rgb2gray`; if false, ``(N, H, W, 3)``.
    indices : int or sequence of int, optional
        0-based positions in the sorted list ``kodim01``...``kodim24`` to load.
        Duplicates are dropped; the result is always sorted by name.
    cache_dir : str or os.PathLike, optional
        Cache folder (default :func:`get_cache_dir`); files go to its ``kodak/``.
    download : bool, optional
        Download missing files into the cache (not when ``root`` is given).
    base_url : str or sequence of str, optional
        Download location(s) (``kodimNN.png`` is appended) instead of the
        registry's URLs.

    Returns
    -------
    images : numpy.ndarray, shape (N, H, W)
        float64 in [0, 1].
    names : list of str
        File names, sorted.

    Raises
    ------
    DataError
        If a file's SHA-256 differs from the registry's (the message names the
        file and both hashes; a bad download is deleted), or if ``size`` is
        ``None`` and the chosen images differ in shape.
    FileNotFoundError
        If files are missing and cannot be downloaded (``root`` given, or
        ``download=False``).
    DownloadError
        If a download fails (e.g. offline).
    """
    info = _registry.dataset("kodak")
    sums = _registry.checksums("kodak")
    files = sorted(sums)
    idx = parse_indices(indices, len(files))
    size_hw = parse_size(size, "size")
    names = [files[i] for i in idx]
    dirs, cache = _download.search_dirs(info, root, cache_dir)
    paths = {name: _download.find(dirs, [name]) for name in names}
    missing = [name for name, p in paths.items() if p is None]
    if missing:
        if root is not None or not download:
            raise _download.missing_error("Kodak", missing, dirs, root is not None)
        for name in missing:
            urls = _download.download_urls(info, name, base_url)
            paths[name] = _download.fetch(name, cache, urls, "sha256:" + sums[name], None, "Kodak")
    images = []
    for name in names:
        path = paths[name]
        check_digest(read_bytes(path), sums[name], str(path))
        img = load_image(path, as_gray=gray)
        if size_hw is not None:
            img = resize_hw(img, size_hw)
        images.append(img)
    if size_hw is None and len({img.shape for img in images}) > 1:
        raise DataError(
            "size=None keeps the native Kodak resolution, but the chosen images differ in shape "
            "(landscape 512x768 and portrait 768x512); pass size=... or indices= of one orientation"
        )
    return np.stack(images).astype(np.float64, copy=False), names
