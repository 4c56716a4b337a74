r"""The smoothed ℓ1 potentials: scalar :class:`SmoothedL1` and the group :class:`GroupSmoothedL1`.

The formulas are written once here for NumPy and CuPy (on CuPy, with accelerators
on, the scalar ones run as fused elementwise kernels); the numba and CUDA kernels of
the registered (operator, potential) pairs have their own copies
(:mod:`varlearn.regularizers._kernels`).

References
----------
.. [1] L. I. Rudin, S. Osher, E. Fatemi, Physica D 60 (1992) 259-268.
.. [2] C. R. Vogel, M. E. Oman, SIAM J. Sci. Comput. 17 (1996) 227-238.
"""
from __future__ import annotations

import functools

from .. import _accel
from ..backend import get_namespace, is_cupy_array
from .base import SmoothAbs, _store, _xp

__all__ = ["SmoothedL1", "GroupSmoothedL1"]


# CuPy: the smoothed-l1 formulas as fused elementwise kernels (one pass, no temporaries)
_CUDA_SOURCES = {
    "value": ("T t, T nu", "T y", "y = sqrt(t * t + nu * nu)"),
    "d1": ("T t, T nu", "T y", "y = t / sqrt(t * t + nu * nu)"),
    "d2": ("T t, T nu", "T y", "T s = t * t + nu * nu; y = nu * nu / (s * sqrt(s))"),
    "hess": ("T t, T nu, T v", "T y", "T s = t * t + nu * nu; y = v * (nu * nu / (s * sqrt(s)))"),
}
_CUDA_KERNELS: dict = {}


def _cuda(name, t, nu, *rest, out=None):
    """Run the CuPy kernel ``name`` of the smoothed l1 on ``t`` (``None`` on NumPy or accelerators off)."""
    if not is_cupy_array(t) or not _accel.accelerated():
        return None
    import cupy

    k = _CUDA_KERNELS.get(name)
    if k is None:
        k = _CUDA_KERNELS[name] = cupy.ElementwiseKernel(*_CUDA_SOURCES[name], f"varlearn_smoothed_l1_{name}")
    nu = t.dtype.type(nu) if isinstance(nu, (int, float)) else cupy.asarray(nu, dtype=t.dtype)
    args = (t, nu) + tuple(a.astype(t.dtype, copy=False) for a in rest)
    return k(*args) if out is None else k(*args, out)


def _cuda_first(name):
    """Decorate a SmoothedL1 method: CuPy input (accelerators on) runs the fused kernel ``name``."""
    def deco(method):
        @functools.wraps(method)
        def wrapper(self, t, nu, *rest, out=None):
            res = _cuda(name, t, nu, *rest, out=out)
            return method(self, t, nu, *rest, out=out) if res is None else res
        return wrapper
    return deco


def _square_plus(t, nu, out):
    """``t * t + nu * nu`` (into ``out`` when given)."""
    s = _xp(t).multiply(t, t, out=out)
    s += nu * nu
    return s


class _SmoothedL1Constants(SmoothAbs):
    """The bound constants shared by :class:`SmoothedL1` and :class:`GroupSmoothedL1`."""

    d1_eval_ulps = 8.0

    def d3_max(self, nu):
        # |phi'''| = 3 nu^2 |t| / s^{5/2} is largest at t = nu / 2
        return 3.0 * 0.5 / (1.25 ** 2.5) / (nu * nu)

    def d2_dnu_max(self, nu):
        # with u = t^2/nu^2: d2_dnu = (2u - 1) / (nu^2 (1 + u)^{5/2}); |.| is largest at u = 0
        return 1.0 / (nu * nu)


class SmoothedL1(_SmoothedL1Constants):
    r""":math:`\varphi(t;\nu) = \sqrt{t^2 + \nu^2}`, a smooth approximation of :math:`|t|` [2]_.

    References
    ----------
    .. [2] C. R. Vogel, M. E. Oman, SIAM J. Sci. Comput. 17 (1996) 227-238.
    """

    @_cuda_first("value")
    def value(self, t, nu, out=None):
        s = _square_plus(t, nu, out)
        return _xp(t).sqrt(s, out=s)

    @_cuda_first("d1")
    def d1(self, t, nu, out=None):
        r = self.value(t, nu, out=None if out is None or out is t else out)
        return _xp(t).divide(t, r, out=r if out is None else out)

    @_cuda_first("hess")
    def hess_apply(self, t, nu, v, out=None):
        # v nu^2 / s^{3/2}, s = t^2 + nu^2: one temporary, one square root (out may be t or v)
        xp = _xp(t)
        s = _square_plus(t, nu, None)
        out = xp.divide(v, s, out=out)
        xp.sqrt(s, out=s)
        out /= s
        out *= nu * nu
        return out

    def d1_hess_apply(self, t, nu, v, out_d1=None, out_hv=None):
        # s = t^2 + nu^2 and r = sqrt(s) once: d1 = t / r, hv = v nu^2 / (s r); no temporary
        # beyond the two outputs (CuPy with accelerators: the two fused kernels instead)
        if is_cupy_array(t) and _accel.accelerated():
            return super().d1_hess_apply(t, nu, v, out_d1=out_d1, out_hv=out_hv)
        xp = get_namespace(t, v)
        s = _square_plus(t, nu, out_hv)
        r = xp.sqrt(s, out=out_d1)
        s *= r
        hv = xp.divide(v, s, out=s)
        if not (isinstance(nu, float) and nu == 1.0):
            hv *= nu * nu
        return xp.divide(t, r, out=r), hv

    @_cuda_first("d2")
    def d2(self, t, nu, out=None):
        s = _square_plus(t, nu, out)
        s *= _xp(t).sqrt(s)
        return _xp(t).divide(nu * nu, s, out=s)

    def d3(self, t, nu):
        s = t * t + nu * nu
        return -3.0 * nu * nu * t / (s * s * _xp(t).sqrt(s))

    def value_dnu(self, t, nu):
        return nu / _xp(t).sqrt(t * t + nu * nu)

    def d1_dnu(self, t, nu, out=None):
        # -t nu / s^{3/2}: one temporary, one square root (out may be t)
        xp = _xp(t)
        s = _square_plus(t, nu, None)
        out = xp.multiply(t, -nu, out=out)
        out /= s
        xp.sqrt(s, out=s)
        out /= s
        return out

    def d2_dnu(self, t, nu):
        s = t * t + nu * nu
        # d/dnu [nu^2 s^{-3/2}] = 2 nu s^{-3/2} - 3 nu^3 s^{-5/2}
        return nu * (2.0 * s - 3.0 * nu * nu) / (s * s * _xp(t).sqrt(s))

    def d1_rel_cond(self, nu):  # noqa: ARG002
        # |t| nu^2 / s^{3/2} is largest at t^2 = nu^2 / 2: 2 / 3^{3/2}
        return 2.0 / 3.0 ** 1.5


class GroupSmoothedL1(_SmoothedL1Constants):
    r"""Group potential :math:`\varphi(t;\nu) = \sqrt{|t|^2 + \nu^2}`, :math:`|t|` the Euclidean
    norm along ``group_axis`` (``-3``, the channel axis of ``(..., C, H, W)``).

    With :class:`~varlearn.operators.FiniteDifference` it gives isotropic
    smoothed TV [1]_ [2]_.  Writing :math:`r = \sqrt{|t|^2+\nu^2}`: the
    gradient is :math:`t/r`, the Hessian :math:`(I - tt^T/r^2)/r` (eigenvalues
    in :math:`[\nu^2/r^3, 1/r]`), :math:`\partial_\nu` of the gradient is
    :math:`-\nu t/r^3`.  Bound constants (checked by the tests): :math:`\sup\|\nabla\varphi\| = 1`, Hessian in
    :math:`[0, 1/\nu]`, its Lipschitz constant in operator norm
    :math:`1.5/1.25^{5/2}/\nu^2` (the scalar one, attained along ``t`` at
    :math:`|t| = \nu/2`), :math:`\partial_\nu\nabla\varphi` is
    :math:`1/\nu^2`-Lipschitz (the proofs are in the comment above :meth:`d1_rel_cond`).
    ``nu`` must be a scalar or broadcast against the reduced shape (one smoothing per group).

    References
    ----------
    .. [1] L. I. Rudin, S. Osher, E. Fatemi, Physica D 60 (1992) 259-268.
    .. [2] C. R. Vogel, M. E. Oman, SIAM J. Sci. Comput. 17 (1996) 227-238.
    """

    group_axis = -3

    def _r(self, t, nu, keepdims=True):
        xp = _xp(t)
        s = xp.sum(t * t, axis=self.group_axis, keepdims=keepdims)
        s += nu * nu
        return xp.sqrt(s, out=s)

    def value(self, t, nu, out=None):
        return _store(self._r(t, nu, keepdims=False), out)

    def d1(self, t, nu, out=None):
        return _xp(t).divide(t, self._r(t, nu), out=out)

    def d2(self, t, nu, out=None):
        # diagonal of (I - t t^T / r^2) / r: 1/r - t_i^2 / r^3
        xp = _xp(t)
        r = self._r(t, nu)
        r3 = r * r * r
        d = xp.multiply(t, t, out=out)
        d /= -r3
        d += 1.0 / r
        return d

    def hess_apply(self, t, nu, v, out=None):
        return self._hess(t, self._r(t, nu), v, out)

    def d1_hess_apply(self, t, nu, v, out_d1=None, out_hv=None):
        # the group norm r once for both
        r = self._r(t, nu)
        hv = self._hess(t, r, v, out_hv)
        return _xp(t).divide(t, r, out=out_d1), hv

    def _hess(self, t, r, v, out):
        # (v - t (t.v) / r^2) / r per group (out may be t or v)
        xp = get_namespace(t, v)
        c = xp.sum(t * v, axis=self.group_axis, keepdims=True)
        c /= r * r
        w = t * c
        out = xp.subtract(v, w, out=out)
        out /= r
        return out

    def value_dnu(self, t, nu):
        return nu / self._r(t, nu, keepdims=False)

    def d1_dnu(self, t, nu, out=None):
        xp = _xp(t)
        r = self._r(t, nu)
        r *= r * r
        return xp.divide(t * (-nu), r, out=out)

    def d2_dnu(self, t, nu):
        # d/dnu of 1/r - t_i^2/r^3 = -nu/r^3 + 3 nu t_i^2 / r^5
        r = self._r(t, nu)
        r2 = r * r
        return nu * (3.0 * t * t / r2 - 1.0) / (r2 * r)

    # The group potential has the scalar constants, read with |t| the Euclidean norm of the group
    # vector and operator norms (tests/test_composition.py checks each, and that it is attained):
    # |t / r| < 1; Hessian (I - t t^T / r^2) / r with eigenvalues in [nu^2 / r^3, 1 / r], so in
    # [0, 1/nu]; with t = a e_1 and a unit direction d, dH[d] has, in the plane of e_1 and d, the
    # entries (1,1) = -3 a nu^2 d_1 / s^{5/2}, (2,2) = -a d_1 / s^{3/2}, (1,2) = -a d_2 / s^{3/2}, and
    # -a d_1 / s^{3/2} on the rest: its norm is largest for d = e_1, the scalar d3_max; d/dt of
    # -nu t / r^3 has eigenvalues -nu / r^3 (across t) and -nu (nu^2 - 2|t|^2) / r^5 (along t), both
    # of modulus <= 1 / nu^2 (attained at t = 0): the scalar d2_dnu_max.

    def d1_rel_cond(self, nu):  # noqa: ARG002
        # |t| ||H(t)|| = |t| / r < 1
        return 1.0
