"""Benchmarks of the lower-level building blocks (used by ``scripts/benchmark_lower.py``).

Timing rules: on the host a measurement is the best and the median of
``repeat`` samples, each running enough calls to last about 2 ms (timer
resolution and Python overhead then do not matter), after one warm-up call;
on CuPy it is :func:`cupyx.profiler.benchmark` (kernel times, plus the
median wall time per call including launches and synchronisation).  Every
result carries ``ratios_to_copy``: times divided by one copy of the data,
the unit that makes runs on different (and shared, noisy) machines
comparable.  Speed claims come from these ratios, never from timed tests.

* :func:`bench_tv`: smoothed TV gradient, Hessian-vector product, fused
  FISTA step (``problem.fused_grad``) and FISTA iteration (accelerators on and
  off), peak memory; for anisotropic TV also a user's
  ``PotentialRegularizer(FiniteDifference(), SmoothedL1())``, the same
  mathematics, per lower-level iteration (it must find the same kernel);
* :func:`bench_foe`: the Field-of-Experts operations;
* :func:`bench_logistic`: multinomial logistic regression against a
  row-major reference gradient;
* :func:`fit_exponents`: the exponent of time against problem size;
* :func:`benchmark_meta`: versions, threads and device of a benchmark run.
"""
from __future__ import annotations

import contextlib
import gc
import math
import os
import platform
import time
import tracemalloc
import warnings

import numpy as np

from . import _accel
from . import problems as _problems
from . import regularizers as _regularizers
from .backend import xp_name
from .operators import FiniteDifference
from .potentials import SmoothedL1
from .regularizers._kernels import find_kernel
from .solvers import solve_lower

__all__ = ["bench_tv", "bench_foe", "bench_logistic", "fit_exponents", "benchmark_meta", "THETA_TV"]

THETA_TV = np.array([-5.0, -5.0])  # the MAID paper's starting point (log weight, log smoothing)


# ---------------------------------------------------------------------- timing
def _is_cupy(xp):
    return xp.__name__.startswith("cupy")


def _sync(xp):
    if _is_cupy(xp):
        xp.cuda.get_current_stream().synchronize()


def _time_cpu(fun, repeat, min_sample=2e-3):
    """Seconds per call of ``fun`` on the host: (best, median) over ``repeat`` samples.

    Each sample runs enough calls to last about ``min_sample`` seconds (the timer
    resolution and Python overhead then do not matter).
    """
    fun()
    t0 = time.perf_counter()
    fun()
    one = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, min(1000, int(min_sample / one)))
    samples = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        for _ in range(inner):
            fun()
        samples.append((time.perf_counter() - t0) / inner)
    return float(np.min(samples)), float(np.median(samples))


def _time_gpu(xp, fun, repeat):
    """(best GPU, median GPU, median wall) seconds per call, from ``cupyx.profiler.benchmark``."""
    from cupyx.profiler import benchmark

    res = benchmark(fun, (), n_repeat=max(1, repeat), n_warmup=3)
    gpu = np.asarray(res.gpu_times).reshape(-1)
    cpu = np.asarray(res.cpu_times).reshape(-1)
    return float(np.min(gpu)), float(np.median(gpu)), float(np.median(cpu))


def _time(xp, fun, repeat):
    """A dict ``{"best", "median", "wall"}`` of seconds per call (wall includes launches and syncs)."""
    if _is_cupy(xp):
        best, med, wall = _time_gpu(xp, fun, repeat)
        return {"best": best, "median": med, "wall": wall}
    best, med = _time_cpu(fun, repeat)
    return {"best": best, "median": med, "wall": med}


def _accelerated(flag):
    """Context manager: accelerated kernels on or off inside, the previous setting restored on exit."""
    stack = contextlib.ExitStack()
    stack.callback(_accel.set_accelerated, _accel.set_accelerated(flag))
    return stack


def _fista_iteration(problem, theta, n_iter):
    """Wall seconds per FISTA iteration of ``solve_lower`` run for ``n_iter`` iterations."""
    xp = problem.xp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        solve_lower(problem, theta, 1e-300, maxiter=2)  # warm-up (compilation, pools)
        _sync(xp)
        t0 = time.perf_counter()
        res = solve_lower(problem, theta, 1e-300, maxiter=n_iter)
        _sync(xp)
        dt = time.perf_counter() - t0
    return dt / res.nit, int(res.nit)


def _peak_stacks(problem, theta, n_iter, stack_bytes):
    """Peak memory of a ``solve_lower`` run, in image stacks (beyond the data already held)."""
    xp = problem.xp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        solve_lower(problem, theta, 1e-300, maxiter=2)  # compile outside the measurement
        gc.collect()
        if _is_cupy(xp):
            pool = xp.cuda.MemoryPool()
            try:
                with xp.cuda.using_allocator(pool.malloc):
                    solve_lower(problem, theta, 1e-300, maxiter=n_iter)
                    _sync(xp)
                # the private pool keeps every block it handed out: its size is the high water
                peak = pool.total_bytes()
            finally:
                pool.free_all_blocks()
        else:
            tracemalloc.start()
            try:
                tracemalloc.reset_peak()
                base = tracemalloc.get_traced_memory()[0]
                solve_lower(problem, theta, 1e-300, maxiter=n_iter)
                peak = tracemalloc.get_traced_memory()[1] - base
            finally:
                tracemalloc.stop()
    return peak / stack_bytes


# ---------------------------------------------------------------------- TV
def _user_vs_builtin(y, theta, n_iter, rounds=3):
    """Per-iteration FISTA times of a user's composition and of anisotropic TV, alternated.

    ``PotentialRegularizer(FiniteDifference(), SmoothedL1())`` and
    ``TotalVariation(isotropic=False)`` are the same regularizer; the solves run in
    turn ``rounds`` times and the best of each is kept, so that a drift of the
    machine's speed hits both alike.  Returns a dict of seconds and the ratio.
    """
    user = _problems.DenoisingProblem(y, _regularizers.PotentialRegularizer(FiniteDifference(), SmoothedL1()))
    builtin = _problems.DenoisingProblem(y, _regularizers.TotalVariation(isotropic=False))
    best = {"user": math.inf, "builtin": math.inf}
    for _ in range(max(1, rounds)):
        for name, problem in (("user", user), ("builtin", builtin)):
            best[name] = min(best[name], _fista_iteration(problem, theta, n_iter)[0])
    comp = user.regularizer.composite
    kernel = find_kernel(comp.operator, comp.potential, y)
    return {"fista_iter_user": best["user"], "fista_iter_builtin": best["builtin"],
            "ratio": best["user"] / best["builtin"], "kernel": None if kernel is None else kernel.name}


def bench_tv(xp, dtype, shape, isotropic, repeat, n_iter, n_iter_ref, rng):
    """All TV measurements for one backend, dtype, stack shape and TV form (seconds)."""
    dtype = np.dtype(dtype)
    y = xp.asarray(rng.rand(*shape).astype(dtype))
    x = xp.asarray(rng.rand(*shape).astype(dtype))
    x_prev = xp.asarray(rng.rand(*shape).astype(dtype))
    v = xp.asarray(rng.standard_normal(shape).astype(dtype))
    theta = xp.asarray(THETA_TV)
    reg = _regularizers.TotalVariation(isotropic=isotropic)
    problem = _problems.DenoisingProblem(y, reg)
    out = xp.empty_like(x)
    tau = 1.0 / problem.lipschitz(theta)
    times = {}
    user = None
    times["copy"] = _time(xp, lambda: x.copy(), repeat)
    with _accelerated(True):
        kernels = find_kernel(reg.composite.operator, reg.composite.potential, x)
        times["grad"] = _time(xp, lambda: problem.grad(x, theta), repeat)
        if kernels is not None:  # the kernel alone, without the library's per-call work
            lam, nu = reg.natural_params(THETA_TV)
            times["grad_kernel"] = _time(
                xp, lambda: kernels.fused_grad(x, y, 1.0, lam, nu, None, 0.0, None, out), repeat)
        times["hvp"] = _time(xp, lambda: problem.hvp(x, theta, v), repeat)
        times["fista_step"] = _time(
            xp, lambda: problem.fused_grad(x, theta, x_prev=x_prev, beta=0.7, step=tau, out=out), repeat)
        per_it, nit = _fista_iteration(problem, theta, n_iter)
        times["fista_iter"] = {"best": per_it, "median": per_it, "wall": per_it}
        peak = _peak_stacks(problem, theta, min(n_iter, 5), x.nbytes)
        if not isotropic:
            user = _user_vs_builtin(y, theta, n_iter)
    with _accelerated(False):
        times["grad_ref"] = _time(xp, lambda: problem.grad(x, theta), max(1, repeat // 4))
        per_it_ref, nit_ref = _fista_iteration(problem, theta, n_iter_ref)
        times["fista_iter_ref"] = {"best": per_it_ref, "median": per_it_ref, "wall": per_it_ref}
    copy = times["copy"]["best"]
    result = {
        "model": "tv_iso" if isotropic else "tv_aniso",
        "backend": xp_name(xp),
        "dtype": dtype.name,
        "shape": list(shape),
        "pixels": int(np.prod(shape)),
        "kernels": None if kernels is None else kernels.name,
        "fista_iterations": nit,
        "fista_iterations_ref": nit_ref,
        "times": times,
        "ratios_to_copy": {k: t["best"] / copy for k, t in times.items() if k != "copy"},
        "speedup_fista_iter": per_it_ref / per_it,
        "peak_memory_stacks": peak,
    }
    if user is not None:
        result["user_composition"] = user
    return result


def fit_exponents(results):
    """Exponent p of time ~ (pixels x images)^p between the smallest and largest TV stacks."""
    fits = []
    groups = {}
    for r in results:
        if r["model"].startswith("tv"):
            groups.setdefault((r["backend"], r["dtype"], r["model"]), []).append(r)
    for (backend, dtype, model), rs in sorted(groups.items()):
        if len(rs) < 2:
            continue
        rs = sorted(rs, key=lambda r: r["pixels"])
        a, b = rs[0], rs[-1]
        row = {"backend": backend, "dtype": dtype, "model": model,
               "pixels": [a["pixels"], b["pixels"]]}
        for op in ("copy", "grad", "hvp", "fista_step", "fista_iter"):
            ta, tb = a["times"][op]["best"], b["times"][op]["best"]
            row[op] = math.log(tb / ta) / math.log(b["pixels"] / a["pixels"])
        fits.append(row)
    return fits


# ---------------------------------------------------------------------- FoE
def bench_foe(xp, dtype, n_images=20, size=256, n_filters=48, filter_size=7, repeat=3):
    """Seconds per call of the Field-of-Experts operations on ``n_images`` random ``size x size`` images.

    Times the filter bank's ``apply``, ``adjoint`` and ``tap_vjp`` and the
    regularizer's ``value``, ``grad``, ``hvp`` and ``mixed_vjp`` at its
    initial θ, and one copy of the stack (the unit of ``ratios_to_copy``).
    """
    from .operators import FilterBank

    dtype = np.dtype(dtype)
    rng = np.random.RandomState(20261127)
    x = xp.asarray(rng.rand(n_images, size, size).astype(dtype))
    v = xp.asarray(rng.standard_normal((n_images, size, size)).astype(dtype))
    reg = _regularizers.FieldOfExperts(n_filters=n_filters, size=filter_size, rng=rng)
    theta = xp.asarray(reg.init_params())
    bank = FilterBank(xp.asarray(reg.filters))
    u = bank.apply(x)
    times = {"copy": _time(xp, lambda: x.copy(), max(repeat, 5)),
             "apply": _time(xp, lambda: bank.apply(x, out=u), repeat),
             "adjoint": _time(xp, lambda: bank.adjoint(u), repeat),
             "tap_vjp": _time(xp, lambda: bank.tap_vjp(x, u), repeat)}
    u = None  # free the (N, K, H, W) stack before the FoE timings
    times["value"] = _time(xp, lambda: reg.value(x, theta), repeat)
    times["grad"] = _time(xp, lambda: reg.grad(x, theta), repeat)
    times["hvp"] = _time(xp, lambda: reg.hvp(x, theta, v), repeat)
    times["mixed_vjp"] = _time(xp, lambda: reg.mixed_vjp(x, theta, v), repeat)
    copy = times["copy"]["best"]
    return {"model": "foe", "backend": xp_name(xp), "dtype": dtype.name,
            "settings": {"n_images": n_images, "size": size, "n_filters": n_filters, "filter_size": filter_size},
            "times": times, "ratios_to_copy": {k: t["best"] / copy for k, t in times.items() if k != "copy"}}


def _reference_logistic_grad(xp, a, labels, w, lam):
    """Row-major reference: ``A^T (softmax(A W) - Y) / n + lam * W`` (the layout before the class-major one)."""
    z = a @ w
    z -= z.max(axis=1, keepdims=True)
    e = xp.exp(z)
    s = e / e.sum(axis=1, keepdims=True)
    s[xp.arange(a.shape[0]), labels] -= 1.0
    return (a.T @ s) / a.shape[0] + lam * w


def bench_logistic(xp, dtype, shape, repeat, rng):
    """Times of the logistic-regression problem at ``shape = (n, d, c)``, and its ratio to the reference."""
    n, d, c = shape
    a = xp.asarray(rng.rand(n, d)).astype(dtype)
    labels = xp.asarray(rng.randint(0, c, size=n))
    problem = _problems.MultinomialLogisticProblem(a, labels, c)
    theta = xp.asarray(np.full(problem.n_params, -3.0))
    w = xp.asarray(0.1 * rng.randn(d, c)).astype(dtype)
    v = xp.asarray(rng.randn(d, c)).astype(dtype)
    lam = xp.exp(theta).astype(dtype).reshape(d, c)
    g_ref = _reference_logistic_grad(xp, a, labels, w, lam)
    err = float(xp.abs(problem.grad(w, theta) - g_ref).max() / max(float(xp.abs(g_ref).max()), 1e-300))
    times = {
        "copy": _time(xp, lambda: a.copy(), repeat),
        "grad": _time(xp, lambda: problem.grad(w, theta), repeat),
        "value": _time(xp, lambda: problem.value(w, theta), repeat),
        "hvp": _time(xp, lambda: problem.hvp(w, theta, v), repeat),
        "grad_ref": _time(xp, lambda: _reference_logistic_grad(xp, a, labels, w, lam), repeat),
    }
    return {
        "model": "logistic", "backend": xp_name(xp), "dtype": np.dtype(dtype).name,
        "settings": {"n": n, "d": d, "c": c}, "times": times, "grad_rel_diff_to_ref": err,
        "ratios_to_copy": {k: t["best"] / times["copy"]["best"] for k, t in times.items() if k != "copy"},
        "speedup_over_ref": times["grad_ref"]["best"] / times["grad"]["best"],
    }


def benchmark_meta(backends):
    """Versions, CPU count, accelerator and thread settings (and the GPU) of a benchmark run."""
    meta = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "accelerated": _accel.accelerated(),
            "openblas_threads_env": os.environ.get("OPENBLAS_NUM_THREADS"), "threads": _accel.thread_info()}
    try:
        import numba

        meta["numba"] = numba.__version__
    except ImportError:
        meta["numba"] = None
    if "cupy" in backends:
        import cupy

        meta["cupy"] = cupy.__version__
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props.get("name", b"")
        meta["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
    return meta
