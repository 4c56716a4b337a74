"""Center crops and resizing of images and stacks of images."""
from __future__ import annotations

import numpy as np

from ..backend import is_cupy_array
from ._common import DataError, hw_text, parse_size

__all__ = ["center_crop", "resize"]


def crop_hw(img, hw, source):
    """Center-crop axes 0 and 1 of one image; ``DataError`` naming ``source`` if too small."""
    h, w = hw
    H, W = img.shape[:2]
    if h > H or w > W:
        raise DataError(f"{source}: cannot crop {hw_text(img.shape[:2])} image to {h}x{w}")
    top = (H - h) // 2
    left = (W - w) // 2
    return img[top : top + h, left : left + w]


def resize_to(a, out_shape):
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


def resize_hw(img, hw):
    """Resize axes 0 and 1 of one image (H, W) or (H, W, C)."""
    return resize_to(img, tuple(hw) + img.shape[2:])


def resize_stack(images, hw, chunk=8192):
    """Resize (N, H, W) in chunks (bounded memory for 60000 digits)."""
    n = images.shape[0]
    out = np.empty((n,) + tuple(hw), dtype=np.float64)
    for start in range(0, n, chunk):
        block = images[start : start + chunk]
        out[start : start + chunk] = resize_to(block, (block.shape[0],) + tuple(hw))
    return out


def _check_stack_input(images, func):
    if is_cupy_array(images):
        return images
    images = np.asarray(images)
    if images.ndim not in (2, 3):
        raise ValueError(f"images must be 2-D (H, W) or 3-D (N, H, W) for {func}, got shape {images.shape}")
    if images.dtype.kind not in "biuf":
        raise TypeError(f"images must hold real numbers, got dtype {images.dtype}")
    return images


def _required_size(size):
    hw = parse_size(size)
    if hw is None:
        raise TypeError("size must be an int or a pair of ints (h, w), got None")
    return hw


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
    h, w = _required_size(size)
    if images.ndim not in (2, 3):
        raise ValueError(f"images must be 2-D (H, W) or 3-D (N, H, W), got shape {images.shape}")
    H, W = images.shape[-2:]
    if h > H or w > W:
        raise ValueError(f"size {size!r} is larger than the images ({H}x{W})")
    top = (H - h) // 2
    left = (W - w) // 2
    return images[..., top : top + h, left : left + w]


def resize(images, size):
    """Resize an image or a stack of images (bilinear, anti-aliased when shrinking).

    Resizing averages neighbouring pixels, so it lowers the level of any noise
    in the images: resize clean images, and add noise afterwards.

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
    if is_cupy_array(images):
        raise TypeError("images: resize works on NumPy arrays; move CuPy data with varlearn.backend.to_numpy first")
    images = _check_stack_input(images, "resize")
    hw = _required_size(size)
    return resize_to(images, images.shape[:-2] + hw)
