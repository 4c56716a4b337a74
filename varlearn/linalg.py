"""Inner products and norms that are safe to interleave with numba kernels.

NumPy's ``vdot``/``linalg.norm`` call BLAS; with a multi-threaded OpenBLAS its
worker threads keep spinning after each call and steal the cores from numba's
parallel kernels (measured on 2 cores: a fused TV FISTA step went from 0.6 ms
to 8–13 ms when each step was followed by one ``np.vdot``).  When the numba
kernels are in use, the reductions in the hot loops therefore run as numba
reductions too; otherwise they are ``xp.vdot``.
"""
from __future__ import annotations

import math

import numpy as np

from . import _accel
from .backend import get_namespace

__all__ = ["vdot", "norm", "norm64", "gradient_step", "gamma"]

# below this many entries a parallel region costs more than BLAS (measured: 2 ms per call on 10 entries)
_NUMBA_MIN_SIZE = 1 << 15


def _sum_products(xp, a, b) -> float:
    """``sum(a * b)`` for arrays of namespace ``xp``: the numba reduction (float64 accumulation) where it
    applies, else ``xp.vdot``."""
    if xp is np and a.size >= _NUMBA_MIN_SIZE and a.dtype.kind == "f" and a.dtype == b.dtype \
            and a.flags.c_contiguous and b.flags.c_contiguous:
        k = _accel.numba_module("_reduce_numba")
        if k is not None:
            return float(k.dot(a.reshape(-1), b.reshape(-1)))
    return float(xp.vdot(a.ravel(), b.ravel()))


def vdot(a, b) -> float:
    """``sum(a * b)`` over all entries, as a Python float (one host sync on CuPy)."""
    return _sum_products(get_namespace(a, b), a, b)


def norm(a) -> float:
    """Euclidean norm of all entries of ``a``, as a Python float."""
    return math.sqrt(max(_sum_products(get_namespace(a), a, a), 0.0))


def norm64(a) -> float:
    """Euclidean norm of all entries of ``a`` computed in float64 (an array of another dtype is cast first).

    Every square and every partial sum is a float64 operation, so the relative error of
    the result is at most about ``n`` times the float64 unit roundoff (``n`` entries).
    """
    xp = get_namespace(a)
    if a.dtype != xp.float64:
        a = a.astype(xp.float64)
    return math.sqrt(max(_sum_products(xp, a, a), 0.0))


def gradient_step(z, g, step, out):
    """The end of a fused pass: ``g`` (``step`` None) or ``z - step * g``, written into ``out`` when given.

    ``out`` (allocated like ``z`` when None and a step is taken) must not alias ``z``.
    """
    if step is None:
        if out is None:
            return g
        out[...] = g
        return out
    xp = get_namespace(z, g)
    if out is None:
        out = xp.empty_like(z)
    return xp.subtract(z, step * g, out=out)


def gamma(k, dtype):
    r""":math:`\gamma_k = k u / (1 - k u)` for the unit roundoff ``u`` of ``dtype`` (``inf`` when ``k u >= 1/2``).

    The constant of the rounding bound :math:`|fl(a^Tb) - a^Tb| \le \gamma_k |a|^T|b|` of a
    sum of ``k`` products (N. J. Higham, *Accuracy and Stability of Numerical
    Algorithms*, 2nd ed., SIAM, 2002, §3.1).
    """
    ku = k * float(np.finfo(dtype).eps) / 2.0
    return ku / (1.0 - ku) if ku < 0.5 else math.inf
