"""Analysis of bilevel runs: history checks, run summaries, the method grammar, guarded runs.

* History analysis of :attr:`~varlearn.BilevelResult.history` rows (or the
  column dict of :func:`summarize_run`): :func:`is_monotone`,
  :func:`certified_decrease`, :func:`first_cost_below`, :func:`value_at_cost`.
* :func:`summarize_run`: the numbers of one run that experiment front ends
  store (final values, counts, checks, the history columns).
* :func:`bound_check`, :func:`summarize_bound_checks`: the a-posteriori error
  bound ω of an inexact hypergradient against an exact gradient.
* :func:`parse_method`: the one grammar of method strings used by the
  scripts and the command line, ``NAME[:EPS0[:DELTA0]]`` with ``NAME`` one of
  :data:`METHOD_NAMES`.
* :func:`guarded_minimize`: :func:`~varlearn.minimize_bilevel` that records a
  numerical failure (for example θ overflowing after a huge HOAG step) as a
  :class:`FailedRun` instead of raising, with a progress line at most every
  ``progress_every`` seconds.

References
----------
M. S. Salehi, S. Mukherjee, L. Roberts and M. J. Ehrhardt, "An adaptively inexact
first-order method for bilevel optimization with application to hyperparameter
learning", arXiv:2308.10098, 2023 (MAID; the certified-decrease test).

F. Pedregosa, "Hyperparameter optimization with approximate gradient", ICML 2016
(HOAG and its tolerance decays).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..backend import to_numpy
from .history import upgrade_row
from .minimize import get_method, minimize_bilevel
from .options import RUNTIME_OPTIONS, rename_options

logger = logging.getLogger("varlearn")

__all__ = ["is_monotone", "certified_decrease", "first_cost_below", "value_at_cost", "summarize_run",
           "SUMMARY_COLUMNS", "MethodSpec", "parse_method", "METHOD_NAMES", "FailedRun", "guarded_minimize",
           "bound_check", "summarize_bound_checks"]


# ---------------------------------------------------------------------- history analysis
def _finite(v):
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def is_monotone(values):
    """Whether the finite values of a sequence never increase or never decrease (``None``/NaN skipped)."""
    v = np.asarray([x for x in values if _finite(x)], dtype=float)
    if v.size < 2:
        return True
    d = np.diff(v)
    return bool(np.all(d <= 0) or np.all(d >= 0))


def certified_decrease(history, nu_inc=None):
    """Check the certificate of every accepted step from the history rows.

    For each accepted row ``k`` (``k >= 1``) the certified upper bound of the
    new point must not exceed the certified lower bound recorded for the
    previous point: ``fun_upper[k] <= fun_lower[k-1]``, which proves
    ``f(theta_k) <= f(theta_{k-1})``.  Rows with a missing or non-finite bound
    are not checked.

    This check is sufficient, not exact: MAID's own test compares with the
    lower bound of the previous point *re-solved at the start of iteration k*,
    which is tighter than the recorded ``fun_lower[k-1]`` when iteration ``k``
    shrank ε (certificate loop or a failed attempt) or when the previous
    accepted trial solve stopped at its iteration cap short of ε; the check
    above can then fail although the step was certified.  With ``nu_inc``
    given, rows are split by whether ε was shrunk inside iteration ``k``
    (``eps[k] < nu_inc * eps[k-1]``).

    Returns
    -------
    dict
        ``checked``, ``violations``, ``worst_gap`` (largest
        ``fun_upper[k] - fun_lower[k-1]``, ``None`` when nothing was checked),
        ``checked_unshrunk`` and ``violations_unshrunk`` (rows where ε was not
        shrunk).
    """
    n = bad = n_u = bad_u = 0
    worst = -math.inf
    for k in range(1, len(history)):
        if not history[k].get("accepted"):
            continue
        up, lo = history[k].get("fun_upper"), history[k - 1].get("fun_lower")
        if not (_finite(up) and _finite(lo)):
            continue
        n += 1
        worst = max(worst, up - lo)
        bad += up > lo
        e0, e1 = history[k - 1]["eps"], history[k]["eps"]
        unshrunk = nu_inc is None or not (e1 < nu_inc * e0 * (1 - 1e-9))
        if unshrunk:
            n_u += 1
            bad_u += up > lo
    return {"checked": n, "violations": int(bad), "worst_gap": worst if n else None,
            "checked_unshrunk": n_u, "violations_unshrunk": int(bad_u)}


def _rows(history):
    """History rows from a list of rows or a column dict (as :func:`summarize_run` stores it)."""
    if isinstance(history, dict):
        keys = list(history)
        return [dict(zip(keys, vals)) for vals in zip(*(history[k] for k in keys))]
    return history


def first_cost_below(history, target, key="fun"):
    """The first cumulative ``cost`` at which ``history[key] <= target`` (``None`` if never)."""
    for row in _rows(history):
        v = row.get(key)
        if _finite(v) and v <= target:
            return row["cost"]
    return None


def value_at_cost(history, cost, key="fun"):
    """The value of ``key`` at the last row whose cost is ``<= cost`` (``None`` before the first row)."""
    out = None
    for row in _rows(history):
        if row["cost"] > cost:
            break
        out = row.get(key)
    return out


#: the history columns :func:`summarize_run` keeps
SUMMARY_COLUMNS = ("iter", "cost", "image_cost", "fun", "fun_lower", "fun_upper", "eps", "delta", "step",
                   "accepted", "grad_norm", "omega", "bound_exact", "wall_time")


def summarize_run(res, label, *, theta_limit=20, extra=None):
    """What an experiment keeps of one run (a :class:`~varlearn.BilevelResult` or :class:`FailedRun`).

    Returns a dict: ``label``, ``method``, ``status``, ``message``,
    ``success``, ``nit``, ``fun``, ``fun_bounds``, ``cost`` (lower-level + CG
    iterations), ``n_lower_iter``, ``n_cg_iter``, ``image_cost`` (NaN for a
    non-separable problem), ``wall_time``,
    ``n_accepted``, the ε statistics (``eps_first``, ``eps_final``,
    ``eps_min``, ``eps_max``, ``eps_monotone``), ``fun_increases``,
    ``certified_decrease`` (:func:`certified_decrease`; ``None`` for HOAG,
    whose steps are not certified), ``options`` (without live objects such as
    ``executor``), ``history`` (the columns of
    :data:`SUMMARY_COLUMNS`), and ``theta`` (at most ``theta_limit`` values)
    or ``theta_summary``; ``extra`` is merged in last.
    """
    h = [upgrade_row(row) for row in res["history"]]  # rows of older runs read with the current names
    theta = to_numpy(res["theta"])
    if res["method"] == "hoag":
        cert = None
    else:
        cert = certified_decrease(h, res["options"].get("nu_inc", 1.0) if res["method"] == "maid" else 1.0)
    eps = [row["eps"] for row in h]
    funs = [row.get("fun") for row in h]
    out = {
        "label": label, "method": res["method"], "status": res["status"], "message": res.get("message"),
        "success": bool(res.get("success", False)), "nit": res["nit"],
        "fun": res["fun"], "fun_bounds": list(res["fun_bounds"]),
        "cost": res["n_lower_iter"] + res["n_cg_iter"], "n_lower_iter": res["n_lower_iter"],
        "n_cg_iter": res["n_cg_iter"], "image_cost": res.get("image_cost", math.nan), "wall_time": res["wall_time"],
        "n_accepted": int(sum(1 for row in h[1:] if row["accepted"])),
        "eps_first": eps[0] if eps else None, "eps_final": eps[-1] if eps else None,
        "eps_min": min(eps) if eps else None, "eps_max": max(eps) if eps else None,
        "eps_monotone": is_monotone(eps),
        "fun_increases": int(sum(1 for a, b in zip(funs[:-1], funs[1:]) if _finite(a) and _finite(b) and b > a)),
        "certified_decrease": cert,
        "options": {k: v for k, v in res["options"].items() if k not in RUNTIME_OPTIONS},  # JSON-able
        "history": {k: [row.get(k) for row in h] for k in SUMMARY_COLUMNS},
    }
    if theta.size <= theta_limit:
        out["theta"] = theta
    else:
        out["theta_summary"] = {"size": int(theta.size), "min": float(theta.min()), "max": float(theta.max()),
                                "mean": float(theta.mean())}
    if extra:
        out.update(extra)
    return out


def bound_check(hg, exact_grad):
    """``(error, bound, floor)`` of an inexact hypergradient ``hg`` against the exact gradient.

    ``error = ||hg.grad - exact_grad||``, ``bound = hg.error_bound`` (ω) and
    ``floor = 64 u max(||exact_grad||, ||hg.grad||, 1)`` with ``u`` the float64
    unit roundoff: float64 cannot resolve errors below a few ulp of the
    gradient, so only ``error > bound + floor`` is a violation.
    """
    exact = np.asarray(to_numpy(exact_grad), dtype=np.float64)
    err = float(np.linalg.norm(np.asarray(to_numpy(hg.grad), dtype=np.float64) - exact))
    floor = 64 * np.finfo(np.float64).eps * max(float(np.linalg.norm(exact)), float(hg.grad_norm), 1.0)
    return err, float(hg.error_bound), floor


def summarize_bound_checks(checks):
    """Counts of :func:`bound_check` triples: ``n``, ``n_violated`` (beyond the floor), ``n_violated_raw``,
    ``max_error_over_bound`` and ``median_bound_over_error`` (over the finite bounds; ``None`` if none)."""
    c = np.asarray(checks, dtype=float).reshape(-1, 3)
    err, om, floor = c[:, 0], c[:, 1], c[:, 2]
    fin = np.isfinite(om)
    err, om, floor = err[fin], om[fin], floor[fin]
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero bound gives an infinite ratio
        ratio = err / om
    return {"n": int(c.shape[0]), "n_violated": int(np.sum(err > om + floor)), "n_violated_raw": int(np.sum(err > om)),
            "note": "a violation needs ||z - grad f|| > omega + 64 ulp of ||grad f|| (rounding floor)",
            "max_error_over_bound": float(np.max(ratio)) if om.size else None,
            "median_bound_over_error": float(np.median(om / np.maximum(err, 1e-300))) if om.size else None}


# ---------------------------------------------------------------------- method grammar
#: method names of the grammar: (minimize_bilevel method, options it implies, label)
METHOD_NAMES = {
    "maid": ("maid", {}, "MAID"),
    "maid-nobound": ("maid", {"bound": False}, "MAID, certificate off"),
    "fixed": ("fixed", {}, "fixed"),
    "hoag": ("hoag", {"decay": "geometric"}, "HOAG geometric"),
    "hoag-geometric": ("hoag", {"decay": "geometric"}, "HOAG geometric"),
    "hoag-quadratic": ("hoag", {"decay": "quadratic"}, "HOAG quadratic"),
    "hoag-cubic": ("hoag", {"decay": "cubic"}, "HOAG cubic"),
}

_GRAMMAR = (f"NAME[:EPS0[:DELTA0]] with NAME one of {', '.join(METHOD_NAMES)} and positive accuracies "
            "(fixed: one accuracy EPS used for both; hoag: EPS0 only)")


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method string (see :func:`parse_method`).

    ``name`` is the method name (``"hoag-cubic"``), ``method`` the
    :func:`~varlearn.minimize_bilevel` method (``"hoag"``), ``options`` the
    options the string implies (``{"decay": "cubic", "eps0": ...}``), ``label``
    a human-readable label.
    """

    name: str
    method: str
    options: dict = field(default_factory=dict)
    label: str = ""
    token: str = ""

    @property
    def key(self):
        """The name as a Python identifier (``"hoag_cubic"``), e.g. for ``.npz`` keys."""
        return self.name.replace("-", "_")


def _accuracy(text, token):
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"method {token!r}: accuracy {text!r} is not a positive finite number; use {_GRAMMAR}")
    return v


def parse_method(token):
    """Parse a method string ``NAME[:EPS0[:DELTA0]]`` into a :class:`MethodSpec`.

    ``NAME`` is one of :data:`METHOD_NAMES` (``maid``, ``maid-nobound``,
    ``fixed``, ``hoag`` (= ``hoag-geometric``), ``hoag-quadratic``,
    ``hoag-cubic``); the optional numbers set ``eps0`` and ``delta0`` (MAID:
    ``maid:1e1:1e2``; with one number both get it; fixed: ``fixed:1e-3`` sets
    ε = δ; HOAG: ``hoag-cubic:0.1`` sets its tolerance ``eps0``).

    Raises
    ------
    ValueError
        Naming the string and the grammar, for an unknown name, a number that
        is not positive and finite, or too many numbers.
    """
    if not isinstance(token, str):
        raise TypeError(f"method must be a string, got {type(token).__name__}: {token!r}")
    name, *nums = token.strip().split(":")
    if name not in METHOD_NAMES:
        raise ValueError(f"unknown method {token!r}; use {_GRAMMAR}")
    method, implied, label = METHOD_NAMES[name]
    max_nums = 1 if method in ("fixed", "hoag") else 2
    if len(nums) > max_nums:
        raise ValueError(f"method {token!r}: at most {max_nums} accuracies for {name!r}; use {_GRAMMAR}")
    opts = dict(implied)
    vals = [_accuracy(t, token) for t in nums]
    if vals:
        eps0, delta0 = vals[0], vals[-1]
        opts["eps0"] = eps0
        if method == "fixed":
            label += f" ε=δ={eps0:g}"
            opts["delta0"] = eps0
        elif method == "maid":
            opts["delta0"] = delta0
            label += f" ε0=δ0={eps0:g}" if eps0 == delta0 else f" ε0={eps0:g}, δ0={delta0:g}"
        else:
            label += f" ε0={eps0:g}"
    return MethodSpec(name=name, method=method, options=opts, label=label, token=token.strip())


# ---------------------------------------------------------------------- guarded runs
class FailedRun(dict):
    """Stand-in for a :class:`~varlearn.BilevelResult` of a run that raised (e.g. θ overflowed).

    Built from the history rows the callback saw (row 0, the starting point,
    is not passed to callbacks, so it is missing); ``status`` is ``"error"``,
    ``success`` is False and ``message`` the error text.
    """

    def __init__(self, method, options, rows, theta, error, wall_time):
        last = rows[-1] if rows else {}
        super().__init__(
            theta=theta, fun=last.get("fun", math.nan),
            fun_bounds=(last.get("fun_lower", math.nan), last.get("fun_upper", math.nan)),
            x=None, nit=len(rows), status="error", message=error, success=False,
            n_lower_iter=last.get("n_lower_iter", 0), n_cg_iter=last.get("n_cg_iter", 0),
            image_cost=last.get("image_cost", math.nan), wall_time=wall_time, history=rows, method=method,
            options=get_method(method).resolve_options(rename_options(options, warn=False)))


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def guarded_minimize(problem, upper, theta0, method, options, callback=None,
                     errors=(ArithmeticError, ValueError, np.linalg.LinAlgError), progress=None,
                     progress_every=60.0):
    """:func:`~varlearn.minimize_bilevel` that survives a numerical failure of a run.

    Parameters
    ----------
    problem, upper, theta0, method, options, callback
        As for :func:`~varlearn.minimize_bilevel`.
    errors : tuple of exception classes
        The failures that are recorded instead of raised.
    progress : callable, optional
        ``progress(line)`` receives one progress line (iteration, cost, loss,
        ε); default: logged at INFO level on the ``"varlearn"`` logger.
    progress_every : float or None
        Seconds between two progress lines (the first comes after
        ``progress_every`` seconds; ``0``: every iteration; ``None``: never).

    Returns
    -------
    (result, error)
        The :class:`~varlearn.BilevelResult` and ``None``, or a
        :class:`FailedRun` (partial history, last θ) and the error text
        ``"TypeName: message (after n outer iterations)"``, so that one
        diverging baseline does not end a whole experiment.
    """
    emit = progress if progress is not None else logger.info
    rows = []
    last_theta = [theta0]
    last_line = [time.perf_counter()]

    def cb(r):
        rows.append(dict(r.row))
        last_theta[0] = r.theta
        now = time.perf_counter()
        if progress_every is not None and now - last_line[0] >= progress_every:
            last_line[0] = now
            row = r.row
            emit(f"    ... {method}: iteration {row['iter']}, cost {row['cost']}, loss {_fmt(row['fun'], '.6g')}, "
                 f"eps {_fmt(row['eps'], '.2e')}")
        if callback is not None:
            callback(r)

    t0 = time.perf_counter()
    try:
        return minimize_bilevel(problem, upper, theta0, method, options=options, callback=cb), None
    except errors as exc:
        err = f"{type(exc).__name__}: {exc} (after {len(rows)} outer iterations)"
        return FailedRun(method, options, rows, last_theta[0], err, time.perf_counter() - t0), err
