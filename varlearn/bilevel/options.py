"""Options of the bilevel methods: names, defaults (the MAID paper's), and validation.

The option names follow the naming table of ``docs/developer.md``.  Renamed
options (:data:`DEPRECATED_OPTIONS`) are still accepted under their old name,
with a :class:`DeprecationWarning`.
"""
from __future__ import annotations

import math
import warnings

__all__ = ["DEFAULTS", "resolve_options", "METHODS", "DEPRECATED_OPTIONS", "RUNTIME_OPTIONS", "rename_options"]

METHODS = ("maid", "fixed", "hoag")

_COMMON = {
    "maxiter": 1000,           # outer iterations
    "budget": math.inf,        # total lower-level + CG iterations (stacked units: cost)
    "image_budget": math.inf,  # total image-iterations (image_cost; separable problems only)
    "time_limit": math.inf,    # seconds of wall time
    "gtol": 0.0,               # stop when ||z|| <= gtol
    "lower_maxiter": 2000,     # per lower-level solve
    "cg_maxiter": 2000,        # per CG solve
    "warm_start_cg": True,     # start CG from the last q (safe: the bound uses the true residual)
    "checkpoint_every": 1,     # outer iterations between checkpoints
    "checkpoint_interval": 5.0,  # at least this many seconds between checkpoints (0: every eligible iteration)
    "backtracking_lower": "auto",  # FISTA backtracking on L (see solve_lower)
    "seed": 0,                 # random state of the bound estimator
    "executor": None,          # None: solves in this process; an executor object (varlearn.executors)
}

DEFAULTS = {
    "maid": dict(_COMMON, **{
        "eps0": 0.1,            # initial lower-level accuracy (distance to x_hat)
        "delta0": 0.1,          # initial CG residual tolerance
        "step0": 0.01,          # initial step size alpha_0
        "rho": 0.5,             # step decrease in backtracking, in (0, 1)
        "rho_inc": 10.0 / 9.0,  # step increase after an accepted step, >= 1
        "nu": 0.5,              # accuracy decrease, in (0, 1)
        "nu_inc": 1.05,         # accuracy increase after an accepted step, >= 1
        "eta": 1e-4,            # descent margin: require omega <= (1 - eta) ||z||
        "armijo": 1e-8,         # sufficient-decrease fraction lambda (< eta)
        "max_backtracks": 10,   # backtracking tries in the first attempt (then +1 per attempt)
        "max_attempts": 3,      # hypergradient attempts per outer iteration
        "eps_floor": 1e-12,     # stop when the accuracy must go below this
        "bound": True,          # use the error bound omega (False: skip the certificate loop)
        "stationarity_rtol": 1e-3,  # accuracy_floor is success when |grad f| <= this * |z_0| (certified)
        "bound_constants": "exact",  # "exact": the problem's constants; "estimate": BoundEstimator for L_H, L_J, |J|
    }),
    "fixed": dict(_COMMON, **{
        "eps0": 0.1, "delta0": 0.1, "step0": 0.01, "rho": 0.5, "rho_inc": 10.0 / 9.0,
        "armijo": 1e-8, "max_backtracks": 5, "max_attempts": 3,
    }),
    "hoag": dict(_COMMON, **{
        "eps0": 0.1,            # initial tolerance, for the lower level and CG
        "decay": "geometric",   # geometric | quadratic | cubic
        "decay_rate": 0.9,      # geometric ratio
        "eps_min": 1e-12,       # tolerance floor
        "step0": None,          # None: 1/L with L = ||z_0|| / sqrt(p) (HOAG's first step)
        "hoag_C": 0.25,         # constant of HOAG's acceptance test
        "theta_clip": 1000.0,   # theta is clipped to [-theta_clip, theta_clip]
    }),
}

_POSITIVE = {"eps0", "delta0", "step0", "armijo", "eps_floor", "eps_min", "hoag_C", "theta_clip"}
_UNIT = {"rho", "nu", "eta", "decay_rate", "stationarity_rtol"}
_GE1 = {"rho_inc", "nu_inc"}
#: options that hold live objects: used by the run, never written to a checkpoint or a JSON summary
RUNTIME_OPTIONS = frozenset({"executor"})

#: old option name -> new name (the old name still works, with a DeprecationWarning)
DEPRECATED_OPTIONS = {"max_iter": "maxiter"}

_POS_INT = {"maxiter", "lower_maxiter", "cg_maxiter", "checkpoint_every", "max_backtracks", "max_attempts"}


def _bad(name, value, why):
    return ValueError(f"option {name!r} {why}, got {value!r}")


def rename_options(options, *, warn=True, stacklevel=3):
    """``options`` with every deprecated name of :data:`DEPRECATED_OPTIONS` replaced by its new name.

    With ``warn`` a :class:`DeprecationWarning` names the old and the new
    option (``warn=False`` is for options read back from old checkpoints).
    Giving both names raises ``ValueError``.
    """
    out = dict(options or {})
    for old, new in DEPRECATED_OPTIONS.items():
        if old not in out:
            continue
        if new in out:
            raise ValueError(f"options {old!r} and {new!r} are the same option ({old!r} is its deprecated "
                             f"name); give only {new!r}, got {old}={out[old]!r}, {new}={out[new]!r}")
        if warn:
            warnings.warn(f"option {old!r} is deprecated; use {new!r}", DeprecationWarning, stacklevel=stacklevel)
        out[new] = out.pop(old)
    return out


def resolve_options(method, options, *, stacklevel=3):
    """Merge ``options`` into the defaults of ``method`` and validate every value.

    Unknown option names, values of the wrong type or out of range raise
    ``ValueError`` naming the option and the value.  Deprecated names
    (:data:`DEPRECATED_OPTIONS`) are renamed with a :class:`DeprecationWarning`
    (``stacklevel`` as for :func:`warnings.warn`, counted from the caller).
    """
    if method not in DEFAULTS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    opts = dict(DEFAULTS[method])
    for k, v in rename_options(options, stacklevel=stacklevel + 1).items():
        if k not in opts:
            raise ValueError(f"unknown option {k!r} for method {method!r}; known options: {sorted(opts)}")
        opts[k] = v
    for k, v in opts.items():
        if k in _POSITIVE:
            if v is None and k == "step0" and method == "hoag":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 and math.isfinite(v)):
                raise _bad(k, v, "must be a positive finite number")
            opts[k] = float(v)
        elif k in _UNIT:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v < 1):
                raise _bad(k, v, "must lie in (0, 1)")
            opts[k] = float(v)
        elif k in _GE1:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (1 <= v < math.inf):
                raise _bad(k, v, "must be a finite number >= 1")
            opts[k] = float(v)
        elif k in _POS_INT:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise _bad(k, v, "must be a positive integer")
        elif k == "checkpoint_interval":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0 and math.isfinite(v)):
                raise _bad(k, v, "must be a finite number of seconds >= 0")
            opts[k] = float(v)
        elif k in ("budget", "image_budget", "time_limit"):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise _bad(k, v, "must be a positive number (inf for no limit)")
            opts[k] = float(v)
        elif k == "gtol":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0 and math.isfinite(v)):
                raise _bad(k, v, "must be a finite number >= 0")
            opts[k] = float(v)
        elif k in ("warm_start_cg", "bound"):
            if not isinstance(v, bool):
                raise _bad(k, v, "must be True or False")
        elif k == "backtracking_lower":
            if v not in (True, False, "auto"):
                raise _bad(k, v, "must be True, False or 'auto'")
        elif k == "bound_constants":
            if v not in ("exact", "estimate"):
                raise _bad(k, v, "must be 'exact' or 'estimate'")
        elif k == "decay":
            if v not in ("geometric", "quadratic", "cubic"):
                raise _bad(k, v, "must be 'geometric', 'quadratic' or 'cubic'")
        elif k == "executor":
            methods = [callable(getattr(v, name, None)) for name in ("hypergradient", "trial")]
            if v is not None and not all(methods):
                raise _bad(k, v, "must be None or an executor object (varlearn.executors: hypergradient and trial "
                                 "methods)")
        elif k == "seed":
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise _bad(k, v, "must be a non-negative integer")
    if method == "maid" and not opts["armijo"] < opts["eta"]:
        raise ValueError(
            f"option 'armijo' must be smaller than option 'eta' (the theory needs lambda < eta), "
            f"got armijo={opts['armijo']!r}, eta={opts['eta']!r}"
        )
    return opts
