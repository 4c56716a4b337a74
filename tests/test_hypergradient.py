"""Hypergradients against finite differences, and the error bound against the truth."""
import numpy as np
import pytest

import varlearn as vl
from varlearn.hypergradient import hypergradient
from varlearn.problems import make_paper_quadratic
from varlearn.testing import check_hypergradient


def _denoising(rng, reg, n=2, h=10, w=11):
    clean = rng.rand(n, h, w)
    noisy = clean + 0.1 * rng.randn(n, h, w)
    return vl.DenoisingProblem(noisy, reg), vl.SquaredError(clean)


@pytest.mark.parametrize("iso", [True, False])
def test_tv_hypergradient_matches_finite_differences(iso, rng):
    prob, U = _denoising(rng, vl.TotalVariation(isotropic=iso))
    for theta in ([-2.5, -3.0], [-1.5, -4.0]):
        rep = check_hypergradient(prob, U, np.array(theta), rng=rng)
        assert rep.ok, rep


def test_foe_hypergradient_matches_finite_differences(rng):
    reg = vl.FieldOfExperts(n_filters=2, size=3, rng=np.random.RandomState(1))
    prob, U = _denoising(rng, reg, n=1, h=9, w=9)
    theta = reg.init_params() + 0.1 * rng.randn(reg.n_params)
    rep = check_hypergradient(prob, U, theta, rng=rng, n_dirs=3)
    assert rep.ok, rep


def test_logistic_hypergradient_matches_finite_differences(rng):
    A = rng.randn(60, 4)
    y = rng.randint(0, 3, 60)
    Av = rng.randn(30, 4)
    yv = rng.randint(0, 3, 30)
    prob = vl.MultinomialLogisticProblem(A, y, 3)
    U = vl.CrossEntropy(Av, yv)
    theta = -1.0 + 0.3 * rng.randn(12)
    rep = check_hypergradient(prob, U, theta, rng=rng)
    assert rep.ok, rep


def test_quadratic_hypergradient_is_exact_in_the_limit():
    prob, U, theta0 = make_paper_quadratic(m=100)
    hg = hypergradient(prob, U, theta0, 1e-11, 1e-11)
    exact = prob.exact_hypergradient(theta0, U)
    np.testing.assert_allclose(hg.grad, exact, rtol=1e-7)


def test_error_bound_holds_on_the_quadratic(rng):
    prob, U, theta0 = make_paper_quadratic(m=200)
    worst = 0.0
    for _ in range(6):
        theta = theta0 + rng.randn(theta0.size)
        exact = prob.exact_hypergradient(theta, U)
        for eps in (1e-1, 1e-3):
            for delta in (1e-1, 1e-4):
                hg = hypergradient(prob, U, theta, eps, delta)
                assert hg.bound_exact
                err = np.linalg.norm(hg.grad - exact)
                assert err <= hg.error_bound, (eps, delta, err, hg.error_bound)
                worst = max(worst, err / hg.error_bound)
    assert worst > 1e-4  # the bound is not vacuous


@pytest.mark.parametrize("iso", [True, False])
def test_error_bound_holds_on_tv(iso, rng):
    prob, U = _denoising(rng, vl.TotalVariation(isotropic=iso), n=2, h=12, w=12)
    for theta in ([-2.0, -2.5], [-3.0, -4.5], [-1.0, -3.0]):
        theta = np.array(theta)
        ref = hypergradient(prob, U, theta, 1e-12, 1e-12, bound=False).grad
        for eps in (1e-1, 1e-2, 1e-4):
            for delta in (1e-1, 1e-3):
                hg = hypergradient(prob, U, theta, eps, delta)
                assert hg.bound_exact
                assert np.linalg.norm(hg.grad - ref) <= hg.error_bound
                assert hg.eps <= eps and hg.delta <= delta


def test_bound_off_and_counts(rng):
    prob, U = _denoising(rng, vl.TotalVariation())
    hg = hypergradient(prob, U, np.array([-2.0, -3.0]), 1e-3, 1e-3, bound=False)
    assert np.isnan(hg.error_bound)
    assert hg.n_lower_iter >= 1 and hg.n_cg_iter >= 1
    # bound=False only skips the bound: same solves, same gradient, as accurate
    ref = hypergradient(prob, U, np.array([-2.0, -3.0]), 1e-3, 1e-3)
    np.testing.assert_array_equal(hg.grad, ref.grad)
    assert (hg.n_lower_iter, hg.n_cg_iter) == (ref.n_lower_iter, ref.n_cg_iter)
    tight = hypergradient(prob, U, np.array([-2.0, -3.0]), 1e-10, 1e-10)
    assert np.linalg.norm(hg.grad - tight.grad) <= ref.error_bound
    assert hg.x.shape == prob.x_shape and hg.q.shape == prob.x_shape


def test_estimated_bound_is_flagged(rng):
    """Estimated constants (constants="estimate", or a problem without them) are reported as not exact."""
    reg = vl.FieldOfExperts(n_filters=2, size=3, rng=np.random.RandomState(1))
    prob, U = _denoising(rng, reg, n=1, h=8, w=8)
    hg = hypergradient(prob, U, reg.init_params(), 1e-3, 1e-3, constants="estimate")
    assert hg.bound_exact is False
    assert np.isfinite(hg.error_bound) and hg.error_bound > 0
    assert hypergradient(prob, U, reg.init_params(), 1e-3, 1e-3).bound_exact is True  # FoE's own constants
    with pytest.raises(ValueError, match="constants must be 'exact' or 'estimate', got 'fast'"):
        hypergradient(prob, U, reg.init_params(), 1e-3, 1e-3, constants="fast")


def test_hypergradient_bad_input(rng):
    prob, U = _denoising(rng, vl.TotalVariation())
    with pytest.raises(ValueError, match="lower_tol"):
        hypergradient(prob, U, np.array([-2.0, -3.0]), -1e-3, 1e-3)
    with pytest.raises(ValueError, match="cg_tol"):
        hypergradient(prob, U, np.array([-2.0, -3.0]), 1e-3, 0.0)
    with pytest.raises(ValueError, match="length 2"):
        hypergradient(prob, U, np.array([-2.0, -3.0, 1.0]), 1e-3, 1e-3)


# ---------------------------------------------------------------- pluggable solvers
class _Recording:
    """Wraps a solver object, recording every call of its solve method."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def solve(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.inner.solve(*args, **kwargs)


def test_pluggable_solvers_are_used_and_give_the_keyword_result(rng):
    from varlearn.solvers import CG, FISTA

    prob, U = _denoising(rng, vl.TotalVariation())
    theta = np.array([-2.0, -3.0])
    ref = hypergradient(prob, U, theta, 1e-4, 1e-5, lower_maxiter=3000, cg_maxiter=500, backtracking=False,
                        lower_L0=7.0)
    low, lin = _Recording(FISTA(maxiter=3000, backtracking=False)), _Recording(CG(maxiter=500))
    hg = hypergradient(prob, U, theta, 1e-4, 1e-5, lower_L0=7.0, lower_solver=low, linear_solver=lin)
    assert len(low.calls) == 1 and len(lin.calls) == 1
    (p, th, tol), kw = low.calls[0]
    assert p is prob and tol == 1e-4 and kw == {"x0": None, "L0": 7.0}
    assert lin.calls[0][0][2] == 1e-5
    np.testing.assert_array_equal(hg.grad, ref.grad)
    np.testing.assert_array_equal(hg.q, ref.q)
    for key in ("error_bound", "eps", "delta", "n_lower_iter", "n_cg_iter", "status"):
        assert hg[key] == ref[key], key


def test_keyword_options_map_onto_the_default_solver_objects(rng, monkeypatch):
    import importlib

    hgmod = importlib.import_module("varlearn.hypergradient")  # the attribute is the function
    made = []
    for name in ("FISTA", "CG"):
        cls = getattr(hgmod, name)
        monkeypatch.setattr(hgmod, name, lambda cls=cls, **kw: made.append((cls.__name__, kw)) or cls(**kw))
    prob, U = _denoising(rng, vl.TotalVariation())
    theta = np.array([-2.0, -3.0])
    hypergradient(prob, U, theta, 1e-3, 1e-3)
    assert made == [("FISTA", {"maxiter": 10000, "backtracking": "auto"}), ("CG", {"maxiter": 2000})]
    made.clear()
    hypergradient(prob, U, theta, 1e-3, 1e-3, lower_maxiter=77, backtracking=True, cg_maxiter=55)
    assert made == [("FISTA", {"maxiter": 77, "backtracking": True}), ("CG", {"maxiter": 55})]


def test_pluggable_solver_errors_and_a_solver_without_a_true_residual(rng):
    from varlearn.solvers import CG

    prob, U = _denoising(rng, vl.TotalVariation())
    theta = np.array([-2.0, -3.0])
    with pytest.raises(ValueError, match="lower_maxiter configure the default lower_solver"):
        hypergradient(prob, U, theta, 1e-3, 1e-3, lower_maxiter=5, lower_solver=vl.solvers.FISTA())
    with pytest.raises(ValueError, match="cg_maxiter configure the default linear_solver"):
        hypergradient(prob, U, theta, 1e-3, 1e-3, cg_maxiter=5, linear_solver=CG())
    with pytest.raises(TypeError, match="linear_solver must be an object with a solve method, got function"):
        hypergradient(prob, U, theta, 1e-3, 1e-3, linear_solver=vl.cg)

    class RecurrenceOnly:
        """A linear solver that stops early and reports no residual."""

        def solve(self, matvec, b, tol, x0=None, callback=None):
            res = CG(maxiter=3).solve(matvec, b, tol, x0=x0)
            return vl.results.Result(x=res.x, nit=res.nit, success=True)

    class NoBound:
        def solve(self, problem, theta, tol, x0=None, L0=None, callback=None):
            return vl.results.Result(x=problem.noisy, nit=1, status="success")

    with pytest.raises(TypeError, match="lower_solver.solve must return a Result with x, nit, status, "
                                        "distance_bound; got Result without distance_bound"):
        hypergradient(prob, U, theta, 1e-3, 1e-3, lower_solver=NoBound())
    hg = hypergradient(prob, U, theta, 1e-3, 1e-9, linear_solver=RecurrenceOnly())
    true = np.linalg.norm(U.grad(hg.x) - prob.hvp(hg.x, theta, hg.q))
    assert hg.delta >= true > 1e-9  # delta is the true residual of q (+ rounding margin)
    assert hg.n_cg_iter == hg.cg.nit + 1  # the residual product is counted (TV's constants cost nothing)
    assert hg.error_bound > 0


def test_bound_estimator_is_reproducible_and_checkpointable(rng):
    from varlearn.hypergradient import BoundEstimator

    reg = vl.FieldOfExperts(n_filters=2, size=3, rng=np.random.RandomState(1))
    prob, U = _denoising(rng, reg, n=1, h=8, w=8)
    theta = reg.init_params()
    x = prob.noisy
    a, b = BoundEstimator(seed=3), BoundEstimator(seed=3)
    assert a.hessian_lipschitz(prob, theta, x, 1e-3) == b.hessian_lipschitz(prob, theta, x, 1e-3)
    state = a.state_dict()
    second = a._unit(np, x.shape, x.dtype)
    c = BoundEstimator(seed=99)
    c.load_state_dict(state)
    np.testing.assert_array_equal(c._unit(np, x.shape, x.dtype), second)  # the stream continues from the state
    # the draws follow the documented rule on NumPy, rng.standard_normal(shape).astype(dtype), from one generator
    g = np.random.default_rng(3)
    d = BoundEstimator(seed=3)
    for _ in range(2):
        e = g.standard_normal(x.shape).astype(x.dtype)
        np.testing.assert_array_equal(d._unit(np, x.shape, x.dtype), e / np.linalg.norm(e))
