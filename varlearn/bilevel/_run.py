"""Mutable state of one :func:`~varlearn.minimize_bilevel` run: solves, bounds, history rows, checkpoints."""
from __future__ import annotations

import logging
import math
import time
import warnings

from ..backend import to_device, to_numpy
from ..hypergradient import BoundEstimator, hypergradient
from ..linalg import norm as _lnorm
from ..results import ConvergenceWarning
from ..solvers import solve_lower
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint

logger = logging.getLogger("varlearn")


class _Stop(Exception):
    def __init__(self, status):
        super().__init__(status)
        self.status = status


def _json_float(v):
    # checkpoint metadata goes through varlearn._io.dumps_json (the one JSON policy: non-finite
    # floats as "nan"/"inf"/"-inf", read back exactly); this only makes NumPy scalars Python floats
    return None if v is None else float(v)


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
        self.stationarity = (math.nan, False)  # (bound on |grad f|, certified) at an accuracy floor

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
                           lower_L0=self._L0(), constants=self.opts.get("bound_constants", "exact"))
        self.L_last = hg.lower.L
        self.n_lower += hg.n_lower_iter
        self.n_cg += hg.n_cg_iter
        if self.opts["warm_start_cg"]:
            self.q_warm = hg.q
        return hg

    def bounds(self, x, eps_achieved, value=None, grad_norm=None):
        """(U(x), certified lower bound, certified upper bound) of f at the point solved to ``eps``.

        ``value`` and ``grad_norm`` (U(x) and ‖∇U(x)‖ when the caller has them) save recomputing them.
        """
        u = float(self.upper.value(x)) if value is None else float(value)
        gn = _lnorm(self.upper.grad(x)) if grad_norm is None else float(grad_norm)
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
