"""The :class:`Regularizer` protocol and generic regularizers built from parts."""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_namespace
from ..operators import Identity, LinearOperator
from ..potentials import Potential, Quadratic

__all__ = ["Regularizer", "PotentialRegularizer", "Tikhonov", "SumRegularizer"]


class Regularizer:
    r"""Base class of every regularizer :math:`R(x, \theta)`.

    A subclass implements

    * ``n_params`` and ``init_params(rng=None)`` (a default θ, 1-D NumPy float64),
    * ``value(x, theta)`` (a 0-d array), ``grad(x, theta)`` (:math:`\nabla_x R`),
      ``hvp(x, theta, v)`` (:math:`\nabla^2_{xx} R\, v`) and
      ``mixed_vjp(x, theta, w)`` (:math:`(\partial_\theta \nabla_x R)^T w`, shaped
      like θ),

    and may implement ``lipschitz(theta)`` (an upper bound on
    :math:`\|\nabla^2_{xx}R\|`, default ``inf``: unknown), ``convexity(theta)``
    (a lower bound on the smallest Hessian eigenvalue, default ``-inf``:
    unknown), ``hessian_lipschitz(theta)`` and ``mixed_lipschitz(theta)``
    (Lipschitz constants in ``x`` of the Hessian and of the mixed derivative,
    used by the hypergradient error bound; default ``None``: unknown), and
    ``param_layout()`` (named blocks of θ, used by the checker).

    ``x`` is an image batch ``(..., H, W)``; ``theta`` lives in the same array
    namespace as ``x``.  Sums of regularizers (``r1 + r2``) concatenate θ.
    """

    n_params: int = 0

    def init_params(self, rng=None):
        raise NotImplementedError

    def value(self, x, theta):
        raise NotImplementedError

    def grad(self, x, theta):
        raise NotImplementedError

    def hvp(self, x, theta, v):
        raise NotImplementedError

    def mixed_vjp(self, x, theta, w):
        raise NotImplementedError

    def lipschitz(self, theta) -> float:  # noqa: ARG002
        return math.inf

    def convexity(self, theta) -> float:  # noqa: ARG002
        return -math.inf

    def lipschitz_is_loose(self, theta) -> bool:  # noqa: ARG002
        """Whether :meth:`lipschitz` may overestimate the curvature by a large factor."""
        return False

    def hessian_lipschitz(self, theta):  # noqa: ARG002
        return None

    def mixed_lipschitz(self, theta):  # noqa: ARG002
        return None

    def mixed_norm_bound(self, x, theta):  # noqa: ARG002
        """An upper bound on the operator norm of the mixed derivative at ``x`` (``None``: unknown)."""
        return None

    def mixed_lipschitz_at(self, x, theta, radius):  # noqa: ARG002
        """Lipschitz constant in ``x`` of the mixed derivative on the ball of ``radius`` around ``x``.

        Default: :meth:`mixed_lipschitz` (a global constant, or ``None``).
        """
        return self.mixed_lipschitz(theta)

    def grad_error_bound(self, x, theta):  # noqa: ARG002
        """A bound on the rounding error of ``grad(x, theta)`` in Euclidean norm (``None``: unknown).

        See :meth:`varlearn.problems.base.LowerProblem.grad_error_bound`.
        """
        return None

    def param_layout(self):
        """List of ``(name, slice)`` blocks of θ (one block ``"theta"`` by default)."""
        return [("theta", slice(0, self.n_params))]

    def describe(self, theta) -> dict:
        """θ in natural units (e.g. weight and smoothing) as a JSON-friendly dict."""
        t = np.asarray(_host(theta), dtype=float)
        return {"theta": t.tolist()}

    def __add__(self, other):
        if not isinstance(other, Regularizer):
            return NotImplemented
        left = self.terms if isinstance(self, SumRegularizer) else [self]
        right = other.terms if isinstance(other, SumRegularizer) else [other]
        return SumRegularizer(left + right)

    def __repr__(self):
        return f"{type(self).__name__}()"


def _host(a):
    from ..backend import to_numpy

    return to_numpy(a)


def potential_grad_error(lam, d1_max, d2_max, row_l1, col_l1, n_terms, x, dtype):
    r"""First-order rounding bound of :math:`\nabla R = \sum_i\lambda_iK_i^T\varphi_i'(K_ix)` (Euclidean norm).

    For each term ``i`` (arrays over the terms): :math:`K_ix` is a sum of at
    most ``n_terms`` products, off by :math:`\gamma\,r_i\|x\|_\infty` with ``r_i =
    row_l1`` (the largest absolute row sum of :math:`K_i`); :math:`\varphi'` is
    ``d2_max``-Lipschitz and bounded by :math:`D_i = \min(d1\_max, d2\_max\,r_i\|x\|_\infty)`
    and is evaluated with relative error at most 4u; the adjoint sums at most
    ``c_i = col_l1`` (absolute column sum) times ``n_terms`` terms.  Per pixel
    the error is at most
    :math:`\sum_i\lambda_ic_i[(\gamma_{2k} + 4u)D_i + \gamma_{k}d2\_max\,r_i\|x\|_\infty]`, doubled for
    boundary folds, times :math:`\sqrt{\text{pixels}}` for the Euclidean norm.
    """
    from ..problems.base import gamma

    xp = get_namespace(x)
    u = float(np.finfo(dtype).eps) / 2.0
    xinf = float(xp.abs(x).max()) if x.size else 0.0
    lam = np.atleast_1d(np.asarray(lam, dtype=np.float64))
    d2 = np.atleast_1d(np.asarray(d2_max, dtype=np.float64))
    r = np.atleast_1d(np.asarray(row_l1, dtype=np.float64))
    c = np.atleast_1d(np.asarray(col_l1, dtype=np.float64))
    d1 = np.minimum(np.atleast_1d(np.asarray(d1_max, dtype=np.float64)), d2 * r * xinf * (1.0 + 4.0 * u))
    g1, g2 = gamma(n_terms + 2, dtype), gamma(2 * n_terms + 4, dtype)
    per_pixel = float(np.sum(lam * c * ((g2 + 4.0 * u) * d1 + g1 * d2 * r * xinf)))
    return 2.0 * per_pixel * math.sqrt(x.size)


def _vdot(a, b):
    xp = get_namespace(a, b)
    return xp.vdot(a.ravel(), b.ravel())


class PotentialRegularizer(Regularizer):
    r"""Operator composed with an elementwise potential.

    .. math:: R(x, \theta) = e^{\theta_0} \sum_j \varphi\big((K x)_j;\ e^{\theta_1}\big)

    with θ = (log weight, log shape) — or θ = (log weight,) when the potential
    has no shape parameter (:class:`~varlearn.potentials.Quadratic`).  The sum
    runs over the entries of ``K x`` that exist in the operator
    (:meth:`~varlearn.operators.LinearOperator.output_mask`).  Value,
    gradient, Hessian-vector product, mixed derivative and the bounds all come
    from the operator and the potential: a user writes no derivative.

    Parameters
    ----------
    operator : LinearOperator
    potential : Potential
    weight, shape : float, optional
        Default natural values returned by :meth:`init_params`.
    """

    def __init__(self, operator: LinearOperator, potential: Potential, weight=0.1, shape=0.01):
        if not isinstance(operator, LinearOperator):
            raise TypeError(f"operator must be a LinearOperator, got {type(operator).__name__}")
        if not isinstance(potential, Potential):
            raise TypeError(f"potential must be a Potential, got {type(potential).__name__}")
        self.operator = operator
        self.potential = potential
        self.default_weight = float(weight)
        self.default_shape = float(shape)
        self.n_params = 2 if potential.has_param else 1

    def init_params(self, rng=None):  # noqa: ARG002
        p = [math.log(self.default_weight)]
        if self.potential.has_param:
            p.append(math.log(self.default_shape))
        return np.asarray(p, dtype=np.float64)

    def param_layout(self):
        names = ["log_weight", "log_shape"][: self.n_params]
        return [(n, slice(i, i + 1)) for i, n in enumerate(names)]

    def _params(self, theta):
        xp = get_namespace(theta)
        lam = xp.exp(theta[0])
        nu = xp.exp(theta[1]) if self.potential.has_param else None
        return lam, nu

    def value(self, x, theta):
        xp = get_namespace(x, theta)
        lam, nu = self._params(theta)
        phi = self.potential.value(self.operator.apply(x), nu)
        mask = self.operator.output_mask(x.shape, xp)
        if mask is not None:
            phi = phi * mask.astype(phi.dtype)
        return lam * xp.sum(phi)

    def grad(self, x, theta):
        lam, nu = self._params(theta)
        return lam * self.operator.adjoint(self.potential.d1(self.operator.apply(x), nu))

    def hvp(self, x, theta, v):
        lam, nu = self._params(theta)
        op = self.operator
        return lam * op.adjoint(self.potential.d2(op.apply(x), nu) * op.apply(v))

    def mixed_vjp(self, x, theta, w):
        xp = get_namespace(x, theta, w)
        lam, nu = self._params(theta)
        op = self.operator
        t = op.apply(x)
        kw = op.apply(w)
        out = [lam * xp.sum(self.potential.d1(t, nu) * kw)]
        if self.potential.has_param:
            out.append(lam * nu * xp.sum(self.potential.d1_dnu(t, nu) * kw))
        return xp.stack(out).astype(theta.dtype)

    def _natural(self, theta):
        t = _host(theta)
        lam = math.exp(float(t[0]))
        nu = math.exp(float(t[1])) if self.potential.has_param else None
        return lam, nu

    def lipschitz(self, theta):
        lam, nu = self._natural(theta)
        return lam * self.potential.d2_max(nu) * self.operator.norm_bound() ** 2

    def convexity(self, theta):
        lam, nu = self._natural(theta)
        lo = self.potential.d2_min(nu)
        return 0.0 if lo >= 0 else lam * lo * self.operator.norm_bound() ** 2

    def hessian_lipschitz(self, theta):
        # |phi''(Kx) - phi''(Kx')|_inf <= d3_max ||K (x - x')||_inf <= d3_max ||K|| ||x - x'||
        lam, nu = self._natural(theta)
        c = self.potential.d3_max(nu)
        if not math.isfinite(c):
            return None  # phi'' is not Lipschitz (e.g. Huber): no bound; the hypergradient estimates one
        return lam * c * self.operator.norm_bound() ** 3

    def mixed_norm_bound(self, x, theta):
        """Frobenius norm of the (one or two) columns of the mixed derivative, computed exactly."""
        xp = get_namespace(x, theta)
        lam, nu = self._params(theta)
        op = self.operator
        t = op.apply(x)
        c0 = lam * op.adjoint(self.potential.d1(t, nu))
        total = float(xp.vdot(c0.ravel(), c0.ravel()))
        if self.potential.has_param:
            c1 = (lam * nu) * op.adjoint(self.potential.d1_dnu(t, nu))
            total += float(xp.vdot(c1.ravel(), c1.ravel()))
        return math.sqrt(total)

    def grad_error_bound(self, x, theta):
        """:func:`potential_grad_error` with the absolute row and column sums of ``K`` bounded by
        ``norm_bound()**2`` (true for :class:`~varlearn.operators.Identity` (1) and
        :class:`~varlearn.operators.FiniteDifference` (2 and 4, against 8)); ``None`` for
        other operators."""
        from ..operators import FiniteDifference

        if not isinstance(self.operator, (Identity, FiniteDifference)):
            return None
        lam, nu = self._natural(theta)
        nb2 = self.operator.norm_bound() ** 2
        return potential_grad_error(lam, self.potential.d1_max(nu), self.potential.d2_max(nu), nb2, nb2, 2, x,
                                    x.dtype)

    def mixed_lipschitz(self, theta):
        # column log-weight: lam K^T phi'(Kx)          -> lam ||K||^2 sup phi''
        # column log-shape:  lam nu K^T dphi'/dnu (Kx) -> lam nu ||K||^2 sup |d phi''/dnu|
        lam, nu = self._natural(theta)
        k2 = self.operator.norm_bound() ** 2
        c0 = lam * k2 * self.potential.d2_max(nu)
        if nu is None:
            return c0
        c1 = lam * nu * k2 * self.potential.d2_dnu_max(nu)
        if not math.isfinite(c1):
            return None  # d phi'/d nu is not Lipschitz (e.g. Huber): no constant to claim
        return math.hypot(c0, c1)

    def describe(self, theta):
        lam, nu = self._natural(theta)
        d = {"weight": lam}
        if nu is not None:
            d["shape"] = nu
        return d

    def __repr__(self):
        return f"PotentialRegularizer({self.operator!r}, {self.potential!r})"


class Tikhonov(PotentialRegularizer):
    r"""Quadratic regularizer :math:`R(x) = \tfrac12 e^{\theta_0}\|Kx\|^2` (θ = (log weight,)).

    ``operator`` defaults to the identity (ridge); pass
    :class:`~varlearn.operators.FiniteDifference` for gradient smoothing.
    """

    def __init__(self, operator: LinearOperator | None = None, weight=0.1):
        super().__init__(Identity() if operator is None else operator, Quadratic(), weight=weight)

    def convexity(self, theta):
        if isinstance(self.operator, Identity):
            return self._natural(theta)[0]
        return 0.0

    def __repr__(self):
        return f"Tikhonov({self.operator!r})"


class SumRegularizer(Regularizer):
    """Sum of regularizers; θ is the concatenation of the terms' θ."""

    def __init__(self, terms):
        terms = list(terms)
        if not terms or not all(isinstance(t, Regularizer) for t in terms):
            raise TypeError("terms must be a non-empty list of Regularizer instances")
        self.terms = terms
        self._slices = []
        start = 0
        for t in terms:
            self._slices.append(slice(start, start + t.n_params))
            start += t.n_params
        self.n_params = start

    def init_params(self, rng=None):
        return np.concatenate([t.init_params(rng) for t in self.terms])

    def param_layout(self):
        out = []
        for i, (t, s) in enumerate(zip(self.terms, self._slices)):
            for name, sub in t.param_layout():
                out.append((f"{i}.{name}", slice(s.start + sub.start, s.start + sub.stop)))
        return out

    def value(self, x, theta):
        return sum(t.value(x, theta[s]) for t, s in zip(self.terms, self._slices))

    def grad(self, x, theta):
        return sum(t.grad(x, theta[s]) for t, s in zip(self.terms, self._slices))

    def hvp(self, x, theta, v):
        return sum(t.hvp(x, theta[s], v) for t, s in zip(self.terms, self._slices))

    def mixed_vjp(self, x, theta, w):
        xp = get_namespace(x, theta)
        return xp.concatenate([t.mixed_vjp(x, theta[s], w) for t, s in zip(self.terms, self._slices)])

    def lipschitz(self, theta):
        return sum(t.lipschitz(theta[s]) for t, s in zip(self.terms, self._slices))

    def convexity(self, theta):
        return sum(t.convexity(theta[s]) for t, s in zip(self.terms, self._slices))

    def lipschitz_is_loose(self, theta):
        return any(t.lipschitz_is_loose(theta[s]) for t, s in zip(self.terms, self._slices))

    def hessian_lipschitz(self, theta):
        vals = [t.hessian_lipschitz(theta[s]) for t, s in zip(self.terms, self._slices)]
        return None if any(v is None for v in vals) else sum(vals)

    def mixed_lipschitz(self, theta):
        # J = [J_1 ... J_m] by column blocks: ||J - J'|| <= sqrt(sum ||J_i - J_i'||^2)
        vals = [t.mixed_lipschitz(theta[s]) for t, s in zip(self.terms, self._slices)]
        return None if any(v is None for v in vals) else math.sqrt(sum(v * v for v in vals))

    def mixed_norm_bound(self, x, theta):
        vals = [t.mixed_norm_bound(x, theta[s]) for t, s in zip(self.terms, self._slices)]
        return None if any(v is None for v in vals) else math.sqrt(sum(v * v for v in vals))

    def mixed_lipschitz_at(self, x, theta, radius):
        vals = [t.mixed_lipschitz_at(x, theta[s], radius) for t, s in zip(self.terms, self._slices)]
        return None if any(v is None for v in vals) else math.sqrt(sum(v * v for v in vals))

    def grad_error_bound(self, x, theta):
        # the terms' errors add, plus the rounding of the sum itself (a relative u per addition)
        vals = [t.grad_error_bound(x, theta[s]) for t, s in zip(self.terms, self._slices)]
        if any(v is None for v in vals):
            return None
        return sum(vals) * (1.0 + 2.0 * len(vals) * float(np.finfo(x.dtype).eps))

    def describe(self, theta):
        return {f"term{i}": t.describe(theta[s]) for i, (t, s) in enumerate(zip(self.terms, self._slices))}

    def __repr__(self):
        return " + ".join(repr(t) for t in self.terms)
