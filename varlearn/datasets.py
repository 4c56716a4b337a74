"""Data for varlearn: built-in images, image folders, Kodak, MNIST and Fashion-MNIST.

Every loader returns NumPy ``float64`` images scaled to [0, 1] (integer
images are divided by their dtype's maximum: uint8 by 255, uint16 by 65535;
floating images are kept as they are, after a finiteness check).  Colour
images become grayscale with :func:`skimage.color.rgb2gray` unless a loader
is asked to keep the colour channels; an alpha channel is dropped.

Where the data come from
------------------------
The Kodak and MNIST loaders look for their files, in this order:

1. the ``root`` argument (the folder itself or its ``kodak/``, ``mnist/`` or
   ``fashion-mnist/`` subfolder).  When ``root`` is given nothing else is
   searched and nothing is downloaded;
2. for Fashion-MNIST only, the folder of Debian's ``dataset-fashion-mnist``
   package, ``/usr/share/datasets/fashion-mnist/``;
3. the folders in the environment variable ``VARLEARN_DATA`` (several may be
   separated by ``os.pathsep``), each with the subfolder first;
4. the cache folder (:func:`get_cache_dir`: the ``cache_dir`` argument, else the
   environment variable ``VARLEARN_CACHE``, else ``~/.cache/varlearn``);
5. a download from the official source (or the mirror given as ``base_url``)
   into the cache folder, when ``download=True``.

Every file is checked against SHA-256 checksums stored in this module (for the
IDX files: the checksum of the *decompressed* bytes, since gzip headers differ
between mirrors), whether it was found on disk or downloaded.  Downloads go to
a temporary file in the destination folder, which is checked and then moved
into place with :func:`os.replace`; a failed or rejected download leaves no
file behind.

Errors
------
:class:`DataError` (a :class:`ValueError`) is raised for bad data content: an
unreadable or non-image file, NaN in an image, a checksum mismatch, a malformed
IDX file, an empty folder, image pairs that do not match.  :class:`DownloadError`
(an :class:`OSError`) is raised when a file is neither on disk nor downloadable.
Bad arguments raise :class:`TypeError` or :class:`ValueError`, missing paths
:class:`FileNotFoundError`.  Every message names the argument or file at fault.
"""
from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.client
import logging
import math
import numbers
import os
import struct
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

import numpy as np

logger = logging.getLogger("varlearn")

__all__ = [
    "DataError",
    "DownloadError",
    "BUILTIN_NAMES",
    "IMAGE_EXTENSIONS",
    "KODAK_BASE_URL",
    "KODAK_FILES",
    "KODAK_SHA256",
    "MNIST_MIRRORS",
    "MNIST_SHA256",
    "FASHION_MNIST_MIRRORS",
    "FASHION_MNIST_SHA256",
    "FASHION_MNIST_SYSTEM_DIRS",
    "DATA_ENV",
    "CACHE_ENV",
    "builtin_images",
    "load_image",
    "load_images",
    "load_pairs",
    "add_noise",
    "center_crop",
    "resize",
    "read_idx",
    "get_cache_dir",
    "kodak",
    "mnist",
    "fashion_mnist",
]


class DataError(ValueError):
    """Bad data content: unreadable or corrupt file, NaN, checksum mismatch, mismatched pairs."""


class DownloadError(OSError):
    """A data file is not on disk and could not be downloaded."""


# --------------------------------------------------------------------------
# constants

#: Environment variable naming local data folder(s) (``os.pathsep``-separated).
DATA_ENV = "VARLEARN_DATA"
#: Environment variable overriding the cache folder.
CACHE_ENV = "VARLEARN_CACHE"

#: File extensions (lower case) that :func:`load_images` and :func:`load_pairs` read.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".pgm", ".ppm", ".gif", ".webp")
_TIFF_EXTENSIONS = (".tif", ".tiff")

#: Default images of :func:`builtin_images` (shipped inside scikit-image, no network needed).
BUILTIN_NAMES = ("camera", "moon", "brick", "grass", "gravel", "coins", "astronaut", "coffee", "chelsea")
# Further scikit-image images that load offline (checked with scikit-image 0.26).
_OFFLINE_BUILTINS = BUILTIN_NAMES + (
    "rocket",
    "text",
    "page",
    "clock",
    "cat",
    "checkerboard",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "microaneurysms",
)

#: Where the Kodak images are downloaded from (``kodimNN.png`` is appended).
KODAK_BASE_URL = "http://r0k.us/graphics/kodak/kodak/"
#: The 24 Kodak file names, sorted.
KODAK_FILES = tuple(f"kodim{i:02d}.png" for i in range(1, 25))
#: SHA-256 of the Kodak PNG files.
KODAK_SHA256 = {
    "kodim01.png": "a56e27cbf5f843c048b6af1d6e090760e9c92fadba88b7dee0205918a37523bd",
    "kodim02.png": "4f4b74a79237e311d72cad958237b5f7088d8bce1c82305ebefe1a70e3022dfd",
    "kodim03.png": "e25ca1ff2f0c0cb5fdfd5f9b0a0bb21ac4c3de3c84a67f35b09a85d3306249db",
    "kodim04.png": "e3b946107c5d3441c022f678d0c3caf1e224d81b1604ba840a4f88e562de61aa",
    "kodim05.png": "10349e963c5c813d327852f82c1795fa4148d69fedffc4c589bee458e3ac3d53",
    "kodim06.png": "363510303b715d4cbc384e1ce227e466b613a09e1b71ae985882bf8e7fbd9b18",
    "kodim07.png": "b77d3f006f42414bb242222e0482e750c0fb9e5ee8d4bed2f6f11c5605fe54a4",
    "kodim08.png": "ba23983c76b4832ee0e8af0592664756841a16779acd69f792e268fb6d13d6e7",
    "kodim09.png": "6a4361c2fc194feb4edaa9f9a4a0620fb9943e460ac7fdf037fb0f6dd6607a7d",
    "kodim10.png": "9dfb70f5867c29ff9ed6313683f19b3d867849e40fbc0c4c54a4a89df341cf23",
    "kodim11.png": "7936814b58b5387fce2e4e2488b4ec830dadd95fa9520f358ddb30990b50f2b6",
    "kodim12.png": "d78c37c2f04f23761ed2367dd77e2db584ddd4c3950833fecf89f199a8126980",
    "kodim13.png": "bc34a3ce58dea09dce1704c997171602de90cb34d0c8503a988b77f473d39b08",
    "kodim14.png": "55a94550ff18f3246c4074fd32b77b0c74447c26b6ad274d564d999c0450ba6e",
    "kodim15.png": "7538cbb80cb9103606c48b806eae57d56c885c7f90b9b3be70a41160f9cbb683",
    "kodim16.png": "a89c7268ccd4718ba424a99fc4643c572cf692ca6eae887185ceb4e9f11d2e54",
    "kodim17.png": "37afcc89fbdcb76d9518e04b2fc011027e2f4cd14b3b2f83cefd721641a47c5b",
    "kodim18.png": "1a9258c365988961d87a0598725b609139c303ad48a5aad6c503c3b1a87849aa",
    "kodim19.png": "b7450b264b1b0a411390d8931b112c27905a992520fc90569dc4b920aa32bbdc",
    "kodim20.png": "3b46c71e3b92a563820ba32936be8330c586c41f938efd94be938386aae4328a",
    "kodim21.png": "ac958597c82073f6bb65129c68f72b651db5b9efd82e11547d07350214bc268b",
    "kodim22.png": "1cee58eb1f2d9c7ebb254d208a03c783ce6cf2c4d8c2cf45e235dd23b4ce1b29",
    "kodim23.png": "e3111a2fd4da24af15d6459ef9eacfe54106b38e27b4a21821b75c3f5d2d5baf",
    "kodim24.png": "1071c68372cc5a01435c2c225a5cf7d4bb803846ec08bb6b3d6721b156d7cb96",
}

#: Base URLs tried in order for the MNIST ``*.gz`` files.
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
#: SHA-256 of the decompressed MNIST IDX files (the published checksums of the originals).
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

#: Base URLs tried in order for the Fashion-MNIST ``*.gz`` files.
FASHION_MNIST_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
#: Folders searched first for Fashion-MNIST (Debian package ``dataset-fashion-mnist``).
FASHION_MNIST_SYSTEM_DIRS = ("/usr/share/datasets/fashion-mnist",)
#: SHA-256 of the decompressed Fashion-MNIST IDX files.  Upstream publishes only
#: MD5 sums of its ``.gz`` files; these values were computed from the decompressed
#: files of Debian's ``dataset-fashion-mnist`` 0.0~git20200523.55506a9-1 (whose
#: ``.gz`` files differ from upstream's only in the gzip header).  An empty dict
#: would mean "check the IDX structure only".
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

#: Seconds a download may stall before it is abandoned.
DOWNLOAD_TIMEOUT = 30.0
_CHUNK = 1 << 16
_OFFLINE_HINT = (
    "Without network access, fetch the files by hand and point varlearn at them: pass "
    "root=FOLDER (command line: --data-dir FOLDER) or set the VARLEARN_DATA environment variable"
)

# IDX type codes -> big-endian dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


# --------------------------------------------------------------------------
# argument checking


def _as_path(value, name) -> Path:
    if isinstance(value, (str, os.PathLike)):
        return Path(value).expanduser()
    raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(value).__name__}: {value!r}")


def _as_dir(value, name) -> Path:
    path = _as_path(value, name)
    if not path.exists():
        raise FileNotFoundError(f"{name}: no such folder: {path}")
    if not path.is_dir():
        raise NotADirectoryError(f"{name}: {path} is not a folder")
    return path


def _is_int(value) -> bool:
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def _parse_size(size, name="size"):
    """``None`` -> ``None``; ``n`` -> ``(n, n)``; ``(h, w)`` -> ``(h, w)``; positive ints only."""
    if size is None:
        return None
    if _is_int(size):
        hw = (int(size), int(size))
    elif isinstance(size, (tuple, list)) and len(size) == 2 and all(_is_int(s) for s in size):
        hw = (int(size[0]), int(size[1]))
    else:
        raise TypeError(f"{name} must be None, an int or a pair of ints (h, w), got {size!r}")
    if hw[0] < 1 or hw[1] < 1:
        raise ValueError(f"{name} must be positive, got {size!r}")
    return hw


def _hw_text(shape) -> str:
    return "x".join(str(s) for s in shape)


# --------------------------------------------------------------------------
# image conversion


def _to_float_image(arr, source, as_gray=True):
    """Turn a decoded image into float64, scaled to [0, 1] for integer input.

    ``source`` names the file (or image) in error messages.
    """
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{source}: unsupported pixel type {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (2, 3, 4))):
        raise DataError(
            f"{source}: unsupported image shape {arr.shape} (expected H x W, or H x W x C with 1 to 4 channels)"
        )
    if arr.size == 0:
        raise DataError(f"{source}: the image is empty (shape {arr.shape})")
    kind = arr.dtype.kind
    if kind == "b":
        out = arr.astype(np.float64)
    elif kind == "u":
        out = arr.astype(np.float64) / float(np.iinfo(arr.dtype).max)
    elif kind == "i":
        if int(arr.min()) < 0:
            raise DataError(f"{source}: signed integer image ({arr.dtype}) with negative values is not supported")
        out = arr.astype(np.float64) / float(np.iinfo(arr.dtype).max)
    else:
        out = arr.astype(np.float64)
        bad = ~np.isfinite(out)
        if bad.any():
            raise DataError(f"{source}: the image contains {int(bad.sum())} NaN or infinite value(s)")
    if as_gray and out.ndim == 3:
        channels = out.shape[-1]
        if channels == 2:  # gray + alpha
            out = np.ascontiguousarray(out[..., 0])
        else:  # RGB, or RGBA with the alpha channel dropped
            from skimage.color import rgb2gray  # noqa: PLC0415

            out = rgb2gray(out[..., :3])
    return out


def _read_raw(path: Path):
    """Decode an image file with imageio (Pillow or tifffile), first frame only."""
    import imageio.v3 as iio  # noqa: PLC0415

    if path.suffix.lower() in _TIFF_EXTENSIONS:
        plugins = ("tifffile", "pillow")
    else:
        plugins = ("pillow", "tifffile")
    problems = []
    for plugin in plugins:
        try:
            return iio.imread(path, plugin=plugin, index=0)
        except MemoryError:
            raise
        except Exception as exc:  # the plugins raise many kinds of errors
            problems.append(f"{plugin}: {type(exc).__name__}: {exc}")
    raise DataError(f"cannot read image file {path}: not an image or unreadable ({'; '.join(problems)})")


def load_image(path, as_gray=True):
    """Read one image file as a float64 array.

    Parameters
    ----------
    path : str or os.PathLike
        Image file (PNG, JPEG, TIFF, BMP, PGM/PPM, GIF, WebP, ...).  For
        multi-frame files only the first frame is read.
    as_gray : bool, optional
        Convert colour to gray with :func:`skimage.color.rgb2gray` (an alpha
        channel is dropped first).  If false, colour images come back as
        ``(H, W, C)``.

    Returns
    -------
    numpy.ndarray
        float64, ``(H, W)`` (or ``(H, W, C)`` when ``as_gray`` is false and the
        file has colour).  uint8 data are divided by 255, uint16 by 65535, other
        unsigned and non-negative signed integers by their dtype's maximum,
        booleans become 0/1; floating data are kept as they are.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    DataError
        If the file is not a regular file, is not a readable image, has an
        unsupported layout or contains NaN/Inf.
    """
    path = _as_path(path, "path")
    if not path.exists():
        raise FileNotFoundError(f"path: no such file: {path}")
    if not path.is_file():
        raise DataError(f"path: {path} is not a regular file")
    return _to_float_image(_read_raw(path), str(path), as_gray=as_gray)


# --------------------------------------------------------------------------
# crop and resize


def _crop_hw(img, hw, source):
    """Center-crop axes 0 and 1 of one image; ``DataError`` naming ``source`` if too small."""
    h, w = hw
    H, W = img.shape[:2]
    if h > H or w > W:
        raise DataError(f"{source}: cannot crop {_hw_text(img.shape[:2])} image to {h}x{w}")
    top = (H - h) // 2
    left = (W - w) // 2
    return img[top : top + h, left : left + w]


def _resize_to(a, out_shape):
    """Bilinear resize of a NumPy array to ``out_shape``, anti-aliased when shrinking.

    Axes whose length does not change are neither interpolated nor blurred,
    so a stack (N, H, W) or a colour image (H, W, C) is resized image by image.
    """
    from skimage.transform import resize as _sk_resize  # noqa: PLC0415

    a = np.asarray(a)
    if a.dtype.kind != "f":
        a = a.astype(np.float64)
    out_shape = tuple(int(s) for s in out_shape)
    if out_shape == a.shape:
        return a.copy()
    shrink = any(o < i for o, i in zip(out_shape, a.shape))
    return _sk_resize(a, out_shape, order=1, mode="reflect", anti_aliasing=shrink, preserve_range=True)


def _resize_hw(img, hw):
    """Resize axes 0 and 1 of one image (H, W) or (H, W, C)."""
    return _resize_to(img, tuple(hw) + img.shape[2:])


def _check_stack_input(images, func):
    if type(images).__module__.split(".")[0] == "cupy":
        return images
    images = np.asarray(images)
    if images.ndim not in (2, 3):
        raise ValueError(f"images must be 2-D (H, W) or 3-D (N, H, W) for {func}, got shape {images.shape}")
    if images.dtype.kind not in "biuf":
        raise TypeError(f"images must hold real numbers, got dtype {images.dtype}")
    return images


def center_crop(images, size):
    """Crop the central ``size`` window of an image or a stack of images.

    Parameters
    ----------
    images : array, shape (H, W) or (N, H, W)
        NumPy or CuPy array (cropping is slicing, so the result stays in the
        input's namespace; it is a view).
    size : int or (int, int)
        Output height and width; an int gives a square.

    Returns
    -------
    array, shape (h, w) or (N, h, w)
        When ``H - h`` is odd the extra row is dropped at the bottom (same for
        columns, at the right).

    Raises
    ------
    ValueError
        If ``size`` exceeds the image size or ``images`` is not 2-D/3-D.
    """
    images = _check_stack_input(images, "center_crop")
    hw = _parse_size(size)
    if hw is None:
        raise TypeError("size must be an int or a pair of ints (h, w), got None")
    if images.ndim not in (2, 3):
        raise ValueError(f"images must be 2-D (H, W) or 3-D (N, H, W), got shape {images.shape}")
    H, W = images.shape[-2:]
    h, w = hw
    if h > H or w > W:
        raise ValueError(f"size {size!r} is larger than the images ({H}x{W})")
    top = (H - h) // 2
    left = (W - w) // 2
    return images[..., top : top + h, left : left + w]


def resize(images, size):
    """Resize an image or a stack of images (bilinear, anti-aliased when shrinking).

    Parameters
    ----------
    images : numpy.ndarray, shape (H, W) or (N, H, W)
        Host (NumPy) data; uses :func:`skimage.transform.resize`.
    size : int or (int, int)
        Output height and width; an int gives a square (the aspect ratio is
        not preserved).

    Returns
    -------
    numpy.ndarray, shape (h, w) or (N, h, w)
        float32 input stays float32, anything else becomes float64 (integer
        values are not rescaled).  Values stay within the input's range.

    Raises
    ------
    TypeError
        For CuPy input (move it with ``varlearn.backend.to_numpy`` first) or a
        malformed ``size``.
    """
    if type(images).__module__.split(".")[0] == "cupy":
        raise TypeError("images: resize works on NumPy arrays; move CuPy data with varlearn.backend.to_numpy first")
    images = _check_stack_input(images, "resize")
    hw = _parse_size(size)
    if hw is None:
        raise TypeError("size must be an int or a pair of ints (h, w), got None")
    return _resize_to(images, images.shape[:-2] + hw)


def _resize_stack(images, hw, chunk=8192):
    """Resize (N, H, W) in chunks (bounded memory for 60000 digits)."""
    n = images.shape[0]
    out = np.empty((n,) + tuple(hw), dtype=np.float64)
    for start in range(0, n, chunk):
        block = images[start : start + chunk]
        out[start : start + chunk] = _resize_to(block, (block.shape[0],) + tuple(hw))
    return out


def _prepare(img, crop_hw, size_hw, source):
    """Crop first, then resize (one image, axes 0 and 1)."""
    if crop_hw is not None:
        img = _crop_hw(img, crop_hw, source)
    if size_hw is not None:
        img = _resize_hw(img, size_hw)
    return img


def _stack(images, labels, where):
    """Stack equally shaped images; ``DataError`` naming the first mismatch otherwise."""
    first = images[0].shape
    for img, label in zip(images, labels):
        if img.shape != first:
            raise DataError(
                f"images in {where} have different shapes: {labels[0]} is {_hw_text(first)} but "
                f"{label} is {_hw_text(img.shape)}; pass size= or crop= to bring them to one shape"
            )
    return np.stack(images).astype(np.float64, copy=False)


# --------------------------------------------------------------------------
# built-in images


@functools.lru_cache(maxsize=None)
def _builtin_one(name):
    import skimage.data  # noqa: PLC0415

    raw = getattr(skimage.data, name)()
    img = _to_float_image(raw, f"skimage.data.{name}", as_gray=True)
    img.setflags(write=False)
    return img


def builtin_images(names=None, size=None):
    """Grayscale natural images shipped with scikit-image (no network needed).

    Parameters
    ----------
    names : str or sequence of str, optional
        Which images; default :data:`BUILTIN_NAMES`.  Further offline names:
        ``rocket``, ``text``, ``page``, ``clock``, ``cat``, ``checkerboard``,
        ``hubble_deep_field``, ``immunohistochemistry``, ``retina``,
        ``microaneurysms``.
    size : int or (int, int), optional
        Resize every image to this shape (anti-aliased; the aspect ratio is not
        kept).  If ``None`` and the shapes differ, every image is center-cropped
        to the smallest common height and width.

    Returns
    -------
    numpy.ndarray, shape (N, H, W)
        float64 in [0, 1], in the order of ``names``.  Deterministic.

    Raises
    ------
    ValueError
        If a name is unknown or needs a download.
    """
    if names is None:
        names = BUILTIN_NAMES
    elif isinstance(names, str):
        names = (names,)
    else:
        try:
            names = tuple(names)
        except TypeError:
            raise TypeError(f"names must be a str or a sequence of str, got {names!r}") from None
    if not names:
        raise ValueError("names must not be empty")
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"names must hold str, got {name!r}")
        if name not in _OFFLINE_BUILTINS:
            raise ValueError(
                f"names: unknown or not offline built-in image {name!r}; choose from {', '.join(_OFFLINE_BUILTINS)}"
            )
    hw = _parse_size(size)
    imgs = [_builtin_one(name) for name in names]
    if hw is not None:
        imgs = [_resize_hw(img, hw) for img in imgs]
    else:
        h = min(img.shape[0] for img in imgs)
        w = min(img.shape[1] for img in imgs)
        imgs = [_crop_hw(img, (h, w), name) for img, name in zip(imgs, names)]
    return np.stack(imgs).astype(np.float64, copy=False)


# --------------------------------------------------------------------------
# image folders


def _list_image_files(folder: Path, name):
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


def load_images(folder, size=None, crop=None, as_gray=True):
    """Read every image of a folder.

    Parameters
    ----------
    folder : str or os.PathLike
        Folder of images; files with an extension in :data:`IMAGE_EXTENSIONS`
        (any case) are read, other files, subfolders and hidden files are ignored.
    size : int or (int, int), optional
        Resize every image to this shape (after cropping).
    crop : int or (int, int), optional
        Center-crop every image to this shape first (before resizing).
    as_gray : bool, optional
        Convert colour images to gray (see :func:`load_image`).

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
    folder = _as_dir(folder, "folder")
    size_hw = _parse_size(size, "size")
    crop_hw = _parse_size(crop, "crop")
    files = _list_image_files(folder, "folder")
    images = [_prepare(load_image(f, as_gray=as_gray), crop_hw, size_hw, str(f)) for f in files]
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


def _list_text(items, limit=10):
    items = sorted(items)
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def load_pairs(clean_dir, noisy_dir, size=None, crop=None, as_gray=True):
    """Read clean/noisy image pairs from two folders, matched by file stem.

    ``clean_dir/a.png`` pairs with ``noisy_dir/a.tif``: only the name without
    extension has to agree.

    Parameters
    ----------
    clean_dir, noisy_dir : str or os.PathLike
        Folders of images (see :func:`load_images` for what is read).
    size, crop : int or (int, int), optional
        As in :func:`load_images` (crop first, then resize), applied to both
        images of a pair.
    as_gray : bool, optional
        Convert colour images to gray.

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
        shape (before cropping/resizing), or any error of :func:`load_images`.
    """
    cdir = _as_dir(clean_dir, "clean_dir")
    ndir = _as_dir(noisy_dir, "noisy_dir")
    size_hw = _parse_size(size, "size")
    crop_hw = _parse_size(crop, "crop")
    cmap = _by_stem(_list_image_files(cdir, "clean_dir"), "clean_dir", cdir)
    nmap = _by_stem(_list_image_files(ndir, "noisy_dir"), "noisy_dir", ndir)
    only_clean = set(cmap) - set(nmap)
    only_noisy = set(nmap) - set(cmap)
    if only_clean or only_noisy:
        parts = []
        if only_clean:
            parts.append(f"only in clean_dir {cdir}: {_list_text(only_clean)}")
        if only_noisy:
            parts.append(f"only in noisy_dir {ndir}: {_list_text(only_noisy)}")
        raise DataError("clean and noisy images do not pair up by file name (stem): " + "; ".join(parts))
    names = sorted(cmap)
    clean, noisy = [], []
    for stem in names:
        c = load_image(cmap[stem], as_gray=as_gray)
        n = load_image(nmap[stem], as_gray=as_gray)
        if c.shape != n.shape:
            raise DataError(
                f"pair {stem!r}: clean image {cmap[stem]} is {_hw_text(c.shape)} but noisy image "
                f"{nmap[stem]} is {_hw_text(n.shape)}"
            )
        clean.append(_prepare(c, crop_hw, size_hw, str(cmap[stem])))
        noisy.append(_prepare(n, crop_hw, size_hw, str(nmap[stem])))
    logger.debug("read %d image pairs from %s and %s", len(names), cdir, ndir)
    return _stack(clean, names, str(cdir)), _stack(noisy, names, str(ndir)), names


# --------------------------------------------------------------------------
# noise


def _as_rng(rng):
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or _is_int(rng) or isinstance(rng, (np.random.SeedSequence, np.random.BitGenerator)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, got {type(rng).__name__}: {rng!r}")


def add_noise(images, sigma, rng=None):
    """Add white Gaussian noise: ``images + sigma * N(0, 1)``, without clipping.

    Parameters
    ----------
    images : array
        Floating NumPy or CuPy array of any shape.
    sigma : float
        Noise standard deviation, finite and >= 0 (on the [0, 1] intensity scale).
    rng : None, int or numpy.random.Generator, optional
        Source of the noise.  It is always drawn on the host with NumPy (in
        float64), so a seed gives the same noise on either backend, and then
        moved to CuPy when ``images`` is a CuPy array.

    Returns
    -------
    array
        New array in the namespace and dtype of ``images`` (float32 stays float32).

    Raises
    ------
    TypeError
        If ``images`` is not floating or ``sigma``/``rng`` has the wrong type.
    ValueError
        If ``sigma`` is negative, NaN or infinite.
    """
    if isinstance(sigma, (bool, np.bool_)) or not isinstance(sigma, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"sigma must be a real number, got {type(sigma).__name__}: {sigma!r}")
    sigma = float(sigma)
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    generator = _as_rng(rng)
    on_cupy = type(images).__module__.split(".")[0] == "cupy"
    if not on_cupy:
        images = np.asarray(images)
    if images.dtype.kind != "f":
        raise TypeError(
            f"images must have a floating dtype, got {images.dtype} "
            "(scale integer images to [0, 1] first, e.g. with load_image)"
        )
    noise = generator.standard_normal(images.shape)
    noise *= sigma
    noise = noise.astype(images.dtype, copy=False)
    if on_cupy:
        from varlearn.backend import to_device  # noqa: PLC0415

        noise = to_device(noise, "cupy")
    return images + noise


# --------------------------------------------------------------------------
# IDX files


def _maybe_gunzip(data: bytes, source) -> bytes:
    """Decompress gzip data (recognised by its magic bytes), else return as is."""
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{source}: corrupt or truncated gzip data ({exc})") from exc


def _parse_idx(data: bytes, source) -> np.ndarray:
    n = len(data)
    if n < 4:
        raise DataError(f"{source}: truncated IDX file ({n} bytes, the header alone needs 4)")
    if data[0] != 0 or data[1] != 0:
        raise DataError(f"{source}: not an IDX file (bad magic number 0x{data[:4].hex()})")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise DataError(f"{source}: unknown IDX data type code 0x{code:02x}")
    if ndim == 0:
        raise DataError(f"{source}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if n < header:
        raise DataError(f"{source}: truncated IDX file ({n} bytes, the header needs {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_DTYPES[code]
    count = math.prod(dims)
    need = header + count * dtype.itemsize
    if n < need:
        raise DataError(f"{source}: truncated IDX file: {n} bytes, but shape {dims} of {dtype.name} needs {need}")
    if n > need:
        raise DataError(f"{source}: {n - need} unexpected trailing bytes after the IDX data of shape {dims}")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def read_idx(source):
    """Read an IDX file (the MNIST format), plain or gzip-compressed.

    Parameters
    ----------
    source : str, os.PathLike or bytes
        File path, or the file's content.  Compression is detected from the
        gzip magic bytes, not from the file name.

    Returns
    -------
    numpy.ndarray
        Native byte order, dtype from the header (uint8, int8, int16, int32,
        float32 or float64), shape from the header.

    Raises
    ------
    DataError
        Bad magic number, unknown type code, truncated file or trailing bytes,
        corrupt gzip data.
    FileNotFoundError
        If the path does not exist.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = "IDX data"
        data = bytes(source)
    else:
        path = _as_path(source, "source")
        label = str(path)
        data = _read_bytes(path)
    return _parse_idx(_maybe_gunzip(data, label), label)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path}") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


# --------------------------------------------------------------------------
# locating, verifying and downloading data files


def get_cache_dir(cache_dir=None) -> Path:
    """The folder where downloads are cached.

    ``cache_dir`` if given, else the environment variable ``VARLEARN_CACHE``,
    else ``~/.cache/varlearn``.  Each data set uses a subfolder (``kodak``,
    ``mnist``, ``fashion-mnist``).
    """
    if cache_dir is not None:
        return _as_path(cache_dir, "cache_dir")
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "varlearn"


def _search_dirs(subdir, root, cache_dir, system_dirs=()):
    """Folders to search, in order, and the cache subfolder downloads go to."""
    cache = get_cache_dir(cache_dir) / subdir
    if root is not None:
        root = _as_path(root, "root")
        if not root.is_dir():
            raise FileNotFoundError(f"root: no such folder: {root}")
        return [root / subdir, root], cache
    dirs = [Path(d) for d in system_dirs]
    for entry in os.environ.get(DATA_ENV, "").split(os.pathsep):
        if entry.strip():
            base = Path(entry.strip()).expanduser()
            dirs += [base / subdir, base]
    dirs.append(cache)
    return dirs, cache


def _find(dirs, names):
    for d in dirs:
        for name in names:
            candidate = d / name
            if candidate.is_file():
                return candidate
    return None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_digest(data: bytes, expected, what):
    got = _sha256(data)
    if got != expected:
        raise DataError(f"SHA-256 mismatch for {what}: expected {expected}, got {got}")


def _mirrors(base_url, default):
    if base_url is None:
        urls = tuple(default)
    elif isinstance(base_url, str):
        urls = (base_url,)
    else:
        try:
            urls = tuple(base_url)
        except TypeError:
            raise TypeError(f"base_url must be a str or a sequence of str, got {base_url!r}") from None
    if not urls:
        raise ValueError("base_url: no download location given")
    for url in urls:
        if not isinstance(url, str):
            raise TypeError(f"base_url must hold str, got {url!r}")
        scheme = urllib.parse.urlsplit(url).scheme.lower()
        if scheme not in ("http", "https", "file"):
            raise ValueError(f"base_url must be an http(s):// or file:// URL, got {url!r}")
    return urls


def _join_url(base, filename):
    return base if base.endswith(filename) else base.rstrip("/") + "/" + filename


def _copy_url(url, out):
    request = urllib.request.Request(url, headers={"User-Agent": "varlearn-datasets"})
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT) as response:
        declared = response.headers.get("Content-Length")
        received = 0
        while True:
            chunk = response.read(_CHUNK)
            if not chunk:
                break
            out.write(chunk)
            received += len(chunk)
    if declared is not None and declared.strip().isdigit() and int(declared) != received:
        raise OSError(f"incomplete download: received {received} of {declared} bytes")


def _why(exc) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"{exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def _download(filename, dest_dir: Path, mirrors, verify, what):
    """Download ``filename`` from the first mirror that serves a valid copy.

    ``verify(tmp_path, url)`` raises :class:`DataError` for bad content.  The
    file is written to a temporary file in ``dest_dir`` and moved into place
    only once verified; every temporary file is removed.
    """
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(
            f"cannot create the cache folder {dest_dir} for {what} ({exc}); set {CACHE_ENV} or pass cache_dir="
        ) from exc
    failures, rejected = [], []
    for base in mirrors:
        url = _join_url(base, filename)
        logger.info("downloading %s from %s", filename, url)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=dest_dir)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                _copy_url(url, out)
                out.flush()
                os.fsync(out.fileno())
            verify(tmp, url)
            dest = dest_dir / filename
            os.replace(tmp, dest)
            logger.info("saved %s", dest)
            return dest
        except DataError as exc:
            logger.warning("rejected %s: %s", url, exc)
            rejected.append(exc)
        except (OSError, http.client.HTTPException) as exc:
            logger.warning("could not download %s: %s", url, _why(exc))
            failures.append(f"{url}: {_why(exc)}")
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    if rejected:
        msg = "; ".join(str(e) for e in rejected)
        if failures:
            msg += "; other locations failed: " + "; ".join(failures)
        raise DataError(f"downloaded {what} file {filename} was rejected and discarded: {msg}")
    raise DownloadError(f"could not download {what} file {filename}: {'; '.join(failures)}. {_OFFLINE_HINT}")


def _missing(what, names, dirs, root_given):
    where = ", ".join(str(d) for d in dirs)
    how = (
        "put the files there or leave root=None to search the other locations"
        if root_given
        else f"pass download=True, or root=FOLDER (command line: --data-dir FOLDER), or set {DATA_ENV}"
    )
    return FileNotFoundError(f"{what} file(s) {_list_text(names)} not found in {where}; {how}")


# --------------------------------------------------------------------------
# Kodak


def _parse_indices(indices, n):
    if indices is None:
        return list(range(n))
    if _is_int(indices):
        indices = [indices]
    try:
        items = list(indices)
    except TypeError:
        raise TypeError(f"indices must be None, an int or a sequence of ints, got {indices!r}") from None
    if not items:
        raise ValueError("indices must not be empty")
    for i in items:
        if not _is_int(i):
            raise TypeError(f"indices must hold ints, got {i!r}")
        if not 0 <= int(i) < n:
            raise ValueError(f"indices must lie in [0, {n}), got {int(i)}")
    return sorted({int(i) for i in items})


def kodak(root=None, size=96, gray=True, indices=None, cache_dir=None, download=True, base_url=None):
    """The Kodak Lossless True Color Image Suite (24 images).

    Parameters
    ----------
    root : str or os.PathLike, optional
        Folder holding ``kodim01.png`` ... ``kodim24.png`` (or a ``kodak/``
        subfolder with them).  When given, only this folder is used.  Otherwise
        ``$VARLEARN_DATA/kodak``, ``$VARLEARN_DATA``, the cache folder, and
        finally a download are tried (see the module documentation).
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
        Download location(s) instead of :data:`KODAK_BASE_URL`.

    Returns
    -------
    images : numpy.ndarray, shape (N, H, W)
        float64 in [0, 1].
    names : list of str
        File names, sorted.

    Raises
    ------
    DataError
        If a file's SHA-256 differs from :data:`KODAK_SHA256` (the message names
        the file and both hashes; a bad download is deleted), or if ``size`` is
        ``None`` and the chosen images differ in shape.
    FileNotFoundError
        If files are missing and cannot be downloaded (``root`` given, or
        ``download=False``).
    DownloadError
        If a download fails (e.g. offline).
    """
    idx = _parse_indices(indices, len(KODAK_FILES))
    size_hw = _parse_size(size, "size")
    names = [KODAK_FILES[i] for i in idx]
    dirs, cache = _search_dirs("kodak", root, cache_dir)
    paths = {name: _find(dirs, [name]) for name in names}
    missing = [name for name, p in paths.items() if p is None]
    if missing:
        if root is not None or not download:
            raise _missing("Kodak", missing, dirs, root is not None)
        mirrors = _mirrors(base_url, (KODAK_BASE_URL,))
        for name in missing:

            def verify(tmp, url, name=name):
                _check_digest(_read_bytes(tmp), KODAK_SHA256[name], f"{name} downloaded from {url}")

            paths[name] = _download(name, cache, mirrors, verify, "Kodak")
    images = []
    for name in names:
        path = paths[name]
        _check_digest(_read_bytes(path), KODAK_SHA256[name], str(path))
        img = load_image(path, as_gray=gray)
        if size_hw is not None:
            img = _resize_hw(img, size_hw)
        images.append(img)
    if size_hw is None and len({img.shape for img in images}) > 1:
        raise DataError(
            "size=None keeps the native Kodak resolution, but the chosen images differ in shape "
            "(landscape 512x768 and portrait 768x512); pass size=... or indices= of one orientation"
        )
    return np.stack(images).astype(np.float64, copy=False), names


# --------------------------------------------------------------------------
# MNIST and Fashion-MNIST

_SPLITS = {"train": "train", "test": "t10k"}


def _load_idx_checked(path: Path, expected, what) -> np.ndarray:
    raw = _maybe_gunzip(_read_bytes(path), what)
    if expected is not None:
        _check_digest(raw, expected, what)
    return _parse_idx(raw, what)


def _check_mnist_arrays(images, labels, what):
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{what}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(f"{what}: expected uint8 labels of shape (N,), got {labels.dtype} {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{what}: {images.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and int(labels.max()) > 9:
        raise DataError(f"{what}: label {int(labels.max())} outside 0..9")


def _idx_dataset(what, subdir, root, split, size, cache_dir, download, base_url, mirrors, checksums, system_dirs):
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    size_hw = _parse_size(size, "size")
    dirs, cache = _search_dirs(subdir, root, cache_dir, system_dirs)
    prefix = _SPLITS[split]
    arrays = {}
    for kind, dims in (("images", 3), ("labels", 1)):
        base = f"{prefix}-{kind}-idx{dims}-ubyte"
        expected = checksums.get(base)
        path = _find(dirs, [base, base + ".gz"])
        if path is None:
            if root is not None or not download:
                raise _missing(what, [base + "[.gz]"], dirs, root is not None)
            urls = _mirrors(base_url, mirrors)

            def verify(tmp, url, base=base, expected=expected, dims=dims):
                label = f"{base}.gz downloaded from {url}"
                arr = _load_idx_checked(tmp, expected, label)
                if arr.ndim != dims or arr.dtype != np.uint8:
                    raise DataError(f"{label}: expected {dims}-D uint8 data, got {arr.dtype} {arr.shape}")

            path = _download(base + ".gz", cache, urls, verify, what)
        arrays[kind] = _load_idx_checked(path, expected, str(path))
    images, labels = arrays["images"], arrays["labels"]
    _check_mnist_arrays(images, labels, f"{what} {split} split")
    out = images.astype(np.float64)
    out /= 255.0
    if size_hw is not None:
        out = _resize_stack(out, size_hw)
    return out, labels.astype(np.int64)


def mnist(root=None, split="train", size=None, cache_dir=None, download=True, base_url=None):
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
    cache_dir : str or os.PathLike, optional
        Cache folder (default :func:`get_cache_dir`); files go to its ``mnist/``.
    download : bool, optional
        Download missing ``.gz`` files into the cache (not when ``root`` is given).
    base_url : str or sequence of str, optional
        Download location(s) instead of :data:`MNIST_MIRRORS`.

    Returns
    -------
    images : numpy.ndarray, shape (N, 28, 28) or (N, h, w)
        float64 in [0, 1].
    labels : numpy.ndarray, shape (N,)
        int64 in 0..9.

    Raises
    ------
    DataError
        If the SHA-256 of the decompressed data differs from :data:`MNIST_SHA256`,
        or a file is not valid IDX (truncated, bad magic, ...).
    FileNotFoundError, DownloadError
        As for :func:`kodak`.
    """
    return _idx_dataset(
        "MNIST", "mnist", root, split, size, cache_dir, download, base_url, MNIST_MIRRORS, MNIST_SHA256, ()
    )


def fashion_mnist(root=None, split="train", size=None, cache_dir=None, download=True, base_url=None):
    """Fashion-MNIST (Zalando), the same format and interface as :func:`mnist`.

    Without ``root``, the folders in :data:`FASHION_MNIST_SYSTEM_DIRS`
    (Debian's ``dataset-fashion-mnist`` package installs the files in
    ``/usr/share/datasets/fashion-mnist/``) are searched before
    ``$VARLEARN_DATA/fashion-mnist``, ``$VARLEARN_DATA`` and the cache's
    ``fashion-mnist/``; missing files are downloaded from
    :data:`FASHION_MNIST_MIRRORS` (or ``base_url``).

    The decompressed data are checked against :data:`FASHION_MNIST_SHA256`.
    Upstream publishes only MD5 sums of its ``.gz`` files; the SHA-256 values
    here were computed from the decompressed files of Debian's package.  Files
    without an entry in that table are checked for IDX structure only.

    Returns
    -------
    images : numpy.ndarray, shape (N, 28, 28) or (N, h, w)
        float64 in [0, 1].
    labels : numpy.ndarray, shape (N,)
        int64 in 0..9.
    """
    return _idx_dataset(
        "Fashion-MNIST",
        "fashion-mnist",
        root,
        split,
        size,
        cache_dir,
        download,
        base_url,
        FASHION_MNIST_MIRRORS,
        FASHION_MNIST_SHA256,
        FASHION_MNIST_SYSTEM_DIRS,
    )
