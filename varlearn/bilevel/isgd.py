r"""ISGD: inexact stochastic (mini-batch) hypergradient descent for separable bilevel problems.

For a separable problem (:mod:`varlearn.problems.separable`: ``N`` images, the
lower level a sum of per-image objectives ``h_i``, the upper loss
:math:`f(\theta) = \frac1N\sum_i f_i(\theta)`) each step samples a mini-batch and
solves only its images.

Algorithm (step ``k = 0, 1, ...``, counted across epochs)
----------------------------------------------------------
1. :math:`B_k` ← the sampler (``sampling``: shuffled epochs, i.i.d. with
   replacement, or cyclic fixed batches; :mod:`varlearn.bilevel.sampling`),
   ``b = |B_k|`` images; the batch problem and loss are
   ``problem.subset(B_k)`` and ``upper.subset(B_k)`` (weight ``w = 1/b``).
2. Accuracies from the schedules (:mod:`varlearn.bilevel.schedules`):
   per image :math:`\epsilon^{img}_k = \max(\text{eps\_min}, \epsilon_0 s_\epsilon(k))` and
   :math:`\delta^{img}_k = \max(\text{eps\_min}, \text{delta\_ratio}\cdot\epsilon^{img}_k)`.
   The batch is certified as a whole (stochastic spec §3): the stacked
   lower level is solved until :math:`\|\nabla h_B(\tilde x)\| \le \mu\,\epsilon_k`
   with :math:`\epsilon_k = \sqrt b\,\epsilon^{img}_k`, so that
   :math:`\sum_{i\in B}\|\tilde x_i - \hat x_i\|^2 \le b\,(\epsilon^{img}_k)^2`
   (the per-image accuracy in the quadratic mean), and CG on
   :math:`H_B q = \nabla U_B(\tilde x)` until the residual is at most
   :math:`\delta_k = w\sqrt b\,\delta^{img}_k`, i.e. :math:`\delta^{img}_k` in the quadratic mean
   for the unweighted per-image systems :math:`H_i\bar q_i = \nabla u_i(\tilde x_i)`,
   :math:`\bar q_i = q_i/w`.  With ``accuracy="bound"`` both are then halved
   until the error bound certifies the batch direction,
   :math:`\omega_B \le (1-\eta)\|z_B\|` (or the per-image ε reaches ``eps_min``).
3. :math:`z_k = -J_B(\tilde x)^T q` (:func:`~varlearn.hypergradient.hypergradient`
   on the batch, through the executor), an estimate of :math:`\nabla f(\theta_k)`;
   ``bound=True`` also computes its error bound ω (a diagnostic only).
4. :math:`d_k = z_k` (``"sgd"``) or the Adam direction
   :math:`\hat m_k/(\sqrt{\hat v_k}+\epsilon_A)` (``"adam"``, bias-corrected moments, betas
   ``adam_betas``; Kingma & Ba 2015); :math:`\theta_{k+1} = P(\theta_k - \alpha_k d_k)`
   with :math:`\alpha_k = \alpha_0 s_\alpha(k)` and ``P`` the optional ``project``.

There is no line search and no acceptance test: step and accuracy are
a-priori schedules.  Warm starts (``warm_start="driver"``, the serial
default): each image keeps the lower-level solution and the unweighted
adjoint :math:`\bar q_i` of its last solve, in float32, in an LRU store of at
most ``warm_start_max_bytes``; they change the cost, never the certificates.

Stopping rules (checked before each step; every one is a limit, so
``success`` is always False: ISGD certifies no stationarity)
------------------------------------------------------------------------
``"maxiter"`` (``k >= maxiter`` steps), ``"max_epochs"`` (completed epochs
``>= max_epochs``), ``"budget_exhausted"`` (image-iterations, lower + CG,
``>= image_budget``; checked between steps, so the last step may overshoot
by one step's cost), ``"time_limit"``, ``"callback_stop"`` (the callback
raised ``StopIteration``), and ``"nan"`` (a batch solve or the new θ is not
finite; θ is the last finite one).

Cost
----
One FISTA or CG iteration on one image is one *image-iteration*: a solve of
the stacked batch of ``b`` images for ``n`` iterations costs ``n * b``.
History columns ``image_lower_iter``, ``image_cg_iter`` and ``image_cost``
(cumulative) let runs of different batch sizes be compared at equal cost;
``n_lower_iter``, ``n_cg_iter`` and ``cost`` count stacked iterations.

References
----------
M. S. Salehi, S. Mukherjee, L. Roberts, M. J. Ehrhardt, "Bilevel learning with
inexact stochastic gradients", SSVM 2025, LNCS 15667, pp. 347–359, arXiv 2412.12049.
M. S. Salehi et al., "Bilevel learning via inexact stochastic gradient descent",
arXiv 2511.06774 (2025).
D. P. Kingma, J. Ba, "Adam: a method for stochastic optimization", ICLR 2015.
"""
from __future__ import annotations

import logging
import math
import time
import warnings

import numpy as np

from .._validation import check_theta
from ..hypergradient import BoundEstimator, hypergradient
from ..problems.separable import require_separable
from ..results import ConvergenceWarning, Result
from ..solvers import solve_lower
from . import _isgd_state as _st
from .isgd_options import resolve_isgd_options
from .sampling import Sampler
from .schedules import Schedule

logger = logging.getLogger("varlearn")

__all__ = ["ISGD", "ISGDState", "ISGD_HISTORY_FIELDS", "ISGD_EVAL_FIELDS"]

#: columns of an ISGD history row (one per mini-batch step)
ISGD_HISTORY_FIELDS = (
    "iter", "epoch", "n_images", "fun_batch", "eps", "eps_image", "delta", "step", "grad_norm", "omega",
    "image_lower_iter", "image_cg_iter", "image_cost", "n_lower_iter", "n_cg_iter", "cost", "time",
    "n_retries", "n_dropped", "n_uncertified",
)
#: columns of an evaluation row (``eval_every`` epochs; its cost is not in ``image_cost``)
ISGD_EVAL_FIELDS = ("iter", "epoch", "image_cost", "fun_full", "psnr_full", "fun_heldout", "psnr_heldout",
                    "eval_cost")

_MESSAGES = {
    "maxiter": "the maximum number of mini-batch steps (maxiter) was reached",
    "max_epochs": "the maximum number of epochs (max_epochs) was reached",
    "budget_exhausted": "the image-iteration budget (image_budget) was used up",
    "time_limit": "the wall-time limit was reached",
    "callback_stop": "the callback raised StopIteration",
    "nan": "a NaN or Inf appeared in a batch solve or in theta",
}


class ISGDState:
    """The public state of an :class:`ISGD` run (mutated by :meth:`ISGD.update`).

    Attributes: ``theta`` (float64, the problem's namespace), ``k`` (steps
    done), ``epoch`` (completed epochs), ``history`` (rows of
    :data:`ISGD_HISTORY_FIELDS`), ``evaluations`` (rows of
    :data:`ISGD_EVAL_FIELDS`), ``status`` (None while running), the cost
    counters ``image_lower_iter``, ``image_cg_iter``, ``n_lower_iter``,
    ``n_cg_iter``, ``eval_cost``, and ``sampler``, ``adam_m``, ``adam_v``,
    ``adam_t``, ``warm`` (the warm-start store), ``estimator``, ``L_last``,
    ``elapsed``, ``fingerprint``, ``x`` (the last batch's lower-level iterate),
    ``batch`` (its indices), ``grad`` (its hypergradient z).
    """

    def __init__(self, problem, upper, theta, opts, sampler, warm_capacity):
        self.problem, self.upper, self.opts = problem, upper, opts
        self.theta = theta
        self.k = 0
        self.history, self.evaluations = [], []
        self.status = None
        self.image_lower_iter = self.image_cg_iter = self.n_lower_iter = self.n_cg_iter = self.eval_cost = 0
        self.sampler = sampler
        self.adam_m = self.adam_v = None
        self.adam_t = 0
        self.warm = _st.WarmStore(warm_capacity) if warm_capacity > 0 else None
        self.estimator = BoundEstimator(seed=opts["seed"])
        self.L_last = None
        self.elapsed = 0.0
        self._t0 = time.perf_counter()
        self.fingerprint = None
        self.x = self.batch = self.grad = None

    @property
    def epoch(self):
        return self.sampler.epoch

    @property
    def image_cost(self):
        return self.image_lower_iter + self.image_cg_iter

    def clock(self):
        """Wall time of the run so far (seconds, across resumes)."""
        return self.elapsed + (time.perf_counter() - self._t0)

    def sync_clock(self):
        self.elapsed = self.clock()
        self._t0 = time.perf_counter()


class ISGD:
    """Inexact stochastic gradient descent on mini-batches (see the module docstring).

    Parameters
    ----------
    **options
        Validated by name (:func:`~varlearn.bilevel.isgd_options.resolve_isgd_options`,
        defaults :data:`~varlearn.bilevel.isgd_options.ISGD_DEFAULTS`).

    Examples
    --------
    >>> solver = ISGD(batch_size=4, maxiter=100, optimizer="adam")        # doctest: +SKIP
    >>> result = solver.run(problem, SquaredError(clean), theta0)         # doctest: +SKIP
    """

    method = "isgd"

    def __init__(self, **options):
        resolve_isgd_options(options)  # early check of names and values
        self.options = dict(options)

    # ------------------------------------------------------------------ setup
    def init_state(self, problem, upper, theta0, options=None):
        """A fresh :class:`ISGDState` at ``theta0`` (options validated against the problem)."""
        require_separable(problem, "problem")
        require_separable(upper, "upper loss")
        n = problem.n_samples
        if upper.n_samples != n:
            raise ValueError(f"the problem has {n} samples but the upper loss has {upper.n_samples}")
        opts = resolve_isgd_options({**self.options, **(options or {})}, n_samples=n,
                                    image_shape=tuple(problem.x_shape[-2:]))
        theta = check_theta(theta0, problem.n_params, xp=problem.xp, name="theta0")
        theta = theta.astype(np.float64, copy=True)
        sampler = Sampler(n, opts["batch_size"], opts["sampling"], opts["seed"])
        state = ISGDState(problem, upper, theta, opts, sampler, _st.warm_capacity(problem, opts))
        state.step_schedule = Schedule(opts["step_schedule"], opts["step0"], opts["q"], "step_schedule")
        state.eps_schedule = Schedule(opts["eps_schedule"], opts["eps0"], opts["p"], "eps_schedule")
        state.executor = _st.make_executor(opts)
        state.fingerprint = _st.data_fingerprint(problem, upper)
        return state

    # ------------------------------------------------------------------ one step
    def accuracies(self, state, b):
        """``(eps_image, delta_image, eps, delta)`` of step ``state.k`` for a batch of ``b`` images."""
        o = state.opts
        eps_img = max(o["eps_min"], state.eps_schedule(state.k))
        delta_img = max(o["eps_min"], o["delta_ratio"] * eps_img)
        root_b = math.sqrt(b)
        return eps_img, delta_img, root_b * eps_img, root_b * delta_img / b

    def _batch_hypergradient(self, state, idx, eps, delta, bound):
        """Hypergradient of the batch ``idx`` at (ε, δ): through the executor when one is set,
        else in process on ``problem.subset(idx)`` (the reference path)."""
        if state.executor is not None:
            return _st.executor_hypergradient(state, idx, eps, delta, bound)
        o = state.opts
        sub_p, sub_u = state.problem.subset(idx), state.upper.subset(idx)
        w = float(sub_u.sample_weight)
        x0, q0 = state.warm.fill(idx, sub_p, w) if state.warm is not None else (None, None)
        L0 = None if state.L_last is None else 0.8 * state.L_last
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # reported through hg.status
            hg = hypergradient(sub_p, sub_u, state.theta, eps, delta, x0=x0, q0=q0, bound=bound,
                               estimator=state.estimator, lower_maxiter=o["lower_maxiter"],
                               cg_maxiter=o["cg_maxiter"], backtracking=o["backtracking_lower"], lower_L0=L0)
        b = len(idx)
        if hg.status != "nan":
            state.L_last = hg.lower.L
            if state.warm is not None:
                state.warm.put(idx, hg.x, hg.q, w)
        return Result(grad=hg.grad, omega=hg.error_bound, fun=hg.upper_value, eps=hg.eps, delta=hg.delta,
                      bound_exact=hg.bound_exact, n_lower_iter=hg.n_lower_iter, n_cg_iter=hg.n_cg_iter,
                      image_lower_iter=hg.n_lower_iter * b, image_cg_iter=hg.n_cg_iter * b, n_retries=0,
                      n_dropped=0, n_uncertified=0 if hg.success else b, status=hg.status, x=hg.x)

    def update(self, state):
        """One mini-batch step; appends a history row and returns it (``state.status`` ``"nan"`` on failure)."""
        o = state.opts
        idx, epoch = state.sampler.next()
        b = len(idx)
        eps_img, delta_img, eps, delta = self.accuracies(state, b)
        alpha = state.step_schedule(state.k)
        counts = {"n_lower_iter": 0, "n_cg_iter": 0, "image_lower_iter": 0, "image_cg_iter": 0,
                  "n_retries": 0, "n_dropped": 0}
        while True:
            bh = self._batch_hypergradient(state, idx, eps, delta, bound=o["bound"] or o["accuracy"] == "bound")
            for key in counts:
                counts[key] += int(bh[key])
            if (o["accuracy"] != "bound" or bh.status == "nan" or bh.omega <= (1.0 - o["eta"]) * _norm(bh.grad)
                    or eps_img * 0.5 < o["eps_min"]):
                break
            eps_img, delta_img, eps, delta = 0.5 * eps_img, 0.5 * delta_img, 0.5 * eps, 0.5 * delta
        for key in ("n_lower_iter", "n_cg_iter", "image_lower_iter", "image_cg_iter"):
            setattr(state, key, getattr(state, key) + counts[key])
        z = bh.grad
        gnorm = _norm(z)
        state.x, state.batch, state.grad = bh.x, idx, z
        theta_new = None
        if math.isfinite(gnorm) and bh.status != "nan":
            theta_new = state.theta - alpha * self._direction(state, z)
            if o["project"] is not None:
                theta_new = _st.apply_projection(o["project"], theta_new, state.theta)
            if not bool(state.problem.xp.all(state.problem.xp.isfinite(theta_new))):
                theta_new = None
        row = {"iter": state.k, "epoch": epoch, "n_images": b, "fun_batch": float(bh.fun), "eps": eps,
               "eps_image": eps_img, "delta": delta, "step": alpha, "grad_norm": gnorm, "omega": float(bh.omega),
               "image_lower_iter": state.image_lower_iter, "image_cg_iter": state.image_cg_iter,
               "image_cost": state.image_cost, "n_lower_iter": state.n_lower_iter, "n_cg_iter": state.n_cg_iter,
               "cost": state.n_lower_iter + state.n_cg_iter, "time": state.clock(),
               "n_retries": counts["n_retries"], "n_dropped": counts["n_dropped"],
               "n_uncertified": int(bh.n_uncertified)}
        state.history.append(row)
        if theta_new is None:
            state.status = "nan"
            return row
        state.theta = theta_new
        state.k += 1
        logger.info("isgd step %d (epoch %d): f_batch=%.6g |z|=%.3g eps_image=%.3g step=%.3g image_cost=%d",
                    row["iter"], epoch, row["fun_batch"], gnorm, eps_img, alpha, row["image_cost"])
        if o["eval_every"] and state.sampler.epoch > epoch and state.sampler.epoch % o["eval_every"] == 0:
            self.evaluate(state)
        return row

    def _direction(self, state, z):
        o = state.opts
        if o["optimizer"] == "sgd":
            return z
        b1, b2 = o["adam_betas"]
        if state.adam_m is None:
            state.adam_m = state.problem.xp.zeros_like(z)
            state.adam_v = state.problem.xp.zeros_like(z)
        state.adam_t += 1
        state.adam_m = b1 * state.adam_m + (1.0 - b1) * z
        state.adam_v = b2 * state.adam_v + (1.0 - b2) * (z * z)
        m_hat = state.adam_m / (1.0 - b1 ** state.adam_t)
        v_hat = state.adam_v / (1.0 - b2 ** state.adam_t)
        return m_hat / (state.problem.xp.sqrt(v_hat) + o["adam_eps"])

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, state):
        """Full-objective evaluation at ``state.theta`` (train, and the held-out set if given).

        Every image is solved cold to the per-image accuracy ``eval_tol`` (the
        stack to ``sqrt(N) * eval_tol``); appends a row of
        :data:`ISGD_EVAL_FIELDS` (its cost in ``eval_cost``, apart from
        ``image_cost``) and returns it.
        """
        o = state.opts
        row = {"iter": state.k, "epoch": state.epoch, "image_cost": state.image_cost,
               "fun_full": math.nan, "psnr_full": math.nan, "fun_heldout": math.nan, "psnr_heldout": math.nan}
        cost = 0
        sets = [("full", state.problem, state.upper)]
        if o["eval_set"] != "train":
            sets.append(("heldout", *o["eval_set"]))
        for name, prob, up in sets:
            n_img = int(prob.x_shape[0])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                sol = solve_lower(prob, state.theta, math.sqrt(n_img) * o["eval_tol"], maxiter=o["lower_maxiter"],
                                  backtracking=o["backtracking_lower"])
            cost += (sol.nit + sol.n_hvp) * n_img
            row[f"fun_{name}"] = float(up.value(sol.x))
            if hasattr(up, "psnr"):
                row[f"psnr_{name}"] = float(up.psnr(sol.x))
        state.eval_cost += cost
        row["eval_cost"] = state.eval_cost
        state.evaluations.append(row)
        logger.info("isgd evaluation after %d steps: f_full=%.6g psnr_full=%.3f", state.k, row["fun_full"],
                    row["psnr_full"])
        return row

    # ------------------------------------------------------------------ driver
    def limit_reached(self, state):
        """The status of the first limit reached (maxiter, max_epochs, image_budget, time_limit), or None."""
        o = state.opts
        if state.k >= o["maxiter"]:
            return "maxiter"
        if state.epoch >= o["max_epochs"]:
            return "max_epochs"
        if state.image_cost >= o["image_budget"]:
            return "budget_exhausted"
        if state.clock() >= o["time_limit"]:
            return "time_limit"
        return None

    def run(self, problem, upper, theta0, callback=None, checkpoint=None, resume=None, options=None):
        """Run to a stopping rule; returns a :class:`~varlearn.bilevel.BilevelResult`.

        ``checkpoint``: a path rewritten atomically every ``checkpoint_every``
        steps and at the end (:mod:`varlearn.bilevel.checkpoint`).  ``resume``:
        a checkpoint of an ISGD run on the same data (its fingerprint must
        match, else :class:`~varlearn.bilevel.checkpoint.CheckpointError`); its
        saved options are used, updated by this solver's and ``options``.  A
        resumed run draws the same batches and, with the saved warm starts (and
        a deterministic executor), gives bit for bit the θ of an uninterrupted
        run.  ``callback(intermediate_result)`` after every step gets a
        :class:`~varlearn.results.Result` with ``theta``, ``fun`` (the batch
        loss), ``nit``, ``epoch``, ``row`` and ``history``; raising
        ``StopIteration`` stops the run.
        """
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        if resume is not None:
            meta, arrays = _st.read_checkpoint(resume)
            state = self.init_state(problem, upper, theta0, options={**_st.saved_options(meta),
                                                                      **self.options, **(options or {})})
            _st.restore(state, meta, arrays, resume)
            logger.info("resumed isgd run from %s at step %d (epoch %d)", resume, state.k, state.epoch)
        else:
            state = self.init_state(problem, upper, theta0, options=options)
            if state.opts["eval_every"]:
                self.evaluate(state)
        every = state.opts["checkpoint_every"]
        while state.status is None:
            status = self.limit_reached(state)
            if status is not None:
                state.status = status
                break
            row = self.update(state)
            if state.status is not None:
                break
            if checkpoint is not None and state.k % every == 0:
                state.sync_clock()
                _st.save(state, checkpoint)
            if callback is not None:
                try:
                    callback(Result(theta=state.theta, fun=row["fun_batch"], nit=state.k, epoch=state.epoch,
                                    row=dict(row), history=[dict(h) for h in state.history]))
                except StopIteration:
                    state.status = "callback_stop"
        state.sync_clock()
        if checkpoint is not None:
            _st.save(state, checkpoint)
        return self.result(state)

    def result(self, state):
        """The :class:`~varlearn.bilevel.BilevelResult` of a (finished) state."""
        from .minimize import BilevelResult

        last = state.history[-1] if state.history else {}
        fun = state.evaluations[-1]["fun_full"] if state.evaluations else last.get("fun_batch", math.nan)
        return BilevelResult(
            theta=state.theta, fun=fun, fun_batch=last.get("fun_batch", math.nan), x=state.x, batch=state.batch,
            nit=state.k, epoch=state.epoch, status=state.status, message=_MESSAGES.get(state.status, ""),
            success=False, n_lower_iter=state.n_lower_iter, n_cg_iter=state.n_cg_iter,
            image_lower_iter=state.image_lower_iter, image_cg_iter=state.image_cg_iter,
            image_cost=state.image_cost, eval_cost=state.eval_cost, wall_time=state.elapsed,
            history=state.history, evaluations=state.evaluations, method="isgd", options=state.opts,
        )


def _norm(z):
    from ..linalg import norm

    return float(norm(z))
