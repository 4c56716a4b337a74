r"""``minimize_bilevel``: MAID, fixed-accuracy descent and HOAG, with history and checkpoints."""
from __future__ import annotations

import csv
import io
import logging
import math
import time

import numpy as np

from .._validation import check_theta
from ..results import STATUS_MESSAGES, Result
from ._run import _FLOAT_FIELDS, _from_json_float, _json_float, _Run, _Stop  # noqa: F401
from .checkpoint import CheckpointError, load_checkpoint
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
    ``nit``, ``status``, ``message``, ``success``, ``n_accepted`` (accepted
    steps; 0 means θ is still θ0, and the message says so),
    ``stationarity_bound`` (at ``accuracy_floor``: ``‖z‖ + ω``, a bound on
    ``‖∇f(θ)‖``; NaN otherwise), ``n_lower_iter``, ``n_cg_iter``,
    ``wall_time``, ``history`` (list of dicts with the keys of
    :data:`HISTORY_FIELDS`), ``method``, ``options``.

    ``success`` means the requested accuracy was met, as in SciPy: it is True
    only on ``gradient_tol`` (``‖z‖ <= gtol``) and on a *certified*
    ``accuracy_floor``: the error bound, with exact constants, says the
    hypergradient is at the level of its attainable error, so
    ``‖∇f(θ)‖ <= stationarity_bound``, and that bound is at most
    ``max(gtol, stationarity_rtol * ‖z_0‖)`` (``‖z_0‖`` the first hypergradient's
    norm, ``stationarity_rtol`` 1e-3 by default); a certified but larger bound
    (e.g. a float32 run whose attainable accuracy is poor) is not success.  A run that stopped on a limit
    (``maxiter``, ``budget_exhausted``, ``time_limit``), on a failure
    (``linesearch_failed``, ``lower_failed``, ``cg_failed``, ``nan``), on
    ``callback_stop`` or on an ``accuracy_floor`` reached with estimated
    constants has ``success`` False; ``status`` says which.
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
        trial_failed = False  # whether a trial solve of this attempt missed its tolerance
        # INEXACT_GRADIENT: shrink eps, delta until omega <= (1 - eta) ||z||
        while True:
            hg = run.hypergrad(run.eps, run.delta, bound=adaptive and o["bound"])
            run.x_warm = hg.x
            if not adaptive or not o["bound"]:
                break
            if hg.error_bound <= (1.0 - o["eta"]) * hg.grad_norm:
                break
            if hg.status in ("lower_failed", "cg_failed", "nan"):
                # a smaller tolerance cannot help a solver that did not meet the current one (or
                # produced non-finite values at the current θ)
                _record_start(run, hg, t0)
                raise _Stop(hg.status)
            if hg.status == "precision_limit" or run.eps * o["nu"] < o["eps_floor"]:
                # z is at the level of its attainable error: theta is stationary to that accuracy,
                # certified when the constants of the bound are exact
                _record_start(run, hg, t0)
                run.stationarity = (hg.grad_norm + hg.error_bound, bool(hg.bound_exact))
                raise _Stop("accuracy_floor")
            logger.debug("maid: omega %.3e > (1-eta)||z|| %.3e; eps %.3e -> %.3e", hg.error_bound,
                         hg.grad_norm, run.eps, run.eps * o["nu"])
            run.eps *= o["nu"]
            run.delta *= o["nu"]
            _check_limits_inner(run, t0)
        _record_start(run, hg, t0)
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
            trial_failed = trial_failed or sol.status == "maxiter"
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
                # no step could be certified down to the accuracy floor: a solver limit when a trial
                # solve missed its tolerance, else the decrease λα‖z‖² is below what the accuracy floor
                # resolves, and ‖∇f(θ)‖ <= ‖z‖ + ω is all that can be certified
                if trial_failed:
                    raise _Stop("lower_failed")
                run.stationarity = (hg.grad_norm + hg.error_bound,
                                    bool(o["bound"] and hg.bound_exact and hg.success))
                raise _Stop("accuracy_floor")
            run.eps *= o["nu"]
            run.delta *= o["nu"]
        _check_limits_inner(run, t0)
    run.k += 1
    row = run.row(accepted, step_used, n_bt_total, hg.error_bound, hg.grad_norm, t0)
    if not accepted and not adaptive:
        raise _Stop("linesearch_failed")
    return row


def _record_start(run, hg, t0):
    """Bounds of f at the current point; the history's row 0 on the first hypergradient."""
    run.last = run.bounds(hg.x, hg.eps, hg.upper_value, hg.upper_grad_norm)  # U and ‖∇U‖ from hg
    if not run.history:
        run.x_current = hg.x
        run.row(None, math.nan, 0, hg.error_bound, hg.grad_norm, t0)


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
    _record_start(run, hg, t0)  # hg.error_bound is NaN: no bound
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

    Stopping (each with its own ``status``; ``success`` only where marked):

    * ``"gradient_tol"`` (success): ‖z‖ ≤ ``gtol`` at the current θ;
    * ``"accuracy_floor"`` (success when certified and small): the accuracy cannot go
      lower, either in the certificate loop (ω > (1 − η)‖z‖ and ε would go
      below ``eps_floor``, or the lower level reports ``"precision_limit"``:
      its tolerance is below what rounding allows to certify; ‖z‖ is at the
      level of its attainable error) or in the line search (every attempt
      failed and ε would go below ``eps_floor`` though no trial solve missed
      its tolerance: the decrease λα‖z‖² is below what the floor accuracy
      resolves).  ``stationarity_bound = ‖z‖ + ω`` bounds ‖∇f(θ)‖; it is
      certified when the bound's constants are exact (``bound_exact``) and,
      at the line-search floor, the certificate is on and both solvers of the
      last hypergradient met their tolerances (in the certificate loop ω is a
      valid bound whatever the solvers' status, ``"precision_limit"``
      included), and ``success`` when it is certified and at most
      ``max(gtol, stationarity_rtol * ‖z_0‖)``;
    * ``"lower_failed"`` / ``"cg_failed"``: in the certificate loop, ω > (1 − η)‖z‖
      and the lower-level solve (``lower_maxiter``) or CG (``cg_maxiter``)
      did not meet its tolerance, so a smaller tolerance would not help; or
      (``"lower_failed"``) the line search reached the floor while a trial
      solve of the last attempt missed its tolerance.  Raise the limit;
    * ``"nan"``: the lower-level solve at the current θ (θ0 in practice: trial
      points with non-finite solves are rejected) produced non-finite values;
    * ``"maxiter"`` (``max_iter`` outer iterations), ``"budget_exhausted"``
      (lower-level + CG iterations ≥ ``budget``, checked between solves),
      ``"time_limit"``: a limit was reached;
    * ``"linesearch_failed"``: ``"fixed"`` accepted no step in an outer
      iteration;
    * ``"callback_stop"``: the callback raised ``StopIteration``.

    Options and defaults: :data:`varlearn.bilevel.options.DEFAULTS`.

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
        Where to save the run state (atomically): after an outer iteration
        ``k`` with ``k % checkpoint_every == 0`` when at least
        ``checkpoint_interval`` seconds (default 5) have passed since the
        previous save (the first such iteration is always saved), and always
        at the end, whatever the status.  Each save rewrites the whole file
        (about three copies of ``x``: 201 MB for 2 × 2048² float64), so the
        interval bounds the I/O; a run killed in between resumes from the last
        save and recomputes the iterations since, exactly as they ran.
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
    last_save = -math.inf  # the first eligible iteration is always saved
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
            if (checkpoint is not None and run.k % opts["checkpoint_every"] == 0
                    and time.perf_counter() - last_save >= opts["checkpoint_interval"]):
                run.elapsed += time.perf_counter() - t0
                t0 = time.perf_counter()
                run.save(checkpoint)
                last_save = time.perf_counter()
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
    stat_bound, certified = run.stationarity if status == "accuracy_floor" else (math.nan, False)
    z0 = run.history[0]["grad_norm"] if run.history else math.nan
    floor_tol = max(opts.get("gtol", 0.0), opts.get("stationarity_rtol", 0.0) * z0)
    small_enough = stat_bound <= floor_tol
    success = status == "gradient_tol" or (status == "accuracy_floor" and certified and small_enough)
    n_accepted = sum(1 for row in run.history if row.get("accepted") is True)
    message = STATUS_MESSAGES[status]
    if status == "accuracy_floor":
        if not certified:
            message += f"; |grad f(theta)| <= {stat_bound:.3e} only by estimated constants (not certified)"
        elif not small_enough:
            message += (f"; |grad f(theta)| <= {stat_bound:.3e} (certified), which is not below "
                        f"max(gtol, stationarity_rtol * |z_0|) = {floor_tol:.3e}")
        else:
            message += f"; |grad f(theta)| <= {stat_bound:.3e} (certified)"
    if n_accepted == 0 and run.k > 0:
        message += f"; no step was accepted in {run.k} outer iterations (theta is theta0)"
    x_final = run.x_current if run.x_current is not None else run.x_warm
    return BilevelResult(
        theta=run.theta, fun=fun, fun_bounds=(lo, up), x=x_final, nit=run.k, status=status,
        message=message, success=success, n_accepted=n_accepted, stationarity_bound=stat_bound,
        n_lower_iter=run.n_lower, n_cg_iter=run.n_cg, wall_time=run.elapsed, history=run.history,
        method=method, options=opts,
    )

