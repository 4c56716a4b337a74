"""Certified lower-level solver (strongly convex FISTA) and conjugate gradients."""
from __future__ import annotations

import logging
import math
import time
import warnings

from ._validation import check_int, check_positive
from .backend import get_namespace
from .linalg import norm as _lnorm
from .linalg import vdot as _vdot
from .results import STATUS_MESSAGES, ConvergenceWarning, Result

logger = logging.getLogger("varlearn")

__all__ = ["solve_lower", "cg", "estimate_lipschitz"]


def _norm(xp, a):
    return _lnorm(a)


def estimate_lipschitz(problem, theta, x, n_iter=10, rng=None):
    """Power-iteration estimate of ``||hess h(x, theta)||`` (``n_iter`` Hessian-vector products).

    Returns a lower estimate of the largest eigenvalue at ``x`` (not a bound).
    """
    import numpy as np

    xp = problem.xp
    rng = np.random.default_rng(0 if rng is None else rng)
    v = xp.asarray(rng.standard_normal(problem.x_shape)).astype(problem.dtype)
    v /= _norm(xp, v)
    lam = 0.0
    for _ in range(n_iter):
        hv = problem.hvp(x, theta, v)
        lam = _norm(xp, hv)
        if lam == 0 or not math.isfinite(lam):
            break
        v = hv / lam
    return lam


def solve_lower(problem, theta, tol, x0=None, maxiter=10000, backtracking="auto", callback=None, L0=None):
    r"""Solve the lower-level problem to a certified accuracy with strongly convex FISTA.

    Runs FISTA with the constant-parameter strong-convexity momentum of
    Chambolle & Pock (2016) with step ``1/L`` and ``q = mu/L``; μ is the
    problem's true strong-convexity constant and L its Lipschitz bound.

    **Stopping rule.** At the extrapolated point ``z_k`` of every iteration the
    gradient is computed; the solver stops and returns ``x = z_k`` as soon as
    ``||grad_x h(z_k, theta)|| <= mu * tol``.  Strong convexity then certifies
    ``||x - x_hat(theta)|| <= ||grad_x h(x)|| / mu <= tol``; the returned
    ``distance_bound`` is ``||grad_x h(x)|| / mu``, evaluated by one more
    gradient at the returned point (so the bound holds for the array returned,
    bit for bit).  ``x0`` itself is tested first (``nit = 1`` if it passes).

    **Backtracking.** With ``backtracking=True`` (or ``"auto"`` when the
    problem reports a loose Lipschitz bound), L starts at ``L0`` when given
    (e.g. the final L of a previous solve at a nearby θ) or else at 1.5 times
    a 10-step power-iteration estimate, and doubles, up to the bound, whenever
    the gradient step fails the descent test ``h(z - g/L) <= h(z) - ||g||^2 / (2L)``.

    Parameters
    ----------
    problem : LowerProblem
    theta : array
        Hyperparameters, in the problem's array namespace.
    tol : float > 0
        Target distance to the exact solution.
    x0 : array, optional
        Warm start (default ``problem.initial_x()``); never modified.
    maxiter : int
        Maximum number of FISTA iterations.
    backtracking : bool or "auto"
    callback : callable, optional
        ``callback(k, x, grad_norm)`` after each iteration.
    L0 : float, optional
        Starting step constant for backtracking (ignored without backtracking).

    Returns
    -------
    Result
        ``x``, ``nit`` (gradient evaluations, the cost unit), ``grad_norm``,
        ``distance_bound``, ``mu``, ``L`` (the final step constant),
        ``n_backtracks``, ``n_hvp`` (power-iteration products), ``status``
        (``"success"``, ``"maxiter"`` or ``"nan"``), ``success``, ``message``,
        ``time``.  Non-convergence also emits a :class:`ConvergenceWarning`.
    """
    tol = check_positive(tol, "tol")
    maxiter = check_int(maxiter, "maxiter", minimum=1)
    theta = problem.check_theta(theta)
    if backtracking not in (True, False, "auto"):
        raise ValueError(f"backtracking must be True, False or 'auto', got {backtracking!r}")
    xp = problem.xp
    t_start = time.perf_counter()
    x = problem.initial_x() if x0 is None else problem.check_x(x0, "x0").copy()
    if x.dtype != problem.dtype:
        x = x.astype(problem.dtype)
    mu = float(problem.strong_convexity(theta))
    L_bound = float(problem.lipschitz(theta))
    if not (mu > 0 and math.isfinite(mu)):
        raise ValueError(f"the problem's strong-convexity constant must be positive and finite, got {mu!r}")
    use_bt = problem.lipschitz_is_loose(theta) if backtracking == "auto" else bool(backtracking)
    if not math.isfinite(L_bound):
        use_bt = True
    n_hvp = 0
    if use_bt and L0 is not None:
        L = max(mu, float(check_positive(L0, "L0")))
        if math.isfinite(L_bound):
            L = min(L, L_bound)
    elif use_bt:
        L = max(mu, 1.5 * estimate_lipschitz(problem, theta, x, n_iter=10))
        n_hvp = 10
        if math.isfinite(L_bound):
            L = min(L, L_bound)
    else:
        L = L_bound
    target = mu * tol

    def finish(x_out, nit, status, gnorm, n_bt):
        res = Result(
            x=x_out, nit=nit, grad_norm=gnorm, distance_bound=gnorm / mu, mu=mu, L=L,
            n_backtracks=n_bt, n_hvp=n_hvp, status=status, success=status == "success",
            message=STATUS_MESSAGES[status], time=time.perf_counter() - t_start,
        )
        if status != "success":
            warnings.warn(
                f"solve_lower stopped with status {status!r} after {nit} iterations: "
                f"distance bound {res.distance_bound:.3e} > tol {tol:.3e}",
                ConvergenceWarning, stacklevel=3,
            )
        return res

    # test the starting point
    g = problem.grad(x, theta)
    gnorm = _norm(xp, g)
    nit = 1
    if not math.isfinite(gnorm):
        return finish(x, nit, "nan", gnorm, 0)
    if gnorm <= target:
        return finish(x, nit, "success", gnorm, 0)

    x_prev = x.copy()
    out = xp.empty_like(x)
    t = 1.0
    n_bt = 0
    h_z = None
    for k in range(maxiter):
        q = mu / L
        if q < 1.0:
            t_new = 0.5 * (1.0 - q * t * t + math.sqrt((1.0 - q * t * t) ** 2 + 4.0 * t * t))
            beta = (t - 1.0) * (1.0 - t_new * q) / (t_new * (1.0 - q))
        else:
            t_new, beta = 1.0, 0.0
        if use_bt:
            z = x + beta * (x - x_prev) if beta != 0 else x
            g = problem.grad(z, theta)
            gnorm = _norm(xp, g)
            nit += 1
            if gnorm > target and math.isfinite(gnorm):
                h_z = float(problem.value(z, theta))
                while True:
                    xp.subtract(z, g / L, out=out)
                    if float(problem.value(out, theta)) <= h_z - 0.5 * gnorm * gnorm / L + 1e-12 * abs(h_z):
                        break
                    if L >= L_bound:
                        break
                    L = min(2.0 * L, L_bound)
                    n_bt += 1
                    q = mu / L
        else:
            gnorm = problem.fista_step(x, x_prev, beta, 1.0 / L, theta, out)
            nit += 1
        if not math.isfinite(gnorm):
            return finish(x, nit, "nan", gnorm, n_bt)
        if callback is not None:
            callback(k, x, gnorm)
        if gnorm <= target:
            z = x + beta * (x - x_prev) if beta != 0 else x.copy()
            gz = _norm(xp, problem.grad(z, theta))
            nit += 1
            if gz <= target:
                return finish(z, nit, "success", gz, n_bt)
            # rounding made the fused and the reference z differ: keep iterating
        x_prev, x, out = x, out, x_prev
        t = t_new
    return finish(x, nit, "maxiter", _norm(xp, problem.grad(x, theta)), n_bt)


def cg(matvec, b, tol, x0=None, maxiter=1000):
    r"""Conjugate gradients for ``A x = b`` with ``A`` symmetric positive definite.

    **Stopping rule.** Stops when the recurrence residual satisfies
    ``||b - A x|| <= tol`` (an absolute tolerance, Euclidean norm); the true
    residual is then recomputed with one more product and, if rounding made
    it exceed ``tol``, CG restarts from the current iterate.  A starting point
    that already satisfies the rule is returned unchanged (``nit`` counts the
    one product used to test it).

    Parameters
    ----------
    matvec : callable
        ``v -> A v`` on arrays shaped like ``b``.
    b : array
    tol : float > 0
    x0 : array, optional
        Starting point (default zero); not modified.
    maxiter : int
        Maximum number of iterations (products with A).

    Returns
    -------
    Result
        ``x``, ``nit`` (products with A, the cost unit, including the
        verification products), ``residual_norm`` (the true residual of ``x`` on
        success, the recurrence residual otherwise), ``status`` (``"success"``, ``"maxiter"``,
        ``"indefinite"`` or ``"nan"``), ``success``, ``message``.
    """
    tol = check_positive(tol, "tol")
    maxiter = check_int(maxiter, "maxiter", minimum=1)
    xp = get_namespace(b, x0)
    nit = 0
    if x0 is None:
        x = xp.zeros_like(b)
        r = b.copy()
    else:
        if x0.shape != b.shape:
            raise ValueError(f"x0 must have the shape of b {tuple(b.shape)}, got {tuple(x0.shape)}")
        x = x0.astype(b.dtype, copy=True)
        r = b - matvec(x)
        nit += 1
    rr = _vdot(r, r)

    def done(status):
        res = Result(x=x, nit=nit, residual_norm=math.sqrt(rr), status=status,
                     success=status == "success", message=STATUS_MESSAGES[status])
        if status != "success":
            warnings.warn(f"cg stopped with status {status!r} after {nit} products: residual "
                          f"{math.sqrt(rr):.3e} > tol {tol:.3e}", ConvergenceWarning, stacklevel=3)
        return res

    while True:
        if not math.isfinite(rr):
            return done("nan")
        if math.sqrt(rr) <= tol:
            return done("success")
        p = r.copy()
        while nit < maxiter:
            ap = matvec(p)
            nit += 1
            pap = _vdot(p, ap)
            if not pap > 0:
                return done("nan" if not math.isfinite(pap) else "indefinite")
            alpha = rr / pap
            x += alpha * p
            r -= alpha * ap
            rr_new = _vdot(r, r)
            if not math.isfinite(rr_new):
                rr = rr_new
                return done("nan")
            if math.sqrt(rr_new) <= tol:
                rr = rr_new
                break
            p *= rr_new / rr
            p += r
            rr = rr_new
        else:
            return done("maxiter")
        # verify with the true residual
        r = b - matvec(x)
        nit += 1
        rr = _vdot(r, r)
        if math.sqrt(rr) <= tol:
            return done("success")
        logger.debug("cg: recurrence residual met tol but true residual %.3e did not; restarting", math.sqrt(rr))
