r"""Scalar potentials :math:`\varphi(t; \nu)` applied elementwise.

Each potential has one positive shape parameter :math:`\nu` (a smoothing or
scale; :class:`Quadratic` has none and ignores it).  It provides

* ``value(t, nu)``: :math:`\varphi`,
* ``d1(t, nu)``, ``d2(t, nu)``, ``d3(t, nu)``: derivatives in ``t``,
* ``value_dnu(t, nu)``, ``d1_dnu(t, nu)``, ``d2_dnu(t, nu)``: derivatives in ``nu``,
* ``d1_max(nu)``: :math:`\sup_t |\varphi'|` (``inf`` when unbounded; every potential here
  has :math:`\varphi'(0) = 0`, so also :math:`|\varphi'(t)| \le` ``d2_max`` :math:`|t|`),
* ``d2_max(nu)``: :math:`\sup_t \varphi''` (the Lipschitz constant of :math:`\varphi'`),
* ``d2_min(nu)``: :math:`\inf_t \varphi''` (negative for non-convex potentials),
* ``d3_max(nu)``: :math:`\sup_t |\varphi'''|` (the Lipschitz constant of :math:`\varphi''`),
* ``d2_dnu_max(nu)``: :math:`\sup_t |\partial_\nu \varphi''|` (the Lipschitz constant in
  ``t`` of :math:`\partial_\nu\varphi'`; ``inf`` when :math:`\partial_\nu\varphi'` is not
  Lipschitz, as for :class:`Huber`).

``t`` is an array of any namespace; ``nu`` is a positive scalar or an array
broadcastable against ``t``.  Results follow ``t``'s namespace and dtype.
"""
from __future__ import annotations

import math

__all__ = ["Potential", "SmoothedL1", "Huber", "LogStudentT", "Quadratic", "POTENTIALS"]


class Potential:
    """Base class of elementwise potentials; see the module docstring."""

    #: whether the potential has a shape parameter nu
    has_param = True
    #: whether phi is convex for every nu
    convex = True

    def value(self, t, nu):
        raise NotImplementedError

    def d1(self, t, nu):
        raise NotImplementedError

    def d2(self, t, nu):
        raise NotImplementedError

    def d3(self, t, nu):
        raise NotImplementedError

    def value_dnu(self, t, nu):
        raise NotImplementedError

    def d1_dnu(self, t, nu):
        raise NotImplementedError

    def d2_dnu(self, t, nu):
        raise NotImplementedError

    def d1_max(self, nu):
        raise NotImplementedError

    def d2_max(self, nu):
        raise NotImplementedError

    def d2_min(self, nu):
        raise NotImplementedError

    def d3_max(self, nu):
        raise NotImplementedError

    def d2_dnu_max(self, nu):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"


def _xp(t):
    from .backend import get_namespace

    return get_namespace(t)


class SmoothedL1(Potential):
    r""":math:`\varphi(t;\nu) = \sqrt{t^2 + \nu^2}`, a smooth approximation of :math:`|t|`."""

    def value(self, t, nu):
        return _xp(t).sqrt(t * t + nu * nu)

    def d1(self, t, nu):
        return t / _xp(t).sqrt(t * t + nu * nu)

    def d2(self, t, nu):
        s = t * t + nu * nu
        return nu * nu / (s * _xp(t).sqrt(s))

    def d3(self, t, nu):
        s = t * t + nu * nu
        return -3.0 * nu * nu * t / (s * s * _xp(t).sqrt(s))

    def value_dnu(self, t, nu):
        return nu / _xp(t).sqrt(t * t + nu * nu)

    def d1_dnu(self, t, nu):
        s = t * t + nu * nu
        return -t * nu / (s * _xp(t).sqrt(s))

    def d2_dnu(self, t, nu):
        s = t * t + nu * nu
        # d/dnu [nu^2 s^{-3/2}] = 2 nu s^{-3/2} - 3 nu^3 s^{-5/2}
        return nu * (2.0 * s - 3.0 * nu * nu) / (s * s * _xp(t).sqrt(s))

    def d1_max(self, nu):
        return 1.0

    def d2_max(self, nu):
        return 1.0 / nu

    def d2_min(self, nu):
        return 0.0

    def d3_max(self, nu):
        # |phi'''| = 3 nu^2 |t| / s^{5/2} is largest at t = nu / 2
        return 3.0 * 0.5 / (1.25 ** 2.5) / (nu * nu)

    def d2_dnu_max(self, nu):
        # with u = t^2/nu^2: d2_dnu = (2u - 1) / (nu^2 (1 + u)^{5/2}); |.| is largest at u = 0
        return 1.0 / (nu * nu)


class Huber(Potential):
    r"""Huber function: :math:`t^2/(2\nu)` for :math:`|t|\le\nu`, else :math:`|t| - \nu/2`.

    It is once continuously differentiable; :math:`\varphi''` jumps at
    :math:`|t| = \nu`, so ``d3`` is zero almost everywhere and ``d3_max`` is
    infinite (Hessian-Lipschitz bounds do not exist).  Likewise
    :math:`\partial_\nu\varphi'` jumps by :math:`1/\nu` at :math:`|t| = \nu`, so it has no
    Lipschitz constant and ``d2_dnu_max`` is infinite.  Problems built on it
    report these constants as unknown (``None``), and the hypergradient
    estimates them (``bound_exact`` False).
    """

    def value(self, t, nu):
        xp = _xp(t)
        a = xp.abs(t)
        return xp.where(a <= nu, 0.5 * t * t / nu, a - 0.5 * nu)

    def d1(self, t, nu):
        return _xp(t).clip(t / nu, -1.0, 1.0)

    def d2(self, t, nu):
        xp = _xp(t)
        return xp.where(xp.abs(t) <= nu, 1.0 / nu, 0.0).astype(t.dtype, copy=False)

    def d3(self, t, nu):
        return 0.0 * t

    def value_dnu(self, t, nu):
        xp = _xp(t)
        return xp.where(xp.abs(t) <= nu, -0.5 * t * t / (nu * nu), -0.5 + 0.0 * t)

    def d1_dnu(self, t, nu):
        xp = _xp(t)
        return xp.where(xp.abs(t) <= nu, -t / (nu * nu), 0.0 * t)

    def d2_dnu(self, t, nu):
        xp = _xp(t)
        return xp.where(xp.abs(t) <= nu, -1.0 / (nu * nu) + 0.0 * t, 0.0 * t)

    def d1_max(self, nu):
        return 1.0

    def d2_max(self, nu):
        return 1.0 / nu

    def d2_min(self, nu):
        return 0.0

    def d3_max(self, nu):
        return math.inf

    def d2_dnu_max(self, nu):
        # d_nu phi' = -t / nu^2 inside |t| <= nu and 0 outside: a jump of 1/nu, no Lipschitz constant
        return math.inf


class LogStudentT(Potential):
    r"""Log-Student-t: :math:`\varphi(t;\nu) = \log(1 + t^2/\nu^2)`.

    Non-convex: :math:`\varphi'' \ge -1/(4\nu^2)`, so a denoising problem with
    this potential is strongly convex only when the data term dominates.
    """

    convex = False

    def value(self, t, nu):
        return _xp(t).log1p(t * t / (nu * nu))

    def d1(self, t, nu):
        return 2.0 * t / (nu * nu + t * t)

    def d2(self, t, nu):
        s = nu * nu + t * t
        return 2.0 * (nu * nu - t * t) / (s * s)

    def d3(self, t, nu):
        s = nu * nu + t * t
        return 4.0 * t * (t * t - 3.0 * nu * nu) / (s * s * s)

    def value_dnu(self, t, nu):
        return -2.0 * t * t / (nu * (nu * nu + t * t))

    def d1_dnu(self, t, nu):
        s = nu * nu + t * t
        return -4.0 * t * nu / (s * s)

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

    def value(self, t, nu=None):
        return 0.5 * t * t

    def d1(self, t, nu=None):
        return 1.0 * t

    def d2(self, t, nu=None):
        return 0.0 * t + 1.0

    def d3(self, t, nu=None):
        return 0.0 * t

    def value_dnu(self, t, nu=None):
        return 0.0 * t

    def d1_dnu(self, t, nu=None):
        return 0.0 * t

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


#: registry of the potentials, used by the test suite
POTENTIALS = {
    "smoothed_l1": SmoothedL1,
    "huber": Huber,
    "log_student_t": LogStudentT,
    "quadratic": Quadratic,
}
