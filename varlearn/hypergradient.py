r"""Inexact implicit hypergradients with an a-posteriori error bound.

For :math:`f(\theta) = U(\hat x(\theta))` with :math:`\hat x(\theta) = \arg\min_x h(x,\theta)`,

.. math:: \nabla f(\theta) = -J(\hat x,\theta)^T H(\hat x,\theta)^{-1}\nabla U(\hat x),

:math:`H = \nabla^2_{xx}h`, :math:`J = \partial_\theta\nabla_x h`.  It is computed
inexactly: :math:`\tilde x` with :math:`\|\tilde x - \hat x\| \le \epsilon` (certified by
:func:`~varlearn.solvers.solve_lower`), :math:`q` with
:math:`\|H(\tilde x)q - \nabla U(\tilde x)\| \le \delta` (conjugate gradients), and
:math:`z = -J(\tilde x)^T q`.
"""
from __future__ import annotations

import logging
import math
import time
import warnings

import numpy as np

from ._validation import check_positive
from .backend import random_normal
from .linalg import norm as _lnorm
from .results import ConvergenceWarning, Result
from .solvers import CG, FISTA

logger = logging.getLogger("varlearn")

__all__ = ["hypergradient", "error_bound", "BoundEstimator"]


def _norm(xp, a):
    return _lnorm(a)


def error_bound(eps, delta, mu, L_U, grad_U_norm, J_norm, L_J, L_Hinv):
    r"""The bound of Theorem 2.1 (MAID paper) on :math:`\|z - \nabla f(\theta)\|`.

    .. math::

        \omega = c\,\epsilon + \frac{\|J\|}{\mu}\delta + \frac{L_J L_U}{\mu}\epsilon^2,\qquad
        c = \frac{L_U\|J\|}{\mu} + L_{H^{-1}}\|\nabla U\|\|J\| + \frac{L_J\|\nabla U\|}{\mu}

    with ``eps`` a bound on :math:`\|\tilde x - \hat x\|`, ``delta`` on the CG
    residual, :math:`L_J` and :math:`L_{H^{-1}}` the Lipschitz constants in ``x`` of
    the mixed derivative and of the inverse Hessian.
    """
    c = L_U * J_norm / mu + L_Hinv * grad_U_norm * J_norm + L_J * grad_U_norm / mu
    return c * eps + J_norm / mu * delta + L_J * L_U / mu * eps * eps


class BoundEstimator:
    """Estimates the constants of the error bound that a problem does not know.

    For a constant the problem does not provide (``hessian_lipschitz``,
    ``mixed_lipschitz`` or ``mixed_norm_bound`` returning ``None``) it uses a
    finite-difference estimate, kept as a running maximum over calls:

    * :math:`L_H`: :math:`\\|(H(x') - H(\\tilde x))v\\| / \\|x' - \\tilde x\\|` for a random unit ``v``,
    * :math:`L_J`: :math:`\\|J(x')^Tq - J(\\tilde x)^Tq\\| / (\\|q\\|\\,\\|x' - \\tilde x\\|)`,

    with :math:`x' = \\tilde x + r\\,e`, ``e`` a random unit vector and ``r`` the
    current accuracy (at least ``1e-6`` times the RMS of :math:`\\tilde x`);
    and :math:`\\|J\\|` by ``n_power`` power iterations on :math:`J^TJ`, where
    :math:`Jd` is a central difference of :math:`\\nabla_x h` in θ.  These are
    *estimates*, not bounds (the result says so in ``bound_exact``); each costs
    Hessian-vector products or gradients, counted in the CG cost.

    Random unit vectors are drawn on the device of the data
    (:func:`varlearn.backend.random_normal`) from a host ``numpy.random.Generator``
    seeded with ``seed``: the same seed gives the same estimates.  Its state (running
    maxima and the generator) is saved in checkpoints through :meth:`state_dict` /
    :meth:`load_state_dict`.
    """

    def __init__(self, seed=0, n_power=5):
        self.rng = np.random.default_rng(seed)
        self.n_power = n_power
        self.L_H = 0.0
        self.L_J = 0.0
        self.J_norm_max = 0.0
        self._d = None  # last power-iteration direction (saved in checkpoints by minimize_bilevel)

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state, "L_H": self.L_H, "L_J": self.L_J,
                "J_norm_max": self.J_norm_max, "n_power": self.n_power}

    def load_state_dict(self, d):
        self.rng.bit_generator.state = d["rng"]
        self.L_H, self.L_J, self.J_norm_max = float(d["L_H"]), float(d["L_J"]), float(d["J_norm_max"])
        self.n_power = int(d["n_power"])

    def _unit(self, xp, shape, dtype):
        # drawn on the device of the data from the checkpointed host generator
        e = random_normal(xp, shape, dtype, self.rng)
        return e / _norm(xp, e)

    def _offset_point(self, problem, x, radius):
        xp = problem.xp
        rms = _norm(xp, x) / math.sqrt(max(x.size, 1))
        r = max(radius, 1e-6 * max(rms, 1e-3))
        return x + r * self._unit(xp, x.shape, x.dtype), r

    def hessian_lipschitz(self, problem, theta, x, radius):
        """Returns (estimate, number of Hessian-vector products used)."""
        xp = problem.xp
        x2, r = self._offset_point(problem, x, radius)
        v = self._unit(xp, x.shape, x.dtype)
        est = _norm(xp, problem.hvp(x2, theta, v) - problem.hvp(x, theta, v)) / r
        self.L_H = max(self.L_H, est)
        return self.L_H, 2

    def mixed_lipschitz(self, problem, theta, x, q, radius):
        xp = problem.xp
        x2, r = self._offset_point(problem, x, radius)
        qn = _norm(xp, q)
        if qn == 0:
            return self.L_J, 0
        est = _norm(xp, problem.mixed_vjp(x2, theta, q) - problem.mixed_vjp(x, theta, q)) / (qn * r)
        self.L_J = max(self.L_J, est)
        return self.L_J, 2

    def mixed_norm(self, problem, theta, x):
        """Power iteration on J^T J with J d by central differences; returns (estimate, cost)."""
        xp = get_xp(problem)
        p = problem.n_params
        d = self._d if self._d is not None and self._d.shape == (p,) else self._unit(xp, (p,), theta.dtype)
        tscale = max(1.0, _norm(xp, theta) / math.sqrt(p))
        h = 1e-5 * tscale
        sigma, cost = 0.0, 0
        # warm start: the leading direction changes little between calls, so after the
        # first call n_power // 2 iterations (at least 2) suffice
        n_iter = self.n_power if self._d is None else max(2, self.n_power // 2)
        for _ in range(n_iter):
            jd = (problem.grad(x, theta + h * d) - problem.grad(x, theta - h * d)) / (2 * h)
            jtjd = problem.mixed_vjp(x, theta, jd)
            cost += 3
            nrm = _norm(xp, jtjd)
            if nrm == 0 or not math.isfinite(nrm):
                break
            sigma = math.sqrt(nrm)
            d = jtjd / nrm
        self._d = d
        self.J_norm_max = max(self.J_norm_max, sigma)
        return 1.1 * sigma, cost


def _known(value, name):
    """A constant reported by a problem, or ``None`` when it is unknown (``None`` or not finite)."""
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value) or value < 0:
        logger.info("hypergradient: the problem's %s is %r, not a bound; it is estimated instead", name, value)
        return None
    return value


def get_xp(problem):
    return problem.xp


def _solver(solver, name, factory, **options):
    """The solver object to use: ``solver``, or ``factory(**options)`` (options that are None left out)."""
    given = {k: v for k, v in options.items() if v is not None}
    if solver is None:
        return factory(**given)
    if given:
        raise ValueError(f"{', '.join(sorted(given))} configure the default {name}; with {name}={solver!r} "
                         f"set them on that object instead")
    if not callable(getattr(solver, "solve", None)):
        raise TypeError(f"{name} must be an object with a solve method, got {type(solver).__name__}")
    return solver


def _check_result(res, name, keys):
    """A plug-in solver's result must carry the fields the bound is built from."""
    missing = [k for k in keys if getattr(res, k, None) is None]
    if missing:
        raise TypeError(f"{name}.solve must return a Result with {', '.join(keys)}; "
                        f"got {type(res).__name__} without {', '.join(missing)}")


def _default_fista(lower_maxiter=10000, backtracking="auto"):
    return FISTA(maxiter=lower_maxiter, backtracking=backtracking)


def _default_cg(cg_maxiter=2000):
    return CG(maxiter=cg_maxiter)


def hypergradient(problem, upper, theta, lower_tol, cg_tol, x0=None, q0=None, bound=True,
                  estimator=None, lower_maxiter=None, cg_maxiter=None, backtracking=None, lower_L0=None,
                  constants="exact", lower_solver=None, linear_solver=None):
    r"""Inexact hypergradient :math:`z = -J(\tilde x,\theta)^T q` and its error bound.

    Steps: (1) the lower solver (default :class:`~varlearn.solvers.FISTA`) to
    ``lower_tol`` from ``x0`` (FISTA stops when :math:`\|\nabla_x h(\tilde x)\| \le
    \mu\,` ``lower_tol``, certified including rounding); (2) the linear solver (default
    :class:`~varlearn.solvers.CG`) on :math:`H(\tilde x)q = \nabla U(\tilde x)` from ``q0``
    (default 0) until the true residual is :math:`\le` ``cg_tol``; (3) ``z``.

    The bound ω (Theorem 2.1 of the MAID paper, :func:`error_bound`) is
    evaluated a posteriori with the *achieved* accuracies: ε = the
    ``distance_bound`` of the lower solver (FISTA's includes the rounding error of the
    computed gradient) and δ = the true residual
    :math:`\|H(\tilde x)q - \nabla U(\tilde x)\|` at the returned ``q`` whatever the
    linear solver's status (recomputed here, one more product, when its result does not
    say ``residual == "true"``), plus a rounding margin
    :math:`32u(L\|q\| + \|\nabla U\|)` (``L`` the problem's Lipschitz bound, ``u`` the
    unit roundoff of its dtype).  Both are valid whether or not the solvers
    met ``lower_tol`` and ``cg_tol``.  ω also gets :math:`32u\|J\|\|q\|` for the
    rounding of :math:`J^Tq`.  Constants come from the problem
    (``strong_convexity``, ``hessian_lipschitz`` with :math:`L_{H^{-1}} = L_H/\mu^2`,
    ``mixed_lipschitz``, ``mixed_norm_bound``) and the upper loss
    (``lipschitz``).  A constant the problem does not know (``None``, or a
    non-finite value, e.g. for a potential that is not C², whose
    :math:`\varphi''` jumps) is estimated by a :class:`BoundEstimator` and
    ``bound_exact`` is then False: ω is then an estimate, never ``inf``.

    Parameters
    ----------
    problem : LowerProblem
    upper : UpperLoss
    theta : array
    lower_tol, cg_tol : float > 0
    x0, q0 : arrays, optional
        Warm starts (not modified).
    bound : bool
        ``False`` skips the bound (``error_bound`` is NaN, no extra cost).
    estimator : BoundEstimator, optional
        Keeps running estimates across calls (created if needed).
    lower_maxiter, backtracking : optional
        Options of the default lower solver, ``FISTA(maxiter=lower_maxiter,
        backtracking=backtracking)`` (defaults 10000 and ``"auto"``).  Not allowed
        together with ``lower_solver``.
    cg_maxiter : int, optional
        Option of the default linear solver, ``CG(maxiter=cg_maxiter)`` (default 2000).
        Not allowed together with ``linear_solver``.
    lower_L0 : float, optional
        Passed to the lower solver's ``solve`` as ``L0``.
    constants : {"exact", "estimate"}
        ``"exact"`` (default) uses the problem's constants where it has them;
        ``"estimate"`` estimates :math:`L_H`, :math:`L_J` and :math:`\|J\|` with the
        :class:`BoundEstimator` for every problem (``bound_exact`` False).
    lower_solver : object, optional
        Anything with ``solve(problem, theta, tol, x0=None, L0=None, callback=None)``
        returning a :class:`~varlearn.results.Result` with ``x``, ``nit``, ``status``
        (``"success"`` when ``distance_bound <= tol``) and ``distance_bound`` (a certified
        bound on :math:`\|x - \hat x(\theta)\|`, the ε of ω), and optionally ``n_hvp``
        (default 0), ``mu`` and ``L`` (default the problem's constants).  Default
        :class:`~varlearn.solvers.FISTA`.
    linear_solver : object, optional
        Anything with ``solve(matvec, b, tol, x0=None, callback=None)`` returning a
        :class:`~varlearn.results.Result` with ``x``, ``nit`` and ``success``, and
        ``residual_norm`` with ``residual="true"`` when it is the true residual of ``x``
        (else the true residual is computed here, one product).  Default
        :class:`~varlearn.solvers.CG`.

    Returns
    -------
    Result
        ``grad`` (z), ``error_bound`` (ω), ``bound_exact``, ``status``
        (``"success"`` when both solvers met their tolerances; else
        ``"lower_failed"`` (lower level stopped on its ``maxiter``),
        ``"precision_limit"`` (``lower_tol`` below what rounding allows to
        certify), ``"nan"`` (the lower-level solve produced non-finite values) or
        ``"cg_failed"``), ``success``, ``x``, ``q``,
        ``eps`` and ``delta`` (achieved accuracies), ``upper_value``
        (:math:`U(\tilde x)`), ``upper_grad_norm``, ``n_lower_iter``,
        ``n_cg_iter`` (linear-solver products plus any products used by estimates),
        ``lower`` and ``cg`` (the solver results), ``constants``, ``wall_time``
        (``time`` is a deprecated alias).

    References
    ----------
    M. S. Salehi, S. Mukherjee, L. Roberts and M. J. Ehrhardt, "An adaptively inexact
    first-order method for bilevel optimization with application to hyperparameter
    learning", arXiv:2308.10098, 2024 (Theorem 2.1).  F. Pedregosa, "Hyperparameter
    optimization with approximate gradient", ICML 2016.
    """
    lower_tol = check_positive(lower_tol, "lower_tol")
    cg_tol = check_positive(cg_tol, "cg_tol")
    if constants not in ("exact", "estimate"):
        raise ValueError(f"constants must be 'exact' or 'estimate', got {constants!r}")
    lower_solver = _solver(lower_solver, "lower_solver", _default_fista, lower_maxiter=lower_maxiter,
                           backtracking=backtracking)
    linear_solver = _solver(linear_solver, "linear_solver", _default_cg, cg_maxiter=cg_maxiter)
    theta = problem.check_theta(theta)
    xp = problem.xp
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        low = lower_solver.solve(problem, theta, lower_tol, x0=x0, L0=lower_L0)
        _check_result(low, "lower_solver", ("x", "nit", "status", "distance_bound"))
        x = low.x
        gU = upper.grad(x)
        gU_norm = _norm(xp, gU)

        def matvec(v):
            return problem.hvp(x, theta, v)

        res = linear_solver.solve(matvec, gU, cg_tol, x0=q0)
        _check_result(res, "linear_solver", ("x", "nit", "success"))
    for w in caught:
        logger.info("hypergradient: %s", w.message)
    q = res.x
    z = -problem.mixed_vjp(x, theta, q)
    z_norm = _norm(xp, z)
    n_lower = low.nit + getattr(low, "n_hvp", 0)
    n_cg = res.nit
    if getattr(res, "residual", None) == "true":
        residual_norm = res.residual_norm
    else:  # a plug-in solver that does not report the true residual: δ from the true residual of q
        residual_norm = _norm(xp, gU - matvec(q))
        n_cg += 1
    mu = float(getattr(low, "mu", None) or problem.strong_convexity(theta))
    eps = low.distance_bound
    u = float(np.finfo(problem.dtype).eps) / 2.0
    q_norm = _norm(xp, q)
    L_bound = float(problem.lipschitz(theta))
    if not math.isfinite(L_bound):
        L_bound = float(getattr(low, "L", math.inf))
    delta = residual_norm + 32.0 * u * (L_bound * q_norm + gU_norm)
    if low.status == "success":
        status = "success" if res.success else "cg_failed"
    else:
        status = "lower_failed" if low.status == "maxiter" else low.status
    omega = math.nan
    exact = None
    consts = {}
    if bound and status != "nan":  # no bound around a non-finite solve: ω stays NaN
        est = estimator
        exact = True
        L_U = float(upper.lipschitz())
        if constants == "estimate":
            L_H = L_J = J_norm = None
        else:
            # constants valid on the ball of radius eps around x (it holds x_hat and the segment)
            L_H = _known(problem.hessian_lipschitz_at(x, theta, eps), "hessian_lipschitz_at")
            n_cg += int(getattr(problem, "local_bound_cost", 0))
            L_J = _known(problem.mixed_lipschitz(theta), "mixed_lipschitz")
            if L_J is None:
                L_J = _known(problem.mixed_lipschitz_at(x, theta, eps), "mixed_lipschitz_at")
            J_norm = _known(problem.mixed_norm_bound(x, theta), "mixed_norm_bound")
        if L_H is None or L_J is None or J_norm is None:
            est = est if est is not None else BoundEstimator()
            exact = False
        if L_H is None:
            L_H, c = est.hessian_lipschitz(problem, theta, x, max(eps, lower_tol))
            n_cg += c
        if L_J is None:
            L_J, c = est.mixed_lipschitz(problem, theta, x, q, max(eps, lower_tol))
            n_cg += c
        if J_norm is None:
            J_norm, c = est.mixed_norm(problem, theta, x)
            n_cg += c
        L_Hinv = L_H / (mu * mu)
        omega = error_bound(eps, delta, mu, L_U, gU_norm, J_norm, L_J, L_Hinv) + 32.0 * u * J_norm * q_norm
        consts = {"mu": mu, "L_U": L_U, "L_H": L_H, "L_J": L_J, "J_norm": J_norm}
    return Result(
        grad=z, grad_norm=z_norm, error_bound=omega, bound_exact=exact, status=status, success=status == "success",
        x=x, q=q, eps=eps, delta=delta,
        upper_value=float(upper.value(x)), upper_grad_norm=gU_norm, n_lower_iter=n_lower, n_cg_iter=n_cg,
        lower=low, cg=res, constants=consts, wall_time=time.perf_counter() - t0,
    )
