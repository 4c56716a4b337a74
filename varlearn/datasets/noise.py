"""Synthetic white Gaussian noise."""
from __future__ import annotations

import math
import numbers

import numpy as np

from ..backend import is_cupy_array
from ._common import is_int

__all__ = ["add_noise"]


def _as_rng(rng):
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or is_int(rng) or isinstance(rng, (np.random.SeedSequence, np.random.BitGenerator)):
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
        moved to CuPy explicitly when ``images`` is a CuPy array.

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
    on_cupy = is_cupy_array(images)
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
        from ..backend import to_device  # noqa: PLC0415

        noise = to_device(noise, "cupy")
    return images + noise
