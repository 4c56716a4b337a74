r"""``minimize_bilevel``: MAID, fixed-accuracy descent and HOAG, with history and checkpoints."""
from __future__ import annotations

import csv
import io
import logging
import math
import time
import warnings

import numpy as np

from .._validation import check_theta
from ..backend import to_device, to_numpy
from ..hypergradient import BoundEstimator, hypergradient
from ..linalg import norm as _lnorm
from ..results import STATUS_MESSAGES, ConvergenceWarning, Result
from ..solvers import solve_lower
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .options import resolve_options

logger = logging.getLogger("varlearn")

__all__ = ["minimize_bilevel", "BilevelResult", "HISTORY_FIELDS", "history_to_csv"]

#: columns of ``BilevelResult.history`` (one row per outer iteration; row 0 is the start)
HISTORY_FIELDS = (
    "iter", "fun", "fun_upper", "fun_lower", "eps", "delta", "step", "n_backtracks", "accepted",
    "omega", "grad_norm", "n_lower_iter", "n_cg_iter", "cost", "time",
)


class BilevelResult(Result):
    """Result of :func:`minimize_bilevel` (a :class:`~varlearn.results.Result`).

    Keys: ``theta``, ``fun`` (upper loss at the last accepted lower-level
    iterate), ``fun_bounds`` (its certified lower and upper bounds), ``x``,
    ``nit``, ``status``, ``message``, ``success``, ``n_lower_iter``,
    ``n_cg_iter``, ``wall_time``, ``history`` (list of dicts with the keys of
    :data:`HISTORY_FIELDS`), ``method``, ``options``.

    ``success`` is True when the run ended on a limit the user set
    (``maxiter``, ``budget_exhausted``, ``time_limit``), on ``gradient_tol``, or
    on ``accuracy_floor`` (the hypergradient is so small that no accuracy above
    the floor certifies it: θ is stationary to the attainable accuracy), and
    False on ``linesearch_failed`` or ``callback_stop``.
    """

    def history_column(self, name):
        """One history column as a NumPy array."""
        return np.array([row[name] for row in self["history"]], dtype=float)


def history_to_csv(history, path=None):
    """Write history rows as CSV (atomically when ``path`` is given); returns the text."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(HISTORY_FIELDS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in HISTORY_FIELDS})
    text = buf.getvalue()
    if path is not None:
        from .checkpoint import atomic_write_text

        atomic_write_text(path, text)
    return text


class _Stop(Exception):
    def __init__(self, status):
        super().__init__(status)
        self.status = status


def _json_float(v):
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else (None if math.isnan(v) else ("inf" if v > 0 else "-inf"))


def _from_json_float(v):
    if v is None:
        return math.nan
    if v == "inf":
        return math.inf
    if v == "-inf":
        return -math.inf
    return float(v)


class _Run:
    """Mutable state of one run; everything needed to resume is in :meth:`save`."""

    def __init__(self, problem, upper, theta0, method, opts):
        self.problem = problem
        self.upper = upper
        self.method = method
        self.opts = opts
        self.xp = problem.xp
        self.theta = theta0.copy()
        self.k = 0
        self.eps = opts.get("eps0")
        self.delta = opts.get("delta0", opts.get("eps0"))
        self.step = opts.get("step0")
        self.x_warm = None
        self.q_warm = None
        self.n_lower = 0
        self.n_cg = 0
        self.elapsed = 0.0
        self.history = []
        self.estimator = BoundEstimator(seed=opts["seed"])
        # HOAG state
        self.L_hoag = None if opts.get("step0") is None else 1.0 / opts["step0"]
        self.eps_scale = 1.0
        self.eps_prev = None
        self.last = None  # the latest (fun, fun_lower, fun_upper) of the current point
        self.x_current = None
        self.L_last = None  # final FISTA step constant of the latest solve (backtracking warm start)

    # ----------------------------------------------------------------- checkpoints
    def save(self, path):
        meta = {
            "kind": "varlearn-bilevel", "method": self.method,
            "options": {k: _json_float(v) if isinstance(v, float) else v for k, v in self.opts.items()},
            "k": self.k, "eps": _json_float(self.eps), "delta": _json_float(self.delta),
            "step": _json_float(self.step), "n_lower": self.n_lower, "n_cg": self.n_cg,
            "elapsed": self.elapsed,
            "history": [{k: (_json_float(v) if isinstance(v, float) else v) for k, v in row.items()}
                        for row in self.history],
            "estimator": self.estimator.state_dict(),
            "L_hoag": _json_float(self.L_hoag), "eps_scale": self.eps_scale, "L_last": _json_float(self.L_last),
            "eps_prev": _json_float(self.eps_prev),
            "last": None if self.last is None else [_json_float(v) for v in self.last],
            "n_params": int(self.theta.shape[0]), "x_shape": list(self.problem.x_shape),
            "dtype": str(self.problem.dtype),
        }
        arrays = {"theta": to_numpy(self.theta)}
        if self.x_warm is not None:
            arrays["x_warm"] = to_numpy(self.x_warm)
        if self.q_warm is not None:
            arrays["q_warm"] = to_numpy(self.q_warm)
        if self.x_current is not None:
            arrays["x_current"] = to_numpy(self.x_current)
        if self.estimator._d is not None:
            arrays["estimator_d"] = to_numpy(self.estimator._d)
        save_checkpoint(path, meta, arrays)

    def restore(self, path):
        meta, arrays = load_checkpoint(path)
        if meta.get("kind") != "varlearn-bilevel":
            raise CheckpointError(f"checkpoint {str(path)!r} is not a bilevel-run checkpoint")
        if meta["method"] != self.method:
            raise CheckpointError(f"checkpoint {str(path)!r} is a {meta['method']!r} run, not {self.method!r}")
        if meta["n_params"] != self.theta.shape[0] or tuple(meta["x_shape"]) != tuple(self.problem.x_shape):
            raise CheckpointError(
                f"checkpoint {str(path)!r} was written for n_params={meta['n_params']}, x_shape="
                f"{tuple(meta['x_shape'])}; this problem has n_params={self.theta.shape[0]}, "
                f"x_shape={tuple(self.problem.x_shape)}"
            )
        xp = self.xp
        dt = self.problem.dtype
        self.theta = to_device(arrays["theta"], xp)
        self.x_warm = to_device(arrays["x_warm"], xp).astype(dt) if "x_warm" in arrays else None
        self.q_warm = to_device(arrays["q_warm"], xp).astype(dt) if "q_warm" in arrays else None
        self.x_current = to_device(arrays["x_current"], xp).astype(dt) if "x_current" in arrays else None
        self.estimator._d = to_device(arrays["estimator_d"], xp) if "estimator_d" in arrays else None
        self.k = int(meta["k"])
        self.eps = _from_json_float(meta["eps"])
        self.delta = _from_json_float(meta["delta"])
        self.step = None if meta["step"] is None else _from_json_float(meta["step"])
        self.n_lower, self.n_cg = int(meta["n_lower"]), int(meta["n_cg"])
        self.elapsed = float(meta["elapsed"])
        self.history = [{k: (_from_json_float(v) if k in _FLOAT_FIELDS else v) for k, v in row.items()}
                        for row in meta["history"]]
        self.estimator.load_state_dict(meta["estimator"])
        self.L_hoag = None if meta["L_hoag"] is None else _from_json_float(meta["L_hoag"])
        self.eps_scale = float(meta["eps_scale"])
        self.L_last = None if meta.get("L_last") is None else _from_json_float(meta["L_last"])
        self.eps_prev = None if meta["eps_prev"] is None else _from_json_float(meta["eps_prev"])
        self.last = None if meta["last"] is None else tuple(_from_json_float(v) for v in meta["last"])
        return meta

    # ----------------------------------------------------------------- helpers
    def _L0(self):
        # backtracking FISTA restarts from 0.8 x the last solve's L (it may shrink a little and
        # doubles when needed) instead of paying a power iteration per solve
        return None if self.L_last is None else 0.8 * self.L_last

    @property
    def cost(self):
        return self.n_lower + self.n_cg

    def solve(self, theta, tol, x0):
        """Trial solve at ``theta``; ``None`` when θ is out of the representable range.

        A trial step that overflows the parameters (``exp(θ)`` too large) or leads to
        non-finite iterates is a failed trial, not an error: the caller rejects it.
        """
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                warnings.simplefilter("ignore", RuntimeWarning)
                r = solve_lower(self.problem, theta, tol, x0=x0, maxiter=self.opts["lower_maxiter"],
                                backtracking=self.opts["backtracking_lower"], L0=self._L0())
        except (OverflowError, FloatingPointError) as exc:
            logger.info("trial point rejected: %s", exc)
            return None
        for w in caught:
            logger.info("lower-level solve: %s", w.message)
        self.n_lower += r.nit + r.n_hvp
        if r.status == "nan" or not math.isfinite(r.distance_bound):
            logger.info("trial point rejected: the lower-level solve produced non-finite values")
            return None
        self.L_last = r.L
        return r

    def hypergrad(self, eps, delta, bound):
        q0 = self.q_warm if self.opts["warm_start_cg"] else None
        hg = hypergradient(self.problem, self.upper, self.theta, eps, delta, x0=self.x_warm, q0=q0, bound=bound,
                           estimator=self.estimator, lower_maxiter=self.opts["lower_maxiter"],
                           cg_maxiter=self.opts["cg_maxiter"], backtracking=self.opts["backtracking_lower"],
                           lower_L0=self._L0())
        self.L_last = hg.lower.L
        self.n_lower += hg.n_lower_iter
        self.n_cg += hg.n_cg_iter
        if self.opts["warm_start_cg"]:
            self.q_warm = hg.q
        return hg

    def bounds(self, x, eps_achieved):
        """(U(x), certified lower bound, certified upper bound) of f at the point solved to ``eps``."""
        u = float(self.upper.value(x))
        gn = _lnorm(self.upper.grad(x))
        L_U = float(self.upper.lipschitz())
        quad = 0.5 * L_U * eps_achieved ** 2
        lower = u - gn * eps_achieved - (0.0 if self.upper.convex else quad)
        upper = u + gn * eps_achieved + quad
        return u, lower, upper

    def row(self, accepted, step, n_bt, omega, gnorm, t0):
        fun, lo, up = self.last if self.last is not None else (math.nan,) * 3
        r = {"iter": self.k, "fun": fun, "fun_upper": up, "fun_lower": lo, "eps": self.eps,
             "delta": self.delta, "step": step, "n_backtracks": n_bt, "accepted": accepted,
             "omega": omega, "grad_norm": gnorm, "n_lower_iter": self.n_lower, "n_cg_iter": self.n_cg,
             "cost": self.cost, "time": self.elapsed + (time.perf_counter() - t0)}
        self.history.append(r)
        return r


_FLOAT_FIELDS = {"fun", "fun_upper", "fun_lower", "eps", "delta", "step", "omega", "grad_norm", "time"}


def _check_limits(run, t0):
    o = run.opts
    if run.k >= o["max_iter"]:
        raise _Stop("maxiter")
    if run.cost >= o["budget"]:
        raise _Stop("budget_exhausted")
    if run.elapsed + (time.perf_counter() - t0) >= o["time_limit"]:
        raise _Stop("time_limit")


# --------------------------------------------------------------------- MAID / fixed
def _maid_iteration(run, t0, adaptive):
    o = run.opts
    accepted = False
    n_bt_total = 0
    step_used = run.step
    hg = None
    for attempt in range(o["max_attempts"]):
        # INEXACT_GRADIENT: shrink eps, delta until omega <= (1 - eta) ||z||
        while True:
            hg = run.hypergrad(run.eps, run.delta, bound=adaptive and o["bound"])
            run.x_warm = hg.x
            if not adaptive or not o["bound"]:
                break
            if hg.error_bound <= (1.0 - o["eta"]) * hg.grad_norm:
                break
            if run.eps * o["nu"] < o["eps_floor"]:
                raise _Stop("accuracy_floor")
            logger.debug("maid: omega %.3e > (1-eta)||z|| %.3e; eps %.3e -> %.3e", hg.error_bound,
                         hg.grad_norm, run.eps, run.eps * o["nu"])
            run.eps *= o["nu"]
            run.delta *= o["nu"]
            _check_limits_inner(run, t0)
        run.last = run.bounds(hg.x, hg.eps)
        if not run.history:
            run.x_current = hg.x
            run.row(None, math.nan, 0, hg.error_bound, hg.grad_norm, t0)
        if hg.grad_norm <= o["gtol"]:
            raise _Stop("gradient_tol")
        _, lower_cur, _ = run.last
        z = hg.grad
        zz = hg.grad_norm ** 2
        for i in range(o["max_backtracks"] + attempt):
            alpha = run.step * o["rho"] ** i
            theta_new = run.theta - alpha * z
            sol = run.solve(theta_new, run.eps, hg.x)
            n_bt_total += 1
            if sol is None:
                continue
            trial = run.bounds(sol.x, sol.distance_bound)
            if trial[2] - lower_cur <= -o["armijo"] * alpha * zz:
                run.theta = theta_new
                run.x_warm = sol.x
                run.x_current = sol.x
                run.last = trial
                run.step = alpha * o["rho_inc"]
                step_used = alpha
                accepted = True
                break
        if accepted:
            if adaptive:
                run.eps *= o["nu_inc"]
                run.delta *= o["nu_inc"]
            break
        if adaptive:
            if run.eps * o["nu"] < o["eps_floor"]:
                raise _Stop("accuracy_floor")
            run.eps *= o["nu"]
            run.delta *= o["nu"]
        _check_limits_inner(run, t0)
    run.k += 1
    row = run.row(accepted, step_used, n_bt_total, hg.error_bound, hg.grad_norm, t0)
    if not accepted and not adaptive:
        raise _Stop("linesearch_failed")
    return row


def _check_limits_inner(run, t0):
    o = run.opts
    if run.cost >= o["budget"]:
        raise _Stop("budget_exhausted")
    if run.elapsed + (time.perf_counter() - t0) >= o["time_limit"]:
        raise _Stop("time_limit")


# --------------------------------------------------------------------- HOAG
def _hoag_tol(run):
    o = run.opts
    k = run.k
    if o["decay"] == "geometric":
        s = o["decay_rate"] ** k
    elif o["decay"] == "quadratic":
        s = 1.0 / (k + 1) ** 2
    else:
        s = 1.0 / (k + 1) ** 3
    return max(o["eps_min"], o["eps0"] * s * run.eps_scale)


def _hoag_iteration(run, t0):
    o = run.opts
    xp = run.xp
    tol = _hoag_tol(run)
    run.eps = run.delta = tol
    hg = run.hypergrad(tol, tol, bound=False)
    run.x_warm = hg.x
    g_old = hg.upper_value
    run.last = run.bounds(hg.x, hg.eps)
    if not run.history:
        run.x_current = hg.x
        run.row(None, math.nan, 0, math.nan, hg.grad_norm, t0)
    if hg.grad_norm <= o["gtol"]:
        raise _Stop("gradient_tol")
    if run.L_hoag is None:
        p = run.theta.shape[0]
        run.L_hoag = hg.grad_norm / math.sqrt(p) if hg.grad_norm > 0 else 1.0
    alpha = 1.0 / run.L_hoag
    theta_new = xp.clip(run.theta - alpha * hg.grad, -o["theta_clip"], o["theta_clip"])
    sol = run.solve(theta_new, tol, hg.x)
    g_new = math.inf if sol is None else float(run.upper.value(sol.x))
    dnorm = float(xp.linalg.norm((theta_new - run.theta).ravel()))
    eps_old = run.eps_prev if run.eps_prev is not None else tol
    C = o["hoag_C"]
    if g_new <= g_old + C * tol + eps_old * (C + 1.0) * dnorm - run.L_hoag * dnorm ** 2:
        accepted = True
        run.L_hoag *= 0.95
    elif g_new >= 1.2 * g_old:
        accepted = False
        run.L_hoag *= 2.0
        run.eps_scale *= 0.5
    else:
        accepted = True
    if accepted:
        run.theta = theta_new
        run.x_warm = sol.x
        run.x_current = sol.x
        run.last = run.bounds(sol.x, sol.distance_bound)
    run.eps_prev = tol
    run.step = alpha
    run.k += 1
    return run.row(accepted, alpha, 0, math.nan, hg.grad_norm, t0)


# --------------------------------------------------------------------- driver
def minimize_bilevel(problem, upper, theta0, method="maid", options=None, callback=None, checkpoint=None,
                     resume=None):
    r"""Minimise :math:`f(\theta) = U(\hat x(\theta))` with inexact hypergradients.

    Methods
    -------
    ``"maid"``
        The adaptively inexact method of Salehi, Mukherjee, Roberts & Ehrhardt.
        Each outer iteration computes the hypergradient ``z`` at accuracies
        (ε, δ), halving both (factor ``nu``) until the error bound satisfies
        :math:`\omega \le (1-\eta)\|z\|`; then backtracks
        :math:`\alpha_i = \alpha\rho^i` (``max_backtracks`` tries, one more per
        attempt) and accepts :math:`\theta^+ = \theta - \alpha_i z` only if the
        certified upper bound of :math:`f(\theta^+)` minus the certified lower
        bound of :math:`f(\theta)` is at most :math:`-\lambda\alpha_i\|z\|^2`
        (``armijo`` = λ; the bounds are :math:`U(\tilde x) \pm \|\nabla U(\tilde x)\|\epsilon
        \,(+ L_U\epsilon^2/2)`, with the :math:`L_U` term dropped from the lower
        bound when ``U`` is convex, and ε the achieved distance bound of each
        solve).  After a success: α ← ``rho_inc``·α, ε, δ ← ``nu_inc``·(ε, δ);
        after a failed attempt: ε, δ ← ``nu``·(ε, δ) and the hypergradient is
        recomputed (``max_attempts`` attempts per outer iteration).
    ``"fixed"``
        The same line search with ε, δ fixed and no certificate loop; stops with
        status ``"linesearch_failed"`` when an outer iteration accepts no step.
    ``"hoag"``
        HOAG (Pedregosa 2016) with tolerance ε_k for both solves decaying
        geometrically (``eps0 * decay_rate**k``), quadratically
        (``eps0/(k+1)**2``) or cubically, floored at ``eps_min``; step 1/L with
        HOAG's acceptance rule (constant ``hoag_C``) — see the MAID spec §6.4.

    Stopping (each with its own ``status``): ``"maxiter"`` (``max_iter``
    outer iterations), ``"budget_exhausted"`` (lower-level + CG iterations
    ≥ ``budget``, checked between solves), ``"time_limit"``, ``"gradient_tol"``
    (‖z‖ ≤ ``gtol``), ``"accuracy_floor"`` (MAID needs ε below ``eps_floor``),
    ``"linesearch_failed"`` (fixed), ``"callback_stop"`` (the callback raised
    ``StopIteration``).  Options and defaults: :data:`varlearn.bilevel.options.DEFAULTS`.

    Parameters
    ----------
    problem : LowerProblem
    upper : UpperLoss
    theta0 : array
        Starting hyperparameters (1-D, the problem's array namespace).
    method : {"maid", "fixed", "hoag"}
    options : dict, optional
    callback : callable, optional
        ``callback(intermediate_result)`` after every outer iteration, with a
        :class:`~varlearn.results.Result` holding ``theta``, ``fun``, ``nit``,
        the last history row as ``row`` and a copy of all rows so far as
        ``history``.  Raising ``StopIteration`` stops
        the run (status ``"callback_stop"``).
    checkpoint : path, optional
        Where to save the run state (atomically) every ``checkpoint_every``
        outer iterations and at the end.
    resume : path, optional
        A checkpoint to continue from; its saved options are used, updated by
        ``options``.

    Returns
    -------
    BilevelResult
    """
    if method not in ("maid", "fixed", "hoag"):
        raise ValueError(f"method must be one of ('maid', 'fixed', 'hoag'), got {method!r}")
    saved_opts = None
    if resume is not None:
        meta, _ = load_checkpoint(resume)
        saved_opts = {k: (_from_json_float(v) if isinstance(v, str) and v in ("inf", "-inf") else v)
                      for k, v in meta.get("options", {}).items()}
        if method != meta.get("method"):
            raise CheckpointError(f"checkpoint {str(resume)!r} is a {meta.get('method')!r} run, "
                                  f"not {method!r}")
    opts = resolve_options(method, {**(saved_opts or {}), **(options or {})})
    theta0 = check_theta(theta0, problem.n_params, xp=problem.xp, name="theta0")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {callback!r}")
    run = _Run(problem, upper, theta0.astype(np.float64) if theta0.dtype != np.float64 else theta0, method, opts)
    if resume is not None:
        run.restore(resume)
        logger.info("resumed %s run from %s at outer iteration %d", method, resume, run.k)
    t0 = time.perf_counter()
    status = None
    try:
        while True:
            _check_limits(run, t0)
            if method == "hoag":
                row = _hoag_iteration(run, t0)
            else:
                row = _maid_iteration(run, t0, adaptive=(method == "maid"))
            logger.info("%s it %d: f=%.6g eps=%.3g delta=%.3g step=%.3g accepted=%s cost=%d", method, row["iter"],
                        row["fun"], row["eps"], row["delta"], row["step"], row["accepted"], row["cost"])
            if checkpoint is not None and run.k % opts["checkpoint_every"] == 0:
                run.elapsed += time.perf_counter() - t0
                t0 = time.perf_counter()
                run.save(checkpoint)
            if callback is not None:
                try:
                    callback(Result(theta=run.theta, fun=row["fun"], nit=run.k, row=dict(row),
                                    x=run.x_current, history=[dict(h) for h in run.history]))
                except StopIteration:
                    raise _Stop("callback_stop") from None
    except _Stop as stop:
        status = stop.status
    run.elapsed += time.perf_counter() - t0
    if checkpoint is not None:
        run.save(checkpoint)
    fun, lo, up = run.last if run.last is not None else (math.nan,) * 3
    success = status in ("maxiter", "gradient_tol", "budget_exhausted", "time_limit", "accuracy_floor")
    x_final = run.x_current if run.x_current is not None else run.x_warm
    return BilevelResult(
        theta=run.theta, fun=fun, fun_bounds=(lo, up), x=x_final, nit=run.k, status=status,
        message=STATUS_MESSAGES[status], success=success, n_lower_iter=run.n_lower, n_cg_iter=run.n_cg,
        wall_time=run.elapsed, history=run.history, method=method, options=opts,
    )

