"""Registry-driven derivative checks: every operator, potential, regularizer and problem."""
import math

import numpy as np
import pytest
from registry import REGULARIZERS

import varlearn as vl
from varlearn.operators import FiniteDifference, Identity
from varlearn.potentials import POTENTIALS
from varlearn.testing import check_adjoint, check_grad, check_hvp, check_mixed, check_problem, check_regularizer


def _theta(reg, theta, rng, xp):
    if theta is None:
        theta = reg.init_params(rng) + 0.05 * rng.standard_normal(reg.n_params)
    return xp.asarray(theta)


# ---------------------------------------------------------------- operators
@pytest.mark.parametrize("shape", [(7, 9), (3, 6, 5), (2, 2, 4, 3)])
def test_finite_difference_adjoint(xp, shape, rng):
    D = FiniteDifference()
    check_adjoint(D.apply, D.adjoint, shape, like=xp.zeros(1), rng=rng, raise_error=True)


def test_finite_difference_values_and_norm(rng):
    D = FiniteDifference()
    x = rng.rand(4, 5)
    u = D.apply(x)
    assert np.allclose(u[0, :, :-1], np.diff(x, axis=1)) and np.all(u[0, :, -1] == 0)
    assert np.allclose(u[1, :-1, :], np.diff(x, axis=0)) and np.all(u[1, -1, :] == 0)
    # power iteration on D^T D stays below the bound 8
    v = rng.randn(32, 32)
    for _ in range(200):
        v = D.adjoint(D.apply(v))
        v /= np.linalg.norm(v)
    assert np.linalg.norm(D.adjoint(D.apply(v))) <= D.norm_bound() ** 2
    assert np.linalg.norm(D.adjoint(D.apply(v))) > 7.5  # and the bound is nearly tight


def test_identity_adjoint(rng):
    ident = Identity()
    check_adjoint(ident.apply, ident.adjoint, (3, 4), rng=rng, raise_error=True)


def test_adjoint_check_detects_wrong_adjoint(rng):
    D = FiniteDifference()
    rep = check_adjoint(D.apply, lambda u: 1.001 * D.adjoint(u), (5, 6), rng=rng)
    assert not rep.ok


# ---------------------------------------------------------------- potentials
@pytest.mark.parametrize("name", sorted(POTENTIALS))
@pytest.mark.parametrize("nu", [0.05, 1.3])
def test_potential_derivatives(name, nu, rng):
    P = POTENTIALS[name]()
    t = 3 * nu * rng.randn(50)
    if name == "huber":  # keep away from the kinks |t| = nu
        t = t[np.abs(np.abs(t) - nu) > 0.05 * nu]
    pairs = [(P.value, P.d1), (P.d1, P.d2), (P.d2, P.d3)]
    h0 = 0.1 * nu
    if name == "huber":  # piecewise quadratic: steps must not cross the kinks
        pairs = pairs[:2]
        h0 = 0.01 * nu
    for f, df in pairs:
        # the derivative of sum(w * f(t)) in t is w * df(t)
        w = rng.randn(t.size)
        check_grad(lambda s, f=f, w=w: np.sum(w * f(s, nu)), lambda s, df=df, w=w: w * df(s, nu), t,
                   rng=rng, h0=h0, raise_error=True)
    for f, dnu in [(P.value, P.value_dnu), (P.d1, P.d1_dnu), (P.d2, P.d2_dnu)]:
        w = rng.randn(t.size)
        if not P.has_param:
            assert np.all(dnu(t, nu) == 0)
            continue
        check_grad(lambda n, f=f, w=w: np.sum(w * f(t, n[0])),
                   lambda n, dnu=dnu, w=w: np.array([np.sum(w * dnu(t, n[0]))]),
                   np.array([nu]), rng=rng, h0=h0, raise_error=True)


@pytest.mark.parametrize("name", sorted(POTENTIALS))
@pytest.mark.parametrize("nu", [0.05, 1.3])
def test_potential_bounds(name, nu):
    P = POTENTIALS[name]()
    t = np.linspace(-200 * nu, 200 * nu, 400001)
    d2 = P.d2(t, nu)
    assert d2.max() <= P.d2_max(nu) * (1 + 1e-12)
    assert d2.min() >= P.d2_min(nu) - 1e-12 * abs(P.d2_max(nu))
    if math.isfinite(P.d3_max(nu)):
        assert np.abs(P.d3(t, nu)).max() <= P.d3_max(nu) * (1 + 1e-9)
        assert np.abs(P.d3(t, nu)).max() >= 0.99 * P.d3_max(nu)  # and tight
    assert np.abs(P.d2_dnu(t, nu)).max() <= P.d2_dnu_max(nu) * (1 + 1e-9)
    d1 = np.abs(P.d1(t, nu))
    assert d1.max() <= P.d1_max(nu) * (1 + 1e-12)  # sup |φ'| (used by the rounding bounds)
    if math.isfinite(P.d1_max(nu)):
        assert d1.max() >= 0.99 * P.d1_max(nu)  # and tight
    assert np.all(d1 <= P.d2_max(nu) * np.abs(t) * (1 + 1e-12))  # |φ'(t)| <= sup φ'' |t| (φ'(0) = 0)


# ---------------------------------------------------------------- regularizers
@pytest.mark.parametrize("name", sorted(REGULARIZERS))
def test_regularizer_derivatives(name, xp, rng):
    reg, theta = REGULARIZERS[name](np.random.RandomState(5))
    x = xp.asarray(rng.rand(2, 8, 9))
    theta = _theta(reg, theta, rng, xp)
    rep = check_regularizer(reg, x, theta, rng=rng)
    assert rep.ok, rep.failures()
    assert theta.shape == (reg.n_params,)
    layout = reg.param_layout()
    covered = np.zeros(reg.n_params, bool)
    for _, sl in layout:
        assert not covered[sl].any()
        covered[sl] = True
    assert covered.all()


@pytest.mark.parametrize("name", ["tv_iso", "tv_aniso", "tv_iso_sharp"])
def test_tv_derivatives_with_and_without_kernels(name, accel, rng):
    reg, theta = REGULARIZERS[name](None)
    x = rng.rand(3, 7, 10)
    rep = check_regularizer(reg, x, theta, rng=rng)
    assert rep.ok, rep.failures()


@pytest.mark.parametrize("iso", [True, False])
def test_tv_kernels_match_reference(iso, rng):
    from varlearn import _accel

    reg = vl.TotalVariation(isotropic=iso)
    theta = np.array([-1.2, -2.3])
    x, v = rng.rand(3, 11, 6), rng.randn(3, 11, 6)
    old = _accel.set_accelerated(False)
    ref = (reg.value(x, theta), reg.grad(x, theta), reg.hvp(x, theta, v))
    _accel.set_accelerated(True)
    got = (reg.value(x, theta), reg.grad(x, theta), reg.hvp(x, theta, v))
    _accel.set_accelerated(old)
    for a, b in zip(ref, got):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-13)


def test_tv_anisotropic_value_counts_only_existing_differences():
    reg = vl.TotalVariation(isotropic=False)
    x = np.zeros((1, 3, 4))
    nu = math.exp(-2.0)
    # constant image: (H-1)W + H(W-1) = 8 + 9 = 17 terms of sqrt(0 + nu^2)
    assert float(reg.value(x, np.array([0.0, -2.0]))) == pytest.approx(17 * nu)
    reg_iso = vl.TotalVariation(isotropic=True)
    assert float(reg_iso.value(x, np.array([0.0, -2.0]))) == pytest.approx(12 * nu)


@pytest.mark.parametrize("name", ["tv_iso", "tv_aniso", "tikhonov", "potential_huber_fd", "sum_tv_tikhonov"])
def test_regularizer_lipschitz_bounds_the_hessian(name, rng):
    reg, theta = REGULARIZERS[name](None)
    x = rng.rand(1, 16, 16)
    v = rng.randn(1, 16, 16)
    lam = 0.0
    for _ in range(100):
        hv = reg.hvp(x, theta, v)
        lam = np.linalg.norm(hv)
        v = hv / lam
    assert lam <= reg.lipschitz(theta) * (1 + 1e-10)
    assert reg.convexity(theta) <= lam


@pytest.mark.parametrize("iso", [True, False])
def test_tv_constants_of_the_error_bound(iso, rng):
    """hessian_lipschitz, mixed_lipschitz and mixed_norm_bound really bound what they claim."""
    reg = vl.TotalVariation(isotropic=iso)
    theta = np.array([-1.0, -1.5])
    LH, LJ = reg.hessian_lipschitz(theta), reg.mixed_lipschitz(theta)
    for _ in range(5):
        x = rng.rand(1, 10, 10)
        y = x + 0.01 * rng.randn(1, 10, 10)
        v = rng.randn(1, 10, 10)
        v /= np.linalg.norm(v)
        dist = np.linalg.norm(x - y)
        assert np.linalg.norm(reg.hvp(x, theta, v) - reg.hvp(y, theta, v)) <= LH * dist
        q = rng.randn(1, 10, 10)
        assert np.linalg.norm(reg.mixed_vjp(x, theta, q) - reg.mixed_vjp(y, theta, q)) <= LJ * dist * np.linalg.norm(q)
        # ||J|| >= |J^T q| / |q| for any q
        bound = reg.mixed_norm_bound(x, theta) * np.linalg.norm(q) * (1 + 1e-12)
        assert np.linalg.norm(reg.mixed_vjp(x, theta, q)) <= bound


# ---------------------------------------------------------------- the checker can fail
def test_checker_detects_wrong_gradient(rng):
    reg = vl.TotalVariation()
    theta = np.array([-1.0, -2.0])
    x = rng.rand(1, 6, 6)
    bad = check_grad(lambda y: reg.value(y, theta), lambda y: reg.grad(y, theta) * (1 + 1e-4), x, rng=rng)
    assert not bad.ok
    good = check_grad(lambda y: reg.value(y, theta), lambda y: reg.grad(y, theta), x, rng=rng)
    assert good.ok and good.errors["order"] > 1.8


def test_checker_detects_asymmetric_or_wrong_hvp(rng):
    reg = vl.TotalVariation()
    theta = np.array([-1.0, -2.0])
    x = rng.rand(1, 6, 6)
    shift = rng.randn(1, 6, 6)
    bad = check_hvp(lambda y: reg.grad(y, theta),
                    lambda y, w: reg.hvp(y, theta, w) + 1e-3 * np.vdot(shift, w) * x, x, rng=rng)
    assert not bad.ok


def test_checker_detects_wrong_mixed_block(rng):
    reg = vl.TotalVariation()
    theta = np.array([-1.0, -2.0])
    x = rng.rand(1, 6, 6)

    def wrong(y, th, w):
        out = reg.mixed_vjp(y, th, w)
        out[1] *= 1.01
        return out

    rep = check_mixed(reg.grad, wrong, x, theta, rng=rng, blocks=reg.param_layout())
    assert not rep.ok
    assert rep.details["log_weight0"].ok and not rep.details["log_smoothing0"].ok
    with pytest.raises(AssertionError, match="derivative check failed"):
        check_mixed(reg.grad, wrong, x, theta, rng=rng, raise_error=True)


def test_checker_does_not_modify_inputs(rng):
    reg = vl.TotalVariation()
    theta = np.array([-1.0, -2.0])
    x = rng.rand(1, 6, 6)
    x0, t0 = x.copy(), theta.copy()
    check_regularizer(reg, x, theta, rng=rng)
    assert np.array_equal(x, x0) and np.array_equal(theta, t0)


def test_checker_requires_float64(rng):
    reg = vl.TotalVariation()
    with pytest.raises(ValueError, match="float64"):
        check_regularizer(reg, rng.rand(1, 5, 5).astype(np.float32), np.array([-1.0, -2.0]))


# ---------------------------------------------------------------- problems
@pytest.mark.parametrize("name", sorted(REGULARIZERS))
def test_denoising_problem_derivatives(name, xp, rng):
    reg, theta = REGULARIZERS[name](np.random.RandomState(5))
    noisy = xp.asarray(rng.rand(2, 9, 10))
    prob = vl.DenoisingProblem(noisy, reg)
    theta = _theta(reg, theta, rng, xp)
    rep = check_problem(prob, theta, rng=rng)
    assert rep.ok, rep.failures()


def test_squared_error_gradient(xp, rng):
    clean = xp.asarray(rng.rand(3, 5, 6))
    U = vl.SquaredError(clean)
    from varlearn.testing import check_upper

    assert check_upper(U, xp.asarray(rng.rand(3, 5, 6)), rng=rng).ok
    assert U.lipschitz() == pytest.approx(1 / 3)


# ---------------------------------------------------------------- the problem's fused pass (C4)
@pytest.mark.parametrize("name", sorted(REGULARIZERS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_denoising_fused_grad_is_the_generic_step(name, dtype, accel, rng):
    """DenoisingProblem.fused_grad (the regularizer's fused pass) == LowerProblem's generic default."""
    reg, theta = REGULARIZERS[name](np.random.RandomState(5))
    theta = _theta(reg, theta, np.random.default_rng(1), np)
    noisy = rng.rand(2, 9, 8).astype(dtype)
    prob = vl.DenoisingProblem(noisy, reg)
    x = (noisy + 0.05 * rng.randn(*noisy.shape)).astype(dtype)
    x_prev = (noisy + 0.05 * rng.randn(*noisy.shape)).astype(dtype)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for beta, step in ((0.0, None), (0.6, None), (0.0, 0.3), (0.6, 0.3)):
        out, gn = prob.fused_grad(x, theta, x_prev=x_prev, beta=beta, step=step)
        ref, gn_ref = vl.LowerProblem.fused_grad(prob, x, theta, x_prev=x_prev, beta=beta, step=step)
        z = x + beta * (x - x_prev)
        g = (z - noisy) + reg.grad(z, theta)  # the objective's gradient from the parts
        want = g if step is None else z - step * g
        assert out.dtype == dtype and out.shape == x.shape
        scale = float(np.linalg.norm(want.astype(np.float64))) + 1e-300
        assert float(np.linalg.norm((out - want).astype(np.float64))) <= tol * scale, (beta, step)
        assert float(np.linalg.norm((out - ref).astype(np.float64))) <= tol * scale, (beta, step)
        assert gn == pytest.approx(float(np.linalg.norm(g.astype(np.float64))), rel=10 * tol)
        assert gn == pytest.approx(gn_ref, rel=10 * tol)
    np.testing.assert_array_equal(prob.grad(x, theta), prob.fused_grad(x, theta)[0])
    v = rng.randn(*noisy.shape).astype(dtype)
    hv = prob.hvp(x, theta, v)
    want = v + reg.hvp(x, theta, v)
    assert float(np.linalg.norm((hv - want).astype(np.float64))) <= tol * float(np.linalg.norm(want))
