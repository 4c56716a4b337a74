r"""Certified strongly convex FISTA: the lower-level solver, which owns its step.

The problem exposes derivatives and one optional fused pass,
:meth:`~varlearn.problems.LowerProblem.fused_grad`; every iteration of :class:`FISTA`
is one call of it (a whole step ``z - g/L`` in one pass without backtracking; the
gradient at the solver's own extrapolated point under backtracking).

References
----------
.. [CP16] A. Chambolle and T. Pock, "An introduction to continuous optimization for
   imaging", Acta Numerica 25 (2016), 161-319 (§4.7: FISTA for strongly convex
   objectives, the constant-parameter momentum used here).
.. [H02] N. J. Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., SIAM,
   2002 (§2.2, §3.1: the rounding bounds behind the certificate).
.. [MAID] M. S. Salehi, S. Mukherjee, L. Roberts and M. J. Ehrhardt, "An adaptively inexact
   first-order method for bilevel optimization with application to hyperparameter
   learning", arXiv:2308.10098, 2024 (the lower-level accuracy the certificate provides).
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np

from .._validation import check_int, check_positive
from ..backend import random_normal
from ..linalg import norm, norm64
from ..results import STATUS_MESSAGES, ConvergenceWarning, Result
from ._common import Notifier

__all__ = ["FISTA", "solve_lower", "estimate_lipschitz"]

_NO_CERT = (math.nan, math.nan, math.nan)


def estimate_lipschitz(problem, theta, x, n_iter=10, rng=None):
    """Power-iteration estimate of ``||hess h(x, theta)||`` (``n_iter`` Hessian-vector products).

    Returns a lower estimate of the largest eigenvalue at ``x`` (not a bound).  The
    starting vector is drawn on the device of the problem's data
    (:func:`varlearn.backend.random_normal`) from ``rng`` (a seed or a
    ``numpy.random.Generator``; default seed 0, so the estimate is reproducible).
    """
    xp = problem.xp
    v = random_normal(xp, problem.x_shape, problem.dtype, 0 if rng is None else rng)
    v /= norm(v)
    lam = 0.0
    for _ in range(n_iter):
        hv = problem.hvp(x, theta, v)
        lam = norm(hv)
        if lam == 0 or not math.isfinite(lam):
            break
        v = hv / lam
    return lam


def _momentum(t, q):
    """(beta, t_new) of the constant-parameter strongly convex FISTA ([CP16]_ §4.7), ``q = mu/L``."""
    if q >= 1.0:
        return 0.0, 1.0
    t_new = 0.5 * (1.0 - q * t * t + math.sqrt((1.0 - q * t * t) ** 2 + 4.0 * t * t))
    return (t - 1.0) * (1.0 - t_new * q) / (t_new * (1.0 - q)), t_new


@dataclass(frozen=True)
class FISTA:
    r"""Strongly convex FISTA with a distance certificate that holds in floating point.

    Runs FISTA with the constant-parameter strong-convexity momentum of [CP16]_ with
    step ``1/L`` and ``q = mu/L``; μ is the problem's true strong-convexity constant and
    L its Lipschitz bound (or a backtracked constant).

    **Iteration.** One call of ``problem.fused_grad`` per iteration: without
    backtracking ``fused_grad(x_k, theta, x_prev=x_{k-1}, beta=beta_k, step=1/L)`` writes
    :math:`x_{k+1} = z_k - \nabla h(z_k)/L`, :math:`z_k = x_k + \beta_k(x_k - x_{k-1})`, in
    one pass and returns :math:`\|\nabla h(z_k)\|`; with backtracking the solver forms
    :math:`z_k` itself, calls ``fused_grad(z_k, theta)`` for the gradient and takes the
    step after its descent test.

    **Stopping rule.** When :math:`\|\nabla h(z_k)\| \le \mu\,` ``tol`` (or the tighter
    target below) the point :math:`z_k` is *certified*: with the gradient ``g`` at the
    array :math:`z_k` (the one of the backtracking step; without backtracking
    :math:`z_k` exists only inside the fused pass, so it is formed and its gradient
    computed once more, counted in ``nit``), ``G`` = ‖g‖ computed in float64, ``rho =
    problem.grad_error_bound(z_k, theta)`` a bound on the rounding error of ``g``
    ([H02]_), and

    .. math:: \|z_k - \hat x(\theta)\| \le \text{distance\_bound} :=
              (1 + 2u)(G\,(1 + n u_{64}) + \rho)/\mu

    (strong convexity, :math:`\|x - \hat x\| \le \|\nabla_x h(x)\|/\mu`, applied to the
    exact gradient; ``u`` the unit roundoff of the problem's dtype).  The solver returns
    ``x = z_k`` with status ``"success"`` when ``distance_bound <= tol``, so the bound
    holds for the array returned, bit for bit, including rounding.  Otherwise it lowers
    the target to ``mu * tol - (1 + 2u) rho`` and goes on.  ``x0`` itself is tested
    first (``nit = 1`` if it passes).

    **Tolerances rounding does not allow.** The attainable gradient level is estimated
    as ``F = (1 + 2u) rho + 2 u L ||x||`` (the rounding of the computed gradient plus the
    gradient at the nearest representable point, ``L`` the step constant).  When ``F >=
    mu * tol / 2`` (at ``x0`` or at a candidate), ``tol`` cannot be certified in this
    dtype: the solver iterates until the computed gradient norm is at most ``max(mu *
    tol, 4 F)`` and returns that point with status ``"precision_limit"`` (``success``
    False) and its honest ``distance_bound`` (above ``tol``).  It also returns
    ``"precision_limit"`` when the smallest gradient norm seen has not dropped by 1% for
    ``max(200, maxiter // 10)`` iterations while it is within 100 times ``F`` at ``x0``
    (stagnation at the rounding level).

    **Backtracking.** With ``backtracking=True`` (or ``"auto"`` when the problem reports
    a loose Lipschitz bound, or its bound is infinite), L starts at ``L0`` when given
    (e.g. the final L of a previous solve at a nearby θ) or else at 1.5 times a 10-step
    power-iteration estimate, and doubles, up to the bound, whenever the gradient step
    fails the descent test ``h(z - g/L) <= h(z) - ||g||^2 / (2L)``.

    Parameters
    ----------
    maxiter : int >= 1
        Maximum number of FISTA iterations.
    backtracking : {True, False, "auto"}

    Examples
    --------
    >>> import numpy as np, varlearn as vl
    >>> from varlearn.solvers import FISTA
    >>> prob = vl.DenoisingProblem(np.random.default_rng(0).random((8, 8)), vl.TotalVariation())
    >>> res = FISTA(maxiter=500).solve(prob, np.array([-2.0, -3.0]), tol=1e-6)
    >>> bool(res.success and res.distance_bound <= 1e-6)
    True
    """

    maxiter: int = 10000
    backtracking: bool | str = "auto"

    def __post_init__(self):
        object.__setattr__(self, "maxiter", check_int(self.maxiter, "maxiter", minimum=1))
        if self.backtracking not in (True, False, "auto"):
            raise ValueError(f"backtracking must be True, False or 'auto', got {self.backtracking!r}")

    def solve(self, problem, theta, tol, x0=None, L0=None, callback=None):
        """Solve ``problem`` at ``theta`` to the certified distance ``tol``.

        Parameters
        ----------
        problem : LowerProblem
        theta : array
            Hyperparameters, in the problem's array namespace.
        tol : float > 0
            Target distance to the exact solution.
        x0 : array, optional
            Warm start (default ``problem.initial_x()``); never modified.
        L0 : float, optional
            Starting step constant for backtracking (ignored without backtracking).
        callback : callable, optional
            ``callback(intermediate_result)`` after each iteration that does not end the
            solve, with a
            :class:`~varlearn.results.Result` holding ``nit`` (gradients so far), ``x``
            (the new iterate :math:`x_{k+1}`), ``grad_norm`` (:math:`\\|\\nabla
            h(z_k)\\|`, the gradient of the step) and ``L``.  Raising
            :exc:`StopIteration` stops the solver at that iterate (status
            ``"callback_stop"``), as ``maxiter`` equal to the iterations done would.
            The deprecated form ``callback(k, x, grad_norm)`` (``x`` the iterate before
            the step) still works, with a :class:`DeprecationWarning`.

        Returns
        -------
        Result
            ``x``, ``nit`` (gradient evaluations, the cost unit; the one gradient that
            certifies the returned point on a ``"maxiter"``, stagnation or
            ``"callback_stop"`` exit is not counted), ``grad_norm``,
            ``distance_bound``, ``mu``, ``L`` (the final step constant),
            ``n_backtracks``, ``n_hvp`` (power-iteration products), ``status``
            (``"success"``: ``distance_bound <= tol``; ``"maxiter"``;
            ``"precision_limit"``; ``"callback_stop"``; ``"nan"``), ``success`` (True
            only for ``"success"``: the requested accuracy was met), ``message``,
            ``wall_time`` (seconds; ``time`` is a deprecated alias), ``grad_error`` (ρ
            at ``x``).  ``distance_bound`` is a valid bound whatever the status (except
            ``"nan"``).  Any status but ``"success"`` also emits a
            :class:`~varlearn.results.ConvergenceWarning`.
        """
        return self._solve(problem, theta, tol, x0, L0, callback)

    def _solve(self, problem, theta, tol, x0, L0, callback):
        # called by solve() and by solve_lower(): two frames above is the user's call
        tol = check_positive(tol, "tol")
        theta = problem.check_theta(theta)
        notify = Notifier(callback, legacy=("k", "x", "grad_norm"), owner="solve_lower", stacklevel=4)
        res = _Run(problem, theta, tol, self, x0, L0).iterate(notify)
        if not res.success:
            warnings.warn(
                f"solve_lower stopped with status {res.status!r} after {res.nit} iterations: "
                f"distance bound {res.distance_bound:.3e} > tol {tol:.3e}", ConvergenceWarning, stacklevel=3,
            )
        return res


class _Run:
    """State of one FISTA solve (constants, counters, certificate helpers)."""

    def __init__(self, problem, theta, tol, opts, x0, L0):
        self.t_start = time.perf_counter()
        self.problem, self.theta, self.tol, self.maxiter = problem, theta, tol, opts.maxiter
        x = problem.initial_x() if x0 is None else problem.check_x(x0, "x0").copy()
        self.x0 = x if x.dtype == problem.dtype else x.astype(problem.dtype)
        mu = float(problem.strong_convexity(theta))
        if not (mu > 0 and math.isfinite(mu)):
            raise ValueError(f"the problem's strong-convexity constant must be positive and finite, got {mu!r}")
        self.mu = mu
        self.L_bound = L_bound = float(problem.lipschitz(theta))
        bt = opts.backtracking
        self.use_bt = (problem.lipschitz_is_loose(theta) if bt == "auto" else bool(bt)) or not math.isfinite(L_bound)
        self.n_hvp = 0
        if self.use_bt and L0 is not None:
            L = max(mu, float(check_positive(L0, "L0")))
        elif self.use_bt:
            L = max(mu, 1.5 * estimate_lipschitz(problem, theta, self.x0, n_iter=10))
            self.n_hvp = 10
        else:
            L = L_bound
        self.L = min(L, L_bound) if math.isfinite(L_bound) else L
        self.target = mu * tol
        self.u = float(np.finfo(problem.dtype).eps) / 2.0
        self.n_u64 = self.x0.size * float(np.finfo(np.float64).eps)
        self.nit = 0
        self.n_bt = 0

    # ------------------------------------------------------------------ certificate
    def rounding(self, x_at):
        return (1.0 + 2.0 * self.u) * float(self.problem.grad_error_bound(x_at, self.theta))

    def floor(self, x_at, rho):
        # what the dtype allows: the gradient's rounding error plus the gradient at the nearest
        # representable point (entries off by u relative: about L u ||x||)
        return rho + 2.0 * self.u * self.L * norm(x_at)

    def certify(self, x_at, g_at=None):
        """(distance bound, rho, ||g|| in float64) of ``x_at``; ``g_at`` is its computed gradient."""
        if g_at is None:
            g_at = self.problem.fused_grad(x_at, self.theta)[0]
        g64 = norm64(g_at)
        rho = self.rounding(x_at)
        return (1.0 + 2.0 * self.u) * (g64 * (1.0 + self.n_u64) + rho) / self.mu, rho, g64

    def finish(self, x_out, status, cert=None):
        bound, rho, g64 = self.certify(x_out) if cert is None else cert
        if status == "success" and not bound <= self.tol:  # pragma: no cover - guarded by the callers
            status = "maxiter"
        return Result(
            x=x_out, nit=self.nit, grad_norm=g64, distance_bound=bound, mu=self.mu, L=self.L,
            n_backtracks=self.n_bt, n_hvp=self.n_hvp, status=status, success=status == "success",
            message=STATUS_MESSAGES[status], wall_time=time.perf_counter() - self.t_start, grad_error=rho,
        )

    def candidate(self, x_at, g_at):
        """Certify a point whose gradient met the target: a finished Result, or None (go on)."""
        cert = self.certify(x_at, g_at)
        if cert[0] <= self.tol:
            return self.finish(x_at, "success", cert)
        if self.floor(x_at, cert[1]) >= 0.5 * self.mu * self.tol:
            return self.finish(x_at, "precision_limit", cert)
        self.target = min(self.target, 0.999 * (self.mu * self.tol - cert[1]))
        return None

    # ------------------------------------------------------------------ step
    def backtrack(self, z, g, gnorm, out):
        """``out = z - g/L``, doubling L (up to the bound) until the descent test holds."""
        problem, theta, xp = self.problem, self.theta, self.problem.xp
        h_z = float(problem.value(z, theta))
        while True:
            xp.subtract(z, g / self.L, out=out)
            if float(problem.value(out, theta)) <= h_z - 0.5 * gnorm * gnorm / self.L + 1e-12 * abs(h_z):
                return
            if self.L >= self.L_bound:
                return
            self.L = min(2.0 * self.L, self.L_bound)
            self.n_bt += 1

    def iterate(self, notify):
        problem, theta, xp = self.problem, self.theta, self.problem.xp
        x = self.x0
        # test the starting point
        g, gnorm = problem.fused_grad(x, theta)
        self.nit = 1
        if not math.isfinite(gnorm):
            return self.finish(x, "nan", _NO_CERT)
        floor0 = self.floor(x, self.rounding(x))
        if floor0 >= 0.5 * self.mu * self.tol:
            # tol cannot be certified: go down to the rounding level of the gradient, then report it
            self.target = max(self.target, 4.0 * floor0)
        best, last_gain = gnorm, 0
        window = max(200, self.maxiter // 10)
        if gnorm <= self.target:
            done = self.candidate(x, g)
            if done is not None:
                return done

        x_prev = x.copy()
        out = xp.empty_like(x)
        g_buf = xp.empty_like(x) if self.use_bt else None
        t = 1.0
        legacy, active = notify.is_legacy, notify.active
        for k in range(self.maxiter):
            beta, t_new = _momentum(t, self.mu / self.L)
            # the one step path: a whole step in one fused pass, or (backtracking) the
            # gradient at the solver's own extrapolated point
            if self.use_bt:
                z = x + beta * (x - x_prev) if beta != 0 else x
                call = (z, None, 0.0, None, g_buf)
            else:
                z = None
                call = (x, x_prev, beta, 1.0 / self.L, out)
            g, gnorm = problem.fused_grad(call[0], theta, x_prev=call[1], beta=call[2], step=call[3], out=call[4])
            self.nit += 1
            if not math.isfinite(gnorm):
                return self.finish(x, "nan", _NO_CERT)
            if legacy:
                notify.legacy_call(k, x, gnorm)
            if gnorm < 0.99 * best:
                best, last_gain = gnorm, k
            elif k - last_gain > window and best <= 100.0 * floor0:
                # no progress for `window` iterations at the rounding level: the dtype's limit
                return self.finish(x, "precision_limit")
            if gnorm <= self.target:
                if z is None:
                    # z_k exists only inside the fused pass: form the array and take its gradient
                    z = x + beta * (x - x_prev) if beta != 0 else x
                    g = problem.fused_grad(z, theta)[0]
                    self.nit += 1
                done = self.candidate(z, g)
                if done is not None:
                    return done
            if self.use_bt:
                self.backtrack(z, g, gnorm, out)
            x_prev, x, out = x, out, x_prev
            t = t_new
            if active and notify(Result(nit=self.nit, x=x, grad_norm=gnorm, L=self.L)):
                return self.finish(x, "callback_stop")
        return self.finish(x, "maxiter")


def solve_lower(problem, theta, tol, x0=None, maxiter=10000, backtracking="auto", callback=None, L0=None):
    r"""Solve the lower-level problem to a certified accuracy: ``FISTA(maxiter, backtracking).solve(...)``.

    The functional front door of :class:`FISTA` (see there for the iteration, the
    certificate and the returned :class:`~varlearn.results.Result`).  **Stopping rule:**
    success when, at an extrapolated point :math:`z_k` whose gradient norm met the target,
    :math:`(1 + 2u)(\|\nabla_x h(z_k)\|(1 + n u_{64}) + \rho)/\mu \le` ``tol`` (ρ the
    problem's bound on the rounding error of the gradient); that point is returned.

    Parameters
    ----------
    problem, theta, tol, x0, callback, L0
        As in :meth:`FISTA.solve` (``tol``: on success ``distance_bound <= tol``).
    maxiter, backtracking
        The options of :class:`FISTA`.

    Returns
    -------
    Result
        See :meth:`FISTA.solve`.

    References
    ----------
    [CP16]_, [H02]_, [MAID]_ (module docstring of :mod:`varlearn.solvers.fista`).
    """
    return FISTA(maxiter=maxiter, backtracking=backtracking)._solve(problem, theta, tol, x0, L0, callback)
