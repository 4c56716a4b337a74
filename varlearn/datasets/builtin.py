"""Natural images shipped inside scikit-image (no network needed)."""
from __future__ import annotations

import functools

import numpy as np

from ._common import as_items, is_str, parse_size
from .images import to_float_image
from .transforms import crop_hw, resize_hw

__all__ = ["BUILTIN_NAMES", "builtin_images"]

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


@functools.lru_cache(maxsize=None)
def _builtin_one(name):
    import skimage.data  # noqa: PLC0415

    raw = getattr(skimage.data, name)()
    img = to_float_image(raw, f"skimage.data.{name}", as_gray=True)
    img.setflags(write=False)
    return img


def _names(names):
    if names is None:
        return BUILTIN_NAMES
    names = tuple(as_items(names, "names", is_str, is_str, "str"))
    for name in names:
        if name not in _OFFLINE_BUILTINS:
            raise ValueError(
                f"names: unknown or not offline built-in image {name!r}; choose from {', '.join(_OFFLINE_BUILTINS)}"
            )
    return names


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
    names = _names(names)
    hw = parse_size(size)
    imgs = [_builtin_one(name) for name in names]
    if hw is not None:
        imgs = [resize_hw(img, hw) for img in imgs]
    else:
        h = min(img.shape[0] for img in imgs)
        w = min(img.shape[1] for img in imgs)
        imgs = [crop_hw(img, (h, w), name) for img, name in zip(imgs, names)]
    return np.stack(imgs).astype(np.float64, copy=False)
