"""Image quality metrics: PSNR and SSIM, defined once for the whole package.

Conventions
-----------
* ``x`` is the image being judged (noisy or denoised), ``reference`` the
  clean image; both have the same shape, ``(H, W)`` for one image or
  ``(N, H, W)`` (any leading axes) for a stack.  The last two axes are the
  image axes.
* ``data_range`` is the width of the intensity scale of the reference, 1.0
  for the [0, 1] images every varlearn loader returns.  It is checked: a
  reference whose values spread over more than ``data_range`` (for example
  0..255 data with the default ``data_range=1.0``) is refused with a
  :class:`ValueError` instead of giving a meaningless number.
* Clipping is never silent.  With ``clip=False`` (the default) both images
  are used exactly as given: an estimate that overshoots the range is
  charged for the overshoot.  With ``clip=True`` the estimate ``x`` is
  clipped to ``[0, data_range]`` first (what a saved 8-bit image would show;
  earlier varlearn versions did this without saying so); the reference must
  then already lie in ``[0, data_range]``, otherwise a :class:`ValueError`
  is raised, since clipping the ground truth would change it.
* Identical images have an MSE of 0 and a PSNR of ``inf`` (no floor is
  applied).  NaN or infinite pixels raise :class:`ValueError`.

Backends
--------
PSNR runs in the namespace of its inputs (NumPy or CuPy, from
:func:`varlearn.backend.get_namespace`; mixing them raises
:class:`TypeError`), in float64.  :func:`psnr` and :func:`mean_psnr` return
Python floats; :func:`psnr_per_image` returns an array in the inputs'
namespace.  SSIM uses :func:`skimage.metrics.structural_similarity`, which
is host-only: CuPy inputs are copied to the host explicitly with
:func:`varlearn.backend.to_numpy` (one copy of both arrays per call), and the
results are NumPy values.

References
----------
Z. Wang, A. C. Bovik, H. R. Sheikh and E. P. Simoncelli, "Image quality
assessment: from error visibility to structural similarity", IEEE Trans.
Image Process. 13(4):600-612, 2004.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .backend import get_namespace, to_numpy

__all__ = ["psnr", "psnr_per_image", "mean_psnr", "psnr_from_mse", "ssim", "ssim_per_image"]

# Relative slack allowed when checking the reference against data_range
# (rounding in a float32 image rescaled to [0, 1]).
_RANGE_SLACK = 1e-6


def _check_data_range(data_range):
    if isinstance(data_range, (bool, np.bool_)) or not isinstance(data_range, (numbers.Real, np.floating)):
        raise TypeError(f"data_range must be a positive real number, got {type(data_range).__name__}: {data_range!r}")
    value = float(data_range)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"data_range must be a finite number > 0, got {data_range!r}")
    return value


def _check_clip(clip):
    if not isinstance(clip, (bool, np.bool_)):
        raise TypeError(f"clip must be True or False, got {type(clip).__name__}: {clip!r}")
    return bool(clip)


def _prepare(x, reference, data_range, clip, min_ndim):
    """Validate both images and return ``(xp, x, reference, data_range)`` in float64."""
    data_range = _check_data_range(data_range)
    clip = _check_clip(clip)
    xp = get_namespace(x, reference)
    x = xp.asarray(x)
    reference = xp.asarray(reference)
    for name, a in (("x", x), ("reference", reference)):
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got dtype {a.dtype}")
        if a.ndim < min_ndim:
            raise ValueError(f"{name} must have at least {min_ndim} dimensions (..., H, W), got shape {a.shape}")
        if a.size == 0:
            raise ValueError(f"{name} is empty (shape {a.shape})")
    if x.shape != reference.shape:
        raise ValueError(f"x and reference must have the same shape, got {x.shape} and {reference.shape}")
    x = x.astype(xp.float64, copy=False)
    reference = reference.astype(xp.float64, copy=False)
    for name, a in (("x", x), ("reference", reference)):
        if not bool(xp.isfinite(a).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
    lo, hi = float(reference.min()), float(reference.max())
    slack = _RANGE_SLACK * data_range
    if hi - lo > data_range + slack:
        raise ValueError(
            f"reference spans [{lo:.6g}, {hi:.6g}], wider than data_range={data_range:g}; "
            "pass the data_range of the images (e.g. 255 for 8-bit values) or rescale them"
        )
    if clip:
        if lo < -slack or hi > data_range + slack:
            raise ValueError(
                f"clip=True clips x to [0, data_range={data_range:g}], but the reference lies in "
                f"[{lo:.6g}, {hi:.6g}]; use clip=False or the matching data_range"
            )
        x = xp.clip(x, 0.0, data_range)
    return xp, x, reference, data_range


def _psnr_from_mse(xp, mse, data_range):
    with np.errstate(divide="ignore"):
        return 10.0 * xp.log10(data_range**2 / mse)


def psnr_from_mse(mse, *, data_range=1.0):
    """PSNR in dB from mean squared errors: ``10 log10(data_range**2 / mse)``.

    For code that already has per-image MSEs (e.g. from a loss function).

    Parameters
    ----------
    mse : float or array
        Mean squared errors, >= 0 (NumPy or CuPy; the result keeps the namespace).
    data_range : float, optional
        As for :func:`psnr`.

    Returns
    -------
    float or array
        ``inf`` where ``mse`` is 0.

    Raises
    ------
    ValueError
        If an MSE is negative or NaN, or ``data_range`` is not a positive finite number.
    """
    data_range = _check_data_range(data_range)
    if isinstance(mse, (numbers.Real, np.floating)) and not isinstance(mse, (bool, np.bool_)):
        value = float(mse)
        if not value >= 0:
            raise ValueError(f"mse must be >= 0, got {mse!r}")
        return math.inf if value == 0 else 10.0 * math.log10(data_range**2 / value)
    xp = get_namespace(mse)
    mse = xp.asarray(mse, dtype=xp.float64)
    if not bool((mse >= 0).all()):
        raise ValueError("mse must be >= 0 everywhere (got negative or NaN values)")
    return _psnr_from_mse(xp, mse, data_range)


def psnr(x, reference, *, data_range=1.0, clip=False):
    """Peak signal-to-noise ratio of ``x`` against ``reference``, in dB.

    ``PSNR = 10 log10(data_range**2 / MSE)`` with one MSE over *all* pixels
    (for a stack this is the PSNR of the whole batch; see
    :func:`mean_psnr` for the mean of per-image values).

    Parameters
    ----------
    x, reference : array, same shape, at least 2-D
        NumPy or CuPy arrays of real numbers (computed in float64).
    data_range : float, optional
        Width of the intensity scale (default 1.0, for [0, 1] images).  The
        reference may not spread over more than this.
    clip : bool, optional
        Clip ``x`` to ``[0, data_range]`` first (default false: no clipping;
        see the module documentation).

    Returns
    -------
    float
        PSNR in dB; ``inf`` when the images are identical.

    Raises
    ------
    ValueError
        Shapes differ, fewer than 2 dimensions, NaN/Inf pixels, a
        non-positive ``data_range``, or a reference outside the range.
    TypeError
        Non-real data, NumPy mixed with CuPy, a non-bool ``clip``.
    """
    xp, x, reference, data_range = _prepare(x, reference, data_range, clip, 2)
    mse = xp.mean((x - reference) ** 2)
    return float(_psnr_from_mse(xp, mse, data_range))


def psnr_per_image(x, reference, *, data_range=1.0, clip=False):
    """PSNR of every image of a stack (the MSE taken over the last two axes).

    Parameters
    ----------
    x, reference : array, shape (..., H, W)
        As for :func:`psnr`.
    data_range, clip
        As for :func:`psnr`.

    Returns
    -------
    array, shape ``x.shape[:-2]``
        float64 PSNRs in dB, in the inputs' namespace (NumPy or CuPy; a 0-d
        array for one image).  ``inf`` for an image equal to its reference.
    """
    xp, x, reference, data_range = _prepare(x, reference, data_range, clip, 2)
    mse = xp.mean((x - reference) ** 2, axis=(-2, -1))
    return _psnr_from_mse(xp, mse, data_range)


def mean_psnr(x, reference, *, data_range=1.0, clip=False):
    """Mean over the images of a stack of their per-image PSNRs (dB), a float.

    This is the figure most denoising papers report for a test set; it
    differs from :func:`psnr` of the whole batch when the images have
    different errors.  Arguments as for :func:`psnr_per_image`.
    """
    values = psnr_per_image(x, reference, data_range=data_range, clip=clip)
    xp = get_namespace(values)
    return float(xp.mean(values))


def ssim_per_image(x, reference, *, data_range=1.0, clip=False):
    """Structural similarity of every image of a stack, on the host.

    Each image pair goes through :func:`skimage.metrics.structural_similarity`
    with its defaults (7x7 uniform window, K1 = 0.01, K2 = 0.03, the mean
    of the SSIM map over the windows that fit inside the image) and the
    given ``data_range``.

    Parameters
    ----------
    x, reference : array, shape (..., H, W)
        NumPy or CuPy (CuPy data are copied to the host explicitly); H and W
        at least 7.
    data_range, clip
        As for :func:`psnr`.

    Returns
    -------
    numpy.ndarray, shape ``x.shape[:-2]``
        float64 SSIM values in [-1, 1]; 1 for identical images.

    Raises
    ------
    ValueError
        As for :func:`psnr`, or an image smaller than 7x7.
    """
    from skimage.metrics import structural_similarity  # noqa: PLC0415

    _, x, reference, data_range = _prepare(x, reference, data_range, clip, 2)
    x = to_numpy(x)
    reference = to_numpy(reference)
    if min(x.shape[-2:]) < 7:
        raise ValueError(f"ssim needs images of at least 7x7 pixels (the window), got {x.shape[-2]}x{x.shape[-1]}")
    lead = x.shape[:-2]
    flat_x = x.reshape((-1,) + x.shape[-2:])
    flat_r = reference.reshape((-1,) + reference.shape[-2:])
    values = [structural_similarity(a, b, data_range=data_range) for a, b in zip(flat_x, flat_r)]
    return np.asarray(values, dtype=np.float64).reshape(lead)


def ssim(x, reference, *, data_range=1.0, clip=False):
    """SSIM of one image, or the mean SSIM over the images of a stack (a float).

    Arguments as for :func:`ssim_per_image`.
    """
    return float(np.mean(ssim_per_image(x, reference, data_range=data_range, clip=clip)))
