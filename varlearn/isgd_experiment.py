"""ISGD against MAID at equal image cost: the library side of ``scripts/reproduce_isgd.py`` and ``scripts/bench/``.

Two learning problems (:class:`Task`):

* :func:`tv_task` -- the Kodak TV problem of REPRODUCTION.md: the 24 Kodak
  images at 96×96 gray, σ = 0.1 (noise ``default_rng(19)``), anisotropic
  smoothed TV, θ0 = (−5, −5), f* = 8.34624; held out: scikit-image's built-in
  images at 96×96 (the Kodak images are all training images here).
* :func:`foe_task` -- a Field of Experts learned from many crops of the native
  gray Kodak images 5–24 (non-overlapping tiles, a seeded choice of an equal
  number per image); held out: centre crops of Kodak 1–4 and of the built-in
  images at native resolution.  The scale (filters, crops, crop size) is an
  argument and is recorded in :attr:`Task.scale`.

A comparison (:func:`compare`) runs every :class:`RunSpec` (MAID, ISGD with
SGD or Adam and decaying or constant schedules) with the same ``image_budget``
(stochastic-spec §4.3: one FISTA or CG iteration on one image costs 1) and
evaluates, at given fractions of the budget, the parameters the run had reached
*at that cost or less* (its θ after the last outer iteration whose cumulative
``image_cost`` is at most the fraction times the budget): the full training
loss f(θ) from tight lower-level solves, and at the end the PSNR on the
training and held-out images.  The evaluation solves are not counted in the
cost.  :func:`claims` turns the results into plain statements (ISGD against
MAID, accuracy schedule against step schedule, Adam against SGD).

References
----------
M. S. Salehi, S. Mukherjee, L. Roberts, M. J. Ehrhardt, "Bilevel learning with
inexact stochastic gradients", SSVM 2025 (arXiv:2412.12049), and "Bilevel
learning via inexact stochastic gradient descent" (arXiv:2511.06774).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time

import numpy as np

from .backend import to_device, to_numpy
from .bilevel import minimize_bilevel
from .datasets import builtin_images, center_crop, kodak, shared_data_dir
from .evaluation import TightSolver, image_quality
from .problems import DenoisingProblem, SquaredError
from .regularizers import FieldOfExperts, TotalVariation

logger = logging.getLogger("varlearn")

__all__ = ["Task", "RunSpec", "tv_task", "foe_task", "kodak_crops", "tv_runs", "foe_runs", "run_one", "baseline",
           "compare", "summary", "claims", "table", "plot_curves", "build", "cost_to_reach", "KODAK_TV", "FOE_CPU"]

#: the Kodak TV setting of REPRODUCTION.md (reproduce_tv.py)
KODAK_TV = {"n_images": 24, "size": 96, "sigma": 0.1, "noise_seed": 19, "theta0": (-5.0, -5.0), "f_star": 8.34624}
#: the reduced FoE scale that fits the 2-core CPU (stochastic-spec §6.2 asks for 16 filters 5×5 and 640 crops)
FOE_CPU = {"n_filters": 8, "filter_size": 5, "n_crops": 96, "crop": 64, "sigma": 0.1, "seed": 31,
           "heldout_crop": 128}
BUILTIN = ("camera", "moon", "coins", "astronaut")
TRAIN_KODAK = tuple(range(4, 24))   # kodim05..24 (0-based)
TEST_KODAK = (0, 1, 2, 3)           # kodim01..04


@dataclasses.dataclass
class Task:
    """One learning problem: training problem and loss, θ0, held-out sets, tolerances, its scale."""

    name: str
    problem: DenoisingProblem
    upper: SquaredError
    theta0: np.ndarray
    heldout: dict
    scale: dict
    eval_tol: float
    f_star: float | None = None
    project: object = None

    @property
    def n_images(self):
        return int(self.problem.x_shape[0])


@dataclasses.dataclass
class RunSpec:
    """One method of a comparison: ``method`` (``"maid"`` or ``"isgd"``), its options, the seeds to run."""

    label: str
    method: str
    options: dict
    seeds: tuple = (0,)
    group: str = ""


def _rms_tol(shape, per_pixel):
    """A distance tolerance for a stack of ``shape``: ``per_pixel`` root-mean-square per pixel."""
    return float(per_pixel * math.sqrt(float(np.prod(shape))))


def _kodak_dir(data_dir):
    """``data_dir``, else the shared offline copy (:func:`~varlearn.datasets.shared_data_dir`), else None."""
    return data_dir if data_dir is not None else shared_data_dir("kodak")


def _pair(clean, sigma, seed):
    noisy = clean + sigma * np.random.default_rng(seed).standard_normal(clean.shape)
    return noisy, clean


def tv_task(data_dir=None, *, quick=False):
    """The Kodak TV problem (:data:`KODAK_TV`); ``quick``: 4 Kodak images of 32×32, 2 built-in held out.

    Returns a :class:`Task`.  ``data_dir``: a folder with the Kodak files
    (``None``: the shared offline copy, else :func:`varlearn.datasets.kodak`'s own look-up).
    """
    s = dict(KODAK_TV)
    data_dir = _kodak_dir(data_dir)
    if quick:
        s.update(n_images=4, size=32)
    clean, names = kodak(root=data_dir, size=s["size"], indices=list(range(s["n_images"])))
    noisy, clean = _pair(clean, s["sigma"], s["noise_seed"])
    reg = TotalVariation(isotropic=False)
    names_te = BUILTIN[:2] if quick else BUILTIN
    clean_te = builtin_images(list(names_te), size=s["size"])
    noisy_te, clean_te = _pair(clean_te, s["sigma"], s["noise_seed"] + 1)
    heldout = {"builtin": (DenoisingProblem(noisy_te, reg), SquaredError(clean_te))}
    scale = {"problem": "tv", "images": list(names), "n_images": s["n_images"], "size": s["size"],
             "sigma": s["sigma"], "noise": f"default_rng({s['noise_seed']})", "model": "anisotropic TV",
             "heldout": {"builtin": list(names_te)}, "quick": quick}
    return Task("tv", DenoisingProblem(noisy, reg), SquaredError(clean), np.array(s["theta0"]), heldout, scale,
                eval_tol=_rms_tol(noisy.shape, 1e-5), f_star=None if quick else s["f_star"])


def kodak_crops(data_dir, indices, n_crops, crop, seed):
    """``n_crops`` non-overlapping ``crop``×``crop`` tiles of the native gray Kodak images ``indices``.

    The tiles of each image lie on a grid from its top-left corner; each image
    gives ``n_crops // len(indices)`` of them (the first ``n_crops %
    len(indices)`` images one more), drawn without replacement by
    ``default_rng(seed)``.  Returns ``(crops (n, crop, crop), labels)``,
    labels ``"kodimNN:row:col"``.
    """
    rng = np.random.default_rng(seed)
    k, extra = divmod(int(n_crops), len(indices))
    out, labels = [], []
    for j, i in enumerate(indices):
        img, names = kodak(root=data_dir, size=None, indices=[i])
        img = img[0]
        rows, cols = img.shape[0] // crop, img.shape[1] // crop
        take = k + (1 if j < extra else 0)
        if take > rows * cols:
            raise ValueError(f"n_crops={n_crops}: {names[0]} has only {rows * cols} tiles of {crop}x{crop}")
        for t in sorted(rng.choice(rows * cols, size=take, replace=False)):
            r, c = divmod(int(t), cols)
            out.append(img[r * crop:(r + 1) * crop, c * crop:(c + 1) * crop])
            labels.append(f"{names[0].split('.')[0]}:{r}:{c}")
    return np.ascontiguousarray(np.stack(out)), labels


def foe_task(data_dir=None, *, n_filters=8, filter_size=5, n_crops=96, crop=64, heldout_crop=128, sigma=0.1,
             seed=31, quick=False):
    """FoE learned from ``n_crops`` Kodak 5–24 crops; held out: centre crops of Kodak 1–4 and built-in images.

    ``quick``: 2 filters 3×3, 8 crops of 24×24 from Kodak 5–8, held out the
    centre 32×32 of Kodak 1–2.  The FoE filters are drawn from ``seed`` (zero mean
    at the start); ISGD does not project them (``Task.project`` is None), as MAID does not.
    """
    train_idx, test_idx = TRAIN_KODAK, TEST_KODAK
    builtin = BUILTIN
    data_dir = _kodak_dir(data_dir)
    if quick:
        n_filters, filter_size, n_crops, crop, heldout_crop = 2, 3, 8, 24, 32
        train_idx, test_idx, builtin = TRAIN_KODAK[:4], TEST_KODAK[:2], ()
    clean, labels = kodak_crops(data_dir, train_idx, n_crops, crop, seed)
    noisy, clean = _pair(clean, sigma, seed)
    reg = FieldOfExperts(n_filters=n_filters, size=filter_size, rng=seed)
    heldout = {}
    tests = [("kodak1-4", np.stack([center_crop(kodak(root=data_dir, size=None, indices=[i])[0], heldout_crop)[0]
                                    for i in test_idx]))]
    if builtin:
        tests.append(("builtin", center_crop(builtin_images(list(builtin), size=None), heldout_crop)))
    for k, (name, c) in enumerate(tests):
        y, c = _pair(np.ascontiguousarray(c), sigma, seed + 1 + k)
        heldout[name] = (DenoisingProblem(y, reg), SquaredError(c))
    scale = {"problem": "foe", "n_filters": n_filters, "filter_size": filter_size, "n_params": int(reg.n_params),
             "n_crops": len(labels), "crop": crop, "train_images": [f"kodim{i + 1:02d}" for i in train_idx],
             "crops": labels, "sigma": sigma, "seed": seed, "heldout_crop": heldout_crop,
             "heldout": {"kodak1-4": [f"kodim{i + 1:02d}" for i in test_idx], "builtin": list(builtin)},
             "quick": quick}
    return Task("foe", DenoisingProblem(noisy, reg), SquaredError(clean), reg.init_params(), heldout, scale,
                eval_tol=_rms_tol(noisy.shape, 1e-4))


# --------------------------------------------------------------------------- the methods compared


def _isgd(label, group, optimizer, step0, step_schedule, eps_schedule, batch_size, eps0, seeds, q=0.5, p=0.5):
    opts = {"optimizer": optimizer, "step0": step0, "step_schedule": step_schedule, "q": q,
            "eps_schedule": eps_schedule, "p": p, "batch_size": batch_size, "eps0": eps0}
    return RunSpec(label, "isgd", opts, tuple(seeds), group)


def _isgd_grid(prefix, sgd_step0, adam_step0, batch_size, eps0, seeds, partial=True):
    """SGD and Adam with decaying (poly, q = p = ½) and constant schedules; ``partial``: one schedule only."""
    runs = [_isgd(f"{prefix} sgd decaying", "sgd", "sgd", sgd_step0, "poly", "poly", batch_size, eps0, seeds),
            _isgd(f"{prefix} sgd constant", "sgd", "sgd", sgd_step0, "constant", "constant", batch_size, eps0, seeds),
            _isgd(f"{prefix} adam decaying", "adam", "adam", adam_step0, "poly", "poly", batch_size, eps0, seeds),
            _isgd(f"{prefix} adam constant", "adam", "adam", adam_step0, "constant", "constant", batch_size, eps0,
                  seeds)]
    if partial:
        runs += [_isgd(f"{prefix} sgd step decaying only", "schedule", "sgd", sgd_step0, "poly", "constant",
                       batch_size, eps0, seeds),
                 _isgd(f"{prefix} sgd accuracy decaying only", "schedule", "sgd", sgd_step0, "constant", "poly",
                       batch_size, eps0, seeds)]
    return runs


MAID_OPTIONS = {"eps0": 0.1, "delta0": 0.1, "step0": 0.01, "rho": 0.5, "nu": 0.5, "nu_inc": 1.05}


def tv_runs(quick=False, seeds=(0, 1), batch_size=4):
    """MAID (REPRODUCTION.md's options) and the ISGD grid on the TV problem.

    Steps: SGD α0 = 0.05 (``varlearn learn``'s default 0.05·9216/(H·W) at
    96×96), Adam α0 = 0.1 (θ0 is about 2.3 from θ* in θ's first coordinate
    and Adam moves each coordinate by about α_k per step: 0.05 was too slow
    with the decaying schedule in a pilot on 8 of the images); per-image
    ε0 = 0.1.
    """
    seeds = (0,) if quick else tuple(seeds)
    b = 2 if quick else batch_size
    return [RunSpec("MAID", "maid", dict(MAID_OPTIONS), (0,), "maid")] + _isgd_grid(
        f"ISGD b={b}", sgd_step0=0.05, adam_step0=0.1, batch_size=b, eps0=0.1, seeds=seeds, partial=not quick)


def foe_runs(quick=False, seeds=(0,), batch_size=8, partial=False):
    """MAID with and without its certificate, and ISGD (SGD/Adam, decaying/constant) on the FoE problem.

    Steps: SGD α0 = 0.005 (the CLI's 0.005·9216/(H·W) would be 0.011 for
    64×64 crops, with which constant-step SGD increased the loss in a pilot on
    20 crops), Adam α0 = 0.05 (the CLI's default); per-image ε0 = 0.1.
    """
    b = 4 if quick else batch_size
    runs = [RunSpec("MAID", "maid", dict(MAID_OPTIONS), (0,), "maid")]
    if not quick:
        runs.append(RunSpec("MAID, certificate off", "maid", dict(MAID_OPTIONS, bound=False), (0,), "maid"))
    return runs + _isgd_grid(f"ISGD b={b}", sgd_step0=0.005, adam_step0=0.05, batch_size=b, eps0=0.1,
                             seeds=(0,) if quick else tuple(seeds), partial=partial)


# --------------------------------------------------------------------------- running and evaluating


def _image_cost(row, n_images):
    """Cumulative image cost of a history row (an in-process full-batch row without the column: cost × N)."""
    v = row.get("image_cost")
    return float(row["cost"]) * n_images if v is None else float(v)


def _method_options(task, spec, seed, image_budget):
    opts = dict(spec.options, seed=int(seed))
    if spec.method == "isgd":
        if task.project is not None:
            opts["project"] = task.project
        return dict(opts, image_budget=float(image_budget))
    from .bilevel import DEFAULTS

    if "image_budget" in DEFAULTS[spec.method]:
        return dict(opts, image_budget=float(image_budget))
    return dict(opts, budget=float(image_budget) / task.n_images)  # the same limit in stacked units


def run_one(task, spec, seed, image_budget, fractions=(0.25, 0.5, 1.0), solvers=None, heldout=True):
    """Run one method with ``image_budget`` and evaluate it at ``fractions`` of the budget.

    Returns a dict: ``label``, ``method``, ``seed``, ``options``, ``status``,
    ``nit``, ``image_cost`` (what the run spent; it stops after the outer
    iteration that reaches the budget), ``wall_time``, ``max_step_cost`` (the
    largest cost of one outer iteration), ``points`` (per fraction: ``target``,
    ``cost`` (cost at which the evaluated θ was reached, ``<= target``),
    ``iter``, ``f_train``), ``theta`` (the evaluated θ at fraction 1), and
    ``train``/``heldout`` image quality at that θ.  ``solvers`` caches the
    warm-started :class:`~varlearn.evaluation.TightSolver` objects.
    """
    solvers = {} if solvers is None else solvers
    opts = _method_options(task, spec, seed, image_budget)
    path = [(0.0, 0, np.asarray(task.theta0, dtype=np.float64).copy())]

    def record(r):
        path.append((_image_cost(r["row"], task.n_images), int(r["nit"]),
                     np.array(to_numpy(r["theta"]), dtype=np.float64)))

    t0 = time.perf_counter()
    res = minimize_bilevel(task.problem, task.upper, to_device(task.theta0, task.problem.xp), spec.method,
                           options=opts, callback=record)
    wall = time.perf_counter() - t0
    costs = np.array([c for c, _, _ in path])
    steps = np.diff(costs)
    train = solvers.setdefault("train", TightSolver(task.problem, task.upper, task.eval_tol))
    points = []
    for frac in fractions:
        target = frac * image_budget
        j = int(np.flatnonzero(costs <= target)[-1])
        f = train.f(path[j][2])
        points.append({"fraction": frac, "target": target, "cost": float(costs[j]), "iter": path[j][1],
                       "f_train": f})
    theta = path[int(np.flatnonzero(costs <= image_budget)[-1])][2]
    out = {"label": spec.label, "group": spec.group, "method": spec.method, "seed": int(seed),
           "options": {k: v for k, v in opts.items() if k != "project"}, "status": res["status"],
           "nit": int(res["nit"]), "image_cost": float(costs[-1]), "wall_time": wall,
           "max_step_cost": float(steps.max()) if steps.size else 0.0, "points": points,
           "theta": theta.tolist() if theta.size <= 20 else None,
           "train": image_quality(to_numpy(train.solve(theta).x), to_numpy(task.upper.clean))}
    if task.f_star:
        out["rel_gap"] = (points[-1]["f_train"] - task.f_star) / task.f_star
    if heldout:
        out["heldout"] = {}
        for name, (prob, up) in task.heldout.items():
            s = solvers.setdefault(name, TightSolver(prob, up, _rms_tol(prob.x_shape, 1e-4)))
            out["heldout"][name] = image_quality(to_numpy(s.solve(theta).x), to_numpy(up.clean))
    logger.info("%s seed %d: %s after %d iterations, image cost %.0f, f %.6g, %.1fs", spec.label, seed,
                out["status"], out["nit"], out["image_cost"], points[-1]["f_train"], wall)
    return out


def baseline(task):
    """f(θ0) on the training images (tight solves) and the PSNR of the noisy inputs (train and held out)."""
    f0 = TightSolver(task.problem, task.upper, task.eval_tol).f(task.theta0)
    noisy = {"train": image_quality(to_numpy(task.problem.noisy), to_numpy(task.upper.clean))}
    for name, (prob, up) in task.heldout.items():
        noisy[name] = image_quality(to_numpy(prob.noisy), to_numpy(up.clean))
    return {"f_theta0": f0, "noisy": noisy}


def compare(task, specs, image_budget, fractions=(0.25, 0.5, 1.0), progress=None, time_cap=None):
    """Run every spec and seed at the same ``image_budget``; returns the list of :func:`run_one` records.

    ``time_cap`` (seconds): runs not started by then are skipped and listed
    as ``{"label", "seed", "skipped": True}``.  ``progress(record)`` is called
    after each run.
    """
    t0 = time.perf_counter()
    solvers, out = {}, []
    # every method's first seed before any second seed: a time cap drops repeats before methods
    order = sorted(((i, j, spec, seed) for j, spec in enumerate(specs) for i, seed in enumerate(spec.seeds)),
                   key=lambda t: (t[0], t[1]))
    for _, _, spec, seed in order:
        if time_cap is not None and time.perf_counter() - t0 > time_cap:
            out.append({"label": spec.label, "group": spec.group, "seed": int(seed), "skipped": True})
            continue
        out.append(run_one(task, spec, seed, image_budget, fractions, solvers))
        if progress is not None:
            progress(out[-1])
    return out


def _median_by_label(records, key):
    by = {}
    for r in records:
        if not r.get("skipped"):
            by.setdefault(r["label"], []).append(key(r))
    return {k: float(np.median(v)) for k, v in by.items()}


def summary(records):
    """Per label: the median (and range over seeds) of f_train at each fraction and of the held-out PSNR."""
    out = {}
    for r in records:
        if r.get("skipped"):
            continue
        s = out.setdefault(r["label"], {"group": r["group"], "method": r["method"], "seeds": [], "f": {},
                                         "heldout_psnr": {}, "train_psnr": []})
        s["seeds"].append(r["seed"])
        s["train_psnr"].append(r["train"]["psnr_mean"])
        for p in r["points"]:
            s["f"].setdefault(f"{p['fraction']:g}", []).append(p["f_train"])
        for name, q in (r.get("heldout") or {}).items():
            s["heldout_psnr"].setdefault(name, []).append(q["psnr_mean"])
    for s in out.values():
        s["f_median"] = {k: float(np.median(v)) for k, v in s["f"].items()}
        s["f_range"] = {k: [float(min(v)), float(max(v))] for k, v in s["f"].items()}
        s["heldout_median"] = {k: float(np.median(v)) for k, v in s["heldout_psnr"].items()}
        s["train_psnr_median"] = float(np.median(s["train_psnr"]))
    return out


def _best(summ, group, frac):
    cand = {k: v for k, v in summ.items() if v["method"] == "isgd" and (group is None or v["group"] == group)}
    if not cand:
        return None, None
    k = min(cand, key=lambda name: cand[name]["f_median"][frac])
    return k, cand[k]


def claims(records, fractions=(0.25, 0.5, 1.0)):
    """Plain statements from the results (each with the numbers it rests on); ``None`` where a run is missing."""
    summ = summary(records)
    first, last = f"{fractions[0]:g}", f"{fractions[-1]:g}"
    maid = summ.get("MAID")
    out = {}
    name, best = _best(summ, None, last)
    if maid and best:
        d_end = best["f_median"][last] - maid["f_median"][last]
        n0, b0 = _best(summ, None, first)
        d_early = b0["f_median"][first] - maid["f_median"][first]
        ho = sorted(set(maid["heldout_median"]) & set(best["heldout_median"]))
        d_ho = {h: best["heldout_median"][h] - maid["heldout_median"][h] for h in ho}
        out["isgd_vs_maid"] = {
            "best_isgd": name, "f_difference_at_budget": d_end, "best_isgd_early": n0,
            "f_difference_at_first_fraction": d_early, "heldout_psnr_difference": d_ho,
            "faster": bool(d_early < 0), "lower_loss_at_budget": bool(d_end < 0),
            "better_generalising": bool(ho) and all(v > 0 for v in d_ho.values())}
    step_only = next((k for k in summ if k.endswith("step decaying only")), None)
    acc_only = next((k for k in summ if k.endswith("accuracy decaying only")), None)
    if step_only and acc_only:
        a, s = summ[acc_only]["f_median"][last], summ[step_only]["f_median"][last]
        out["accuracy_vs_step_schedule"] = {"accuracy_decaying_only": a, "step_decaying_only": s,
                                            "accuracy_schedule_better": bool(a < s)}
    pairs = []
    for kind in ("decaying", "constant"):
        sgd = next((k for k in summ if k.endswith(f"sgd {kind}")), None)
        adam = next((k for k in summ if k.endswith(f"adam {kind}")), None)
        if sgd and adam:
            pairs.append({"schedules": kind, "sgd": summ[sgd]["f_median"][last], "adam": summ[adam]["f_median"][last],
                          "adam_better": bool(summ[adam]["f_median"][last] < summ[sgd]["f_median"][last])})
    if pairs:
        out["adam_vs_sgd"] = pairs
    return out


def build(name, data_dir=None, *, quick=False, seeds=1, batch_size=None, partial=False, **scale):
    """``(task, specs)`` of problem ``name`` (``"tv"`` or ``"foe"``): :func:`tv_task`/:func:`foe_task` and their runs.

    ``scale``: keyword arguments of :func:`foe_task` (``n_filters``,
    ``filter_size``, ``n_crops``, ``crop``); ``batch_size`` of ISGD (default
    4 for TV, 8 for FoE); ``seeds``: ISGD seeds; ``partial``: FoE also with one
    schedule decaying and the other constant (TV always has them, except quick).
    """
    if name == "tv":
        return tv_task(data_dir, quick=quick), tv_runs(quick, seeds=range(seeds), batch_size=batch_size or 4)
    if name == "foe":
        return (foe_task(data_dir, quick=quick, **scale),
                foe_runs(quick, seeds=range(seeds), batch_size=batch_size or 8, partial=partial))
    raise ValueError(f"name must be 'tv' or 'foe', got {name!r}")


def cost_to_reach(record, target):
    """The smallest evaluated cost at which the run's training loss was ``<= target`` (None if never)."""
    hits = [p["cost"] for p in record["points"] if p["f_train"] <= target]
    return min(hits) if hits else None


# --------------------------------------------------------------------------- reporting


def table(records, f_star=None):
    """Lines of a plain-text table: per label the median f at each fraction, PSNRs, cost, wall time."""
    summ = summary(records)
    fracs = list(next(iter(summ.values()))["f_median"]) if summ else []
    ho_names = sorted({h for s in summ.values() for h in s["heldout_median"]})
    head = f"{'run':<38}{'seeds':>6}" + "".join(f"{'f@' + k:>11}" for k in fracs)
    head += (f"{'gap':>9}" if f_star else "") + f"{'PSNR tr':>9}" + "".join(f"{h[:9]:>10}" for h in ho_names)
    head += f"{'cost':>10}{'time s':>8}"
    lines = [head]
    walls = _median_by_label(records, lambda r: r["wall_time"])
    costs = _median_by_label(records, lambda r: r["points"][-1]["cost"])
    for label, s in summ.items():
        line = f"{label:<38}{len(s['seeds']):>6}" + "".join(f"{s['f_median'][k]:>11.5g}" for k in fracs)
        if f_star:
            line += f"{(s['f_median'][fracs[-1]] - f_star) / f_star:>9.1e}"
        line += f"{s['train_psnr_median']:>9.3f}" + "".join(f"{s['heldout_median'].get(h, math.nan):>10.3f}"
                                                            for h in ho_names)
        lines.append(line + f"{costs[label]:>10.0f}{walls[label]:>8.1f}")
    skipped = [f"{r['label']} seed {r['seed']}" for r in records if r.get("skipped")]
    if skipped:
        lines.append(f"skipped (time cap): {', '.join(skipped)}")
    return lines


def plot_curves(path, records, title):
    """Training loss f(θ) (tight solves) against image cost: the median over seeds of each run at each fraction."""
    from .bilevel.figures import plot_series

    series = []
    for label, s in summary(records).items():
        pts = [r["points"] for r in records if r.get("label") == label and not r.get("skipped")]
        x = [float(np.median([p[i]["cost"] for p in pts])) for i in range(len(pts[0]))]
        y = [s["f_median"][f"{p['fraction']:g}"] for p in pts[0]]
        style = "k-o" if s["method"] == "maid" and "off" not in label else ("--s" if s["method"] == "maid" else "-o")
        series.append((x, y, label, style))
    return plot_series(path, series, xlabel="image cost (image-iterations; the θ reached at that cost or less)",
                       ylabel="training loss f(θ), tight solves", title=title, logx=False, logy=True)
