"""Certified lower-level solver (strongly convex FISTA) and conjugate gradients."""
from __future__ import annotations

import logging
import math
import time
import warnings

import numpy as np

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
    gradient is computed; when ``||grad_x h(z_k, theta)|| <= mu * tol`` (or the
    tighter target below) the point is *certified*: the gradient is recomputed
    at ``z_k`` and its norm ``G`` taken in float64, ``rho =
    problem.grad_error_bound(z_k, theta)`` bounds the rounding error of that
    computed gradient, and

    .. math:: \|z_k - \hat x(\theta)\| \le \text{distance\_bound} :=
              (1 + 2u)(G\,(1 + n u_{64}) + \rho)/\mu

    (strong convexity, :math:`\|x - \hat x\| \le \|\nabla_x h(x)\|/\mu`, applied to the
    exact gradient; ``u`` the unit roundoff of the problem's dtype).  The
    solver returns ``x = z_k`` with status ``"success"`` when
    ``distance_bound <= tol``, so the bound holds for the array returned, bit
    for bit, including rounding.  Otherwise it lowers the target to
    ``mu * tol - (1 + 2u) rho`` and goes on.  ``x0`` itself is tested first
    (``nit = 1`` if it passes).

    **Tolerances rounding does not allow.** The attainable gradient level is
    estimated as ``F = (1 + 2u) rho + 2 u L ||x||`` (the rounding of the
    computed gradient plus the gradient at the nearest representable point,
    ``L`` the step constant).  When ``F >= mu * tol / 2`` (at ``x0`` or at a
    candidate), ``tol`` cannot be certified in this dtype: the solver iterates
    until the computed gradient norm is at most ``max(mu * tol, 4 F)`` and
    returns that point with status ``"precision_limit"`` (``success`` False)
    and its honest ``distance_bound`` (above ``tol``).  It also returns
    ``"precision_limit"`` when the smallest gradient norm seen has not dropped
    by 1% for ``max(200, maxiter // 10)`` iterations while it is within 100
    times ``F`` at ``x0`` (stagnation at the rounding level).

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
        ``x``, ``nit`` (gradient evaluations, the cost unit; the one gradient
        that certifies the returned point on a ``"maxiter"`` or stagnation
        exit is not counted), ``grad_norm``,
        ``distance_bound``, ``mu``, ``L`` (the final step constant),
        ``n_backtracks``, ``n_hvp`` (power-iteration products), ``status``
        (``"success"``: ``distance_bound <= tol``; ``"maxiter"``;
        ``"precision_limit"``; ``"nan"``), ``success`` (True only for
        ``"success"``), ``message``, ``time``, ``grad_error`` (ρ at ``x``).
        ``distance_bound`` is a valid bound whatever the status (except
        ``"nan"``).  Any status but ``"success"`` also emits a
        :class:`ConvergenceWarning`.
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
    u = float(np.finfo(problem.dtype).eps) / 2.0
    n_u64 = x.size * float(np.finfo(np.float64).eps)

    def rounding(x_at):
        return (1.0 + 2.0 * u) * float(problem.grad_error_bound(x_at, theta))

    def floor(x_at, rho):
        # what the dtype allows: the gradient's rounding error plus the gradient at the nearest
        # representable point (entries off by u relative: about L u ||x||)
        return rho + 2.0 * u * L * _norm(xp, x_at)

    def certify(x_at, g_at=None):
        """(distance bound, rho) of ``x_at`` from a freshly computed gradient (norm in float64)."""
        g_at = problem.grad(x_at, theta) if g_at is None else g_at
        g64 = _lnorm(g_at.astype(xp.float64, copy=False))
        rho = rounding(x_at)
        return (1.0 + 2.0 * u) * (g64 * (1.0 + n_u64) + rho) / mu, rho, g64

    def finish(x_out, nit, status, n_bt, cert=None):
        bound, rho, g64 = certify(x_out) if cert is None else cert
        if status == "success" and not bound <= tol:  # pragma: no cover - guarded by the callers
            status = "maxiter"
        res = Result(
            x=x_out, nit=nit, grad_norm=g64, distance_bound=bound, mu=mu, L=L,
            n_backtracks=n_bt, n_hvp=n_hvp, status=status, success=status == "success",
            message=STATUS_MESSAGES[status], time=time.perf_counter() - t_start, grad_error=rho,
        )
        if status != "success":
            warnings.warn(
                f"solve_lower stopped with status {status!r} after {nit} iterations: "
                f"distance bound {res.distance_bound:.3e} > tol {tol:.3e}",
                ConvergenceWarning, stacklevel=3,
            )
        return res

    def candidate(x_at, g_at, nit, n_bt):
        """Certify a point whose gradient met the target: a finished Result, or None (go on)."""
        nonlocal target
        cert = certify(x_at, g_at)
        if cert[0] <= tol:
            return finish(x_at, nit, "success", n_bt, cert)
        if floor(x_at, cert[1]) >= 0.5 * mu * tol:
            return finish(x_at, nit, "precision_limit", n_bt, cert)
        target = min(target, 0.999 * (mu * tol - cert[1]))
        return None

    # test the starting point
    g = problem.grad(x, theta)
    gnorm = _norm(xp, g)
    nit = 1
    if not math.isfinite(gnorm):
        return finish(x, nit, "nan", 0, (math.nan, math.nan, math.nan))
    floor0 = floor(x, rounding(x))
    if floor0 >= 0.5 * mu * tol:
        # tol cannot be certified: go down to the rounding level of the gradient, then report it
        target = max(target, 4.0 * floor0)
    best, last_gain = gnorm, 0
    window = max(200, maxiter // 10)
    if gnorm <= target:
        done = candidate(x, g, nit, 0)
        if done is not None:
            return done

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
            return finish(x, nit, "nan", n_bt, (math.nan, math.nan, math.nan))
        if callback is not None:
            callback(k, x, gnorm)
        if gnorm < 0.99 * best:
            best, last_gain = gnorm, k
        elif k - last_gain > window and best <= 100.0 * floor0:
            # no progress for `window` iterations at the rounding level: the dtype's limit
            return finish(x, nit, "precision_limit", n_bt)
        if gnorm <= target:
            z = x + beta * (x - x_prev) if beta != 0 else x.copy()
            nit += 1
            done = candidate(z, None, nit, n_bt)
            if done is not None:
                return done
        x_prev, x, out = x, out, x_prev
        t = t_new
    return finish(x, nit, "maxiter", n_bt)


def cg(matvec, b, tol, x0=None, maxiter=1000):
    r"""Conjugate gradients for ``A x = b`` with ``A`` symmetric positive definite.

    **Stopping rule.** Stops when the recurrence residual satisfies
    ``||b - A x|| <= tol`` (an absolute tolerance, Euclidean norm); the true
    residual is then recomputed with one more product and, if rounding made
    it exceed ``tol``, CG restarts from the current iterate.  A starting point
    that already satisfies the rule is returned unchanged (``nit`` counts the
    one product used to test it).  When CG stops for any other reason
    (``maxiter`` products, a non-positive curvature), the true residual
    ``||b - A x||`` of the returned ``x`` is recomputed with one more product
    (counted in ``nit``, so ``nit`` can be ``maxiter + 1``) unless ``x`` has
    not moved since the residual was last computed directly: the recurrence
    residual can sit orders of magnitude below the true one once rounding
    dominates, and is never reported.

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
        verification products), ``residual_norm`` (always the *true* residual
        ``||b - A x||`` of the returned ``x``, computed in floating point; NaN
        when it is not finite), ``residual`` (``"true"``: which residual
        ``residual_norm`` is), ``status`` (``"success"``: ``residual_norm <=
        tol``; ``"maxiter"``, ``"indefinite"`` or ``"nan"``), ``success`` (True
        only for ``"success"``), ``message``.
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
    true_rr = True  # whether rr is the true residual of x

    def done(status):
        nonlocal nit, rr
        if status != "success" and not true_rr and status != "nan":
            rr = _true_rr()
        if status == "success" and not math.sqrt(rr) <= tol:  # pragma: no cover - guarded by the callers
            status = "maxiter"
        res = Result(x=x, nit=nit, residual_norm=math.sqrt(rr) if rr >= 0 else math.nan, residual="true",
                     status=status, success=status == "success", message=STATUS_MESSAGES[status])
        if status != "success":
            warnings.warn(f"cg stopped with status {status!r} after {nit} products: true residual "
                          f"{res.residual_norm:.3e} > tol {tol:.3e}", ConvergenceWarning, stacklevel=3)
        return res

    def _true_rr():
        nonlocal nit
        rt = b - matvec(x)
        nit += 1
        v = _vdot(rt, rt)
        return v if math.isfinite(v) else math.nan

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
                # x is unchanged since rr was last set: done() recomputes it only if it is a recurrence value
                return done("nan" if not math.isfinite(pap) else "indefinite")
            alpha = rr / pap
            x += alpha * p
            r -= alpha * ap
            true_rr = False
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
        true_rr = True
        if math.sqrt(rr) <= tol:
            return done("success")
        logger.debug("cg: recurrence residual met tol but true residual %.3e did not; restarting", math.sqrt(rr))
