"""Fused NumPy-backend kernels for smoothed total variation (optional, needs numba).

One pass over memory per call: each kernel streams the image rows, keeping a
few rows of differences in small per-image buffers, and parallelises over the
images of the batch.  The NumPy code in :mod:`varlearn.regularizers.tv` is the
reference; the test suite checks these kernels against it.

Conventions: ``x`` has shape ``(N, H, W)`` and is C-contiguous; ``lam`` is the
TV weight, ``nu2`` the squared smoothing, ``iso`` selects the isotropic form.
Forward differences are zero across the last column / row (see
:class:`varlearn.operators.FiniteDifference`).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(inline="always", cache=True)
def _flux_rows(zc, zn, has_next, nu2, iso, ph, pv):
    """phi'(D z) for one row: ph (horizontal) and pv (vertical); zero at the border."""
    w = zc.shape[0]
    for j in range(w):
        a = zc[j + 1] - zc[j] if j < w - 1 else 0.0
        b = zn[j] - zc[j] if has_next else 0.0
        if iso:
            r = np.sqrt(a * a + b * b + nu2)
            ph[j] = a / r
            pv[j] = b / r
        else:
            ph[j] = a / np.sqrt(a * a + nu2)
            pv[j] = b / np.sqrt(b * b + nu2)


@njit(parallel=True, cache=True)
def fista_step(x, xprev, y, beta, tau, lam, nu2, iso, out):
    """z = x + beta (x - xprev); g = (z - y) + lam D^T phi'(D z); out = z - tau g.

    Returns ``sum(g**2)``.  ``out`` must not alias ``x`` or ``xprev``.
    """
    n_img, h, w = x.shape
    acc = np.zeros(n_img)
    for n in prange(n_img):
        zc = np.empty(w, x.dtype)
        zn = np.empty(w, x.dtype)
        ph = np.empty(w, x.dtype)
        pv = np.empty(w, x.dtype)
        pvp = np.zeros(w, x.dtype)
        for j in range(w):
            zc[j] = x[n, 0, j] + beta * (x[n, 0, j] - xprev[n, 0, j])
        s = 0.0
        for i in range(h):
            has_next = i < h - 1
            if has_next:
                for j in range(w):
                    zn[j] = x[n, i + 1, j] + beta * (x[n, i + 1, j] - xprev[n, i + 1, j])
            _flux_rows(zc, zn, has_next, nu2, iso, ph, pv)
            for j in range(w):
                d = pvp[j] - pv[j] - ph[j]
                if j > 0:
                    d += ph[j - 1]
                g = zc[j] - y[n, i, j] + lam * d
                out[n, i, j] = zc[j] - tau * g
                s += g * g
                pvp[j] = pv[j]
            zc, zn = zn, zc
        acc[n] = s
    return acc.sum()


@njit(parallel=True, cache=True)
def grad(x, y, data_w, lam, nu2, iso, out):
    """out = data_w (x - y) + lam D^T phi'(D x); returns ``sum(out**2)``."""
    n_img, h, w = x.shape
    acc = np.zeros(n_img)
    for n in prange(n_img):
        ph = np.empty(w, x.dtype)
        pv = np.empty(w, x.dtype)
        pvp = np.zeros(w, x.dtype)
        s = 0.0
        for i in range(h):
            has_next = i < h - 1
            _flux_rows(x[n, i], x[n, i + 1] if has_next else x[n, i], has_next, nu2, iso, ph, pv)
            for j in range(w):
                d = pvp[j] - pv[j] - ph[j]
                if j > 0:
                    d += ph[j - 1]
                g = data_w * (x[n, i, j] - y[n, i, j]) + lam * d
                out[n, i, j] = g
                s += g * g
                pvp[j] = pv[j]
        acc[n] = s
    return acc.sum()


@njit(parallel=True, cache=True)
def hvp(x, v, data_w, lam, nu2, iso, out):
    """out = data_w v + lam D^T [d^2 phi(D x)] D v."""
    n_img, h, w = x.shape
    for n in prange(n_img):
        ph = np.empty(w, x.dtype)
        pv = np.empty(w, x.dtype)
        pvp = np.zeros(w, x.dtype)
        for i in range(h):
            has_next = i < h - 1
            for j in range(w):
                a = x[n, i, j + 1] - x[n, i, j] if j < w - 1 else 0.0
                b = x[n, i + 1, j] - x[n, i, j] if has_next else 0.0
                c = v[n, i, j + 1] - v[n, i, j] if j < w - 1 else 0.0
                e = v[n, i + 1, j] - v[n, i, j] if has_next else 0.0
                if iso:
                    s = a * a + b * b + nu2
                    r = np.sqrt(s)
                    k = (a * c + b * e) / (s * r)
                    ph[j] = c / r - a * k
                    pv[j] = e / r - b * k
                else:
                    sa = a * a + nu2
                    sb = b * b + nu2
                    ph[j] = nu2 * c / (sa * np.sqrt(sa))
                    pv[j] = nu2 * e / (sb * np.sqrt(sb))
            for j in range(w):
                d = pvp[j] - pv[j] - ph[j]
                if j > 0:
                    d += ph[j - 1]
                out[n, i, j] = data_w * v[n, i, j] + lam * d
                pvp[j] = pv[j]
    return out


@njit(parallel=True, cache=True)
def value(x, lam, nu2, iso):
    """lam * sum of the smoothed TV terms that exist (see the module docstring)."""
    n_img, h, w = x.shape
    acc = np.zeros(n_img)
    for n in prange(n_img):
        s = 0.0
        for i in range(h):
            for j in range(w):
                a = x[n, i, j + 1] - x[n, i, j] if j < w - 1 else 0.0
                b = x[n, i + 1, j] - x[n, i, j] if i < h - 1 else 0.0
                if iso:
                    s += np.sqrt(a * a + b * b + nu2)
                else:
                    if j < w - 1:
                        s += np.sqrt(a * a + nu2)
                    if i < h - 1:
                        s += np.sqrt(b * b + nu2)
        acc[n] = s
    return lam * acc.sum()
