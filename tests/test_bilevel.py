"""minimize_bilevel: MAID, fixed accuracy, HOAG, certified decrease, checkpoints, options."""
import json
import warnings

import numpy as np
import pytest

import varlearn as vl
from varlearn.bilevel import HISTORY_FIELDS, CheckpointError, history_to_csv, load_checkpoint


def well_conditioned_quadratic(seed=0, m=120, n=8):
    """A quadratic bilevel problem whose f(theta) has condition number 9 (fast to solve exactly)."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((m, 2 * n)))
    A2 = Q[:, :n]
    A1 = Q[:, n:] + 0.3 * Q[:, :n]
    R, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A3 = A2 @ np.diag(np.linspace(1, 3, n)) @ R
    prob = vl.QuadraticProblem(A2, A3, rng.standard_normal(m))
    U = vl.LeastSquares(A1, rng.standard_normal(m))
    return prob, U, np.ones(n)


def tv_problem(seed=3, n=3, size=16, iso=False):
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[:size, :size] / size
    clean = np.stack([((xx > 0.3 + 0.1 * k) * 0.6 + (yy > 0.5) * 0.3) for k in range(n)])
    noisy = clean + 0.1 * rng.randn(*clean.shape)
    return vl.DenoisingProblem(noisy, vl.TotalVariation(isotropic=iso)), vl.SquaredError(clean)


def without_time(history):
    """History rows without the seconds (everything else of a run is deterministic); NaN as a string,
    so that rows compare equal exactly when every value is the same (NaN == NaN here)."""
    return [{k: ("nan" if isinstance(v, float) and v != v else v) for k, v in row.items() if k != "wall_time"}
            for row in history]


@pytest.mark.parametrize("eps0", [1e-1, 1e-3, 1e-5])
def test_maid_reaches_the_closed_form_optimum(eps0):
    prob, U, theta0 = well_conditioned_quadratic()
    theta_star, f_star = prob.optimal_theta(U)
    res = vl.minimize_bilevel(prob, U, theta0, "maid",
                              options={"eps0": eps0, "delta0": eps0, "nu_inc": 1.25, "maxiter": 400})
    # stops at the attainable accuracy, with a certified bound on the true gradient norm
    assert res.success and res.status == "accuracy_floor", res.message
    exact = np.linalg.norm(prob.exact_hypergradient(res.theta, U))
    assert exact <= res.stationarity_bound <= 1e-5 and "(certified)" in res.message
    assert res.n_accepted == sum(row["accepted"] is True for row in res.history) >= 10
    assert np.linalg.norm(res.theta - theta_star) <= 1e-4
    assert res.fun == pytest.approx(f_star, abs=1e-7)
    eps = res.history_column("eps")
    assert np.any(np.diff(eps) > 0) and np.any(np.diff(eps) < 0)  # adapted, not monotone


def test_fixed_large_accuracy_stalls_and_hoag_runs():
    prob, U, theta0 = well_conditioned_quadratic()
    theta_star, f_star = prob.optimal_theta(U)
    fixed = vl.minimize_bilevel(prob, U, theta0, "fixed", options={"eps0": 1e-1, "delta0": 1e-1, "maxiter": 400})
    assert np.linalg.norm(fixed.theta - theta_star) > 1e-2
    assert fixed.fun > f_star + 1e-4
    maid = vl.minimize_bilevel(prob, U, theta0, "maid", options={"eps0": 1e-1, "delta0": 1e-1, "maxiter": 400})
    assert maid.fun < fixed.fun
    for decay in ("geometric", "quadratic", "cubic"):
        h = vl.minimize_bilevel(prob, U, theta0, "hoag", options={"decay": decay, "maxiter": 30})
        assert h.nit == 30 and h.status == "maxiter"
        assert len(h.history) == 31 and np.all(np.isfinite(h.history_column("fun")))
    geo = vl.minimize_bilevel(prob, U, theta0, "hoag", options={"decay": "geometric", "maxiter": 100})
    assert geo.fun < geo.history[0]["fun"]


def test_every_accepted_maid_step_is_a_certified_decrease():
    prob, U = tv_problem()
    res = vl.minimize_bilevel(prob, U, np.array([-5.0, -5.0]), "maid", options={"maxiter": 12})
    assert res.nit == 12

    thetas = []

    def record(r):
        thetas.append(np.array(r.theta))

    res = vl.minimize_bilevel(prob, U, np.array([-5.0, -5.0]), "maid", options={"maxiter": 12}, callback=record)
    f_tight = []
    x = None
    for th in [np.array([-5.0, -5.0])] + thetas:
        sol = vl.solve_lower(prob, th, 1e-10, x0=x)
        x = sol.x
        f_tight.append(float(U.value(x)))
    accepted = [row["accepted"] for row in res.history[1:]]
    for k, acc in enumerate(accepted):
        if acc:
            assert f_tight[k + 1] < f_tight[k]
        else:
            assert f_tight[k + 1] == f_tight[k]
    # the history's bounds sandwich the tight values
    for row, f in zip(res.history[1:], f_tight[1:]):
        assert row["fun_lower"] - 1e-12 <= f <= row["fun_upper"] + 1e-12


def test_certificate_off_steps_are_still_certified_decreases():
    """bound=False: ε adapts only on line-search failures, yet accepted steps decrease f (tight solves)."""
    rng = np.random.RandomState(4)
    yy, xx = np.mgrid[:24, :24] / 24
    clean = np.stack([(xx > 0.4) * 0.7 + (yy > 0.3) * 0.2, (xx + yy > 0.9) * 0.8])
    noisy = clean + 0.1 * rng.randn(*clean.shape)
    reg = vl.FieldOfExperts(n_filters=3, size=3, rng=5)
    prob, U = vl.DenoisingProblem(noisy, reg), vl.SquaredError(clean)
    theta0 = reg.init_params()
    thetas = []
    res = vl.minimize_bilevel(prob, U, theta0, "maid", callback=lambda r: thetas.append(np.array(r.theta)),
                              options={"bound": False, "step0": 0.01, "maxiter": 25})
    assert all(row["omega"] is None or np.isnan(row["omega"]) for row in res.history)
    accepted = [row["accepted"] for row in res.history[1:]]
    assert sum(accepted) >= 10
    f_tight, x = [], None
    for th in [theta0] + thetas:
        x = vl.solve_lower(prob, th, 1e-10, x0=x, maxiter=100000).x
        f_tight.append(float(U.value(x)))
    for k, acc in enumerate(accepted):
        if acc:
            assert f_tight[k + 1] < f_tight[k], k
        else:
            assert f_tight[k + 1] == pytest.approx(f_tight[k], rel=1e-9, abs=1e-12)
    for row, f in zip(res.history[1:], f_tight[1:]):
        assert row["fun_lower"] - 1e-12 <= f <= row["fun_upper"] + 1e-12


def test_history_and_result_fields(tmp_path):
    prob, U = tv_problem()
    res = vl.minimize_bilevel(prob, U, np.array([-4.0, -4.0]), options={"maxiter": 3})
    for key in ("theta", "fun", "nit", "status", "message", "success", "n_lower_iter", "n_cg_iter", "wall_time",
                "history"):
        assert key in res
    assert len(res.history) == 4 and res.history[0]["iter"] == 0 and res.history[-1]["iter"] == 3
    assert set(HISTORY_FIELDS) <= set(res.history[-1])
    cost = res.history_column("cost")
    assert np.all(np.diff(cost) > 0) and cost[-1] == res.n_lower_iter + res.n_cg_iter
    text = history_to_csv(res.history, tmp_path / "h.csv")
    assert (tmp_path / "h.csv").read_text() == text and text.splitlines()[0].split(",") == list(HISTORY_FIELDS)


@pytest.mark.parametrize("method", ["maid", "fixed", "hoag"])
def test_resume_gives_the_same_theta(method, tmp_path):
    prob, U = tv_problem()
    theta0 = np.array([-4.5, -4.5])
    extra = {"eps0": 1e-4, "delta0": 1e-4} if method == "fixed" else {}
    opts = {"maxiter": 8, **extra}
    full = vl.minimize_bilevel(prob, U, theta0, method, options=opts)
    ck = tmp_path / "run.npz"
    part = vl.minimize_bilevel(prob, U, theta0, method, options={"maxiter": 3, **extra}, checkpoint=ck)
    assert part.nit == 3
    rest = vl.minimize_bilevel(prob, U, theta0, method, options=opts, resume=ck)
    assert rest.nit == full.nit
    # exact: the same θ and the same history (but the seconds) as the uninterrupted run
    np.testing.assert_array_equal(rest.theta, full.theta)
    assert rest.n_lower_iter == full.n_lower_iter and rest.n_cg_iter == full.n_cg_iter
    assert without_time(rest.history) == without_time(full.history)
    assert rest.image_cost == full.image_cost == 3 * (full.n_lower_iter + full.n_cg_iter)


def test_callback_stop_and_stop_after_k_equals_maxiter():
    prob, U = tv_problem()
    theta0 = np.array([-4.0, -4.0])

    def stop_at_2(r):
        if r.nit == 2:
            raise StopIteration

    a = vl.minimize_bilevel(prob, U, theta0, callback=stop_at_2, options={"maxiter": 10})
    b = vl.minimize_bilevel(prob, U, theta0, options={"maxiter": 2})
    assert a.status == "callback_stop" and not a.success
    # a limit reached is not success (SciPy's meaning: the requested accuracy was met)
    assert b.status == "maxiter" and not b.success and np.isnan(b.stationarity_bound)
    assert b.n_accepted == sum(row["accepted"] is True for row in b.history) >= 1
    np.testing.assert_array_equal(a.theta, b.theta)
    assert a.fun == b.fun and a.nit == b.nit == 2


def test_budget_and_time_limits():
    prob, U = tv_problem()
    theta0 = np.array([-4.0, -4.0])
    r = vl.minimize_bilevel(prob, U, theta0, options={"budget": 150})
    assert r.status == "budget_exhausted" and not r.success
    r = vl.minimize_bilevel(prob, U, theta0, options={"time_limit": 1e-9})
    assert r.status == "time_limit" and not r.success
    r = vl.minimize_bilevel(prob, U, theta0, options={"gtol": 1e6})
    assert r.status == "gradient_tol" and r.nit == 0 and r.success


def test_a_run_without_accepted_steps_says_so():
    """Every trial step overflows: theta stays theta0, and the result says so (issue 9)."""
    prob, U = tv_problem()
    theta0 = np.array([-4.0, -4.0])
    r = vl.minimize_bilevel(prob, U, theta0, options={"maxiter": 1, "step0": 1e6, "max_backtracks": 2,
                                                      "max_attempts": 1})
    assert r.status == "maxiter" and not r.success and r.n_accepted == 0
    assert "no step was accepted in 1 outer iterations" in r.message
    np.testing.assert_array_equal(r.theta, theta0)


def test_float32_accuracy_floor_is_not_success():
    """Issue 9: a float32 run that stopped at accuracy_floor (its attainable accuracy) reported success.
    The floor is certified, but its bound on |grad f| is far above stationarity_rtol * |z_0|."""
    prob, U = tv_problem()
    p32 = vl.DenoisingProblem(prob.noisy.astype(np.float32), prob.regularizer)
    r = vl.minimize_bilevel(p32, vl.SquaredError(U.clean.astype(np.float32)), np.array([-5.0, -5.0]),
                            options={"maxiter": 60})
    assert r.status == "accuracy_floor" and not r.success and r.nit < 60
    assert r.stationarity_bound > 1e-3 * r.history[0]["grad_norm"] and "which is not below" in r.message


def test_lower_level_failure_is_not_a_stationary_point():
    """Issue 12, failure 4: at theta = (-2, -12) the lower level cannot meet its tolerance within
    lower_maxiter; this used to end as a successful 'accuracy_floor' (stationary point) although
    |grad f| = 0.35 there."""
    prob, U = tv_problem()
    r = vl.minimize_bilevel(prob, U, np.array([-2.0, -12.0]), options={"maxiter": 3})
    assert r.status == "lower_failed" and not r.success and r.nit == 0
    assert np.isnan(r.stationarity_bound) and len(r.history) == 1
    # the certificate did not hold at the first (default) accuracy: it is the solver, not a small z
    row = r.history[0]
    assert row["omega"] > (1 - 1e-4) * row["grad_norm"] and row["eps"] == r.options["eps0"]


def test_cg_failure_stops_with_its_own_status():
    """A CG that cannot meet its tolerance within cg_maxiter while ω does not certify a descent
    direction stops the run as 'cg_failed' (not success, long before eps reaches its floor)."""
    prob, U = tv_problem()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vl.ConvergenceWarning)
        r = vl.minimize_bilevel(prob, U, np.array([-4.5, -4.5]), options={"maxiter": 3, "cg_maxiter": 1})
    assert r.status == "cg_failed" and not r.success and r.nit == 0
    row = r.history[0]
    assert row["omega"] > row["grad_norm"] and row["eps"] > r.options["eps_floor"]


def test_non_finite_start_stops_with_nan():
    """θ0 whose weight overflows: the first lower-level solve is non-finite.  This used to shrink ε
    down to the floor and end as 'accuracy_floor' with a NaN bound called 'estimated constants'."""
    prob, U = tv_problem()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = vl.minimize_bilevel(prob, U, np.array([700.0, -4.5]), options={"maxiter": 3})
    assert r.status == "nan" and not r.success and r.nit == 0
    assert r.history[0]["eps"] == r.options["eps0"]  # stopped at once, no ε shrinking


@pytest.mark.parametrize("interval,n_saves", [(0.0, 6), (1e9, 2)])
def test_checkpoint_interval_limits_the_saves_and_resume_stays_exact(interval, n_saves, tmp_path, monkeypatch):
    """checkpoint_interval: at most one save per interval (the first iteration and the end always)."""
    from varlearn.bilevel import BilevelSolver

    prob, U = tv_problem()
    theta0 = np.array([-4.5, -4.5])
    full = vl.minimize_bilevel(prob, U, theta0, options={"maxiter": 7})
    saves = []
    real_save = BilevelSolver.save
    monkeypatch.setattr(BilevelSolver, "save", lambda self, state, path: (saves.append(state.k),
                                                                          real_save(self, state, path)))
    ck = tmp_path / "run.npz"
    part = vl.minimize_bilevel(prob, U, theta0, options={"maxiter": 5, "checkpoint_interval": interval},
                               checkpoint=ck)
    assert len(saves) == n_saves and saves[0] == 1 and saves[-1] == part.nit == 5
    rest = vl.minimize_bilevel(prob, U, theta0, options={"maxiter": 7}, resume=ck)
    np.testing.assert_array_equal(rest.theta, full.theta)
    assert rest.n_lower_iter == full.n_lower_iter and rest.n_cg_iter == full.n_cg_iter


def test_corrupted_and_truncated_checkpoints_are_refused(tmp_path):
    prob, U = tv_problem()
    theta0 = np.array([-4.0, -4.0])
    ck = tmp_path / "run.npz"
    vl.minimize_bilevel(prob, U, theta0, options={"maxiter": 2}, checkpoint=ck)
    meta, arrays = load_checkpoint(ck)
    assert meta["k"] == 2 and "theta" in arrays
    data = ck.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        vl.minimize_bilevel(prob, U, theta0, resume=tmp_path / "trunc.npz")
    bad = bytearray(data)
    i = len(bad) // 3
    bad[i:i + 8] = bytes(255 - b for b in bad[i:i + 8])
    (tmp_path / "bad.npz").write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match="corrupted"):
        vl.minimize_bilevel(prob, U, theta0, resume=tmp_path / "bad.npz")
    with pytest.raises(CheckpointError, match="does not exist"):
        vl.minimize_bilevel(prob, U, theta0, resume=tmp_path / "missing.npz")
    with pytest.raises(CheckpointError, match="'maid' run, not 'hoag'"):
        vl.minimize_bilevel(prob, U, theta0, method="hoag", resume=ck)
    other, U2 = tv_problem(size=12)
    with pytest.raises(CheckpointError, match="x_shape"):
        vl.minimize_bilevel(other, U2, theta0, resume=ck)
    # the original is untouched and still loads
    assert ck.read_bytes() == data


def test_checkpoint_has_no_pickle(tmp_path):
    prob, U = tv_problem()
    ck = tmp_path / "run.npz"
    vl.minimize_bilevel(prob, U, np.array([-4.0, -4.0]), options={"maxiter": 1}, checkpoint=ck)
    with np.load(ck, allow_pickle=False) as z:
        meta = json.loads(str(z["__meta__"][()]))
        assert all(z[k].dtype != object for k in z.files)
    assert meta["method"] == "maid" and len(meta["history"]) == 2
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("options,match", [
    ({"eps0": -1.0}, "'eps0'"),
    ({"delta0": 0}, "'delta0'"),
    ({"rho": 1.5}, "'rho'"),
    ({"rho": 0.0}, "'rho'"),
    ({"nu": 1.0}, "'nu'"),
    ({"nu_inc": 0.5}, "'nu_inc'"),
    ({"maxiter": 0}, "'maxiter'"),
    ({"maxiter": 2.5}, "'maxiter'"),
    ({"image_budget": 0}, "'image_budget'"),
    ({"max_iter": 5, "maxiter": 5}, "'max_iter' and 'maxiter' are the same option"),
    ({"bound": "yes"}, "'bound'"),
    ({"armijo": 1e-3}, "'armijo'"),
    ({"checkpoint_interval": -1.0}, "'checkpoint_interval'"),
    ({"bound_constants": "guess"}, "'bound_constants'"),
    ({"not_an_option": 1}, "unknown option 'not_an_option'"),
])
def test_bad_options_raise(options, match):
    prob, U = tv_problem()
    with pytest.raises(ValueError, match=match):
        vl.minimize_bilevel(prob, U, np.array([-4.0, -4.0]), options=options)


def test_bad_method_and_theta():
    prob, U = tv_problem()
    with pytest.raises(ValueError, match="method must be one of"):
        vl.minimize_bilevel(prob, U, np.array([-4.0, -4.0]), method="adam")
    with pytest.raises(ValueError, match="theta0 must be a 1-D array of length 2"):
        vl.minimize_bilevel(prob, U, np.array([-4.0, -4.0, 1.0]))
    with pytest.raises(ValueError, match="theta0 contains NaN"):
        vl.minimize_bilevel(prob, U, np.array([-4.0, np.nan]))
    with pytest.raises(ValueError, match="'decay'"):
        vl.minimize_bilevel(prob, U, np.array([-4.0, -4.0]), method="hoag", options={"decay": "linear"})


def test_resume_with_estimated_bounds_gives_the_same_theta(tmp_path):
    """With estimated constants (bound_constants="estimate") the estimator's state is checkpointed too."""
    rng = np.random.RandomState(0)
    clean = rng.rand(1, 10, 10)
    reg = vl.FieldOfExperts(n_filters=2, size=3, rng=np.random.RandomState(1))
    prob = vl.DenoisingProblem(clean + 0.1 * rng.randn(1, 10, 10), reg)
    U = vl.SquaredError(clean)
    theta0 = reg.init_params()
    est = {"bound_constants": "estimate"}
    full = vl.minimize_bilevel(prob, U, theta0, options={"maxiter": 6, **est})
    assert full.history[-1]["omega"] > 0
    ck = tmp_path / "foe.npz"
    vl.minimize_bilevel(prob, U, theta0, options={"maxiter": 3, **est}, checkpoint=ck)
    rest = vl.minimize_bilevel(prob, U, theta0, options={"maxiter": 6, **est}, resume=ck)
    np.testing.assert_allclose(rest.theta, full.theta, rtol=0, atol=1e-10)
    assert rest.n_lower_iter == full.n_lower_iter and rest.n_cg_iter == full.n_cg_iter


@pytest.mark.parametrize("method", ["maid", "hoag"])
def test_overflowing_trial_steps_are_rejected_not_raised(method):
    """A step so large that exp(theta) overflows is a failed trial (HOAG's first steps can do this)."""
    prob, U = tv_problem()
    res = vl.minimize_bilevel(prob, U, np.array([-4.0, -4.0]), method, options={"maxiter": 3, "step0": 1e6})
    assert res.nit == 3 and np.all(np.isfinite(res.theta))
    assert res.history[1]["accepted"] is False
