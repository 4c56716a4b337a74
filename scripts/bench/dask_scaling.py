"""Dask executor overhead and parallel efficiency at a fixed θ (stochastic-spec §6.3; reported, never asserted).

For one batch of b images, fixed θ and a per-image accuracy, times the batch
hypergradient (solve, CG and hypergradient share of every image) with

* ``SerialExecutor(images_per_task=k)`` in this process (the reference),
* ``DaskExecutor`` on a ``LocalCluster`` of n single-threaded worker processes, n in ``--workers``,

for ``images_per_task`` k in ``--images-per-task``.  Each configuration runs
once to warm up (worker start, imports, numba cache) and then ``--reps``
times; T is the median.  Reported per k:

* the Dask overhead per task, ``(T_dask(1) - T_serial) / n_tasks``;
* ``T_dask(1) / T_serial``;
* the parallel efficiency ``E(n) = T_dask(1) / (n * T_dask(n))`` (strong scaling, b fixed);

and, per cluster, the seconds per task of 200 trivial tasks (Dask's own floor).

The kernels run on one thread everywhere (the serial reference too), so the
numbers compare processes, not threads.  The machine's load average before
and after is printed: on a shared machine other jobs take cores and lower E(n).

Run (the ``__main__`` guard is needed by the LocalCluster's worker processes)::

    python scripts/bench/dask_scaling.py                       # TV, 32 images 64x64, n in {1, 2}
    python scripts/bench/dask_scaling.py --model foe --batch 16 --size 48 --json out.json
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import time

import numpy as np

from varlearn._io import dump_json

logger = logging.getLogger("varlearn.bench")


def make_spec(model, batch, size, seed=0):
    """A DenoisingDataset of ``batch`` smooth random images (σ = 0.1) and a θ to evaluate at."""
    from varlearn.datasets import ImageCollection
    from varlearn.executors import DenoisingDataset
    from varlearn.regularizers import FieldOfExperts, TotalVariation

    rng = np.random.default_rng(seed)
    k = max(2, size // 8)
    coarse = rng.random((batch, k, k))
    reps = math.ceil(size / k)
    clean = np.kron(coarse, np.ones((reps, reps)))[:, :size, :size]
    clean = np.clip(clean + 0.03 * rng.standard_normal(clean.shape), 0.0, 1.0)
    if model == "tv":
        reg = TotalVariation()
        theta = np.array([-3.0, -3.0])
    else:
        reg = FieldOfExperts(n_filters=8, size=5, rng=0)
        theta = np.asarray(reg.init_params(np.random.default_rng(0)), dtype=np.float64)
    return DenoisingDataset(ImageCollection.from_array(clean), reg, sigma=0.1, noise_seed=1), theta


def time_executor(ex, spec, theta, eps_image, reps):
    """Median wall time of ``reps`` batch hypergradients (after one warm-up call) and the last result."""
    b = spec.n_samples
    eps = math.sqrt(b) * eps_image
    ex.hypergradient(spec, range(b), theta, eps, eps, bound=False)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        res = ex.hypergradient(spec, range(b), theta, eps, eps, bound=False)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), res


def _noop(i):
    return i


def null_task_seconds(client, n=200):
    """Wall seconds per task of ``n`` trivial tasks submitted at once and gathered (Dask's own floor)."""
    client.gather(client.map(_noop, range(n), pure=False))  # warm-up
    t0 = time.perf_counter()
    client.gather(client.map(_noop, range(n), pure=False))
    return (time.perf_counter() - t0) / n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("tv", "foe"), default="tv")
    p.add_argument("--batch", type=int, default=32, help="images per batch (default 32)")
    p.add_argument("--size", type=int, default=64, help="image side (default 64)")
    p.add_argument("--eps-image", type=float, default=1e-3, help="per-image accuracy (default 1e-3)")
    p.add_argument("--images-per-task", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", help="write the numbers to this JSON file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import distributed

    from varlearn._accel import set_threads
    from varlearn.executors import DaskExecutor, SerialExecutor

    set_threads(1)
    spec, theta = make_spec(args.model, args.batch, args.size)
    load0 = os.getloadavg()
    out = {"model": args.model, "batch": args.batch, "size": args.size, "eps_image": args.eps_image,
           "reps": args.reps, "cpu_count": os.cpu_count(), "loadavg_before": load0, "rows": []}
    serial = {}
    for k in args.images_per_task:
        t, res = time_executor(SerialExecutor(images_per_task=k), spec, theta, args.eps_image, args.reps)
        serial[k] = (t, res)
    dask_t = {}
    for n in args.workers:
        cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0")
        client = distributed.Client(cluster)
        try:
            out[f"null_task_s_{n}"] = null_task_seconds(client)
            for k in args.images_per_task:
                t, res = time_executor(DaskExecutor(client=client, images_per_task=k), spec, theta,
                                       args.eps_image, args.reps)
                ref = serial[k][1]
                same = bool(np.array_equal(res.grad, ref.grad))
                dask_t[(n, k)] = (t, len(res.per_chunk), same, res.image_lower_iter + res.image_cg_iter)
        finally:
            client.close()
            cluster.close()
    print(f"{args.model}: b={args.batch} images {args.size}x{args.size}, eps/image={args.eps_image}, "
          f"median of {args.reps}; load average before {load0[0]:.2f}")
    print(f"{'k':>4} {'tasks':>5} {'T_serial':>9} " + " ".join(f"{'T(' + str(n) + ')':>9}" for n in args.workers)
          + f" {'ovh/task':>9} {'T(1)/Ts':>8} " + " ".join(f"{'E(' + str(n) + ')':>6}" for n in args.workers)
          + "  same z  image-iter")
    for k in args.images_per_task:
        ts = serial[k][0]
        row = {"images_per_task": k, "T_serial": ts}
        line = f"{k:>4} "
        n_tasks = dask_t[(args.workers[0], k)][1]
        line += f"{n_tasks:>5} {ts:>9.4f} "
        for n in args.workers:
            row[f"T_{n}"] = dask_t[(n, k)][0]
            line += f"{dask_t[(n, k)][0]:>9.4f} "
        t1 = dask_t.get((1, k), (math.nan,))[0]
        row["overhead_per_task"] = (t1 - ts) / n_tasks
        row["T1_over_serial"] = t1 / ts
        line += f"{row['overhead_per_task']:>9.4f} {row['T1_over_serial']:>8.2f} "
        for n in args.workers:
            row[f"E_{n}"] = t1 / (n * dask_t[(n, k)][0])
            line += f"{row[f'E_{n}']:>6.2f} "
        row["same_as_serial"] = all(dask_t[(n, k)][2] for n in args.workers)
        row["image_iterations"] = dask_t[(args.workers[0], k)][3]
        line += f"  {row['same_as_serial']!s:>6}  {row['image_iterations']}"
        print(line)
        out["rows"].append(row)
    print("trivial tasks: " + ", ".join(f"{out[f'null_task_s_{n}'] * 1e3:.2f} ms per task on {n} worker(s)"
                                         for n in args.workers))
    out["loadavg_after"] = os.getloadavg()
    print(f"load average after {out['loadavg_after'][0]:.2f} on {os.cpu_count()} cores "
          "(a shared machine: other jobs take cores, which lowers E(n))")
    if args.json:
        dump_json(args.json, out)  # atomic, the package's JSON policy
    return 0


if __name__ == "__main__":
    sys.exit(main())
