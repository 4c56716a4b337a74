"""Black-box baselines for an STN run at equal cost: random search, grid search, retraining at fixed λ.

Every trial is a full fixed-λ training of the same network by the same
trainer (:class:`~varlearn.stn.train.STNTrainer` with ``hyper_steps=False``
and ``perturb=False``: the hypernet sees the constant ``u`` and the training
steps use exactly λ), from the same initial weights and with the same seed
(common random numbers: the trials differ only in λ).  A trial's score is its
lowest validation loss over its evaluations (the highest mean PSNR for the
default ``val_loss="log_mse"``), as for the STN run.

Equal cost: with ``C_trial`` the planned cost of one trial
(:meth:`~varlearn.stn.train.STNTrainer.planned_cost`, exact because a trial
ends on ``max_steps``/``max_epochs`` and its cost does not depend on λ) and
``C_STN`` the STN run's cost (``result.cost``, final evaluation included),
a search runs ``K = floor(C_STN / C_trial)`` trials, so its total cost is at
most ``C_STN``.

References
----------
M. MacKay et al., "Self-Tuning Networks", ICLR 2019, arXiv:1903.03088 (the
cost comparison against random search, grid search and BO).
J. Bergstra, Y. Bengio, "Random search for hyper-parameter optimization",
JMLR 13, 2012.
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np

from ..results import Result
from .hyperparameters import HyperParameters
from .train import STNTrainer

logger = logging.getLogger("varlearn")

__all__ = ["SearchResult", "train_fixed", "train_schedule", "random_search", "grid_search", "n_trials", "best_so_far",
           "sample_random", "grid_points"]


class SearchResult(Result):
    """Result of :func:`random_search` / :func:`grid_search`.

    Keys: ``kind``, ``status`` (``"done"``: all ``K`` trials ran;
    ``"callback_stop"``), ``n_trials`` (K), ``trial_cost`` (planned cost of
    one trial), ``budget`` (``C_STN``), ``total_cost``, ``wall_time``,
    ``trials`` (one dict per trial: ``values``, ``val_psnr``,
    ``val_loss`` (both at the trial's best evaluation), ``final_val_psnr``,
    ``final_val_loss``, ``cost``, ``wall_time``, ``status``), ``best`` (the
    trial with the lowest ``val_loss``), ``best_state`` (its weights at its best
    evaluation), ``curve`` (``cost``, ``time``, ``best_val_loss`` and the
    ``best_val_psnr`` of that trial, after each trial).
    """


def _trial_options(options):
    o = dict(options or {})
    if o.get("max_steps") is None and o.get("max_epochs") is None:
        raise ValueError("trial options need max_steps or max_epochs (a trial is a full training of fixed length)")
    for k in ("budget", "time_limit"):
        if o.get(k) is not None:
            raise ValueError(f"trial options must not set {k!r} (got {o[k]!r}): a trial has a fixed length")
    o.update(hyper_steps=False, perturb=False)
    return o


def train_fixed(model, hyper, values, train_images, val_images, *, sigma, options, seed=0, callback=None):
    """Train ``model`` at the fixed hyperparameter values ``values`` (a dict name -> constrained value).

    The model is trained from its current weights; ``hyper`` is not changed
    (a copy with ``values`` is used).  Use it to retrain at the STN's final λ:
    ``train_fixed(model, hyper, stn_result.hyper, ...)``.  ``options`` are the
    trainer's (:func:`~varlearn.stn.train.train_stn`), with ``max_steps`` or
    ``max_epochs`` required and ``hyper_steps``/``perturb`` forced off.
    Returns the :class:`~varlearn.stn.train.STNResult` of that run.
    """
    h = hyper.copy()
    h.set_values(values)
    trainer = STNTrainer(model, h, train_images, val_images, sigma=sigma, options=_trial_options(options), seed=seed)
    return trainer.run(callback=callback)


def train_schedule(model, hyper, history, train_images, val_images, *, sigma, options, seed=0, callback=None):
    """Train ``model`` at fixed λ that follow an STN run's logged schedule (spec §7.4, MacKay et al. Table 1).

    ``history`` is an STN result's history: from weight step ``row["step"]`` on,
    the hyperparameters take the row's unconstrained values ``u_<name>`` (held
    until the next row), without perturbation and without hyper-steps.  The
    rest is as in :func:`train_fixed`.  Returns the run's
    :class:`~varlearn.stn.train.STNResult`.
    """
    h = hyper.copy()
    rows = sorted((int(r["step"]), np.array([float(r["u_" + n]) for n in h.names])) for r in history
                  if not r.get("final"))
    if not rows:
        raise ValueError("history holds no evaluation rows: nothing to follow")
    steps = [s for s, _ in rows]

    def follow(step):
        h.u[:] = rows[max(0, int(np.searchsorted(steps, step, side="right")) - 1)][1]

    def cb(info):
        if info["event"] == "step" and info["kind"] == "weight":
            follow(info["step"])
        return None if callback is None else callback(info)

    follow(0)
    trainer = STNTrainer(model, h, train_images, val_images, sigma=sigma, options=_trial_options(options), seed=seed)
    return trainer.run(callback=cb)


def n_trials(budget, trial_cost):
    """``K = floor(budget / trial_cost)`` (``ValueError`` if not positive numbers)."""
    if not (isinstance(budget, (int, float)) and budget > 0 and math.isfinite(budget)):
        raise ValueError(f"budget must be a finite number > 0, got {budget!r}")
    if not (isinstance(trial_cost, (int, float)) and trial_cost > 0 and math.isfinite(trial_cost)):
        raise ValueError(f"trial_cost must be a finite number > 0, got {trial_cost!r}")
    return int(math.floor(budget / trial_cost * (1 + 1e-12)))


def _box(spec):
    if spec.box is None:
        raise ValueError(f"hyperparameter {spec.name!r} has no finite search box: give box=(lo, hi)")
    return spec.box


def sample_random(hyper, k, rng):
    """``k`` random points of the search box: log-uniform for ``log`` transforms, uniform otherwise."""
    pts = []
    for _ in range(k):
        p = {}
        for s in hyper.specs:
            lo, hi = _box(s)
            if s.transform == "log":
                p[s.name] = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
            else:
                p[s.name] = float(rng.uniform(lo, hi))
        pts.append(p)
    return pts


def grid_points(hyper, k, names=None):
    """A grid of at most ``k`` points over ``names`` (default: all), cell-centred in each box.

    ``g = floor(k ** (1/m))`` points per axis (``m = len(names)``), evenly spaced
    in log space for ``log`` transforms; the other hyperparameters stay at
    their current values.  Returns ``g ** m`` dicts of constrained values.
    """
    names = list(hyper.names if names is None else names)
    for n in names:
        hyper.index(n)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"names must be distinct hyperparameter names, got {names!r}")
    m = len(names)
    g = 1
    while (g + 1) ** m <= k:
        g += 1
    axes = []
    for n in names:
        s = hyper.specs[hyper.index(n)]
        lo, hi = _box(s)
        t = (np.arange(g) + 0.5) / g
        axes.append(np.exp(np.log(lo) + t * (np.log(hi) - np.log(lo))) if s.transform == "log" else lo + t * (hi - lo))
    base = hyper.values()
    pts = []
    for idx in np.ndindex(*([g] * m)):
        p = dict(base)
        p.update({n: float(axes[j][i]) for j, (n, i) in enumerate(zip(names, idx))})
        pts.append(p)
    return pts


def best_so_far(history, key="val_psnr"):
    """``(cost, time, best)``: the running best of ``key`` over STN history rows (max for PSNR, min for losses)."""
    cost = np.array([r["cost"] for r in history], dtype=float)
    t = np.array([r["time"] for r in history], dtype=float)
    v = np.array([r[key] for r in history], dtype=float)
    return cost, t, (np.maximum if "psnr" in key else np.minimum).accumulate(v)


def trial_record(index, result, wall_time):
    """One trial's dict (:class:`SearchResult`) from its index, its ``STNResult`` and its seconds."""
    r = result
    return {"index": index, "values": r.hyper, "val_loss": r.best["val_loss"], "val_psnr": r.best["val_psnr"],
            "final_val_loss": r.final_val_loss, "final_val_psnr": r.final_val_psnr, "cost": r.cost,
            "wall_time": wall_time, "status": r.status}


def random_stream(seed):
    """The generator :func:`random_search` draws its points from (one stream per seed)."""
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[2])


def _search(kind, points_fn, model, hyper, train_images, val_images, *, sigma, budget, trial_options, seed,
            callback):
    _check_hyper(hyper)
    opts = _trial_options(trial_options)
    init = {k: model.xp.array(v, copy=True) for k, v in model.state().items()}
    planner = STNTrainer(model, hyper.copy(), train_images, val_images, sigma=sigma, options=opts, seed=seed)
    c_trial = planner.planned_cost()
    k = n_trials(budget, c_trial)
    points = points_fn(k)
    trials, best, best_state, status = [], None, None, "done"
    total, seconds = 0.0, 0.0
    curve = {"cost": [], "time": [], "best_val_loss": [], "best_val_psnr": []}
    for i, p in enumerate(points):
        model.load_state(init)
        t0 = time.perf_counter()
        r = train_fixed(model, hyper, p, train_images, val_images, sigma=sigma, options=opts, seed=seed)
        dt = time.perf_counter() - t0
        total += r.cost
        seconds += dt
        trial = trial_record(i, r, dt)
        trials.append(trial)
        if best is None or trial["val_loss"] < best["val_loss"]:
            best, best_state = trial, r.best_state
        curve["cost"].append(total)
        curve["time"].append(seconds)
        curve["best_val_loss"].append(best["val_loss"])
        curve["best_val_psnr"].append(best["val_psnr"])
        logger.info("%s search: trial %d/%d %s -> val PSNR %.3f dB (best %.3f)", kind, i + 1, len(points),
                    trial["values"], trial["val_psnr"], best["val_psnr"])
        if callback is not None and callback(trial) is True:
            status = "callback_stop"
            break
    if best_state is not None:
        model.load_state(best_state)
    return SearchResult(kind=kind, status=status, n_trials=k, trial_cost=c_trial, budget=float(budget),
                        total_cost=total, wall_time=seconds, trials=trials, best=best, best_state=best_state,
                        curve=curve)


def random_search(model, hyper, train_images, val_images, *, sigma, budget, trial_options, seed=0, callback=None):
    """Random search over the hyperparameters' boxes with ``K = floor(budget / C_trial)`` trials.

    Parameters
    ----------
    model : STN model
        Its current weights are every trial's initial weights; at the end it
        holds the best trial's weights (at that trial's best evaluation).
    hyper : HyperParameters
        Which hyperparameters to search, and their boxes (``Hyperparameter.box``,
        the range by default); not modified.
    train_images, val_images, sigma
        As in :func:`~varlearn.stn.train.train_stn`.
    budget : float
        Total cost allowed, normally the STN run's ``result.cost`` (pixel passes).
    trial_options : dict
        Trainer options of one trial; ``max_steps`` or ``max_epochs`` required,
        no ``budget``/``time_limit``.
    seed : int
        Seeds the sampled points and (the same for all) the trials' training.
        The points are drawn one after the other from one stream, so a larger
        budget runs the same first trials and then more (prefix property): a
        search at ``f * C_STN`` contains the equal-cost search.
    callback : callable, optional
        Called with each trial's dict; returning True stops the search.

    Returns
    -------
    SearchResult
    """
    rng = random_stream(seed)
    return _search("random", lambda k: sample_random(hyper, k, rng), model, hyper, train_images, val_images,
                   sigma=sigma, budget=budget, trial_options=trial_options, seed=seed, callback=callback)


def grid_search(model, hyper, train_images, val_images, *, sigma, budget, trial_options, names=None, seed=0,
                callback=None):
    """Grid search (:func:`grid_points`, at most ``K = floor(budget / C_trial)`` points) over ``names``.

    Parameters as in :func:`random_search`; ``names`` the 1-2 hyperparameters
    on the grid (default all), the others fixed at ``hyper``'s current values.
    """
    return _search("grid", lambda k: grid_points(hyper, k, names), model, hyper, train_images, val_images,
                   sigma=sigma, budget=budget, trial_options=trial_options, seed=seed, callback=callback)


def _check_hyper(hyper):
    if not isinstance(hyper, HyperParameters):
        raise ValueError(f"hyper must be a HyperParameters container, got {type(hyper).__name__}")
