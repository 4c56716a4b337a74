"""numba reductions for NumPy arrays (see :mod:`varlearn.linalg`)."""
from __future__ import annotations

from numba import njit, prange


@njit(parallel=True, cache=True)
def dot(a, b):
    """sum(a * b) over flattened contiguous arrays, accumulated in float64."""
    n = a.shape[0]
    s = 0.0
    for i in prange(n):
        s += a[i] * b[i]
    return s
