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

``--runs`` selects others: tokens ``maid:EPS0:DELTA0`` or ``fixed:EPS``.

For every run: final θ, f, f(θ) re-evaluated with a tight solve, PSNR (mean of
per-image PSNRs and batch PSNR as in the reference code, both clipped to [0, 1]),
cost, wall time, and the cost / time at which f came within 0.5% and 0.1% of f*.
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

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import _common as C  # noqa: E402

import varlearn as vl  # noqa: E402
from varlearn.backend import to_device, to_numpy  # noqa: E402
from varlearn.datasets import kodak  # noqa: E402

PAPER_RUNS = ["maid:1e1:1e2", "maid:1e1:1e-2", "maid:1e2:1e2", "maid:1e1:2e1", "maid:1e1:1e-1", "maid:1e1:1e1",
              "maid:1:1", "maid:1e-1:1e-1", "maid:1e-3:1e-3", "maid:1e-5:1e-5",
              "fixed:1e-1", "fixed:1e-3", "fixed:1e-5"]
QUICK_RUNS = ["maid:1e-1:1e-1", "maid:1e1:1e2", "fixed:1e-1"]
HELDOUT_RUNS = ["maid:1e-1:1e-1"]
THETA0 = (-5.0, -5.0)
COMMON_OPTIONS = {"step0": 0.01, "rho": 0.5}
MAID_OPTIONS = {"nu": 0.5, "nu_inc": 1.05}


# ---------------------------------------------------------------------- runs
def parse_run(token):
    """``maid:EPS0:DELTA0`` or ``fixed:EPS`` -> (method, eps0, delta0, label)."""
    parts = token.split(":")
    try:
        if parts[0] == "maid" and len(parts) == 3:
            e, d = float(parts[1]), float(parts[2])
            return "maid", e, d, f"MAID ε0={e:g}, δ0={d:g}"
        if parts[0] == "fixed" and len(parts) == 2:
            e = float(parts[1])
            return "fixed", e, e, f"fixed ε=δ={e:g}"
    except ValueError:
        pass
    raise SystemExit(f"--runs: cannot parse {token!r}; use maid:EPS0:DELTA0 or fixed:EPS")


def batch_psnr(x, clean):
    """PSNR of the whole batch (one MSE over all pixels), both clipped to [0, 1] (the reference's psnr)."""
    xc = np.clip(x, 0.0, 1.0)
    cc = np.clip(clean, 0.0, 1.0)
    return float(10.0 * np.log10(1.0 / max(float(np.mean((xc - cc) ** 2)), 1e-30)))


def mean_psnr(x, clean):
    xc = np.clip(x, 0.0, 1.0)
    cc = np.clip(clean, 0.0, 1.0)
    mse = np.mean((xc - cc) ** 2, axis=(-2, -1))
    return float(np.mean(10.0 * np.log10(1.0 / np.maximum(mse, 1e-30))))


def mean_ssim(x, clean):
    from skimage.metrics import structural_similarity

    xc = np.clip(x, 0.0, 1.0)
    return float(np.mean([structural_similarity(c, e, data_range=1.0) for c, e in zip(clean, xc)]))


class TightSolver:
    """f(θ) = U(x̂(θ)) from lower-level solves to a fixed tight tolerance, warm-started."""

    def __init__(self, problem, upper, xp, tol, maxiter=100000):
        self.problem, self.upper, self.xp, self.tol, self.maxiter = problem, upper, xp, tol, maxiter
        self.x = None
        self.n_solves = 0
        self.n_iter = 0

    def solve(self, theta, x0=None, tol=None):
        th = to_device(np.asarray(theta, dtype=np.float64), self.xp)
        r = vl.solve_lower(self.problem, th, tol or self.tol, x0=x0 if x0 is not None else self.x,
                           maxiter=self.maxiter)
        self.x = r.x
        self.n_solves += 1
        self.n_iter += r.nit
        return r

    def f(self, theta, x0=None, tol=None):
        return float(self.upper.value(self.solve(theta, x0=x0, tol=tol).x))


def grid_search(solver, quick):
    """Coarse grid, fine grid around its best point, then Nelder–Mead: (θ*, f*, details)."""
    from scipy.optimize import minimize

    if quick:
        g0, g1 = np.arange(-5.0, -0.49, 0.5), np.arange(-8.0, -0.99, 1.0)
        fine_half, fine_n, nm_fev = (0.5, 1.0), 5, 80
    else:
        g0, g1 = np.arange(-5.0, -0.49, 0.25), np.arange(-8.0, -0.99, 0.5)
        fine_half, fine_n, nm_fev = (0.25, 0.5), 11, 300
    coarse_tol = max(solver.tol, 1e-3) if not quick else solver.tol
    F = np.full((g0.size, g1.size), np.nan)
    row_start = None
    for i, a in enumerate(g0):
        x = row_start
        for j, b in enumerate(g1):
            r = solver.solve((a, b), x0=x, tol=coarse_tol)
            F[i, j] = float(solver.upper.value(r.x))
            x = r.x
            if j == 0:
                row_start = r.x
    i, j = np.unravel_index(np.nanargmin(F), F.shape)
    best = (float(g0[i]), float(g1[j]))
    f0 = np.linspace(best[0] - fine_half[0], best[0] + fine_half[0], fine_n)
    f1 = np.linspace(best[1] - fine_half[1], best[1] + fine_half[1], fine_n)
    Ff = np.full((f0.size, f1.size), np.nan)
    solver.solve(best, tol=solver.tol)
    x_best = solver.x
    for a_i, a in enumerate(f0):
        x = x_best
        for b_i, b in enumerate(f1):
            r = solver.solve((a, b), x0=x)
            Ff[a_i, b_i] = float(solver.upper.value(r.x))
            x = r.x
    i2, j2 = np.unravel_index(np.nanargmin(Ff), Ff.shape)
    start = np.array([f0[i2], f1[j2]])
    solver.solve(start)
    simplex = np.array([start, start + [fine_half[0] / 5, 0.0], start + [0.0, fine_half[1] / 5]])
    res = minimize(lambda t: solver.f(t), start, method="Nelder-Mead",
                   options={"xatol": 1e-4, "fatol": 1e-8, "maxfev": nm_fev, "initial_simplex": simplex})
    theta_star = np.asarray(res.x, dtype=float)
    f_star = solver.f(theta_star)
    details = {
        "coarse": {"theta0": g0, "theta1": g1, "f": F, "best": best, "tol": coarse_tol},
        "fine": {"theta0": f0, "theta1": f1, "f": Ff, "best": [float(f0[i2]), float(f1[j2])],
                 "f_best": float(Ff[i2, j2])},
        "nelder_mead": {"nfev": int(res.nfev), "success": bool(res.success), "message": str(res.message)},
        "tol": solver.tol, "n_solves": solver.n_solves, "n_lower_iter": solver.n_iter,
    }
    return theta_star, f_star, details


def chambolle_best(noisy_train, clean_train, quick):
    """The weight of ``denoise_tv_chambolle`` that maximises the mean training PSNR (grid + refinement)."""
    from skimage.restoration import denoise_tv_chambolle

    def score(w):
        den = np.stack([denoise_tv_chambolle(y, weight=w) for y in noisy_train])
        return mean_psnr(den, clean_train)

    grid = np.geomspace(0.01, 0.5, 12 if quick else 31)
    scores = [score(w) for w in grid]
    w = float(grid[int(np.argmax(scores))])
    fine = np.geomspace(w / 1.15, w * 1.15, 5 if quick else 15)
    fs = [score(v) for v in fine]
    k = int(np.argmax(fs))
    return float(fine[k]), float(fs[k]), {"grid": grid, "grid_psnr": scores, "fine": fine, "fine_psnr": fs}


def run_one(problem, upper, xp, token, budget, max_iter, solver_eval, f_star):
    method, e, d, label = parse_run(token)
    opts = dict(COMMON_OPTIONS, eps0=e, delta0=d, max_iter=max_iter, budget=budget)
    if method == "maid":
        opts.update(MAID_OPTIONS)
    path = [list(THETA0)]

    def callback(r):
        path.append([float(v) for v in to_numpy(r.theta)])

    theta0 = to_device(np.array(THETA0), xp)
    res = vl.minimize_bilevel(problem, upper, theta0, method, options=opts, callback=callback)
    theta = to_numpy(res.theta)
    r = solver_eval.solve(theta, x0=res.x)
    x_tight = to_numpy(r.x)
    clean = to_numpy(upper.clean)
    f_tight = float(upper.value(r.x))
    extra = {
        "token": token, "eps0": e, "delta0": d, "theta_path": path,
        "f_tight": f_tight, "weight": math.exp(theta[0]), "smoothing": math.exp(theta[1]),
        "psnr_mean": mean_psnr(x_tight, clean), "psnr_batch": batch_psnr(x_tight, clean),
    }
    s = C.summarize_run(res, label, extra=extra)
    h = res["history"]
    if f_star is not None:
        s["rel_gap"] = (f_tight - f_star) / f_star
        for pct in (0.5, 0.1):
            target = f_star * (1 + pct / 100)
            c = C.first_cost_below(h, target)
            t = next((row["time"] for row in h if row["fun"] is not None and row["fun"] <= target), None)
            s[f"cost_to_{pct}pct"] = c
            s[f"time_to_{pct}pct"] = t
    return s


def _landscape_figure(path, details, runs, theta_star):
    plt = C._plt()
    g = details["coarse"]
    F = np.asarray(g["f"], dtype=float)
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=90)
    levels = np.nanmin(F) + (np.nanmax(F) - np.nanmin(F)) * np.linspace(0, 1, 30) ** 3
    cs = ax.contourf(g["theta1"], g["theta0"], F, levels=np.unique(levels), cmap="viridis")
    fig.colorbar(cs, ax=ax, label="f(θ) (tight solves)")
    for r in runs:
        p = np.asarray(r["theta_path"])
        ax.plot(p[:, 1], p[:, 0], "-", lw=0.8, label=r["label"])
    ax.plot(theta_star[1], theta_star[0], "r*", ms=12, label="grid optimum")
    ax.set_xlabel("θ1 = log smoothing")
    ax.set_ylabel("θ0 = log weight")
    ax.set_title("TV: upper-level loss and the runs' θ paths", fontsize=10)
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv=None):
    p = C.make_parser(__doc__.splitlines()[0], seed=19, out="results/tv")
    p.add_argument("--n-images", type=int, default=None, help="Kodak images used (default 24; quick 4)")
    p.add_argument("--size", type=int, default=None, help="image side after resizing (default 96; quick 32)")
    p.add_argument("--sigma", type=float, default=0.1, help="noise level")
    p.add_argument("--runs", nargs="+", default=None,
                   help="runs as maid:EPS0:DELTA0 or fixed:EPS (default: the paper's 13; quick 3)")
    p.add_argument("--no-grid", action="store_true", help="skip the grid search for f*")
    p.add_argument("--grid-tol", type=float, default=1e-6, help="lower-level tolerance of the grid search")
    p.add_argument("--eval-tol", type=float, default=1e-5,
                   help="lower-level tolerance of the final evaluation of each run")
    p.add_argument("--heldout", action="store_true",
                   help="learn on the first --n-train images and evaluate PSNR/SSIM on the others, "
                        "against denoise_tv_chambolle at its best training weight")
    p.add_argument("--n-train", type=int, default=None, help="training images in --heldout (default 16; quick 2)")
    args = p.parse_args(argv)
    quick = args.quick
    n_images = args.n_images or (4 if quick else 24)
    size = args.size or (32 if quick else 96)
    max_iter = args.max_iter or (100 if quick else 1000)
    budget = args.budget or (6000.0 if quick else 2e4)
    heldout = args.heldout
    n_train = (args.n_train or (2 if quick else 16)) if heldout else n_images
    if heldout and not 0 < n_train < n_images:
        raise SystemExit(f"--n-train must lie in [1, {n_images - 1}], got {n_train}")
    tokens = args.runs or (HELDOUT_RUNS if heldout else (QUICK_RUNS if quick else PAPER_RUNS))
    for tk in tokens:
        parse_run(tk)
    do_grid = not args.no_grid and not heldout
    xp = C.array_module(args.backend)
    out = C.prepare_out(args.out)

    clean_all, names = kodak(args.data_dir, size=size, indices=list(range(n_images)))
    noisy_all = clean_all + args.sigma * np.random.default_rng(args.seed).standard_normal(clean_all.shape)
    clean, noisy = clean_all[:n_train], noisy_all[:n_train]
    problem = vl.DenoisingProblem(to_device(noisy, xp), vl.TotalVariation(isotropic=False))
    upper = vl.SquaredError(to_device(clean, xp))
    noisy_metrics = {"f": float(upper.value(to_device(noisy, xp))), "psnr_mean": mean_psnr(noisy, clean),
                     "psnr_batch": batch_psnr(noisy, clean)}

    theta_star = f_star = None
    grid = None
    with C.Timer() as t_grid:
        if do_grid:
            theta_star, f_star, grid = grid_search(TightSolver(problem, upper, xp, args.grid_tol), quick)
    solver_eval = TightSolver(problem, upper, xp, args.eval_tol)
    runs = []
    for tk in tokens:
        runs.append(run_one(problem, upper, xp, tk, budget, max_iter, solver_eval, f_star))
        r = runs[-1]
        print(f"  {r['label']:<22} {r['status']:<17} nit {r['nit']:>4} cost {r['cost']:>7} f {r['fun']:.6f} "
              f"PSNR {r['psnr_mean']:.3f} time {r['wall_time']:.1f}s", flush=True)

    heldout_metrics = None
    if heldout:
        clean_te, noisy_te = clean_all[n_train:], noisy_all[n_train:]
        prob_te = vl.DenoisingProblem(to_device(noisy_te, xp), vl.TotalVariation(isotropic=False))
        ev = TightSolver(prob_te, vl.SquaredError(to_device(clean_te, xp)), xp, args.eval_tol)
        learned = {}
        for r in runs:
            x = to_numpy(ev.solve(np.asarray([math.log(r["weight"]), math.log(r["smoothing"])]), x0=None).x)
            learned[r["label"]] = {"psnr_mean": mean_psnr(x, clean_te), "psnr_batch": batch_psnr(x, clean_te),
                                   "ssim_mean": mean_ssim(x, clean_te),
                                   "theta": [math.log(r["weight"]), math.log(r["smoothing"])]}
        with C.Timer() as t_ch:
            w_best, psnr_train, ch_details = chambolle_best(noisy, clean, quick)
        from skimage.restoration import denoise_tv_chambolle

        den = np.stack([denoise_tv_chambolle(y, weight=w_best) for y in noisy_te])
        heldout_metrics = {
            "train_indices": list(range(n_train)), "test_indices": list(range(n_train, n_images)),
            "test_names": names[n_train:],
            "learned_tv": learned,
            "chambolle": {"weight": w_best, "train_psnr_mean": psnr_train, "psnr_mean": mean_psnr(den, clean_te),
                          "psnr_batch": batch_psnr(den, clean_te), "ssim_mean": mean_ssim(den, clean_te),
                          "search": ch_details, "search_time": t_ch.seconds,
                          "note": "skimage denoise_tv_chambolle (isotropic TV, Chambolle's projection), "
                                  "applied per image; weight chosen by mean PSNR on the training images"},
            "noisy": {"psnr_mean": mean_psnr(noisy_te, clean_te), "psnr_batch": batch_psnr(noisy_te, clean_te),
                      "ssim_mean": mean_ssim(noisy_te, clean_te)},
        }

    figs = {}
    plot_runs = [{"label": r["label"], "method": r["method"], "history": r["history"], "eps0": r["eps0"]}
                 for r in runs]
    figs["loss_vs_cost"] = C.plot_loss_vs_cost(
        out / "tv_loss_vs_cost.png", plot_runs, fstar=f_star,
        title=f"TV, {n_train} Kodak images {size}×{size}: " + ("f − f* (grid)" if f_star else "upper loss")
        + " vs cost")
    figs["eps_path"] = C.plot_eps_path(out / "tv_eps_path.png", plot_runs, title="TV: accuracy ε_k per run")
    if grid is not None:
        figs["landscape"] = _landscape_figure(out / "tv_landscape.png", grid, runs, theta_star)

    metrics = {
        "experiment": "tv", "quick": quick, "heldout": heldout, "seed": args.seed,
        "scale": {"n_images": n_images, "n_train": n_train, "size": size, "sigma": args.sigma, "budget": budget,
                  "max_iter": max_iter, "images": names},
        "noise": f"clean + {args.sigma} * numpy.random.default_rng({args.seed}).standard_normal(clean.shape), "
                 f"clean of shape {list(clean_all.shape)}",
        "noisy": noisy_metrics,
        "f_star": f_star, "theta_star": theta_star, "grid": grid, "grid_time": t_grid.seconds,
        "machine": C.machine_info(args.backend), "runs": runs, "heldout_eval": heldout_metrics,
        "figures": {k: os.path.basename(str(v)) for k, v in figs.items()},
    }
    C.write_json(out / "metrics.json", metrics)

    print(f"TV: {n_train} Kodak images {size}x{size}, sigma {args.sigma}, noisy PSNR {noisy_metrics['psnr_mean']:.3f}"
          + (f"; grid f* = {f_star:.6f} at theta = ({theta_star[0]:.4f}, {theta_star[1]:.4f}) "
             f"[{t_grid.seconds:.0f}s]" if f_star is not None else ""))
    hdr = (f"{'run':<22}{'status':<18}{'nit':>5}{'cost':>8}{'f':>11}{'f tight':>11}{'rel gap':>10}"
           f"{'θ0':>8}{'θ1':>8}{'PSNR':>8}{'bPSNR':>8}{'cost@.5%':>9}{'time s':>8}{'ε mono':>7}{'cert':>5}")
    print(hdr)
    for r in runs:
        th = [math.log(r["weight"]), math.log(r["smoothing"])]
        print(f"{r['label']:<22}{r['status']:<18}{r['nit']:>5}{r['cost']:>8}{r['fun']:>11.6f}{r['f_tight']:>11.6f}"
              f"{C.fmt(r.get('rel_gap'), '.2e'):>10}{th[0]:>8.3f}{th[1]:>8.3f}{r['psnr_mean']:>8.3f}"
              f"{r['psnr_batch']:>8.3f}{C.fmt(r.get('cost_to_0.5pct')):>9}{r['wall_time']:>8.1f}"
              f"{str(r['eps_monotone'])[0]:>7}{r['certified_decrease']['violations']:>5}")
    if heldout_metrics:
        hm = heldout_metrics
        print(f"held-out images {hm['test_indices'][0]}..{hm['test_indices'][-1]}: noisy PSNR "
              f"{hm['noisy']['psnr_mean']:.3f} SSIM {hm['noisy']['ssim_mean']:.4f}")
        for lab, v in hm["learned_tv"].items():
            print(f"  learned TV ({lab}): PSNR {v['psnr_mean']:.3f} SSIM {v['ssim_mean']:.4f}")
        ch = hm["chambolle"]
        print(f"  denoise_tv_chambolle (weight {ch['weight']:.4f}): PSNR {ch['psnr_mean']:.3f} SSIM {ch['ssim_mean']:.4f}")
    print(f"wrote {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
