"""Argument checks shared by the public functions (messages name the argument)."""
from __future__ import annotations

import math
import numbers

import numpy as np

from .backend import get_namespace, is_cupy_array, working_dtype, xp_name


def check_positive(value, name, allow_zero=False, allow_inf=False):
    """Return ``float(value)`` if it is a positive real number, else raise."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.generic)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return v


def as_real_floating(a, name):
    """``a`` as a real floating array (NumPy or CuPy as given; lists become NumPy).

    Floating dtypes follow the package's dtype policy (:func:`varlearn.backend.working_dtype`);
    integers and booleans become float64 as they are (no rescaling).  Complex or non-numeric
    data raise ``ValueError`` / ``TypeError`` naming ``name``.
    """
    if not (isinstance(a, np.ndarray) or is_cupy_array(a)):
        a = np.asarray(a)
    kind = a.dtype.kind
    if kind == "c":
        raise ValueError(f"{name} must be real, got complex dtype {a.dtype}")
    if kind not in "biuf":
        raise TypeError(f"{name} must hold numbers, got dtype {a.dtype}")
    return a.astype(working_dtype(a.dtype) if kind == "f" else np.float64, copy=False)


def check_int(value, name, minimum=0):
    """Return ``int(value)`` if it is an integer >= ``minimum``, else raise."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def check_in_open_interval(value, name, low, high):
    v = check_positive(value, name, allow_zero=True) if low >= 0 else float(value)
    if not (low < v < high):
        raise ValueError(f"{name} must lie in ({low}, {high}), got {value!r}")
    return v


def check_array(a, name, xp=None, ndim=None, shape=None, finite=True):
    """Check that ``a`` is a real floating array of the expected namespace and shape."""
    if not (isinstance(a, np.ndarray) or is_cupy_array(a)):
        raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(a).__name__}")
    kind = "cupy" if is_cupy_array(a) else "numpy"
    if xp is not None and kind != xp_name(xp):
        raise TypeError(
            f"{name} is a {kind} array but the problem's data "
            f"are {xp_name(xp)} arrays; move it explicitly (varlearn.backend.to_device)"
        )
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating array, got dtype {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(a.shape)}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got shape {tuple(a.shape)}")
    if finite:
        xpa = get_namespace(a)
        if not bool(xpa.isfinite(a).all()):
            raise ValueError(f"{name} contains NaN or Inf values")
    return a


def check_theta(theta, n_params, xp=None, name="theta"):
    """Check a hyperparameter vector: 1-D, length ``n_params``, finite, right namespace."""
    if not (isinstance(theta, np.ndarray) or is_cupy_array(theta)):
        raise TypeError(f"{name} must be a 1-D NumPy or CuPy array, got {type(theta).__name__}")
    if theta.ndim != 1 or theta.shape[0] != n_params:
        raise ValueError(
            f"{name} must be a 1-D array of length {n_params}, got shape {tuple(theta.shape)}"
        )
    return check_array(theta, name, xp=xp)
