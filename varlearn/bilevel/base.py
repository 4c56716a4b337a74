r"""``BilevelSolver``: the base class of the upper-level solvers (``init_state`` / ``update`` / ``run``).

A solver object holds validated options; all the run's data lives in a
:class:`~varlearn.bilevel.state.BilevelState`.  After jaxopt's
``IterativeSolver`` and SciPy's conventions (``docs/developer.md``)::

    solver = MAID(maxiter=50, eps0=1e-2)
    state = solver.init_state(problem, upper, theta0)
    while state.status is None:
        state = solver.update(state)          # one outer iteration, one history row
    result = solver.result(state)             # == solver.run(problem, upper, theta0)

Writing a solver
----------------
A subclass sets :attr:`BilevelSolver.method` (its name for
:func:`~varlearn.minimize_bilevel`) and implements :meth:`BilevelSolver._iterate`
(one outer iteration on the state; it appends the history row with
:meth:`_row` and raises :class:`StopRun` to stop with a status).  It may
override :meth:`resolve_options` (its own option table), :meth:`init_state`
(extra state fields), :meth:`checkpoint_payload` / :meth:`restore_payload`
(extra checkpoint fields) and :meth:`result`.  The helpers :meth:`_solve`,
:meth:`_hypergrad` and :meth:`_bounds` count every lower-level and CG
iteration in the state.
"""
from __future__ import annotations

import abc
import logging
import math
import time
import warnings

import numpy as np

from .._validation import check_theta
from ..hypergradient import BoundEstimator, hypergradient
from ..linalg import norm as _lnorm
from ..problems.separable import is_separable
from ..results import STATUS_MESSAGES, ConvergenceWarning, Result
from ..solvers import solve_lower
from ._payload import restore_state, state_payload
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .history import BilevelResult
from .options import rename_options, resolve_options
from .state import BilevelState

logger = logging.getLogger("varlearn")

__all__ = ["BilevelSolver", "StopRun"]


class StopRun(Exception):
    """Raised inside an outer iteration to stop the run with ``status`` (caught by ``update``)."""

    def __init__(self, status):
        super().__init__(status)
        self.status = status


def _executor_spec(problem, upper):
    """The task description of ``problem`` and ``upper`` for the option ``executor`` (NumPy denoising only)."""
    from ..executors import DenoisingDataset  # noqa: PLC0415

    if problem.xp is not np:
        raise ValueError("option 'executor' needs a problem on NumPy (the tasks run on host arrays), got one on "
                         f"{problem.xp.__name__}")
    try:
        return DenoisingDataset.from_problem(problem, upper)
    except TypeError as exc:
        raise ValueError(f"option 'executor' needs a DenoisingProblem with a SquaredError loss: {exc}") from None


class BilevelSolver(abc.ABC):
    """Base class of the upper-level solvers :class:`MAID`, :class:`FixedAccuracy`, :class:`HOAG`.

    Parameters
    ----------
    **options
        The method's options (:data:`varlearn.bilevel.options.DEFAULTS`),
        validated by name at once: an unknown name or a bad value raises
        ``ValueError`` naming it; a deprecated name (``max_iter``) warns
        (:class:`DeprecationWarning`) and works.

    Attributes
    ----------
    method : str
        The solver's name in :func:`~varlearn.minimize_bilevel`.
    options : dict
        The validated options (defaults filled in).
    given_options : dict
        The options as given (renamed), which a resumed run lays over the
        checkpoint's saved options.

    Notes
    -----
    Stopping rules and statuses: :func:`~varlearn.minimize_bilevel` and
    ``docs/developer.md`` §1.3.  Before each outer iteration :meth:`update`
    checks the limits ``maxiter`` (outer iterations), ``budget`` (``cost``),
    ``image_budget`` (``image_cost``) and ``time_limit`` (seconds).

    References
    ----------
    M. Blondel et al., "Efficient and modular implicit differentiation",
    NeurIPS 2022 (jaxopt: solver objects with ``init_state`` / ``update`` / ``run``).
    """

    #: name of the method (``minimize_bilevel(..., method=...)``)
    method = None

    def __init__(self, **options):
        self.given_options = rename_options(options, stacklevel=3)
        self.options = self.resolve_options(self.given_options)

    @classmethod
    def resolve_options(cls, options):
        """The validated options of this method: ``options`` over the defaults (no deprecated names)."""
        return resolve_options(cls.method, options)

    def __repr__(self):
        return f"{type(self).__name__}(**{self.given_options!r})"

    # ----------------------------------------------------------------- protocol
    def init_state(self, problem, upper, theta0, *, options=None):
        """A fresh :class:`~varlearn.bilevel.state.BilevelState` at ``theta0`` (no solve yet).

        ``theta0`` is validated (1-D of length ``problem.n_params``, finite, the
        problem's array namespace) and copied as float64.  ``options`` (already
        validated) replaces the solver's options for this run (used by resume).
        """
        opts = self.options if options is None else options
        theta0 = check_theta(theta0, problem.n_params, xp=problem.xp, name="theta0")
        theta = theta0.astype(np.float64) if theta0.dtype != np.float64 else theta0
        n_images = int(problem.n_samples) if is_separable(problem) else None
        if n_images is None and math.isfinite(opts.get("image_budget", math.inf)):
            raise ValueError(f"option 'image_budget' needs a separable problem (image units, docs/developer.md "
                             f"§1.4); {type(problem).__name__} is not separable, got "
                             f"image_budget={opts['image_budget']!r}")
        state = BilevelState(problem, upper, theta.copy(), self.method, opts, BoundEstimator(seed=opts["seed"]),
                             n_images=n_images)
        if state.executor is not None:
            state.spec = _executor_spec(problem, upper)
        return state

    def update(self, state):
        """One outer iteration: advances ``state`` in place (one history row) and returns it.

        First checks the limits (``maxiter``, ``budget``, ``image_budget``,
        ``time_limit``); a limit reached, or a stopping rule met inside the
        iteration, sets ``state.status`` instead (an iteration that stops adds
        no row, except row 0 on the first).  A stopped state is returned as is.
        """
        if state.status is not None:
            return state
        try:
            self._check_limits(state, outer=True)
            row = self._iterate(state)
        except StopRun as stop:
            state.status = stop.status
            state.close_segment()  # the run's seconds end here
            return state
        logger.info("%s it %d: f=%.6g eps=%.3g delta=%.3g step=%.3g accepted=%s cost=%d", self.method,
                    row["iter"], row["fun"], row["eps"], row["delta"], row["step"], row["accepted"], row["cost"])
        return state

    @abc.abstractmethod
    def _iterate(self, state):
        """One outer iteration on ``state``; returns the history row it appended; raises :class:`StopRun`."""

    def run(self, problem, upper, theta0, callback=None, checkpoint=None, resume=None):
        """Run from ``theta0`` (or from the checkpoint ``resume``) until a stopping rule; a :class:`BilevelResult`.

        Parameters
        ----------
        problem, upper, theta0 :
            As for :func:`~varlearn.minimize_bilevel`.
        callback : callable, optional
            ``callback(intermediate_result)`` after every outer iteration, with
            a :class:`~varlearn.results.Result` holding ``theta``, ``fun``,
            ``nit``, ``row`` (the last history row), ``x``, ``history`` (a
            copy of the rows) and ``state`` (the live state: read only).
            ``StopIteration`` stops the run (status ``"callback_stop"``).
        checkpoint : path, optional
            Saved after an outer iteration ``k`` with ``k % checkpoint_every
            == 0`` when at least ``checkpoint_interval`` seconds passed since
            the previous save (the first such iteration always), and at the end.
        resume : path, optional
            A checkpoint of the same method to continue from: its saved
            options, updated by this solver's :attr:`given_options`, are used.
        """
        opts = loaded = None
        if resume is not None:
            loaded = load_checkpoint(resume)
            self._check_method(loaded[0], resume)
            opts = self.resolve_options({**rename_options(loaded[0].get("options", {}), warn=False),
                                         **self.given_options})
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        state = self.init_state(problem, upper, theta0, options=opts)
        if resume is not None:
            self.restore(state, resume, loaded=loaded)
            logger.info("resumed %s run from %s at outer iteration %d", self.method, resume, state.k)
        last_save = -math.inf  # the first eligible iteration is always saved
        while True:
            self.update(state)
            if state.status is not None:
                break
            o = state.options
            if (checkpoint is not None and state.k % o["checkpoint_every"] == 0
                    and time.perf_counter() - last_save >= o["checkpoint_interval"]):
                state.close_segment()
                self.save(state, checkpoint)
                last_save = time.perf_counter()
            if callback is not None:
                try:
                    callback(Result(theta=state.theta, fun=state.history[-1]["fun"], nit=state.k,
                                    row=dict(state.history[-1]), x=state.x_current,
                                    history=[dict(h) for h in state.history], state=state))
                except StopIteration:
                    state.status = "callback_stop"
                    break
        state.close_segment()
        if checkpoint is not None:
            self.save(state, checkpoint)
        return self.result(state)

    def result(self, state):
        """The :class:`BilevelResult` of ``state`` (a stopped state, or a snapshot of a running one)."""
        status = state.status
        opts = state.options
        fun, lo, up = state.last if state.last is not None else (math.nan,) * 3
        stat_bound, certified = state.stationarity if status == "accuracy_floor" else (math.nan, False)
        z0 = state.history[0]["grad_norm"] if state.history else math.nan
        floor_tol = max(opts.get("gtol", 0.0), opts.get("stationarity_rtol", 0.0) * z0)
        small_enough = stat_bound <= floor_tol
        success = status == "gradient_tol" or (status == "accuracy_floor" and certified and small_enough)
        n_accepted = sum(1 for row in state.history if row.get("accepted") is True)
        message = STATUS_MESSAGES[status] if status is not None else "the run has not stopped"
        if status == "accuracy_floor":
            if not certified:
                message += f"; |grad f(theta)| <= {stat_bound:.3e} only by estimated constants (not certified)"
            elif not small_enough:
                message += (f"; |grad f(theta)| <= {stat_bound:.3e} (certified), which is not below "
                            f"max(gtol, stationarity_rtol * |z_0|) = {floor_tol:.3e}")
            else:
                message += f"; |grad f(theta)| <= {stat_bound:.3e} (certified)"
        if n_accepted == 0 and state.k > 0:
            message += f"; no step was accepted in {state.k} outer iterations (theta is theta0)"
        x_final = state.x_current if state.x_current is not None else state.x_warm
        return BilevelResult(
            theta=state.theta, fun=fun, fun_bounds=(lo, up), x=x_final, nit=state.k, status=status,
            message=message, success=success, n_accepted=n_accepted, stationarity_bound=stat_bound,
            n_lower_iter=state.n_lower_iter, n_cg_iter=state.n_cg_iter, image_lower_iter=state.image_lower_iter,
            image_cg_iter=state.image_cg_iter, image_cost=state.image_cost,
            wall_time=state.elapsed if status is not None else state.wall_time,
            history=state.history, method=self.method, options=opts,
        )

    # ----------------------------------------------------------------- limits
    def _check_limits(self, state, outer=False):
        """Raise :class:`StopRun` when a limit is reached (``maxiter`` only between outer iterations)."""
        o = state.options
        if outer and state.k >= o["maxiter"]:
            raise StopRun("maxiter")
        if state.cost >= o["budget"] or state.image_cost >= o.get("image_budget", math.inf):
            raise StopRun("budget_exhausted")
        if state.wall_time >= o["time_limit"]:
            raise StopRun("time_limit")

    # ----------------------------------------------------------------- solves and rows
    @staticmethod
    def _L0(state):
        # backtracking FISTA restarts from 0.8 x the last solve's L (it may shrink a little and
        # doubles when needed) instead of paying a power iteration per solve
        return None if state.L_last is None else 0.8 * state.L_last

    def _solve(self, state, theta, tol, x0):
        """Trial solve at ``theta``; ``None`` when θ is out of the representable range.

        A trial step that overflows the parameters (``exp(θ)`` too large) or leads to
        non-finite iterates is a failed trial, not an error: the caller rejects it.
        """
        o = state.options
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                warnings.simplefilter("ignore", RuntimeWarning)
                if state.executor is None:
                    r = solve_lower(state.problem, theta, tol, x0=x0, maxiter=o["lower_maxiter"],
                                    backtracking=o["backtracking_lower"], L0=self._L0(state))
                else:  # an overflowing task reports status "nan"
                    from ..executors import executor_solve_lower  # noqa: PLC0415

                    r = executor_solve_lower(state.executor, state.spec, theta, tol, x0=x0,
                                             maxiter=o["lower_maxiter"], backtracking=o["backtracking_lower"],
                                             L0=self._L0(state))
        except (OverflowError, FloatingPointError) as exc:
            logger.info("trial point rejected: %s", exc)
            return None
        for w in caught:
            logger.info("lower-level solve: %s", w.message)
        state.add_cost(r.nit + r.n_hvp, image_lower=r.get("image_lower_iter"))
        if r.status == "nan" or not math.isfinite(r.distance_bound):
            logger.info("trial point rejected: the lower-level solve produced non-finite values")
            return None
        state.L_last = r.L
        return r

    def _hypergrad(self, state, eps, delta, bound):
        """The hypergradient at ``state.theta`` to (``eps``, ``delta``), warm-started; costs counted."""
        o = state.options
        q0 = state.q_warm if o["warm_start_cg"] else None
        kw = dict(x0=state.x_warm, q0=q0, bound=bound, estimator=state.estimator, lower_maxiter=o["lower_maxiter"],
                  cg_maxiter=o["cg_maxiter"], backtracking=o["backtracking_lower"], lower_L0=self._L0(state),
                  constants=o.get("bound_constants", "exact"))
        if state.executor is None:
            hg = hypergradient(state.problem, state.upper, state.theta, eps, delta, **kw)
        else:
            from ..executors import executor_hypergradient  # noqa: PLC0415

            hg = executor_hypergradient(state.executor, state.spec, state.theta, eps, delta, **kw)
        state.L_last = hg.lower.L
        state.add_cost(hg.n_lower_iter, hg.n_cg_iter, hg.get("image_lower_iter"), hg.get("image_cg_iter"))
        if o["warm_start_cg"]:
            state.q_warm = hg.q
        return hg

    @staticmethod
    def _bounds(state, x, eps_achieved, value=None, grad_norm=None):
        """(U(x), certified lower bound, certified upper bound) of f at the point solved to ``eps_achieved``.

        ``value`` and ``grad_norm`` (U(x) and ‖∇U(x)‖ when the caller has them) save recomputing them.
        """
        upper = state.upper
        u = float(upper.value(x)) if value is None else float(value)
        gn = _lnorm(upper.grad(x)) if grad_norm is None else float(grad_norm)
        L_U = float(upper.lipschitz())
        quad = 0.5 * L_U * eps_achieved ** 2
        lower = u - gn * eps_achieved - (0.0 if upper.convex else quad)
        upper_bound = u + gn * eps_achieved + quad
        return u, lower, upper_bound

    @staticmethod
    def _row(state, accepted, step, n_bt, omega, gnorm, bound_exact):
        """Append the history row of the current state (columns: :data:`~varlearn.bilevel.HISTORY_FIELDS`)."""
        fun, lo, up = state.last if state.last is not None else (math.nan,) * 3
        r = {"iter": state.k, "fun": fun, "fun_upper": up, "fun_lower": lo, "eps": state.eps,
             "delta": state.delta, "step": step, "n_backtracks": n_bt, "accepted": accepted,
             "omega": omega, "bound_exact": bound_exact, "grad_norm": gnorm,
             "n_lower_iter": state.n_lower_iter, "n_cg_iter": state.n_cg_iter, "cost": state.cost,
             "image_lower_iter": state.image_lower_iter, "image_cg_iter": state.image_cg_iter,
             "image_cost": state.image_cost, "wall_time": state.wall_time}
        state.history.append(r)
        return r

    def _record_start(self, state, hg):
        """Bounds of f at the current point; the history's row 0 on the first hypergradient."""
        state.last = self._bounds(state, hg.x, hg.eps, hg.upper_value, hg.upper_grad_norm)  # U, ‖∇U‖ from hg
        if not state.history:
            state.x_current = hg.x
            self._row(state, None, math.nan, 0, hg.error_bound, hg.grad_norm, hg.bound_exact)

    # ----------------------------------------------------------------- checkpoints
    def _check_method(self, meta, path):
        if meta.get("kind") != "varlearn-bilevel":
            raise CheckpointError(f"checkpoint {str(path)!r} is not a bilevel-run checkpoint")
        if meta.get("method") != self.method:
            raise CheckpointError(f"checkpoint {str(path)!r} is a {meta.get('method')!r} run, not {self.method!r}")

    def checkpoint_payload(self, state):
        """``(meta, arrays)`` of ``state`` for :func:`~varlearn.bilevel.checkpoint.save_checkpoint`.

        The format is that of :mod:`varlearn.bilevel.checkpoint` (metadata
        fields checked by ``validate_bilevel_meta``); a subclass adds its own
        fields to both dicts.
        """
        return state_payload(self.method, state)

    def save(self, state, path):
        """Save ``state`` atomically to the checkpoint ``path`` (call ``state.close_segment()`` first)."""
        meta, arrays = self.checkpoint_payload(state)
        save_checkpoint(path, meta, arrays)

    def restore_payload(self, state, meta, arrays):
        """Load checkpoint ``meta`` and ``arrays`` (already validated) into ``state``; a subclass adds its fields."""
        restore_state(state, meta, arrays)

    def restore(self, state, path, loaded=None):
        """Continue ``state`` from the checkpoint ``path`` (same method, ``n_params`` and ``x_shape``).

        ``loaded``: the ``(meta, arrays)`` of ``path`` when the caller has read it already.
        """
        meta, arrays = load_checkpoint(path) if loaded is None else loaded
        self._check_method(meta, path)
        n_params, x_shape = state.theta.shape[0], tuple(state.problem.x_shape)
        if meta["n_params"] != n_params or tuple(meta["x_shape"]) != x_shape:
            raise CheckpointError(
                f"checkpoint {str(path)!r} was written for n_params={meta['n_params']}, x_shape="
                f"{tuple(meta['x_shape'])}; this problem has n_params={n_params}, x_shape={x_shape}"
            )
        self.restore_payload(state, meta, arrays)
        return meta
