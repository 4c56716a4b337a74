"""Benchmark of the lower-level building blocks: TV (fused kernels) and Field of Experts.

For smoothed TV (isotropic and anisotropic) on 24x96^2 and 24x512^2 stacks, in
float32 and float64, on NumPy (numba kernels when installed) and CuPy (fused
CUDA kernels), it measures the time of

* one copy of the image stack (``x.copy()``), the unit of every ratio printed,
* one gradient and one Hessian-vector product of the denoising objective,
* one fused FISTA step (``DenoisingProblem.fused_grad`` with ``x_prev``, ``beta`` and ``step``),
* one FISTA iteration inside ``solve_lower`` (a tolerance that cannot be met,
  a fixed number of iterations, wall time divided by the iterations), with the
  accelerators enabled and disabled (the reference array code),
* the peak memory of a lower-level solve in units of one image stack
  (tracemalloc on NumPy, a private CuPy memory pool on the GPU),
* for anisotropic TV, a user's ``PotentialRegularizer(FiniteDifference(), SmoothedL1())``
  against ``TotalVariation(isotropic=False)`` per lower-level iteration (the same
  mathematics; the registered kernel must make them equally fast, target within 1.3x),

fits the exponent of time against pixels x images from the two sizes,
times the Field-of-Experts operations (48 filters of 7x7 on 20x256^2), and times multinomial logistic regression at the
MNIST experiment's shape (60000 x 144 features, 10 classes): gradient, value
and Hessian-vector product of ``MultinomialLogisticProblem`` against a plain
row-major reference gradient (``A @ W``, row softmax, ``A.T @ S``).  The
measurements live in :mod:`varlearn.benchmarks`.  Timings on shared machines
are noisy: compare the ratios of one run, not absolute times of different runs.

Usage::

    python scripts/benchmark_lower.py [--backend numpy|cupy|all] [--dtype float32|float64|all]
                                      [--repeat N] [--quick] [--json PATH]
"""
from __future__ import annotations

import argparse
import contextlib

import numpy as np

from varlearn._io import dump_json
from varlearn.backend import cupy_unusable_reason, cupy_usable
from varlearn.benchmarks import THETA_TV, bench_foe, bench_logistic, bench_tv, benchmark_meta, fit_exponents

TV_SIZES = [(24, 96, 96), (24, 512, 512)]
TV_SIZES_QUICK = [(3, 32, 32), (3, 64, 64)]
FOE_SETTINGS = {"n_images": 20, "size": 256, "n_filters": 48, "filter_size": 7}
FOE_SETTINGS_QUICK = {"n_images": 2, "size": 32, "n_filters": 4, "filter_size": 3}


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
        kern = (f"{_ms(t['grad_kernel']['best'])} {q['grad_kernel']:5.1f}" if "grad_kernel" in t
                else f"{'-':>9s} {'':5s}")
        print(f"{r['backend']:7s} {r['dtype']:7s} {r['model']:8s} {f'{n}x{h}x{w}':>12s} | "
              f"{_ms(t['copy']['best'])} | "
              f"{_ms(t['grad']['best'])} {q['grad']:5.1f} | {kern} | {_ms(t['hvp']['best'])} {q['hvp']:5.1f} | "
              f"{_ms(t['fista_step']['best'])} {q['fista_step']:5.1f} | "
              f"{_ms(t['fista_iter']['best'])} {q['fista_iter']:5.1f} | "
              f"{_ms(t['fista_iter_ref']['best'])} {r['speedup_fista_iter']:6.1f}x | "
              f"{r['peak_memory_stacks']:5.1f}")
    print("  x: time / one copy of the stack; grad: DenoisingProblem.grad; kernel: the fused gradient")
    print("  kernel alone; step: one fused FISTA step (DenoisingProblem.fused_grad); iter: one FISTA")
    print("  iteration of solve_lower (wall); ref iter: the same with the accelerators disabled;")
    print("  peak: peak memory of a solve in image stacks; GPU times are kernel times (cupyx benchmark),")
    print("  GPU wall times per call (launch + sync) are in the JSON ('wall').")


def print_user_composition(results):
    rows = [r for r in results if "user_composition" in r]
    if not rows:
        return
    print("\nUser composition PotentialRegularizer(FiniteDifference(), SmoothedL1()) vs "
          "TotalVariation(isotropic=False), ms per lower-level iteration (best of 3 alternated solves):")
    for r in rows:
        u = r["user_composition"]
        n, h, w = r["shape"]
        verdict = "within" if u["ratio"] <= 1.3 else "NOT within"
        print(f"  {r['backend']:6s} {r['dtype']:7s} {f'{n}x{h}x{w}':>12s}: user {u['fista_iter_user'] * 1e3:.3f}  "
              f"built-in {u['fista_iter_builtin'] * 1e3:.3f}  ratio {u['ratio']:.2f} ({verdict} 1.3x; "
              f"kernel: {u['kernel']})")


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

    meta = benchmark_meta(backends)
    print("varlearn lower-level benchmark: " + ", ".join(f"{k}={v}" for k, v in meta.items()))
    if meta.get("numba") is None:
        print("numba is not installed: the NumPy timings are those of the reference array code")

    rng = np.random.RandomState(20261127)
    results = []

    def save():
        if args.json:
            tv = [r for r in results if r["model"].startswith("tv")]
            dump_json(args.json, {"meta": meta, "results": results, "exponents": fit_exponents(tv),
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
                try:
                    results.append(bench_foe(xp, dtype, repeat=max(1, min(repeat, 3)), **foe_settings))
                    save()
                except Exception as exc:  # report and go on: the TV numbers are still worth having
                    print(f"  FoE failed on {backend} {dtype}: {type(exc).__name__}: {exc}")
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
    print_user_composition(tv_results)
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
