"""Field of Experts at the paper's scale on a GPU: MAID against HOAG at equal cost.

48 filters of 7x7 (2449 parameters), 20 Kodak images (sorted indices 4..23) at 256x256,
sigma = 0.1, seed 31.  Each method gets the same budget of lower-level + CG iterations
(``--budget``) and a wall-time cap (``--time-limit`` seconds); the held-out Kodak images
(indices 0..3) give the test PSNR (tight solve to 1e-3 per pixel; the estimate clipped to
[0, 1], see :mod:`varlearn.evaluation`).  Methods use the grammar of
:func:`varlearn.bilevel.analysis.parse_method` (``maid``, ``hoag-cubic``, ``maid:0.1:0.1``, ...).
Writes ``metrics.json`` (with each run's history) and ``loss_vs_cost.png`` to ``--out``
(``metrics.json`` after every method).  Run with ``--backend cupy`` on a GPU; ``--quick`` shrinks everything (CPU test).
"""
import argparse
import math
import sys

import numpy as np

import varlearn as vl
from varlearn import experiments as E
from varlearn.backend import to_device
from varlearn.bilevel import analysis as A
from varlearn.bilevel import figures as F
from varlearn.datasets import kodak
from varlearn.evaluation import evaluate_theta, image_quality


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--backend", choices=["numpy", "cupy"], default="cupy")
    ap.add_argument("--budget", type=E.positive_float, default=20000)
    ap.add_argument("--time-limit", type=E.positive_float, default=90.0)
    ap.add_argument("--methods", type=lambda s: [E.method_arg(t) for t in s.split(",")],
                    default="maid,hoag-geometric,hoag-quadratic,hoag-cubic", help="comma-separated methods")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=31)
    ap.add_argument("--out", default="foe_gpu_out")
    args = ap.parse_args(argv)
    xp = E.array_module(args.backend)
    if args.quick:
        K, s, size, train, test = 3, 3, 24, [4, 5], [0]
    else:
        K, s, size, train, test = 48, 7, 256, list(range(4, 24)), [0, 1, 2, 3]
    imgs, names = E.load_data(kodak, args.data_dir, size=size, indices=train + test)
    out = E.prepare_out(args.out)
    noisy = imgs + 0.1 * np.random.default_rng(args.seed).standard_normal(imgs.shape)
    n = len(train)
    reg = vl.FieldOfExperts(n_filters=K, size=s, rng=args.seed)
    prob = vl.DenoisingProblem(to_device(noisy[:n], xp), reg)
    upper = vl.SquaredError(to_device(imgs[:n], xp))
    test_prob = vl.DenoisingProblem(to_device(noisy[n:], xp), reg)
    test_upper = vl.SquaredError(to_device(imgs[n:], xp))
    theta0 = prob.init_params()
    metrics = {"scale": {"n_filters": K, "filter_size": s, "size": size, "train": names[:n], "test": names[n:],
                         "n_params": reg.n_params, "backend": args.backend},
               "budget": args.budget, "time_limit": args.time_limit, "runs": {},
               "machine": E.machine_info(args.backend)}
    curves = []
    for spec in args.methods:
        opts = {"budget": args.budget, "time_limit": args.time_limit, "maxiter": 100000, "eps0": 1e-1}
        if spec.method != "hoag":
            opts.update(delta0=1e-1, step0=0.01 * (9216 / size ** 2))
        opts.update(spec.options)
        with E.Timer() as t:
            res = vl.minimize_bilevel(prob, upper, theta0, method=spec.method, options=opts)
        ev = evaluate_theta(test_prob, test_upper, res.theta, 1e-3 * math.sqrt(noisy[n:].size), maxiter=5000)
        run = {"status": res.status, "success": res.success, "fun": res.fun, "nit": res.nit,
               "n_lower_iter": res.n_lower_iter, "n_cg_iter": res.n_cg_iter, "wall_time": t.seconds,
               "train_psnr": image_quality(res.x, upper.clean)["psnr_mean"], "test_psnr": ev["psnr_mean"],
               "test_ssim": ev["ssim_mean"], "test_psnr_noisy": image_quality(noisy[n:], imgs[n:])["psnr_mean"],
               "final_eps": res.history[-1]["eps"], "history": A.summarize_run(res, spec.label)["history"]}
        metrics["runs"][spec.token] = run
        curves.append({"label": spec.label, "method": spec.method, "history": run["history"]})
        print(f"{spec.token:>16}: f={res.fun:.4f} nit={res.nit} cost={res.n_lower_iter + res.n_cg_iter} "
              f"wall={t.seconds:.1f}s train PSNR {run['train_psnr']:.2f} test PSNR {run['test_psnr']:.2f} "
              f"(noisy {run['test_psnr_noisy']:.2f})", flush=True)
        E.write_metrics(out / "metrics.json", metrics)
    F.plot_loss_vs_cost(out / "loss_vs_cost.png", curves, logy=True,
                        title=f"FoE {K} filters {s}x{s}, {n} images {size}x{size}")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
