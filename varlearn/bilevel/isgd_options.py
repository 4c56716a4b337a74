"""Options of :class:`~varlearn.bilevel.isgd.ISGD`: names, defaults, validation by name.

Every option is checked by :func:`resolve_isgd_options`; an unknown name, a
value of the wrong type or out of range raises ``ValueError`` (``TypeError``
for a non-callable ``project``) whose message names the option and the value.
The table of the stochastic spec (§4.2), with the units used here:

* accuracies are **per image**: ``eps0`` (default ``0.01 * sqrt(H * W)``, about
  0.01 RMS per pixel) bounds ‖x̃_i − x̂_i‖ of every image of a batch in the
  mean (the batch of b images is solved to ε = √b ε_image); the CG residual
  target per image is ``delta_ratio * eps_image`` for the unweighted adjoint
  system H_i q̄_i = ∇u_i(x̃_i) (see :class:`~varlearn.bilevel.isgd.ISGD`);
  both are floored at ``eps_min``;
* costs are image-iterations: ``image_budget`` bounds the lower-level plus CG
  iterations summed over the images solved (an iteration on a stack of b
  images counts b).

References
----------
M. S. Salehi, S. Mukherjee, L. Roberts, M. J. Ehrhardt, "Bilevel learning with
inexact stochastic gradients", SSVM 2025, arXiv 2412.12049 (schedules, batch sizes);
D. P. Kingma, J. Ba, "Adam: a method for stochastic optimization", ICLR 2015
(``adam_betas = (0.9, 0.999)``, ``adam_eps = 1e-8``).
"""
from __future__ import annotations

import math
import warnings

from .sampling import SAMPLINGS
from .schedules import SCHEDULES

__all__ = ["ISGD_DEFAULTS", "resolve_isgd_options"]

ISGD_DEFAULTS = {
    "batch_size": 8,            # images per step (the default is clipped to N)
    "sampling": "shuffle",      # shuffle | replacement | cyclic (varlearn.bilevel.sampling)
    "seed": 0,                  # PCG64 seed of the sampler
    "optimizer": "sgd",         # sgd | adam
    "adam_betas": (0.9, 0.999),
    "adam_eps": 1e-8,
    "step0": 0.01, "step_schedule": "poly", "q": 0.5,   # alpha_k
    "eps0": None, "eps_schedule": "poly", "p": 0.5,     # per-image eps_k; None: 0.01 * sqrt(H * W)
    "delta_ratio": 1.0,         # per-image CG residual target = delta_ratio * eps_image
    "eps_min": 1e-10,           # floor of the per-image eps and delta
    "accuracy": "schedule",     # schedule | bound (halve eps, delta until omega <= (1 - eta) |z| on the batch)
    "eta": 1e-4,                # margin of accuracy="bound"
    "bound": False,             # compute omega (diagnostic) when accuracy="schedule"
    "maxiter": math.inf,        # mini-batch steps
    "max_epochs": math.inf,     # passes over the data
    "image_budget": math.inf,   # image-iterations (lower + CG)
    "budget": math.inf,         # stacked iterations (lower + CG), as for the other methods
    "time_limit": math.inf,     # seconds
    "eval_every": 0,            # full-objective evaluation every n epochs (0: off)
    "eval_tol": 1e-6,           # per-image accuracy of the evaluation solves
    "eval_set": "train",        # "train" or a held-out (problem, upper) pair
    "warm_start": "auto",       # auto | driver | worker | none
    "warm_start_max_bytes": 2 ** 31,
    "executor": "serial",       # serial | dask | inprocess | an executor object (varlearn.executors)
    "client": None, "n_workers": None, "images_per_task": "auto",
    "task_retries": 2, "on_task_failure": "raise", "max_drop_fraction": 0.1,
    "project": None,            # callable theta -> theta applied after each step
    "checkpoint_every": 10,     # steps between checkpoints (and always at the end)
    "lower_maxiter": 2000,      # per lower-level solve
    "cg_maxiter": 2000,         # per CG solve
    "backtracking_lower": "auto",
}

_RENAMED = {"max_iter": "maxiter"}


def _bad(name, value, why):
    return ValueError(f"option {name!r} {why}, got {value!r}")


def _real(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _check(name, v, ok, why):
    if not ok(v):
        raise _bad(name, v, why)


_RULES = {
    "batch_size": (lambda v: _int(v) and v >= 1, "must be a positive integer"),
    "sampling": (lambda v: v in SAMPLINGS, f"must be one of {SAMPLINGS}"),
    "seed": (lambda v: _int(v) and v >= 0, "must be a non-negative integer"),
    "optimizer": (lambda v: v in ("sgd", "adam"), "must be 'sgd' or 'adam'"),
    "adam_betas": (lambda v: isinstance(v, (tuple, list)) and len(v) == 2 and all(_real(b) and 0 <= b < 1 for b in v),
                   "must be a pair of numbers in [0, 1)"),
    "adam_eps": (lambda v: _real(v) and 0 < v < math.inf, "must be a positive finite number"),
    "step0": (lambda v: _real(v) and 0 < v < math.inf, "must be a positive finite number"),
    "step_schedule": (lambda v: v in SCHEDULES, f"must be one of {SCHEDULES}"),
    "q": (lambda v: _real(v) and 0 <= v < math.inf, "must be a finite number >= 0"),
    "eps0": (lambda v: v is None or (_real(v) and 0 < v < math.inf), "must be a positive finite number or None"),
    "eps_schedule": (lambda v: v in SCHEDULES, f"must be one of {SCHEDULES}"),
    "p": (lambda v: _real(v) and 0 <= v < math.inf, "must be a finite number >= 0"),
    "delta_ratio": (lambda v: _real(v) and 0 < v < math.inf, "must be a positive finite number"),
    "eps_min": (lambda v: _real(v) and 0 < v < math.inf, "must be a positive finite number"),
    "accuracy": (lambda v: v in ("schedule", "bound"), "must be 'schedule' or 'bound'"),
    "eta": (lambda v: _real(v) and 0 < v < 1, "must lie in (0, 1)"),
    "bound": (lambda v: isinstance(v, bool), "must be True or False"),
    "maxiter": (lambda v: (_int(v) and v >= 1) or v == math.inf, "must be a positive integer or inf"),
    "max_epochs": (lambda v: (_int(v) and v >= 1) or v == math.inf, "must be a positive integer or inf"),
    "image_budget": (lambda v: _real(v) and v > 0, "must be a positive number (inf for no limit)"),
    "budget": (lambda v: _real(v) and v > 0, "must be a positive number (inf for no limit)"),
    "time_limit": (lambda v: _real(v) and v > 0, "must be a positive number of seconds (inf for no limit)"),
    "eval_every": (lambda v: _int(v) and v >= 0, "must be an integer >= 0 (0: no evaluation)"),
    "eval_tol": (lambda v: _real(v) and 0 < v < math.inf, "must be a positive finite number"),
    "eval_set": (lambda v: v == "train" or (isinstance(v, (tuple, list)) and len(v) == 2),
                 "must be 'train' or a (problem, upper) pair"),
    "warm_start": (lambda v: v in ("auto", "driver", "worker", "none"),
                   "must be 'auto', 'driver', 'worker' or 'none'"),
    "warm_start_max_bytes": (lambda v: _int(v) and v >= 0, "must be an integer number of bytes >= 0"),
    "executor": (lambda v: v in ("serial", "dask", "inprocess")
                 or (not isinstance(v, str) and callable(getattr(v, "hypergradient", None))),
                 "must be 'serial', 'dask', 'inprocess' or an executor object with a hypergradient method"),
    "n_workers": (lambda v: v is None or (_int(v) and v >= 1), "must be a positive integer or None"),
    "images_per_task": (lambda v: v == "auto" or (_int(v) and v >= 1), "must be 'auto' or a positive integer"),
    "task_retries": (lambda v: _int(v) and v >= 0, "must be an integer >= 0"),
    "on_task_failure": (lambda v: v in ("raise", "drop"), "must be 'raise' or 'drop'"),
    "max_drop_fraction": (lambda v: _real(v) and 0 <= v < 1, "must lie in [0, 1)"),
    "checkpoint_every": (lambda v: _int(v) and v >= 1, "must be a positive integer"),
    "lower_maxiter": (lambda v: _int(v) and v >= 1, "must be a positive integer"),
    "cg_maxiter": (lambda v: _int(v) and v >= 1, "must be a positive integer"),
    "backtracking_lower": (lambda v: v in (True, False, "auto"), "must be True, False or 'auto'"),
}

_FLOATS = ("adam_eps", "step0", "q", "eps0", "p", "delta_ratio", "eps_min", "eta", "image_budget", "budget",
           "time_limit", "eval_tol", "max_drop_fraction")


def resolve_isgd_options(options, n_samples=None, image_shape=None, check_limits=True):
    """Merge ``options`` into :data:`ISGD_DEFAULTS` and validate every value; returns a new dict.

    ``n_samples`` (N) checks ``batch_size <= N`` (the default 8 is clipped to
    N); ``image_shape`` ``(H, W)`` fills the default ``eps0 = 0.01 * sqrt(H * W)``.
    The old name ``max_iter`` is accepted for ``maxiter`` with a
    ``DeprecationWarning``.  With ``check_limits`` also refuses a run without
    any limit (all of ``maxiter``, ``max_epochs``, ``image_budget``,
    ``budget``, ``time_limit`` infinite).
    """
    opts = dict(ISGD_DEFAULTS)
    given = dict(options or {})
    for old, new in _RENAMED.items():
        if old in given:
            warnings.warn(f"option {old!r} is deprecated, use {new!r}", DeprecationWarning, stacklevel=3)
            value = given.pop(old)
            given.setdefault(new, value)
    for k, v in given.items():
        if k not in opts:
            raise ValueError(f"unknown option {k!r} for method 'isgd'; known options: {sorted(opts)}")
        opts[k] = v
    for name, (ok, why) in _RULES.items():
        _check(name, opts[name], ok, why)
    if opts["project"] is not None and not callable(opts["project"]):
        raise TypeError(f"option 'project' must be a callable theta -> theta or None, got {opts['project']!r}")
    for name in _FLOATS:
        if opts[name] is not None:
            opts[name] = float(opts[name])
    opts["adam_betas"] = tuple(float(b) for b in opts["adam_betas"])
    if n_samples is not None:
        if "batch_size" not in given:
            opts["batch_size"] = min(opts["batch_size"], int(n_samples))
        elif opts["batch_size"] > n_samples:
            raise _bad("batch_size", opts["batch_size"], f"must be at most the number of samples N = {n_samples}")
    if opts["eps0"] is None and image_shape is not None:
        opts["eps0"] = 0.01 * math.sqrt(float(image_shape[0]) * float(image_shape[1]))
    if check_limits and all(opts[k] == math.inf for k in ("maxiter", "max_epochs", "image_budget", "budget",
                                                          "time_limit")):
        raise ValueError("ISGD has no stopping rule of its own: set at least one of the options 'maxiter', "
                         "'max_epochs', 'image_budget', 'budget', 'time_limit' (all are inf)")
    return opts
