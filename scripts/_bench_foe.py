"""Timing of the Field-of-Experts building blocks (called by ``scripts/benchmark_lower.py``).

``bench_foe(xp, dtype)`` returns seconds per call (best of ``repeat`` after one
warm-up call) of the filter-bank ``apply``, ``adjoint`` and ``tap_vjp`` and of
the Field-of-Experts ``value``, ``grad``, ``hvp`` and ``mixed_vjp`` on a random
stack, plus the time of one copy of the image stack, so that callers can print
ratios (timings on the shared 2-core machines are noisy; compare ratios from one
run).  Run directly for a quick table: ``python scripts/_bench_foe.py [--quick] [--numpy | --cupy]``.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np


def _sync(xp):
    if xp.__name__.startswith("cupy"):
        xp.cuda.get_current_stream().synchronize()


def _best(xp, fun, repeat):
    fun()
    _sync(xp)
    best = float("inf")
    for _ in range(max(1, int(repeat))):
        t0 = time.perf_counter()
        fun()
        _sync(xp)
        best = min(best, time.perf_counter() - t0)
    return best


def bench_foe(xp, dtype, n_images=20, size=256, n_filters=48, filter_size=7, repeat=3):
    """Seconds per call of the FoE operations on ``n_images`` random ``size x size`` images.

    Parameters
    ----------
    xp : module
        ``numpy`` or ``cupy``.
    dtype : dtype
        ``float32`` or ``float64``.

    Returns
    -------
    dict
        ``apply``, ``adjoint``, ``tap_vjp`` (the :class:`~varlearn.operators.FilterBank`),
        ``value``, ``grad``, ``hvp``, ``mixed_vjp`` (:class:`~varlearn.FieldOfExperts`
        at its initial θ), ``copy`` (one copy of the image stack), and the
        settings (``backend``, ``dtype``, ``n_images``, ``size``, ``n_filters``,
        ``filter_size``, ``openblas_threads``: the environment variable, GEMM
        timings on a loaded 2-core machine depend on it).
    """
    import varlearn as vl
    from varlearn.backend import xp_name
    from varlearn.operators import FilterBank

    dtype = np.dtype(dtype)
    rng = np.random.RandomState(20261127)
    x = xp.asarray(rng.rand(n_images, size, size).astype(dtype))
    v = xp.asarray(rng.standard_normal((n_images, size, size)).astype(dtype))
    reg = vl.FieldOfExperts(n_filters=n_filters, size=filter_size, rng=rng)
    theta = xp.asarray(reg.init_params())
    bank = FilterBank(xp.asarray(reg.filters))
    u = bank.apply(x)
    out = {
        "backend": xp_name(xp),
        "dtype": dtype.name,
        "n_images": n_images,
        "size": size,
        "n_filters": n_filters,
        "filter_size": filter_size,
        "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "copy": _best(xp, lambda: x.copy(), max(repeat, 5)),
        "apply": _best(xp, lambda: bank.apply(x, out=u), repeat),
        "adjoint": _best(xp, lambda: bank.adjoint(u), repeat),
        "tap_vjp": _best(xp, lambda: bank.tap_vjp(x, u), repeat),
    }
    u = None  # free the (N, K, H, W) stack before the FoE timings
    out["value"] = _best(xp, lambda: reg.value(x, theta), repeat)
    out["grad"] = _best(xp, lambda: reg.grad(x, theta), repeat)
    out["hvp"] = _best(xp, lambda: reg.hvp(x, theta, v), repeat)
    out["mixed_vjp"] = _best(xp, lambda: reg.mixed_vjp(x, theta, v), repeat)
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    quick = "--quick" in argv
    kw = {"n_images": 2, "size": 64, "repeat": 1} if quick else {}
    backends = [] if "--cupy" in argv else [np]
    from varlearn.backend import cupy_usable

    if cupy_usable() and "--numpy" not in argv:
        import cupy

        backends.append(cupy)
    keys = ["copy", "apply", "adjoint", "tap_vjp", "value", "grad", "hvp", "mixed_vjp"]
    for xp in backends:
        for dt in (np.float64, np.float32):
            r = bench_foe(xp, dt, **kw)
            cells = "  ".join(f"{k} {r[k] * 1e3:8.2f} ms" for k in keys)
            print(f"{r['backend']:5s} {r['dtype']:7s} {r['n_images']}x{r['size']}^2  {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
