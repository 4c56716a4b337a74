"""Base classes of lower-level problems and upper-level losses."""
from __future__ import annotations

import math

import numpy as np

from .._validation import check_array, check_theta
from ..backend import get_namespace, to_device, xp_name
from ..linalg import norm as _lnorm

__all__ = ["LowerProblem", "UpperLoss", "gamma"]


def gamma(k, dtype):
    r""":math:`\gamma_k = k u / (1 - k u)` for the unit roundoff ``u`` of ``dtype`` (Higham 2002, §3.1)."""
    u = float(np.finfo(dtype).eps) / 2.0
    ku = k * u
    return ku / (1.0 - ku) if ku < 0.5 else math.inf


class LowerProblem:
    r"""A lower-level problem :math:`\min_x h(x, \theta)`, μ-strongly convex in ``x``.

    Subclasses set ``n_params``, ``x_shape`` and the array namespace (through
    :meth:`_set_data`), and implement ``value``, ``grad``, ``hvp``,
    ``mixed_vjp`` (:math:`(\partial_\theta\nabla_x h)^T w`),
    ``strong_convexity(theta)`` (μ, the true constant of ``h`` as written),
    ``lipschitz(theta)`` (an upper bound L on :math:`\|\nabla^2_{xx}h\|`) and
    ``_default_params(rng)`` (a host θ).

    Optional, for the hypergradient error bound: ``hessian_lipschitz(theta)``
    and ``mixed_lipschitz(theta)`` (Lipschitz constants in ``x`` of the
    Hessian and of the mixed derivative; ``None`` when unknown),
    ``mixed_lipschitz_at(x, theta, radius)`` (the latter on a ball, when no
    global constant exists), ``mixed_norm_bound(x, theta)`` (an upper bound on
    :math:`\|\partial_\theta\nabla_x h\|`) and ``grad_error_bound(x, theta)``
    (rounding error of the computed gradient).
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

        The default is built on the host and moved explicitly to the problem's
        device (a few numbers).
        """
        return to_device(np.asarray(self._default_params(rng), dtype=np.float64), self.xp)

    def _default_params(self, rng):
        raise NotImplementedError

    def initial_x(self):
        """Default starting point of the lower-level solver."""
        return self.xp.zeros(self.x_shape, dtype=self.dtype)

    def check_theta(self, theta, name="theta"):
        """Validate θ (1-D, right length, finite, the problem's namespace); returns it."""
        return check_theta(theta, self.n_params, xp=self.xp, name=name)

    def check_x(self, x, name="x"):
        """Validate a point ``x`` of the lower level."""
        return check_array(x, name, xp=self.xp, shape=self.x_shape)

    # ------------------------------------------------------------------ derivatives
    def value(self, x, theta):
        raise NotImplementedError

    def grad(self, x, theta):
        raise NotImplementedError

    def hvp(self, x, theta, v):
        raise NotImplementedError

    def mixed_vjp(self, x, theta, w):
        raise NotImplementedError

    def strong_convexity(self, theta) -> float:
        raise NotImplementedError

    def lipschitz(self, theta) -> float:
        raise NotImplementedError

    def lipschitz_is_loose(self, theta) -> bool:  # noqa: ARG002
        """Whether :meth:`lipschitz` may be far above the true curvature (then FISTA backtracks)."""
        return False

    def hessian_lipschitz(self, theta):  # noqa: ARG002
        return None

    def mixed_lipschitz(self, theta):  # noqa: ARG002
        return None

    def mixed_norm_bound(self, x, theta):  # noqa: ARG002
        return None

    def hessian_lipschitz_at(self, x, theta, radius):  # noqa: ARG002
        """Lipschitz constant in ``x`` of the Hessian on the ball of ``radius`` around ``x``
        (tighter than a global one where the problem knows how); default :meth:`hessian_lipschitz`."""
        return self.hessian_lipschitz(theta)

    def mixed_lipschitz_at(self, x, theta, radius):  # noqa: ARG002
        """Lipschitz constant in ``x`` of the mixed derivative on the ball of ``radius`` around ``x``
        (for problems whose constant depends on where it is taken); default :meth:`mixed_lipschitz`."""
        return self.mixed_lipschitz(theta)

    def grad_error_bound(self, x, theta):
        r"""A bound on the rounding error :math:`\|fl(\nabla_x h(x,\theta)) - \nabla_x h(x,\theta)\|` of :meth:`grad`.

        Used by :func:`~varlearn.solvers.solve_lower` to keep its distance
        certificate valid in floating point.  The built-in problems override
        this with first-order bounds from the standard model of floating-point
        arithmetic (Higham, *Accuracy and Stability of Numerical Algorithms*,
        2002, §3.1: :math:`|fl(a^Tb) - a^Tb| \le \gamma_k |a|^T|b|`,
        :math:`\gamma_k = ku/(1 - ku)`), with ``u`` the unit roundoff of the
        problem's dtype.  This generic default is an *estimate*:
        :math:`16\,u\sqrt{n}\,L\,\|x\|_\infty` (``L`` the Lipschitz bound, 1
        when unknown), the size of the terms a gradient sums.
        """
        u = float(np.finfo(self.dtype).eps) / 2.0
        L = float(self.lipschitz(theta))
        if not math.isfinite(L):
            L = 1.0
        xmax = float(self.xp.abs(x).max()) if x.size else 0.0
        return 16.0 * u * math.sqrt(x.size) * L * xmax

    def describe(self, theta) -> dict:
        return {"theta": np.asarray(theta.get() if hasattr(theta, "get") else theta).tolist()}

    # ------------------------------------------------------------------ solver hook
    def fista_step(self, x, x_prev, beta, tau, theta, out):
        """One FISTA step: ``z = x + beta (x - x_prev)``, ``out = z - tau grad h(z)``.

        Returns ``||grad h(z)||`` as a float (one host sync).  ``out`` must not
        alias ``x`` or ``x_prev``.  Problems override this with fused kernels;
        the generic version costs one gradient.
        """
        xp = self.xp
        z = x + beta * (x - x_prev) if beta != 0 else x
        g = self.grad(z, theta)
        gnorm = _lnorm(g)
        xp.subtract(z, tau * g, out=out)
        return gnorm

    def __repr__(self):
        return f"{type(self).__name__}(x_shape={self.x_shape}, n_params={self.n_params}, backend={self.backend!r})"


class UpperLoss:
    r"""An upper-level loss :math:`U(x)`.

    Subclasses implement ``value(x)`` (a 0-d array), ``grad(x)`` and
    ``lipschitz()`` (:math:`L_U`, the Lipschitz constant of :math:`\nabla U`),
    and set ``convex``.
    """

    convex: bool = False

    def value(self, x):
        raise NotImplementedError

    def grad(self, x):
        raise NotImplementedError

    def lipschitz(self) -> float:
        return math.inf

    def __repr__(self):
        return f"{type(self).__name__}()"
