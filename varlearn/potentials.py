r"""Potentials :math:`\varphi(t; \nu)`: scalar ones applied elementwise, and a group potential.

A *scalar* potential acts on each entry of ``t``; a *group* potential
(:class:`GroupSmoothedL1`, :attr:`Potential.group_axis` ``= -3``) acts on the
vectors along one axis of ``t`` (the channel axis of an operator output
``(..., C, H, W)``), so its value sums that axis away.  Every potential has at
most one positive shape parameter :math:`\nu` (a smoothing or scale;
:class:`Quadratic` has none and ignores it).

``t`` is an array of any namespace (NumPy or CuPy); ``nu`` is a positive
scalar or an array broadcastable against ``t`` (against the reduced shape for
a group potential's value).  Results follow ``t``'s namespace.  Every array
method takes ``out=None``: the result is written into ``out`` when given
(``out`` may be ``t`` itself, or ``v`` for :meth:`Potential.hess_apply`) and
returned.

The bound constants (``d1_max``, ``d2_max``, ``d2_min``, ``d3_max``,
``d2_dnu_max``) are what the regularizer bounds of
:mod:`varlearn.regularizers.composite` are built from; for a group potential
:math:`|\cdot|` is the Euclidean norm of the group vector and a second
derivative is the group Hessian, measured in operator norm.

References
----------
.. [1] L. I. Rudin, S. Osher, E. Fatemi, "Nonlinear total variation based noise removal
   algorithms", Physica D 60 (1992) 259-268.
.. [2] C. R. Vogel, M. E. Oman, "Iterative methods for total variation denoising",
   SIAM J. Sci. Comput. 17 (1996) 227-238 (the smoothing :math:`\sqrt{t^2+\nu^2}`).
.. [3] P. J. Huber, "Robust estimation of a location parameter", Ann. Math. Statist. 35
   (1964) 73-101.
.. [4] S. Roth, M. J. Black, "Fields of Experts", Int. J. Comput. Vision 82 (2009) 205-229
   (the Student-t expert).
.. [5] M. J. Ehrhardt, L. Roberts, "Inexact derivative-free optimization for bilevel
   learning", J. Math. Imaging Vis. 63 (2021) 580-600 (smoothed TV in bilevel learning).
"""
from __future__ import annotations

import abc
import math

from .backend import get_namespace

__all__ = ["Potential", "SmoothedL1", "GroupSmoothedL1", "Huber", "LogStudentT", "Quadratic",
           "POTENTIALS", "GROUP_POTENTIALS"]


def _store(res, out):
    """Return ``res``, copied into ``out`` when ``out`` is given."""
    if out is None:
        return res
    out[...] = res
    return out


class Potential(abc.ABC):
    r"""Abstract base class of potentials :math:`\varphi(t;\nu)`; see the module docstring.

    Subclasses implement the derivatives in ``t`` and in ``nu`` and the bound
    constants.  Attributes: :attr:`has_param` (whether ``nu`` exists),
    :attr:`convex` (whether :math:`\varphi` is convex for every ``nu``),
    :attr:`group_axis` (``None`` for a scalar potential, the group axis
    otherwise), :attr:`homogeneity` (``a`` with
    :math:`\varphi(t;\nu) = \nu^a\varphi(t/\nu;1)`, or ``None``),
    :attr:`d1_eval_ulps` (a bound on the relative rounding error of :meth:`d1`
    in units of the unit roundoff ``u``, or ``None`` when unknown).

    References
    ----------
    .. [1] S. Roth, M. J. Black, "Fields of Experts", Int. J. Comput. Vision 82 (2009) 205-229.
    """

    #: whether the potential has a shape parameter nu
    has_param = True
    #: whether phi is convex for every nu
    convex = True
    #: None for an elementwise potential; the axis of t that a group potential reduces
    group_axis = None
    #: a with phi(t; nu) = nu**a phi(t / nu; 1), or None
    homogeneity = None
    #: relative rounding error of d1 in units of u (None: unknown)
    d1_eval_ulps = None

    @abc.abstractmethod
    def value(self, t, nu, out=None):
        r""":math:`\varphi(t;\nu)` (a group potential sums its group axis away).

        Parameters
        ----------
        t : array
        nu : float or array
            Positive shape parameter, broadcastable against ``t``.
        out : array, optional
            Where to write the result (may be ``t`` for a scalar potential).

        Returns
        -------
        array
        """

    @abc.abstractmethod
    def d1(self, t, nu, out=None):
        r""":math:`\varphi'(t;\nu)` (a group potential: the gradient in the group vector), shaped like ``t``."""

    @abc.abstractmethod
    def d2(self, t, nu, out=None):
        r""":math:`\varphi''(t;\nu)`, shaped like ``t`` (a group potential: the diagonal of the group Hessian)."""

    def d3(self, t, nu):
        r""":math:`\varphi'''(t;\nu)` (scalar potentials only; used by the tests of :meth:`d3_max`)."""
        raise NotImplementedError(f"{type(self).__name__} has no elementwise third derivative")

    def hess_apply(self, t, nu, v, out=None):
        r"""The Hessian of :math:`\varphi` at ``t`` applied to ``v``: :math:`\varphi''(t)\,v` elementwise.

        A group potential applies its group Hessian to each group vector of ``v``.

        Parameters
        ----------
        t, v : arrays of the same shape
        nu : float or array
        out : array, optional
            Where to write the result (may be ``t`` or ``v``).
        """
        xp = get_namespace(t, v)
        d = self.d2(t, nu, out=None if out is None or out is v else out)
        return xp.multiply(d, v, out=d if out is None else out)

    @abc.abstractmethod
    def value_dnu(self, t, nu):
        r""":math:`\partial_\nu\varphi(t;\nu)` (shaped like :meth:`value`)."""

    @abc.abstractmethod
    def d1_dnu(self, t, nu, out=None):
        r""":math:`\partial_\nu\varphi'(t;\nu)`, shaped like ``t``."""

    def d2_dnu(self, t, nu):
        r""":math:`\partial_\nu\varphi''(t;\nu)` (a group potential: of the Hessian diagonal)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement d2_dnu")

    @abc.abstractmethod
    def d1_max(self, nu) -> float:
        r""":math:`\sup_t |\varphi'(t)|` (``inf`` when unbounded).

        Every potential here has :math:`\varphi'(0) = 0`, so also
        :math:`|\varphi'(t)| \le` ``d2_max`` :math:`\cdot|t|`.
        """

    @abc.abstractmethod
    def d2_max(self, nu) -> float:
        r""":math:`\sup_t \varphi''(t)`: the Lipschitz constant of :math:`\varphi'`."""

    @abc.abstractmethod
    def d2_min(self, nu) -> float:
        r""":math:`\inf_t \varphi''(t)` (negative for a non-convex potential)."""

    @abc.abstractmethod
    def d3_max(self, nu) -> float:
        r""":math:`\sup_t |\varphi'''(t)|`: the Lipschitz constant of :math:`\varphi''` (``inf`` if none)."""

    @abc.abstractmethod
    def d2_dnu_max(self, nu) -> float:
        r""":math:`\sup_t |\partial_\nu\varphi''(t)|`: the Lipschitz constant in ``t`` of
        :math:`\partial_\nu\varphi'` (``inf`` when it is not Lipschitz, as for :class:`Huber`)."""

    def d1_rel_cond(self, nu):  # noqa: ARG002
        r""":math:`\sup_t |t|\,\|\varphi''(t)\|`: how much a relative error of ``t`` changes :math:`\varphi'`.

        ``None`` when unknown.  Used with :attr:`d1_eval_ulps` by the rounding
        bound :meth:`varlearn.regularizers.composite.Composite.grad_error_bound`.
        """
        return None

    def __repr__(self):
        return f"{type(self).__name__}()"


def _xp(t):
    return get_namespace(t)


class SmoothedL1(Potential):
    r""":math:`\varphi(t;\nu) = \sqrt{t^2 + \nu^2}`, a smooth approximation of :math:`|t|` [2]_.

    References
    ----------
    .. [2] C. R. Vogel, M. E. Oman, SIAM J. Sci. Comput. 17 (1996) 227-238.
    """

    homogeneity = 1
    d1_eval_ulps = 8.0

    def value(self, t, nu, out=None):
        xp = _xp(t)
        s = xp.multiply(t, t, out=out)
        s += nu * nu
        return xp.sqrt(s, out=s)

    def d1(self, t, nu, out=None):
        r = self.value(t, nu, out=None if out is None or out is t else out)
        return _xp(t).divide(t, r, out=r if out is None else out)

    def d2(self, t, nu, out=None):
        xp = _xp(t)
        s = xp.multiply(t, t, out=out)
        s += nu * nu
        s *= xp.sqrt(s)
        return xp.divide(nu * nu, s, out=s)

    def d3(self, t, nu):
        s = t * t + nu * nu
        return -3.0 * nu * nu * t / (s * s * _xp(t).sqrt(s))

    def value_dnu(self, t, nu):
        return nu / _xp(t).sqrt(t * t + nu * nu)

    def d1_dnu(self, t, nu, out=None):
        xp = _xp(t)
        s = t * t
        s += nu * nu
        s *= xp.sqrt(s)
        return xp.divide(t * (-nu), s, out=s if out is None else out)

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

    def d1_rel_cond(self, nu):  # noqa: ARG002
        # |t| nu^2 / s^{3/2} is largest at t^2 = nu^2 / 2: 2 / 3^{3/2}
        return 2.0 / 3.0 ** 1.5


class GroupSmoothedL1(Potential):
    r"""Group potential :math:`\varphi(t;\nu) = \sqrt{|t|^2 + \nu^2}`, :math:`|t|` the Euclidean
    norm along ``group_axis`` (``-3``, the channel axis of ``(..., C, H, W)``).

    With :class:`~varlearn.operators.FiniteDifference` it gives isotropic
    smoothed TV [1]_ [2]_.  Writing :math:`r = \sqrt{|t|^2+\nu^2}`: the
    gradient is :math:`t/r`, the Hessian :math:`(I - tt^T/r^2)/r` (eigenvalues
    in :math:`[\nu^2/r^3, 1/r]`), :math:`\partial_\nu` of the gradient is
    :math:`-\nu t/r^3`.  Bound constants (proved in the comments of the methods,
    checked by the tests): :math:`\sup\|\nabla\varphi\| = 1`, Hessian in
    :math:`[0, 1/\nu]`, its Lipschitz constant in operator norm
    :math:`1.5/1.25^{5/2}/\nu^2` (the scalar one, attained along ``t`` at
    :math:`|t| = \nu/2`), :math:`\partial_\nu\nabla\varphi` is
    :math:`1/\nu^2`-Lipschitz.  ``nu`` must be a scalar or broadcast against the
    reduced shape (one smoothing per group).

    References
    ----------
    .. [1] L. I. Rudin, S. Osher, E. Fatemi, Physica D 60 (1992) 259-268.
    .. [2] C. R. Vogel, M. E. Oman, SIAM J. Sci. Comput. 17 (1996) 227-238.
    """

    group_axis = -3
    homogeneity = 1
    d1_eval_ulps = 8.0

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
        # (v - t (t.v) / r^2) / r per group
        xp = get_namespace(t, v)
        r = self._r(t, nu)
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

    def d1_max(self, nu):
        # |t / r| < 1
        return 1.0

    def d2_max(self, nu):
        # largest Hessian eigenvalue 1/r <= 1/nu (at t = 0)
        return 1.0 / nu

    def d2_min(self, nu):
        return 0.0

    def d3_max(self, nu):
        # With t = a e_1 and a unit direction d, dH[d] has, in the plane of e_1 and d, the entries
        # (1,1) = -3 a nu^2 d_1 / s^{5/2}, (2,2) = -a d_1 / s^{3/2}, (1,2) = -a d_2 / s^{3/2}, and
        # -a d_1 / s^{3/2} on the rest; its norm is largest for d = e_1: the scalar constant.
        return 3.0 * 0.5 / (1.25 ** 2.5) / (nu * nu)

    def d2_dnu_max(self, nu):
        # d/dt of -nu t / r^3 has eigenvalues -nu / r^3 (across t) and -nu (nu^2 - 2|t|^2) / r^5
        # (along t); both have modulus <= 1 / nu^2, attained at t = 0
        return 1.0 / (nu * nu)

    def d1_rel_cond(self, nu):  # noqa: ARG002
        # |t| ||H(t)|| = |t| / r < 1
        return 1.0


class Huber(Potential):
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

    homogeneity = 1

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


#: registry of the scalar potentials, used by the test suite and by name elsewhere
POTENTIALS = {
    "smoothed_l1": SmoothedL1,
    "huber": Huber,
    "log_student_t": LogStudentT,
    "quadratic": Quadratic,
}

#: registry of the group potentials
GROUP_POTENTIALS = {"group_smoothed_l1": GroupSmoothedL1}
