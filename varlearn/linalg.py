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

from . import _accel
from .backend import get_namespace, xp_name

__all__ = ["vdot", "norm", "norm64"]

# below this many entries a parallel region costs more than BLAS (measured: 2 ms per call on 10 entries)
_NUMBA_MIN_SIZE = 1 << 15


def _numba_dot(a, b):
    """``sum(a * b)`` by the numba reduction (float64 accumulation), or None where it does not apply."""
    if xp_name(get_namespace(a, b)) == "numpy" and a.size >= _NUMBA_MIN_SIZE and a.dtype.kind == "f" \
            and a.dtype == b.dtype and a.flags.c_contiguous and b.flags.c_contiguous:
        k = _accel.numba_module("_reduce_numba")
        if k is not None:
            return float(k.dot(a.reshape(-1), b.reshape(-1)))
    return None


def vdot(a, b) -> float:
    """``sum(a * b)`` over all entries, as a Python float (one host sync on CuPy)."""
    s = _numba_dot(a, b)
    if s is not None:
        return s
    xp = get_namespace(a, b)
    return float(xp.vdot(a.ravel(), b.ravel()))


def norm(a) -> float:
    """Euclidean norm of all entries of ``a``, as a Python float."""
    return math.sqrt(max(vdot(a, a), 0.0))


def norm64(a) -> float:
    """Euclidean norm of all entries of ``a`` computed in float64 (an array of another dtype is cast first).

    Every square and every partial sum is a float64 operation, so the relative error of
    the result is at most about ``n`` times the float64 unit roundoff (``n`` entries).
    """
    xp = get_namespace(a)
    return norm(a if a.dtype == xp.float64 else a.astype(xp.float64))
