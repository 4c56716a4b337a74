r"""ISGD: inexact stochastic (mini-batch) hypergradient descent for separable bilevel problems.

For a separable problem (:mod:`varlearn.problems.separable`: ``N`` images, the
lower level a sum of per-image objectives ``h_i``, the upper loss
:math:`f(\theta) = \frac1N\sum_i f_i(\theta)`), or a
:class:`~varlearn.executors.DenoisingDataset` over an image collection (with
``upper=None``), each step samples a mini-batch and solves only its images.

Algorithm (step ``k = 0, 1, ...``, counted across epochs)
----------------------------------------------------------
1. :math:`B_k` ← the sampler (``sampling``: shuffled epochs, i.i.d. with
   replacement, or cyclic fixed batches; :mod:`varlearn.bilevel.sampling`),
   ``b = |B_k|`` images, their loss of weight ``w = 1/b``.
2. Accuracies from the schedules (:mod:`varlearn.bilevel.schedules`):
   per image :math:`\epsilon^{img}_k = \max(\text{eps\_min}, \epsilon_0 s_\epsilon(k))` and
   :math:`\delta^{img}_k = \max(\text{eps\_min}, \text{delta\_ratio}\cdot\epsilon^{img}_k)`.
   The batch is certified as a whole (stochastic spec §3): its lower level is
   solved to the distance :math:`\epsilon_k = \sqrt b\,\epsilon^{img}_k` (the stack, or
   chunks whose certificates compose as :math:`\sum_C\epsilon_C^2 \le \epsilon_k^2`), so
   that :math:`\sum_{i\in B}\|\tilde x_i - \hat x_i\|^2 \le b\,(\epsilon^{img}_k)^2`, and CG on
   :math:`H_B q = \nabla U_B(\tilde x)` to the residual :math:`\delta_k = w\sqrt b\,\delta^{img}_k`:
   :math:`\delta^{img}_k` in the quadratic mean for the unweighted per-image systems
   :math:`H_i\bar q_i = \nabla u_i(\tilde x_i)`, :math:`\bar q_i = q_i/w`.  With
   ``accuracy="bound"`` both are then halved until the error bound certifies
   the batch direction, :math:`\omega_B \le (1-\eta)\|z_B\|`, or the per-image ε
   would go below ``eps_min``.
3. :math:`z_k = -J_B(\tilde x)^T q`, an estimate of :math:`\nabla f(\theta_k)`, computed by
   the executor (``executor="serial"``: varlearn's
   :class:`~varlearn.executors.SerialExecutor`; ``"dask"``:
   :class:`~varlearn.executors.DaskExecutor`; or an executor object) or, with
   ``"inprocess"`` (and for problems an executor cannot describe: other
   separable problems, data on a GPU), by
   :func:`~varlearn.hypergradient.hypergradient` on ``problem.subset(B_k)``.
   ``bound=True`` also computes its error bound ω (a diagnostic only).
4. :math:`d_k = z_k` (``"sgd"``) or the Adam direction
   :math:`\hat m_k/(\sqrt{\hat v_k}+\epsilon_A)` (``"adam"``, bias-corrected moments, betas
   ``adam_betas``; Kingma & Ba 2015); :math:`\theta_{k+1} = P(\theta_k - \alpha_k d_k)`
   with :math:`\alpha_k = \alpha_0 s_\alpha(k)` and ``P`` the optional ``project``.

There is no line search and no acceptance test: step and accuracy are
a-priori schedules.  Warm starts (``warm_start``: ``"auto"`` = ``"driver"``
when the executor is serial or N·H·W·4 bytes fit in ``warm_start_max_bytes``):
each image keeps the lower-level solution and the unweighted adjoint
:math:`\bar q_i` of its last solve, in float32, in an LRU store of at most
``warm_start_max_bytes``; they change the cost, never the certificates.

Stopping rules (checked before each step; every one is a limit, so
``success`` is always False: ISGD certifies no stationarity)
------------------------------------------------------------------------
``"maxiter"`` (``k >= maxiter`` steps, or ``max_epochs`` completed epochs;
the message says which), ``"budget_exhausted"`` (image-iterations, lower +
CG, ``>= image_budget``, or stacked iterations ``>= budget``; checked between
steps, so the last step may overshoot by one step's cost), ``"time_limit"``,
``"callback_stop"`` (the callback raised ``StopIteration``), and ``"nan"`` (a
batch solve or the new θ is not finite; θ is the last finite one).

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
from ..linalg import norm as _lnorm
from ..results import STATUS_MESSAGES, ConvergenceWarning, Result
from . import _isgd_state as _st
from .base import BilevelSolver, StopRun
from .history import BilevelResult
from .isgd_options import resolve_isgd_options
from .sampling import Sampler
from .schedules import Schedule
from .state import BilevelState

logger = logging.getLogger("varlearn")

__all__ = ["ISGD", "ISGDState", "ISGD_HISTORY_FIELDS", "ISGD_EVAL_FIELDS"]

#: columns of an ISGD history row (one per mini-batch step)
ISGD_HISTORY_FIELDS = (
    "iter", "epoch", "n_images", "fun_batch", "eps", "eps_image", "delta", "step", "grad_norm", "omega",
    "bound_exact", "n_lower_iter", "n_cg_iter", "cost", "image_lower_iter", "image_cg_iter", "image_cost",
    "wall_time", "n_retries", "n_dropped", "n_uncertified",
)
#: columns of an evaluation row (``eval_every`` epochs; its cost is not in ``image_cost``)
ISGD_EVAL_FIELDS = ("iter", "epoch", "image_cost", "fun_full", "psnr_full", "fun_heldout", "psnr_heldout",
                    "eval_cost")


class ISGDState(BilevelState):
    """The public state of an :class:`ISGD` run (advanced in place by :meth:`ISGD.update`).

    Attributes (besides those of :class:`~varlearn.bilevel.state.BilevelState`
    that apply): ``theta`` (float64, the problem's namespace), ``k`` (steps
    done), ``epoch`` (completed epochs), ``history`` (rows of
    :data:`ISGD_HISTORY_FIELDS`), ``evaluations`` (rows of
    :data:`ISGD_EVAL_FIELDS`), ``status`` (None while running), the counters
    ``n_lower_iter``, ``n_cg_iter`` (stacked), ``image_lower_iter``,
    ``image_cg_iter`` (image units, summed per step), ``eval_cost``;
    ``sampler``, ``step_schedule``, ``eps_schedule``, ``adam_m``, ``adam_v``,
    ``adam_t``, ``warm`` (the warm-start store or None), ``estimator``,
    ``constants`` (the executor's running estimates), ``L_last``,
    ``fingerprint`` (of the data), ``spec`` and ``executor`` (None on the
    in-process path), ``batch`` (the last batch's indices), ``grad`` (its
    hypergradient z) and ``x`` (its lower-level iterate, in-process path only).

    :meth:`ISGD.run` closes the executor it made; a caller driving
    :meth:`ISGD.init_state` / :meth:`ISGD.update` itself closes it with
    ``state.executor.close()`` when ``state.owns_executor`` (a Dask cluster).
    """

    def __init__(self, problem, upper, theta, options, n_samples, x_shape, xp, dtype):
        self.problem, self.upper, self.method, self.options = problem, upper, "isgd", options
        self.xp, self.theta, self.k, self.status = xp, theta, 0, None
        self.n_samples, self.x_shape, self.dtype = n_samples, tuple(x_shape), np.dtype(dtype)
        self.history, self.evaluations = [], []
        self.n_lower_iter = self.n_cg_iter = 0
        self.image_lower_iter = self.image_cg_iter = self.eval_cost = 0
        self.n_images = n_samples
        self.elapsed, self.t_start = 0.0, time.perf_counter()
        self.eps = self.delta = self.step = None
        self.x_warm = self.q_warm = self.x_current = None
        self.estimator = BoundEstimator(seed=options["seed"])
        self.last, self.L_last, self.stationarity = None, None, (math.nan, False)
        self.adam_m = self.adam_v = None
        self.adam_t = 0
        self.constants = None
        self.batch = self.grad = None
        self.sampler = Sampler(n_samples, options["batch_size"], options["sampling"], options["seed"])
        self.step_schedule = Schedule(options["step_schedule"], options["step0"], options["q"], "step_schedule")
        self.eps_schedule = Schedule(options["eps_schedule"], options["eps0"], options["p"], "eps_schedule")
        self.warm = self.spec = self.executor = None
        self.owns_executor = False
        self.fingerprint = None

    @property
    def epoch(self):
        """Completed epochs (passes over the data)."""
        return self.sampler.epoch

    @property
    def x(self):
        return self.x_current


class ISGD(BilevelSolver):
    """Inexact stochastic gradient descent on mini-batches (see the module docstring).

    Parameters
    ----------
    **options
        Validated by name (:func:`~varlearn.bilevel.isgd_options.resolve_isgd_options`,
        defaults :data:`~varlearn.bilevel.isgd_options.ISGD_DEFAULTS`); those
        that depend on the data (``batch_size <= N``, the default ``eps0``, at
        least one limit) are checked by :meth:`init_state`.

    Examples
    --------
    >>> solver = ISGD(batch_size=4, maxiter=100, optimizer="adam")        # doctest: +SKIP
    >>> result = solver.run(problem, SquaredError(clean), theta0)         # doctest: +SKIP
    """

    method = "isgd"

    @classmethod
    def resolve_options(cls, options):
        return resolve_isgd_options(options, check_limits=False)

    # ------------------------------------------------------------------ setup
    def init_state(self, problem, upper, theta0, *, options=None):
        """A fresh :class:`ISGDState` at ``theta0`` (options checked against the data; no solve yet)."""
        n, x_shape, xp, dtype = _st.describe_data(problem, upper)
        given = self.given_options if options is None else options
        opts = resolve_isgd_options(given, n_samples=n, image_shape=x_shape[-2:])
        theta = check_theta(theta0, problem.n_params, xp=xp, name="theta0").astype(np.float64, copy=True)
        state = ISGDState(problem, upper, theta, opts, n, x_shape, xp, dtype)
        state.spec, state.executor, state.owns_executor = _st.make_executor(opts, problem, upper)
        capacity = _st.warm_capacity(n, x_shape, opts, state.executor)
        state.warm = _st.WarmStore(capacity) if capacity > 0 else None
        state.fingerprint = _st.data_fingerprint(problem, upper)
        return state

    # ------------------------------------------------------------------ one step
    @staticmethod
    def accuracies(state, b):
        """``(eps_image, delta_image, eps, delta)`` of step ``state.k`` for a batch of ``b`` images (weight 1/b)."""
        o = state.options
        eps_img = max(o["eps_min"], state.eps_schedule(state.k))
        delta_img = max(o["eps_min"], o["delta_ratio"] * eps_img)
        return eps_img, delta_img, math.sqrt(b) * eps_img, delta_img / math.sqrt(b)

    def _batch_hypergradient(self, state, idx, epoch, eps, delta, bound):
        """The batch's hypergradient at (ε, δ): through the executor, or in process on the subsets."""
        L0 = None if state.L_last is None else 0.8 * state.L_last
        if state.executor is not None:
            return _st.executor_hypergradient(state, idx, epoch, eps, delta, bound, L0)
        o = state.options
        sub_p, sub_u = _st.batch_problems(state, idx, epoch)
        w = float(sub_u.sample_weight)
        x0, q0 = state.warm.fill(idx, sub_p, w) if state.warm is not None else (None, None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # reported through the status
            hg = hypergradient(sub_p, sub_u, state.theta, eps, delta, x0=x0, q0=q0, bound=bound,
                               estimator=state.estimator, lower_maxiter=o["lower_maxiter"],
                               cg_maxiter=o["cg_maxiter"], backtracking=o["backtracking_lower"], lower_L0=L0)
        b = len(idx)
        if hg.status != "nan":
            state.L_last = hg.lower.L
            if state.warm is not None:
                state.warm.put(idx, hg.x, hg.q, w)
        return Result(grad=hg.grad, omega=hg.error_bound, fun=hg.upper_value, bound_exact=hg.bound_exact,
                      n_lower_iter=hg.n_lower_iter, n_cg_iter=hg.n_cg_iter, image_lower_iter=hg.n_lower_iter * b,
                      image_cg_iter=hg.n_cg_iter * b, n_retries=0, n_dropped=0,
                      n_uncertified=0 if hg.success else b, status=hg.status, x=hg.x)

    def update(self, state):
        """One mini-batch step (one history row), after checking the limits; returns ``state``.

        A limit reached sets ``state.status`` (no row); a non-finite batch
        hypergradient or θ sets ``"nan"`` (its row is kept, θ is not changed).
        """
        if state.status is not None:
            return state
        status = self.limit_reached(state)
        if status is not None:
            state.status = status
            state.close_segment()
            return state
        try:
            self._iterate(state)
        except StopRun as stop:
            state.status = stop.status
            state.close_segment()
        return state

    def _iterate(self, state):
        o = state.options
        idx, epoch = state.sampler.next()
        b = len(idx)
        eps_img, delta_img, eps, delta = self.accuracies(state, b)
        alpha = state.step_schedule(state.k)
        counts = dict.fromkeys(("n_lower_iter", "n_cg_iter", "image_lower_iter", "image_cg_iter", "n_retries",
                                "n_dropped"), 0)
        while True:
            bh = self._batch_hypergradient(state, idx, epoch, eps, delta, o["bound"] or o["accuracy"] == "bound")
            for key in counts:
                counts[key] += int(bh[key])
            gnorm = float(_lnorm(bh.grad))
            if (o["accuracy"] != "bound" or bh.status == "nan" or bh.omega <= (1.0 - o["eta"]) * gnorm
                    or 0.5 * eps_img < o["eps_min"]):
                break
            eps_img, delta_img, eps, delta = 0.5 * eps_img, 0.5 * delta_img, 0.5 * eps, 0.5 * delta
        for key in ("n_lower_iter", "n_cg_iter", "image_lower_iter", "image_cg_iter"):
            setattr(state, key, getattr(state, key) + counts[key])
        state.batch, state.grad, state.x_current = idx, bh.grad, bh.get("x")
        state.eps, state.delta, state.step = eps, delta, alpha
        theta_new = None
        if math.isfinite(gnorm) and bh.status != "nan":
            theta_new = state.theta - alpha * self._direction(state, bh.grad)
            if o["project"] is not None:
                theta_new = _st.apply_projection(o["project"], theta_new, state.theta)
            if not math.isfinite(float(_lnorm(theta_new))):
                theta_new = None
        row = {"iter": state.k, "epoch": epoch, "n_images": b, "fun_batch": float(bh.fun), "eps": eps,
               "eps_image": eps_img, "delta": delta, "step": alpha, "grad_norm": gnorm, "omega": float(bh.omega),
               "bound_exact": bh.bound_exact, "n_lower_iter": state.n_lower_iter, "n_cg_iter": state.n_cg_iter,
               "cost": state.cost, "image_lower_iter": state.image_lower_iter, "image_cg_iter": state.image_cg_iter,
               "image_cost": state.image_cost, "wall_time": state.wall_time, "n_retries": counts["n_retries"],
               "n_dropped": counts["n_dropped"], "n_uncertified": int(bh.n_uncertified)}
        state.history.append(row)
        if theta_new is None:
            raise StopRun("nan")
        state.theta = theta_new
        state.k += 1
        logger.info("isgd step %d (epoch %d): f_batch=%.6g |z|=%.3g eps_image=%.3g step=%.3g image_cost=%d",
                    row["iter"], epoch, row["fun_batch"], gnorm, eps_img, alpha, row["image_cost"])
        if o["eval_every"] and state.epoch > epoch and state.epoch % o["eval_every"] == 0:
            self.evaluate(state)
        return row

    @staticmethod
    def _direction(state, z):
        """The step direction of ``z``: ``z`` itself (sgd), or Adam's (updates the moments in ``state``)."""
        o = state.options
        if o["optimizer"] == "sgd":
            return z
        b1, b2 = o["adam_betas"]
        if state.adam_m is None:
            state.adam_m, state.adam_v = state.xp.zeros_like(z), state.xp.zeros_like(z)
        state.adam_t += 1
        state.adam_m = b1 * state.adam_m + (1.0 - b1) * z
        state.adam_v = b2 * state.adam_v + (1.0 - b2) * (z * z)
        m_hat = state.adam_m / (1.0 - b1 ** state.adam_t)
        v_hat = state.adam_v / (1.0 - b2 ** state.adam_t)
        return m_hat / (state.xp.sqrt(v_hat) + o["adam_eps"])

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, state):
        """Full-objective evaluation at ``state.theta`` (train, and the held-out set if given).

        Every image is solved cold to the per-image accuracy ``eval_tol``
        (the stack to ``sqrt(N) * eval_tol``); appends a row of
        :data:`ISGD_EVAL_FIELDS` (its cost in ``eval_cost``, apart from
        ``image_cost``) and returns it.  Data given as a ``DenoisingDataset``
        (train or held out, with ``upper=None``) is solved through the executor's
        ``trial`` and its PSNR computed from the clean images read back a
        batch at a time.
        """
        o = state.options
        row = {"iter": state.k, "epoch": state.epoch, "image_cost": state.image_cost,
               "fun_full": math.nan, "psnr_full": math.nan, "fun_heldout": math.nan, "psnr_heldout": math.nan}
        sets = [("full", state.problem, state.upper)]
        if o["eval_set"] != "train":
            sets.append(("heldout", *o["eval_set"]))
        for name, prob, up in sets:
            fun, psnr, cost = _st.evaluate_set(state, prob, up, o["eval_tol"])
            row[f"fun_{name}"], row[f"psnr_{name}"] = fun, psnr
            state.eval_cost += cost
        row["eval_cost"] = state.eval_cost
        state.evaluations.append(row)
        logger.info("isgd evaluation after %d steps: f_full=%.6g psnr_full=%.3f", state.k, row["fun_full"],
                    row["psnr_full"])
        return row

    # ------------------------------------------------------------------ driver
    @staticmethod
    def limit_reached(state):
        """The status of the first limit reached (``maxiter``, ``max_epochs``, ``image_budget``,
        ``budget``, ``time_limit``), or None."""
        o = state.options
        if state.k >= o["maxiter"] or state.epoch >= o["max_epochs"]:
            return "maxiter"
        if state.image_cost >= o["image_budget"] or state.cost >= o["budget"]:
            return "budget_exhausted"
        if state.wall_time >= o["time_limit"]:
            return "time_limit"
        return None

    def run(self, problem, upper, theta0, callback=None, checkpoint=None, resume=None):
        """Run to a stopping rule; returns a :class:`~varlearn.bilevel.history.BilevelResult`.

        ``checkpoint``: a path rewritten atomically every ``checkpoint_every``
        steps and at the end (format: :mod:`varlearn.bilevel._isgd_state`).
        ``resume``: a checkpoint of an ISGD run on the same data (its
        fingerprint must match, else
        :class:`~varlearn.bilevel.checkpoint.CheckpointError`); its saved
        options are used, updated by this solver's.  A resumed run draws the
        same batches and, with the saved warm starts and a deterministic
        executor, gives bit for bit the θ of an uninterrupted run.
        ``callback(intermediate_result)`` after every step gets a
        :class:`~varlearn.results.Result` with ``theta``, ``fun`` (the batch
        loss), ``nit``, ``epoch``, ``row``, ``x``, ``history`` and ``state``;
        raising ``StopIteration`` stops the run (``"callback_stop"``).
        """
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        if resume is not None:
            meta, arrays = _st.read_checkpoint(resume)
            state = self.init_state(problem, upper, theta0, options={**_st.saved_options(meta), **self.given_options})
            _st.restore(state, meta, arrays, resume)
            logger.info("resumed isgd run from %s at step %d (epoch %d)", resume, state.k, state.epoch)
        else:
            state = self.init_state(problem, upper, theta0)
            if state.options["eval_every"]:
                self.evaluate(state)
        try:
            while True:
                self.update(state)
                if state.status is not None:
                    break
                if checkpoint is not None and state.k % state.options["checkpoint_every"] == 0:
                    state.close_segment()
                    _st.save(state, checkpoint)
                if callback is not None:
                    try:
                        callback(Result(theta=state.theta, fun=state.history[-1]["fun_batch"], nit=state.k,
                                        epoch=state.epoch, row=dict(state.history[-1]), x=state.x_current,
                                        history=[dict(h) for h in state.history], state=state))
                    except StopIteration:
                        state.status = "callback_stop"
                        break
        finally:
            if state.owns_executor:
                state.executor.close()
        state.close_segment()
        if checkpoint is not None:
            _st.save(state, checkpoint)
        return self.result(state)

    def result(self, state):
        """The :class:`~varlearn.bilevel.history.BilevelResult` of ``state``.

        ``fun`` is the last evaluation's ``fun_full`` when there is one, else
        the last batch loss ``fun_batch``; ``success`` is always False.
        """
        last = state.history[-1] if state.history else {}
        fun = state.evaluations[-1]["fun_full"] if state.evaluations else last.get("fun_batch", math.nan)
        o = state.options
        message = STATUS_MESSAGES.get(state.status, "the run has not stopped")
        if state.status == "maxiter":
            message = (f"the limit of {state.k} mini-batch steps (maxiter)" if state.k >= o["maxiter"] else
                       f"the limit of {state.epoch} epochs (max_epochs)") + " was reached"
        return BilevelResult(
            theta=state.theta, fun=fun, fun_batch=last.get("fun_batch", math.nan), x=state.x_current,
            batch=state.batch, nit=state.k, epoch=state.epoch, status=state.status, message=message,
            success=False, n_lower_iter=state.n_lower_iter, n_cg_iter=state.n_cg_iter,
            image_lower_iter=state.image_lower_iter, image_cg_iter=state.image_cg_iter,
            image_cost=state.image_cost, eval_cost=state.eval_cost,
            wall_time=state.elapsed if state.status is not None else state.wall_time,
            history=state.history, evaluations=state.evaluations, method="isgd", options=o,
        )

    def save(self, state, path):
        """Save ``state`` atomically to the checkpoint ``path``."""
        _st.save(state, path)

    def restore(self, state, path, loaded=None):
        """Continue ``state`` from the checkpoint ``path`` (an ISGD run on the same data)."""
        meta, arrays = _st.read_checkpoint(path) if loaded is None else loaded
        _st.restore(state, meta, arrays, path)
        return meta
