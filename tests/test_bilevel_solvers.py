"""Solver objects MAID, FixedAccuracy, HOAG: equal to minimize_bilevel, public state, naming table."""
import inspect
import re
import warnings

import numpy as np
import pytest
from test_bilevel import tv_problem, well_conditioned_quadratic, without_time

import varlearn as vl
from varlearn.bilevel import (
    HISTORY_FIELDS,
    HOAG,
    MAID,
    BilevelSolver,
    BilevelState,
    FixedAccuracy,
    get_method,
    history_to_csv,
    load_checkpoint,
    register_method,
    save_checkpoint,
)
from varlearn.bilevel.history import column, upgrade_row

THETA0 = np.array([-4.5, -4.5])
CASES = {
    "maid": (MAID, {"maxiter": 6}),
    "fixed": (FixedAccuracy, {"maxiter": 6, "eps0": 1e-4, "delta0": 1e-4}),
    "hoag": (HOAG, {"maxiter": 6}),
}


def assert_same_run(a, b):
    """Two results of the same deterministic run: θ, history (but the seconds) and counters bit for bit."""
    np.testing.assert_array_equal(a.theta, b.theta)
    assert without_time(a.history) == without_time(b.history)
    for key in ("nit", "status", "message", "success", "fun", "fun_bounds", "n_accepted", "n_lower_iter",
                "n_cg_iter", "image_lower_iter", "image_cg_iter", "image_cost"):
        assert a[key] == b[key], key
    np.testing.assert_array_equal(a.x, b.x)


@pytest.mark.parametrize("method", sorted(CASES))
def test_solver_object_equals_minimize_bilevel(method):
    cls, opts = CASES[method]
    prob, U = tv_problem()
    ref = vl.minimize_bilevel(prob, U, THETA0, method, options=opts)
    res = cls(**opts).run(prob, U, THETA0)
    assert get_method(method) is cls and res.method == method
    assert ref.nit == 6 and ref.status == "maxiter"
    assert_same_run(res, ref)


@pytest.mark.parametrize("method", sorted(CASES))
def test_init_state_update_loop_equals_run(method):
    cls, opts = CASES[method]
    prob, U = tv_problem()
    solver = cls(**opts)
    state = solver.init_state(prob, U, THETA0)
    assert isinstance(state, BilevelState) and state.k == 0 and state.status is None and state.history == []
    rows = []
    while state.status is None:
        out = solver.update(state)
        assert out is state
        rows.append(len(state.history))
    # one row per outer iteration (row 0 comes with the first), then the stop adds none
    assert rows == [2, 3, 4, 5, 6, 7, 7] and state.status == "maxiter" and state.k == 6
    assert solver.update(state) is state and len(state.history) == 7  # a stopped state stays as it is
    assert_same_run(solver.result(state), solver.run(prob, U, THETA0))


def test_state_is_public_and_documented():
    prob, U = tv_problem()
    state = MAID(maxiter=2).init_state(prob, U, THETA0)
    MAID(maxiter=2).update(state)
    doc = inspect.getdoc(BilevelState)
    public = [name for name in vars(state) if not name.startswith("_")]
    public += ["cost", "image_lower_iter", "image_cg_iter", "image_cost", "wall_time"]
    undocumented = [name for name in public if not re.search(rf"\b{name}\b", doc)]
    assert undocumented == []
    assert state.k == 1 and state.theta.shape == (2,) and state.eps > 0 and state.step > 0
    assert state.cost == state.n_lower_iter + state.n_cg_iter > 0
    assert state.image_cost == 3 * state.cost and state.n_images == 3
    assert state.history[-1]["cost"] == state.cost and state.wall_time >= state.history[-1]["wall_time"]


def test_callback_gets_the_live_state():
    prob, U = tv_problem()
    seen = []
    MAID(maxiter=3).run(prob, U, THETA0, callback=lambda r: seen.append((r.state.k, r.nit, r.row["iter"])))
    assert seen == [(1, 1, 1), (2, 2, 2), (3, 3, 3)]


@pytest.mark.parametrize("method", sorted(CASES))
def test_solver_resume_is_exact(method, tmp_path):
    cls, opts = CASES[method]
    prob, U = tv_problem()
    full = cls(**opts).run(prob, U, THETA0)
    ck = tmp_path / "run.npz"
    part = cls(**{**opts, "maxiter": 2}).run(prob, U, THETA0, checkpoint=ck)
    assert part.nit == 2
    rest = cls(**opts).run(prob, U, THETA0, resume=ck)
    assert_same_run(rest, full)
    with pytest.raises(vl.bilevel.CheckpointError, match=f"is a '{method}' run, not"):
        (HOAG if method != "hoag" else MAID)(maxiter=3).run(prob, U, THETA0, resume=ck)


def test_deprecated_max_iter_warns_and_works(tmp_path):
    prob, U = tv_problem()
    ref = vl.minimize_bilevel(prob, U, THETA0, options={"maxiter": 3})
    with pytest.warns(DeprecationWarning, match="option 'max_iter' is deprecated; use 'maxiter'") as rec:
        old = vl.minimize_bilevel(prob, U, THETA0, options={"max_iter": 3})
    assert rec[0].filename == __file__  # points at the caller
    assert_same_run(old, ref)
    assert "max_iter" not in old.options and old.options["maxiter"] == 3
    with pytest.warns(DeprecationWarning, match="'max_iter' is deprecated") as rec:
        solver = HOAG(max_iter=2)
    assert rec[0].filename == __file__ and solver.options["maxiter"] == 2
    # a checkpoint written before the renames (option max_iter, history column time) resumes silently
    ck = tmp_path / "old.npz"
    vl.minimize_bilevel(prob, U, THETA0, options={"maxiter": 2}, checkpoint=ck)
    meta, arrays = load_checkpoint(ck)
    meta["options"]["max_iter"] = meta["options"].pop("maxiter")
    for row in meta["history"]:
        row["time"] = row.pop("wall_time")
        for name in ("bound_exact", "image_lower_iter", "image_cg_iter", "image_cost"):
            del row[name]
    del meta["format_version"], meta["sha256"]
    save_checkpoint(ck, meta, arrays)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        rest = vl.minimize_bilevel(prob, U, THETA0, options={"maxiter": 3}, resume=ck)
    np.testing.assert_array_equal(rest.theta, ref.theta)
    assert rest.history[1]["wall_time"] >= 0 and "time" not in rest.history[1]
    assert rest.history[1]["bound_exact"] is None and np.isnan(rest.history[1]["image_cost"])
    assert rest.history[-1]["bound_exact"] is True and rest.history[-1]["image_cost"] == 3 * rest.history[-1]["cost"]


def test_bound_exact_and_image_cost_columns():
    prob, U = tv_problem()  # a separable problem of 3 images
    for method, opts, exact in (("maid", {}, True), ("maid", {"bound_constants": "estimate"}, False),
                                ("maid", {"bound": False}, None), ("hoag", {}, None)):
        res = vl.minimize_bilevel(prob, U, THETA0, method, options={"maxiter": 4, **opts})
        assert [row["bound_exact"] for row in res.history] == [exact] * 5, (method, opts)
        for row in res.history:
            assert row["image_lower_iter"] == 3 * row["n_lower_iter"] and row["image_cg_iter"] == 3 * row["n_cg_iter"]
            assert row["image_cost"] == row["image_lower_iter"] + row["image_cg_iter"] == 3 * row["cost"]
        assert res.image_cost == 3 * (res.n_lower_iter + res.n_cg_iter) == res.history[-1]["image_cost"]
    text = history_to_csv(res.history)
    assert text.splitlines()[0].split(",") == list(HISTORY_FIELDS)
    assert "bound_exact" in HISTORY_FIELDS and "wall_time" in HISTORY_FIELDS and "time" not in HISTORY_FIELDS
    # image_budget stops a separable run on image_cost
    r = vl.minimize_bilevel(prob, U, THETA0, options={"image_budget": 450})
    assert r.status == "budget_exhausted" and not r.success
    assert r.image_cost >= 450 and all(row["image_cost"] < 450 for row in r.history[:-1])
    # a non-separable problem has no image unit: NaN columns, and image_budget is refused
    qp, QU, th0 = well_conditioned_quadratic()
    q = vl.minimize_bilevel(qp, QU, th0, options={"maxiter": 2})
    assert all(np.isnan(row[k]) for row in q.history for k in ("image_lower_iter", "image_cg_iter", "image_cost"))
    assert np.isnan(q.image_cost) and q.history[-1]["cost"] > 0
    with pytest.raises(ValueError, match="option 'image_budget' needs a separable problem"):
        vl.minimize_bilevel(qp, QU, th0, options={"image_budget": 100})


def test_old_history_rows_are_read_with_current_names():
    old = [{"iter": 0, "fun": 1.0, "time": 0.5, "cost": 3}, {"iter": 1, "fun": 0.5, "time": "1.5", "cost": "7"}]
    np.testing.assert_array_equal(column(old, "wall_time"), [0.5, 1.5])
    assert np.isnan(column(old, "image_cost")).all() and upgrade_row(old[0])["bound_exact"] is None
    assert "time" in old[0]  # not modified
    assert history_to_csv(old).splitlines()[1].split(",")[-1] == "0.5"


def test_register_method_and_unknown_methods():
    class Stop(MAID):
        """MAID that stops at once (a user's registered solver)."""

        method = "maid_once"

        def _iterate(self, state):
            row = super()._iterate(state)
            state.status = "callback_stop"
            return row

        @classmethod
        def resolve_options(cls, options):
            return MAID.resolve_options(options)

    from varlearn.bilevel import minimize

    prob, U = tv_problem()
    try:
        assert register_method("maid_once", Stop) is Stop and get_method("maid_once") is Stop
        r = vl.minimize_bilevel(prob, U, THETA0, method="maid_once", options={"maxiter": 5})
    finally:
        minimize._SOLVERS.pop("maid_once", None)
    assert r.nit == 1 and r.method == "maid_once" and r.status == "callback_stop"
    with pytest.raises(TypeError, match="subclass of BilevelSolver"):
        register_method("bad", dict)
    with pytest.raises(ValueError, match=r"method must be one of \('maid', 'fixed', 'hoag'.*got 'adam'"):
        vl.minimize_bilevel(prob, U, THETA0, method="adam")
    with pytest.raises(TypeError, match="abstract"):
        BilevelSolver()


def test_solver_objects_keep_the_data_on_its_backend(xp, tmp_path):
    """On every backend: θ and the warm starts stay in the problem's namespace; loop == run; resume exact."""
    prob, U = tv_problem()
    prob = vl.DenoisingProblem(xp.asarray(prob.noisy), prob.regularizer)
    U = vl.SquaredError(xp.asarray(U.clean))
    theta0 = xp.asarray(THETA0)
    solver = MAID(maxiter=4)
    state = solver.init_state(prob, U, theta0)
    while state.status is None:
        solver.update(state)
    for a in (state.theta, state.x_warm, state.q_warm, state.x_current):
        assert vl.backend.get_namespace(a) is xp
    full = solver.run(prob, U, theta0)
    assert_same_run(solver.result(state), full)
    ck = tmp_path / "run.npz"
    MAID(maxiter=2).run(prob, U, theta0, checkpoint=ck)
    rest = solver.run(prob, U, theta0, resume=ck)
    assert_same_run(rest, full)


def test_executor_option_runs_the_solves_on_an_executor(tmp_path):
    """option executor: with one task for the whole batch the run equals the in-process one bit for bit;
    with one image per task the image counts are the tasks' own; checkpoints leave the executor out."""
    from varlearn.executors import SerialExecutor

    prob, U = tv_problem()
    for cls, opts in CASES.values():
        ref = cls(**opts).run(prob, U, THETA0)
        assert_same_run(cls(**opts, executor=SerialExecutor()).run(prob, U, THETA0), ref)

    class Recording(SerialExecutor):
        """Sums the image-iterations of every batch it returns."""

        seen = {"hypergradient": [0, 0], "trial": [0, 0]}

        def hypergradient(self, *args, **kw):
            out = super().hypergradient(*args, **kw)
            self.seen["hypergradient"][0] += out.image_lower_iter
            self.seen["hypergradient"][1] += out.image_cg_iter
            return out

        def trial(self, *args, **kw):
            out = super().trial(*args, **kw)
            self.seen["trial"][0] += out.image_lower_iter
            return out

    rec = Recording(images_per_task=1)
    chunked = MAID(maxiter=6, executor=rec).run(prob, U, THETA0)
    seen = Recording.seen
    assert chunked.status == "maxiter" and seen["hypergradient"][0] > 0 and seen["trial"][0] > 0
    # the image counts are the tasks' own (each image stops on its own), not 3 x the stacked count
    assert chunked.image_lower_iter == seen["hypergradient"][0] + seen["trial"][0]
    assert chunked.image_cg_iter == seen["hypergradient"][1]
    assert chunked.image_cost < 3 * (chunked.n_lower_iter + chunked.n_cg_iter)
    assert chunked.history[-1]["image_cost"] == chunked.image_cost
    ck = tmp_path / "run.npz"
    ex = SerialExecutor(images_per_task=1)
    MAID(maxiter=3, executor=ex).run(prob, U, THETA0, checkpoint=ck)
    meta, _ = load_checkpoint(ck)
    assert "executor" not in meta["options"] and meta["image_lower"] == chunked.history[3]["image_lower_iter"]
    rest = MAID(maxiter=6, executor=ex).run(prob, U, THETA0, resume=ck)
    assert_same_run(rest, chunked)
    qp, QU, th0 = well_conditioned_quadratic()
    with pytest.raises(ValueError, match="option 'executor' needs a DenoisingProblem"):
        MAID(executor=SerialExecutor()).init_state(qp, QU, th0)
    with pytest.raises(ValueError, match="option 'executor' must be None or an executor object"):
        MAID(executor="dask")
