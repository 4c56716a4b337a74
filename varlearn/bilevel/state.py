"""The public state of a bilevel run (:class:`BilevelState`)."""
from __future__ import annotations

import math
import time

__all__ = ["BilevelState"]


class BilevelState:
    """Everything one bilevel run knows between two outer iterations.

    Made by :meth:`~varlearn.bilevel.BilevelSolver.init_state` and advanced in
    place by :meth:`~varlearn.bilevel.BilevelSolver.update` (which returns it);
    everything needed to resume a run is saved in its checkpoint.  The
    attributes are public: read them freely (e.g. in a callback); change them
    only if you know what the solver expects, since the certificates rely on
    them.

    Attributes
    ----------
    problem, upper :
        The lower-level problem and the upper loss.
    method : str
        The solver's name (``"maid"``, ``"fixed"``, ``"hoag"``, ...).
    options : dict
        The validated options (:mod:`varlearn.bilevel.options`).
    xp : module
        The array namespace of the problem.
    theta : array of shape (n_params,)
        The current hyperparameters (float64, on the problem's device).
    k : int
        Outer iterations done.
    status : str or None
        ``None`` while the run goes on; the stopping status (a key of
        :data:`varlearn.results.STATUS_MESSAGES`) once it stopped.
        :meth:`~varlearn.bilevel.BilevelSolver.update` does nothing on a
        stopped state.
    history : list of dict
        One row per outer iteration (row 0: the start), with the columns of
        :data:`varlearn.bilevel.HISTORY_FIELDS`.
    eps, delta : float or None
        Current lower-level distance accuracy ε and CG residual tolerance δ.
    step : float or None
        Current step size α (HOAG: the last step 1/L; None before the first).
    n_lower_iter, n_cg_iter : int
        Cumulative lower-level iterations and CG products (stacked units:
        one iteration over the whole batch counts 1).
    cost : int
        ``n_lower_iter + n_cg_iter`` (read only).
    image_lower_iter, image_cg_iter : int or float
        The same counters in image units (one iteration on one image = 1): an
        in-process solve of the stacked problem adds ``nit × n_images``, a
        solve on an executor the image-iterations its tasks report; NaN for a
        non-separable problem (``docs/developer.md`` §1.4).
    image_cost : int or float
        ``image_lower_iter + image_cg_iter`` (read only).
    n_images : int or None
        Samples per batched solve for the image-cost counters
        (``problem.n_samples`` of a separable problem); ``None`` for a
        non-separable problem, whose image counters are NaN.
    elapsed : float
        Seconds of the run before the current segment (a resumed run starts
        with the saved seconds).
    t_start : float
        ``time.perf_counter()`` at the start of the current segment.
    wall_time : float
        Seconds of the run so far, ``elapsed`` plus the current segment (read only).
    x_warm, q_warm : array or None
        Warm starts of the next lower-level solve and of the next CG solve.
    x_current : array or None
        The lower-level iterate of the current θ (the result's ``x``).
    estimator : BoundEstimator
        State of the estimated bound constants (``bound_constants="estimate"``).
    last : tuple of 3 floats or None
        ``(U(x), certified lower bound, certified upper bound)`` of f at θ.
    L_last : float or None
        Final FISTA step constant of the latest solve (warm start of the next).
    stationarity : tuple (float, bool)
        At an ``accuracy_floor``: (bound on ‖∇f(θ)‖, whether it is certified).
    executor : object or None
        The executor of the option ``executor`` (None: solves in this process).
    spec : DenoisingDataset or None
        The task description the executor solves (``DenoisingDataset.from_problem``).
    L_hoag, eps_scale, eps_prev :
        HOAG's step constant L (step 1/L), the factor of its tolerance
        schedule (halved on a rejected step) and the previous tolerance.
    """

    def __init__(self, problem, upper, theta, method, options, estimator, n_images=None):
        self.problem = problem
        self.upper = upper
        self.method = method
        self.options = options
        self.xp = problem.xp
        self.theta = theta
        self.k = 0
        self.status = None
        self.history = []
        self.eps = options.get("eps0")
        self.delta = options.get("delta0", options.get("eps0"))
        self.step = options.get("step0")
        self.n_lower_iter = 0
        self.n_cg_iter = 0
        self.n_images = n_images
        self.image_lower_iter = self.image_cg_iter = 0 if n_images is not None else math.nan
        self.executor = options.get("executor")
        self.spec = None
        self.elapsed = 0.0
        self.t_start = time.perf_counter()
        self.x_warm = None
        self.q_warm = None
        self.x_current = None
        self.estimator = estimator
        self.last = None
        self.L_last = None
        self.stationarity = (math.nan, False)
        self.L_hoag = None if options.get("step0") is None else 1.0 / options["step0"]
        self.eps_scale = 1.0
        self.eps_prev = None

    # ----------------------------------------------------------------- counters
    @property
    def cost(self):
        """``n_lower_iter + n_cg_iter`` (stacked units)."""
        return self.n_lower_iter + self.n_cg_iter

    def add_cost(self, n_lower=0, n_cg=0, image_lower=None, image_cg=None):
        """Count ``n_lower`` lower-level iterations and ``n_cg`` CG products (stacked units).

        ``image_lower`` / ``image_cg``: the same in image units when the solver
        reported them (an executor); by default ``n × n_images`` (NaN if not separable).
        """
        self.n_lower_iter += n_lower
        self.n_cg_iter += n_cg
        scale = math.nan if self.n_images is None else self.n_images
        self.image_lower_iter += n_lower * scale if image_lower is None else image_lower
        self.image_cg_iter += n_cg * scale if image_cg is None else image_cg

    @property
    def image_cost(self):
        """``image_lower_iter + image_cg_iter``."""
        return self.image_lower_iter + self.image_cg_iter

    @property
    def wall_time(self):
        """Seconds of the run so far (``elapsed`` plus the current segment)."""
        return self.elapsed + (time.perf_counter() - self.t_start)

    def close_segment(self):
        """Fold the current segment's seconds into ``elapsed`` and start a new segment (before a save)."""
        now = time.perf_counter()
        self.elapsed += now - self.t_start
        self.t_start = now

    def __repr__(self):
        return (f"BilevelState(method={self.method!r}, k={self.k}, status={self.status!r}, "
                f"eps={self.eps!r}, delta={self.delta!r}, step={self.step!r}, cost={self.cost})")
