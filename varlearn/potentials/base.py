r"""The :class:`Potential` abstract base class (see :mod:`varlearn.potentials`).

References
----------
.. [1] S. Roth, M. J. Black, "Fields of Experts", Int. J. Comput. Vision 82 (2009) 205-229.
"""
from __future__ import annotations

import abc

from ..backend import get_namespace

__all__ = ["Potential", "SmoothAbs"]


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

    def d1_hess_apply(self, t, nu, v, out_d1=None, out_hv=None):
        r"""``(d1(t), hess_apply(t, v))`` in one call: :math:`\varphi'(t)` and :math:`\nabla^2\varphi(t)\,v`.

        The default calls :meth:`d1` and :meth:`hess_apply`; a potential whose two
        formulas share work (:class:`~varlearn.potentials.SmoothedL1`: one square root
        for both) overrides it.  Used by the mixed derivatives of
        :class:`~varlearn.regularizers.composite.Composite`, which need both and keep
        ``v``.

        Parameters
        ----------
        t, v : arrays of the same shape
        nu : float or array
        out_d1, out_hv : arrays like ``t``, optional
            Where to write the two results; they must not alias ``t``, ``v`` or
            each other (``t`` and ``v`` are left unchanged).

        Returns
        -------
        d1, hv : arrays
        """
        return self.d1(t, nu, out=out_d1), self.hess_apply(t, nu, v, out=out_hv)

    @abc.abstractmethod
    def value_dnu(self, t, nu):
        r""":math:`\partial_\nu\varphi(t;\nu)` (shaped like :meth:`value`)."""

    @abc.abstractmethod
    def d1_dnu(self, t, nu, out=None):
        r""":math:`\partial_\nu\varphi'(t;\nu)`, shaped like ``t``."""

    @abc.abstractmethod
    def d2_dnu(self, t, nu):
        r""":math:`\partial_\nu\varphi''(t;\nu)` (a group potential: of the Hessian diagonal)."""

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


class SmoothAbs(Potential):
    r"""Base of the convex smooth approximations of :math:`|t|` with scale :math:`\nu` (smoothed ℓ1, Huber).

    They share :math:`|\varphi'| \le 1`, :math:`0 \le \varphi'' \le 1/\nu` (attained at
    :math:`t = 0`) and :math:`\varphi(t;\nu) = \nu\,\varphi(t/\nu; 1)`.
    """

    homogeneity = 1

    def d1_max(self, nu):
        return 1.0

    def d2_max(self, nu):
        return 1.0 / nu

    def d2_min(self, nu):
        return 0.0


def _xp(t):
    return get_namespace(t)
