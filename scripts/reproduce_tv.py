"""Reproduce the TV-denoising robustness experiment of the MAID paper (maid-spec §6.2, claims §8.2, 8.3, 8.5, 8.6).

Data: the 24 standard Kodak images (kodim25 of the reference repo is not part of
the suite and is not used), resized to 96×96 grayscale, noise σ = 0.1 drawn as
``clean + sigma * default_rng(seed).standard_normal(clean.shape)`` (seed 19).
Model: anisotropic smoothed TV (the paper's form), θ = (log weight, log smoothing)
from θ0 = (−5, −5); lower level ½‖x − y‖² + R(x, θ) per image (no 1/N), upper
level the mean over images of ½‖x − x_clean‖².

Runs (all α0 = 0.01, ρ = ν = 0.5, ν̄ = 1.05), each with the same cost budget
(``--budget`` lower-level + CG iterations) and ``--max-iter`` outer iterations:

* MAID from (ε0, δ0) ∈ {(1e1,1e2), (1e1,1e-2), (1e2,1e2), (1e1,2e1), (1e1,1e-1),
  (1e1,1e1), (1,1), (1e-1,1e-1), (1e-3,1e-3), (1e-5,1e-5)};
* fixed accuracy ε = δ ∈ {1e-1, 1e-3, 1e-5}.

``--runs`` selects others: ``maid:EPS0:DELTA0`` or ``fixed:EPS`` (the method grammar of
:func:`varlearn.bilevel.analysis.parse_method`).

For every run: final θ, f, f(θ) re-evaluated with a tight solve, PSNR (mean of
per-image PSNRs and batch PSNR as in the reference code, the estimate clipped to
[0, 1]: :func:`varlearn.evaluation.image_quality`), cost, wall time, and the
cost / time at which f came within 0.5% and 0.1% of f*.
f* comes from a grid search with tight solves (coarse 0.25 × 0.5 grid, fine grid,
Nelder–Mead polish), skipped with ``--no-grid``.

``--heldout``: learn on images 0..n_train−1 (``--n-train``, default 16) and
evaluate on the others: mean PSNR and SSIM of the learned TV, against
``skimage.restoration.denoise_tv_chambolle`` at its best weight chosen on the
training images, and against the noisy input.

``--quick``: 4 images at 32×32, three runs, small budget (seconds).

Writes ``metrics.json`` and ``tv_loss_vs_cost.png``, ``tv_eps_path.png``
(and ``tv_landscape.png`` with the grid) into ``--out``.
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np

import varlearn as vl
from varlearn import experiments as E
from varlearn.backend import to_device, to_numpy
from varlearn.bilevel import analysis as A
from varlearn.bilevel import figures as F
from varlearn.datasets import kodak
from varlearn.evaluation import TightSolver, chambolle_baseline, grid_search_2d, image_quality

PAPER_RUNS = ["maid:1e1:1e2", "maid:1e1:1e-2", "maid:1e2:1e2", "maid:1e1:2e1", "maid:1e1:1e-1", "maid:1e1:1e1",
              "maid:1:1", "maid:1e-1:1e-1", "maid:1e-3:1e-3", "maid:1e-5:1e-5",
              "fixed:1e-1", "fixed:1e-3", "fixed:1e-5"]
QUICK_RUNS = ["maid:1e-1:1e-1", "maid:1e1:1e2", "fixed:1e-1"]
HELDOUT_RUNS = ["maid:1e-1:1e-1"]
THETA0 = (-5.0, -5.0)
COMMON_OPTIONS = {"step0": 0.01, "rho": 0.5}
MAID_OPTIONS = {"nu": 0.5, "nu_inc": 1.05}


def grid_search(solver, quick):
    """f* by a coarse 0.25 x 0.5 grid (quick: 0.5 x 1), a fine grid and Nelder-Mead (tight solves)."""
    if quick:
        coarse, half, n, fev = (np.arange(-5.0, -0.49, 0.5), np.arange(-8.0, -0.99, 1.0)), (0.5, 1.0), 5, 80
        return grid_search_2d(solver, coarse, half, n, fev)
    coarse = (np.arange(-5.0, -0.49, 0.25), np.arange(-8.0, -0.99, 0.5))
    return grid_search_2d(solver, coarse, (0.25, 0.5), 11, 300, coarse_tol=max(solver.tol, 1e-3))


def run_one(problem, upper, xp, spec, budget, max_iter, solver_eval, f_star):
    opts = dict(COMMON_OPTIONS, **spec.options, maxiter=max_iter, budget=budget)
    if spec.method == "maid":
        opts.update(MAID_OPTIONS)
    path = [list(THETA0)]
    res = vl.minimize_bilevel(problem, upper, to_device(np.array(THETA0), xp), spec.method, options=opts,
                              callback=lambda r: path.append([float(v) for v in to_numpy(r.theta)]))
    theta = to_numpy(res.theta)
    r = solver_eval.solve(theta, x0=res.x)
    f_tight = float(upper.value(r.x))
    q = image_quality(r.x, upper.clean)
    extra = {"token": spec.token, "eps0": res.options["eps0"], "delta0": res.options["delta0"], "theta_path": path,
             "f_tight": f_tight, "weight": math.exp(theta[0]), "smoothing": math.exp(theta[1]),
             "psnr_mean": q["psnr_mean"], "psnr_batch": q["psnr_batch"]}
    s = A.summarize_run(res, spec.label, extra=extra)
    if f_star is not None:
        s["rel_gap"] = (f_tight - f_star) / f_star
        for pct in (0.5, 0.1):
            target = f_star * (1 + pct / 100)
            s[f"cost_to_{pct}pct"] = A.first_cost_below(res.history, target)
            s[f"time_to_{pct}pct"] = next((row["wall_time"] for row in res.history
                                           if row["fun"] is not None and row["fun"] <= target), None)
    return s


def heldout_eval(runs, noisy, clean, noisy_te, clean_te, n_train, n_images, names, xp, tol, quick):
    prob_te = vl.DenoisingProblem(to_device(noisy_te, xp), vl.TotalVariation(isotropic=False))
    ev = TightSolver(prob_te, vl.SquaredError(to_device(clean_te, xp)), tol)
    learned = {}
    for r in runs:
        th = [math.log(r["weight"]), math.log(r["smoothing"])]
        learned[r["label"]] = dict(image_quality(ev.solve(np.asarray(th)).x, clean_te), theta=th)
    return {"train_indices": list(range(n_train)), "test_indices": list(range(n_train, n_images)),
            "test_names": names[n_train:], "learned_tv": learned,
            "chambolle": chambolle_baseline(noisy, clean, noisy_te, clean_te, quick),
            "noisy": image_quality(noisy_te, clean_te)}


def print_summary(runs, f_star, theta_star, t_grid, hm, head):
    print(head + (f"; grid f* = {f_star:.6f} at theta = ({theta_star[0]:.4f}, {theta_star[1]:.4f}) "
                  f"[{t_grid:.0f}s]" if f_star is not None else ""))
    print(f"{'run':<22}{'status':<18}{'nit':>5}{'cost':>8}{'f':>11}{'f tight':>11}{'rel gap':>10}"
          f"{'θ0':>8}{'θ1':>8}{'PSNR':>8}{'bPSNR':>8}{'cost@.5%':>9}{'time s':>8}{'ε mono':>7}{'cert':>5}")
    for r in runs:
        print(f"{r['label']:<22}{r['status']:<18}{r['nit']:>5}{r['cost']:>8}{r['fun']:>11.6f}{r['f_tight']:>11.6f}"
              f"{E.fmt(r.get('rel_gap'), '.2e'):>10}{math.log(r['weight']):>8.3f}{math.log(r['smoothing']):>8.3f}"
              f"{r['psnr_mean']:>8.3f}{r['psnr_batch']:>8.3f}{E.fmt(r.get('cost_to_0.5pct')):>9}"
              f"{r['wall_time']:>8.1f}{str(r['eps_monotone'])[0]:>7}{r['certified_decrease']['violations']:>5}")
    if hm:
        print(f"held-out images {hm['test_indices'][0]}..{hm['test_indices'][-1]}: noisy PSNR "
              f"{hm['noisy']['psnr_mean']:.3f} SSIM {hm['noisy']['ssim_mean']:.4f}")
        for lab, v in hm["learned_tv"].items():
            print(f"  learned TV ({lab}): PSNR {v['psnr_mean']:.3f} SSIM {v['ssim_mean']:.4f}")
        ch = hm["chambolle"]
        print(f"  denoise_tv_chambolle (weight {ch['weight']:.4f}): PSNR {ch['psnr_mean']:.3f} "
              f"SSIM {ch['ssim_mean']:.4f}")


def main(argv=None):
    p = E.make_parser(__doc__.splitlines()[0], seed=19, out="results/tv")
    p.add_argument("--n-images", type=int, default=None, help="Kodak images used (default 24; quick 4)")
    p.add_argument("--size", type=int, default=None, help="image side after resizing (default 96; quick 32)")
    p.add_argument("--sigma", type=float, default=0.1, help="noise level")
    p.add_argument("--runs", nargs="+", type=E.method_arg, default=None,
                   help="runs as maid:EPS0:DELTA0 or fixed:EPS (default: the paper's 13; quick 3)")
    p.add_argument("--no-grid", action="store_true", help="skip the grid search for f*")
    p.add_argument("--grid-tol", type=float, default=1e-6, help="lower-level tolerance of the grid search")
    p.add_argument("--eval-tol", type=float, default=1e-5, help="lower-level tolerance of the final evaluation")
    p.add_argument("--heldout", action="store_true",
                   help="learn on the first --n-train images and evaluate PSNR/SSIM on the others, "
                        "against denoise_tv_chambolle at its best training weight")
    p.add_argument("--n-train", type=int, default=None, help="training images in --heldout (default 16; quick 2)")
    args = p.parse_args(argv)
    quick, heldout = args.quick, args.heldout
    n_images = args.n_images or (4 if quick else 24)
    size = args.size or (32 if quick else 96)
    max_iter = args.max_iter or (100 if quick else 1000)
    budget = args.budget or (6000.0 if quick else 2e4)
    n_train = (args.n_train or (2 if quick else 16)) if heldout else n_images
    if heldout and not 0 < n_train < n_images:
        p.error(f"--n-train must lie in [1, {n_images - 1}], got {n_train}")
    specs = args.runs or [A.parse_method(t) for t in (HELDOUT_RUNS if heldout else QUICK_RUNS if quick
                                                      else PAPER_RUNS)]
    for spec in specs:
        if spec.method not in ("maid", "fixed"):
            p.error(f"--runs: {spec.token!r}: only maid and fixed runs here (maid:EPS0:DELTA0, fixed:EPS)")
    xp = E.array_module(args.backend)
    clean_all, names = E.load_data(kodak, args.data_dir, size=size, indices=list(range(n_images)))
    out = E.prepare_out(args.out)

    noisy_all = clean_all + args.sigma * np.random.default_rng(args.seed).standard_normal(clean_all.shape)
    clean, noisy = clean_all[:n_train], noisy_all[:n_train]
    problem = vl.DenoisingProblem(to_device(noisy, xp), vl.TotalVariation(isotropic=False))
    upper = vl.SquaredError(to_device(clean, xp))
    noisy_q = image_quality(noisy, clean)
    noisy_metrics = {"f": float(upper.value(to_device(noisy, xp))), "psnr_mean": noisy_q["psnr_mean"],
                     "psnr_batch": noisy_q["psnr_batch"]}
    theta_star = f_star = grid = None
    with E.Timer() as t_grid:
        if not args.no_grid and not heldout:
            theta_star, f_star, grid = grid_search(TightSolver(problem, upper, args.grid_tol), quick)
    solver_eval = TightSolver(problem, upper, args.eval_tol)
    runs = []
    for spec in specs:
        r = run_one(problem, upper, xp, spec, budget, max_iter, solver_eval, f_star)
        runs.append(r)
        print(f"  {r['label']:<22} {r['status']:<17} nit {r['nit']:>4} cost {r['cost']:>7} f {r['fun']:.6f} "
              f"PSNR {r['psnr_mean']:.3f} time {r['wall_time']:.1f}s", flush=True)
    hm = None
    if heldout:
        hm = heldout_eval(runs, noisy, clean, noisy_all[n_train:], clean_all[n_train:], n_train, n_images, names,
                          xp, args.eval_tol, quick)

    plot_runs = [{"label": r["label"], "method": r["method"], "history": r["history"], "eps0": r["eps0"]}
                 for r in runs]
    figs = {"loss_vs_cost": F.plot_loss_vs_cost(
        out / "tv_loss_vs_cost.png", plot_runs, fstar=f_star,
        title=f"TV, {n_train} Kodak images {size}×{size}: " + ("f − f* (grid)" if f_star else "upper loss")
        + " vs cost"),
        "eps_path": F.plot_eps_path(out / "tv_eps_path.png", plot_runs, title="TV: accuracy ε_k per run")}
    if grid is not None:
        figs["landscape"] = F.plot_landscape(out / "tv_landscape.png", grid["coarse"], runs, theta_star,
                                             "TV: f(θ) (θ0 log weight, θ1 log smoothing) and the runs' θ paths")
    metrics = {
        "experiment": "tv", "quick": quick, "heldout": heldout, "seed": args.seed,
        "scale": {"n_images": n_images, "n_train": n_train, "size": size, "sigma": args.sigma, "budget": budget,
                  "max_iter": max_iter, "images": names},
        "noise": f"clean + {args.sigma} * numpy.random.default_rng({args.seed}).standard_normal(clean.shape), "
                 f"clean of shape {list(clean_all.shape)}",
        "psnr_note": "PSNR and SSIM clip the estimate to [0, 1] (varlearn.metrics clip=True)",
        "noisy": noisy_metrics, "f_star": f_star, "theta_star": theta_star, "grid": grid,
        "grid_time": t_grid.seconds, "machine": E.machine_info(args.backend), "runs": runs, "heldout_eval": hm,
        "figures": {k: os.path.basename(str(v)) for k, v in figs.items()},
    }
    E.write_metrics(out / "metrics.json", metrics)
    print_summary(runs, f_star, theta_star, t_grid.seconds, hm,
                  f"TV: {n_train} Kodak images {size}x{size}, sigma {args.sigma}, noisy PSNR "
                  f"{noisy_q['psnr_mean']:.3f}")
    print(f"wrote {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
