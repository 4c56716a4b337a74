r"""MAID: the method of adaptive inexact descent (:class:`MAID`)."""
from __future__ import annotations

import logging

from .base import BilevelSolver, StopRun

logger = logging.getLogger("varlearn")

__all__ = ["MAID"]


class MAID(BilevelSolver):
    r"""MAID, the adaptively inexact first-order method of Salehi, Mukherjee, Roberts & Ehrhardt.

    Each outer iteration computes the hypergradient ``z`` at accuracies
    (ε, δ), shrinking both (factor ``nu``) until the error bound satisfies
    :math:`\omega \le (1-\eta)\|z\|`; then backtracks :math:`\alpha_i =
    \alpha\rho^i` (``max_backtracks`` tries, one more per attempt) and accepts
    :math:`\theta^+ = \theta - \alpha_i z` only if the certified upper bound of
    :math:`f(\theta^+)` minus the certified lower bound of :math:`f(\theta)`
    is at most :math:`-\lambda\alpha_i\|z\|^2` (``armijo`` = λ; the bounds are
    :math:`U(\tilde x) \pm \|\nabla U(\tilde x)\|\epsilon \,(+ L_U\epsilon^2/2)`,
    the :math:`L_U` term dropped from the lower bound when ``U`` is convex, ε
    the achieved distance bound of each solve).  After a success: α ←
    ``rho_inc``·α, (ε, δ) ← ``nu_inc``·(ε, δ); after a failed attempt: (ε, δ)
    ← ``nu``·(ε, δ) and the hypergradient is recomputed (``max_attempts``
    attempts per outer iteration).

    Parameters
    ----------
    **options
        ``maxiter``, ``eps0``, ``delta0``, ``step0``, ``rho``, ``rho_inc``,
        ``nu``, ``nu_inc``, ``eta``, ``armijo``, ``max_backtracks``,
        ``max_attempts``, ``eps_floor``, ``bound``, ``stationarity_rtol``,
        ``bound_constants`` and the common options; defaults and meaning:
        :data:`varlearn.bilevel.options.DEFAULTS` ``["maid"]``.

    Notes
    -----
    Stopping rules (statuses ``gradient_tol``, ``accuracy_floor``,
    ``lower_failed``, ``cg_failed``, ``nan``, ``maxiter``,
    ``budget_exhausted``, ``time_limit``): :func:`~varlearn.minimize_bilevel`.

    References
    ----------
    M. S. Salehi, S. Mukherjee, L. Roberts, M. J. Ehrhardt, "An adaptively
    inexact first-order method for bilevel optimization with application to
    hyperparameter learning", SIAM J. Math. Data Sci. (2025), arXiv 2308.10098.
    """

    method = "maid"
    #: whether ε, δ adapt (MAID) or stay fixed (:class:`~varlearn.bilevel.FixedAccuracy`)
    adaptive = True

    def _iterate(self, state):
        o = state.options
        adaptive = self.adaptive
        accepted = False
        n_bt_total = 0
        step_used = state.step
        hg = None
        for attempt in range(o["max_attempts"]):
            trial_failed = False  # whether a trial solve of this attempt missed its tolerance
            hg = self._certified_hypergrad(state)
            self._record_start(state, hg)
            if hg.grad_norm <= o["gtol"]:
                raise StopRun("gradient_tol")
            _, lower_cur, _ = state.last
            z = hg.grad
            zz = hg.grad_norm ** 2
            for i in range(o["max_backtracks"] + attempt):
                alpha = state.step * o["rho"] ** i
                theta_new = state.theta - alpha * z
                sol = self._solve(state, theta_new, state.eps, hg.x)
                n_bt_total += 1
                if sol is None:
                    continue
                trial_failed = trial_failed or sol.status == "maxiter"
                trial = self._bounds(state, sol.x, sol.distance_bound)
                if trial[2] - lower_cur <= -o["armijo"] * alpha * zz:
                    state.theta = theta_new
                    state.x_warm = sol.x
                    state.x_current = sol.x
                    state.last = trial
                    state.step = alpha * o["rho_inc"]
                    step_used = alpha
                    accepted = True
                    break
            if accepted:
                if adaptive:
                    state.eps *= o["nu_inc"]
                    state.delta *= o["nu_inc"]
                break
            if adaptive:
                if state.eps * o["nu"] < o["eps_floor"]:
                    # no step could be certified down to the accuracy floor: a solver limit when a trial
                    # solve missed its tolerance, else the decrease λα‖z‖² is below what the accuracy floor
                    # resolves, and ‖∇f(θ)‖ <= ‖z‖ + ω is all that can be certified
                    if trial_failed:
                        raise StopRun("lower_failed")
                    state.stationarity = (hg.grad_norm + hg.error_bound,
                                          bool(o["bound"] and hg.bound_exact and hg.success))
                    raise StopRun("accuracy_floor")
                state.eps *= o["nu"]
                state.delta *= o["nu"]
            self._check_limits(state)
        state.k += 1
        row = self._row(state, accepted, step_used, n_bt_total, hg.error_bound, hg.grad_norm, hg.bound_exact)
        if not accepted and not adaptive:
            raise StopRun("linesearch_failed")
        return row

    def _certified_hypergrad(self, state):
        """INEXACT_GRADIENT: the hypergradient, (ε, δ) shrunk until ω <= (1 - η)‖z‖ (MAID only)."""
        o = state.options
        certify = self.adaptive and o["bound"]
        while True:
            hg = self._hypergrad(state, state.eps, state.delta, bound=certify)
            state.x_warm = hg.x
            if not certify or hg.error_bound <= (1.0 - o["eta"]) * hg.grad_norm:
                return hg
            if hg.status in ("lower_failed", "cg_failed", "nan"):
                # a smaller tolerance cannot help a solver that did not meet the current one (or
                # produced non-finite values at the current θ)
                self._record_start(state, hg)
                raise StopRun(hg.status)
            if hg.status == "precision_limit" or state.eps * o["nu"] < o["eps_floor"]:
                # z is at the level of its attainable error: theta is stationary to that accuracy,
                # certified when the constants of the bound are exact
                self._record_start(state, hg)
                state.stationarity = (hg.grad_norm + hg.error_bound, bool(hg.bound_exact))
                raise StopRun("accuracy_floor")
            logger.debug("maid: omega %.3e > (1-eta)||z|| %.3e; eps %.3e -> %.3e", hg.error_bound,
                         hg.grad_norm, state.eps, state.eps * o["nu"])
            state.eps *= o["nu"]
            state.delta *= o["nu"]
            self._check_limits(state)
