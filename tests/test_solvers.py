"""Certified FISTA and conjugate gradients: certificates, references, warnings, bad input."""

import numpy as np
import pytest
from registry import REGULARIZERS
from scipy.optimize import minimize

import varlearn as vl
from varlearn.results import ConvergenceWarning


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
