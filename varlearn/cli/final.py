"""The final phase of ``varlearn learn``: tight solves, PSNR, figures, ``params.json`` and an honest summary.

How a run ended (:func:`outcome`):

* ``success`` — the requested accuracy was met: status ``gradient_tol``, or
  ``accuracy_floor`` when :func:`~varlearn.minimize_bilevel` certifies
  stationarity there (``result.success``).
* a *limit* — ``maxiter``, ``budget_exhausted`` or ``time_limit``: the results
  are written and the exit status is 0, with a warning line saying which limit
  stopped the run before the requested accuracy was met.
* ``accuracy_floor`` otherwise — MAID needed an accuracy below its floor to
  certify a descent direction, and stationarity is not certified (in float32
  this can happen early): exit status 0 with a warning.
* anything else (``linesearch_failed``, ``lower_failed``...) — a failure, exit status 1.

Independently, when no outer iteration accepted a step, θ = θ0 and a warning says so.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from .. import io
from ..backend import to_device, to_numpy
from ..metrics import psnr_per_image
from ..results import ConvergenceWarning
from ..solvers import solve_lower
from . import run as runfolder
from .common import versions
from .errors import EXIT_OK, Failure, note, warn

#: accuracy of the final lower-level solves: root-mean-square distance per pixel
DEFAULT_PIXEL_TOL = 1e-4
FINAL_MAXITER = 20000
#: statuses that can mean "the requested accuracy was met" (when ``result.success`` says so)
MET_STATUSES = ("gradient_tol", "accuracy_floor")
#: statuses that mean "a limit the user set stopped the run", with the flag that sets it
LIMIT_FLAGS = {"maxiter": "--max-iter", "budget_exhausted": "--budget", "time_limit": "--time-limit"}
#: how the PSNRs are computed (written to params.json and said in the summary)
PSNR_CONVENTION = ("PSNR = 10 log10(1 / MSE) per image (varlearn.metrics.psnr_per_image), images in [0, 1], "
                   "no clipping: the noisy and denoised values are compared as computed, values outside [0, 1] "
                   "included")


def final_solve(problem, theta, tol=DEFAULT_PIXEL_TOL, maxiter=FINAL_MAXITER):
    """Solve the lower level to an RMS distance ``tol`` per pixel; returns ``(result, warning messages)``."""
    n_pix = int(np.prod(problem.x_shape))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        r = solve_lower(problem, theta, tol * math.sqrt(n_pix), maxiter=maxiter)
    return r, [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]


def _solve_host(problem, theta, label):
    r, messages = final_solve(problem, theta)
    for m in messages:
        warn(f"{label}: {m}")
    return to_numpy(r.x).astype(np.float64)


def n_accepted(history):
    """Outer iterations (rows after the start) that accepted a step."""
    return sum(1 for row in history[1:] if row.get("accepted") in (True, "True"))


def steps_taken(res):
    """Steps that moved θ: accepted steps of the full-batch methods, every step of ISGD (no line search)."""
    return int(res.nit) if res.get("method") == "isgd" else n_accepted(res.history)


def _budget_limit(options):
    """What the ``budget_exhausted`` status refers to: ``(text, flag)`` of the finite budget(s)."""
    parts = []
    if math.isfinite(options.get("budget", math.inf)):
        parts.append((f"a cost budget of {options['budget']:g}", "--budget"))
    if math.isfinite(options.get("image_budget", math.inf)):
        parts.append((f"an image budget of {options['image_budget']:g} image-iterations", "--image-budget"))
    parts = parts or [("a cost budget", "--budget")]
    return " / ".join(t for t, _ in parts), "/".join(f for _, f in parts)


def json_options(options):
    """The options as written to ``params.json``: objects that are not JSON (an executor, a callable) by name."""
    out = {}
    for k, v in options.items():
        if v is None or isinstance(v, (bool, int, float, str, list, tuple)):
            out[k] = list(v) if isinstance(v, tuple) else v
        else:
            out[k] = type(v).__name__
    return out


def outcome(res):
    """``(success, exit_ok, warnings)`` of a :class:`~varlearn.bilevel.BilevelResult` (see the module notes)."""
    status = res.status
    lines = []
    success = status in MET_STATUSES and bool(res.success)
    exit_ok = success or status in LIMIT_FLAGS or status == "accuracy_floor"
    if status in LIMIT_FLAGS:
        o = res.options
        maxiter = o.get("maxiter")
        flag = LIMIT_FLAGS[status]
        if status == "budget_exhausted":
            limit, flag = _budget_limit(o)
        elif status == "maxiter" and res.get("epoch") is not None and res["epoch"] >= o.get("max_epochs", math.inf):
            limit, flag = f"{o['max_epochs']} epochs", "--epochs"  # ISGD's epoch limit has the status maxiter
        else:
            limit = {"maxiter": f"{maxiter} outer iterations",
                     "time_limit": f"a time limit of {o.get('time_limit'):g} s"}[status]
        what = ("; ISGD has no stopping test of its own, so every run ends on a limit"
                if res.get("method") == "isgd" else " before meeting the requested accuracy")
        lines.append(f"the run stopped on a limit ({status}: {limit}, {flag}){what}; the result may not be "
                     f"converged (look at the loss in history.csv or figures/loss.png, or continue with --resume "
                     f"and a larger {flag})")
    elif status == "accuracy_floor" and not success:
        lines.append("the run stopped at the accuracy floor (accuracy_floor): no accuracy above the floor certified a "
                     "descent direction, so θ is stationary only to the attainable accuracy (with --dtype float32 "
                     "this can happen early: try float64)")
    if steps_taken(res) == 0:
        lines.append(f"no step was accepted in {res.nit} outer iteration(s): the learned θ equals θ0 (try another "
                     f"--step0, or more iterations)")
    return success, exit_ok, lines


def _summary(model, params):
    if model == "tv":
        return f"weight {params['weight']:.4g}, smoothing {params['smoothing']:.4g}"
    return (f"global weight {params['global_weight']:.4g}, {params['n_filters']} filters "
            f"{params['size']}x{params['size']}")


def _plot_rows(history, method):
    """History rows as the figures read them; ISGD: the batch loss against image-iterations, per-image ε."""
    if method != "isgd":
        return history
    return [{"iter": r["iter"], "cost": r.get("image_cost"), "wall_time": r.get("wall_time", r.get("time")),
             "fun": r.get("fun_batch"), "fun_lower": math.nan, "fun_upper": math.nan, "eps": r.get("eps_image"),
             "delta": r.get("delta"), "step": r.get("step"), "accepted": True} for r in history]


def _write_figures(run, model, method, history, names, clean, noisy, x0, x1, psnr, params):
    from .. import plotting

    figs = run / runfolder.FIGURES_DIR
    figs.mkdir(exist_ok=True)
    title = "Mini-batch loss against image-iterations (ISGD)" if method == "isgd" else "Upper-level loss"
    history = _plot_rows(history, method)
    written = [plotting.plot_loss(history, figs / "loss.png", title=title),
               plotting.plot_accuracy(history, figs / "accuracy.png"),
               plotting.plot_steps(history, figs / "steps.png"),
               plotting.plot_psnr(names, {"noisy": psnr["noisy"], "initial θ": psnr["initial"],
                                          "learned θ": psnr["learned"]}, figs / "psnr.png"),
               plotting.plot_examples(clean, noisy, x1, names, figs / "examples.png")]
    if model == "foe":
        written.append(plotting.plot_filters(np.asarray(params["filters"]), figs / "filters.png",
                                             weights=np.asarray(params["weights"]) * params["global_weight"],
                                             smoothings=params["smoothings"]))
    return [str(Path(p).relative_to(run)) for p in written]


def _loss_entries(res, clean, x1):
    """``fun`` and ``fun_bounds`` for params.json; ISGD: the full training loss at the final tight solve."""
    if res.get("method") != "isgd":
        return {"fun": res.fun, "fun_bounds": list(res.fun_bounds)}
    fun = float(0.5 * np.mean(np.sum((x1 - clean) ** 2, axis=(-2, -1))))
    return {"fun": fun, "fun_bounds": [math.nan, math.nan], "fun_batch": res.get("fun_batch"),
            "epoch": res.get("epoch"), "image_cost": res.get("image_cost"),
            "fun_note": "fun: the training loss (mean over images of 1/2 ||x - clean||^2) at the final solve to "
                        "the PSNR tolerance; fun_batch: the last mini-batch's loss"}


def _thread_policy(backend):
    """The package's thread policy in effect (``varlearn.thread_info()``); ``None`` on the GPU."""
    if backend != "numpy":
        return None
    from .. import _accel

    return _accel.thread_info()


def finish(s, res, threads, quiet=False, figures=True):
    """Tight solves at θ0 and θ, PSNR, history.csv, figures, params.json, summary; returns the exit status."""
    run, cfg, problem = s["run"], s["cfg"], s["problem"]
    model = cfg["model"]["model"]
    config = {k: v for k, v in cfg["model"].items() if k != "model"}
    runfolder.HistoryWriter(run / runfolder.HISTORY_FILE).write(res.history)
    theta = to_numpy(res.theta).astype(np.float64)
    params = io.natural_units(s["reg"], theta)
    x0 = _solve_host(problem, to_device(s["theta0"], s["backend"]), "initial θ")
    x1 = _solve_host(problem, res.theta, "learned θ")
    psnr = {"noisy": psnr_per_image(s["noisy"], s["clean"]).tolist(),  # data_range 1, no clipping
            "initial": psnr_per_image(x0, s["clean"]).tolist(),
            "learned": psnr_per_image(x1, s["clean"]).tolist()}
    fig_error, written = None, []
    try:
        if figures:
            written = _write_figures(run, model, cfg["method"], res.history, s["names"], s["clean"], s["noisy"],
                                     x0, x1, psnr, params)
    except Exception as exc:  # noqa: BLE001  (figures are secondary: keep the results, report at the end)
        fig_error = f"{type(exc).__name__}: {exc}"
    success, exit_ok, stop_warnings = outcome(res)
    means = {k: float(np.mean(v)) for k, v in psnr.items()}
    io.save_params(
        run / io.PARAMS_FILE, model, config, theta, regularizer=s["reg"],
        theta0=[float(v) for v in s["theta0"]], data=s["data_desc"], method=cfg["method"],
        options=json_options(res.options),
        status=res.status, message=res.message, success=success, warnings=stop_warnings,
        steps_accepted=steps_taken(res), **_loss_entries(res, s["clean"], x1),
        nit=int(res.nit), n_lower_iter=int(res.n_lower_iter),
        n_cg_iter=int(res.n_cg_iter), wall_time=res.wall_time,
        psnr={"convention": PSNR_CONVENTION, "noisy_mean": means["noisy"], "initial_mean": means["initial"],
              "learned_mean": means["learned"],
              "per_image": [{"name": n, "noisy": a, "initial": b, "learned": c}
                            for n, a, b, c in zip(s["names"], psnr["noisy"], psnr["initial"], psnr["learned"])]},
        backend=s["backend"], dtype=cfg["dtype"], threads=threads, thread_policy=_thread_policy(s["backend"]),
        files={"config": runfolder.CONFIG_FILE, "checkpoint": runfolder.CHECKPOINT_FILE,
               "history": runfolder.HISTORY_FILE, "figures": written},
        figures_error=fig_error, versions=versions(include_cupy=s["backend"] == "cupy"), finished=runfolder.now(),
    )
    if not quiet:
        print(f"varlearn: learned {_summary(model, params)}; status {res.status} after {res.nit} iterations "
              f"({res.wall_time:.1f}s); mean PSNR {means['noisy']:.2f} dB noisy -> {means['learned']:.2f} dB "
              f"denoised (images in [0, 1], not clipped); wrote "
              f"{run / io.PARAMS_FILE}", flush=True)
    for line in stop_warnings:
        warn(line)
    if fig_error is not None:
        raise Failure(f"the results are in {run} but the figures could not be drawn: {fig_error}")
    if not exit_ok:
        raise Failure(f"learning stopped without success ({res.status}: {res.message}); results written to {run}")
    if success and not quiet:
        note(f"the requested accuracy was met ({res.status})")
    return EXIT_OK
