r"""Huber, log-Student-t and quadratic potentials.

References
----------
.. [3] P. J. Huber, "Robust estimation of a location parameter", Ann. Math. Statist. 35 (1964) 73-101.
.. [4] S. Roth, M. J. Black, "Fields of Experts", Int. J. Comput. Vision 82 (2009) 205-229.
"""
from __future__ import annotations

import math

from .base import Potential, SmoothAbs, _store, _xp

__all__ = ["Huber", "LogStudentT", "Quadratic"]


class Huber(SmoothAbs):
    r"""Huber function [3]_: :math:`t^2/(2\nu)` for :math:`|t|\le\nu`, else :math:`|t| - \nu/2`.

    It is once continuously differentiable; :math:`\varphi''` jumps at
    :math:`|t| = \nu`, so ``d3`` is zero almost everywhere and ``d3_max`` is
    infinite (Hessian-Lipschitz bounds do not exist).  Likewise
    :math:`\partial_\nu\varphi'` jumps by :math:`1/\nu` at :math:`|t| = \nu`, so it has no
    Lipschitz constant and ``d2_dnu_max`` is infinite.  Problems built on it
    report these constants as unknown (``None``), and the hypergradient
    estimates them (``bound_exact`` False).

    References
    ----------
    .. [3] P. J. Huber, Ann. Math. Statist. 35 (1964) 73-101.
    """

    def value(self, t, nu, out=None):
        xp = _xp(t)
        a = xp.abs(t)
        return _store(xp.where(a <= nu, 0.5 * t * t / nu, a - 0.5 * nu), out)

    def d1(self, t, nu, out=None):
        return _store(_xp(t).clip(t / nu, -1.0, 1.0), out)

    def d2(self, t, nu, out=None):
        xp = _xp(t)
        return _store(xp.where(xp.abs(t) <= nu, 1.0 / nu, 0.0).astype(t.dtype, copy=False), out)

    def d3(self, t, nu):
        return 0.0 * t

    def value_dnu(self, t, nu):
        xp = _xp(t)
        return xp.where(xp.abs(t) <= nu, -0.5 * t * t / (nu * nu), -0.5 + 0.0 * t)

    def d1_dnu(self, t, nu, out=None):
        xp = _xp(t)
        return _store(xp.where(xp.abs(t) <= nu, -t / (nu * nu), 0.0 * t), out)

    def d2_dnu(self, t, nu):
        xp = _xp(t)
        return xp.where(xp.abs(t) <= nu, -1.0 / (nu * nu) + 0.0 * t, 0.0 * t)

    def d3_max(self, nu):
        return math.inf

    def d2_dnu_max(self, nu):
        # d_nu phi' = -t / nu^2 inside |t| <= nu and 0 outside: a jump of 1/nu, no Lipschitz constant
        return math.inf


class LogStudentT(Potential):
    r"""Log-Student-t [4]_: :math:`\varphi(t;\nu) = \log(1 + t^2/\nu^2)`.

    Non-convex: :math:`\varphi'' \ge -1/(4\nu^2)`, so a denoising problem with
    this potential is strongly convex only when the data term dominates.

    References
    ----------
    .. [4] S. Roth, M. J. Black, Int. J. Comput. Vision 82 (2009) 205-229.
    """

    convex = False
    homogeneity = 0

    def value(self, t, nu, out=None):
        return _store(_xp(t).log1p(t * t / (nu * nu)), out)

    def d1(self, t, nu, out=None):
        return _store(2.0 * t / (nu * nu + t * t), out)

    def d2(self, t, nu, out=None):
        s = nu * nu + t * t
        return _store(2.0 * (nu * nu - t * t) / (s * s), out)

    def d3(self, t, nu):
        s = nu * nu + t * t
        return 4.0 * t * (t * t - 3.0 * nu * nu) / (s * s * s)

    def value_dnu(self, t, nu):
        return -2.0 * t * t / (nu * (nu * nu + t * t))

    def d1_dnu(self, t, nu, out=None):
        s = nu * nu + t * t
        return _store(-4.0 * t * nu / (s * s), out)

    def d2_dnu(self, t, nu):
        s = nu * nu + t * t
        # d/dnu 2(nu^2 - t^2) s^-2 = 4 nu s^-2 - 8 nu (nu^2 - t^2) s^-3
        return 4.0 * nu / (s * s) - 8.0 * nu * (nu * nu - t * t) / (s * s * s)

    def d1_max(self, nu):
        # 2t / (nu^2 + t^2) is largest at t = nu
        return 1.0 / nu

    def d2_max(self, nu):
        return 2.0 / (nu * nu)

    def d2_min(self, nu):
        # minimum of 2 (nu^2 - t^2) / (nu^2 + t^2)^2 is at t^2 = 3 nu^2
        return -0.25 / (nu * nu)

    def d3_max(self, nu):
        # |4 t (t^2 - 3 nu^2)| / s^3 has its critical points at t^4 - 6 t^2 nu^2 + nu^4 = 0;
        # the larger value is at t^2 = (3 - 2 sqrt 2) nu^2
        a = 3.0 - 2.0 * math.sqrt(2.0)
        t = math.sqrt(a)
        return 4.0 * t * abs(a - 3.0) / ((1.0 + a) ** 3) / (nu ** 3)

    def d2_dnu_max(self, nu):
        # with u = t^2/nu^2: d2_dnu = 4 (3u - 1) / (nu^3 (1 + u)^3); |.| is largest at u = 0
        return 4.0 / (nu ** 3)


class Quadratic(Potential):
    r""":math:`\varphi(t) = t^2/2` (no shape parameter; ``nu`` is ignored)."""

    has_param = False

    def value(self, t, nu=None, out=None):
        return _store(0.5 * t * t, out)

    def d1(self, t, nu=None, out=None):
        return _store(1.0 * t, out)

    def d2(self, t, nu=None, out=None):
        return _store(0.0 * t + 1.0, out)

    def d3(self, t, nu=None):
        return 0.0 * t

    def hess_apply(self, t, nu, v, out=None):
        return _store(1.0 * v, out)

    def value_dnu(self, t, nu=None):
        return 0.0 * t

    def d1_dnu(self, t, nu=None, out=None):
        return _store(0.0 * t, out)

    def d2_dnu(self, t, nu=None):
        return 0.0 * t

    def d1_max(self, nu=None):
        return math.inf

    def d2_max(self, nu=None):
        return 1.0

    def d2_min(self, nu=None):
        return 1.0

    def d3_max(self, nu=None):
        return 0.0

    def d2_dnu_max(self, nu=None):
        return 0.0
