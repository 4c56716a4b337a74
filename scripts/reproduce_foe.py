"""Reproduce the Field-of-Experts experiment of the MAID paper (maid-spec §6.3, claims §8.4, 8.6).

Paper scale (the default): 48 filters of 7×7 (2449 parameters), 20 Kodak images at
256×256 grayscale: indices 4..23 (kodim05..24; the reference's 5..24 of a list with
kodim25) for learning, kodim01..04 (never used by the paper) held out.  Noise σ = 0.1,
``default_rng(seed).standard_normal((24, size, size))`` (seed 31), the same at any scale.

Methods at equal cost (``--budget`` lower-level + CG iterations each):

* MAID, ε0 = δ0 = ``--eps0`` (0.1), α0 = 0.01, ρ = ν = 0.5, ν̄ = 1.05, with
  the error bound from the analytic FoE constants (MAID option ``bound_constants``);
  ``maid-nobound`` (not in the default list) is the same with the certificate
  off (ε adapts only through line-search failures);
* HOAG with geometric, quadratic and cubic decay of the tolerance (ε0 = 0.1, step
  1/L with L = ‖z0‖/√p, HOAG's acceptance rule; ``--hoag-step0`` overrides the
  first step).  A run that fails numerically (θ overflowing after a huge step)
  is recorded with status ``"error"`` and its partial history;
* fixed accuracy ε = δ = ``--fixed-eps`` (0.1);
* a learned anisotropic TV (MAID) on the same images, for the FoE-vs-TV claim,
  and ``skimage.restoration.denoise_tv_chambolle`` at the weight that
  maximises the mean training PSNR (``--no-tv`` skips both).

Reported: loss against cost, the loss at budget/10, budget/3 and budget, ε paths,
PSNR / SSIM on training and held-out images (tight solves at the learned θ), filters.
The full scale needs a GPU (``--backend cupy``); on a CPU use a reduced one, e.g.
``--n-filters 48 --filter-size 7 --n-images 4 --size 64`` (printed, and stored under
``"scale"``).  ``--quick``: 4 filters 3×3, 2 + 2 images of 32×32, a tiny budget.

Writes ``metrics.json``, ``thetas.npz`` (final θ of every method) and
``foe_loss_vs_cost.png``, ``foe_eps_path.png``, ``foe_filters.png`` into ``--out``.
"""
from __future__ import annotations

import os
import sys

import numpy as np

import varlearn as vl
from varlearn import experiments as E
from varlearn._io import savez_atomic
from varlearn.backend import to_device, to_numpy
from varlearn.bilevel import analysis as A
from varlearn.bilevel import figures as F
from varlearn.datasets import kodak
from varlearn.evaluation import chambolle_baseline, evaluate_theta, image_quality

PAPER = {"n_filters": 48, "filter_size": 7, "n_images": 20, "size": 256, "budget": 1e5, "max_iter": 10000}
QUICK = {"n_filters": 4, "filter_size": 3, "n_images": 2, "size": 32, "budget": 1500.0, "max_iter": 40}
N_KODAK = 24
FIRST_TRAIN = 4  # paper: indices 5..24 of a 25-file list -> 4..23 of the 24 standard images
METHODS = ("maid", "hoag-geometric", "hoag-quadratic", "hoag-cubic", "fixed", "maid-nobound")
DESCENT = {"step0": 0.01, "rho": 0.5}


def method_options(spec, args, budget, max_iter):
    """minimize_bilevel options and label of one method of the comparison."""
    opts = {"budget": budget, "maxiter": max_iter, **spec.options}
    if spec.method == "maid":
        opts = {"eps0": args.eps0, "delta0": args.eps0, **DESCENT, "nu": 0.5, "nu_inc": 1.05, **opts}
        return opts, spec.label + f" ε0=δ0={opts['eps0']:g}" * ("eps0" not in spec.options)
    if spec.method == "fixed":
        opts = {"eps0": args.fixed_eps, "delta0": args.fixed_eps, **DESCENT, **opts}
        return opts, spec.label + f" ε=δ={opts['eps0']:g}" * ("eps0" not in spec.options)
    opts = {"eps0": args.eps0, **opts}
    if args.hoag_step0 is not None:
        opts["step0"] = args.hoag_step0
    return opts, spec.label + ("" if args.hoag_step0 is None else f", α0={args.hoag_step0:g}")


def print_table(runs, tv, chambolle, budget):
    print(f"{'method':<26}{'status':<18}{'nit':>6}{'cost':>9}{'f@B/10':>10}{'f@B/3':>10}{'f@B':>10}"
          f"{'PSNR tr':>9}{'PSNR ho':>9}{'SSIM ho':>9}{'time s':>8}")
    for r in runs + ([tv] if tv else []):
        lac = r.get("loss_at_cost", {})
        vals = [lac.get(f"{c:g}") for c in (budget / 10, budget / 3, budget)] if lac else [None, None, r["fun"]]
        tr, ho = r["train_eval"] or {}, r["heldout_eval"] or {}
        print(f"{r['label']:<26}{r['status']:<18}{r['nit']:>6}{r['cost']:>9}"
              + "".join(f"{E.fmt(v, '.5g'):>10}" for v in vals)
              + f"{E.fmt(tr.get('psnr_mean'), '.3f'):>9}{E.fmt(ho.get('psnr_mean'), '.3f'):>9}"
              f"{E.fmt(ho.get('ssim_mean'), '.4f'):>9}{r['wall_time']:>8.1f}")
        if r.get("error"):
            print(f"    {r['error']}")
    if chambolle:
        print(f"{'TV chambolle':<26}{'best weight':<18}{'':>55}{chambolle['train_psnr_mean']:>9.3f}"
              f"{chambolle['psnr_mean']:>9.3f}{chambolle['ssim_mean']:>9.4f}{chambolle['search_time']:>8.1f}")


def main(argv=None):
    p = E.make_parser(__doc__.splitlines()[0], seed=31, out="results/foe")
    p.add_argument("--n-filters", type=int, default=None, help="number of filters (paper 48; quick 4)")
    p.add_argument("--filter-size", type=int, default=None, help="filter side, odd (paper 7; quick 3)")
    p.add_argument("--n-images", type=int, default=None,
                   help="training images, Kodak indices 4, 5, ... (paper 20 = indices 4..23; quick 2)")
    p.add_argument("--size", type=int, default=None, help="image side after resizing (paper 256; quick 32)")
    p.add_argument("--heldout-indices", type=E.indices_arg, default=None,
                   help="held-out Kodak indices, e.g. '0-3' (default 0-3, the images the paper never uses; quick 0-1)")
    p.add_argument("--sigma", type=float, default=0.1, help="noise level")
    p.add_argument("--methods", nargs="+", type=E.method_arg, default=[A.parse_method(m) for m in METHODS[:5]],
                   help=f"methods to run, from {METHODS} (optionally NAME:EPS0[:DELTA0])")
    p.add_argument("--eps0", type=E.positive_float, default=0.1, help="initial accuracy of MAID and HOAG")
    p.add_argument("--fixed-eps", type=E.positive_float, default=0.1, help="accuracy of the fixed-accuracy run")
    p.add_argument("--hoag-step0", type=E.positive_float, default=None,
                   help="HOAG's first step (default: HOAG's rule 1/L, L = ||z0||/sqrt(p), a step of norm sqrt(p))")
    p.add_argument("--no-tv", action="store_true",
                   help="skip the TV baselines (TV learned by MAID, denoise_tv_chambolle at its best weight)")
    p.add_argument("--eval-tol", type=float, default=1e-3, help="lower-level tolerance of the PSNR evaluation")
    args = p.parse_args(argv)
    base = QUICK if args.quick else PAPER
    K, s = args.n_filters or base["n_filters"], args.filter_size or base["filter_size"]
    n_images, size = args.n_images or base["n_images"], args.size or base["size"]
    budget, max_iter = args.budget or base["budget"], args.max_iter or base["max_iter"]
    train_idx = list(range(FIRST_TRAIN, FIRST_TRAIN + n_images))
    if train_idx[-1] >= N_KODAK:
        p.error(f"--n-images must be at most {N_KODAK - FIRST_TRAIN} (Kodak indices 4..23)")
    test_idx = args.heldout_indices or ([0, 1] if args.quick else [0, 1, 2, 3])
    if set(test_idx) & set(train_idx) or any(not 0 <= i < N_KODAK for i in test_idx):
        p.error(f"--heldout-indices must be Kodak indices 0..23 outside the training ones {train_idx}")
    xp = E.array_module(args.backend)
    idx_all = sorted(set(train_idx) | set(test_idx))
    imgs, names_all = E.load_data(kodak, args.data_dir, size=size, indices=idx_all)
    out = E.prepare_out(args.out)

    scale = {"n_filters": K, "filter_size": s, "n_images": n_images, "size": size, "budget": budget,
             "max_iter": max_iter, "train_indices": train_idx, "heldout_indices": test_idx, "paper": dict(PAPER)}
    scale["reduced"] = any(scale[k] != PAPER[k] for k in ("n_filters", "filter_size", "n_images", "size"))
    if scale["reduced"]:
        scale["note"] = (f"REDUCED SCALE: {K} filters {s}x{s}, {n_images} images {size}x{size} "
                         f"(paper: 48 filters 7x7, 20 images 256x256)")
        print(scale["note"], flush=True)
    pos = {i: k for k, i in enumerate(idx_all)}
    noise = np.random.default_rng(args.seed).standard_normal((N_KODAK, size, size))
    clean_tr, clean_te = imgs[[pos[i] for i in train_idx]], imgs[[pos[i] for i in test_idx]]
    noisy_tr, noisy_te = clean_tr + args.sigma * noise[train_idx], clean_te + args.sigma * noise[test_idx]
    reg = vl.FieldOfExperts(n_filters=K, size=s, rng=args.seed)
    theta0 = reg.init_params()
    scale["n_params"] = int(reg.n_params)
    upper, upper_te = vl.SquaredError(to_device(clean_tr, xp)), vl.SquaredError(to_device(clean_te, xp))

    def evaluate(r, problem, x0):
        """Train and held-out evaluation (tight solves) of a finished run; None for a failed one."""
        if isinstance(r, A.FailedRun):
            return None, None
        th = to_numpy(r["theta"])
        return (evaluate_theta(problem, upper, th, args.eval_tol, x0=x0),
                evaluate_theta(vl.DenoisingProblem(to_device(noisy_te, xp), problem.regularizer), upper_te, th,
                               args.eval_tol))

    problem = vl.DenoisingProblem(to_device(noisy_tr, xp), reg)
    runs, thetas = [], {}
    for spec in args.methods:
        opts, label = method_options(spec, args, budget, max_iter)
        with E.Timer() as t:
            res, err = A.guarded_minimize(problem, upper, to_device(theta0, xp), spec.method, opts,
                                          progress=lambda line: print(line, flush=True))
        ev_tr, ev_te = evaluate(res, problem, res["x"])
        if err is None:
            thetas[spec.key] = to_numpy(res["theta"])
        runs.append(A.summarize_run(res, label, extra={
            "key": spec.name, "train_eval": ev_tr, "heldout_eval": ev_te, "script_wall_time": t.seconds,
            "error": err, "loss_at_cost": {f"{c:g}": A.value_at_cost(res["history"], c)
                                           for c in (budget / 10, budget / 3, budget)}}))
        r = runs[-1]
        print(f"  {label:<26} FAILED: {err}" if err else
              f"  {label:<26} {r['status']:<17} nit {r['nit']:>5} cost {r['cost']:>8} f {r['fun']:.5g} "
              f"PSNR train {ev_tr['psnr_mean']:.3f} held-out {ev_te['psnr_mean']:.3f} time {r['wall_time']:.1f}s",
              flush=True)

    tv = chambolle = None
    if not args.no_tv:
        tv_prob = vl.DenoisingProblem(to_device(noisy_tr, xp), vl.TotalVariation(isotropic=False))
        res = vl.minimize_bilevel(tv_prob, upper, to_device(np.array([-5.0, -5.0]), xp), "maid",
                                  options={"eps0": 0.1, "delta0": 0.1, **DESCENT, "nu": 0.5, "budget": budget,
                                           "maxiter": max_iter})
        ev_tr, ev_te = evaluate(res, tv_prob, res.x)
        tv = A.summarize_run(res, "learned TV (MAID)", extra={"train_eval": ev_tr, "heldout_eval": ev_te})
        thetas["tv"] = to_numpy(res.theta)
        chambolle = chambolle_baseline(noisy_tr, clean_tr, noisy_te, clean_te, args.quick)
        print(f"  learned TV (MAID)  f {tv['fun']:.5g} PSNR train {ev_tr['psnr_mean']:.3f} held-out "
              f"{ev_te['psnr_mean']:.3f}; denoise_tv_chambolle weight {chambolle['weight']:.4g}: held-out "
              f"{chambolle['psnr_mean']:.3f}", flush=True)

    savez_atomic(out / "thetas.npz", {"theta0": theta0, **thetas})
    plot_runs = [{"label": r["label"], "method": r["method"], "history": r["history"], "eps0": r["options"]["eps0"]}
                 for r in runs]
    tv_curve = [] if tv is None else [{"label": "learned TV (MAID), same data", "method": "maid",
                                       "history": tv["history"], "linestyle": "-.", "color": "k"}]
    key = "maid" if "maid" in thetas else next(iter(thetas))
    parts = reg.split(thetas[key])
    figs = {"loss_vs_cost": F.plot_loss_vs_cost(out / "foe_loss_vs_cost.png", plot_runs + tv_curve, logy=True,
                                                title=f"FoE {K}×{s}×{s}, {n_images} images {size}²: upper loss "
                                                      "vs cost"),
            "eps_path": F.plot_eps_path(out / "foe_eps_path.png", plot_runs, title="FoE: accuracy ε_k (MAID vs HOAG)"),
            "filters": F.plot_filters(out / "foe_filters.png", parts["filters"],
                                      np.exp(float(parts["log_global_weight"]) + np.asarray(parts["log_weights"])),
                                      f"learned filters ({key}), sorted by weight e^(θ0+θi)")}
    noisy_eval = {"train": image_quality(noisy_tr, clean_tr), "heldout": image_quality(noisy_te, clean_te)}
    metrics = {
        "experiment": "foe", "quick": args.quick, "seed": args.seed, "scale": scale,
        "images": {"train": [names_all[pos[i]] for i in train_idx], "heldout": [names_all[pos[i]] for i in test_idx]},
        "noise": f"clean + {args.sigma} * default_rng({args.seed}).standard_normal((24, {size}, {size}))[indices]",
        "psnr_note": "PSNR and SSIM clip the estimate to [0, 1] (varlearn.metrics clip=True)",
        "noisy": noisy_eval, "machine": E.machine_info(args.backend), "runs": runs, "tv_baseline": tv,
        "chambolle_baseline": chambolle, "figures": {k: os.path.basename(str(v)) for k, v in figs.items()},
    }
    E.write_metrics(out / "metrics.json", metrics)
    print(("REDUCED SCALE " if scale["reduced"] else "paper scale ") +
          f"FoE: {K} filters {s}x{s} ({reg.n_params} parameters), train Kodak {train_idx[0]}..{train_idx[-1]} "
          f"({n_images} images {size}x{size}), held-out {test_idx}; budget {budget:g}")
    print(f"noisy PSNR train {noisy_eval['train']['psnr_mean']:.3f}, held-out {noisy_eval['heldout']['psnr_mean']:.3f}")
    print_table(runs, tv, chambolle, budget)
    print(f"wrote {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
