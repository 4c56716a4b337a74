"""Helpers shared by the paper-reproduction scripts (``scripts/reproduce_*.py``).

* :func:`make_parser`: the options every script has (``--quick``, ``--data-dir``,
  ``--backend``, ``--seed``, ``--out``, ``--max-iter``, ``--budget``);
* :func:`array_module`: NumPy or CuPy for ``--backend`` (CuPy only when usable);
* :func:`prepare_out`, :func:`write_json` (atomic, NaN/inf safe);
* :func:`summarize_run`: the numbers of one :class:`~varlearn.BilevelResult`
  that go into ``metrics.json``, including the certified-decrease check;
* :func:`plot_loss_vs_cost`, :func:`plot_eps_path`: the two figures every
  experiment draws (matplotlib with the Agg backend, PNG).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import varlearn as vl  # noqa: E402
from varlearn.backend import cupy_unusable_reason, cupy_usable, to_numpy  # noqa: E402
from varlearn.bilevel.checkpoint import atomic_write_text  # noqa: E402

__all__ = [
    "make_parser", "array_module", "prepare_out", "write_json", "to_jsonable", "machine_info",
    "summarize_run", "certified_decrease", "is_monotone", "first_cost_below", "value_at_cost",
    "plot_loss_vs_cost", "plot_eps_path", "finish_figure", "fmt", "Timer", "blas_threads", "guarded_minimize", "FailedRun",
]


# ---------------------------------------------------------------------- options
def make_parser(description, *, seed, out, max_iter=None, budget=None):
    """An ``ArgumentParser`` with the options common to every reproduction script."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny scale that runs in seconds (used by the test suite); the scale is "
                        "recorded in metrics.json")
    p.add_argument("--data-dir", default=None,
                   help="folder holding the data sets (kodak/, mnist/); default: $VARLEARN_DATA, "
                        "then the cache, then a checksum-verified download")
    p.add_argument("--backend", choices=["numpy", "cupy"], default="numpy",
                   help="array backend (cupy needs a usable GPU)")
    p.add_argument("--seed", type=int, default=seed, help="random seed of the experiment")
    p.add_argument("--out", default=out, help="output folder for metrics.json and the figures")
    p.add_argument("--max-iter", type=int, default=max_iter,
                   help="outer iterations per run (default: the paper's, or the quick one)")
    p.add_argument("--budget", type=float, default=budget,
                   help="total lower-level + CG iterations per run (default: see the script)")
    return p


def array_module(backend):
    """The array namespace for ``--backend``; exits with the reason when CuPy is not usable."""
    if backend == "numpy":
        return np
    if not cupy_usable():
        raise SystemExit(f"--backend cupy: {cupy_unusable_reason()}")
    import cupy

    return cupy


def prepare_out(path):
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


# ---------------------------------------------------------------------- JSON
def to_jsonable(obj):
    """Plain JSON types: arrays become lists, NaN becomes ``None``, ±inf become ``"inf"``/``"-inf"``."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__cuda_array_interface__"):
        obj = to_numpy(obj)
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def write_json(path, obj):
    """Write ``obj`` as indented JSON, atomically (temporary file + rename)."""
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=1) + "\n")


def machine_info(backend):
    """Where and with what a run happened (recorded in every metrics.json)."""
    info = {
        "platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "numpy": np.__version__, "varlearn": vl.__version__, "backend": backend,
    }
    try:
        info["load_average_at_start"] = list(os.getloadavg())
    except OSError:
        pass
    try:
        import numba

        info["numba"] = numba.__version__
    except ImportError:
        info["numba"] = None
    if backend == "cupy":
        import cupy

        dev = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        info["gpu"] = dev["name"].decode() if isinstance(dev["name"], bytes) else str(dev["name"])
        info["cupy"] = cupy.__version__
    return info


def _openblas_handles():
    """ctypes handles of the OpenBLAS libraries NumPy/SciPy loaded (wheel builds), possibly empty."""
    import ctypes
    import glob

    out = []
    base = os.path.dirname(os.path.dirname(np.__file__))
    for pattern in ("numpy.libs/*openblas*.so*", "scipy.libs/*openblas*.so*"):
        for lib in sorted(glob.glob(os.path.join(base, pattern))):
            try:
                h = ctypes.CDLL(lib)
            except OSError:
                continue
            for get, put in (("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
                             ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
                             ("openblas_get_num_threads", "openblas_set_num_threads")):
                if hasattr(h, get) and hasattr(h, put):
                    out.append((getattr(h, get), getattr(h, put)))
                    break
    return out


class blas_threads:
    """Context manager: limit OpenBLAS to ``n`` threads (``None``: leave it), restoring it on exit.

    On shared cores multithreaded BLAS calls stall each other; one thread is
    then several times faster for the small dense products of the MNIST
    experiment.  A no-op when NumPy's BLAS is not an OpenBLAS wheel build.
    """

    def __init__(self, n):
        self.n = n
        self.saved = []

    def __enter__(self):
        if self.n is not None:
            for get, put in _openblas_handles():
                self.saved.append((put, int(get())))
                put(int(self.n))
        return self

    def __exit__(self, *exc):
        for put, old in self.saved:
            put(old)
        return False


class Timer:
    """Wall-clock timer: ``with Timer() as t: ...; t.seconds``."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        return False


# ---------------------------------------------------------------------- run summaries
def is_monotone(values):
    """Whether the finite values of a sequence never increase or never decrease."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size < 2:
        return True
    d = np.diff(v)
    return bool(np.all(d <= 0) or np.all(d >= 0))


def certified_decrease(history, nu_inc=None):
    """Check the certificate of every accepted step from the history rows.

    For each accepted row ``k`` (``k >= 1``) the certified upper bound of the
    new point must not exceed the certified lower bound recorded for the
    previous point: ``fun_upper[k] <= fun_lower[k-1]``, which proves
    ``f(theta_k) <= f(theta_{k-1})``.

    This check is sufficient, not exact: MAID's own test compares with the
    lower bound of the previous point *re-solved at the start of iteration k*,
    which is tighter than the recorded ``fun_lower[k-1]`` when iteration ``k``
    shrank ε (certificate loop or a failed attempt) or when the previous
    accepted trial solve stopped at its iteration cap short of ε; the check
    above can then fail although the step was certified.  With ``nu_inc``
    given, rows are split by whether ε was shrunk inside iteration ``k``
    (``eps[k] < nu_inc * eps[k-1]``).

    Returns a dict: ``checked``, ``violations``, ``worst_gap`` (largest
    ``fun_upper[k] - fun_lower[k-1]``), ``checked_unshrunk`` and
    ``violations_unshrunk`` (rows where ε was not shrunk).
    """
    n = bad = n_u = bad_u = 0
    worst = -math.inf
    for k in range(1, len(history)):
        if not history[k].get("accepted"):
            continue
        up, lo = history[k]["fun_upper"], history[k - 1]["fun_lower"]
        if up is None or lo is None or not (math.isfinite(up) and math.isfinite(lo)):
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


def first_cost_below(history, target, key="fun"):
    """The first cumulative cost at which ``history[key] <= target`` (``None`` if never)."""
    for row in history:
        v = row.get(key)
        if v is not None and math.isfinite(v) and v <= target:
            return row["cost"]
    return None


def value_at_cost(history, cost, key="fun"):
    """The value of ``key`` at the last row whose cost is ``<= cost`` (``None`` before the first row)."""
    out = None
    for row in history:
        if row["cost"] <= cost:
            out = row.get(key)
        else:
            break
    return out


def _column(history, key):
    return [row.get(key) for row in history]


def summarize_run(res, label, *, theta_limit=20, extra=None):
    """What ``metrics.json`` keeps of one run: final values, counts, checks and the history columns."""
    h = res["history"]
    theta = to_numpy(res["theta"])
    opts = res["options"]
    if res["method"] == "hoag":
        cert = None
    else:
        cert = certified_decrease(h, opts.get("nu_inc", 1.0) if res["method"] == "maid" else 1.0)
    eps = [row["eps"] for row in h]
    out = {
        "label": label, "method": res["method"], "status": res["status"], "message": res.get("message"),
        "nit": res["nit"],
        "fun": res["fun"], "fun_bounds": list(res["fun_bounds"]),
        "cost": res["n_lower_iter"] + res["n_cg_iter"], "n_lower_iter": res["n_lower_iter"],
        "n_cg_iter": res["n_cg_iter"], "wall_time": res["wall_time"],
        "n_accepted": int(sum(1 for row in h[1:] if row["accepted"])),
        "eps_first": eps[0] if eps else None, "eps_final": eps[-1] if eps else None,
        "eps_min": min(eps) if eps else None, "eps_max": max(eps) if eps else None,
        "eps_monotone": is_monotone(eps),
        "fun_increases": int(sum(1 for a, b in zip(h[:-1], h[1:])
                                 if b["fun"] is not None and a["fun"] is not None and b["fun"] > a["fun"])),
        "certified_decrease": cert,
        "options": {k: v for k, v in res["options"].items()},
        "history": {k: _column(h, k) for k in
                    ("iter", "cost", "fun", "fun_lower", "fun_upper", "eps", "delta", "step", "accepted",
                     "grad_norm", "omega", "time")},
    }
    if theta.size <= theta_limit:
        out["theta"] = theta
    else:
        out["theta_summary"] = {"size": int(theta.size), "min": float(theta.min()), "max": float(theta.max()),
                                "mean": float(theta.mean())}
    if extra:
        out.update(extra)
    return out


class FailedRun(dict):
    """Stand-in for a :class:`~varlearn.BilevelResult` of a run that raised (e.g. θ overflowed).

    Built from the history rows the callback saw (row 0, the starting point,
    is not passed to callbacks, so it is missing); ``status`` is ``"error"``.
    """

    def __init__(self, method, options, rows, theta, error, wall_time):
        from varlearn.bilevel.options import resolve_options  # noqa: PLC0415

        last = rows[-1] if rows else {}
        super().__init__(
            theta=theta, fun=last.get("fun", math.nan),
            fun_bounds=(last.get("fun_lower", math.nan), last.get("fun_upper", math.nan)),
            x=None, nit=len(rows), status="error", message=error, success=False,
            n_lower_iter=last.get("n_lower_iter", 0), n_cg_iter=last.get("n_cg_iter", 0), wall_time=wall_time,
            history=rows, method=method, options=resolve_options(method, options))


def guarded_minimize(problem, upper, theta0, method, options, callback=None,
                     errors=(ArithmeticError, ValueError, np.linalg.LinAlgError), progress_every=60.0):
    """``minimize_bilevel`` that survives a numerical failure of a run.

    Returns ``(result, error)``: the :class:`~varlearn.BilevelResult` and
    ``None``, or a :class:`FailedRun` (partial history, last θ) and the error
    text, so that one diverging baseline does not end the whole experiment.
    Prints one progress line (iteration, cost, loss, ε) at most every
    ``progress_every`` seconds (``None``: never).
    """
    rows = []
    last_theta = [theta0]
    last_print = [time.perf_counter()]

    def cb(r):
        rows.append(dict(r.row))
        last_theta[0] = r.theta
        now = time.perf_counter()
        if progress_every is not None and now - last_print[0] >= progress_every:
            last_print[0] = now
            row = r.row
            print(f"    ... {method}: iteration {row['iter']}, cost {row['cost']}, loss {fmt(row['fun'], '.6g')}, "
                  f"eps {fmt(row['eps'], '.2e')}", flush=True)
        if callback is not None:
            callback(r)

    t0 = time.perf_counter()
    try:
        return vl.minimize_bilevel(problem, upper, theta0, method, options=options, callback=cb), None
    except errors as exc:
        err = f"{type(exc).__name__}: {exc} (after {len(rows)} outer iterations)"
        return FailedRun(method, options, rows, last_theta[0], err, time.perf_counter() - t0), err


def fmt(v, spec=".4g"):
    """Format a number for the printed summary (``-`` for ``None``)."""
    if v is None:
        return "-"
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


# ---------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


_STYLES = {"maid": "-", "fixed": "--", "hoag": ":", "gd": "-."}


def _style(run):
    return run.get("linestyle") or _STYLES.get(run.get("method", ""), "-")


def _colors(plt, runs):
    """One colour per run; tab20 when the default cycle (10 colours) would repeat."""
    if len(runs) <= 10:
        return [run.get("color") or f"C{i}" for i, run in enumerate(runs)]
    cmap = plt.get_cmap("tab20")
    return [run.get("color") or cmap(i % 20) for i, run in enumerate(runs)]


def finish_figure(plt, fig, ax, path, title, n_runs):
    """Title, grid and legend (two columns beyond six runs), then save ``path`` as PNG and close.

    The PNG is written to a temporary file beside ``path`` and renamed, so an
    interrupted run never leaves a truncated figure.
    """
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if n_runs > 6 else 1)
    fig.tight_layout()
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def plot_loss_vs_cost(path, runs, *, fstar=None, title=None, ylabel=None, key="fun", logy=None):
    """Upper-level loss (or its gap ``f - f*`` when ``fstar`` is given) against cumulative cost.

    ``runs``: list of dicts with ``label``, ``method`` and ``history`` (the
    column dict of :func:`summarize_run`).  Log-scaled cost axis.  Drawn as a
    staircase: the loss at a cost is that of the last iterate completed by
    then (a straight line between two iterates far apart in cost would show
    losses no run had).
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=90)
    floor = None
    for run, color in zip(runs, _colors(plt, runs)):
        cost = np.asarray(run["history"]["cost"], dtype=float)
        val = np.asarray([np.nan if v is None else v for v in run["history"][key]], dtype=float)
        if fstar is not None:
            val = val - fstar
            pos = val[val > 0]
            floor = min(floor, pos.min()) if (floor is not None and pos.size) else (pos.min() if pos.size else floor)
        ax.plot(np.maximum(cost, 1.0), val, _style(run), label=run["label"], lw=1.2, color=color,
                drawstyle="steps-post")
    ax.set_xscale("log")
    if fstar is not None or logy:
        ax.set_yscale("log")
        if floor is not None and fstar is not None:
            ax.set_ylim(bottom=max(floor * 0.5, 1e-16))
    ax.set_xlabel("cost (lower-level + CG iterations)")
    ax.set_ylabel(ylabel or ("f - f*" if fstar is not None else "upper-level loss"))
    return finish_figure(plt, fig, ax, path, title, len(runs))


def plot_eps_path(path, runs, *, title=None, key="eps"):
    """Lower-level accuracy ε_k against the outer iteration (log–log).

    A run dict may carry ``eps0`` (the initial accuracy): it is drawn as a
    marker at iteration 0 joined to the first history row, whose ε is already
    the value after MAID's certificate loop of iteration 0.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=90)
    for run, color in zip(runs, _colors(plt, runs)):
        it = np.asarray(run["history"]["iter"], dtype=float)
        eps = np.asarray([np.nan if v is None else v for v in run["history"][key]], dtype=float)
        ax.plot(it + 1.0, eps, _style(run), label=run["label"], lw=1.0, color=color)
        if run.get("eps0") is not None and eps.size and key == "eps":
            ax.plot([0.8, 1.0], [run["eps0"], eps[0]], ":", color=color, lw=0.8)
            ax.plot([0.8], [run["eps0"]], "o", color=color, ms=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("outer iteration + 1 (dots: initial ε0)")
    ax.set_ylabel("lower-level accuracy ε" if key == "eps" else key)
    return finish_figure(plt, fig, ax, path, title, len(runs))
