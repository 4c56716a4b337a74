"""varlearn.bilevel.analysis (history checks, summaries, method grammar, guarded runs) and varlearn.evaluation."""
import logging
import math

import numpy as np
import pytest

import varlearn as vl
from varlearn.bilevel.analysis import (
    METHOD_NAMES,
    FailedRun,
    certified_decrease,
    first_cost_below,
    guarded_minimize,
    is_monotone,
    parse_method,
    summarize_run,
    value_at_cost,
)
from varlearn.evaluation import TightSolver, evaluate_theta, grid_search_2d, image_quality


def _row(i, fun, lo, up, eps, accepted=True, cost=None):
    return {"iter": i, "fun": fun, "fun_lower": lo, "fun_upper": up, "eps": eps, "accepted": accepted,
            "cost": 10 * i if cost is None else cost}


def test_certified_decrease_counts_violations_and_shrinks():
    h = [_row(0, 5.0, 4.9, 5.1, 1.0),
         _row(1, 4.0, 3.9, 4.1, 1.05),              # 4.1 <= 4.9: certified
         _row(2, 3.95, 3.8, 4.0, 0.5),              # 4.0 > 3.9: violation, but ε was shrunk in iteration 2
         _row(3, 9.0, 8.0, 10.0, 0.5, accepted=False),  # rejected rows are not checked
         _row(4, 3.0, 2.9, 3.1, 0.525),             # compared with row 3's lower bound 8.0: certified
         _row(5, 2.0, None, math.nan, 0.55)]        # missing bounds are not checked
    cd = certified_decrease(h, nu_inc=1.05)
    assert cd["checked"] == 3 and cd["violations"] == 1
    assert cd["worst_gap"] == pytest.approx(0.1)
    assert cd["checked_unshrunk"] == 2 and cd["violations_unshrunk"] == 0
    assert certified_decrease(h)["violations_unshrunk"] == 1       # without nu_inc every row counts
    assert certified_decrease(h[:1])["worst_gap"] is None


def test_cost_lookups_on_rows_and_columns():
    h = [_row(i, f, f, f, 1.0) for i, f in enumerate([5.0, 4.0, None, 2.0, 1.0])]
    cols = {k: [r[k] for r in h] for k in h[0]}
    for hist in (h, cols):
        assert first_cost_below(hist, 2.5) == 30 and first_cost_below(hist, 0.5) is None
        assert first_cost_below(hist, 4.0) == 10                  # <= target
        assert value_at_cost(hist, 29) is None and value_at_cost(hist, 30) == 2.0 and value_at_cost(hist, 5) == 5.0
        assert value_at_cost(hist, -1) is None and value_at_cost(hist, 1e9) == 1.0
    assert is_monotone([3, None, 2, math.nan, 2, 1]) and is_monotone([1, 2, 2]) and not is_monotone([1, 3, 2])


@pytest.mark.parametrize("token,method,opts,label", [
    ("maid", "maid", {}, "MAID"),
    ("maid:1e1:1e2", "maid", {"eps0": 10.0, "delta0": 100.0}, "MAID ε0=10, δ0=100"),
    ("maid:0.1", "maid", {"eps0": 0.1, "delta0": 0.1}, "MAID ε0=δ0=0.1"),
    ("maid-nobound", "maid", {"bound": False}, "MAID, certificate off"),
    ("fixed:1e-3", "fixed", {"eps0": 1e-3, "delta0": 1e-3}, "fixed ε=δ=0.001"),
    ("hoag", "hoag", {"decay": "geometric"}, "HOAG geometric"),
    (" hoag-cubic:0.05 ", "hoag", {"decay": "cubic", "eps0": 0.05}, "HOAG cubic ε0=0.05"),
])
def test_parse_method(token, method, opts, label):
    spec = parse_method(token)
    assert (spec.method, spec.options, spec.label, spec.token) == (method, opts, label, token.strip())
    assert spec.key == spec.name.replace("-", "_")
    # the options it implies are accepted by minimize_bilevel
    vl.bilevel.resolve_options(spec.method, spec.options)


@pytest.mark.parametrize("token,match", [
    ("adam", "unknown method 'adam'"), ("maid:abc", "'abc' is not a positive"), ("maid:0", "'0' is not"),
    ("maid:inf", "'inf'"), ("maid:1:2:3", "at most 2"), ("fixed:1:2", "at most 1"), ("hoag-linear", "unknown"),
])
def test_parse_method_refuses(token, match):
    with pytest.raises(ValueError, match=match) as exc:
        parse_method(token)
    assert all(name in str(exc.value) for name in METHOD_NAMES)  # the message states the grammar
    with pytest.raises(TypeError, match="string"):
        parse_method(3)


def _quadratic(m=60, n=4, seed=0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((m, 2 * n)))
    A3 = Q[:, :n] @ np.diag(np.linspace(1, 3, n))
    prob = vl.QuadraticProblem(Q[:, :n], A3, rng.standard_normal(m))
    return prob, vl.LeastSquares(Q[:, n:] + 0.3 * Q[:, :n], rng.standard_normal(m)), np.ones(n)


def test_guarded_minimize_records_a_failing_run(caplog):
    problem, upper, theta0 = _quadratic()

    def explode(r):
        if r.nit == 3:
            raise OverflowError("math range error")

    res, err = guarded_minimize(problem, upper, theta0, "maid", {"maxiter": 10}, callback=explode)
    assert isinstance(res, FailedRun) and err == "OverflowError: math range error (after 3 outer iterations)"
    assert res["status"] == "error" and res["nit"] == 3 and not res["success"]
    s = summarize_run(res, "boom", extra={"error": err})
    assert s["status"] == "error" and len(s["history"]["cost"]) == 3 and s["cost"] > 0 and s["error"] == err
    lines = []
    res, err = guarded_minimize(problem, upper, theta0, "maid", {"maxiter": 10}, progress=lines.append,
                                progress_every=0.0)
    assert err is None and res["status"] == "maxiter"
    assert len(lines) == 10 and "cost" in lines[-1] and "iteration 10," in lines[-1]
    with caplog.at_level(logging.INFO, logger="varlearn"):
        guarded_minimize(problem, upper, theta0, "maid", {"maxiter": 2}, progress_every=0.0)
    assert sum("... maid: iteration" in r.getMessage() for r in caplog.records) == 2   # default: logged
    lines.clear()
    guarded_minimize(problem, upper, theta0, "maid", {"maxiter": 3}, progress=lines.append, progress_every=None)
    assert lines == []


def test_summarize_run_of_a_real_run():
    problem, upper, theta0 = _quadratic()
    res = vl.minimize_bilevel(problem, upper, theta0, "maid", options={"maxiter": 15})
    s = summarize_run(res, "MAID", extra={"note": 1})
    assert s["nit"] == 15 and s["cost"] == res.n_lower_iter + res.n_cg_iter and s["note"] == 1
    assert s["history"]["fun"] == [r["fun"] for r in res.history] and len(s["history"]["iter"]) == 16
    assert s["n_accepted"] == sum(bool(r["accepted"]) for r in res.history[1:])
    assert s["certified_decrease"]["checked"] >= 1 and s["certified_decrease"]["violations"] == 0
    np.testing.assert_array_equal(s["theta"], res.theta)
    assert "theta" not in summarize_run(res, "x", theta_limit=2) and \
        summarize_run(res, "x", theta_limit=2)["theta_summary"]["size"] == 4
    assert summarize_run(vl.minimize_bilevel(problem, upper, theta0, "hoag", options={"maxiter": 3}),
                         "h")["certified_decrease"] is None


def test_summarize_run_keeps_the_current_columns_and_json_options():
    """Summaries carry wall_time, bound_exact and image_cost (old rows' time read as wall_time), and
    options without live objects (an executor), so that they can be written as JSON."""
    from varlearn._io import dumps_json
    from varlearn.executors import SerialExecutor

    problem, upper, _, _ = _tv(n=2)
    res = vl.minimize_bilevel(problem, upper, np.array([-4.0, -4.0]), "maid",
                              options={"maxiter": 3, "executor": SerialExecutor()})
    s = summarize_run(res, "MAID")
    assert s["image_cost"] == res.image_cost == 2 * s["cost"]
    assert s["history"]["image_cost"] == [r["image_cost"] for r in res.history]
    assert s["history"]["bound_exact"] == [True] * 4 and s["history"]["wall_time"] == [r["wall_time"] for r in
                                                                                       res.history]
    assert "executor" not in s["options"] and s["options"]["maxiter"] == 3 and dumps_json(s)
    old = dict(res, history=[{("time" if k == "wall_time" else k): v for k, v in r.items()} for r in res.history])
    assert summarize_run(old, "old")["history"]["wall_time"] == s["history"]["wall_time"]


def _tv(n=1, size=10, seed=1):
    rng = np.random.default_rng(seed)
    clean = np.stack([np.tri(size) * 0.8 + 0.1 for _ in range(n)])
    noisy = clean + 0.1 * rng.standard_normal(clean.shape)
    return vl.DenoisingProblem(noisy, vl.TotalVariation()), vl.SquaredError(clean), noisy, clean


def test_image_quality_clips_the_estimate_only():
    clean = np.full((2, 8, 8), 0.5)
    x = clean.copy()
    x[0, 0, 0] = 3.0       # clipped to 1: error 0.5 in one pixel of 128
    q = image_quality(x, clean)
    assert q["clipped"] is True
    assert q["psnr_batch"] == pytest.approx(10 * math.log10(1 / (0.25 / 128)))
    assert q["psnr_mean"] == math.inf  # the second image is exact (mean of per-image values)
    assert image_quality(clean, clean)["ssim_mean"] == pytest.approx(1.0)


def test_tight_solver_evaluation_and_grid_search():
    problem, upper, noisy, clean = _tv()
    ev = evaluate_theta(problem, upper, np.array([-3.0, -4.0]), 1e-6)
    assert ev["solve_status"] == "success" and ev["solve_iter"] >= 1
    assert ev["psnr_mean"] > image_quality(noisy, clean)["psnr_mean"]
    solver = TightSolver(problem, upper, 1e-6)
    f_a = solver.f((-3.0, -4.0))
    assert f_a == pytest.approx(ev["f"], rel=1e-9) and solver.n_solves == 1
    g0, g1 = np.array([-5.0, -3.0, -1.0]), np.array([-6.0, -3.0])
    theta_star, f_star, d = grid_search_2d(solver, (g0, g1), (0.5, 1.0), 3, 20)
    assert d["coarse"]["f"].shape == (3, 2) and d["fine"]["f"].shape == (3, 3)
    assert d["coarse"]["best"][0] == -3.0                      # the weight of the coarse optimum is interior
    assert f_star <= np.nanmin(d["coarse"]["f"]) and f_star <= d["fine"]["f_best"]
    assert f_star == pytest.approx(solver.f(theta_star), rel=1e-9)
    assert d["n_solves"] >= 6 + 9 + d["nelder_mead"]["nfev"]


def test_bound_checks():
    from varlearn.bilevel.analysis import bound_check, summarize_bound_checks

    class HG:
        grad = np.array([1.0, 2.0])
        grad_norm = math.sqrt(5.0)
        error_bound = 0.05

    err, om, floor = bound_check(HG, np.array([1.0, 2.1]))
    assert err == pytest.approx(0.1) and om == 0.05 and floor == pytest.approx(64 * np.finfo(float).eps * 5 ** 0.5)
    s = summarize_bound_checks([(err, om, floor), (0.01, 0.05, 0.0), (2e-16, 1e-16, 1e-15), (5.0, math.inf, 0.0)])
    assert s["n"] == 4 and s["n_violated"] == 1 and s["n_violated_raw"] == 2   # the 3rd is within rounding
    assert s["max_error_over_bound"] == pytest.approx(2.0)                      # the infinite bound is skipped
    assert s["median_bound_over_error"] == pytest.approx(0.5)
    assert summarize_bound_checks([])["n"] == 0 and summarize_bound_checks([])["max_error_over_bound"] is None
