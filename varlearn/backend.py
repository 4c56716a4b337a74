"""Array backends: NumPy always, CuPy when it is installed *and* usable.

Everything below the front ends takes its array namespace ``xp`` from its
inputs (:func:`get_namespace`).  Data never moves between host and device
silently: the only transfers are :func:`to_numpy` (device -> host) and
:func:`to_device` (explicit, host -> the namespace asked for).
"""
from __future__ import annotations

import functools
import logging

import numpy as np

from . import _accel

logger = logging.getLogger("varlearn")

__all__ = [
    "get_namespace",
    "is_cupy_array",
    "cupy_usable",
    "cupy_unusable_reason",
    "to_numpy",
    "to_device",
    "as_float_array",
    "working_dtype",
    "xp_name",
    "random_normal",
]


def is_cupy_array(a) -> bool:
    """Whether ``a`` is a CuPy array (without importing CuPy)."""
    return type(a).__module__.split(".")[0] == "cupy"


@functools.lru_cache(maxsize=1)
def _probe_cupy():
    """Return ``(module, None)`` if CuPy can allocate and compute, else ``(None, reason)``.

    ``import cupy`` can succeed on a machine without a GPU or driver; the first
    allocation or kernel launch then fails.  So we import, allocate, run one
    elementwise kernel and one reduction, and copy back.
    """
    try:
        import cupy  # noqa: PLC0415
    except Exception as exc:  # ImportError, or a broken CUDA install
        return None, f"cupy cannot be imported ({type(exc).__name__}: {exc})"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None, "cupy is installed but no CUDA device is visible"
        a = cupy.arange(8, dtype=cupy.float64)
        s = float((a * 2.0).sum())
        if s != 56.0:
            return None, f"cupy computed a wrong test sum ({s} instead of 56)"
    except Exception as exc:
        return None, f"cupy is installed but not usable ({type(exc).__name__}: {exc})"
    return cupy, None


def cupy_usable() -> bool:
    """Whether CuPy is installed and a GPU computation actually works."""
    return _probe_cupy()[0] is not None


def cupy_unusable_reason() -> str | None:
    """Why CuPy is not usable, or ``None`` when it is."""
    return _probe_cupy()[1]


def _cupy():
    mod, reason = _probe_cupy()
    if mod is None:
        raise RuntimeError(f"the CuPy backend was requested but {reason}")
    return mod


def get_namespace(*arrays):
    """Return the array namespace (``numpy`` or ``cupy``) of the given arrays.

    ``None``, Python scalars and NumPy scalars are ignored.  Mixing NumPy and
    CuPy arrays raises :class:`TypeError` (we never copy between devices
    behind the user's back).  With no arrays at all, NumPy is returned.

    Every computation looks up its namespace here, so this is also where the
    package's thread policy is applied (:func:`varlearn.set_threads`; one
    clock read between its re-evaluations).
    """
    _accel.sync_threads()
    found = None
    for a in arrays:
        if a is None or isinstance(a, (int, float, complex, np.generic)):
            continue
        if is_cupy_array(a):
            kind = "cupy"
        elif isinstance(a, np.ndarray):
            kind = "numpy"
        else:
            continue
        if found is None:
            found = kind
        elif found != kind:
            raise TypeError(
                "mixed array backends: got both NumPy and CuPy arrays; move the "
                "data explicitly with varlearn.backend.to_device or to_numpy"
            )
    if found == "cupy":
        import cupy  # noqa: PLC0415

        return cupy
    return np


def xp_name(xp) -> str:
    """``"numpy"`` or ``"cupy"``."""
    return "cupy" if xp.__name__.startswith("cupy") else "numpy"


def to_numpy(a):
    """Copy to the host if ``a`` is a CuPy array; NumPy input is returned as is."""
    if is_cupy_array(a):
        return a.get()
    return np.asarray(a)


def to_device(a, backend):
    """Explicitly place ``a`` on ``backend`` (``"numpy"``, ``"cupy"`` or a namespace)."""
    name = backend if isinstance(backend, str) else xp_name(backend)
    if name == "numpy":
        return to_numpy(a)
    if name == "cupy":
        return _cupy().asarray(a)
    raise ValueError(f"backend must be 'numpy' or 'cupy', got {backend!r}")


def working_dtype(dtype):
    """The floating dtype varlearn computes in for input of ``dtype``.

    float32 and float64 are kept, float16 becomes float32, integers, booleans
    and other floats become float64.  Complex input raises ``ValueError``.
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        raise ValueError(f"complex data is not supported, got dtype {dtype}")
    if dtype == np.float32 or dtype == np.float16:
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def as_float_array(a, name="array", xp=None, dtype=None, check_finite=True):
    """Convert ``a`` to a floating array in its own namespace.

    Integer images are rescaled to [0, 1] by their dtype's maximum (uint8 ->
    /255, uint16 -> /65535) and become float64; float32/float64 are kept
    unless ``dtype`` is given.  NaN or Inf raises ``ValueError`` naming
    ``name`` when ``check_finite``.
    """
    if xp is None:
        xp = get_namespace(a)
    if not (isinstance(a, np.ndarray) or is_cupy_array(a)):
        a = np.asarray(a)
        if xp_name(xp) == "cupy":
            raise TypeError(f"{name} must be a CuPy array on the CuPy backend, got {type(a).__name__}")
    kind = a.dtype.kind
    if kind == "c":
        raise ValueError(f"{name} must be real, got complex dtype {a.dtype}")
    if kind not in "biuf":
        raise TypeError(f"{name} must hold numbers, got dtype {a.dtype}")
    if kind in "ui" and dtype is None:
        info = np.iinfo(a.dtype)
        out = a.astype(np.float64) / float(info.max)
        if kind == "i":
            out = xp.clip(out, 0.0, 1.0) if a.min() < 0 else out
    elif kind == "b":
        out = a.astype(np.float64)
    else:
        target = working_dtype(a.dtype) if dtype is None else np.dtype(dtype)
        out = a.astype(target, copy=False) if kind == "f" else a.astype(target)
    if check_finite and not bool(xp.isfinite(out).all()):
        n_bad = int((~xp.isfinite(out)).sum())
        raise ValueError(f"{name} contains {n_bad} NaN or Inf value(s)")
    return out


def _host_generator(rng, name="rng"):
    """``rng`` as a :class:`numpy.random.Generator` (a seed is turned into one)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer, np.random.SeedSequence)):
        if isinstance(rng, (int, np.integer)) and rng < 0:
            raise ValueError(f"{name} must be a non-negative seed, got {rng!r}")
        return np.random.default_rng(rng)
    raise TypeError(
        f"{name} must be a seed (int, numpy.random.SeedSequence, None) or a numpy.random.Generator, "
        f"got {type(rng).__name__}"
    )


def random_normal(xp, shape, dtype, rng=None):
    """Standard-normal array of ``shape`` and ``dtype``, drawn on the device of ``xp``.

    Parameters
    ----------
    xp : module
        ``numpy`` or ``cupy``: the array is created there (no host-to-device copy on CuPy).
    shape : int or tuple of int
    dtype : dtype-like
        A floating dtype (float32 or float64; float16 is drawn in float32 and cast).
    rng : int, numpy.random.SeedSequence, numpy.random.Generator or None
        The source of randomness.  A seed is turned into
        ``numpy.random.default_rng(rng)``; ``None`` is fresh OS entropy (not reproducible).
        A ``Generator`` is advanced in place, so its state (e.g. saved in a checkpoint)
        fixes every later draw.

    Returns
    -------
    array of ``xp``

    Notes
    -----
    Reproducibility rule:

    - NumPy: the result is exactly ``rng.standard_normal(shape).astype(dtype)``
      (float64 draws rounded to ``dtype``); the generator advances as by that call.
    - CuPy: the host generator is advanced by exactly one draw,
      ``s = rng.integers(0, 2**63)``, and the array is
      ``cupy.random.RandomState(s).standard_normal(shape, dtype)`` computed on the
      device (float64 or float32 draws; no host array of ``shape`` is made).  For the same
      generator state the values are reproducible for a given CuPy version, but they differ
      from the NumPy ones (the device stream is another generator).

    In both cases the host generator's state after the call depends only on its
    state before it and on the backend, never on the device, so a run resumed from
    a checkpointed generator state repeats the same draws.
    """
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    gen = _host_generator(rng)
    if xp_name(xp) == "cupy":
        seed = int(gen.integers(0, 2**63))
        cp = _cupy()
        draw_dtype = np.float64 if dtype == np.float64 else np.float32
        out = cp.random.RandomState(seed).standard_normal(shape, dtype=draw_dtype)
        return out if out.dtype == dtype else out.astype(dtype)
    return gen.standard_normal(shape).astype(dtype, copy=False)
