"""Executors: certificates composed across chunks, serial and Dask runs, failures (stochastic-spec §3, §5).

The tests marked ``dask`` run on one session ``LocalCluster`` of 2 single-threaded worker processes.
"""
import dataclasses
import math
import os

import numpy as np
import pytest

from varlearn.datasets import ImageCollection
from varlearn.executors import (
    Collector,
    DenoisingDataset,
    DistributedTaskError,
    FaultHook,
    SerialExecutor,
    allocate,
    executor_hypergradient,
    executor_solve_lower,
)
from varlearn.hypergradient import hypergradient
from varlearn.problems import DenoisingProblem, SquaredError
from varlearn.regularizers import TotalVariation
from varlearn.solvers import solve_lower

THETA = np.array([-3.0, -2.0])
N = 6


@pytest.fixture(scope="module")
def clean():
    rng = np.random.default_rng(21)
    base = np.kron(rng.random((N, 4, 4)), np.ones((8, 8)))  # piecewise-constant 32 x 32 images
    return np.clip(base + 0.02 * rng.standard_normal(base.shape), 0.0, 1.0)


@pytest.fixture(scope="module")
def spec(clean):
    return DenoisingDataset(ImageCollection.from_array(clean), TotalVariation(), sigma=0.1, noise_seed=5)


@pytest.fixture(scope="module")
def inprocess(spec):
    clean, noisy = spec.read_pairs(range(N))
    return DenoisingProblem(noisy, TotalVariation()), SquaredError(clean)


@pytest.fixture(scope="module")
def exact(inprocess):
    """The hypergradient solved tightly (lower level and CG to 1e-11): the true gradient up to its tiny ω."""
    hg = hypergradient(*inprocess, THETA, 1e-11, 1e-11)
    assert hg.success and hg.error_bound < 1e-6
    return hg


@pytest.fixture(scope="session")
def client():
    distributed = pytest.importorskip("distributed")
    from varlearn.executors import TaskOptions, run_chunk

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    c = distributed.Client(cluster)
    # warm up: every worker imports varlearn and loads the numba kernels once (seconds per process)
    one = DenoisingDataset(ImageCollection.from_array(np.zeros((1, 8, 8))), TotalVariation(), sigma=0.1)
    opts = TaskOptions(phase="grad", tag=("warm", "grad", "", 0), threads=1)
    c.gather([c.submit(run_chunk, one, 0, (0,), THETA, 1e-2, 1e-2, 1, opts, workers=[w], pure=False)
              for w in c.scheduler_info()["workers"]])
    yield c
    c.close()
    cluster.close()


def _same(a, b, rtol):
    for name in ("omega", "fun", "eps", "delta", "grad_U_norm"):
        assert math.isclose(getattr(a, name), getattr(b, name), rel_tol=rtol, abs_tol=0.0), name
    np.testing.assert_allclose(a.grad, b.grad, rtol=rtol, atol=0)


def _stack(warm, n=N):
    return np.stack([warm[i][0] for i in range(n)])


def _check_against_inprocess(bh, hg):
    np.testing.assert_allclose(bh.grad, hg.grad, rtol=1e-12, atol=0)
    for mine, ref in ((bh.omega, hg.error_bound), (bh.fun, hg.upper_value), (bh.eps, hg.eps),
                      (bh.delta, hg.delta), (bh.grad_U_norm, hg.upper_grad_norm)):
        assert math.isclose(mine, float(ref), rel_tol=1e-12), (mine, ref)
    assert bh.status == hg.status == "success" and bh.bound_exact is True


# ----------------------------------------------------------------------------- serial (no Dask)
def test_allocation_and_composed_certificate(spec, inprocess):
    rng = np.random.default_rng(3)
    for _ in range(20):
        sizes = rng.integers(1, 9, size=rng.integers(1, 7))
        t = allocate(0.3, sizes)
        assert math.isclose(math.fsum(v * v for v in t), 0.09, rel_tol=1e-13)
        assert all(math.isclose(v, 0.3 * math.sqrt(n / sizes.sum())) for v, n in zip(t, sizes))
    x_hat = solve_lower(inprocess[0], THETA, 1e-12).x
    eps = 2e-2
    for k in (1, 2, 4):
        bh = SerialExecutor(images_per_task=k).hypergradient(spec, range(N), THETA, eps, eps)
        sizes = [len(r.indices) for r in bh.per_chunk]
        assert sizes == [len(p) for p in np.array_split(np.arange(N), math.ceil(N / k))]
        for r, target in zip(bh.per_chunk, allocate(eps, sizes)):
            assert math.sqrt(r.eps_sq) <= target and math.sqrt(r.delta_sq) <= target
        assert math.isclose(bh.eps, math.sqrt(sum(r.eps_sq for r in bh.per_chunk)), rel_tol=1e-15)
        assert bh.eps <= eps and bh.delta <= eps
        # the composed ε certifies the stacked batch (x_hat solved to 1e-12)
        x = _stack(bh.warm_out)
        assert np.linalg.norm(x - x_hat) <= bh.eps + 1e-12
        # the composed pieces are those of the stacked batch: U, ‖∇U‖, ‖J‖ (TV: Frobenius), CG residual
        problem, upper = inprocess
        q = np.stack([bh.warm_out[i][1] for i in range(N)])
        assert math.isclose(bh.fun, float(upper.value(x)), rel_tol=1e-13)
        assert math.isclose(bh.grad_U_norm, np.linalg.norm(upper.grad(x)), rel_tol=1e-13)
        assert math.isclose(bh.constants["J_norm"], problem.mixed_norm_bound(x, THETA), rel_tol=1e-12)
        assert np.linalg.norm(problem.hvp(x, THETA, q) - upper.grad(x)) <= bh.delta
        np.testing.assert_allclose(bh.grad, -problem.mixed_vjp(x, THETA, q), rtol=1e-12, atol=1e-15)
        assert bh.image_lower_iter == sum(r.n_lower_iter * len(r.indices) for r in bh.per_chunk)


def test_serial_full_batch_is_the_inprocess_hypergradient(spec, inprocess):
    problem, upper = inprocess
    hg = hypergradient(problem, upper, THETA, 1e-3, 1e-3)
    bh = SerialExecutor().hypergradient(spec, range(N), THETA, 1e-3, 1e-3)
    assert len(bh.per_chunk) == 1
    _check_against_inprocess(bh, hg)
    # the MAID adapters: the results of hypergradient() and solve_lower() on the stacked batch
    r = executor_hypergradient(SerialExecutor(), spec, THETA, 1e-3, 1e-3, x0=hg.x)
    hg2 = hypergradient(problem, upper, THETA, 1e-3, 1e-3, x0=hg.x)
    np.testing.assert_array_equal(r.x, hg2.x)
    np.testing.assert_allclose(r.grad, hg2.grad, rtol=1e-12, atol=0)
    assert r.n_lower_iter == hg2.n_lower_iter and r.n_cg_iter == hg2.n_cg_iter
    assert math.isclose(r.error_bound, hg2.error_bound, rel_tol=1e-12)
    low = solve_lower(problem, THETA + 0.1, 1e-4)
    t = executor_solve_lower(SerialExecutor(), spec, THETA + 0.1, 1e-4)
    np.testing.assert_array_equal(t.x, low.x)
    assert t.nit == low.nit and t.status == low.status and math.isclose(t.distance_bound, low.distance_bound)
    assert math.isclose(t.upper_value, float(upper.value(low.x)), rel_tol=1e-13)


def test_omega_bounds_the_true_error(spec, exact):
    for tol in (3e-2, 3e-3):
        bh = SerialExecutor(images_per_task=4).hypergradient(spec, range(N), THETA, tol, tol)  # chunks 3, 3
        err = np.linalg.norm(bh.grad - exact.grad)
        assert bh.bound_exact and err <= bh.omega - exact.error_bound, (tol, err, bh.omega)
        assert err > 0


def test_raise_drop_and_retry(spec, tmp_path):
    ref = SerialExecutor(images_per_task=2).hypergradient(spec, range(N), THETA, 1e-3, 1e-3)
    ex = SerialExecutor(images_per_task=2, task_retries=2)
    ex.fault_hook = FaultHook(chunk=1)
    with pytest.raises(DistributedTaskError, match=r"failed 3 time\(s\); images \[2, 3\]") as info:
        ex.hypergradient(spec, range(N), THETA, 1e-3, 1e-3)
    assert info.value.indices == (2, 3) and "injected fault" in info.value.details
    ex = SerialExecutor(images_per_task=2, task_retries=1, on_task_failure="drop", max_drop_fraction=0.4)
    ex.fault_hook = FaultHook(chunk=1)
    bh = ex.hypergradient(spec, range(N), THETA, 1e-3, 1e-3)
    kept = [ref.per_chunk[0], ref.per_chunk[2]]
    assert bh.n_dropped == 1 and bh.dropped == (2, 3) and bh.n_images == 4 and bh.n_retries == 1
    np.testing.assert_allclose(bh.grad, 1.5 * (kept[0].grad + kept[1].grad), rtol=1e-15)
    assert math.isclose(bh.fun, 1.5 * (kept[0].fun + kept[1].fun), rel_tol=1e-15)
    assert bh.eps < ref.eps and math.isfinite(bh.omega) and set(bh.warm_out) == {0, 1, 4, 5}
    ex.max_drop_fraction = 0.3
    with pytest.raises(DistributedTaskError, match="max_drop_fraction"):
        ex.hypergradient(spec, range(N), THETA, 1e-3, 1e-3)
    # a fault that happens once is retried under a new attempt and changes nothing
    ex = SerialExecutor(images_per_task=2)
    ex.fault_hook = FaultHook(chunk=2, marker=str(tmp_path / "once"))
    bh = ex.hypergradient(spec, range(N), THETA, 1e-3, 1e-3)
    assert (tmp_path / "once").exists() and bh.n_retries == 1
    _same(bh, ref, 0.0)


def test_stale_and_duplicate_results_are_discarded(spec):
    ex = SerialExecutor(images_per_task=3)
    bh = ex.hypergradient(spec, range(N), THETA, 1e-3, 1e-3)
    r0, r1 = bh.per_chunk
    col = Collector([r0.tag, r1.tag])
    assert col.add(r1) and col.missing() == [0]
    assert not col.add(r1)  # duplicate
    assert not col.add(dataclasses.replace(r0, tag=r0.tag[:2] + ("0" * 16, 0)))  # another θ
    other = ex.hypergradient(spec, range(N), THETA, 1e-3, 1e-3).per_chunk[0]
    assert not col.add(other)  # a result of another call
    assert col.n_discarded == 3 and col.add(r0) and col.missing() == []
    assert col.results == [r0, r1]


def test_result_does_not_depend_on_completion_order(spec):
    class Reversed(SerialExecutor):  # reports the chunks last to first
        def _run(self, spec, theta, n_batch, tasks, report):
            super()._run(spec, theta, n_batch, tasks[::-1], report)

    a = SerialExecutor(images_per_task=1).hypergradient(spec, range(N), THETA, 1e-3, 1e-3)
    b = Reversed(images_per_task=1).hypergradient(spec, range(N), THETA, 1e-3, 1e-3)
    assert [r.chunk for r in b.per_chunk] == list(range(N))
    _same(a, b, 0.0)


def test_estimates_are_seeded_by_the_key(spec):
    """With estimated constants a call repeats its ω given the same key (a resumed run), whatever came before."""
    est = dataclasses.replace(spec, constants="estimate")
    a = SerialExecutor(images_per_task=3)
    first = a.hypergradient(est, range(N), THETA, 1e-3, 1e-3, key="isgd-7")
    again = a.hypergradient(est, range(N), THETA, 1e-3, 1e-3, key="isgd-7")
    fresh = SerialExecutor(images_per_task=3).hypergradient(est, range(N), THETA, 1e-3, 1e-3, key="isgd-7")
    other = SerialExecutor(images_per_task=3).hypergradient(est, range(N), THETA, 1e-3, 1e-3, key="isgd-8")
    assert first.bound_exact is False and first.omega == again.omega == fresh.omega != other.omega
    # running maxima handed back keep the larger estimates
    more = a.hypergradient(est, range(N), THETA, 1e-3, 1e-3, key="isgd-8", constants=first.constants)
    for name in ("L_H", "L_J"):
        assert more.constants[name] >= max(first.constants[name], other.constants[name]) * (1 - 1e-12)


def test_bad_arguments(spec):
    with pytest.raises(ValueError, match="images_per_task"):
        SerialExecutor(images_per_task=0)
    with pytest.raises(ValueError, match="on_task_failure"):
        SerialExecutor(on_task_failure="ignore")
    with pytest.raises(ValueError, match="task_retries"):
        SerialExecutor(task_retries=-1)
    with pytest.raises(ValueError, match="eps"):
        SerialExecutor().hypergradient(spec, range(N), THETA, -1.0, 1e-3)
    with pytest.raises(ValueError, match="theta"):
        SerialExecutor().hypergradient(spec, range(N), THETA[:1], 1e-3, 1e-3)
    with pytest.raises(ValueError, match="indices"):
        SerialExecutor().trial(spec, [0, N], THETA, 1e-3)
    with pytest.raises(ValueError, match="sigma"):
        DenoisingDataset(spec.collection, TotalVariation())
    with pytest.raises(ValueError, match="noise"):
        DenoisingDataset(spec.collection, TotalVariation(), sigma=0.1, noise="new")


def test_dask_is_optional(monkeypatch):
    import subprocess
    import sys

    code = ("import sys, varlearn, varlearn.executors, varlearn.datasets, varlearn.bilevel; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed', 'zarr')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"  # the core never imports Dask
    from varlearn.executors import DaskExecutor

    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"varlearn\[distributed\]"):
        DaskExecutor()


# ----------------------------------------------------------------------------- Dask
@pytest.mark.dask
def test_dask_full_batch_equals_inprocess(client, spec, inprocess, exact):
    from varlearn.executors import DaskExecutor

    problem, upper = inprocess
    hg = hypergradient(problem, upper, THETA, 1e-3, 1e-3)
    ex = DaskExecutor(client=client, images_per_task=N)
    bh = ex.hypergradient(spec, range(N), THETA, 1e-3, 1e-3)
    assert len(bh.per_chunk) == 1 and not bh.per_chunk[0].worker.endswith(f":{os.getpid()}")
    _check_against_inprocess(bh, hg)
    assert np.linalg.norm(bh.grad - exact.grad) <= bh.omega - exact.error_bound
    # by scheduler address: the executor opens its own client and closes only that
    with DaskExecutor(client=client.scheduler.address, images_per_task=N) as by_address:
        _same(by_address.hypergradient(spec, range(N), THETA, 1e-3, 1e-3), bh, 0.0)
        assert by_address.client is not client
    assert client.status == "running" and len(client.scheduler_info()["workers"]) == 2


@pytest.mark.dask
def test_dask_per_image_equals_serial(client, spec):
    from varlearn._accel import get_threads
    from varlearn.executors import DaskExecutor

    ser = SerialExecutor(images_per_task=1)
    ex = DaskExecutor(client=client, images_per_task=1)
    warm = {i: (np.full((32, 32), 0.5), None) for i in (1, 4)}
    a = ser.hypergradient(spec, range(N), THETA, 1e-3, 1e-3, warm=warm)
    b = ex.hypergradient(spec, range(N), THETA, 1e-3, 1e-3, warm=warm)
    _same(a, b, 0.0)
    assert a.image_lower_iter == b.image_lower_iter and a.image_cg_iter == b.image_cg_iter
    for i in range(N):
        np.testing.assert_array_equal(a.warm_out[i][0], b.warm_out[i][0])
    ta, tb = ser.trial(spec, [5, 0, 2], THETA + 0.2, 1e-3), ex.trial(spec, [5, 0, 2], THETA + 0.2, 1e-3)
    assert ta.fun == tb.fun and ta.eps == tb.eps and ta.image_lower_iter == tb.image_lower_iter
    assert set(client.run(get_threads).values()) == {1}  # the workers run the kernels on one thread


@pytest.mark.dask
def test_workers_read_the_same_images_and_noise(client, clean, tmp_path):
    import dask.array as da
    import imageio.v3 as iio

    from varlearn.executors import DaskExecutor

    px = (clean * 255).round().astype(np.uint8)
    (tmp_path / "f").mkdir()
    for k in range(N):
        iio.imwrite(tmp_path / "f" / f"im{k}.png", px[k])
    colls = [ImageCollection.from_folder(tmp_path / "f"), ImageCollection.from_array(px),
             ImageCollection.from_dask(da.from_array(px, chunks=(2, 32, 32)))]
    idx = [4, 1, 5]
    local = colls[1].read_pairs(idx, sigma=0.05, seed=9)
    # a folder read by each worker (a Dask collection is read through futures by the executor, below)
    got = client.gather([client.submit(colls[0].read_pairs, idx, sigma=0.05, seed=9, workers=[w], pure=False)
                         for w in client.scheduler_info()["workers"]])
    assert len(got) == 2
    for clean_w, noisy_w in got:
        np.testing.assert_array_equal(clean_w, local[0])
        np.testing.assert_array_equal(noisy_w, local[1])
    # through the executor: a Dask collection (rows computed into futures) is the in-memory one
    ex = DaskExecutor(client=client, images_per_task=2)
    specs = [DenoisingDataset(c, TotalVariation(), sigma=0.05, noise_seed=9) for c in colls]
    ref = ex.hypergradient(specs[1], range(N), THETA, 1e-3, 1e-3)
    for s in (specs[0], specs[2]):
        _same(ex.hypergradient(s, range(N), THETA, 1e-3, 1e-3), ref, 0.0)


@pytest.mark.dask
def test_dask_erred_task_raises_or_drops(client, spec):
    from varlearn.executors import DaskExecutor

    ex = DaskExecutor(client=client, images_per_task=2, task_retries=1)
    ex.fault_hook = FaultHook(chunk=2)
    with pytest.raises(DistributedTaskError, match=r"images \[4, 5\]") as info:
        ex.hypergradient(spec, range(N), THETA, 1e-3, 1e-3)
    assert info.value.indices == (4, 5) and "RuntimeError" in info.value.details
    ex = DaskExecutor(client=client, images_per_task=2, task_retries=0, on_task_failure="drop",
                      max_drop_fraction=0.34)
    ex.fault_hook = FaultHook(chunk=2)
    bh = ex.hypergradient(spec, range(N), THETA, 1e-3, 1e-3)
    assert bh.n_dropped == 1 and bh.dropped == (4, 5) and bh.n_images == 4 and set(bh.warm_out) == {0, 1, 2, 3}


@pytest.mark.dask
def test_killed_worker_gives_the_same_run(client, spec, inprocess, tmp_path):
    """A MAID run on the cluster during which a worker dies ends with the θ of an undisturbed run."""
    from varlearn import minimize_bilevel
    from varlearn.executors import DaskExecutor

    problem, upper = inprocess
    opts = {"maxiter": 3}
    ref = minimize_bilevel(problem, upper, THETA, method="maid",
                           options=dict(opts, executor=SerialExecutor(images_per_task=1)))
    ex = DaskExecutor(client=client, images_per_task=1)
    ex.fault_hook = FaultHook(chunk=1, mode="exit", marker=str(tmp_path / "killed"))
    run = minimize_bilevel(problem, upper, THETA, method="maid", options=dict(opts, executor=ex))
    assert (tmp_path / "killed").exists()  # a worker really died running chunk 1 of the first hypergradient
    np.testing.assert_array_equal(run.theta, ref.theta)
    assert [r["fun"] for r in run.history] == [r["fun"] for r in ref.history]
    assert run.status == ref.status and run.history[-1]["image_cost"] == ref.history[-1]["image_cost"]
    inproc = minimize_bilevel(problem, upper, THETA, method="maid", options=opts)
    assert np.max(np.abs(run.theta - inproc.theta)) < 1e-3  # chunked solves change θ only within accuracy


# ---------------------------------------------------------------------- worker-side warm starts (§4.6)
def _certified(bh, eps, delta):
    assert bh.status == "success" and bh.n_dropped == 0
    assert bh.eps <= eps and bh.delta <= delta


@pytest.mark.dask
def test_worker_warm_starts_cut_iterations_and_survive_a_cleared_cache_and_a_lost_worker(client, spec, tmp_path):
    """Tasks read their starts from the worker that ran them last; a cleared cache is a cold start again."""
    from varlearn.executors import DaskExecutor, WorkerWarm, clear_worker_cache, worker_cache_info

    theta2 = THETA + np.array([0.01, -0.01])
    eps, delta = 1e-4, 1e-4
    ex = DaskExecutor(client=client, images_per_task=3)
    cold = ex.hypergradient(spec, range(N), theta2, eps, delta)
    _certified(cold, eps, delta)
    ww = WorkerWarm(f"test-{os.getpid()}-{tmp_path.name}", 2 ** 26)
    _certified(ex.hypergradient(spec, range(N), THETA, eps, delta, warm=ww), eps, delta)
    hits0 = sum(v["hits"] for v in client.run(worker_cache_info).values())
    warm = ex.hypergradient(spec, range(N), theta2, eps, delta, warm=ww)
    _certified(warm, eps, delta)
    hits = sum(v["hits"] for v in client.run(worker_cache_info).values())
    assert hits - hits0 >= N - 3  # the tasks found (almost all of) their starts where they were sent
    assert warm.image_lower_iter < 0.7 * cold.image_lower_iter, (warm.image_lower_iter, cold.image_lower_iter)
    np.testing.assert_allclose(warm.grad, cold.grad, rtol=0.05)  # the same gradient within accuracy
    client.run(clear_worker_cache, ww.run)
    again = ex.hypergradient(spec, range(N), theta2, eps, delta, warm=ww)
    _certified(again, eps, delta)
    assert again.image_lower_iter == cold.image_lower_iter  # a miss is exactly a cold start from y_i
    # a worker dies while running chunk 1: the task is rerouted, cold on the other worker, still certified
    ex.fault_hook = FaultHook(chunk=1, mode="exit", marker=str(tmp_path / "killed"))
    lost = ex.hypergradient(spec, range(N), THETA, eps, delta, warm=ww)
    assert (tmp_path / "killed").exists()
    _certified(lost, eps, delta)
    ex.fault_hook = None
    client.wait_for_workers(2, timeout=60)


def _recording_dask(**kw):
    """A DaskExecutor that records every call's achieved and target ε, δ (driver side only)."""
    from varlearn.executors import DaskExecutor

    class Recording(DaskExecutor):
        def hypergradient(self, spec, indices, theta, eps, delta, **k):
            bh = super().hypergradient(spec, indices, theta, eps, delta, **k)
            self.calls.append((bh.eps, eps, bh.delta, delta, bh.status, bh.image_lower_iter))
            return bh

    ex = Recording(**kw)
    ex.calls = []
    return ex


def _isgd_epoch_cost(client, inprocess, warm_start, callback=None):
    from varlearn import minimize_bilevel

    ex = _recording_dask(client=client, images_per_task=1)
    opts = {"batch_size": 3, "max_epochs": 2, "warm_start": warm_start, "executor": ex, "seed": 4,
            "step0": 0.01, "eps0": 0.002, "p": 0.25}
    res = minimize_bilevel(*inprocess, THETA, method="isgd", options=opts, callback=callback)
    for got_eps, eps, got_delta, delta, status, _ in ex.calls:
        assert status == "success" and got_eps <= eps and got_delta <= delta  # every step certified
    assert all(r["n_uncertified"] == 0 for r in res.history) and len(ex.calls) == 4
    second = sum(c[5] for c in ex.calls[2:])  # the lower-level image-iterations of epoch 2
    return res, second


@pytest.mark.dask
def test_isgd_worker_warm_starts(client, inprocess):
    """warm_start="worker" on 2 workers: epoch 2 costs clearly less than cold solves; a cleared cache is safe."""
    from varlearn.executors import clear_worker_cache

    cold, cold_2 = _isgd_epoch_cost(client, inprocess, "none")
    warm, warm_2 = _isgd_epoch_cost(client, inprocess, "worker")
    assert warm_2 < 0.75 * cold_2, (warm_2, cold_2)
    assert np.max(np.abs(warm.theta - cold.theta)) < 1e-2  # the same run within the accuracy
    cleared = []

    def clear(_):
        if not cleared:  # after the first step: the caches of both workers emptied mid-run
            cleared.append(sum(client.run(clear_worker_cache).values()))

    mid, mid_2 = _isgd_epoch_cost(client, inprocess, "worker", callback=clear)
    assert cleared[0] > 0 and mid.status == warm.status and len(mid.history) == 4


def test_worker_cache_is_a_bounded_lru_and_auto_picks_worker_mode():
    from varlearn.bilevel._isgd_state import warm_capacity, warm_mode
    from varlearn.bilevel.isgd_options import ISGD_DEFAULTS
    from varlearn.executors import TaskOptions, WorkerWarm, clear_worker_cache, run_chunk
    from varlearn.executors._worker_cache import WorkerCache

    c = WorkerCache()
    x, q = np.ones((3, 4, 4)), np.full((3, 4, 4), 0.5)
    one = 2 * 16 * 4  # float32 x and q̄ of a 4 x 4 image
    c.put("r", (0, 1, 2), x, q, 0.5, max_bytes=2 * one)
    assert sorted(k[1] for k in c.data) == [1, 2] and c.nbytes == 2 * one  # the oldest was evicted
    got = c.get("r", (0, 1, 5), 0.25)
    assert list(got) == [1] and got[1][0].dtype == np.float32
    np.testing.assert_array_equal(got[1][1], 0.25 * 1.0)  # q̄ = q / w = 1 stored, scaled by the new weight
    assert c.get("other run", (1, 2), 1.0) is None and c.clear("r") == 2 and c.nbytes == 0
    # a task in this process writes its results to the cache and reads them on the next call
    spec = DenoisingDataset(ImageCollection.from_array(np.full((2, 8, 8), 0.5)), TotalVariation(), sigma=0.1)
    opts = TaskOptions(phase="grad", tag=("t", "grad", "", 0))
    ww = WorkerWarm("unit", 2 ** 20)
    first = run_chunk(spec, 0, (0, 1), THETA, 1e-6, 1e-6, 2, opts, warm=ww)
    second = run_chunk(spec, 0, (0, 1), THETA, 1e-6, 1e-6, 2, opts, warm=ww)
    assert first.address is None and second.n_lower_iter < first.n_lower_iter
    assert clear_worker_cache("unit") == 2
    opts_auto = dict(ISGD_DEFAULTS, warm_start="auto", warm_start_max_bytes=1000)
    pytest.importorskip("distributed")
    from varlearn.executors import DaskExecutor

    dask_ex = DaskExecutor(n_workers=1)  # no cluster is started until its client is used
    assert warm_mode(6, (6, 32, 32), opts_auto, dask_ex) == "worker" and warm_capacity(6, (6, 32, 32),
                                                                                      opts_auto, dask_ex) == 0
    assert warm_mode(6, (6, 32, 32), opts_auto, SerialExecutor()) == "driver"
    assert warm_mode(6, (6, 32, 32), dict(opts_auto, warm_start="worker"), SerialExecutor()) == "none"
    assert warm_mode(6, (6, 32, 32), dict(opts_auto, warm_start_max_bytes=2 ** 20), dask_ex) == "driver"
