"""Reproduce the Field-of-Experts experiment of the MAID paper (maid-spec §6.3, claims §8.4, 8.6).

Paper scale (the default): 48 filters of 7×7 (2449 parameters: θ0, 48 log
weights, 48 log smoothings, 48·49 taps), 20 Kodak images at 256×256 grayscale.
The reference code takes indices 5..24 of its 25-file list (which includes the
non-standard kodim25); with the 24 standard images this script uses indices
4..23 (kodim05..kodim24) for learning and keeps kodim01..kodim04 (indices 0..3),
which the paper never uses, for a held-out evaluation.  Noise σ = 0.1, drawn for
all 24 images at once as ``default_rng(seed).standard_normal((24, size, size))``
(seed 31), so a subset sees the same noise at any scale.

Methods at equal cost (``--budget`` lower-level + CG iterations each):

* MAID, ε0 = δ0 = ``--eps0`` (0.1), α0 = 0.01, ρ = ν = 0.5, ν̄ = 1.05; with
  the error bound from estimated constants (FoE has no closed-form L_J, ‖J‖);
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

Reported: upper loss against cost, the loss each method has at budget/10,
budget/3 and budget, ε paths, PSNR / SSIM on the training and held-out images
(tight lower-level solves at the learned θ), the learned filters.

The full scale needs a GPU (``--backend cupy``); on a CPU use a reduced scale,
e.g. ``--n-filters 48 --filter-size 7 --n-images 4 --size 64``.  The scale is
printed and stored under ``"scale"`` in metrics.json.  ``--quick``: 4 filters
3×3, 2 training images of 32×32, 2 held-out images, a tiny budget.

Writes ``metrics.json``, ``thetas.npz`` (final θ of every method) and
``foe_loss_vs_cost.png``, ``foe_eps_path.png``, ``foe_filters.png`` into ``--out``.
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
from reproduce_tv import batch_psnr, chambolle_best, mean_psnr, mean_ssim  # noqa: E402

import varlearn as vl  # noqa: E402
from varlearn.backend import to_device, to_numpy  # noqa: E402
from varlearn.bilevel.checkpoint import atomic_write_bytes  # noqa: E402
from varlearn.datasets import kodak  # noqa: E402

PAPER = {"n_filters": 48, "filter_size": 7, "n_images": 20, "size": 256, "budget": 1e5, "max_iter": 10000}
QUICK = {"n_filters": 4, "filter_size": 3, "n_images": 2, "size": 32, "budget": 1500.0, "max_iter": 40}
N_KODAK = 24
FIRST_TRAIN = 4  # paper: indices 5..24 of a 25-file list -> 4..23 of the 24 standard images
METHODS = ("maid", "hoag-geometric", "hoag-quadratic", "hoag-cubic", "fixed", "maid-nobound")


def _parse_indices(text):
    out = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def method_options(method, args, budget, max_iter):
    common = {"budget": budget, "max_iter": max_iter}
    if method in ("maid", "maid-nobound"):
        opts = dict(common, eps0=args.eps0, delta0=args.eps0, step0=0.01, rho=0.5, nu=0.5, nu_inc=1.05)
        if method == "maid":
            return "maid", opts, f"MAID ε0=δ0={args.eps0:g}"
        return "maid", dict(opts, bound=False), f"MAID, certificate off, ε0=δ0={args.eps0:g}"
    if method == "fixed":
        return "fixed", dict(common, eps0=args.fixed_eps, delta0=args.fixed_eps, step0=0.01, rho=0.5), \
            f"fixed ε=δ={args.fixed_eps:g}"
    if method.startswith("hoag-"):
        decay = method.split("-", 1)[1]
        opts = dict(common, eps0=args.eps0, decay=decay)
        if args.hoag_step0 is not None:
            opts["step0"] = args.hoag_step0
        return "hoag", opts, f"HOAG {decay}" + ("" if args.hoag_step0 is None else f", α0={args.hoag_step0:g}")
    raise SystemExit(f"--methods: unknown method {method!r}; choose from {', '.join(METHODS)}")


def evaluate(problem_factory, theta, clean, xp, tol, x0=None):
    """Tight lower-level solve at θ for the given noisy images: PSNR (mean, batch), SSIM, U."""
    problem, upper = problem_factory()
    r = vl.solve_lower(problem, to_device(np.asarray(theta), xp), tol, x0=x0, maxiter=50000)
    x = to_numpy(r.x)
    return {"psnr_mean": mean_psnr(x, clean), "psnr_batch": batch_psnr(x, clean), "ssim_mean": mean_ssim(x, clean),
            "f": float(upper.value(r.x)), "solve_iter": int(r.nit), "solve_status": r.status}


def _filters_figure(path, reg, theta, title):
    plt = C._plt()
    parts = reg.split(to_device(np.asarray(theta), np))
    filt = np.asarray(to_numpy(parts["filters"]))
    w = np.exp(float(to_numpy(parts["log_global_weight"])) + np.asarray(to_numpy(parts["log_weights"])))
    order = np.argsort(-w)
    k = filt.shape[0]
    cols = min(12, k)
    rows = int(math.ceil(k / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(0.8 * cols + 0.4, 0.9 * rows + 0.6), dpi=90, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for pos, i in enumerate(order):
        ax = axes.ravel()[pos]
        f = filt[i]
        m = max(abs(f.min()), abs(f.max()), 1e-12)
        ax.imshow(f, cmap="gray", vmin=-m, vmax=m, interpolation="nearest")
        ax.set_title(f"{w[i]:.2g}", fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def chambolle_baseline(noisy_tr, clean_tr, noisy_te, clean_te, quick):
    """``denoise_tv_chambolle`` at the weight that maximises the mean PSNR on the training images.

    Returns the weight and the held-out mean PSNR, batch PSNR and mean SSIM.
    """
    from skimage.restoration import denoise_tv_chambolle

    with C.Timer() as t:
        w, psnr_train, _ = chambolle_best(noisy_tr, clean_tr, quick)
    den = np.stack([denoise_tv_chambolle(y, weight=w) for y in noisy_te])
    return {"weight": w, "train_psnr_mean": psnr_train, "psnr_mean": mean_psnr(den, clean_te),
            "psnr_batch": batch_psnr(den, clean_te), "ssim_mean": mean_ssim(den, clean_te),
            "search_time": t.seconds,
            "note": "skimage denoise_tv_chambolle per image, weight chosen by mean PSNR on the training images"}


def main(argv=None):
    p = C.make_parser(__doc__.splitlines()[0], seed=31, out="results/foe")
    p.add_argument("--n-filters", type=int, default=None, help="number of filters (paper 48; quick 4)")
    p.add_argument("--filter-size", type=int, default=None, help="filter side, odd (paper 7; quick 3)")
    p.add_argument("--n-images", type=int, default=None,
                   help="training images, Kodak indices 4, 5, ... (paper 20 = indices 4..23; quick 2)")
    p.add_argument("--size", type=int, default=None, help="image side after resizing (paper 256; quick 32)")
    p.add_argument("--heldout-indices", default=None,
                   help="held-out Kodak indices, e.g. '0-3' (default 0-3, the images the paper never uses; "
                        "quick 0-1)")
    p.add_argument("--sigma", type=float, default=0.1, help="noise level")
    p.add_argument("--methods", nargs="+", default=list(METHODS[:5]), help=f"methods to run, from {METHODS}")
    p.add_argument("--eps0", type=float, default=0.1, help="initial accuracy of MAID and HOAG")
    p.add_argument("--fixed-eps", type=float, default=0.1, help="accuracy of the fixed-accuracy run")
    p.add_argument("--hoag-step0", type=float, default=None,
                   help="HOAG's first step (default: HOAG's rule 1/L, L = ||z0||/sqrt(p), a step of norm "
                        "sqrt(p) in θ)")
    p.add_argument("--no-tv", action="store_true",
                   help="skip the TV baselines (TV learned by MAID, denoise_tv_chambolle at its best weight)")
    p.add_argument("--eval-tol", type=float, default=1e-3, help="lower-level tolerance of the PSNR evaluation")
    args = p.parse_args(argv)
    quick = args.quick
    base = QUICK if quick else PAPER
    K = args.n_filters or base["n_filters"]
    s = args.filter_size or base["filter_size"]
    n_images = args.n_images or base["n_images"]
    size = args.size or base["size"]
    budget = args.budget or base["budget"]
    max_iter = args.max_iter or base["max_iter"]
    train_idx = list(range(FIRST_TRAIN, FIRST_TRAIN + n_images))
    if train_idx[-1] >= N_KODAK:
        raise SystemExit(f"--n-images must be at most {N_KODAK - FIRST_TRAIN} (Kodak indices 4..23)")
    test_idx = _parse_indices(args.heldout_indices or ("0-1" if quick else "0-3"))
    if set(test_idx) & set(train_idx) or any(not 0 <= i < N_KODAK for i in test_idx):
        raise SystemExit(f"--heldout-indices must be Kodak indices 0..23 outside the training ones {train_idx}")
    xp = C.array_module(args.backend)
    out = C.prepare_out(args.out)

    scale = {"n_filters": K, "filter_size": s, "n_images": n_images, "size": size, "budget": budget,
             "max_iter": max_iter, "train_indices": train_idx, "heldout_indices": test_idx}
    reduced = any(scale[k] != PAPER[k] for k in ("n_filters", "filter_size", "n_images", "size"))
    scale["reduced"] = reduced
    scale["paper"] = dict(PAPER)
    if reduced:
        scale["note"] = (f"REDUCED SCALE: {K} filters {s}x{s}, {n_images} images {size}x{size} "
                         f"(paper: 48 filters 7x7, 20 images 256x256)")
        print(scale["note"], flush=True)

    idx_all = sorted(set(train_idx) | set(test_idx))
    imgs, names_all = kodak(args.data_dir, size=size, indices=idx_all)
    pos = {i: k for k, i in enumerate(idx_all)}
    noise = np.random.default_rng(args.seed).standard_normal((N_KODAK, size, size))
    clean_tr = imgs[[pos[i] for i in train_idx]]
    noisy_tr = clean_tr + args.sigma * noise[train_idx]
    clean_te = imgs[[pos[i] for i in test_idx]]
    noisy_te = clean_te + args.sigma * noise[test_idx]
    reg = vl.FieldOfExperts(n_filters=K, size=s, rng=args.seed)
    theta0 = reg.init_params()
    scale["n_params"] = int(reg.n_params)

    problem = vl.DenoisingProblem(to_device(noisy_tr, xp), reg)
    upper = vl.SquaredError(to_device(clean_tr, xp))

    def factory_tr():
        return problem, upper

    def factory_te():
        return vl.DenoisingProblem(to_device(noisy_te, xp), reg), vl.SquaredError(to_device(clean_te, xp))

    runs, thetas = [], {}
    for m in args.methods:
        method, opts, label = method_options(m, args, budget, max_iter)
        with C.Timer() as t:
            res, err = C.guarded_minimize(problem, upper, to_device(theta0, xp), method, opts)
        ev_tr = ev_te = None
        if err is None:
            theta = to_numpy(res["theta"])
            thetas[m] = theta
            ev_tr = evaluate(factory_tr, theta, clean_tr, xp, args.eval_tol, x0=res["x"])
            ev_te = evaluate(factory_te, theta, clean_te, xp, args.eval_tol)
        extra = {"key": m, "train_eval": ev_tr, "heldout_eval": ev_te, "script_wall_time": t.seconds,
                 "error": err,
                 "loss_at_cost": {f"{c:g}": C.value_at_cost(res["history"], c)
                                  for c in (budget / 10, budget / 3, budget)}}
        runs.append(C.summarize_run(res, label, extra=extra))
        r = runs[-1]
        if err is None:
            print(f"  {label:<26} {r['status']:<17} nit {r['nit']:>5} cost {r['cost']:>8} f {r['fun']:.5g} "
                  f"PSNR train {ev_tr['psnr_mean']:.3f} held-out {ev_te['psnr_mean']:.3f} "
                  f"time {r['wall_time']:.1f}s", flush=True)
        else:
            print(f"  {label:<26} FAILED: {err}", flush=True)

    tv = None
    if not args.no_tv:
        tv_reg = vl.TotalVariation(isotropic=False)
        tv_prob = vl.DenoisingProblem(to_device(noisy_tr, xp), tv_reg)
        with C.Timer():
            res = vl.minimize_bilevel(tv_prob, upper, to_device(np.array([-5.0, -5.0]), xp), "maid",
                                      options={"eps0": 0.1, "delta0": 0.1, "step0": 0.01, "rho": 0.5, "nu": 0.5,
                                               "budget": budget, "max_iter": max_iter})
        th = to_numpy(res.theta)
        ev_tr = evaluate(lambda: (tv_prob, upper), th, clean_tr, xp, args.eval_tol, x0=res.x)
        ev_te = evaluate(lambda: (vl.DenoisingProblem(to_device(noisy_te, xp), tv_reg),
                                  vl.SquaredError(to_device(clean_te, xp))), th, clean_te, xp, args.eval_tol)
        tv = C.summarize_run(res, "learned TV (MAID)", extra={"train_eval": ev_tr, "heldout_eval": ev_te})
        thetas["tv"] = th
        print(f"  learned TV (MAID)  f {tv['fun']:.5g} PSNR train {ev_tr['psnr_mean']:.3f} "
              f"held-out {ev_te['psnr_mean']:.3f}", flush=True)

    chambolle = None
    if not args.no_tv:
        chambolle = chambolle_baseline(noisy_tr, clean_tr, noisy_te, clean_te, quick)
        print(f"  denoise_tv_chambolle weight {chambolle['weight']:.4g}: PSNR train {chambolle['train_psnr_mean']:.3f} "
              f"held-out {chambolle['psnr_mean']:.3f} SSIM {chambolle['ssim_mean']:.4f}", flush=True)

    noisy_eval = {"train": {"psnr_mean": mean_psnr(noisy_tr, clean_tr), "ssim_mean": mean_ssim(noisy_tr, clean_tr)},
                  "heldout": {"psnr_mean": mean_psnr(noisy_te, clean_te), "ssim_mean": mean_ssim(noisy_te, clean_te)}}

    import io

    buf = io.BytesIO()
    np.savez(buf, theta0=theta0, **{k.replace("-", "_"): v for k, v in thetas.items()})
    atomic_write_bytes(out / "thetas.npz", buf.getvalue())

    figs = {}
    plot_runs = [{"label": r["label"], "method": r["method"], "history": r["history"], "eps0": r["options"]["eps0"]}
                 for r in runs]
    tv_curve = [] if tv is None else [{"label": "learned TV (MAID), same data", "method": "maid",
                                       "history": tv["history"], "linestyle": "-.", "color": "k"}]
    figs["loss_vs_cost"] = C.plot_loss_vs_cost(
        out / "foe_loss_vs_cost.png", plot_runs + tv_curve, logy=True,
        title=f"FoE {K}×{s}×{s}, {n_images} images {size}²: upper loss vs cost")
    figs["eps_path"] = C.plot_eps_path(out / "foe_eps_path.png", plot_runs, title="FoE: accuracy ε_k (MAID vs HOAG)")
    key = "maid" if "maid" in thetas else next(iter(thetas))
    figs["filters"] = _filters_figure(out / "foe_filters.png", reg, thetas[key],
                                      f"learned filters ({key}), sorted by weight e^(θ0+θi)")

    metrics = {
        "experiment": "foe", "quick": quick, "seed": args.seed, "scale": scale,
        "images": {"train": [names_all[pos[i]] for i in train_idx], "heldout": [names_all[pos[i]] for i in test_idx]},
        "noise": f"clean + {args.sigma} * default_rng({args.seed}).standard_normal((24, {size}, {size}))[indices]",
        "noisy": noisy_eval, "machine": C.machine_info(args.backend), "runs": runs, "tv_baseline": tv,
        "chambolle_baseline": chambolle,
        "figures": {k: os.path.basename(str(v)) for k, v in figs.items()},
    }
    C.write_json(out / "metrics.json", metrics)

    print(("REDUCED SCALE " if reduced else "paper scale ") +
          f"FoE: {K} filters {s}x{s} ({reg.n_params} parameters), train Kodak {train_idx[0]}..{train_idx[-1]} "
          f"({n_images} images {size}x{size}), held-out {test_idx}; budget {budget:g}")
    print(f"noisy PSNR train {noisy_eval['train']['psnr_mean']:.3f}, held-out {noisy_eval['heldout']['psnr_mean']:.3f}")
    print(f"{'method':<26}{'status':<18}{'nit':>6}{'cost':>9}{'f@B/10':>10}{'f@B/3':>10}{'f@B':>10}"
          f"{'PSNR tr':>9}{'PSNR ho':>9}{'SSIM ho':>9}{'time s':>8}")
    for r in runs + ([tv] if tv else []):
        lac = r.get("loss_at_cost", {})
        vals = [lac.get(f"{c:g}") for c in (budget / 10, budget / 3, budget)] if lac else [None, None, r["fun"]]
        tr, ho = r["train_eval"] or {}, r["heldout_eval"] or {}
        print(f"{r['label']:<26}{r['status']:<18}{r['nit']:>6}{r['cost']:>9}"
              + "".join(f"{C.fmt(v, '.5g'):>10}" for v in vals)
              + f"{C.fmt(tr.get('psnr_mean'), '.3f'):>9}{C.fmt(ho.get('psnr_mean'), '.3f'):>9}"
              f"{C.fmt(ho.get('ssim_mean'), '.4f'):>9}{r['wall_time']:>8.1f}")
        if r.get("error"):
            print(f"    {r['error']}")
    if chambolle:
        print(f"{'TV chambolle':<26}{'best weight':<18}{'':>6}{'':>9}{'':>10}{'':>10}{'':>10}"
              f"{chambolle['train_psnr_mean']:>9.3f}{chambolle['psnr_mean']:>9.3f}{chambolle['ssim_mean']:>9.4f}"
              f"{chambolle['search_time']:>8.1f}")
    print(f"wrote {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
