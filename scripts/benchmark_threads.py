"""Wall time of two workloads for several thread settings, on an idle and on a loaded machine.

Workloads (NumPy backend, float64, the package defaults otherwise):

- ``snippet``: the README's Python API example (learned TV on two built-in 96x96
  images: ``solve_lower``, ``hypergradient``, then MAID with ``maxiter=30``);
- ``foe``: MAID on a Field of Experts (8 filters 5x5) over 4 noisy 64x64 crops
  of the built-in images, ``max_iter`` outer iterations.

Settings are ``auto`` (the default policy), ``N`` (``varlearn.set_threads(N)``:
N kernel threads and N BLAS threads) or ``N:B`` (N kernel threads, then BLAS
re-capped to B with threadpoolctl, to compare policies).  ``--busy`` runs each
setting once more while a separate process keeps one core busy (a Python busy
loop, killed at the end).  Every run starts with a short warm-up run of its
workload (kernels loaded from numba's cache), so the times are warm.  Prints one
table (seconds, and the ratio to the best setting of the same row) and writes
the runs as JSON with ``--json``.

Each run is a fresh process (stopped after ``--timeout`` seconds and reported
as ``>timeout``); settings are interleaved and the best of ``--repeat`` runs is
reported, because timings on a shared machine are noisy.  Example (a few
minutes on 2 cores)::

    nice -n 10 python scripts/benchmark_threads.py --busy --settings 1 2 auto 2:1
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time

import numpy as np

import varlearn as vl
from varlearn._io import dump_json
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
                              options={"maxiter": max_iter})
    return float(res.fun)


def foe(max_iter):
    """MAID on a small Field of Experts."""
    clean = builtin_images(["camera", "coins", "astronaut", "moon"], size=64)
    noisy = add_noise(clean, 0.1, rng=0)
    reg = vl.FieldOfExperts(n_filters=8, size=5, rng=0)
    problem = vl.DenoisingProblem(noisy, reg)
    upper = vl.SquaredError(clean)
    res = vl.minimize_bilevel(problem, upper, reg.init_params(rng=0), method="maid",
                              options={"maxiter": max_iter})
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


def run_one(name, spec, timeout):
    """One measurement in a fresh process (kernels loaded from numba's cache, one warm-up run first).

    ``timeout`` applies to the measured run only, not to the start and the warm-up.
    """
    cmd = [sys.executable, __file__, "--one", name, spec]
    for attempt in (1, 2):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready = proc.stdout.readline()  # printed after the warm-up
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return {"workload": name, "setting": spec, "seconds": float(timeout), "timed_out": True}
        if proc.returncode == 0 and ready.strip() == "ready":
            row = json.loads(out.strip().splitlines()[-1])
            row["timed_out"] = False
            return row
        tail = "\n".join(err.strip().splitlines()[-5:])
        print(f"run {name} {spec} failed (attempt {attempt}):\n{tail}", file=sys.stderr, flush=True)
    raise RuntimeError(f"the {name} run with threads {spec} failed twice")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", nargs="+", default=["1", "2", "auto"], help="auto, N or N:B")
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument("--busy", action="store_true", help="also run with one core kept busy by another process")
    p.add_argument("--repeat", type=int, default=3, help="runs per setting (interleaved); the best is reported")
    p.add_argument("--timeout", type=float, default=40.0,
                   help="seconds after which a run is stopped and reported as '> timeout'")
    p.add_argument("--json", default=None, help="write the rows to this file")
    p.add_argument("--one", nargs=2, metavar=("WORKLOAD", "SETTING"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.one:
        name, spec = args.one
        fun, _, warm_iter = WORKLOADS[name]
        fun(warm_iter)  # loads (or compiles) the kernels
        print("ready", flush=True)
        print(json.dumps(measure(name, spec)))
        return

    # a SIGTERM must still stop the busy-loop process (the finally clause below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rows = []
    states = ["idle", "busy"] if args.busy else ["idle"]
    for state in states:
        hog = None
        if state == "busy":
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(2.0)
        try:
            for _ in range(args.repeat):
                for name in args.workloads:
                    for spec in args.settings:
                        if any(r["timed_out"] and r["machine"] == state and r["workload"] == name
                               and r["setting"] == spec for r in rows):
                            continue  # once too slow is enough
                        row = run_one(name, spec, args.timeout)
                        row["machine"] = state
                        rows.append(row)
                        print(json.dumps(row), flush=True)
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()

    print(f"\n{'machine':8s} {'workload':8s} " + " ".join(f"{s:>15s}" for s in args.settings))
    for state in states:
        for name in args.workloads:
            best = {}
            for spec in args.settings:
                runs = [r for r in rows if r["machine"] == state and r["workload"] == name and r["setting"] == spec]
                best[spec] = min(runs, key=lambda r: r["seconds"])
            fastest = min(r["seconds"] for r in best.values())
            cells = []
            for spec in args.settings:
                r = best[spec]
                t = f">{r['seconds']:.0f}s" if r["timed_out"] else f"{r['seconds']:.1f}s"
                cells.append(f"{t:>8s} {r['seconds'] / fastest:5.2f}x")
            print(f"{state:8s} {name:8s} " + " ".join(cells))
    if args.json:
        dump_json(args.json, rows)


if __name__ == "__main__":
    main()
