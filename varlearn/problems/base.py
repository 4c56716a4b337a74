r"""Abstract base classes of lower-level problems and upper-level losses.

A bilevel problem in varlearn is a pair

.. math:: \min_\theta\ U(\hat x(\theta)),\qquad \hat x(\theta) = \arg\min_x h(x, \theta),

with :math:`h` μ-strongly convex in ``x`` (a :class:`LowerProblem`) and :math:`U` smooth
(an :class:`UpperLoss`).  The solvers (:mod:`varlearn.solvers`) and the hypergradient
(:mod:`varlearn.hypergradient`) use only the methods documented here.

References
----------
.. [MAID] M. S. Salehi, S. Mukherjee, L. Roberts and M. J. Ehrhardt, "An adaptively inexact
   first-order method for bilevel optimization with application to hyperparameter
   learning", arXiv:2308.10098, 2024 (the constants of the hypergradient error bound,
   Theorem 2.1).
.. [CP16] A. Chambolle and T. Pock, "An introduction to continuous optimization for
   imaging", Acta Numerica 25 (2016), 161-319 (strongly convex FISTA, §4.7).
.. [H02] N. J. Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., SIAM,
   2002 (the standard model of floating-point arithmetic, §2.2 and §3.1).
.. [P16] F. Pedregosa, "Hyperparameter optimization with approximate gradient",
   ICML 2016 (HOAG; the implicit hypergradient with inexact inner solves).
"""
from __future__ import annotations

import abc
import math

import numpy as np

from .._validation import check_array, check_theta
from ..backend import get_namespace, to_device, xp_name
from ..linalg import gamma, gradient_step, norm64

__all__ = ["LowerProblem", "UpperLoss", "gamma"]


class LowerProblem(abc.ABC):
    r"""A lower-level problem :math:`\min_x h(x, \theta)`, μ-strongly convex in ``x``.

    A subclass calls :meth:`_set_data` with its data arrays (this fixes the array
    namespace ``xp``), sets ``n_params``, ``x_shape`` and ``dtype``, and implements the
    abstract methods: :meth:`value`, :meth:`grad`, :meth:`hvp`, :meth:`mixed_vjp`,
    :meth:`strong_convexity`, :meth:`lipschitz` and :meth:`_default_params`.  Every other
    method has a generic default that a problem overrides when it knows better (a fused
    pass, a tighter constant, a rounding bound).

    ``x`` has shape ``x_shape`` and dtype ``dtype``; ``theta`` is 1-D float64 in the same
    array namespace (NumPy or CuPy) as the data.  μ, L and the other constants are the
    true constants of :math:`h` as written (no hidden normalisation).

    References
    ----------
    See the module docstring: [MAID]_, [CP16]_, [H02]_, [P16]_.
    """

    n_params: int = 0
    x_shape: tuple = ()
    dtype = np.dtype(np.float64)
    xp = np

    # ------------------------------------------------------------------ setup
    def _set_data(self, *arrays):
        self.xp = get_namespace(*arrays)

    @property
    def backend(self) -> str:
        """``"numpy"`` or ``"cupy"``: where the problem's data live."""
        return xp_name(self.xp)

    def init_params(self, rng=None):
        """Default θ (1-D, float64) in the problem's array namespace.

        Parameters
        ----------
        rng : int, numpy.random.Generator or None
            Passed to :meth:`_default_params` (for problems whose default is random).

        Returns
        -------
        array of shape (n_params,)
            Built on the host and moved explicitly to the problem's device (a few numbers).
        """
        return to_device(np.asarray(self._default_params(rng), dtype=np.float64), self.xp)

    @abc.abstractmethod
    def _default_params(self, rng):
        """A default θ on the host (anything :func:`numpy.asarray` turns into ``n_params`` floats)."""

    def initial_x(self):
        """Default starting point of the lower-level solver (zeros of ``x_shape``)."""
        return self.xp.zeros(self.x_shape, dtype=self.dtype)

    def check_theta(self, theta, name="theta"):
        """Validate θ (1-D, right length, finite, the problem's namespace); returns it."""
        return check_theta(theta, self.n_params, xp=self.xp, name=name)

    def check_x(self, x, name="x"):
        """Validate a point ``x`` of the lower level (shape ``x_shape``, the problem's namespace)."""
        return check_array(x, name, xp=self.xp, shape=self.x_shape)

    # ------------------------------------------------------------------ derivatives
    @abc.abstractmethod
    def value(self, x, theta):
        r"""The objective :math:`h(x, \theta)`.

        Parameters
        ----------
        x : array of shape ``x_shape``
        theta : array of shape (n_params,)

        Returns
        -------
        0-d array (or float)
        """

    @abc.abstractmethod
    def grad(self, x, theta):
        r"""The gradient :math:`\nabla_x h(x, \theta)`, shaped like ``x``."""

    @abc.abstractmethod
    def hvp(self, x, theta, v):
        r"""The Hessian-vector product :math:`\nabla^2_{xx} h(x, \theta)\, v`, shaped like ``x``.

        Used by conjugate gradients on :math:`H q = \nabla U` (the adjoint system of the
        hypergradient, [MAID]_ and [P16]_).
        """

    @abc.abstractmethod
    def mixed_vjp(self, x, theta, w):
        r"""The mixed derivative applied to ``w``: :math:`(\partial_\theta \nabla_x h(x, \theta))^T w`.

        Returns an array shaped like θ; the hypergradient is :math:`-J^T q` with
        :math:`J = \partial_\theta\nabla_x h` ([MAID]_ eq. (2.3), [P16]_).
        """

    def fused_grad(self, x, theta, *, x_prev=None, beta=0.0, step=None, out=None):
        r"""The gradient at an extrapolated point, optionally followed by a gradient step, in one pass.

        .. math::

            z = x + \beta (x - x_{prev}),\qquad g = \nabla_x h(z, \theta),\qquad
            \text{out} \leftarrow g \ \text{(step None)}\ \text{or}\ z - \text{step}\cdot g

        (:math:`z = x` when ``x_prev`` is None or ``beta == 0``).  This is the one call a
        FISTA iteration makes ([CP16]_ §4.7): with ``x_prev``, ``beta`` and ``step = 1/L`` it
        is a whole step; with ``step=None`` it returns the gradient at ``x``.  The
        generic default costs one :meth:`grad` and two elementwise passes; problems with a
        fused kernel override it.  With ``step=None`` and no extrapolation the array written
        is the one :meth:`grad` returns (same rounding), so :meth:`grad_error_bound` bounds
        its error too.

        Parameters
        ----------
        x : array of shape ``x_shape``
        theta : array of shape (n_params,)
        x_prev : array of shape ``x_shape``, optional
        beta : float
            Extrapolation weight.
        step : float, optional
            Step length; None returns the gradient itself.
        out : array of shape ``x_shape``, optional
            Where to write the result (allocated when None).  Must not alias ``x`` or
            ``x_prev``.

        Returns
        -------
        out : array
            ``g`` or ``z - step * g``.
        grad_norm : float
            :math:`\|g\|` as a Python float, the sum of squares accumulated in float64
            (one host synchronisation).
        """
        z = x if (x_prev is None or beta == 0) else x + beta * (x - x_prev)
        g = self.grad(z, theta)
        return gradient_step(z, g, step, out), norm64(g)

    # ------------------------------------------------------------------ constants
    @abc.abstractmethod
    def strong_convexity(self, theta) -> float:
        r"""μ > 0: a lower bound on the smallest eigenvalue of :math:`\nabla^2_{xx}h` over all ``x``.

        It turns a gradient norm into a distance, :math:`\|x - \hat x\| \le \|\nabla_x h(x)\|/\mu`,
        the certificate of :func:`~varlearn.solvers.solve_lower` ([CP16]_ §4.7, [MAID]_ §2).
        """

    @abc.abstractmethod
    def lipschitz(self, theta) -> float:
        r"""L: an upper bound on :math:`\|\nabla^2_{xx}h\|` over all ``x`` (``inf`` when unknown).

        FISTA's step is ``1/L`` without backtracking ([CP16]_ §4.7).
        """

    def lipschitz_is_loose(self, theta) -> bool:  # noqa: ARG002
        """Whether :meth:`lipschitz` may be far above the true curvature.

        With ``backtracking="auto"`` FISTA backtracks on such problems (default False).
        """
        return False

    def hessian_lipschitz(self, theta):  # noqa: ARG002
        r"""Global Lipschitz constant :math:`L_H` in ``x`` of :math:`\nabla^2_{xx}h`, or None (unknown).

        Enters the hypergradient error bound through :math:`L_{H^{-1}} = L_H/\mu^2`
        ([MAID]_ Theorem 2.1); None makes :class:`~varlearn.hypergradient.BoundEstimator`
        estimate it.
        """
        return None

    def hessian_lipschitz_at(self, x, theta, radius):  # noqa: ARG002
        """:math:`L_H` on the ball of ``radius`` around ``x`` (default :meth:`hessian_lipschitz`).

        Problems whose Hessian is only locally Lipschitz (logistic) give a tighter,
        local constant here.
        """
        return self.hessian_lipschitz(theta)

    def mixed_lipschitz(self, theta):  # noqa: ARG002
        r"""Global Lipschitz constant :math:`L_J` in ``x`` of :math:`\partial_\theta\nabla_x h`, or None.

        The constant :math:`L_J` of [MAID]_ Theorem 2.1 (operator norm, θ Euclidean).
        """
        return None

    def mixed_lipschitz_at(self, x, theta, radius):  # noqa: ARG002
        """:math:`L_J` on the ball of ``radius`` around ``x`` (default :meth:`mixed_lipschitz`)."""
        return self.mixed_lipschitz(theta)

    def mixed_norm_bound(self, x, theta):  # noqa: ARG002
        r"""An upper bound on :math:`\|\partial_\theta\nabla_x h(x, \theta)\|` (operator norm), or None.

        The :math:`\|J\|` of [MAID]_ Theorem 2.1; None makes the estimator take a
        power-iteration estimate.
        """
        return None

    def grad_error_bound(self, x, theta):
        r"""A bound on the rounding error :math:`\|fl(\nabla_x h(x,\theta)) - \nabla_x h(x,\theta)\|`.

        It bounds the error of :meth:`grad` (and of :meth:`fused_grad` without step and
        extrapolation, which computes the same array).  Used by
        :func:`~varlearn.solvers.solve_lower` to keep its distance certificate valid in
        floating point.  The built-in problems override it with first-order bounds from
        the standard model ([H02]_ §3.1: :math:`|fl(a^Tb) - a^Tb| \le \gamma_k |a|^T|b|`,
        :math:`\gamma_k = ku/(1 - ku)`), ``u`` the unit roundoff of the problem's dtype.
        This generic default is an *estimate*: :math:`16\,u\sqrt{n}\,L\,\|x\|_\infty` (``L``
        the Lipschitz bound, 1 when unknown), the size of the terms a gradient sums.

        Returns
        -------
        float
        """
        u = float(np.finfo(self.dtype).eps) / 2.0
        L = float(self.lipschitz(theta))
        if not math.isfinite(L):
            L = 1.0
        xmax = float(self.xp.abs(x).max()) if x.size else 0.0
        return 16.0 * u * math.sqrt(x.size) * L * xmax

    def describe(self, theta) -> dict:
        """θ as a JSON-friendly dict (problems with named parameters say more)."""
        return {"theta": np.asarray(theta.get() if hasattr(theta, "get") else theta).tolist()}

    def __repr__(self):
        return f"{type(self).__name__}(x_shape={self.x_shape}, n_params={self.n_params}, backend={self.backend!r})"


class UpperLoss(abc.ABC):
    r"""An upper-level loss :math:`U(x)`, smooth, evaluated at the lower-level solution.

    A subclass implements :meth:`value` and :meth:`grad`, and may give :meth:`lipschitz`
    (:math:`L_U`) and set ``convex``.

    References
    ----------
    See the module docstring: [MAID]_ (where :math:`L_U` and :math:`\|\nabla U\|` enter the
    error bound), [P16]_.
    """

    #: whether U is convex (used by the analysis of accuracy floors)
    convex: bool = False

    @abc.abstractmethod
    def value(self, x):
        """:math:`U(x)` as a 0-d array (or float)."""

    @abc.abstractmethod
    def grad(self, x):
        r""":math:`\nabla U(x)`, shaped like ``x``: the right-hand side of the adjoint system."""

    def lipschitz(self) -> float:
        r""":math:`L_U`, the Lipschitz constant of :math:`\nabla U` (``inf`` when unknown; [MAID]_ Theorem 2.1)."""
        return math.inf

    def __repr__(self):
        return f"{type(self).__name__}()"
