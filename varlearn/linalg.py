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

__all__ = ["vdot", "norm"]

# below this many entries a parallel region costs more than BLAS (measured: 2 ms per call on 10 entries)
_NUMBA_MIN_SIZE = 1 << 15


def vdot(a, b) -> float:
    """``sum(a * b)`` over all entries, as a Python float (one host sync on CuPy)."""
    xp = get_namespace(a, b)
    if xp_name(xp) == "numpy" and a.size >= _NUMBA_MIN_SIZE and a.dtype.kind == "f" and a.dtype == b.dtype:
        k = _accel.numba_module("_reduce_numba")
        if k is not None and a.flags.c_contiguous and b.flags.c_contiguous:
            return float(k.dot(a.reshape(-1), b.reshape(-1)))
    return float(xp.vdot(a.ravel(), b.ravel()))


def norm(a) -> float:
    """Euclidean norm of all entries of ``a``, as a Python float."""
    return math.sqrt(max(vdot(a, a), 0.0))
