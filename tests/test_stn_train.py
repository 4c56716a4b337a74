"""Tests of the STN trainer (varlearn.stn.train), the optimisers and the equal-cost baselines.

The acceptance test of STN spec §7.6.1: a linear denoiser D(λ) (LinearSTN) whose
training-noise level is the hyperparameter.  With Ĉ, Ĉ_v the second moments of
the clean training / validation vectors, the best response to training noise of
variance e^λ is D*(λ) = Ĉ(Ĉ + e^λ I)^-1 and the validation MSE at the target
σ_v is (tr((I-D)Ĉ_v(I-D)ᵀ) + σ_v²‖D‖²)/d, minimised on a fine 1-D grid.  The
trainer's hyperparameter is a = (λ - log σ_v²)/2 (σ_train = σ_v e^a).
"""
import logging
import math

import numpy as np
import pytest

from varlearn.backend import to_numpy
from varlearn.bilevel.checkpoint import CheckpointError
from varlearn.stn.baselines import (
    grid_points,
    grid_search,
    n_trials,
    random_search,
    sample_random,
    train_fixed,
    train_schedule,
)
from varlearn.stn.hyperparameters import Hyperparameter, HyperParameters
from varlearn.stn.models import DnCNNSTN, LinearSTN
from varlearn.stn.optim import SGD, Adam
from varlearn.stn.train import STNTrainer, train_stn

logger = logging.getLogger("varlearn")

# --------------------------------------------------------------------------- data


def synth_images(n, size, seed):
    """Piecewise-smooth test images in [0, 1]: a ramp with random discs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        img = 0.3 + 0.2 * (rng.random() * xx + rng.random() * yy)
        for _ in range(6):
            cx, cy, r = rng.random(3)
            img = np.where((xx - cx) ** 2 + (yy - cy) ** 2 < (0.05 + 0.25 * r) ** 2, rng.random(), img)
        out.append(img)
    return np.stack(out).astype(np.float32)


D, SIGMA_V = 8, 0.3


def linear_problem():
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.standard_normal((D, D)))
    s = 0.25 * np.logspace(0, -2, D)
    xtr = (rng.standard_normal((4000, D)) * np.sqrt(s)) @ U.T
    xv = (rng.standard_normal((4000, D)) * np.sqrt(0.6 * s)) @ U.T   # validation spectrum differs: a* != 0
    C, Cv = xtr.T @ xtr / len(xtr), xv.T @ xv / len(xv)
    eye = np.eye(D)

    def f(a):
        Dm = C @ np.linalg.inv(C + SIGMA_V ** 2 * math.exp(2 * a) * eye)
        return (np.trace((eye - Dm) @ Cv @ (eye - Dm).T) + SIGMA_V ** 2 * np.sum(Dm * Dm)) / D

    grid = np.linspace(-2, 2, 4001)
    vals = np.array([f(a) for a in grid])
    return xtr, xv, f, float(grid[np.argmin(vals)]), float(vals.min())


LINEAR_OPTS = dict(batch_size=64, val_batch_size=64, lr=1e-2, hyper_lr=3e-2, val_loss="mse", max_steps=1500,
                   warmup_steps=200, eval_every=250, t_train=2, tau=1e-3)
A_TOL = 0.1  # tolerance on a; on λ = log σ_train² it is 2 * A_TOL = 0.2


@pytest.fixture(scope="module")
def linear():
    return linear_problem()


def _linear_run(linear, a0, seed=0):
    xtr, xv, f, a_star, f_star = linear
    model = LinearSTN(D, D, 1, rng=1)
    hy = HyperParameters([Hyperparameter("noise", a0, (-3, 3), transform="identity")])
    r = train_stn(model, hy, xtr, xv, sigma=SIGMA_V, options=LINEAR_OPTS, seed=seed)
    return model, hy, r


@pytest.fixture(scope="module")
def linear_low(linear):
    return _linear_run(linear, -1.0)


# --------------------------------------------------------------------------- the exact linear test
@pytest.mark.parametrize("start", ["low", "high"])
def test_linear_stn_reaches_the_closed_form_optimum(linear, linear_low, start):
    xtr, xv, f, a_star, f_star = linear
    assert 0.15 < a_star < 0.4  # the validation spectrum makes the optimum differ from the target noise level
    a0 = -1.0 if start == "low" else 1.5
    _, hy, r = linear_low if start == "low" else _linear_run(linear, a0)
    traj = r.history_column("noise")
    a_final = float(np.mean(traj[-2:]))  # the last two evaluations (steps 1250 and 1500)
    logger.info("linear STN from a0=%g: a_final=%.4f, a*=%.4f, f gap %.2e", a0, a_final, a_star, f(a_final) - f_star)
    assert r.status == "max_steps" and r.success
    assert abs(a_final - a_star) <= A_TOL, (a_final, a_star, traj)
    assert f(a_final) - f_star <= 2e-3 * f_star
    # it moved towards the optimum, from below for the low start and from above for the high one
    assert (traj[1] > a0) if start == "low" else (traj[1] < a0)
    assert abs(traj[-1] - a_star) < 0.1 * abs(a0 - a_star) + A_TOL


def test_linear_random_search_at_equal_cost(linear, linear_low, record_property):
    xtr, xv, f, a_star, f_star = linear
    _, hy, stn = linear_low
    model = LinearSTN(D, D, 1, rng=1)
    box = HyperParameters([Hyperparameter("noise", 0.0, (-3, 3), transform="identity", box=(-1.5, 1.5))])
    trial = {**LINEAR_OPTS, "max_steps": 500, "eval_every": 250}
    rs = random_search(model, box, xtr, xv, sigma=SIGMA_V, budget=stn.cost, trial_options=trial, seed=0)
    assert rs.n_trials == math.floor(stn.cost / rs.trial_cost) >= 2
    assert len(rs.trials) == rs.n_trials and rs.total_cost <= stn.cost
    assert all(t["cost"] == rs.trial_cost for t in rs.trials)
    a_rs = rs.best["values"]["noise"]
    a_stn = float(np.mean(stn.history_column("noise")[-2:]))
    record_property("stn_a_error", abs(a_stn - a_star))
    record_property("random_search_a_error", abs(a_rs - a_star))
    logger.info("equal cost %.3g: STN |a - a*| = %.3f, random search (K=%d) |a - a*| = %.3f", stn.cost,
                abs(a_stn - a_star), rs.n_trials, abs(a_rs - a_star))
    # the search evaluated what it claims: every trial's value was drawn in the box and trained unperturbed
    assert all(-1.5 <= t["values"]["noise"] <= 1.5 for t in rs.trials)
    assert rs.curve["best_val_loss"] == sorted(rs.curve["best_val_loss"], reverse=True)


# --------------------------------------------------------------------------- small DnCNN runs
TRAIN, VAL = synth_images(6, 32, 0), synth_images(3, 32, 1)
TINY = dict(batch_size=4, patch_size=12, val_batch_size=4, val_patch_size=16, n_eval=6, max_steps=30,
            warmup_steps=6, eval_every=10, lr=3e-3, hyper_lr=3e-2)


def _all_four():
    return HyperParameters([
        Hyperparameter("noise", 0.2, (-1.5, 1.5), transform="identity"),
        Hyperparameter("weight_decay", 1e-3, (1e-8, 1e-1), transform="log", per_example=False),
        Hyperparameter("dropout", 0.1, (0, 0.5)),
        Hyperparameter("augment", 3.5, (0, 8), discrete=True),
    ])


def _tiny_run(seed=0, options=None, **kw):
    model = DnCNNSTN(4, depth=2, channels=4, rng=0)
    hy = _all_four()
    r = train_stn(model, hy, TRAIN, VAL, sigma=0.1, options={**TINY, **(options or {})}, seed=seed, **kw)
    return model, hy, r


def _strip(history):
    return [{k: v for k, v in row.items() if k != "time"} for row in history]


def _assert_same_run(a, b):
    (ma, ha, ra), (mb, hb, rb) = a, b
    for k in ma.params:
        np.testing.assert_array_equal(to_numpy(ma.params[k]), to_numpy(mb.params[k]), err_msg=k)
    np.testing.assert_array_equal(ha.u, hb.u)
    np.testing.assert_array_equal(ha.rho, hb.rho)
    assert _strip(ra.history) == _strip(rb.history)
    assert (ra.n_steps, ra.n_hyper_steps, ra.cost) == (rb.n_steps, rb.n_hyper_steps, rb.cost)


@pytest.fixture(scope="module")
def tiny_full():
    return _tiny_run()


def test_same_seed_identical_runs_other_seed_differs(tiny_full):
    _assert_same_run(tiny_full, _tiny_run())
    m1, h1, r1 = _tiny_run(seed=1)
    assert not np.array_equal(m1.params["conv0.K_e"], tiny_full[0].params["conv0.K_e"])
    assert r1.history[-1]["val_loss"] != tiny_full[2].history[-1]["val_loss"]


def test_interrupted_by_budget_and_resumed_equals_uninterrupted(tiny_full, tmp_path):
    ck = tmp_path / "run.npz"
    part = _tiny_run(options={"budget": tiny_full[2].cost * 0.45}, checkpoint=ck)
    assert part[2].status == "budget_exhausted" and not part[2].success and part[2].n_steps < 30
    assert part[2].history[-1]["final"]  # the final evaluation at the stop
    model = DnCNNSTN(4, depth=2, channels=4, rng=7)  # other initial weights: all must come from the checkpoint
    hy = _all_four()
    r = train_stn(model, hy, TRAIN, VAL, sigma=0.1, options=TINY, checkpoint=ck, resume=True, seed=0)
    _assert_same_run(tiny_full, (model, hy, r))


def test_interrupted_by_callback_and_resumed_equals_uninterrupted(tiny_full, tmp_path):
    ck = tmp_path / "run.npz"
    events = []

    def stop_at_17(info):
        events.append(info["event"])
        return info["event"] == "step" and info["step"] == 17 and info["kind"] == "weight"

    part = _tiny_run(callback=stop_at_17, checkpoint=ck)
    assert part[2].status == "callback_stop" and part[2].n_steps == 17 and "eval" in events
    model, hy = DnCNNSTN(4, depth=2, channels=4, rng=0), _all_four()
    r = train_stn(model, hy, TRAIN, VAL, sigma=0.1, options=TINY, checkpoint=ck, resume=True, seed=0)
    _assert_same_run(tiny_full, (model, hy, r))
    with pytest.raises(CheckpointError, match="'lr'"):
        train_stn(DnCNNSTN(4, depth=2, channels=4), _all_four(), TRAIN, VAL, sigma=0.1,
                  options={**TINY, "lr": 1e-2}, checkpoint=ck, resume=True)


def test_history_cost_and_hyperparameter_trajectories(tiny_full):
    model, hy, r = tiny_full
    o = r.options
    n_eval_rows = len(r.history)
    assert [row["step"] for row in r.history] == [0, 10, 20, 30]
    # hyper-steps: one after every t_train=2 weight steps past the warm-up, none after the last cycle
    assert r.n_hyper_steps == (30 - 6 - 1) // 2
    expected = 30 * 4 * 12 ** 2 + r.n_hyper_steps * 4 * 16 ** 2 + n_eval_rows * 6 * 16 ** 2 / 3
    assert r.cost == pytest.approx(expected, rel=1e-12)
    assert STNTrainer(DnCNNSTN(4, depth=2, channels=4), _all_four(), TRAIN, VAL, sigma=0.1,
                      options=TINY).planned_cost() == pytest.approx(r.cost, rel=1e-12)
    # u frozen in the warm-up, moving afterwards; the history holds constrained values
    assert r.history[0]["u_noise"] == pytest.approx(0.2) and r.history[-1]["u_noise"] != pytest.approx(0.2)
    assert r.history[0]["sigma_noise"] == pytest.approx(0.5) and r.history[-1]["sigma_noise"] != r.history[0][
        "sigma_noise"]
    assert r.history[-1]["augment"] == int(math.floor(r.history[-1]["augment"])) and 0 <= r.history[-1]["augment"] <= 7
    assert r.history[-1]["weight_decay"] == pytest.approx(math.exp(r.history[-1]["u_weight_decay"]))
    assert r.hyper == hy.values() and o["warmup_steps"] == 6
    assert r.best["val_loss"] == min(row["val_loss"] for row in r.history)
    psnr = r.history_column("val_psnr")
    assert psnr[-1] > psnr[0] + 3.0  # training improves the denoiser from its initial weights
    assert "step,hyper_step" in r.history_csv()


def test_planned_cost_with_epochs_and_warmup_default():
    tr = STNTrainer(DnCNNSTN(1, depth=2, channels=4), HyperParameters([Hyperparameter("noise", 0.0)]), TRAIN, VAL,
                    sigma=0.1, options={**TINY, "max_steps": None, "max_epochs": 1.5, "warmup_steps": None,
                                        "eval_every": None})
    spe = math.ceil(6 * 32 * 32 / (4 * 144))
    assert tr.options["steps_per_epoch"] == spe and tr.options["eval_every"] == spe
    n = math.ceil(1.5 * spe)
    assert tr.options["warmup_steps"] == round(0.05 * n)
    r = tr.run()
    assert r.status == "max_epochs" and r.n_steps == n and r.cost == pytest.approx(
        STNTrainer(DnCNNSTN(1, depth=2, channels=4), HyperParameters([Hyperparameter("noise", 0.0)]), TRAIN, VAL,
                   sigma=0.1, options={**TINY, "max_steps": None, "max_epochs": 1.5, "eval_every": None,
                                       "warmup_steps": None}).planned_cost(), rel=1e-12)


def test_time_limit_status():
    _, _, r = _tiny_run(options={"max_steps": None, "time_limit": 0.0})
    assert r.status == "time_limit" and not r.success and r.n_steps == 0


# --------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("opts, words", [
    ({"batch_size": 0}, ["batch_size", "0"]),
    ({"patch_size": 2.5}, ["patch_size", "2.5"]),
    ({"patch_size": 40}, ["patch_size=40", "32"]),
    ({"val_patch_size": 33}, ["val_patch_size=33"]),
    ({"lr": -1e-3}, ["lr", "-0.001"]),
    ({"tau": float("nan")}, ["tau", "nan"]),
    ({"t_train": True}, ["t_train", "True"]),
    ({"optimizer": "rmsprop"}, ["optimizer", "'rmsprop'"]),
    ({"val_loss": "l1"}, ["val_loss", "'l1'"]),
    ({"max_steps": None}, ["stopping rule"]),
    ({"budget": -5}, ["budget", "-5"]),
    ({"lr_decay": 0.1}, ["lr_decay"]),
    ({"fixed": {"noise": 0.1}}, ["fixed['noise']", "tuned"]),
    ({"fixed": {"colour": 0.1}}, ["fixed['colour']", "unknown"]),
    ({"tune_scales": "yes"}, ["tune_scales", "'yes'"]),
])
def test_bad_options_refused_by_name(opts, words):
    with pytest.raises(ValueError) as info:
        STNTrainer(DnCNNSTN(4, depth=2, channels=4), _all_four(), TRAIN, VAL, sigma=0.1, options={**TINY, **opts})
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_bad_arguments_and_hyperparameters_refused_by_name():
    m = DnCNNSTN(1, depth=2, channels=4)

    def make(hp, **kw):
        args = dict(train_images=TRAIN, val_images=VAL, sigma=0.1, options=TINY)
        args.update(kw)
        return STNTrainer(m, HyperParameters([hp]), **args)

    with pytest.raises(ValueError, match="'lambda2'.*not one the trainer"):
        make(Hyperparameter("lambda2", 0.1))
    with pytest.raises(ValueError, match="'augment' must be discrete"):
        make(Hyperparameter("augment", 2.0, (0, 8)))
    with pytest.raises(ValueError, match="'dropout'.*range"):
        make(Hyperparameter("dropout", 0.1, (0, 2)))
    with pytest.raises(ValueError, match="'weight_decay'.*lo >= 0"):
        make(Hyperparameter("weight_decay", 0.1, (-1, 1)))
    with pytest.raises(ValueError, match=r"fixed\['dropout'\].*1.0"):
        make(Hyperparameter("noise", 0.0), options={**TINY, "fixed": {"dropout": 1.0}})
    with pytest.raises(ValueError, match=r"fixed\['augment'\].*9"):
        make(Hyperparameter("noise", 0.0), options={**TINY, "fixed": {"augment": 9}})
    with pytest.raises(ValueError, match="sigma.*-0.1"):
        make(Hyperparameter("noise", 0.0), sigma=-0.1)
    with pytest.raises(ValueError, match="seed.*-3"):
        make(Hyperparameter("noise", 0.0), seed=-3)
    with pytest.raises(ValueError, match="n_hyper=4.*1 hyperparameter"):
        STNTrainer(DnCNNSTN(4, depth=2, channels=4), HyperParameters([Hyperparameter("noise", 0.0)]), TRAIN, VAL,
                   sigma=0.1, options=TINY)
    with pytest.raises(ValueError, match="val_images.*NaN"):
        make(Hyperparameter("noise", 0.0), val_images=np.full((2, 32, 32), np.nan, np.float32))
    with pytest.raises(ValueError, match="augment.*image data"):
        STNTrainer(LinearSTN(4, 4, 1), HyperParameters([Hyperparameter("augment", 1.0, (0, 8), discrete=True)]),
                   np.zeros((10, 4)), np.zeros((10, 4)), sigma=0.1, options=TINY)
    with pytest.raises(ValueError, match="resume=True needs a checkpoint"):
        train_stn(m, HyperParameters([Hyperparameter("noise", 0.0)]), TRAIN, VAL, sigma=0.1, options=TINY,
                  resume=True)


# --------------------------------------------------------------------------- data pipeline
def test_augmentation_draws_dihedral_transforms_of_the_same_patches():
    from varlearn.stn._trainutil import Samples

    s = Samples(TRAIN, "train_images", np, np.float32)
    plain = s.sample(np.random.default_rng(4), 64, 12)
    aug = s.sample(np.random.default_rng(4), 64, 12, aug=np.full(64, 7))
    same = s.sample(np.random.default_rng(4), 64, 12, aug=np.zeros(64))
    np.testing.assert_array_equal(same, plain)
    found = set()
    for p, q in zip(plain, aug):
        cands = [np.rot90(p, k) for k in range(4)] + [np.rot90(p, k).T for k in range(4)]
        hits = [i for i, c in enumerate(cands) if np.array_equal(c, q)]
        assert hits
        found.add(hits[0])
    assert len(found) >= 6
    noisy = s.add_noise(np.random.default_rng(0), np.zeros((3, 40, 40), np.float32), np.array([0.0, 0.1, 0.3]))
    np.testing.assert_allclose(noisy.reshape(3, -1).std(axis=1), [0.0, 0.1, 0.3], rtol=0.06)


# --------------------------------------------------------------------------- optimisers
def test_adam_matches_the_formula_and_resumes_exactly():
    rng = np.random.default_rng(0)
    p = {"w": rng.standard_normal(5)}
    w0 = p["w"].copy()
    opt = Adam(p, lr=0.1)
    g1, g2 = rng.standard_normal(5), rng.standard_normal(5)
    opt.step({"w": g1})
    opt.step({"w": g2})
    m = 0.1 * 0.9 * g1 + 0.1 * g2
    v = 0.001 * 0.999 * g1 ** 2 + 0.001 * g2 ** 2
    step1 = 0.1 * g1 / (np.sqrt(g1 ** 2) + 1e-8)
    step2 = 0.1 * (m / (1 - 0.9 ** 2)) / (np.sqrt(v / (1 - 0.999 ** 2)) + 1e-8)
    np.testing.assert_allclose(p["w"], w0 - step1 - step2, rtol=1e-12)
    meta, arrays = opt.state()
    q = {"w": p["w"].copy()}
    opt2 = Adam(q, lr=0.5)
    opt2.load_state(meta, arrays)
    g3 = rng.standard_normal(5)
    opt.step({"w": g3})
    opt2.step({"w": g3})
    np.testing.assert_array_equal(p["w"], q["w"])
    with pytest.raises(ValueError, match="'v'"):
        opt.step({"v": g3})
    with pytest.raises(ValueError, match="lr.*0"):
        Adam(p, lr=0)


def test_sgd_momentum():
    p = {"w": np.zeros(2)}
    opt = SGD(p, lr=0.5, momentum=0.9)
    opt.step({"w": np.array([1.0, 2.0])})
    opt.step({"w": np.array([1.0, 2.0])})
    np.testing.assert_allclose(p["w"], -0.5 * (np.array([1.0, 2.0]) + 1.9 * np.array([1.0, 2.0])))
    with pytest.raises(ValueError, match="momentum"):
        SGD(p, momentum=1.0)


# --------------------------------------------------------------------------- baselines
def test_trials_count_and_grid():
    assert n_trials(10.0, 3.0) == 3 and n_trials(9.0, 3.0) == 3 and n_trials(2.9, 3.0) == 0
    with pytest.raises(ValueError, match="trial_cost"):
        n_trials(1.0, 0.0)
    hy = HyperParameters([Hyperparameter("weight_decay", 1e-4, (1e-8, 1e-1), transform="log", box=(1e-6, 1e-2)),
                          Hyperparameter("noise", 0.0, (-1.5, 1.5), transform="identity")])
    pts = grid_points(hy, 10)
    assert len(pts) == 9
    wd = sorted({p["weight_decay"] for p in pts})
    np.testing.assert_allclose(np.log10(wd), [-6 + 4 / 6, -4, -2 - 4 / 6], rtol=1e-12)
    assert sorted({p["noise"] for p in pts}) == pytest.approx([-1.0, 0.0, 1.0])
    pts1 = grid_points(hy, 4, names=["noise"])
    assert [p["noise"] for p in pts1] == pytest.approx([-1.125, -0.375, 0.375, 1.125])
    assert all(p["weight_decay"] == pytest.approx(1e-4) for p in pts1)
    r = sample_random(hy, 400, np.random.default_rng(0))
    lw = np.log10([p["weight_decay"] for p in r])
    assert lw.min() >= -6 and lw.max() <= -2 and abs(np.median(lw) + 4) < 0.3  # log-uniform
    r5 = sample_random(hy, 5, np.random.default_rng(0))
    assert r5 == r[:5]  # prefix property: a larger budget continues the same sequence of points
    with pytest.raises(ValueError, match="'noise'.*box"):
        sample_random(HyperParameters([Hyperparameter("noise", 0.0)]), 1, np.random.default_rng(0))


def test_grid_search_and_retrain_at_equal_cost(tiny_full):
    _, hy_stn, stn = tiny_full
    model = DnCNNSTN(1, depth=2, channels=4, rng=0)
    hy = HyperParameters([Hyperparameter("noise", 0.0, (-1.5, 1.5), transform="identity")])
    trial = {**TINY, "max_steps": 10, "eval_every": 5}
    gs = grid_search(model, hy, TRAIN, VAL, sigma=0.1, budget=stn.cost, trial_options=trial)
    k = math.floor(stn.cost / gs.trial_cost)
    assert gs.n_trials == k and len(gs.trials) == k and gs.total_cost <= stn.cost
    assert [t["values"]["noise"] for t in gs.trials] == pytest.approx(-1.5 + 3 * (np.arange(k) + 0.5) / k)
    assert gs.best["val_loss"] == min(t["val_loss"] for t in gs.trials)
    with pytest.raises(ValueError, match="'budget'"):
        grid_search(model, hy, TRAIN, VAL, sigma=0.1, budget=stn.cost, trial_options={**trial, "budget": 1.0})
    m4 = DnCNNSTN(4, depth=2, channels=4, rng=0)
    r = train_fixed(m4, hy_stn, stn.hyper, TRAIN, VAL, sigma=0.1, options=TINY)
    assert r.n_hyper_steps == 0 and r.hyper == pytest.approx(stn.hyper, rel=1e-12)
    assert all(row["noise"] == stn.hyper["noise"] and row["sigma_noise"] == stn.hyper_sigma["noise"]
               for row in r.history)


# --------------------------------------------------------------------------- what the steps feed the model
class Recorder:
    """Wraps a model and records the hypernet input and dropout rates of every forward pass."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def forward(self, y, h, *, dropout=None, rng=None):
        self.calls.append((np.array(h, dtype=np.float64), None if dropout is None else np.array(dropout)))
        return self.model.forward(y, h, dropout=dropout, rng=rng)


def test_training_steps_use_the_perturbed_values_and_fixed_trials_the_exact_ones():
    rec = Recorder(DnCNNSTN(4, depth=2, channels=4, rng=0))
    hy = _all_four()
    train_stn(rec, hy, TRAIN, VAL, sigma=0.1, options={**TINY, "max_steps": 12, "warmup_steps": 4}, seed=0)
    train_calls = [(h, d) for h, d in rec.calls if d is not None]
    assert len(train_calls) == 12  # every weight step has dropout on; evaluations and hyper-steps have it off
    assert len(rec.calls) == 12 + 3 + (12 - 4 - 1) // 2  # + evaluations at 0, 10 and the final one + hyper-steps
    spec = hy.specs[hy.index("dropout")]
    for h, d in train_calls:
        np.testing.assert_allclose(d, spec.to_constrained(h[:, 2]), rtol=1e-6)
        assert np.unique(h[:, 0]).size == 4 and np.unique(h[:, 1]).size == 1  # per example / per batch
    hyper_calls = [h for h, d in rec.calls if d is None and h.shape[0] == 4]  # eval batches hold 6 crops
    assert len(hyper_calls) == 3 and all(np.unique(h[:, 0]).size == 4 for h in hyper_calls)  # perturbed
    rec_fixed_scale = Recorder(DnCNNSTN(4, depth=2, channels=4, rng=0))
    hs = _all_four()
    rho0 = hs.rho.copy()
    r = train_stn(rec_fixed_scale, hs, TRAIN, VAL, sigma=0.1, seed=0,
                  options={**TINY, "max_steps": 12, "warmup_steps": 4, "tune_scales": False})
    hyper_calls = [h for h, d in rec_fixed_scale.calls if d is None and h.shape[0] == 4]
    assert len(hyper_calls) == 3 and all(np.unique(h[:, 0]).size == 1 for h in hyper_calls)  # u itself
    np.testing.assert_array_equal(hs.rho, rho0)
    assert r.history[-1]["u_noise"] != r.history[0]["u_noise"]
    rec2 = Recorder(DnCNNSTN(4, depth=2, channels=4, rng=0))
    r = train_fixed(rec2, hy, hy.values(), TRAIN, VAL, sigma=0.1, options={**TINY, "max_steps": 6})
    assert r.n_hyper_steps == 0
    u = hy.copy()
    u.set_values(hy.values())
    for h, _ in rec2.calls:
        np.testing.assert_allclose(h, np.repeat(u.u[None].astype(np.float32), h.shape[0], 0), rtol=1e-6)


def test_weight_decay_enters_the_weight_step_exactly():
    xtr, xv = np.random.default_rng(0).standard_normal((2, 50, 6))
    steps = {}
    for kappa in (0.0, 0.25):
        model = LinearSTN(6, 4, 1, rng=3)
        w0 = {k: v.copy() for k, v in model.params.items()}
        tr = STNTrainer(model, HyperParameters([Hyperparameter("noise", 0.0)]), xtr, xv, sigma=0.1,
                        options={"max_steps": 1, "optimizer": "sgd", "lr": 0.1, "batch_size": 8,
                                 "fixed": {"weight_decay": kappa}}, seed=0)
        tr.weight_step()
        steps[kappa] = {k: model.params[k] - w0[k] for k in w0}
    for k in model.params:
        expected = -0.1 * 0.25 * w0[k] if k in model.decay_keys else 0.0 * w0[k]
        np.testing.assert_allclose(steps[0.25][k] - steps[0.0][k], expected, rtol=1e-10, atol=1e-14, err_msg=k)
    assert set(model.decay_keys) == {"layer1.W_e", "layer1.W_h", "layer2.W"}


# --------------------------------------------------------------------------- backends
def test_backend_run_resumes_exactly_and_matches_numpy(xp, tmp_path):
    """On CuPy (marked gpu) the data stay on the device, a resumed run is exact, and it tracks NumPy."""

    def run(xp_, hyper=_all_four, options=None, **kw):
        hy = hyper()
        model = DnCNNSTN(hy.n, depth=2, channels=4, rng=0, xp=xp_)
        r = train_stn(model, hy, xp_.asarray(TRAIN), xp_.asarray(VAL), sigma=0.1, options={**TINY, **(options or {})},
                      seed=0, **kw)
        return model, hy, r

    full = run(xp)
    assert all(type(v) is type(xp.zeros(1)) for v in full[0].params.values())
    part = run(xp, options={"max_steps": 13}, checkpoint=tmp_path / "c.npz")
    assert part[2].n_steps == 13
    _assert_same_run(full, run(xp, checkpoint=tmp_path / "c.npz", resume=True))

    def no_dropout():  # the dropout masks come from each backend's own generator; the rest is drawn on the host
        return HyperParameters([s for s in _all_four().specs if s.name != "dropout"])

    dev, host = run(xp, no_dropout), run(np, no_dropout)
    np.testing.assert_allclose(dev[2].history_column("val_psnr"), host[2].history_column("val_psnr"), atol=0.02)
    np.testing.assert_allclose(to_numpy(dev[0].params["conv0.K_e"]), host[0].params["conv0.K_e"], atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("a0", [-1.0, 1.0])
def test_dncnn_noise_level_moves_towards_the_target_from_both_sides(a0):
    """Spec §7.3 sanity target: tuning the training-noise level alone pushes σ_train towards the target σ.

    A 3-layer, 8-channel STN-DnCNN on 16x16 patches of synthetic images, 1500 weight steps (about 20 s
    on one core).  Measured (seed 0): a = -1 -> 0.06 and a = +1 -> 0.08 after 1500 steps, validation PSNR
    about 25.5 dB against 19.9 dB for the noisy crops.
    """
    model = DnCNNSTN(1, depth=3, channels=8, rng=0)
    hy = HyperParameters([Hyperparameter("noise", a0, (-2, 2), transform="identity")])
    opts = dict(batch_size=8, patch_size=16, val_batch_size=8, val_patch_size=24, n_eval=16, max_steps=1500,
                warmup_steps=150, eval_every=300, lr=3e-3, hyper_lr=3e-2)
    r = train_stn(model, hy, synth_images(8, 48, 0), synth_images(4, 48, 1), sigma=0.1, options=opts, seed=0)
    a = r.history_column("noise")
    assert abs(a[-1]) < 0.3 and abs(a[-1]) < 0.5 * abs(a0)
    assert np.all(np.abs(a[-3:]) < abs(a0))
    assert r.final_val_psnr > r.noisy_psnr + 4.0


# --------------------------------------------------------------------------- the hyper-step gradient, end to end
@pytest.mark.parametrize("val_loss", ["mse", "log_mse"])
def test_hyper_step_gradient_matches_finite_differences(val_loss):
    """The gradients a hyper-step hands to Adam are those of L_V(ũ(u, rho)) - tau H(rho) for its draws."""
    from varlearn.testing import check_grad

    rng = np.random.default_rng(0)
    xtr, xv = rng.standard_normal((2, 40, 5))
    model = LinearSTN(5, 4, 2, rng=1)
    model.params["layer1.A"][...] = rng.standard_normal(model.params["layer1.A"].shape)
    hy = HyperParameters([Hyperparameter("noise", 0.3, (-3, 3), transform="identity", scale=2.0, sigma0=0.3),
                          Hyperparameter("weight_decay", 1e-2, (1e-6, 1.0), transform="log", per_example=False)])
    tau = 0.05
    tr = STNTrainer(model, hy, xtr, xv, sigma=0.2, options={"max_steps": 1, "val_loss": val_loss, "tau": tau,
                                                           "val_batch_size": 6}, seed=0)
    state = tr.rng.bit_generator.state
    got = {}
    tr.opt_u.step = lambda g: got.update(g)
    tr.opt_rho.step = lambda g: got.update(g)

    def set_theta(theta):
        hy.u[:], hy.rho[:] = theta[:2], theta[2:]
        tr.rng.bit_generator.state = state

    def fun(theta):
        set_theta(theta)
        return tr.hyper_step() - tau * hy.entropy()

    def grad(theta):
        set_theta(theta)
        tr.hyper_step()
        return np.concatenate([got["u"], got["rho"]])

    check_grad(fun, grad, np.concatenate([hy.u, hy.rho]), rng=2, n_dirs=4, raise_error=True)


def test_retrain_following_the_logged_schedule(tiny_full):
    _, hy_stn, stn = tiny_full
    rec = Recorder(DnCNNSTN(4, depth=2, channels=4, rng=0))
    r = train_schedule(rec, hy_stn, stn.history, TRAIN, VAL, sigma=0.1, options=TINY)
    assert r.n_hyper_steps == 0 and r.n_steps == 30
    train_h = [h for h, d in rec.calls if d is not None]  # one per weight step, in order
    assert len(train_h) == 30
    rows = [row for row in stn.history if not row["final"]]
    for step, h in enumerate(train_h):  # step s (0-based) runs after s weight steps: the row with step <= s
        row = [row for row in rows if row["step"] <= step][-1]
        want = [row["u_" + n] for n in hy_stn.names]
        np.testing.assert_allclose(h, np.repeat(np.array(want, np.float32)[None], 4, 0), rtol=1e-6)
    # an evaluation at step s > 0 sees the λ of the segment just trained (the last row before s)
    for row in r.history[1:]:
        assert row["u_noise"] == [x for x in rows if x["step"] < row["step"]][-1]["u_noise"]


def test_patches_from_a_list_of_images_of_different_sizes():
    from varlearn.stn._trainutil import Samples

    imgs = [synth_images(1, 30, 5)[0][:20], synth_images(1, 25, 6)[0]]
    s = Samples(imgs, "train_images", np, np.float32)
    assert s.mode == "image" and s.stack is None and s.min_side() == 20
    for p in s.sample(np.random.default_rng(0), 40, 12):
        hits = [img for img in imgs for a in range(img.shape[0] - 11) for b in range(img.shape[1] - 11)
                if np.array_equal(img[a:a + 12, b:b + 12], p)]
        assert hits
    with pytest.raises(ValueError, match="patch_size=21.*20"):
        s.check_patch(21, "patch_size")
    stacked = Samples([imgs[1], imgs[1]], "val_images", np, np.float32)
    assert stacked.stack is not None and stacked.stack.shape == (2, 25, 25)
