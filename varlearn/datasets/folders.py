"""Folders of images, and clean/noisy pairs from two folders."""
from __future__ import annotations

import logging

import numpy as np

from ._common import DataError, as_dir, hw_text, list_text, parse_size
from .images import IMAGE_EXTENSIONS, check_bit_depth, load_image
from .transforms import crop_hw, resize_hw

logger = logging.getLogger("varlearn")

__all__ = ["load_images", "load_pairs"]


def _list_image_files(folder, name):
    files, ignored = [], 0
    for entry in folder.iterdir():
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if entry.suffix.lower() in IMAGE_EXTENSIONS:
            files.append(entry)
        else:
            ignored += 1
    if not files:
        extra = f" ({ignored} file(s) with other extensions ignored)" if ignored else ""
        raise DataError(
            f"{name}: no image files in {folder}{extra}; readable extensions: {' '.join(IMAGE_EXTENSIONS)}"
        )
    return sorted(files, key=lambda p: p.name)


def _prepare(img, crop_hw_, size_hw, source):
    """Crop first, then resize (one image, axes 0 and 1)."""
    if crop_hw_ is not None:
        img = crop_hw(img, crop_hw_, source)
    if size_hw is not None:
        img = resize_hw(img, size_hw)
    return img


def _stack(images, labels, where):
    """Stack equally shaped images; ``DataError`` naming the first mismatch otherwise."""
    first = images[0].shape
    for img, label in zip(images, labels):
        if img.shape != first:
            raise DataError(
                f"images in {where} have different shapes: {labels[0]} is {hw_text(first)} but "
                f"{label} is {hw_text(img.shape)}; pass size= or crop= to bring them to one shape"
            )
    return np.stack(images).astype(np.float64, copy=False)


def load_images(folder, size=None, crop=None, as_gray=True, bit_depth=None):
    """Read every image of a folder.

    Parameters
    ----------
    folder : str or os.PathLike
        Folder of images; files with an extension in :data:`IMAGE_EXTENSIONS`
        (any case) are read, other files, subfolders and hidden files are ignored.
    size : int or (int, int), optional
        Resize every image to this shape (after cropping).  Resizing averages
        pixels and so lowers the noise level: use it for clean images only.
    crop : int or (int, int), optional
        Center-crop every image to this shape first (before resizing).
    as_gray : bool, optional
        Convert colour images to gray (see :func:`load_image`).
    bit_depth : int, optional
        As in :func:`load_image`, for every file.

    Returns
    -------
    images : numpy.ndarray, shape (N, H, W)
        float64 (``(N, H, W, C)`` for colour images when ``as_gray`` is false).
    names : list of str
        File names, sorted; ``images[i]`` was read from ``names[i]``.

    Raises
    ------
    FileNotFoundError
        If ``folder`` does not exist (``NotADirectoryError`` if it is a file).
    DataError
        If the folder holds no image, a file is unreadable, an image is smaller
        than ``crop``, or the images differ in shape and neither ``size`` nor
        ``crop`` makes them equal.
    """
    folder = as_dir(folder, "folder")
    size_hw = parse_size(size, "size")
    crop_hw_ = parse_size(crop, "crop")
    bit_depth = check_bit_depth(bit_depth)
    files = _list_image_files(folder, "folder")
    images = [_prepare(load_image(f, as_gray=as_gray, bit_depth=bit_depth), crop_hw_, size_hw, str(f)) for f in files]
    names = [f.name for f in files]
    logger.debug("read %d images from %s", len(names), folder)
    return _stack(images, names, str(folder)), names


def _by_stem(files, name, folder):
    out = {}
    for f in files:
        if f.stem in out:
            raise DataError(f"{name}: two files in {folder} share the stem {f.stem!r}: {out[f.stem].name} and {f.name}")
        out[f.stem] = f
    return out


def _refuse_noisy_resize(img, size_hw, path):
    """``DataError`` when resizing the noisy image ``img`` (already cropped) would change its shape."""
    if size_hw is None or tuple(img.shape[:2]) == size_hw:
        return
    fits = size_hw[0] <= img.shape[0] and size_hw[1] <= img.shape[1]
    crop = size_hw[0] if size_hw[0] == size_hw[1] else size_hw
    how = f" (crop={crop} gives that shape)" if fits else ""
    raise DataError(
        f"size={hw_text(size_hw)} would resize the noisy image {path} ({hw_text(img.shape[:2])}), which "
        "changes its noise (down-sizing averages it away) and trains for a noise level the data do not have; "
        f"noisy data can be cropped{how} but not resized. To train at another resolution, resize clean "
        "images and add noise afterwards (sigma=...)"
    )


def load_pairs(clean_dir, noisy_dir, size=None, crop=None, as_gray=True, bit_depth=None):
    """Read clean/noisy image pairs from two folders, matched by file stem.

    ``clean_dir/a.png`` pairs with ``noisy_dir/a.tif``: only the name without
    extension has to agree.

    Noisy images are never resized: bilinear (anti-aliased) resizing averages
    neighbouring pixels, which removes most of the noise (a 2x reduction
    halves its standard deviation, and more with anti-aliasing), so a model
    learned on resized pairs is tuned for a noise level the data do not have.
    ``size`` is therefore only accepted when it equals the shape of the
    (cropped) images, and raises :class:`DataError` otherwise.  Cropping does
    not change the noise and is allowed.

    Parameters
    ----------
    clean_dir, noisy_dir : str or os.PathLike
        Folders of images (see :func:`load_images` for what is read).
    size : int or (int, int), optional
        Must equal the shape of the images after cropping (see above); kept
        so that a requested resize is refused with a clear message instead
        of being ignored.
    crop : int or (int, int), optional
        Center-crop both images of every pair to this shape.
    as_gray : bool, optional
        Convert colour images to gray.
    bit_depth : int, optional
        As in :func:`load_image`, for every file of both folders.

    Returns
    -------
    clean, noisy : numpy.ndarray, shape (N, H, W)
        float64.
    names : list of str
        The common stems, sorted; pair ``i`` is ``names[i]``.

    Raises
    ------
    DataError
        If a stem is present on one side only (all such stems are listed), two
        files in one folder share a stem, the two images of a pair differ in
        shape (before cropping), ``size`` asks for a resize, or any error of
        :func:`load_images`.
    """
    cdir = as_dir(clean_dir, "clean_dir")
    ndir = as_dir(noisy_dir, "noisy_dir")
    size_hw = parse_size(size, "size")
    crop_hw_ = parse_size(crop, "crop")
    bit_depth = check_bit_depth(bit_depth)
    cmap = _by_stem(_list_image_files(cdir, "clean_dir"), "clean_dir", cdir)
    nmap = _by_stem(_list_image_files(ndir, "noisy_dir"), "noisy_dir", ndir)
    only_clean = set(cmap) - set(nmap)
    only_noisy = set(nmap) - set(cmap)
    if only_clean or only_noisy:
        parts = []
        if only_clean:
            parts.append(f"only in clean_dir {cdir}: {list_text(only_clean)}")
        if only_noisy:
            parts.append(f"only in noisy_dir {ndir}: {list_text(only_noisy)}")
        raise DataError("clean and noisy images do not pair up by file name (stem): " + "; ".join(parts))
    names = sorted(cmap)
    clean, noisy = [], []
    for stem in names:
        c = load_image(cmap[stem], as_gray=as_gray, bit_depth=bit_depth)
        n = load_image(nmap[stem], as_gray=as_gray, bit_depth=bit_depth)
        if c.shape != n.shape:
            raise DataError(
                f"pair {stem!r}: clean image {cmap[stem]} is {hw_text(c.shape)} but noisy image "
                f"{nmap[stem]} is {hw_text(n.shape)}"
            )
        c = _prepare(c, crop_hw_, None, str(cmap[stem]))
        n = _prepare(n, crop_hw_, None, str(nmap[stem]))
        _refuse_noisy_resize(n, size_hw, nmap[stem])
        clean.append(c)
        noisy.append(n)
    logger.debug("read %d image pairs from %s and %s", len(names), cdir, ndir)
    return _stack(clean, names, str(cdir)), _stack(noisy, names, str(ndir)), names
