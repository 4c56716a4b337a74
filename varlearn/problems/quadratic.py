r"""The quadratic sanity problem of the MAID paper (maid-spec §6.1).

Lower level :math:`h(x, \theta) = \tfrac12\|A x + B\theta - b\|^2` with ``A`` of
full column rank, upper loss :math:`U(x) = \tfrac12\|C x - d\|^2`.  Everything
has a closed form:

* :math:`\hat x(\theta) = (A^TA)^{-1}A^T(b - B\theta) = \hat x(0) - M\theta`,
  :math:`M = (A^TA)^{-1}A^TB`;
* :math:`\nabla f(\theta) = -M^T \nabla U(\hat x(\theta))`;
* the bilevel optimum of :math:`f(\theta) = U(\hat x(\theta))` is a linear
  least-squares problem in θ.

Both levels carry the factor ½ (the reference code's convention; [AUTH-DI]
says the paper uses the un-halved squares).  Doubling both ``h`` and ``U``
leaves :math:`\hat x(\theta)` and the optimal θ unchanged and doubles ``f`` and
its gradient.
"""
from __future__ import annotations

import math

import numpy as np

from .._validation import as_real_floating, check_array, check_int
from ..backend import get_namespace, to_device
from .base import LowerProblem, UpperLoss

__all__ = ["QuadraticProblem", "LeastSquares", "make_paper_quadratic", "quadratic_bilevel_optimum"]


def _as_real(a, name, ndim):
    """A finite floating array with ``ndim`` dimensions (integers become float64 as they are)."""
    a = as_real_floating(a, name)
    if a.ndim != ndim:
        kind_name = "a 1-D array" if ndim == 1 else f"a {ndim}-D array"
        raise ValueError(f"{name} must be {kind_name}, got shape {tuple(a.shape)}")
    if any(s < 1 for s in a.shape):
        raise ValueError(f"{name} must not be empty, got shape {tuple(a.shape)}")
    return check_array(a, name)


def _common_dtype(*arrays):
    return np.dtype(np.float32) if all(a.dtype == np.float32 for a in arrays) else np.dtype(np.float64)


def _gram_eigs(a):
    """(λ_min, λ_max) of aᵀa in float64, widened by the backward error of ``eigvalsh``."""
    xp = get_namespace(a)
    a64 = a.astype(xp.float64, copy=False)
    w = xp.linalg.eigvalsh(a64.T @ a64)
    lo, hi = float(w[0]), float(w[-1])
    slack = 16.0 * a.shape[1] * np.finfo(np.float64).eps * max(abs(hi), 0.0)
    return lo - slack, hi + slack, lo, hi


class QuadraticProblem(LowerProblem):
    r"""Least-squares lower level :math:`h(x, \theta) = \tfrac12\|A x + B\theta - b\|^2`.

    Parameters
    ----------
    A : array of shape (m, n)
        Full column rank (``ValueError`` otherwise).
    B : array of shape (m, p)
    b : array of shape (m,)
    x0 : array of shape (n,), optional
        Starting point of the lower-level solver (default zeros).

    All arrays must live in the same namespace (NumPy or CuPy).  The problem
    computes in float32 only when every input is float32, else in float64.

    Constants: μ = λ_min(AᵀA), L = λ_max(AᵀA) (computed once, in float64, and
    widened by a few ulps of λ_max so that rounding cannot make them wrong);
    the Hessian and the mixed derivative J = AᵀB do not depend on ``x``, so
    their Lipschitz constants are 0, and ‖J‖ = ‖BᵀA‖₂.
    """

    def __init__(self, A, B, b, x0=None):
        A = _as_real(A, "A", 2)
        B = _as_real(B, "B", 2)
        b = _as_real(b, "b", 1)
        xp = get_namespace(A, B, b, x0)
        m, n = A.shape
        if B.shape[0] != m:
            raise ValueError(f"B must have {m} rows like A (shape {tuple(A.shape)}), got shape {tuple(B.shape)}")
        if b.shape[0] != m:
            raise ValueError(f"b must have length {m} like the rows of A (shape {tuple(A.shape)}), "
                             f"got shape {tuple(b.shape)}")
        if m < n:
            raise ValueError(f"A must have full column rank, but it has fewer rows than columns "
                             f"(shape {tuple(A.shape)})")
        self.dtype = _common_dtype(A, B, b)
        self.A = A.astype(self.dtype, copy=False)
        self.B = B.astype(self.dtype, copy=False)
        self.b = b.astype(self.dtype, copy=False)
        self._set_data(self.A, self.B, self.b)
        self.x_shape = (int(n),)
        self.n_params = int(B.shape[1])
        mu, L, lo, hi = _gram_eigs(A)
        if not (hi > 0) or lo <= 1e-12 * hi:
            raise ValueError(
                f"A must have full column rank: the eigenvalues of AᵀA range from {lo:.3e} to {hi:.3e} "
                f"(λ_min <= 1e-12 λ_max)"
            )
        self._mu, self._L = mu, L
        # ‖BᵀA‖₂ = sqrt(λ_max((BᵀA)ᵀ(BᵀA))), an n×n eigenproblem
        j64 = self.B.astype(xp.float64, copy=False).T @ self.A.astype(xp.float64, copy=False)
        self._j_norm = math.sqrt(max(_gram_eigs(j64)[1], 0.0))
        self._gram = self.A.T @ self.A
        # norms used by grad_error_bound: ‖|A|‖₂, ‖|B|‖₂, ‖B‖₂ (float64, widened like the others)
        self._abs_a = math.sqrt(max(_gram_eigs(xp.abs(self.A))[1], 0.0))
        self._abs_b = math.sqrt(max(_gram_eigs(xp.abs(self.B))[1], 0.0))
        self._b_norm = math.sqrt(max(_gram_eigs(self.B)[1], 0.0))
        self._rhs_norm = float(xp.linalg.norm(self.b.astype(xp.float64)))
        # thin QR of A (float64) for the closed forms: x = R⁻¹Qᵀ(b − Bθ)
        self._q, self._r = xp.linalg.qr(self.A.astype(xp.float64, copy=False))
        self._M = None
        if x0 is None:
            self._x0 = None
        else:
            x0 = _as_real(x0, "x0", 1)
            if tuple(x0.shape) != self.x_shape:
                raise ValueError(f"x0 must have shape {self.x_shape}, got shape {tuple(x0.shape)}")
            self._x0 = x0.astype(self.dtype)

    # ------------------------------------------------------------------ θ and x
    def _default_params(self, rng):  # noqa: ARG002
        # the paper starts at θ0 = 1 (the all-ones vector)
        return np.ones(self.n_params)

    def param_layout(self):
        return [("theta", slice(0, self.n_params))]

    def initial_x(self):
        if self._x0 is None:
            return self.xp.zeros(self.x_shape, dtype=self.dtype)
        return self._x0.copy()

    def _theta(self, theta):
        if theta.ndim != 1 or theta.shape[0] != self.n_params:
            raise ValueError(f"theta must be a 1-D array of length {self.n_params}, got shape {tuple(theta.shape)}")
        return theta.astype(self.dtype, copy=False)

    def _x(self, x, name="x"):
        if tuple(x.shape) != self.x_shape:
            raise ValueError(f"{name} must have shape {self.x_shape}, got shape {tuple(x.shape)}")
        return x

    def _residual(self, x, theta):
        return self.A @ self._x(x) + self.B @ self._theta(theta) - self.b

    # ------------------------------------------------------------------ derivatives
    def value(self, x, theta):
        r = self._residual(x, theta)
        return 0.5 * self.xp.vdot(r, r)

    def grad(self, x, theta):
        return self.A.T @ self._residual(x, theta)

    def hvp(self, x, theta, v):  # noqa: ARG002
        self._x(x)
        return self._gram @ self._x(v, "v")

    def mixed_vjp(self, x, theta, w):
        self._x(x)
        self._theta(theta)
        return (self.B.T @ (self.A @ self._x(w, "w"))).astype(theta.dtype, copy=False)

    # ------------------------------------------------------------------ constants
    def strong_convexity(self, theta):  # noqa: ARG002
        return self._mu

    def lipschitz(self, theta):  # noqa: ARG002
        return self._L

    def hessian_lipschitz(self, theta):  # noqa: ARG002
        return 0.0

    def mixed_lipschitz(self, theta):  # noqa: ARG002
        return 0.0

    def mixed_norm_bound(self, x, theta):  # noqa: ARG002
        return self._j_norm

    def grad_error_bound(self, x, theta):
        r"""First-order bound on the rounding error of :meth:`grad` (``Aᵀ(Ax + Bθ − b)``).

        With :math:`\gamma_k` of the problem's dtype (Higham 2002, §3.1),
        :math:`r = Ax + B\theta - b` is computed with error at most
        :math:`\gamma_{n+2}|A||x| + \gamma_{p+3}|B||\theta| + 2u|b|` (θ is cast to the
        dtype first), and :math:`A^Tr` adds :math:`\gamma_m|A|^T|r|`; norms of
        :math:`|A|, |B|` are computed once.
        """
        from .base import gamma

        xp = self.xp
        m, n = self.A.shape
        p = self.n_params
        dt = self.dtype
        u = float(np.finfo(dt).eps) / 2.0
        xn = float(xp.linalg.norm(x.astype(xp.float64)))
        tn = float(xp.linalg.norm(theta.astype(xp.float64)))
        r_bound = math.sqrt(self._L) * xn + self._b_norm * tn + self._rhs_norm
        inner = (gamma(n + 2, dt) * self._abs_a * xn + gamma(p + 3, dt) * self._abs_b * tn
                 + 2.0 * u * self._rhs_norm)
        return self._abs_a * (gamma(m, dt) * r_bound + inner) * (1.0 + gamma(2, dt))

    # ------------------------------------------------------------------ closed forms
    def _solve_r(self, rhs):
        return self.xp.linalg.solve(self._r, rhs)

    def solution(self, theta):
        r"""The exact lower-level solution :math:`\hat x(\theta) = (A^TA)^{-1}A^T(b - B\theta)`.

        Computed in float64 from a thin QR factorisation of ``A`` (no inverse,
        no normal equations), returned in the problem's dtype.
        """
        xp = self.xp
        th = self._theta(theta).astype(xp.float64)
        rhs = self.b.astype(xp.float64) - self.B.astype(xp.float64) @ th
        return self._solve_r(self._q.T @ rhs).astype(self.dtype, copy=False)

    def sensitivity(self):
        r""":math:`M = (A^TA)^{-1}A^TB` (float64, shape (n, p)): :math:`\hat x(\theta) = \hat x(0) - M\theta`."""
        if self._M is None:
            self._M = self._solve_r(self._q.T @ self.B.astype(self.xp.float64))
        return self._M

    def exact_hypergradient(self, theta, upper):
        r"""The exact hypergradient :math:`\nabla f(\theta) = -M^T \nabla U(\hat x(\theta))` (float64).

        Valid for any upper loss with a ``grad``; for :class:`LeastSquares`
        it is :math:`-M^TC^T(C\hat x(\theta) - d)`.
        """
        xp = self.xp
        x = self.solution(theta)
        g = upper.grad(x).astype(xp.float64, copy=False)
        return -(self.sensitivity().T @ g)

    def optimal_theta(self, upper):
        r"""The bilevel optimum for a :class:`LeastSquares` upper loss, in closed form.

        :math:`f(\theta) = \tfrac12\|C(\hat x(0) - M\theta) - d\|^2` is a linear
        least-squares problem; ``theta* = lstsq(C M, C x̂(0) - d)`` (the
        minimum-norm minimiser when ``C M`` is rank deficient).

        Returns
        -------
        theta : float64 array of shape (p,)
        fun : float
            :math:`f(\theta^*)`.
        """
        if not isinstance(upper, LeastSquares):
            raise TypeError(f"upper must be a LeastSquares loss, got {type(upper).__name__}")
        if upper.C.shape[1] != self.x_shape[0]:
            raise ValueError(f"upper.C must have {self.x_shape[0]} columns like A, got shape {tuple(upper.C.shape)}")
        xp = self.xp
        C = upper.C.astype(xp.float64, copy=False)
        d = upper.d.astype(xp.float64, copy=False)
        x_zero = self.solution(xp.zeros(self.n_params, dtype=xp.float64)).astype(xp.float64, copy=False)
        CM = C @ self.sensitivity()
        theta, *_ = xp.linalg.lstsq(CM, C @ x_zero - d, rcond=None)
        r = C @ (x_zero - self.sensitivity() @ theta) - d
        return theta, 0.5 * float(xp.vdot(r, r))

    def __repr__(self):
        m, n = self.A.shape
        return f"QuadraticProblem(m={m}, n={n}, n_params={self.n_params}, backend={self.backend!r})"


def quadratic_bilevel_optimum(problem, upper):
    """``problem.optimal_theta(upper)``: the closed-form optimum ``(theta*, f(theta*))``."""
    return problem.optimal_theta(upper)


class LeastSquares(UpperLoss):
    r"""Upper loss :math:`U(x) = \tfrac12\|C x - d\|^2`; :math:`L_U = \lambda_{max}(C^TC)`; convex.

    Parameters
    ----------
    C : array of shape (k, n)
    d : array of shape (k,)
    """

    convex = True

    def __init__(self, C, d):
        C = _as_real(C, "C", 2)
        d = _as_real(d, "d", 1)
        get_namespace(C, d)
        if d.shape[0] != C.shape[0]:
            raise ValueError(f"d must have length {C.shape[0]} like the rows of C (shape {tuple(C.shape)}), "
                             f"got shape {tuple(d.shape)}")
        dtype = _common_dtype(C, d)
        self.C = C.astype(dtype, copy=False)
        self.d = d.astype(dtype, copy=False)
        self._L = _gram_eigs(self.C)[1]

    def _check(self, x):
        if x.ndim != 1 or x.shape[0] != self.C.shape[1]:
            raise ValueError(f"x must have shape ({self.C.shape[1]},), got shape {tuple(x.shape)}")

    def value(self, x):
        self._check(x)
        r = self.C @ x - self.d
        return 0.5 * get_namespace(x, self.C).vdot(r, r)

    def grad(self, x):
        self._check(x)
        return self.C.T @ (self.C @ x - self.d)

    def lipschitz(self):
        return self._L

    def __repr__(self):
        return f"LeastSquares(C_shape={tuple(self.C.shape)})"


def make_paper_quadratic(seed=29, m=1000, n=10, xp=np):
    r"""The quadratic test of the MAID paper (maid-spec §6.1).

    Draws, in this order, from ``numpy.random.default_rng(seed)``: ``A1, A2,
    A3`` (each ``m × n``, U[0,1)), ``x1, x2, theta_e`` (each U[0,1)^n), then the
    noises of ``b1`` and ``b2`` (0.01·N(0, I_m)), and sets
    ``b1 = A1 x1 + noise1``, ``b2 = A2 x2 + A3 theta_e + noise2``.  The numbers
    differ from the PyTorch reference (a different generator), not the
    construction.

    Lower level ``h(x, θ) = ½‖A2 x + A3 θ − b2‖²`` (starting point ``x2``),
    upper ``U(x) = ½‖A1 x − b1‖²``; both halved (see the module docstring).

    Parameters
    ----------
    seed : int
    m, n : int
        Rows and columns of the matrices (θ has ``n`` entries).
    xp : module or str
        ``numpy`` or ``cupy`` (or their names): where the arrays are placed,
        explicitly, after drawing them on the host in float64.

    Returns
    -------
    problem : QuadraticProblem
    upper : LeastSquares
    theta0 : float64 array of ones, shape (n,)
    """
    m = check_int(m, "m", minimum=1)
    n = check_int(n, "n", minimum=1)
    if m < n:
        raise ValueError(f"m must be >= n for A2 to have full column rank, got m={m}, n={n}")
    rng = np.random.default_rng(seed)
    A1 = rng.random((m, n))
    A2 = rng.random((m, n))
    A3 = rng.random((m, n))
    x1 = rng.random(n)
    x2 = rng.random(n)
    theta_e = rng.random(n)
    noise1 = 0.01 * rng.standard_normal(m)
    noise2 = 0.01 * rng.standard_normal(m)
    b1 = A1 @ x1 + noise1
    b2 = A2 @ x2 + A3 @ theta_e + noise2

    def dev(a):
        return to_device(a, xp)

    problem = QuadraticProblem(dev(A2), dev(A3), dev(b2), x0=dev(x2))
    upper = LeastSquares(dev(A1), dev(b1))
    theta0 = dev(np.ones(n))
    return problem, upper, theta0
