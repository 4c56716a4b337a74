"""Transitional alias (issue 11): the former TV kernel API on top of :mod:`varlearn.regularizers._kernels.fd_cuda`.

The kernels are registered against their (operator, potential) pair and found with
:func:`varlearn.regularizers._kernels.find_kernel`; this module keeps the old functions
(``nu2`` the squared smoothing, ``iso`` the form) for the callers not yet moved, and goes
away once they are.
"""
from __future__ import annotations

import math

from .regularizers._kernels import fd_cuda as _k

__all__ = ["fista_step", "grad", "hvp", "value"]


def _set(iso):
    return _k.ISOTROPIC if iso else _k.ANISOTROPIC


def fista_step(x, xprev, y, beta, tau, lam, nu2, iso, out):
    """z = x + beta (x - xprev); g = (z - y) + lam D^T phi'(D z); out = z - tau g; returns sum(g**2)."""
    return _set(iso).fused_grad(x, y, 1.0, lam, math.sqrt(nu2), xprev, beta, tau, out)


def grad(x, y, data_w, lam, nu2, iso, out):
    """out = data_w (x - y) + lam D^T phi'(D x); returns sum(out**2)."""
    return _set(iso).fused_grad(x, y, data_w, lam, math.sqrt(nu2), None, 0.0, None, out)


def hvp(x, v, data_w, lam, nu2, iso, out):
    """out = data_w v + lam D^T [d^2 phi(D x)] D v; returns out."""
    _set(iso).fused_hvp(x, v, data_w, lam, math.sqrt(nu2), out)
    return out


def value(x, lam, nu2, iso):
    """lam * the sum of the smoothed TV terms that exist."""
    return _set(iso).value(x, lam, math.sqrt(nu2))
