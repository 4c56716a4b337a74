"""MultinomialLogisticProblem / CrossEntropy and QuadraticProblem / LeastSquares."""
import math
import warnings

import numpy as np
import pytest
import scipy.optimize

import varlearn as vl
from varlearn.backend import to_numpy
from varlearn.problems.quadratic import quadratic_bilevel_optimum
from varlearn.solvers import solve_lower
from varlearn.testing import check_problem, check_upper

TOLS = (1e-2, 1e-4, 1e-6)


# ---------------------------------------------------------------------- builders
def _logistic_data(seed=0, n=60, d=5, c=3):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, d))
    W_true = rng.standard_normal((d, c))
    labels = np.argmax(A @ W_true + 0.5 * rng.standard_normal((n, c)), axis=1)
    labels[:c] = np.arange(c)  # every class present
    return A, labels


def _logistic(xp, seed=0, n=60, d=5, c=3, dtype=np.float64):
    A, labels = _logistic_data(seed, n, d, c)
    return vl.MultinomialLogisticProblem(xp.asarray(A.astype(dtype)), xp.asarray(labels), c)


def _logistic_thetas(problem, xp):
    rng = np.random.default_rng(5)
    p = problem.n_params
    return [xp.full(p, -3.0), xp.zeros(p), xp.asarray(rng.uniform(-2.5, 0.5, p))]


def _quadratic(xp, seed=1, m=40, n=4, p=3):
    rng = np.random.default_rng(seed)
    A = rng.random((m, n))
    B = rng.random((m, p))
    b = rng.standard_normal(m)
    C = rng.standard_normal((m // 2, n))
    d = rng.standard_normal(m // 2)
    prob = vl.QuadraticProblem(xp.asarray(A), xp.asarray(B), xp.asarray(b))
    return prob, vl.LeastSquares(xp.asarray(C), xp.asarray(d))


def _dense(problem, x, theta, fun):
    """Dense matrix of a linear map given on arrays shaped like x (columns = basis vectors)."""
    xp = problem.xp
    size = int(np.prod(problem.x_shape))
    cols = []
    for k in range(size):
        e = np.zeros(size)
        e[k] = 1.0
        cols.append(to_numpy(fun(xp.asarray(e.reshape(problem.x_shape)))).ravel())
    return np.stack(cols, axis=1)


def _hessian(problem, x, theta):
    return _dense(problem, x, theta, lambda v: problem.hvp(x, theta, v))


# ---------------------------------------------------------------------- derivative checks
def test_logistic_check_problem(xp):
    prob = _logistic(xp, n=40, d=4, c=3)
    rng = np.random.default_rng(3)
    for theta in _logistic_thetas(prob, xp):
        x = xp.asarray(rng.standard_normal(prob.x_shape))
        check_problem(prob, theta, x, raise_error=True)


def test_quadratic_check_problem(xp):
    prob, _ = _quadratic(xp)
    check_problem(prob, prob.init_params(), raise_error=True)
    check_problem(prob, xp.asarray(np.random.default_rng(2).standard_normal(prob.n_params)), raise_error=True)


def test_check_upper(xp):
    A, labels = _logistic_data(seed=7, n=30, d=4, c=3)
    ce = vl.CrossEntropy(xp.asarray(A), xp.asarray(labels), n_classes=3)
    rng = np.random.default_rng(1)
    check_upper(ce, xp.asarray(rng.standard_normal((4, 3))), raise_error=True)
    _, ls = _quadratic(xp)
    check_upper(ls, xp.asarray(rng.standard_normal(4)), raise_error=True)


def test_mixed_vjp_shape_and_value(xp):
    prob = _logistic(xp, n=20, d=3, c=4)
    rng = np.random.default_rng(0)
    theta = xp.asarray(rng.standard_normal(prob.n_params))
    W = xp.asarray(rng.standard_normal(prob.x_shape))
    w = xp.asarray(rng.standard_normal(prob.x_shape))
    out = prob.mixed_vjp(W, theta, w)
    assert out.shape == (12,) and out.dtype == np.float64
    expect = np.exp(to_numpy(theta)) * to_numpy(W).ravel() * to_numpy(w).ravel()
    np.testing.assert_allclose(to_numpy(out), expect, rtol=1e-13)
    assert prob.param_layout() == [("log_ridge", slice(0, 12))]


# ---------------------------------------------------------------------- constants
def test_logistic_constants_are_bounds(xp):
    prob = _logistic(xp, n=30, d=3, c=3)
    rng = np.random.default_rng(11)
    for theta in _logistic_thetas(prob, xp):
        mu, L = prob.strong_convexity(theta), prob.lipschitz(theta)
        lam = np.exp(to_numpy(theta))
        assert mu == pytest.approx(lam.min()) and prob.mixed_lipschitz(theta) == pytest.approx(lam.max())
        for scale in (0.0, 1.0, 5.0):
            x = xp.asarray(scale * rng.standard_normal(prob.x_shape))
            ev = np.linalg.eigvalsh(_hessian(prob, x, theta))
            assert mu <= ev[0] * (1 + 1e-12) and L >= ev[-1]
            J = _dense(prob, x, theta, lambda w, x=x, theta=theta: prob.mixed_vjp(x, theta, w))
            assert prob.mixed_norm_bound(x, theta) >= np.linalg.norm(J, 2) * (1 - 1e-12)
    # with a negligible ridge, L is the CE curvature bound ½‖A‖₂²/n itself
    A = to_numpy(prob.features)
    assert prob.lipschitz(xp.full(prob.n_params, -50.0)) == pytest.approx(
        0.5 * np.linalg.norm(A, 2) ** 2 / A.shape[0], rel=1e-8)


def test_logistic_hessian_lipschitz_bound(xp):
    prob = _logistic(xp, n=25, d=3, c=3)
    theta = xp.full(prob.n_params, -1.0)
    M = prob.hessian_lipschitz(theta)
    rng = np.random.default_rng(4)
    worst = 0.0
    for _ in range(20):
        x1 = rng.standard_normal(prob.x_shape) * 2
        x2 = x1 + rng.standard_normal(prob.x_shape) * rng.choice([1e-3, 0.1, 1.0])
        H1 = _hessian(prob, xp.asarray(x1), theta)
        H2 = _hessian(prob, xp.asarray(x2), theta)
        worst = max(worst, np.linalg.norm(H1 - H2, 2) / np.linalg.norm(x1 - x2))
    assert 0 < worst <= M


def test_logistic_local_hessian_lipschitz_bound(xp):
    """hessian_lipschitz_at bounds the Hessian's variation on its ball, below the global constant."""
    prob = _logistic(xp, n=40, d=3, c=3)
    theta = xp.full(prob.n_params, -3.0)
    W = solve_lower(prob, theta, 1e-8).x
    glob = prob.hessian_lipschitz(theta)
    rng = np.random.default_rng(7)
    for r in (1e-3, 1e-1, 3.0):
        loc = prob.hessian_lipschitz_at(W, theta, r)
        assert loc <= glob
        worst = 0.0
        for _ in range(15):
            d1, d2 = rng.standard_normal((2,) + prob.x_shape)
            x1 = W + xp.asarray(d1 * r * rng.uniform() / np.linalg.norm(d1))
            x2 = W + xp.asarray(d2 * r * rng.uniform() / np.linalg.norm(d2))
            diff = np.linalg.norm(_hessian(prob, x1, theta) - _hessian(prob, x2, theta), 2)
            worst = max(worst, diff / float(xp.linalg.norm(x1 - x2)))
        assert 0 < worst <= loc
    assert prob.hessian_lipschitz_at(W, theta, 1e-3) < 0.7 * glob  # uses the softmax at W: tighter


def test_quadratic_constants(xp):
    prob, _ = _quadratic(xp)
    theta = prob.init_params()
    H = _hessian(prob, prob.initial_x(), theta)
    ev = np.linalg.eigvalsh(H)
    assert prob.strong_convexity(theta) <= ev[0] and prob.lipschitz(theta) >= ev[-1]
    assert prob.strong_convexity(theta) == pytest.approx(ev[0], rel=1e-10)
    assert prob.lipschitz(theta) == pytest.approx(ev[-1], rel=1e-10)
    assert prob.hessian_lipschitz(theta) == 0 and prob.mixed_lipschitz(theta) == 0
    BtA = to_numpy(prob.B).T @ to_numpy(prob.A)
    assert prob.mixed_norm_bound(None, theta) == pytest.approx(np.linalg.norm(BtA, 2), rel=1e-10)
    np.testing.assert_array_equal(to_numpy(theta), np.ones(prob.n_params))


def test_upper_lipschitz(xp):
    A, labels = _logistic_data(seed=2, n=30, d=4, c=3)
    ce = vl.CrossEntropy(xp.asarray(A), xp.asarray(labels))
    assert ce.convex
    assert ce.lipschitz() == pytest.approx(0.5 * np.linalg.norm(A, 2) ** 2 / 30, rel=1e-8)
    prob = vl.MultinomialLogisticProblem(xp.asarray(A), xp.asarray(labels), 3)
    # U is the CE part of h: its Hessian is h's minus the ridge
    theta = xp.full(prob.n_params, -60.0)
    ev = np.linalg.eigvalsh(_hessian(prob, xp.asarray(np.random.default_rng(0).standard_normal((4, 3))), theta))
    assert ce.lipschitz() >= ev[-1]
    _, ls = _quadratic(xp)
    C = to_numpy(ls.C)
    assert ls.convex and ls.lipschitz() == pytest.approx(np.linalg.eigvalsh(C.T @ C)[-1], rel=1e-10)


def test_crossentropy_accuracy_and_value(xp):
    A, labels = _logistic_data(seed=3, n=50, d=4, c=3)
    ce = vl.CrossEntropy(xp.asarray(A), xp.asarray(labels), n_classes=3)
    W = np.random.default_rng(0).standard_normal((4, 3))
    Z = A @ W
    expect_acc = float(np.mean(np.argmax(Z, axis=1) == labels))
    assert ce.accuracy(xp.asarray(W)) == pytest.approx(expect_acc)
    # stable even for huge scores
    big = xp.asarray(1e4 * W)
    assert math.isfinite(float(ce.value(big)))
    Zs = Z - Z.max(axis=1, keepdims=True)
    ref = np.mean(np.log(np.exp(Zs).sum(axis=1)) - Zs[np.arange(50), labels])
    assert float(ce.value(xp.asarray(W))) == pytest.approx(ref, rel=1e-13)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_logistic_matches_row_major_formulas(xp, dtype):
    """The class-major kernels equal the textbook row-major formulas (any input memory layout)."""
    A, labels = _logistic_data(seed=5, n=37, d=6, c=4)
    rng = np.random.default_rng(1)
    theta = rng.uniform(-4, 0, 24)
    W = rng.standard_normal((4, 6)).T                     # a non-contiguous (6, 4) view
    V = rng.standard_normal((6, 4))
    prob = vl.MultinomialLogisticProblem(xp.asarray(np.asfortranarray(A).astype(dtype)), xp.asarray(labels), 4)
    lam = np.exp(theta).reshape(6, 4)
    Z = A @ W
    S = np.exp(Z - Z.max(axis=1, keepdims=True))
    S /= S.sum(axis=1, keepdims=True)
    Y = np.eye(4)[labels]
    value = np.mean(-np.log(S[np.arange(37), labels])) + 0.5 * np.sum(lam * W * W)
    grad = A.T @ (S - Y) / 37 + lam * W
    AV = A @ V
    hvp = A.T @ (S * AV - S * (S * AV).sum(axis=1, keepdims=True)) / 37 + lam * V
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    th, w, v = xp.asarray(theta), xp.asarray(W.astype(dtype)), xp.asarray(V.astype(dtype))
    np.testing.assert_allclose(float(prob.value(w, th)), value, rtol=rtol)
    np.testing.assert_allclose(to_numpy(prob.grad(w, th)), grad, rtol=rtol, atol=rtol * np.abs(grad).max())
    np.testing.assert_allclose(to_numpy(prob.hvp(w, th, v)), hvp, rtol=rtol, atol=rtol * np.abs(hvp).max())
    assert prob.grad(w, th).dtype == dtype
    np.testing.assert_array_equal(to_numpy(prob.features), A.astype(dtype))


# ---------------------------------------------------------------------- solver certificates
@pytest.mark.parametrize("tol", TOLS)
def test_quadratic_solve_certificate(xp, tol):
    prob, _ = _quadratic(xp)
    rng = np.random.default_rng(8)
    for theta in (prob.init_params(), xp.asarray(rng.standard_normal(prob.n_params) * 3)):
        exact = prob.solution(theta)
        res = solve_lower(prob, theta, tol, maxiter=100000)
        assert res.success and res.distance_bound <= tol
        assert float(xp.linalg.norm(res.x - exact)) <= tol


def test_quadratic_closed_form_matches_tight_solve(xp):
    prob, _ = _quadratic(xp)
    theta = xp.asarray(np.random.default_rng(9).standard_normal(prob.n_params))
    res = solve_lower(prob, theta, 1e-11, maxiter=100000)
    assert res.success
    np.testing.assert_allclose(to_numpy(prob.solution(theta)), to_numpy(res.x), atol=2e-11)
    # the gradient vanishes at the closed form
    g = prob.grad(prob.solution(theta), theta)
    assert float(xp.linalg.norm(g)) <= 1e-10 * prob.lipschitz(theta)


@pytest.mark.parametrize("tol", TOLS)
def test_logistic_solve_certificate(xp, tol):
    prob = _logistic(xp)
    for theta in _logistic_thetas(prob, xp):
        ref = solve_lower(prob, theta, 1e-10, maxiter=200000)
        assert ref.success
        res = solve_lower(prob, theta, tol, maxiter=200000)
        assert res.success and res.distance_bound <= tol
        assert float(xp.linalg.norm(res.x - ref.x)) <= tol + ref.distance_bound


def test_logistic_matches_scipy_lbfgsb(xp):
    prob = _logistic(xp, seed=4, n=80, d=6, c=4)
    theta = xp.asarray(np.random.default_rng(2).uniform(-3.0, 0.0, prob.n_params))
    shape = prob.x_shape

    def fun(w):
        W = xp.asarray(w.reshape(shape))
        return float(prob.value(W, theta)), to_numpy(prob.grad(W, theta)).ravel()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = scipy.optimize.minimize(fun, np.zeros(int(np.prod(shape))), jac=True, method="L-BFGS-B",
                                      options={"maxiter": 20000, "maxcor": 50, "ftol": 0.0, "gtol": 1e-13})
    W_scipy = opt.x.reshape(shape)
    g = np.linalg.norm(fun(opt.x)[1])
    mu = prob.strong_convexity(theta)
    assert g / mu <= 5e-7  # scipy's point is itself certified within 5e-7
    res = solve_lower(prob, theta, 1e-9, maxiter=200000)
    assert res.success
    assert np.linalg.norm(to_numpy(res.x) - W_scipy) <= 1e-6


# ---------------------------------------------------------------------- bilevel closed forms
def _f(prob, upper, theta):
    return float(upper.value(prob.solution(theta)))


def test_optimal_theta_matches_bfgs():
    prob, upper = _quadratic(np, seed=3, m=60, n=5, p=3)
    theta_star, f_star = prob.optimal_theta(upper)
    assert f_star == pytest.approx(_f(prob, upper, theta_star), rel=1e-12)

    def fg(th):
        return _f(prob, upper, th), prob.exact_hypergradient(th, upper)

    opt = scipy.optimize.minimize(fg, np.ones(prob.n_params), jac=True, method="BFGS",
                                  options={"gtol": 1e-11, "maxiter": 2000})
    assert f_star <= opt.fun + 1e-12 * max(1.0, abs(opt.fun))
    np.testing.assert_allclose(theta_star, opt.x, rtol=1e-5, atol=1e-6)
    # the exact hypergradient vanishes at the optimum
    assert np.linalg.norm(prob.exact_hypergradient(theta_star, upper)) <= 1e-8 * (1 + abs(f_star))
    th2, f2 = quadratic_bilevel_optimum(prob, upper)
    np.testing.assert_array_equal(th2, theta_star)
    assert f2 == f_star


def test_exact_hypergradient_central_differences(xp):
    prob, upper = _quadratic(xp)
    rng = np.random.default_rng(12)
    theta = xp.asarray(rng.standard_normal(prob.n_params))
    g = to_numpy(prob.exact_hypergradient(theta, upper))
    h = 1e-3  # f is quadratic in θ: central differences are exact up to rounding
    fd = np.empty(prob.n_params)
    for k in range(prob.n_params):
        e = np.zeros(prob.n_params)
        e[k] = h
        e = xp.asarray(e)
        fd[k] = (_f(prob, upper, theta + e) - _f(prob, upper, theta - e)) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8 * np.abs(g).max())


def test_make_paper_quadratic(xp):
    prob, upper, theta0 = vl.make_paper_quadratic(xp=xp)
    assert prob.A.shape == (1000, 10) and prob.B.shape == (1000, 10) and upper.C.shape == (1000, 10)
    assert prob.backend == vl.backend.xp_name(xp)
    np.testing.assert_array_equal(to_numpy(theta0), np.ones(10))
    assert theta0.dtype == np.float64
    # deterministic, x0 = x2 (in [0, 1))
    x0 = to_numpy(prob.initial_x())
    assert x0.shape == (10,) and (x0 >= 0).all() and (x0 < 1).all()
    prob2, _, _ = vl.make_paper_quadratic(xp=xp)
    np.testing.assert_array_equal(to_numpy(prob2.b), to_numpy(prob.b))
    mu, L = prob.strong_convexity(theta0), prob.lipschitz(theta0)
    assert 0 < mu < L
    # the closed-form optimum is a stationary point of f, and beats θ0
    theta_star, f_star = prob.optimal_theta(upper)
    assert f_star <= _f(prob, upper, theta0)
    g = to_numpy(prob.exact_hypergradient(theta_star, upper))
    g0 = to_numpy(prob.exact_hypergradient(theta0, upper))
    assert np.linalg.norm(g) <= 1e-8 * np.linalg.norm(g0)
    # the paper's starting point certifies after a solve
    res = solve_lower(prob, theta0, 1e-5, x0=prob.initial_x())
    assert res.success and float(xp.linalg.norm(res.x - prob.solution(theta0))) <= 1e-5


# ---------------------------------------------------------------------- dtype and caching
def test_float32_preserved(xp):
    prob = _logistic(xp, dtype=np.float32)
    theta = prob.init_params()
    W = xp.asarray(np.random.default_rng(0).standard_normal(prob.x_shape).astype(np.float32))
    assert prob.dtype == np.float32 and prob.initial_x().dtype == np.float32
    assert prob.grad(W, theta).dtype == np.float32
    assert prob.hvp(W, theta, W).dtype == np.float32
    assert prob.value(W, theta).dtype == np.float32
    assert prob.mixed_vjp(W, theta, W).dtype == np.float64  # θ's dtype
    # float32 with mu = e^-3: the worst-case rounding bound of the gradient (2.6e-5 here) allows
    # certified distances down to about 1e-3
    res = solve_lower(prob, theta, 2e-3)
    assert res.success and res.x.dtype == np.float32 and res.distance_bound <= 2e-3
    with pytest.warns(vl.results.ConvergenceWarning, match="precision_limit"):
        refused = solve_lower(prob, theta, 1e-4)
    assert refused.status == "precision_limit" and not refused.success and refused.distance_bound > 1e-4

    rng = np.random.default_rng(1)
    A = xp.asarray(rng.random((30, 3)).astype(np.float32))
    B = xp.asarray(rng.random((30, 2)).astype(np.float32))
    b = xp.asarray(rng.random(30).astype(np.float32))
    q = vl.QuadraticProblem(A, B, b)
    th = q.init_params()
    x = q.initial_x()
    assert q.dtype == np.float32 and x.dtype == np.float32
    assert q.grad(x, th).dtype == np.float32 and q.hvp(x, th, x).dtype == np.float32
    assert q.solution(th).dtype == np.float32
    assert q.mixed_vjp(x, th, x).dtype == np.float64


def test_hvp_cache_tracks_in_place_changes(xp):
    prob = _logistic(xp, n=30, d=3, c=3)
    theta = xp.full(prob.n_params, -1.0)
    rng = np.random.default_rng(6)
    W = xp.asarray(rng.standard_normal(prob.x_shape))
    V = xp.asarray(rng.standard_normal(prob.x_shape))
    prob.hvp(W, theta, V)
    W += 1.0  # same object, new values
    fresh = _logistic(xp, n=30, d=3, c=3)
    np.testing.assert_allclose(to_numpy(prob.hvp(W, theta, V)), to_numpy(fresh.hvp(W, theta, V)), rtol=1e-14)


# ---------------------------------------------------------------------- bad inputs
def test_logistic_bad_inputs():
    A, labels = _logistic_data(n=20, d=3, c=3)
    with pytest.raises(ValueError, match="labels"):
        vl.MultinomialLogisticProblem(A, np.where(labels == 0, 3, labels), 3)
    with pytest.raises(ValueError, match="labels"):
        vl.MultinomialLogisticProblem(A, labels - 1, 3)
    with pytest.raises(ValueError, match="labels"):
        vl.MultinomialLogisticProblem(A, labels[:-1], 3)
    with pytest.raises(TypeError, match="labels"):
        vl.MultinomialLogisticProblem(A, labels.astype(float), 3)
    bad = A.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="features"):
        vl.MultinomialLogisticProblem(bad, labels, 3)
    with pytest.raises(ValueError, match="features"):
        vl.MultinomialLogisticProblem(A[:, 0], labels, 3)
    with pytest.raises(ValueError, match="n_classes"):
        vl.MultinomialLogisticProblem(A, labels, 1)
    with pytest.raises(TypeError, match="n_classes"):
        vl.MultinomialLogisticProblem(A, labels, 3.0)
    with pytest.raises(ValueError, match="ridge_shape"):
        vl.MultinomialLogisticProblem(A, labels, 3, ridge_shape=(3, 3))
    prob = vl.MultinomialLogisticProblem(A, labels, 3)
    W = np.zeros((3, 3))
    with pytest.raises(ValueError, match="theta.*length 9"):
        prob.grad(W, np.zeros(8))
    with pytest.raises(ValueError, match="theta.*length 9"):
        solve_lower(prob, np.zeros(10), 1e-3)
    with pytest.raises(ValueError, match="x must have shape"):
        prob.value(np.zeros((3, 4)), np.zeros(9))
    with pytest.raises(ValueError, match="labels"):
        vl.CrossEntropy(A, labels, n_classes=2)
    ce = vl.CrossEntropy(A, labels)
    with pytest.raises(ValueError, match="x"):
        ce.grad(np.zeros((4, 3)))


def test_quadratic_bad_inputs():
    rng = np.random.default_rng(0)
    A, B, b = rng.random((10, 3)), rng.random((10, 2)), rng.random(10)
    with pytest.raises(ValueError, match="full column rank"):
        vl.QuadraticProblem(np.column_stack([A[:, :2], A[:, 0] + A[:, 1]]), B, b)
    with pytest.raises(ValueError, match="full column rank"):
        vl.QuadraticProblem(rng.random((2, 3)), B[:2], b[:2])
    with pytest.raises(ValueError, match="B must have 10 rows"):
        vl.QuadraticProblem(A, B[:9], b)
    with pytest.raises(ValueError, match="b must have length 10"):
        vl.QuadraticProblem(A, B, b[:9])
    with pytest.raises(ValueError, match="b must be a 1-D"):
        vl.QuadraticProblem(A, B, b[:, None])
    badA = A.copy()
    badA[0, 0] = np.inf
    with pytest.raises(ValueError, match="A contains NaN"):
        vl.QuadraticProblem(badA, B, b)
    with pytest.raises(ValueError, match="x0 must have shape"):
        vl.QuadraticProblem(A, B, b, x0=np.zeros(4))
    prob = vl.QuadraticProblem(A, B, b)
    with pytest.raises(ValueError, match="theta.*length 2"):
        prob.solution(np.zeros(3))
    with pytest.raises(ValueError, match="theta.*length 2"):
        solve_lower(prob, np.zeros(3), 1e-3)
    with pytest.raises(ValueError, match="x must have shape"):
        prob.grad(np.zeros(4), np.zeros(2))
    with pytest.raises(ValueError, match="d must have length"):
        vl.LeastSquares(A, b[:5])
    with pytest.raises(TypeError, match="upper"):
        prob.optimal_theta(vl.SquaredError(np.zeros((2, 2))))
    with pytest.raises(ValueError, match="m must be >= n"):
        vl.make_paper_quadratic(m=5, n=10)
