"""Benchmark of the lower-level building blocks: TV (fused kernels) and Field of Experts.

For smoothed TV (isotropic and anisotropic) on 24x96^2 and 24x512^2 stacks, in
float32 and float64, on NumPy (numba kernels when installed) and CuPy (fused
CUDA kernels), it measures the time of

* one copy of the image stack (``x.copy()``), the unit of every ratio printed,
* one gradient and one Hessian-vector product of the denoising objective,
* one fused FISTA step (``DenoisingProblem.fista_step``),
* one FISTA iteration inside ``solve_lower`` (a tolerance that cannot be met,
  a fixed number of iterations, wall time divided by the iterations), with the
  accelerators enabled and disabled (the reference array code),
* the peak memory of a lower-level solve in units of one image stack
  (tracemalloc on NumPy, a private CuPy memory pool on the GPU),

fits the exponent of time against pixels x images from the two sizes,
times the Field-of-Experts operations (48 filters of 7x7 on 20x256^2, from
``scripts/_bench_foe.py``), and times multinomial logistic regression at the
MNIST experiment's shape (60000 x 144 features, 10 classes): gradient, value
and Hessian-vector product of ``MultinomialLogisticProblem`` against a plain
row-major reference gradient written here (``A @ W``, row softmax, ``A.T @ S``).  Timings on shared machines are noisy: compare the
ratios of one run, not absolute times of different runs.

Usage::

    python scripts/benchmark_lower.py [--backend numpy|cupy|all] [--dtype float32|float64|all]
                                      [--repeat N] [--quick] [--json PATH]
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import sys
import time
import tracemalloc
import warnings

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
_ROOT = os.path.dirname(_HERE)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import varlearn as vl  # noqa: E402
from varlearn import _accel  # noqa: E402
from varlearn.backend import cupy_unusable_reason, cupy_usable  # noqa: E402

TV_SIZES = [(24, 96, 96), (24, 512, 512)]
TV_SIZES_QUICK = [(3, 32, 32), (3, 64, 64)]
FOE_SETTINGS = {"n_images": 20, "size": 256, "n_filters": 48, "filter_size": 7}
FOE_SETTINGS_QUICK = {"n_images": 2, "size": 32, "n_filters": 4, "filter_size": 3}
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


@contextlib.contextmanager
def _accelerated(flag):
    old = _accel.set_accelerated(flag)
    try:
        yield
    finally:
        _accel.set_accelerated(old)


def _fista_iteration(problem, theta, n_iter):
    """Wall seconds per FISTA iteration of ``solve_lower`` run for ``n_iter`` iterations."""
    xp = problem.xp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vl.solve_lower(problem, theta, 1e-300, maxiter=2)  # warm-up (compilation, pools)
        _sync(xp)
        t0 = time.perf_counter()
        res = vl.solve_lower(problem, theta, 1e-300, maxiter=n_iter)
        _sync(xp)
        dt = time.perf_counter() - t0
    return dt / res.nit, int(res.nit)


def _peak_stacks(problem, theta, n_iter, stack_bytes):
    """Peak memory of a ``solve_lower`` run, in image stacks (beyond the data already held)."""
    xp = problem.xp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vl.solve_lower(problem, theta, 1e-300, maxiter=2)  # compile outside the measurement
        gc.collect()
        if _is_cupy(xp):
            pool = xp.cuda.MemoryPool()
            try:
                with xp.cuda.using_allocator(pool.malloc):
                    vl.solve_lower(problem, theta, 1e-300, maxiter=n_iter)
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
                vl.solve_lower(problem, theta, 1e-300, maxiter=n_iter)
                peak = tracemalloc.get_traced_memory()[1] - base
            finally:
                tracemalloc.stop()
    return peak / stack_bytes


# ---------------------------------------------------------------------- TV
def bench_tv(xp, dtype, shape, isotropic, repeat, n_iter, n_iter_ref, rng):
    """All TV measurements for one backend, dtype, stack shape and TV form (seconds)."""
    dtype = np.dtype(dtype)
    y = xp.asarray(rng.rand(*shape).astype(dtype))
    x = xp.asarray(rng.rand(*shape).astype(dtype))
    x_prev = xp.asarray(rng.rand(*shape).astype(dtype))
    v = xp.asarray(rng.standard_normal(shape).astype(dtype))
    theta = xp.asarray(THETA_TV)
    problem = vl.DenoisingProblem(y, vl.TotalVariation(isotropic=isotropic))
    out = xp.empty_like(x)
    tau = 1.0 / problem.lipschitz(theta)
    times = {}
    times["copy"] = _time(xp, lambda: x.copy(), repeat)
    with _accelerated(True):
        kernels = problem.regularizer._kernels(x)
        times["grad"] = _time(xp, lambda: problem.grad(x, theta), repeat)
        if kernels is not None:  # the kernel alone, without the library's per-call work
            lam, nu = problem.regularizer._scalars(THETA_TV)
            times["grad_kernel"] = _time(
                xp, lambda: kernels.grad(x, y, 1.0, lam, nu * nu, isotropic, out), repeat)
        times["hvp"] = _time(xp, lambda: problem.hvp(x, theta, v), repeat)
        times["fista_step"] = _time(xp, lambda: problem.fista_step(x, x_prev, 0.7, tau, theta, out), repeat)
        per_it, nit = _fista_iteration(problem, theta, n_iter)
        times["fista_iter"] = {"best": per_it, "median": per_it, "wall": per_it}
        peak = _peak_stacks(problem, theta, min(n_iter, 5), x.nbytes)
    with _accelerated(False):
        times["grad_ref"] = _time(xp, lambda: problem.grad(x, theta), max(1, repeat // 4))
        per_it_ref, nit_ref = _fista_iteration(problem, theta, n_iter_ref)
        times["fista_iter_ref"] = {"best": per_it_ref, "median": per_it_ref, "wall": per_it_ref}
    copy = times["copy"]["best"]
    return {
        "model": "tv_iso" if isotropic else "tv_aniso",
        "backend": "cupy" if _is_cupy(xp) else "numpy",
        "dtype": dtype.name,
        "shape": list(shape),
        "pixels": int(np.prod(shape)),
        "kernels": None if kernels is None else kernels.__name__,
        "fista_iterations": nit,
        "fista_iterations_ref": nit_ref,
        "times": times,
        "ratios_to_copy": {k: t["best"] / copy for k, t in times.items() if k != "copy"},
        "speedup_fista_iter": per_it_ref / per_it,
        "peak_memory_stacks": peak,
    }


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
def bench_foe_all(xp, dtype, settings, repeat):
    try:
        from _bench_foe import bench_foe
    except ImportError as exc:
        print(f"  FoE skipped: scripts/_bench_foe.py is not available ({exc})")
        return None
    try:
        r = bench_foe(xp, dtype, repeat=repeat, **settings)
    except Exception as exc:  # report and go on: the TV numbers are still worth having
        print(f"  FoE failed on {xp.__name__} {np.dtype(dtype).name}: {type(exc).__name__}: {exc}")
        return None
    copy = r["copy"]
    ops = [k for k, t in r.items() if isinstance(t, float) and k != "copy"]
    return {
        "model": "foe",
        "backend": r.get("backend", "cupy" if _is_cupy(xp) else "numpy"),
        "dtype": np.dtype(dtype).name,
        "settings": {k: r.get(k, settings.get(k)) for k in ("n_images", "size", "n_filters", "filter_size")},
        "times": {k: {"best": r[k]} for k in ["copy"] + ops},
        "ratios_to_copy": {k: r[k] / copy for k in ops},
    }


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
    problem = vl.MultinomialLogisticProblem(a, labels, c)
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
        "model": "logistic", "backend": "cupy" if _is_cupy(xp) else "numpy", "dtype": np.dtype(dtype).name,
        "settings": {"n": n, "d": d, "c": c}, "times": times, "grad_rel_diff_to_ref": err,
        "ratios_to_copy": {k: t["best"] / times["copy"]["best"] for k, t in times.items() if k != "copy"},
        "speedup_over_ref": times["grad_ref"]["best"] / times["grad"]["best"],
    }


# ---------------------------------------------------------------------- report
def _ms(t):
    return f"{t * 1e3:9.3f}" if t < 1 else f"{t * 1e3:9.0f}"


def print_tv_table(results):
    head = (f"{'backend':7s} {'dtype':7s} {'model':8s} {'stack':>12s} | {'copy ms':>9s} | "
            f"{'grad ms':>9s} {'x':>5s} | {'kernel':>9s} {'x':>5s} | {'hvp ms':>9s} {'x':>5s} | "
            f"{'step ms':>9s} {'x':>5s} | "
            f"{'iter ms':>9s} {'x':>5s} | {'ref iter':>9s} {'speedup':>7s} | {'peak':>5s}")
    print(head)
    print("-" * len(head))
    for r in results:
        t = r["times"]
        q = r["ratios_to_copy"]
        n, h, w = r["shape"]
        kern = f"{_ms(t['grad_kernel']['best'])} {q['grad_kernel']:5.1f}" if "grad_kernel" in t else f"{'-':>9s} {'':5s}"
        print(f"{r['backend']:7s} {r['dtype']:7s} {r['model']:8s} {f'{n}x{h}x{w}':>12s} | "
              f"{_ms(t['copy']['best'])} | "
              f"{_ms(t['grad']['best'])} {q['grad']:5.1f} | {kern} | {_ms(t['hvp']['best'])} {q['hvp']:5.1f} | "
              f"{_ms(t['fista_step']['best'])} {q['fista_step']:5.1f} | "
              f"{_ms(t['fista_iter']['best'])} {q['fista_iter']:5.1f} | "
              f"{_ms(t['fista_iter_ref']['best'])} {r['speedup_fista_iter']:6.1f}x | "
              f"{r['peak_memory_stacks']:5.1f}")
    print("  x: time / one copy of the stack; grad: DenoisingProblem.grad; kernel: the fused gradient")
    print("  kernel alone; step: DenoisingProblem.fista_step; iter: one FISTA")
    print("  iteration of solve_lower (wall); ref iter: the same with the accelerators disabled;")
    print("  peak: peak memory of a solve in image stacks; GPU times are kernel times (cupyx benchmark),")
    print("  GPU wall times per call (launch + sync) are in the JSON ('wall').")


def print_exponents(fits):
    if not fits:
        return
    print("\nExponent p of time ~ (pixels x images)^p between the two TV stacks:")
    for f in fits:
        cells = "  ".join(f"{op} {f[op]:.2f}" for op in ("copy", "grad", "hvp", "fista_step", "fista_iter"))
        print(f"  {f['backend']:6s} {f['dtype']:7s} {f['model']:8s}  {cells}")


def print_foe(results):
    rows = [r for r in results if r["model"] == "foe"]
    if not rows:
        return
    print("\nField of Experts (ms per call, x = time / one copy of the stack):")
    for r in rows:
        s = r["settings"]
        cells = "  ".join(f"{k} {t['best'] * 1e3:.2f} ({r['ratios_to_copy'][k]:.0f}x)"
                          for k, t in r["times"].items() if k != "copy")
        print(f"  {r['backend']:6s} {r['dtype']:7s} {s['n_images']}x{s['size']}^2 "
              f"{s['n_filters']}x{s['filter_size']}^2: copy {r['times']['copy']['best'] * 1e3:.3f}  {cells}")


def print_logistic(results):
    rows = [r for r in results if r["model"] == "logistic"]
    if not rows:
        return
    print("\nMultinomial logistic regression (ms per call, best of the samples; ref = row-major reference gradient):")
    for r in rows:
        s, t = r["settings"], r["times"]
        print(f"  {r['backend']:6s} {r['dtype']:7s} {s['n']}x{s['d']}, {s['c']} classes: "
              + "  ".join(f"{k} {t[k]['best'] * 1e3:.2f}" for k in ("copy", "grad", "value", "hvp", "grad_ref"))
              + f"  -> gradient {r['speedup_over_ref']:.2f}x faster than the reference "
              f"(max rel. difference {r['grad_rel_diff_to_ref']:.1e})")


def _meta(backends):
    meta = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "accelerated": _accel.accelerated()}
    try:
        import numba

        meta["numba"] = numba.__version__
        meta["numba_threads"] = numba.get_num_threads()
    except ImportError:
        meta["numba"] = None
    if "cupy" in backends:
        import cupy

        meta["cupy"] = cupy.__version__
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props.get("name", b"")
        meta["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
    return meta


def _write_json(path, payload):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(payload, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["numpy", "cupy", "all"], default="all",
                        help="array backend(s) to time (cupy is skipped when not usable)")
    parser.add_argument("--dtype", choices=["float32", "float64", "all"], default="all")
    parser.add_argument("--repeat", type=int, default=None,
                        help="timing samples per measurement (default 7 on NumPy, 50 on CuPy)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test, seconds)")
    parser.add_argument("--json", metavar="PATH", help="write all results to this JSON file")
    parser.add_argument("--fista-iters", type=int, default=None,
                        help="FISTA iterations timed on the small TV stack (default 200; a tenth on the large one)")
    parser.add_argument("--foe-backend", choices=["numpy", "cupy", "all", "none"], default=None,
                        help="backend(s) for the Field-of-Experts timings (default: --backend)")
    parser.add_argument("--foe-images", type=int, default=None, help="images in the FoE stack (default 20)")
    parser.add_argument("--logistic-rows", type=int, default=None,
                        help="rows of the logistic-regression features (default 60000, MNIST; quick 2000; "
                             "0 skips it)")
    args = parser.parse_args(argv)

    # the GPU first: on a lent machine its numbers matter most (the JSON is written as we go)
    backends = ["cupy", "numpy"] if args.backend == "all" else [args.backend]
    if "cupy" in backends and not cupy_usable():
        print(f"CuPy skipped: {cupy_unusable_reason()}")
        backends.remove("cupy")
    dtypes = ["float64", "float32"] if args.dtype == "all" else [args.dtype]
    sizes = TV_SIZES_QUICK if args.quick else TV_SIZES
    foe_settings = dict(FOE_SETTINGS_QUICK if args.quick else FOE_SETTINGS)
    if args.foe_images is not None:
        foe_settings["n_images"] = args.foe_images
    foe_backends = backends if args.foe_backend in (None, "all") else (
        [] if args.foe_backend == "none" else [b for b in backends if b == args.foe_backend])
    n_iter_small = args.fista_iters or (10 if args.quick else 200)

    meta = _meta(backends)
    print("varlearn lower-level benchmark: " + ", ".join(f"{k}={v}" for k, v in meta.items()))
    if meta.get("numba") is None:
        print("numba is not installed: the NumPy timings are those of the reference array code")

    rng = np.random.RandomState(20261127)
    results = []

    def save():
        if args.json:
            tv = [r for r in results if r["model"].startswith("tv")]
            _write_json(args.json, {"meta": meta, "results": results, "exponents": fit_exponents(tv),
                                    "settings": {"tv_sizes": sizes, "foe": foe_settings,
                                                 "theta_tv": THETA_TV.tolist(), "quick": args.quick}})

    for backend in backends:
        if backend == "cupy":
            import cupy as xp
        else:
            xp = np
        repeat = args.repeat or (50 if backend == "cupy" else 7)
        for dtype in dtypes:
            for i_size, shape in enumerate(sizes):
                large = i_size > 0
                n_iter = max(3, n_iter_small // 10) if large else n_iter_small
                n_iter_ref = 3 if large else max(3, n_iter // 4)
                for iso in (True, False):
                    r = bench_tv(xp, dtype, shape, iso, repeat, n_iter, n_iter_ref, rng)
                    results.append(r)
                    save()
                    print(f"  done: {backend} {dtype} {r['model']} {'x'.join(map(str, shape))}: "
                          f"FISTA iteration {r['times']['fista_iter']['best'] * 1e3:.3f} ms "
                          f"({r['ratios_to_copy']['fista_iter']:.1f} copies), reference "
                          f"{r['times']['fista_iter_ref']['best'] * 1e3:.3f} ms", flush=True)
            if backend in foe_backends:
                r = bench_foe_all(xp, dtype, foe_settings, max(1, min(repeat, 3)))
                if r is not None:
                    results.append(r)
                    save()
            n_rows = args.logistic_rows if args.logistic_rows is not None else (2000 if args.quick else 60000)
            if n_rows > 0:
                r = bench_logistic(xp, dtype, (n_rows, 144, 10), repeat, rng)
                results.append(r)
                save()
        if backend == "cupy":
            xp.get_default_memory_pool().free_all_blocks()

    tv_results = [r for r in results if r["model"].startswith("tv")]
    print()
    print_tv_table(tv_results)
    fits = fit_exponents(tv_results)
    print_exponents(fits)
    print_foe(results)
    print_logistic(results)
    with contextlib.suppress(Exception):
        import numba

        meta["numba_threading_layer"] = numba.threading_layer()
    if args.json:
        save()
        print(f"\nresults written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
