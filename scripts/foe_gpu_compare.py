"""Field of Experts at the paper's scale on a GPU: MAID against HOAG at equal cost.

48 filters of 7x7 (2449 parameters), 20 Kodak images (sorted indices 4..23) at 256x256,
sigma = 0.1, seed 31.  Each method gets the same budget of lower-level + CG iterations
(``--budget``) and a wall-time cap (``--time-limit`` seconds); the held-out Kodak images
(indices 0..3) give the test PSNR.  Writes ``metrics.json`` and ``loss_vs_cost.png`` to
``--out``.  Run with ``--backend cupy`` on a GPU; ``--quick`` shrinks everything (CPU test).
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--backend", choices=["numpy", "cupy"], default="cupy")
    ap.add_argument("--budget", type=float, default=20000)
    ap.add_argument("--time-limit", type=float, default=90.0)
    ap.add_argument("--methods", default="maid,hoag-geometric,hoag-quadratic,hoag-cubic")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=31)
    ap.add_argument("--out", default="foe_gpu_out")
    args = ap.parse_args(argv)

    import varlearn as vl
    from varlearn.backend import to_device
    from varlearn.bilevel.checkpoint import atomic_write_text
    from varlearn.datasets import kodak

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        K, s, size, train, test = 3, 3, 24, [4, 5], [0]
    else:
        K, s, size, train, test = 48, 7, 256, list(range(4, 24)), [0, 1, 2, 3]
    imgs, names = kodak(args.data_dir, size=size, indices=train + test)
    rng = np.random.default_rng(args.seed)
    noisy = imgs + 0.1 * rng.standard_normal(imgs.shape)
    xp_clean = to_device(imgs[: len(train)], args.backend)
    xp_noisy = to_device(noisy[: len(train)], args.backend)
    te_clean = to_device(imgs[len(train):], args.backend)
    te_noisy = to_device(noisy[len(train):], args.backend)
    reg = vl.FieldOfExperts(n_filters=K, size=s, rng=args.seed)
    prob = vl.DenoisingProblem(xp_noisy, reg)
    upper = vl.SquaredError(xp_clean)
    theta0 = prob.init_params()
    metrics = {"scale": {"n_filters": K, "filter_size": s, "size": size, "train": [names[i] for i in range(len(train))],
                         "test": names[len(train):], "n_params": reg.n_params, "backend": args.backend},
               "budget": args.budget, "time_limit": args.time_limit, "runs": {}}
    curves = {}
    for m in args.methods.split(","):
        method, _, decay = m.partition("-")
        opts = {"budget": args.budget, "time_limit": args.time_limit, "max_iter": 100000}
        if method == "maid":
            opts.update(eps0=1e-1, delta0=1e-1, step0=0.01 * (9216 / size ** 2))
        else:
            opts.update(decay=decay or "geometric", eps0=1e-1)
        t0 = time.perf_counter()
        res = vl.minimize_bilevel(prob, upper, theta0, method=method, options=opts)
        wall = time.perf_counter() - t0
        test_prob = vl.DenoisingProblem(te_noisy, reg)
        sol = vl.solve_lower(test_prob, res.theta, 1e-3 * math.sqrt(te_noisy.size), maxiter=5000)
        te_upper = vl.SquaredError(te_clean)
        run = {"status": res.status, "fun": res.fun, "nit": res.nit, "n_lower_iter": res.n_lower_iter,
               "n_cg_iter": res.n_cg_iter, "wall_time": wall,
               "train_psnr": upper.psnr(res.x), "test_psnr": te_upper.psnr(sol.x),
               "test_psnr_noisy": te_upper.psnr(te_noisy), "final_eps": res.history[-1]["eps"]}
        metrics["runs"][m] = run
        curves[m] = (res.history_column("cost"), res.history_column("fun"))
        print(f"{m:>16}: f={res.fun:.4f} nit={res.nit} cost={res.n_lower_iter + res.n_cg_iter} "
              f"wall={wall:.1f}s train PSNR {run['train_psnr']:.2f} test PSNR {run['test_psnr']:.2f} "
              f"(noisy {run['test_psnr_noisy']:.2f})", flush=True)
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1))
        np.savez(out / f"curve_{m}.npz", cost=curves[m][0], fun=curves[m][1])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m, (c, f) in curves.items():
        ax.plot(c, f, label=m)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("lower-level + CG iterations")
    ax.set_ylabel("upper loss")
    ax.set_title(f"FoE {K} filters {s}x{s}, {len(train)} images {size}x{size}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss_vs_cost.png", dpi=100)
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
