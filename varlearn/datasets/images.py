"""Reading one image file into a float64 array on the [0, 1] scale, with explicit bit depths.

How integer pixels are scaled
-----------------------------
* ``bool`` becomes 0/1; 8-bit data (``uint8``, ``int8``) are divided by their
  dtype's maximum (255, 127), whatever ``bit_depth`` says.
* Wider integer containers (``uint16``, ``int16``, ``int32``, ``uint32``,
  ``int64``, ``uint64``) are divided by ``2**bit_depth - 1``.  With
  ``bit_depth=None`` (the default) that is the container's range, its
  dtype's maximum (65535 for ``uint16``, 32767 for ``int16``, ``2**31 - 1``
  for ``int32``), **unless the data leave the top four bits of a ``w``-bit
  container unused**: when the largest value is at most ``2**(w - 4) - 1``
  (4095 for ``uint16`` and ``int16``, ``2**28 - 1`` for ``int32``) the file
  almost certainly holds fewer bits than its container -- 12-bit camera
  data in a 16-bit file, 8- or 16-bit data saved as an ``int32`` TIFF -- and
  scaling by the container's range would make it nearly black.  Such files
  are refused with a :class:`DataError` that names the file, its dtype and
  value range, and the ``bit_depth`` to pass (``bit_depth=12`` for 12-bit
  data; or the container's depth, e.g. ``bit_depth=16``, if the image really
  is that dark).  All-zero images are accepted as they are.
* With an explicit ``bit_depth`` a value above ``2**bit_depth - 1`` raises
  :class:`DataError` (the depth is wrong).  Negative signed values are never
  accepted.
* Floating data are kept as they are (after a finiteness check); they are
  not clipped or rescaled.
"""
from __future__ import annotations

import numpy as np

from ._common import DataError, as_path, is_int

__all__ = ["IMAGE_EXTENSIONS", "load_image"]

#: File extensions (lower case) that :func:`load_images` and :func:`load_pairs` read.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".pgm", ".ppm", ".gif", ".webp")
_TIFF_EXTENSIONS = (".tif", ".tiff")
# Bit depths suggested in the error message for under-filled containers.
_COMMON_DEPTHS = (8, 10, 12, 14, 16, 24, 32)


def check_bit_depth(bit_depth):
    """``None`` or an int in 1..64 (``ValueError``/``TypeError`` naming ``bit_depth``)."""
    if bit_depth is None:
        return None
    if not is_int(bit_depth):
        raise TypeError(f"bit_depth must be None or an int, got {type(bit_depth).__name__}: {bit_depth!r}")
    if not 1 <= int(bit_depth) <= 64:
        raise ValueError(f"bit_depth must lie in 1..64, got {bit_depth!r}")
    return int(bit_depth)


def _value_bits(dtype) -> int:
    """Number of value bits of an integer dtype (8 for uint8, 7 for int8, 31 for int32)."""
    return int(np.iinfo(dtype).max).bit_length()


def _integer_scale(arr, source, bit_depth) -> float:
    """The number integer pixels are divided by (see the module documentation)."""
    bits = _value_bits(arr.dtype)
    top = int(arr.max())
    if bits <= 8:
        return float(np.iinfo(arr.dtype).max)
    if bit_depth is not None:
        scale = (1 << bit_depth) - 1
        if top > scale:
            raise DataError(
                f"{source}: bit_depth={bit_depth} allows values up to {scale}, but the image ({arr.dtype}) "
                f"holds values up to {top}; pass the image's real bit depth"
            )
        return float(scale)
    width = arr.dtype.itemsize * 8
    if 0 < top <= (1 << (width - 4)) - 1:
        guess = next((d for d in _COMMON_DEPTHS if top <= (1 << d) - 1), bits)
        raise DataError(
            f"{source}: {arr.dtype} image with values in [{int(arr.min())}, {top}] leaves the top 4 bits of its "
            f"{width}-bit container unused, so scaling by the container's range 0..{int(np.iinfo(arr.dtype).max)} "
            f"would make it almost black; this looks like {guess}-bit data in a {arr.dtype} container. "
            f"Pass bit_depth={guess} (divide by {(1 << guess) - 1}), or bit_depth={bits} to keep the container's "
            "range (command line: --bit-depth)"
        )
    return float(np.iinfo(arr.dtype).max)


def to_float_image(arr, source, as_gray=True, bit_depth=None):
    """Turn a decoded image into float64, integer input scaled to [0, 1].

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
    elif kind in "iu":
        if kind == "i" and int(arr.min()) < 0:
            raise DataError(f"{source}: signed integer image ({arr.dtype}) with negative values is not supported")
        out = arr.astype(np.float64) / _integer_scale(arr, source, bit_depth)
    else:
        out = arr.astype(np.float64)
        bad = ~np.isfinite(out)
        if bad.any():
            raise DataError(f"{source}: the image contains {int(bad.sum())} NaN or infinite value(s)")
    if as_gray and out.ndim == 3:
        if out.shape[-1] == 2:  # gray + alpha
            out = np.ascontiguousarray(out[..., 0])
        else:  # RGB, or RGBA with the alpha channel dropped
            from skimage.color import rgb2gray  # noqa: PLC0415

            out = rgb2gray(out[..., :3])
    return out


def _read_raw(path):
    """Decode an image file with imageio (Pillow or tifffile), first frame only."""
    import imageio.v3 as iio  # noqa: PLC0415

    plugins = ("tifffile", "pillow") if path.suffix.lower() in _TIFF_EXTENSIONS else ("pillow", "tifffile")
    problems = []
    for plugin in plugins:
        try:
            return iio.imread(path, plugin=plugin, index=0)
        except MemoryError:
            raise
        except Exception as exc:  # the plugins raise many kinds of errors
            problems.append(f"{plugin}: {type(exc).__name__}: {exc}")
    raise DataError(f"cannot read image file {path}: not an image or unreadable ({'; '.join(problems)})")


def load_image(path, as_gray=True, bit_depth=None):
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
    bit_depth : int, optional
        Significant bits of integer data wider than 8 bits: pixels are divided
        by ``2**bit_depth - 1``.  Default: the container's range, refusing
        under-filled containers (see the module documentation of
        :mod:`varlearn.datasets.images`).

    Returns
    -------
    numpy.ndarray
        float64, ``(H, W)`` (or ``(H, W, C)`` when ``as_gray`` is false and the
        file has colour).  uint8 data are divided by 255, uint16 by 65535 (or
        ``2**bit_depth - 1``), booleans become 0/1; floating data are kept as
        they are.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    DataError
        If the file is not a regular file, is not a readable image, has an
        unsupported layout, contains NaN/Inf, has negative integer values,
        values above ``2**bit_depth - 1``, or (with ``bit_depth=None``)
        leaves the top four bits of a container wider than 8 bits unused.
    """
    path = as_path(path, "path")
    bit_depth = check_bit_depth(bit_depth)
    if not path.exists():
        raise FileNotFoundError(f"path: no such file: {path}")
    if not path.is_file():
        raise DataError(f"path: {path} is not a regular file")
    return to_float_image(_read_raw(path), str(path), as_gray=as_gray, bit_depth=bit_depth)
