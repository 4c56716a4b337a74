r"""HOAG: hyperparameter optimisation with approximate gradient (:class:`HOAG`)."""
from __future__ import annotations

import math

from .base import BilevelSolver, StopRun

__all__ = ["HOAG"]


class HOAG(BilevelSolver):
    r"""HOAG (Pedregosa 2016) with a decaying tolerance, as in the MAID paper's baseline.

    Outer iteration ``k`` solves the lower level and CG to the tolerance
    :math:`\epsilon_k = \max(\epsilon_{\min}, \epsilon_0\, s_k\, c)` with
    :math:`s_k` = ``decay_rate**k`` (``decay="geometric"``), :math:`1/(k+1)^2`
    (``"quadratic"``) or :math:`1/(k+1)^3` (``"cubic"``) and ``c`` halved on
    every rejected step; takes :math:`\theta^+ = \mathrm{clip}(\theta - z/L,
    \pm` ``theta_clip``:math:`)` and, with :math:`\Delta = \|\theta^+ -
    \theta\|` and ``C`` = ``hoag_C``:

    * if :math:`g^+ \le g + C\epsilon_k + \epsilon_{k-1}(C+1)\Delta - L\Delta^2`:
      accept, :math:`L \leftarrow 0.95L`;
    * elif :math:`g^+ \ge 1.2g`: reject, :math:`L \leftarrow 2L`, ``c`` ← c/2;
    * else accept.

    The first ``L`` is ``1/step0``, or :math:`\|z_0\|/\sqrt p` when ``step0``
    is None (HOAG's first step).  No error bound is computed (``omega`` is
    NaN), so HOAG's steps are not certified decreases.

    Parameters
    ----------
    **options
        ``maxiter``, ``eps0``, ``decay``, ``decay_rate``, ``eps_min``,
        ``step0``, ``hoag_C``, ``theta_clip`` and the common options:
        :data:`varlearn.bilevel.options.DEFAULTS` ``["hoag"]``.

    Notes
    -----
    Stops on ``gradient_tol`` (success: ``‖z‖ <= gtol``) or a limit
    (``maxiter``, ``budget_exhausted``, ``time_limit``).

    References
    ----------
    F. Pedregosa, "Hyperparameter optimization with approximate gradient",
    ICML 2016, arXiv 1602.02355; the MAID spec §6.4 (the settings of the MAID
    paper's HOAG baseline).
    """

    method = "hoag"

    @staticmethod
    def tolerance(state):
        """The tolerance ε_k of the next outer iteration (for both solves)."""
        o = state.options
        k = state.k
        if o["decay"] == "geometric":
            s = o["decay_rate"] ** k
        elif o["decay"] == "quadratic":
            s = 1.0 / (k + 1) ** 2
        else:
            s = 1.0 / (k + 1) ** 3
        return max(o["eps_min"], o["eps0"] * s * state.eps_scale)

    def _iterate(self, state):
        o = state.options
        xp = state.xp
        tol = self.tolerance(state)
        state.eps = state.delta = tol
        hg = self._hypergrad(state, tol, tol, bound=False)
        state.x_warm = hg.x
        g_old = hg.upper_value
        self._record_start(state, hg)  # hg.error_bound is NaN: no bound
        if hg.grad_norm <= o["gtol"]:
            raise StopRun("gradient_tol")
        if state.L_hoag is None:
            p = state.theta.shape[0]
            state.L_hoag = hg.grad_norm / math.sqrt(p) if hg.grad_norm > 0 else 1.0
        alpha = 1.0 / state.L_hoag
        theta_new = xp.clip(state.theta - alpha * hg.grad, -o["theta_clip"], o["theta_clip"])
        sol = self._solve(state, theta_new, tol, hg.x)
        g_new = math.inf if sol is None else float(state.upper.value(sol.x))
        dnorm = float(xp.linalg.norm((theta_new - state.theta).ravel()))
        eps_old = state.eps_prev if state.eps_prev is not None else tol
        C = o["hoag_C"]
        if g_new <= g_old + C * tol + eps_old * (C + 1.0) * dnorm - state.L_hoag * dnorm ** 2:
            accepted = True
            state.L_hoag *= 0.95
        elif g_new >= 1.2 * g_old:
            accepted = False
            state.L_hoag *= 2.0
            state.eps_scale *= 0.5
        else:
            accepted = True
        if accepted:
            state.theta = theta_new
            state.x_warm = sol.x
            state.x_current = sol.x
            state.last = self._bounds(state, sol.x, sol.distance_bound)
        state.eps_prev = tol
        state.step = alpha
        state.k += 1
        return self._row(state, accepted, alpha, 0, math.nan, hg.grad_norm, None)
