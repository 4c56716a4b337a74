r"""The :class:`Regularizer` protocol and generic regularizers built from parts.

References
----------
.. [MAID] M. J. Ehrhardt, L. Roberts, "Analyzing inexact hypergradients for bilevel learning",
   IMA J. Appl. Math. 89 (2024) 254-278 (the constants of the hypergradient error bound).
.. [CP16] A. Chambolle, T. Pock, "An introduction to continuous optimization for imaging",
   Acta Numerica 25 (2016) 161-319 (§4.7: FISTA).
.. [RB09] S. Roth, M. J. Black, "Fields of Experts", Int. J. Comput. Vision 82 (2009) 205-229.
"""
from __future__ import annotations

import abc
import math

import numpy as np

from ..backend import get_namespace, to_numpy
from ..linalg import gradient_step, norm64
from ..operators import Identity, LinearOperator
from ..potentials import Potential, Quadratic
from .composite import Composite

__all__ = ["Regularizer", "PotentialRegularizer", "Tikhonov", "SumRegularizer"]


class Regularizer(abc.ABC):
    r"""Abstract base class of every regularizer :math:`R(x, \theta)`.

    A subclass sets :attr:`n_params` and implements :meth:`init_params`,
    :meth:`value`, :meth:`grad`, :meth:`hvp` and :meth:`mixed_vjp`.  Every other
    method has a generic default that a subclass may improve: the fused passes
    :meth:`fused_grad` / :meth:`fused_hvp` (C1 of the developer contracts; the
    lower-level solvers call them), and the constants of the hypergradient error
    bound ([MAID]_ Theorem 2.1), whose defaults say "unknown".

    ``x`` is an image batch ``(..., H, W)``; ``theta`` is 1-D and lives in the
    same array namespace as ``x``.  Sums of regularizers (``r1 + r2``)
    concatenate θ (:class:`SumRegularizer`).

    References
    ----------
    .. [MAID] M. J. Ehrhardt, L. Roberts, IMA J. Appl. Math. 89 (2024) 254-278.
    """

    #: length of θ
    n_params: int = 0

    @abc.abstractmethod
    def init_params(self, rng=None):
        """A default θ: a 1-D NumPy float64 array of length :attr:`n_params` (``rng`` for random parts)."""

    @abc.abstractmethod
    def value(self, x, theta):
        r""":math:`R(x, \theta)` as a 0-d array of ``x``'s namespace."""

    @abc.abstractmethod
    def grad(self, x, theta):
        r""":math:`\nabla_x R(x, \theta)`, shaped like ``x``."""

    @abc.abstractmethod
    def hvp(self, x, theta, v):
        r""":math:`\nabla^2_{xx} R(x, \theta)\, v`, shaped like ``x``."""

    @abc.abstractmethod
    def mixed_vjp(self, x, theta, w):
        r""":math:`(\partial_\theta \nabla_x R(x, \theta))^T w`, shaped like θ ([MAID]_ eq. (2.3))."""

    # ------------------------------------------------------------------ fused passes (C1)
    def fused_grad(self, x, theta, y=None, data_w=0.0, *, x_prev=None, beta=0.0, step=None, out=None):
        r"""Gradient with a data term at an extrapolated point, optionally followed by a step.

        .. math::

            z = x + \beta(x - x_{prev}),\qquad g = w\,(z - y) + \nabla_x R(z, \theta),\qquad
            \text{out} \leftarrow g\ \text{(step None)}\ \text{or}\ z - \text{step}\cdot g

        (:math:`z = x` when ``x_prev`` is None or ``beta == 0``; ``y`` is ignored
        when ``data_w == 0``).  One FISTA iteration on
        :math:`\tfrac w2\|x-y\|^2 + R` is one call ([CP16]_ §4.7).  The generic
        default costs one :meth:`grad` and elementwise passes; composed
        regularizers whose (operator, potential) pair has a registered kernel run
        one fused pass.

        Parameters
        ----------
        x : array
        theta : array (n_params,)
        y : array shaped like x, optional
        data_w : float
        x_prev : array shaped like x, optional
        beta : float
        step : float, optional
        out : array shaped like x, optional
            Allocated when None; must not alias ``x`` or ``x_prev``.

        Returns
        -------
        out : array
        grad_norm : float
            :math:`\|g\|`, the sum of squares accumulated in float64 (one host sync).
        """
        z = x if (x_prev is None or beta == 0) else x + beta * (x - x_prev)
        g = self.grad(z, theta)
        if data_w != 0:
            g = g + data_w * (z - y)
        return gradient_step(z, g, step, out), norm64(g)

    def fused_hvp(self, x, theta, v, data_w=0.0, *, out=None):
        r"""``data_w * v + ∇²_xx R(x, θ) v`` (written into ``out`` when given); default: :meth:`hvp` plus an axpy."""
        h = self.hvp(x, theta, v)
        if data_w != 0:
            h = h + data_w * v
        return gradient_step(x, h, None, out)

    def grad_data(self, x, theta, y, data_w, out=None):
        """Alias kept for old callers: ``fused_grad(x, theta, y, data_w, out=out)[0]``."""
        return self.fused_grad(x, theta, y, data_w, out=out)[0]

    def hvp_data(self, x, theta, v, data_w):
        """Alias kept for old callers: ``fused_hvp(x, theta, v, data_w)``."""
        return self.fused_hvp(x, theta, v, data_w)

    # ------------------------------------------------------------------ constants (optional)
    def lipschitz(self, theta) -> float:  # noqa: ARG002
        r"""Upper bound on :math:`\|\nabla^2_{xx}R\|` over all ``x`` (default ``inf``: unknown)."""
        return math.inf

    def convexity(self, theta) -> float:  # noqa: ARG002
        r"""Lower bound on the smallest eigenvalue of :math:`\nabla^2_{xx}R` (default ``-inf``: unknown)."""
        return -math.inf

    def lipschitz_is_loose(self, theta) -> bool:  # noqa: ARG002
        """Whether :meth:`lipschitz` may overestimate the curvature by a large factor (default False)."""
        return False

    def hessian_lipschitz(self, theta):  # noqa: ARG002
        r"""Lipschitz constant in ``x`` of :math:`\nabla^2_{xx}R` (default ``None``: unknown; [MAID]_)."""
        return None

    def mixed_lipschitz(self, theta):  # noqa: ARG002
        r"""Lipschitz constant in ``x`` of :math:`\partial_\theta\nabla_xR` (default ``None``: unknown; [MAID]_)."""
        return None

    def mixed_norm_bound(self, x, theta):  # noqa: ARG002
        r"""Upper bound on :math:`\|\partial_\theta\nabla_xR(x)\|` at ``x`` (default ``None``: unknown)."""
        return None

    def mixed_lipschitz_at(self, x, theta, radius):  # noqa: ARG002
        """Lipschitz constant of the mixed derivative on the ball of ``radius`` around ``x``.

        Default: :meth:`mixed_lipschitz` (a global constant, or ``None``).
        """
        return self.mixed_lipschitz(theta)

    def grad_error_bound(self, x, theta):  # noqa: ARG002
        """A bound on the rounding error of ``grad(x, theta)`` in Euclidean norm (default ``None``: unknown).

        See :meth:`varlearn.problems.base.LowerProblem.grad_error_bound`.
        """
        return None

    def param_layout(self):
        """List of ``(name, slice)`` blocks of θ (one block ``"theta"`` by default)."""
        return [("theta", slice(0, self.n_params))]

    def describe(self, theta) -> dict:
        """θ in natural units (e.g. weight and smoothing) as a JSON-friendly dict."""
        return {"theta": np.asarray(to_numpy(theta), dtype=float).tolist()}

    def __add__(self, other):
        if not isinstance(other, Regularizer):
            return NotImplemented
        left = self.terms if isinstance(self, SumRegularizer) else [self]
        right = other.terms if isinstance(other, SumRegularizer) else [other]
        return SumRegularizer(left + right)

    def __repr__(self):
        return f"{type(self).__name__}()"


def _host(a):
    return to_numpy(a)


class PotentialRegularizer(Regularizer):
    r"""Operator composed with a potential.

    .. math:: R(x, \theta) = e^{\theta_0} \sum_j \varphi\big((K x)_j;\ e^{\theta_1}\big)

    with θ = (log weight, log shape) — or θ = (log weight,) when the potential
    has no shape parameter (:class:`~varlearn.potentials.Quadratic`).  The sum
    runs over the entries of ``K x`` that exist in the operator
    (:meth:`~varlearn.operators.LinearOperator.output_mask`), or over the groups
    of a group potential (:class:`~varlearn.potentials.GroupSmoothedL1`).  Value,
    gradient, Hessian-vector product, mixed derivative and the bounds all come
    from :class:`~varlearn.regularizers.composite.Composite`: a user writes no
    derivative, and a registered (operator, potential) pair runs its fused
    kernel (``PotentialRegularizer(FiniteDifference(), SmoothedL1())`` is
    anisotropic TV, kernel included).

    Parameters
    ----------
    operator : LinearOperator
    potential : Potential
    weight, shape : float, optional
        Default natural values returned by :meth:`init_params`.
    """

    def __init__(self, operator: LinearOperator, potential: Potential, weight=0.1, shape=0.01):
        self.composite = Composite(operator, potential)
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

    def natural_params(self, theta):
        """``(lam, nu)`` = (e^θ0, e^θ1) as Python floats (``nu`` None without shape parameter)."""
        t = _host(theta)
        if t.shape != (self.n_params,):
            raise ValueError(f"theta must have shape ({self.n_params},), got shape {t.shape}")
        lam = math.exp(float(t[0]))
        nu = math.exp(float(t[1])) if self.n_params == 2 else None
        return lam, nu

    def value(self, x, theta):
        return self.composite.value(x, *self.natural_params(theta))

    def grad(self, x, theta):
        return self.composite.grad(x, *self.natural_params(theta))

    def hvp(self, x, theta, v):
        return self.composite.hvp(x, *self.natural_params(theta), v)

    def fused_grad(self, x, theta, y=None, data_w=0.0, *, x_prev=None, beta=0.0, step=None, out=None):
        lam, nu = self.natural_params(theta)
        return self.composite.fused_grad(x, lam, nu, y, data_w, x_prev=x_prev, beta=beta, step=step, out=out)

    def fused_hvp(self, x, theta, v, data_w=0.0, *, out=None):
        return self.composite.fused_hvp(x, *self.natural_params(theta), v, data_w, out=out)

    def mixed_vjp(self, x, theta, w):
        # theta = (log lam, log nu): d/dtheta_0 = lam d/dlam, d/dtheta_1 = nu d/dnu
        xp = get_namespace(x, theta, w)
        lam, nu = self.natural_params(theta)
        d_lam, d_nu, _ = self.composite.mixed(x, lam, nu, w)
        parts = [lam * d_lam] + ([] if nu is None else [nu * d_nu])
        return xp.stack(parts).astype(theta.dtype)

    def lipschitz(self, theta):
        return self.composite.lipschitz(*self.natural_params(theta))

    def convexity(self, theta):
        return self.composite.convexity(*self.natural_params(theta))

    def hessian_lipschitz(self, theta):
        return self.composite.hessian_lipschitz(*self.natural_params(theta))

    def mixed_norm_bound(self, x, theta):
        """Frobenius norm of the (one or two) columns of the mixed derivative, computed exactly."""
        return self.composite.mixed_norm_bound(x, *self.natural_params(theta))

    def mixed_lipschitz(self, theta):
        return self.composite.mixed_lipschitz(*self.natural_params(theta))

    def grad_error_bound(self, x, theta):
        """:meth:`~varlearn.regularizers.composite.Composite.grad_error_bound` (None for operators
        without :meth:`~varlearn.operators.LinearOperator.rounding_constants`)."""
        return self.composite.grad_error_bound(x, *self.natural_params(theta))

    def describe(self, theta):
        lam, nu = self.natural_params(theta)
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
        # the Hessian is lam K^T K: lam for the identity, >= 0 otherwise
        if isinstance(self.operator, Identity):
            return self.natural_params(theta)[0]
        return 0.0

    def __repr__(self):
        return f"Tikhonov({self.operator!r})"


def _combine_sqrt(vals):
    return None if any(v is None for v in vals) else math.sqrt(sum(v * v for v in vals))


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

    def _parts(self, theta):
        return [(t, theta[s]) for t, s in zip(self.terms, self._slices)]

    def init_params(self, rng=None):
        return np.concatenate([t.init_params(rng) for t in self.terms])

    def param_layout(self):
        out = []
        for i, (t, s) in enumerate(zip(self.terms, self._slices)):
            for name, sub in t.param_layout():
                out.append((f"{i}.{name}", slice(s.start + sub.start, s.start + sub.stop)))
        return out

    def value(self, x, theta):
        return sum(t.value(x, th) for t, th in self._parts(theta))

    def grad(self, x, theta):
        return sum(t.grad(x, th) for t, th in self._parts(theta))

    def hvp(self, x, theta, v):
        return sum(t.hvp(x, th, v) for t, th in self._parts(theta))

    def fused_grad(self, x, theta, y=None, data_w=0.0, *, x_prev=None, beta=0.0, step=None, out=None):
        # the first term takes the data term (its fused pass), the others add their gradients
        z = x if (x_prev is None or beta == 0) else x + beta * (x - x_prev)
        parts = self._parts(theta)
        g, _ = parts[0][0].fused_grad(z, parts[0][1], y, data_w)
        for t, th in parts[1:]:
            g = g + t.grad(z, th)
        return gradient_step(z, g, step, out), norm64(g)

    def fused_hvp(self, x, theta, v, data_w=0.0, *, out=None):
        parts = self._parts(theta)
        h = parts[0][0].fused_hvp(x, parts[0][1], v, data_w)
        for t, th in parts[1:]:
            h = h + t.hvp(x, th, v)
        return gradient_step(x, h, None, out)

    def mixed_vjp(self, x, theta, w):
        xp = get_namespace(x, theta)
        return xp.concatenate([t.mixed_vjp(x, th, w) for t, th in self._parts(theta)])

    def lipschitz(self, theta):
        return sum(t.lipschitz(th) for t, th in self._parts(theta))

    def convexity(self, theta):
        return sum(t.convexity(th) for t, th in self._parts(theta))

    def lipschitz_is_loose(self, theta):
        return any(t.lipschitz_is_loose(th) for t, th in self._parts(theta))

    def hessian_lipschitz(self, theta):
        vals = [t.hessian_lipschitz(th) for t, th in self._parts(theta)]
        return None if any(v is None for v in vals) else sum(vals)

    def mixed_lipschitz(self, theta):
        # J = [J_1 ... J_m] by column blocks: ||J - J'|| <= sqrt(sum ||J_i - J_i'||^2)
        return _combine_sqrt([t.mixed_lipschitz(th) for t, th in self._parts(theta)])

    def mixed_norm_bound(self, x, theta):
        return _combine_sqrt([t.mixed_norm_bound(x, th) for t, th in self._parts(theta)])

    def mixed_lipschitz_at(self, x, theta, radius):
        return _combine_sqrt([t.mixed_lipschitz_at(x, th, radius) for t, th in self._parts(theta)])

    def grad_error_bound(self, x, theta):
        # the terms' errors add, plus the rounding of the sum itself (a relative u per addition)
        vals = [t.grad_error_bound(x, th) for t, th in self._parts(theta)]
        if any(v is None for v in vals):
            return None
        return sum(vals) * (1.0 + 2.0 * len(vals) * float(np.finfo(x.dtype).eps))

    def describe(self, theta):
        return {f"term{i}": t.describe(th) for i, (t, th) in enumerate(self._parts(theta))}

    def __repr__(self):
        return " + ".join(repr(t) for t in self.terms)
