"""Peak memory of a pass over an on-disk image collection: bounded by the batch, not the data set.

Writes N = factor x batch PNG images (``--size`` square, 16-bit) into a
temporary folder and measures, each in a fresh subprocess, the peak resident
set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) above the peak after
the imports and a warm-up solve of one batch:

* ``stream``: ``ImageCollection.from_folder`` and one epoch of batch
  hypergradients through ``SerialExecutor`` (each batch read from disk, solved
  and dropped) -- what an ISGD run with ``warm_start="none"`` does per step;
* ``isgd``: ``minimize_bilevel(DenoisingDataset(...), None, method="isgd")``
  for one epoch with ``warm_start="none"`` (skipped when ISGD is not available);
* ``load``: the whole collection loaded with ``load_images`` into one
  in-memory ``DenoisingProblem`` (the old way) and one hypergradient of one batch of it.

The ``stream`` and ``isgd`` peaks stay near the batch's working set for any
N; the ``load`` peak grows with N.  Reported, never asserted.

    python scripts/bench/collection_rss.py                 # batch 8, factor 10, 256x256
    python scripts/bench/collection_rss.py --factor 20
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from varlearn._io import dump_json

logger = logging.getLogger("varlearn.bench")
THETA = (-3.0, -3.0)


def write_folder(folder, n, size, seed=0):
    import imageio.v3 as iio

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    k = max(2, size // 16)
    for i in range(n):
        img = np.kron(rng.random((k, k)), np.ones((size // k + 1, size // k + 1)))[:size, :size]
        iio.imwrite(folder / f"img{i:05d}.png", (img * 65535).astype(np.uint16))


def _peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def child(mode, folder, batch, eps_image):
    """Run one mode in this process; returns the numbers as a dict."""
    from varlearn._accel import set_threads
    from varlearn.datasets import ImageCollection, load_images
    from varlearn.executors import DenoisingDataset, SerialExecutor
    from varlearn.regularizers import TotalVariation

    set_threads(1)
    theta = np.array(THETA)
    coll = ImageCollection.from_folder(folder)
    spec = DenoisingDataset(coll, TotalVariation(), sigma=0.1, noise_seed=0)
    n = len(coll)
    eps = math.sqrt(batch) * eps_image * math.sqrt(coll.image_shape[0] * coll.image_shape[1])
    ex = SerialExecutor()
    ex.hypergradient(spec, range(batch), theta, eps, eps, bound=False)  # warm-up: kernels, a batch's buffers
    base = _peak_mb()
    cost = 0
    if mode == "stream":
        order = np.random.default_rng(0).permutation(n)
        for start in range(0, n, batch):
            res = ex.hypergradient(spec, order[start:start + batch].tolist(), theta, eps, eps, bound=False)
            cost += res.image_lower_iter + res.image_cg_iter
    elif mode == "isgd":
        from varlearn.bilevel import minimize_bilevel

        r = minimize_bilevel(spec, None, theta, method="isgd",
                             options={"batch_size": batch, "max_epochs": 1, "warm_start": "none",
                                      "eps0": eps / math.sqrt(batch), "step0": 1e-3})
        cost = int(r.history[-1].get("image_cost", 0)) if r.history else 0
    else:
        from varlearn.hypergradient import hypergradient
        from varlearn.problems import DenoisingProblem, SquaredError

        clean, _ = load_images(folder)
        from varlearn.datasets import image_noise

        noisy = clean + image_noise(range(n), clean.shape[1:], 0.1, 0)
        problem = DenoisingProblem(noisy, TotalVariation())
        hg = hypergradient(problem.subset(range(batch)), SquaredError(clean).subset(range(batch)), theta, eps, eps,
                           bound=False)
        cost = hg.n_lower_iter * batch
    return {"mode": mode, "n_images": n, "batch": batch, "peak_mb": _peak_mb(), "base_mb": base,
            "delta_mb": _peak_mb() - base, "image_iterations": int(cost),
            "image_mb": coll.image_shape[0] * coll.image_shape[1] * 8 / 2 ** 20}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--factor", type=int, default=10, help="N = factor x batch (default 10)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--eps-image", type=float, default=1e-3, help="per-image accuracy per pixel (RMS)")
    p.add_argument("--modes", nargs="+", default=["stream", "isgd", "load"])
    p.add_argument("--json")
    p.add_argument("--child", nargs=2, metavar=("MODE", "FOLDER"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), args.batch, args.eps_image)))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "clean"
        n = args.factor * args.batch
        write_folder(folder, n, args.size)
        for mode in args.modes:
            cmd = [sys.executable, __file__, "--child", mode, str(folder), "--batch", str(args.batch),
                   "--eps-image", str(args.eps_image)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{mode}: failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if not rows:
        return 1
    r0 = rows[0]
    print(f"N = {r0['n_images']} images of {args.size}x{args.size} on disk (float64 in memory: "
          f"{r0['n_images'] * r0['image_mb']:.1f} MiB), batch {args.batch} ({args.batch * r0['image_mb']:.1f} MiB)")
    print(f"{'mode':>7} {'peak MiB':>9} {'after warm-up':>14} {'increase':>9} {'image-iter':>11}")
    for r in rows:
        print(f"{r['mode']:>7} {r['peak_mb']:>9.1f} {r['base_mb']:>14.1f} {r['delta_mb']:>9.1f} "
              f"{r['image_iterations']:>11}")
    if args.json:
        dump_json(args.json, rows)  # atomic, the package's JSON policy
    return 0


if __name__ == "__main__":
    sys.exit(main())
