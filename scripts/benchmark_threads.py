"""Wall time of two workloads for several thread settings, on an idle and on a loaded machine.

Workloads (NumPy backend, float64, the package defaults otherwise):

- ``snippet``: the README's Python API example (learned TV on two built-in 96x96
  images: ``solve_lower``, ``hypergradient``, then MAID with ``max_iter=30``);
- ``foe``: MAID on a Field of Experts (8 filters 5x5) over 4 noisy 64x64 crops
  of the built-in images, ``max_iter`` outer iterations.

Settings are ``auto`` (the default policy), ``N`` (``varlearn.set_threads(N)``:
N kernel threads and N BLAS threads) or ``N:B`` (N kernel threads, then BLAS
re-capped to B with threadpoolctl, to compare policies).  ``--busy`` runs each
setting once more while a separate process keeps one core busy (a Python busy
loop, killed at the end).  Every workload runs once first to compile the numba
kernels, so the times are warm.  Prints one table (seconds, and the ratio to the
best setting of the same row) and writes it as JSON with ``--json``.

Example (about 3-6 minutes on 2 cores)::

    nice -n 10 python scripts/benchmark_threads.py --busy --settings 1 2 auto 2:1
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

import varlearn as vl
from varlearn.datasets import add_noise, builtin_images


def snippet(max_iter):
    """The README API example (without the checkpoint files)."""
    clean = builtin_images(["camera", "coins"], size=96)
    noisy = add_noise(clean, 0.1, rng=0)
    problem = vl.DenoisingProblem(noisy, vl.TotalVariation(isotropic=False))
    upper = vl.SquaredError(clean)
    vl.solve_lower(problem, np.array([-3.0, -4.0]), tol=1e-4)
    vl.hypergradient(problem, upper, np.array([-3.0, -4.0]), lower_tol=1e-3, cg_tol=1e-3)
    res = vl.minimize_bilevel(problem, upper, np.array([-5.0, -5.0]), method="maid",
                              options={"max_iter": max_iter})
    return float(res.fun)


def foe(max_iter):
    """MAID on a small Field of Experts."""
    clean = builtin_images(["camera", "coins", "astronaut", "moon"], size=64)
    noisy = add_noise(clean, 0.1, rng=0)
    reg = vl.FieldOfExperts(n_filters=8, size=5, rng=0)
    problem = vl.DenoisingProblem(noisy, reg)
    upper = vl.SquaredError(clean)
    res = vl.minimize_bilevel(problem, upper, reg.init_params(rng=0), method="maid",
                              options={"max_iter": max_iter})
    return float(res.fun)


WORKLOADS = {"snippet": (snippet, 30, 2), "foe": (foe, 10, 1)}


def apply_setting(spec):
    """Apply ``auto``, ``N`` or ``N:B``; returns a label."""
    from threadpoolctl import threadpool_limits

    kernels, _, blas = spec.partition(":")
    vl.set_threads(kernels if kernels == "auto" else int(kernels))
    if blas:
        threadpool_limits(limits=int(blas), user_api="blas")
    return spec


def measure(name, spec):
    fun, max_iter, _ = WORKLOADS[name]
    apply_setting(spec)
    info = vl.thread_info()
    t0 = time.perf_counter()
    fun_value = fun(max_iter)
    seconds = time.perf_counter() - t0
    info = vl.thread_info() if spec == "auto" else info
    return {"workload": name, "setting": spec, "seconds": round(seconds, 2), "f": fun_value,
            "threads": info["threads"], "others_load": info["others_load"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", nargs="+", default=["1", "2", "auto"], help="auto, N or N:B")
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument("--busy", action="store_true", help="also run with one core kept busy by another process")
    p.add_argument("--json", default=None, help="write the rows to this file")
    args = p.parse_args(argv)

    for name in args.workloads:  # compile the kernels (and fill the caches) first
        fun, _, warm_iter = WORKLOADS[name]
        fun(warm_iter)

    rows = []
    states = ["idle", "busy"] if args.busy else ["idle"]
    for state in states:
        hog = None
        if state == "busy":
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(3.0)  # let the load estimate see it
        try:
            for name in args.workloads:
                for spec in args.settings:
                    row = measure(name, spec)
                    row["machine"] = state
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
        vl.set_threads("auto")

    print(f"\n{'machine':8s} {'workload':8s} " + " ".join(f"{s:>14s}" for s in args.settings))
    for state in states:
        for name in args.workloads:
            cells = [r for r in rows if r["machine"] == state and r["workload"] == name]
            best = min(r["seconds"] for r in cells)
            line = " ".join(f"{r['seconds']:7.1f}s {r['seconds'] / best:4.2f}x" for r in cells)
            print(f"{state:8s} {name:8s} {line}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
