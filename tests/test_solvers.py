"""Certified FISTA and conjugate gradients: certificates, references, warnings, bad input."""

import numpy as np
import pytest
from registry import REGULARIZERS
from scipy.optimize import minimize

import varlearn as vl
from varlearn.results import ConvergenceWarning
from varlearn.solvers import CG, FISTA, solve_lower


def _tv(rng, iso=True, n=2, size=14, xp=np):
    clean = rng.rand(n, size, size)
    noisy = clean + 0.1 * rng.randn(n, size, size)
    return vl.DenoisingProblem(xp.asarray(noisy), vl.TotalVariation(isotropic=iso))


@pytest.mark.parametrize("iso", [True, False])
def test_certificate_is_real(iso, xp, rng):
    prob = _tv(rng, iso, xp=xp)
    for theta in ([-2.0, -3.0], [-3.5, -5.0], [-1.0, -2.0]):
        theta = xp.asarray(theta)
        ref = vl.solve_lower(prob, theta, 1e-10)
        assert ref.success
        for tol in (1e-1, 1e-3, 1e-5, 1e-7):
            res = vl.solve_lower(prob, theta, tol)
            assert res.success and res.distance_bound <= tol
            assert float(xp.linalg.norm(res.x - ref.x)) <= tol
            assert res.grad_norm == pytest.approx(float(xp.linalg.norm(prob.grad(res.x, theta))), rel=1e-12)


@pytest.mark.parametrize("name", sorted(REGULARIZERS))
def test_certificate_for_every_regularizer(name, rng):
    reg, theta = REGULARIZERS[name](np.random.RandomState(5))
    if theta is None:
        theta = reg.init_params()
    noisy = rng.rand(2, 9, 8)
    prob = vl.DenoisingProblem(noisy, reg)
    ref = vl.solve_lower(prob, theta, 1e-10, maxiter=50000)
    for tol in (1e-2, 1e-5):
        res = vl.solve_lower(prob, theta, tol, maxiter=50000)
        assert res.success and np.linalg.norm(res.x - ref.x) <= tol


@pytest.mark.parametrize("iso", [True, False])
def test_tv_agrees_with_lbfgs(iso, rng):
    prob = _tv(rng, iso, n=1, size=12)
    theta = np.array([-2.0, -3.0])
    res = vl.solve_lower(prob, theta, 1e-10)
    def f(v):
        return float(prob.value(v.reshape(prob.x_shape), theta))

    def g(v):
        return prob.grad(v.reshape(prob.x_shape), theta).ravel()

    ref = minimize(f, prob.noisy.ravel(), jac=g, method="L-BFGS-B",
                   options={"maxiter": 20000, "ftol": 1e-16, "gtol": 1e-12, "maxcor": 30})
    np.testing.assert_allclose(res.x.ravel(), ref.x, atol=1e-6)


def test_warm_start_and_float32(rng):
    prob = _tv(rng)
    theta = np.array([-2.0, -3.0])
    cold = vl.solve_lower(prob, theta, 1e-6)
    warm = vl.solve_lower(prob, theta, 1e-6, x0=cold.x)
    assert warm.nit == 1 and np.array_equal(warm.x, cold.x)
    assert warm.x is not cold.x  # x0 is never returned by reference nor modified
    prob32 = vl.DenoisingProblem(prob.noisy.astype(np.float32), prob.regularizer)
    r32 = vl.solve_lower(prob32, theta, 1e-4)
    assert r32.x.dtype == np.float32 and r32.success
    assert np.linalg.norm(r32.x - cold.x) <= 1e-4 + 1e-6


def test_backtracking_option_gives_certified_solution(rng):
    prob = _tv(rng)
    theta = np.array([-2.0, -3.0])
    ref = vl.solve_lower(prob, theta, 1e-10)
    bt = vl.solve_lower(prob, theta, 1e-5, backtracking=True)
    assert bt.success and np.linalg.norm(bt.x - ref.x) <= 1e-5
    assert bt.L <= prob.lipschitz(theta)


def test_nonconvergence_is_reported(rng):
    prob = _tv(rng)
    with pytest.warns(ConvergenceWarning, match="maxiter"):
        res = vl.solve_lower(prob, np.array([-2.0, -6.0]), 1e-12, maxiter=3)
    assert res.status == "maxiter" and not res.success
    assert res.distance_bound > 1e-12


def test_solve_lower_bad_input(rng):
    prob = _tv(rng)
    theta = np.array([-2.0, -3.0])
    with pytest.raises(ValueError, match="tol must be > 0, got -1"):
        vl.solve_lower(prob, theta, -1.0)
    with pytest.raises(ValueError, match="tol must be > 0, got 0"):
        vl.solve_lower(prob, theta, 0)
    with pytest.raises(ValueError, match="length 2"):
        vl.solve_lower(prob, np.zeros(3), 1e-3)
    with pytest.raises(ValueError, match="theta contains NaN"):
        vl.solve_lower(prob, np.array([np.nan, 1.0]), 1e-3)
    with pytest.raises(ValueError, match=r"x0 must have shape \(2, 14, 14\)"):
        vl.solve_lower(prob, theta, 1e-3, x0=np.zeros((2, 14, 13)))
    with pytest.raises(ValueError, match="maxiter must be >= 1"):
        vl.solve_lower(prob, theta, 1e-3, maxiter=0)
    with pytest.raises(TypeError, match="theta must be a 1-D NumPy or CuPy array"):
        vl.solve_lower(prob, [-2.0, -3.0], 1e-3)


def test_problem_bad_input(rng):
    with pytest.raises(ValueError, match="noisy contains 1 NaN"):
        vl.DenoisingProblem(np.array([[[np.nan, 0.0], [0.0, 0.0]]]), vl.TotalVariation())
    with pytest.raises(ValueError, match=r"noisy must have shape \(N, H, W\) or \(H, W\), got shape \(4,\)"):
        vl.DenoisingProblem(np.zeros(4), vl.TotalVariation())
    with pytest.raises(TypeError, match="regularizer must be a Regularizer"):
        vl.DenoisingProblem(np.zeros((3, 3)), "tv")
    with pytest.raises(ValueError, match="complex"):
        vl.DenoisingProblem(np.zeros((3, 3), complex), vl.TotalVariation())
    p = vl.DenoisingProblem((np.arange(16).reshape(4, 4) * 10).astype(np.uint8), vl.TotalVariation())
    assert p.noisy.dtype == np.float64 and p.noisy.max() == pytest.approx(150 / 255)


def test_mixed_backends_are_refused(rng):
    """A CuPy theta on a NumPy problem (or vice versa) is a TypeError, never a silent copy."""
    prob = _tv(rng)

    class FakeCupy(np.ndarray):
        pass

    FakeCupy.__module__ = "cupy._core.core"
    theta = np.array([-2.0, -3.0]).view(FakeCupy)
    with pytest.raises(TypeError, match="mixed array backends|cupy"):
        vl.solve_lower(prob, theta, 1e-3)


# ---------------------------------------------------------------- CG
def _spd(rng, n=30, cond=100.0):
    Q, _ = np.linalg.qr(rng.randn(n, n))
    return Q @ np.diag(np.geomspace(1, cond, n)) @ Q.T


@pytest.mark.parametrize("tol", [1e-2, 1e-6, 1e-10])
def test_cg_absolute_residual(tol, rng):
    A = _spd(rng)
    b = rng.randn(30)
    res = vl.cg(lambda v: A @ v, b, tol)
    assert res.success and np.linalg.norm(A @ res.x - b) <= tol
    assert res.residual_norm == pytest.approx(np.linalg.norm(A @ res.x - b), rel=1e-6, abs=1e-14)
    np.testing.assert_allclose(res.x, np.linalg.solve(A, b), atol=tol * 10)


def test_cg_warm_start_and_zero_rhs(rng):
    A = _spd(rng)
    b = rng.randn(30)
    exact = np.linalg.solve(A, b)
    res = vl.cg(lambda v: A @ v, b, 1e-8, x0=exact)
    assert res.nit == 1 and np.array_equal(res.x, exact)
    res0 = vl.cg(lambda v: A @ v, np.zeros(30), 1e-8)
    assert res0.nit == 0 and np.all(res0.x == 0)  # returns 0, not something else


def test_cg_reports_nonconvergence_and_indefiniteness(rng):
    A = _spd(rng, cond=1e8)
    b = rng.randn(30)
    with pytest.warns(ConvergenceWarning, match="maxiter"):
        res = vl.cg(lambda v: A @ v, b, 1e-12, maxiter=5)
    assert res.status == "maxiter" and not res.success
    M = np.diag(np.r_[np.ones(29), -1.0])
    with pytest.warns(ConvergenceWarning, match="indefinite"):
        res = vl.cg(lambda v: M @ v, np.ones(30), 1e-8)
    assert res.status == "indefinite"
    with pytest.raises(ValueError, match="tol must be > 0"):
        vl.cg(lambda v: A @ v, b, -1.0)


# ---------------------------------------------------------------- one step path, solver objects, callbacks
def _cp16_reference(prob, theta, x0, L, mu, n_iter, gnorms=None):
    """FISTA of Chambolle & Pock (2016, §4.7) written out plainly: the iterates x_1..x_n."""
    x, x_prev, t, q, out = x0.copy(), x0.copy(), 1.0, mu / L, []
    for _ in range(n_iter):
        t_new = 0.5 * (1 - q * t * t + np.sqrt((1 - q * t * t) ** 2 + 4 * t * t))
        beta = (t - 1) * (1 - t_new * q) / (t_new * (1 - q))
        z = x + beta * (x - x_prev)
        g = prob.grad(z, theta)
        if gnorms is not None:
            gnorms.append(np.linalg.norm(g))
        x_prev, x, t = x, z - g / L, t_new
        out.append(x)
    return out


class _Inflated:
    """A problem whose gradient rounding bound is ``rho`` (so that a first candidate fails to certify)."""

    def __init__(self, prob, rho):
        self.prob, self.rho = prob, rho

    def __getattr__(self, name):
        return getattr(self.prob, name)

    def grad_error_bound(self, x, theta):
        return self.rho


def test_a_candidate_that_fails_to_certify_does_not_disturb_the_iteration(rng):
    """After a failed candidate (target lowered) both step paths go on with FISTA's own next iterate."""
    prob = _tv(rng, n=1, size=12)
    theta = np.array([-2.0, -4.0])
    L, mu = prob.lipschitz(theta), prob.strong_convexity(theta)
    gnorms = []
    ref = _cp16_reference(prob, theta, prob.noisy, L, mu, 200, gnorms)
    k0 = 12
    tol = 1.0001 * gnorms[k0] / mu
    assert min(gnorms[:k0]) > mu * tol  # iteration k0 is the first whose gradient meets mu * tol
    inflated = _Inflated(prob, 0.3 * mu * tol)  # certificate of that candidate: about 1.3 tol > tol
    for bt in (False, True):
        seen = []
        res = FISTA(backtracking=bt).solve(inflated, theta, tol, L0=L, callback=lambda r, s=seen: s.append(r.x.copy()))
        assert res.success and res.distance_bound <= tol
        assert len(seen) > k0 + 1  # it went on past the failed candidate
        for k, a in enumerate(seen):
            assert np.linalg.norm(a - ref[k]) <= 1e-13 * np.linalg.norm(prob.noisy), (bt, k)


@pytest.mark.parametrize("iso", [True, False])
def test_one_step_path_matches_the_plain_iteration(iso, accel, rng):
    """Fixed step (one fused pass) and backtracking (own z, no L change) give FISTA's iterates to rounding."""
    prob = _tv(rng, iso, n=2, size=12)
    theta = np.array([-2.0, -4.0])
    L, mu = prob.lipschitz(theta), prob.strong_convexity(theta)
    ref = _cp16_reference(prob, theta, prob.noisy, L, mu, 30)
    scale = np.linalg.norm(prob.noisy)
    for bt in (False, True):
        seen = []
        with pytest.warns(ConvergenceWarning, match="maxiter"):
            res = FISTA(maxiter=30, backtracking=bt).solve(
                prob, theta, 1e-14, L0=L, callback=lambda r, seen=seen: seen.append(r.x.copy()))
        assert len(seen) == 30 and res.L == L and res.n_backtracks == 0
        for k, (a, b) in enumerate(zip(seen, ref)):
            assert np.linalg.norm(a - b) <= 1e-13 * scale, (bt, k, np.linalg.norm(a - b))
        np.testing.assert_array_equal(res.x, seen[-1])


class _Counting:
    """Counts the gradients a solver asks of a problem (fused or not)."""

    def __init__(self, prob):
        self.prob, self.n = prob, 0

    def __getattr__(self, name):
        return getattr(self.prob, name)

    def grad(self, x, theta):
        self.n += 1
        return self.prob.grad(x, theta)

    def fused_grad(self, x, theta, **kw):
        self.n += 1
        return self.prob.fused_grad(x, theta, **kw)


def test_nit_counts_every_gradient_and_backtracking_certifies_without_a_second_one(rng):
    prob = _tv(rng)
    theta = np.array([-2.0, -3.0])
    for bt in (False, True):
        c = _Counting(prob)
        res = solve_lower(c, theta, 1e-6, backtracking=bt)
        assert res.success and res.nit == c.n
    # both reach the tolerance; the fixed step spends one gradient to form z at the end
    ref = solve_lower(prob, theta, 1e-10)
    for bt in (False, True):
        assert np.linalg.norm(solve_lower(prob, theta, 1e-6, backtracking=bt).x - ref.x) <= 1e-6


def test_solver_objects_validate_options_and_match_the_front_doors(rng):
    with pytest.raises(TypeError, match="max_iter"):
        FISTA(max_iter=5)
    with pytest.raises(ValueError, match="maxiter must be >= 1, got 0"):
        FISTA(maxiter=0)
    with pytest.raises(TypeError, match="maxiter must be an integer, got 2.5"):
        CG(maxiter=2.5)
    with pytest.raises(ValueError, match="backtracking must be True, False or 'auto', got 'yes'"):
        FISTA(backtracking="yes")
    solver = FISTA(maxiter=500)
    with pytest.raises(AttributeError):
        solver.maxiter = 3  # options are fixed at construction
    assert repr(solver) == "FISTA(maxiter=500, backtracking='auto')"
    prob = _tv(rng)
    theta = np.array([-2.0, -3.0])
    a, b = solver.solve(prob, theta, 1e-5), solve_lower(prob, theta, 1e-5, maxiter=500)
    np.testing.assert_array_equal(a.x, b.x)
    assert (a.nit, a.distance_bound, a.status) == (b.nit, b.distance_bound, b.status)
    A = _spd(rng)
    rhs = rng.randn(30)
    r1, r2 = CG(maxiter=100).solve(lambda v: A @ v, rhs, 1e-9), vl.cg(lambda v: A @ v, rhs, 1e-9, maxiter=100)
    np.testing.assert_array_equal(r1.x, r2.x)
    assert (r1.nit, r1.residual_norm) == (r2.nit, r2.residual_norm)


def test_callback_gets_intermediate_results_and_stops_like_maxiter(rng):
    prob = _tv(rng)
    theta = np.array([-2.0, -5.0])
    seen = []

    def stop_at_7(res):
        seen.append((res.nit, res.grad_norm, res.L, res.x.copy()))
        if len(seen) == 7:
            raise StopIteration

    with pytest.warns(ConvergenceWarning, match="callback_stop"):
        res = solve_lower(prob, theta, 1e-12, callback=stop_at_7)
    assert res.status == "callback_stop" and not res.success
    assert [s[0] for s in seen] == list(range(2, 9))  # the start point's gradient, then one per step
    with pytest.warns(ConvergenceWarning, match="maxiter"):
        capped = solve_lower(prob, theta, 1e-12, maxiter=7)
    np.testing.assert_array_equal(res.x, capped.x)
    np.testing.assert_array_equal(seen[-1][3], capped.x)
    assert res.nit == capped.nit and res.distance_bound == capped.distance_bound
    assert all(np.isfinite(s[1]) and s[2] == prob.lipschitz(theta) for s in seen)


def test_old_three_argument_callback_still_works_with_a_deprecation_warning(rng):
    prob = _tv(rng)
    theta = np.array([-2.0, -5.0])
    old, new = [], []
    with pytest.warns(DeprecationWarning, match=r"callback\(k, x, grad_norm\) is deprecated"):
        with pytest.warns(ConvergenceWarning):
            solve_lower(prob, theta, 1e-12, maxiter=5, callback=lambda k, x, g: old.append((k, x.copy(), g)))
    with pytest.warns(ConvergenceWarning):
        solve_lower(prob, theta, 1e-12, maxiter=5, callback=lambda *r: new.append(r))  # *args: the new form
    assert [o[0] for o in old] == list(range(5))
    assert all(len(r) == 1 and r[0].grad_norm == o[2] for r, o in zip(new, old))
    np.testing.assert_array_equal(old[0][1], prob.noisy)  # the iterate before the step
    np.testing.assert_array_equal(old[3][1], new[2][0].x)
    with pytest.raises(TypeError, match="callback must be callable or None, got int"):
        solve_lower(prob, theta, 1e-3, callback=3)


def test_cg_callback_and_stop(rng):
    A = _spd(rng, cond=1e4)
    b = rng.randn(30)
    seen = []

    def cb(res):
        seen.append((res.nit, res.residual_norm))
        assert res.grad_norm == res.residual_norm
        if len(seen) == 4:
            raise StopIteration

    with pytest.warns(ConvergenceWarning, match="callback_stop"):
        res = vl.cg(lambda v: A @ v, b, 1e-12, callback=cb)
    assert [s[0] for s in seen] == [1, 2, 3, 4] and res.status == "callback_stop" and not res.success
    assert res.nit == 5  # the closing true-residual product
    assert res.residual_norm == pytest.approx(np.linalg.norm(b - A @ res.x), rel=1e-12)
    with pytest.warns(ConvergenceWarning, match="maxiter"):
        capped = vl.cg(lambda v: A @ v, b, 1e-12, maxiter=4)
    np.testing.assert_array_equal(res.x, capped.x)


def test_wall_time_and_the_deprecated_time_key(rng):
    prob = _tv(rng)
    res = solve_lower(prob, np.array([-2.0, -3.0]), 1e-4)
    assert res.wall_time > 0 and "time" not in res
    with pytest.warns(DeprecationWarning, match="'time' is deprecated; use 'wall_time'"):
        assert res.time == res.wall_time
    with pytest.warns(DeprecationWarning, match="'time' is deprecated"):
        assert res["time"] == res.wall_time
    with pytest.raises(AttributeError):
        res.no_such_key  # noqa: B018


def test_generic_fused_grad_of_a_problem_without_a_kernel(rng):
    """LowerProblem.fused_grad's default: the C4 semantics from grad(), for any problem."""
    A, B, b = rng.randn(20, 6), rng.randn(20, 2), rng.randn(20)
    prob = vl.QuadraticProblem(A, B, b)
    theta = np.array([0.3, -0.2])
    x, x_prev = rng.randn(6), rng.randn(6)
    z = x + 0.4 * (x - x_prev)
    g = prob.grad(z, theta)
    out, gn = prob.fused_grad(x, theta, x_prev=x_prev, beta=0.4, step=0.1)
    np.testing.assert_allclose(out, z - 0.1 * g, rtol=1e-14)
    assert gn == pytest.approx(np.linalg.norm(g), rel=1e-14)
    buf = np.empty(6)
    out, gn = prob.fused_grad(x, theta, out=buf)
    assert out is buf and np.array_equal(buf, prob.grad(x, theta))
    with pytest.raises(TypeError, match="abstract"):
        vl.LowerProblem()

    class NoGrad(vl.UpperLoss):
        def value(self, x):
            return 0.0

    with pytest.raises(TypeError, match="abstract.*grad"):
        NoGrad()


def test_fixed_step_fista_is_one_fused_call_per_iteration(rng, monkeypatch):
    """Without backtracking every iteration is one regularizer.fused_grad call with extrapolation and step."""
    prob = _tv(rng)
    reg = prob.regularizer
    calls = []
    fused = reg.fused_grad

    def spy(x, theta, y=None, data_w=0.0, **kw):
        calls.append(kw)
        return fused(x, theta, y, data_w, **kw)

    monkeypatch.setattr(reg, "fused_grad", spy)
    with pytest.warns(ConvergenceWarning, match="maxiter"):
        solve_lower(prob, np.array([-2.0, -6.0]), 1e-14, maxiter=20, backtracking=False)
    steps = [c for c in calls if c["step"] is not None]
    assert len(steps) == 20 and len(calls) == 22  # + the start point's gradient and the certificate at exit
    assert all(c["x_prev"] is not None and c["out"] is not None for c in steps)
    assert sum(c["beta"] != 0 for c in steps) == 19  # t_1 = 1: the first step does not extrapolate


def test_estimate_lipschitz_is_reproducible_and_draws_by_the_backend_rule(rng):
    from varlearn.solvers import estimate_lipschitz

    prob = _tv(rng)
    theta = np.array([-2.0, -3.0])
    x = prob.noisy
    a = estimate_lipschitz(prob, theta, x, n_iter=6, rng=5)
    assert a == estimate_lipschitz(prob, theta, x, n_iter=6, rng=5)
    assert estimate_lipschitz(prob, theta, x, n_iter=6) == estimate_lipschitz(prob, theta, x, n_iter=6, rng=0)
    v = np.random.default_rng(5).standard_normal(x.shape).astype(x.dtype)  # random_normal's NumPy rule
    v /= np.linalg.norm(v)
    for _ in range(6):
        hv = prob.hvp(x, theta, v)
        lam = np.linalg.norm(hv)
        v = hv / lam
    assert a == pytest.approx(lam, rel=1e-12)
    assert 0 < a <= prob.lipschitz(theta)
