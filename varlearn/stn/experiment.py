"""Building blocks of the STN front ends (``varlearn stn``, ``scripts/reproduce_stn.py``).

* :func:`make_hyper`: the standard tuned hyperparameters (:data:`HYPER_SPECS`)
  with their ranges and search boxes;
* :func:`split_by_image`: a seeded split of image indices into training and
  validation (never by patch);
* :func:`make_model`: a DnCNN or variational STN with the front ends' defaults;
* :func:`hyper_at_row`: the container at the λ of a history row (the λ the
  selected weights were evaluated at);
* :func:`equal_cost_search`: random or grid search over the same box at the
  cost of an STN run, optionally extended beyond it for the cost plot;
* :func:`quality`: PSNR/SSIM of a denoiser on noisy/clean image stacks;
* :func:`foe_baseline`: a Field of Experts learned by MAID on central crops
  of training images, evaluated on the test images (a baseline of the
  reproduction);
* figures: :func:`plot_val_psnr`, :func:`plot_schedules`, :func:`plot_cost`.

References
----------
S. Roth and M. J. Black, "Fields of Experts", Int. J. Comput. Vis.
82:205-229, 2009 (the FoE baseline).

M. S. Salehi, S. Mukherjee, L. Roberts and M. J. Ehrhardt, "An adaptively
inexact first-order method for bilevel optimization with application to
hyperparameter learning", arXiv:2308.10098 (MAID, which learns it).

M. MacKay et al., "Self-Tuning Networks", ICLR 2019, arXiv:1903.03088 (the
cost comparison: best validation loss so far against time, STN against random
search, grid search and Bayesian optimisation).
"""
from __future__ import annotations

import math

import numpy as np

from .. import bilevel as _bilevel
from ..backend import get_namespace, to_device, to_numpy
from ..evaluation import evaluate_theta, image_quality
from ..metrics import psnr_per_image
from ..plotting import _figure, save_figure
from ..problems import DenoisingProblem, SquaredError
from ..regularizers import FieldOfExperts
from .baselines import (
    best_so_far,
    grid_search,
    n_trials,
    random_search,
    random_stream,
    sample_random,
    train_fixed,
    trial_record,
)
from .hyperparameters import Hyperparameter, HyperParameters, inv_softplus
from .io import denoise_stn
from .models import DnCNNSTN, VariationalSTN

__all__ = ["HYPER_SPECS", "DEFAULT_TUNE", "MODEL_DEFAULTS", "make_hyper", "split_by_image", "make_model",
           "hyper_at_row", "equal_cost_search", "compare_at_equal_cost", "quality", "foe_baseline", "FOE_MAID_OPTIONS",
           "mean_std", "plot_val_psnr",
           "plot_schedules", "plot_cost", "stn_curve", "read_history_csv"]

#: the tunable hyperparameters of the front ends: initial value, range, transform, search box
HYPER_SPECS = {
    # training noise sigma*exp(a); the box centre a = 0 is "train at the target noise level"
    "noise": {"init": 0.0, "range": (-1.5, 1.5), "transform": "identity", "box": (-1.0, 1.0)},
    # kappa * 1/2 sum |W|^2 over the kernels; the box centre is 1e-5
    "weight_decay": {"init": 1e-5, "range": (1e-9, 1e-2), "transform": "log", "box": (1e-7, 1e-3),
                     "per_example": False},
    "dropout": {"init": 0.05, "range": (0.0, 0.5), "transform": "sigmoid", "box": (0.0, 0.3)},
    "augment": {"init": 3.5, "range": (0.0, 8.0), "transform": "sigmoid", "box": (0.0, 8.0), "discrete": True},
}
DEFAULT_TUNE = ("noise", "weight_decay")
#: network sizes of the front ends (small enough to train on a CPU in a minute or two)
MODEL_DEFAULTS = {"dncnn": {"depth": 5, "channels": 16, "kernel_size": 3},
                  "vn": {"n_stages": 5, "n_filters": 8, "size": 5}}


def make_hyper(names=DEFAULT_TUNE, init=None, sigma0=0.5):
    """A :class:`HyperParameters` of the :data:`HYPER_SPECS` named in ``names`` (in that order).

    ``init`` maps names to initial constrained values (default: the specs'
    ``init``); ``sigma0`` is the initial perturbation scale.
    """
    names = list(names)
    if not names:
        raise ValueError("names must name at least one hyperparameter, got none")
    unknown = [n for n in names if n not in HYPER_SPECS]
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {unknown}; known: {', '.join(HYPER_SPECS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"names must be distinct, got {names}")
    init = dict(init or {})
    bad = sorted(set(init) - set(names))
    if bad:
        raise ValueError(f"init names hyperparameters that are not tuned: {bad} (tuned: {names})")
    specs = []
    for n in names:
        s = dict(HYPER_SPECS[n])
        v = init.get(n, s.pop("init"))
        s.pop("init", None)
        specs.append(Hyperparameter(n, v, s.pop("range"), sigma0=sigma0, **s))
    return HyperParameters(specs)


def split_by_image(n_images, n_val, seed):
    """Seeded split of ``range(n_images)`` into sorted ``(train, val)`` index lists, ``n_val`` for validation."""
    if not (isinstance(n_images, (int, np.integer)) and n_images >= 2):
        raise ValueError(f"n_images must be an integer >= 2 (one for training, one for validation), got {n_images!r}")
    if not (isinstance(n_val, (int, np.integer)) and 1 <= n_val < n_images):
        raise ValueError(f"n_val must be an integer in [1, {n_images - 1}], got {n_val!r}")
    perm = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5717])).permutation(int(n_images))
    return sorted(int(i) for i in perm[n_val:]), sorted(int(i) for i in perm[:n_val])


def make_model(kind, n_hyper, config=None, *, dtype=np.float32, xp=None, seed=0):
    """A ``"dncnn"`` or ``"vn"`` STN model: :data:`MODEL_DEFAULTS` updated by ``config``, weights from ``seed``."""
    if kind not in MODEL_DEFAULTS:
        raise ValueError(f"model must be one of {', '.join(MODEL_DEFAULTS)}, got {kind!r}")
    cfg = {**MODEL_DEFAULTS[kind], **(config or {})}
    cls = DnCNNSTN if kind == "dncnn" else VariationalSTN
    return cls(n_hyper, **cfg, dtype=dtype, xp=xp, rng=np.random.default_rng(np.random.SeedSequence([seed, 0xA11])))


def hyper_at_row(hyper, row):
    """A copy of ``hyper`` with ``u`` (and ``rho``) of a trainer history row (``u_<name>``, ``sigma_<name>``)."""
    h = hyper.copy()
    for i, name in enumerate(h.names):
        h.u[i] = float(row["u_" + name])
        s = float(row.get("sigma_" + name, math.nan))
        if math.isfinite(s) and s > 0:
            h.rho[i] = float(inv_softplus(s))
    return h


def equal_cost_search(kind, model, hyper, train, val, *, sigma, stn_cost, trial_options, seed=0, factor=1.0,
                      grid_names=None, callback=None):
    """Random or grid search at the cost of an STN run; random search optionally continued beyond it.

    Parameters
    ----------
    kind : {"random", "grid"}
    model : STNModel
        Initial weights of every trial; holds the equal-cost winner's weights at the end.
    hyper : HyperParameters
        The STN's container: the same names and boxes are searched.
    train, val, sigma
        As for :func:`~varlearn.stn.train.train_stn`.
    stn_cost : float
        ``C_STN``, the STN run's cost (``result.cost``): the search runs
        ``K = floor(C_STN / C_trial)`` trials (:mod:`varlearn.stn.baselines`).
    trial_options : dict
        Trainer options of one trial (``max_steps``/``max_epochs``, no budget or time limit).
    factor : float >= 1
        Random search only: continue with the next points of the same random
        stream up to ``floor(factor * C_STN / C_trial)`` trials in all, for the
        cost plot (the equal-cost answer is the best of the first ``K``).  A
        grid is not continued (a larger grid is another grid).
    grid_names : list of str, optional
        The grid's axes (default: every hyperparameter).
    callback : callable, optional
        Called with every trial's dict.

    Returns
    -------
    dict
        ``equal`` (the :class:`~varlearn.stn.baselines.SearchResult` at
        ``C_STN``), ``trials`` and ``curve`` (all trials, continued ones
        included; ``curve`` as in ``SearchResult``), ``k_equal`` (K), ``wall_time``.
    """
    if kind not in ("random", "grid"):
        raise ValueError(f"kind must be 'random' or 'grid', got {kind!r}")
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor >= 1):
        raise ValueError(f"factor must be a finite number >= 1, got {factor!r}")
    init = {k: model.xp.array(v, copy=True) for k, v in model.state().items()}
    kw = {"sigma": sigma, "budget": float(stn_cost), "trial_options": trial_options, "seed": seed,
          "callback": callback}
    if kind == "grid":
        eq = grid_search(model, hyper, train, val, names=grid_names, **kw)
    else:
        eq = random_search(model, hyper, train, val, **kw)
    won = {k: model.xp.array(v, copy=True) for k, v in model.state().items()}
    trials = list(eq.trials)
    curve = {k: list(v) for k, v in eq.curve.items()}
    wall = eq.wall_time
    if kind == "random" and factor > 1:
        k_all = n_trials(float(factor) * stn_cost, eq.trial_cost)
        # the stream random_search draws its points from; checked against its trials
        points = sample_random(hyper, k_all, random_stream(seed))
        same = all(math.isclose(points[i][k], v, rel_tol=1e-9, abs_tol=1e-12) or k == "augment"
                   for i, t in enumerate(trials) for k, v in t["values"].items())
        if not same:
            raise RuntimeError("the continued random search does not reproduce the points of random_search")
        for i in range(len(trials), k_all):
            model.load_state(init)
            r = train_fixed(model, hyper, points[i], train, val, sigma=sigma, options=trial_options, seed=seed)
            t = {**trial_record(i, r, r.wall_time), "continued": True}
            trials.append(t)
            wall += r.wall_time
            best = min(trials, key=lambda x: x["val_loss"])
            for key, v in (("cost", curve["cost"][-1] + r.cost), ("time", curve["time"][-1] + r.wall_time),
                           ("best_val_loss", best["val_loss"]), ("best_val_psnr", best["val_psnr"])):
                curve[key].append(v)
            if callback is not None:
                callback(t)
    model.load_state(won)
    return {"equal": eq, "trials": trials, "curve": curve, "k_equal": eq.n_trials, "wall_time": wall}


def compare_at_equal_cost(make, train, val, test_clean, test_noisy, *, sigma, options, seed=0, factor=1.0,
                          grid_names=("noise",), tune=DEFAULT_TUNE, log=None):
    """One STN run against random and grid search at its cost, all evaluated on the same test images.

    Parameters
    ----------
    make : callable
        ``make(n_hyper)`` returns a fresh model with the same initial weights every call.
    train, val : lists of 2-D arrays
        Clean training and validation images (model's namespace), split by image.
    test_clean, test_noisy : host stacks
        The test images and their noisy versions (fixed noise).
    sigma : float
        Target noise level.
    options : dict
        Trainer options of the STN run (with ``max_steps`` or ``max_epochs``);
        a trial of the searches uses the same options and length.
    factor : float
        Extend the searches to ``factor`` times the STN cost (for the cost plot).
    log : callable, optional
        ``log(line)`` for progress lines.

    Returns
    -------
    dict
        ``stn``, ``random``, ``grid``: ``val_psnr``, ``values`` (λ), ``test``
        (:func:`quality` without the images), ``cost``; the STN entry adds
        ``history``, ``wall_time``, ``n_steps``, the search entries ``n_trials``,
        ``trial_cost``, ``trials`` and ``curve`` (of the extended search).
    """
    from .train import train_stn  # noqa: PLC0415

    log = log or (lambda line: None)
    hyper = make_hyper(tune)
    model = make(hyper.n)
    r = train_stn(model, hyper, train, val, sigma=sigma, options={**options, "restore_best": True}, seed=seed)
    h_best = hyper_at_row(hyper, r.best)
    q, _ = quality(model, h_best, test_clean, test_noisy)
    out = {"stn": {"val_psnr": r.best["val_psnr"], "values": h_best.values(), "final_values": r.hyper,
                   "cost": r.cost, "wall_time": r.wall_time, "n_steps": r.n_steps, "n_hyper_steps": r.n_hyper_steps,
                   "status": r.status, "noisy_val_psnr": r.noisy_psnr, "history": r.history, "test": q}}
    log(f"STN: val {r.best['val_psnr']:.3f} dB test {q['psnr_mean']:.3f} dB (noisy {q['noisy_psnr_mean']:.2f}) "
        f"λ {h_best.values()} cost {r.cost:.4g} in {r.wall_time:.1f} s")
    trial = {k: v for k, v in options.items() if k not in ("budget", "time_limit")}
    trial["max_steps"] = r.n_steps
    for kind in ("random", "grid"):
        model = make(hyper.n)
        s = equal_cost_search(kind, model, make_hyper(tune), train, val, sigma=sigma, stn_cost=r.cost,
                              trial_options=trial, seed=seed, factor=factor,
                              grid_names=list(grid_names) if kind == "grid" else None)
        eq = s["equal"]
        entry = {"n_trials": eq.n_trials, "trial_cost": eq.trial_cost, "budget": r.cost, "trials": s["trials"],
                 "curve": s["curve"], "wall_time": s["wall_time"], "cost": eq.total_cost}
        if eq.best is not None:
            q, _ = quality(model, make_hyper(tune), test_clean, test_noisy, values=eq.best["values"])
            best_all = min(s["trials"], key=lambda x: x["val_loss"])
            entry.update(val_psnr=eq.best["val_psnr"], values=eq.best["values"], test=q,
                         continued_best_val_psnr=best_all["val_psnr"])
            log(f"{kind} search: {eq.n_trials} trial(s) at equal cost, val {eq.best['val_psnr']:.3f} dB test "
                f"{q['psnr_mean']:.3f} dB λ {eq.best['values']}; best of {len(s['trials'])} trial(s): "
                f"val {best_all['val_psnr']:.3f} dB")
        else:
            entry.update(val_psnr=math.nan, values=None, test=None)
            log(f"{kind} search: no trial fits in the STN cost")
        out[kind] = entry
    return out


def mean_std(values):
    """``{"mean", "std", "n", "values"}`` of finite numbers (std with ``ddof=0``; NaN when empty)."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    a = np.array(v, dtype=float)
    return {"mean": float(a.mean()) if v else math.nan, "std": float(a.std()) if v else math.nan, "n": len(v),
            "values": v}


def quality(model, hyper, clean, noisy, *, values=None):
    """Denoise ``noisy`` (host stacks) with the model at λ; returns the image quality and the denoised stack.

    ``{"psnr_mean", "psnr_batch", "ssim_mean", "clipped", "noisy_psnr_mean",
    "psnr_per_image"}`` (:func:`varlearn.evaluation.image_quality`, estimate
    clipped to [0, 1]) and the denoised images (host, float64).
    """
    xp = model.xp
    den = []
    for y in noisy:
        den.append(to_numpy(denoise_stn(to_device(np.asarray(y), xp), model, hyper, values=values)))
    den = np.stack(den).astype(np.float64)
    clean = np.asarray(clean, dtype=np.float64)
    q = image_quality(den, clean)
    q["psnr_per_image"] = [float(v) for v in psnr_per_image(np.clip(den, 0, 1), clean)]
    q["noisy_psnr_mean"] = float(np.mean(psnr_per_image(np.asarray(noisy, dtype=np.float64), clean)))
    return q, den


#: MAID options of :func:`foe_baseline` (those of ``scripts/reproduce_foe.py``; certificate off by default)
FOE_MAID_OPTIONS = {"eps0": 0.1, "delta0": 0.1, "step0": 0.01, "rho": 0.5, "nu": 0.5, "nu_inc": 1.05, "bound": False}


def foe_baseline(clean, noisy, test_clean, test_noisy, *, n_filters=8, size=5, crop=64, budget=2e4, max_iter=10000,
                 bound=False, seed=0, eval_tol=1e-3):
    """A Field of Experts learned by MAID on central crops of training images, evaluated on test images.

    Parameters
    ----------
    clean, noisy : arrays, shape (n, H, W)
        Training images and their noisy versions (one namespace, as every
        array here; the learning problem takes ``xp`` from them).
    test_clean, test_noisy : arrays, shape (m, H', W')
        Test images, evaluated by one lower-level solve each at the learned θ.
    n_filters, size : int
        The :class:`~varlearn.FieldOfExperts` (filters initialised from ``seed``).
    crop : int
        MAID learns on the central ``crop`` x ``crop`` part of every training
        image (``crop`` at most H and W), to bound the cost on a CPU.
    budget, max_iter : float, int
        MAID stops when its cost (lower-level + CG iterations) reaches
        ``budget`` or after ``max_iter`` outer iterations, whichever comes
        first; ``status`` says which (``success`` is not expected).
    bound : bool
        MAID's error certificate (analytic FoE constants) on or off
        (:data:`FOE_MAID_OPTIONS`; off by default: with it off MAID reached the
        lower loss at equal cost in ``reproduce_foe.py``'s CPU runs).
    eval_tol : float
        Lower-level tolerance of the evaluation solves
        (:func:`~varlearn.evaluation.evaluate_theta`).

    Returns
    -------
    dict
        ``theta``, ``status``, ``nit``, ``cost``, ``fun`` (final upper loss),
        ``train`` (on the crops) and ``test``: :func:`~varlearn.evaluation.evaluate_theta`
        at the learned θ; ``wall_time`` (MAID only), ``scale``.
    """
    import time  # noqa: PLC0415

    h, w = clean.shape[-2:]
    if not (isinstance(crop, (int, np.integer)) and size <= crop <= min(h, w)):
        raise ValueError(f"crop must be an integer in [{size}, {min(h, w)}] (filter size .. image side), got {crop!r}")
    if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
        raise ValueError(f"budget must be a positive number, got {budget!r}")
    xp = get_namespace(clean, noisy)
    i, j = (h - crop) // 2, (w - crop) // 2
    clean_c, noisy_c = clean[:, i:i + crop, j:j + crop], noisy[:, i:i + crop, j:j + crop]
    reg = FieldOfExperts(n_filters=n_filters, size=size, rng=seed)
    t0 = time.perf_counter()
    upper = SquaredError(clean_c)
    res = _bilevel.minimize_bilevel(DenoisingProblem(noisy_c, reg), upper, to_device(reg.init_params(), xp), "maid",
                                    options={**FOE_MAID_OPTIONS, "bound": bool(bound), "budget": float(budget),
                                             "maxiter": int(max_iter)})
    wall = time.perf_counter() - t0
    theta = to_numpy(res.theta)
    th = to_device(theta, xp)
    train = evaluate_theta(DenoisingProblem(noisy_c, reg), upper, th, eval_tol, x0=res.x)
    test = evaluate_theta(DenoisingProblem(test_noisy, reg), SquaredError(test_clean), th, eval_tol)
    return {"theta": [float(v) for v in theta], "status": res.status, "nit": int(res.nit),
            "cost": int(res.n_lower_iter + res.n_cg_iter), "fun": float(res.fun), "train": train, "test": test,
            "wall_time": wall, "scale": {"n_filters": n_filters, "size": size, "crop": crop, "n_images": len(clean),
                                         "n_params": int(reg.n_params), "budget": float(budget),
                                         "max_iter": int(max_iter), "bound": bool(bound)}}


# ---------------------------------------------------------------------------- figures
def _save(fig, path):
    fig.tight_layout()
    return save_figure(fig, path)  # PNG written atomically


def plot_val_psnr(history, path, noisy_psnr=None):
    """Validation PSNR (unperturbed λ, fixed crops) against wall time, with its running best."""
    t = np.array([r["time"] for r in history], dtype=float)
    v = np.array([r["val_psnr"] for r in history], dtype=float)
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    ax.plot(t, v, "o-", ms=3, label="validation PSNR")
    ax.plot(t, np.maximum.accumulate(v), "--", label="best so far")
    if noisy_psnr is not None:
        ax.axhline(noisy_psnr, color="gray", lw=1, label=f"noisy input ({noisy_psnr:.2f} dB)")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("PSNR (dB)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_schedules(histories, path):
    """Hyperparameter trajectories against weight steps; ``histories`` maps a label to history rows."""
    if isinstance(histories, list):
        histories = {"": histories}
    names = [k for k in HYPER_SPECS if any(k in h[0] for h in histories.values() if h)]
    fig = _figure(4.2 * max(len(names), 1), 3.4)
    for j, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), j + 1)
        for label, rows in histories.items():
            if rows and name in rows[0]:
                ax.plot([r["step"] for r in rows], [r[name] for r in rows], label=label or None)
        if HYPER_SPECS[name]["transform"] == "log":
            ax.set_yscale("log")
        ax.set_xlabel("weight step")
        ax.set_title({"noise": "noise: a, sigma_train = sigma exp(a)"}.get(name, name), fontsize=9)
        ax.grid(alpha=0.3)
        if len(histories) > 1 and j == 0:
            ax.legend(fontsize=7)
    return _save(fig, path)


def plot_cost(curves, path, *, x="cost", stn_cost=None, title=None, ymin=None):
    """Best validation PSNR so far against cost (or seconds, ``x="time"``) for every method.

    ``curves`` maps a label to ``(xs, best_psnr)`` arrays, drawn as staircases
    with a marker at every point and continued to the largest x of all curves;
    ``stn_cost`` draws the equal-cost line, ``ymin`` the lower y limit (e.g. the
    noisy PSNR, so that an untrained network's first value does not flatten the plot).
    """
    fig = _figure(6.5, 4.2)
    ax = fig.add_subplot()
    x_end = max((float(np.max(xs)) for xs, _ in curves.values() if len(xs)), default=1.0)
    for label, (xs, ys) in curves.items():
        xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
        if not xs.size:
            continue
        line = ax.step(np.append(xs, x_end), np.append(ys, ys[-1]), where="post", label=label)[0]
        ax.plot(xs, ys, "o", ms=3, color=line.get_color())
    if stn_cost is not None:
        ax.axvline(stn_cost, color="gray", ls=":", lw=1, label="cost of the STN run")
    if ymin is not None:
        ax.set_ylim(bottom=ymin)
    ax.set_xlabel("cost (pixel passes)" if x == "cost" else "wall time (s)")
    ax.set_ylabel("best validation PSNR so far (dB)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def read_history_csv(path):
    """The rows of a ``history.csv`` written by ``varlearn stn`` (numbers as floats, the rest as text)."""
    import csv  # noqa: PLC0415

    def conv(v):
        try:
            return float(v)
        except ValueError:
            return v

    with open(path, newline="", encoding="utf-8") as f:
        return [{k: conv(v) for k, v in row.items()} for row in csv.DictReader(f)]


def stn_curve(history, x="cost"):
    """``(xs, best PSNR so far)`` of an STN history (for :func:`plot_cost`)."""
    cost, t, best = best_so_far(history)
    return (cost if x == "cost" else t), best
