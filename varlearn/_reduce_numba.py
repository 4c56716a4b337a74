"""numba reductions for NumPy arrays (see :mod:`varlearn.linalg`).

The sum is split into blocks of ``_BLOCK`` entries whose partial sums (float64)
are added in block order, so the result does not depend on the number of
threads (:func:`varlearn._accel.run_chunks`).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from . import _accel

_BLOCK = 1 << 14


@njit(cache=True, nogil=True)
def _dot_blocks(a, b, acc, c0, c1):
    n = a.shape[0]
    for c in range(c0, c1):
        s = 0.0
        for i in range(c * _BLOCK, min(n, (c + 1) * _BLOCK)):
            s += a[i] * b[i]
        acc[c] = s


def dot(a, b):
    """sum(a * b) over flattened contiguous arrays, accumulated in float64."""
    n_chunks = max(1, -(-a.shape[0] // _BLOCK))
    acc = np.empty(n_chunks)
    _accel.run_chunks(_dot_blocks, n_chunks, (a, b, acc))
    return float(acc.sum())
