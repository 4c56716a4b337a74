"""Self-Tuning Networks against random and grid search at equal cost, for denoising (STN spec §7).

Data: Kodak images 5-24 (grayscale, resized to ``--size``) are split by image
into training and ``--n-val`` validation images; the test images are Kodak 1-4
and scikit-image's natural images (``--test-builtin``), at the same size.
For every noise level σ in ``--sigmas`` (/255) and every seed, one STN run
(STN-DnCNN-lite, tuning the training-noise level and the weight decay) is
compared with random search and with a grid over the training-noise level,
each trial a full fixed-λ training of the same network for the same number of
weight steps, with ``K = floor(C_STN / C_trial)`` trials (equal cost); the
searches are then extended to ``--factor`` times that cost for the cost plot.
On the same test images: ``denoise_tv_chambolle`` at the weight that
maximises the mean PSNR of the training images, and TV learned by MAID
(``--no-tv`` skips both), on the first 4 training images; a Field of Experts
(``--foe-filters`` x ``--foe-size``², certificate off) learned by MAID on the
central ``--foe-crop``² crops of the same noisy images, ``--foe-budget``
lower-level + CG iterations (0 skips it).  ``--no-stn`` runs only these baselines.

Writes ``metrics.json`` and ``stn_cost_sigma<S>.png`` (best validation PSNR so
far against cost, first seed), ``stn_time_sigma<S>.png`` (against seconds),
``stn_schedules_sigma<S>.png`` (λ trajectories of every seed) into ``--out``.
``--quick``: 2+1 Kodak images of 48x48, two builtin test images, one σ, two
seeds, a few steps of a 3-layer net (seconds; used by the test suite).
"""
from __future__ import annotations

import sys
import time

import numpy as np

import varlearn as vl
from varlearn import experiments as E
from varlearn.datasets import builtin_images, kodak
from varlearn.evaluation import chambolle_baseline, evaluate_theta
from varlearn.metrics import psnr_per_image
from varlearn.stn import experiment as X

FULL = {"size": 128, "n_train": 20, "n_val": 4, "sigmas": "15,25,50", "seeds": 3, "steps": 120, "depth": 5,
        "channels": 16, "batch_size": 16, "patch_size": 32, "val_patch_size": 48, "test_builtin": "camera,moon,coins,"
        "astronaut,coffee,chelsea", "factor": 1.5, "tv_budget": 3000.0, "lr": 1e-3, "foe_budget": 4e4,
        "foe_filters": 8, "foe_size": 5, "foe_crop": 64}
QUICK = {"size": 48, "n_train": 3, "n_val": 1, "sigmas": "25", "seeds": 2, "steps": 30, "depth": 3, "channels": 6,
         "batch_size": 4, "patch_size": 16, "val_patch_size": 16, "test_builtin": "camera,moon", "factor": 1.5,
         "tv_budget": 200.0, "lr": 3e-3, "foe_budget": 800.0, "foe_filters": 4, "foe_size": 3, "foe_crop": 16}
FIRST_TRAIN = 4  # Kodak 5-24 are indices 4..23


def parse(argv):
    p = E.make_parser(__doc__.split("\n")[0], seed=0, out="runs/stn")
    for k, v in FULL.items():
        flag = "--" + k.replace("_", "-")
        p.add_argument(flag, type=type(v), default=None, help=f"default {v} ({'quick: ' + str(QUICK[k])})")
    p.add_argument("--threads", type=int, default=None, help="numba/BLAS threads (default: unchanged)")
    p.add_argument("--no-tv", action="store_true", help="skip the TV baselines")
    p.add_argument("--no-stn", action="store_true", help="run only the baselines (no STN, no searches)")
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    for k, v in base.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    try:
        args.sigma_list = [float(s) / 255.0 for s in args.sigmas.split(",") if s.strip()]
    except ValueError:
        p.error(f"--sigmas: comma-separated numbers (/255) expected, got {args.sigmas!r}")
    if not args.sigma_list or min(args.sigma_list) <= 0:
        p.error(f"--sigmas must be positive numbers, got {args.sigmas!r}")
    for k in ("size", "n_train", "n_val", "seeds", "steps", "depth", "channels", "batch_size", "patch_size",
              "val_patch_size", "foe_filters", "foe_size", "foe_crop"):
        if getattr(args, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be a positive integer, got {getattr(args, k)}")
    if not 2 <= args.n_train <= 20 or args.n_val >= args.n_train:
        p.error(f"--n-train must be in 2..20 (Kodak 5-24) and --n-val below it, got {args.n_train}, {args.n_val}")
    if max(args.patch_size, args.val_patch_size) > args.size:
        p.error(f"--patch-size and --val-patch-size must be at most --size {args.size}")
    if not args.foe_size <= args.foe_crop <= args.size:
        p.error(f"--foe-crop must be in [--foe-size, --size] = [{args.foe_size}, {args.size}], got {args.foe_crop}")
    if not args.foe_budget >= 0:
        p.error(f"--foe-budget must be >= 0 (0 skips the FoE baseline), got {args.foe_budget}")
    if args.factor < 1:
        p.error(f"--factor must be >= 1, got {args.factor}")
    return args


def main(argv=None):
    args = parse(argv)
    xp = E.array_module(args.backend)
    t_start = time.perf_counter()
    train_idx = list(range(FIRST_TRAIN, FIRST_TRAIN + args.n_train))
    imgs, names = E.load_data(kodak, args.data_dir, size=args.size, indices=[0, 1, 2, 3] + train_idx)
    bnames = [s.strip() for s in args.test_builtin.split(",") if s.strip()]
    bimgs = E.load_data(builtin_images, bnames, size=args.size)
    out = E.prepare_out(args.out)
    pool, pool_names = imgs[4:], names[4:]
    tr, va = X.split_by_image(len(pool), args.n_val, args.seed)
    test_clean = np.concatenate([imgs[:4], bimgs]).astype(np.float64)
    test_names = list(names[:4]) + bnames
    train = [vl.backend.to_device(pool[i].astype(np.float32), xp) for i in tr]
    val = [vl.backend.to_device(pool[i].astype(np.float32), xp) for i in va]
    options = {"batch_size": args.batch_size, "patch_size": args.patch_size, "val_batch_size": 8,
               "val_patch_size": args.val_patch_size, "n_eval": 32 if not args.quick else 4,
               "max_steps": args.steps, "eval_every": max(1, args.steps // 8), "lr": args.lr, "hyper_lr": 3e-2}
    scale = {k: getattr(args, k) for k in FULL} | {"train_images": [pool_names[i] for i in tr],
                                                  "val_images": [pool_names[i] for i in va], "test_images": test_names,
                                                  "options": options, "full": FULL, "reduced": True}
    scale["note"] = (f"CPU scale: Kodak resized to {args.size}x{args.size}, {len(tr)} training and {len(va)} "
                     f"validation images, DnCNN {args.depth} layers x {args.channels} channels, {args.steps} steps of "
                     f"{args.batch_size} patches {args.patch_size}x{args.patch_size} (STN spec: BSD400, 8-10 layers, "
                     f"32-64 channels, batch 64-128 of 40x40)")
    print(scale["note"], flush=True)
    metrics = {"scale": scale, "machine": E.machine_info(args.backend), "sigmas": {}, "figures": {}}

    def make(n_hyper, seed):
        return X.make_model("dncnn", n_hyper, {"depth": args.depth, "channels": args.channels}, xp=xp, seed=seed)

    with E.thread_limit(args.threads):
        for sigma in args.sigma_list:
            key = f"{sigma * 255:g}"
            rng = np.random.default_rng([args.seed, int(round(sigma * 255))])
            test_noisy = test_clean + sigma * rng.standard_normal(test_clean.shape)
            entry = {"sigma": sigma, "runs": [], "baselines": {},
                     "noisy_psnr": float(np.mean(psnr_per_image(test_noisy, test_clean)))}
            entry["baselines"] = variational_baselines(pool[tr], sigma, test_clean, test_noisy, args)
            for k in range(0 if args.no_stn else args.seeds):
                seed = args.seed + k
                print(f"sigma {key}/255, seed {seed}:", flush=True)
                res = X.compare_at_equal_cost(lambda n, s=seed: make(n, s), train, val, test_clean, test_noisy,
                                              sigma=sigma, options=options, seed=seed, factor=args.factor,
                                              log=lambda line: print("  " + line, flush=True))
                entry["runs"].append({"seed": seed, **res})
            entry["summary"] = summarize(entry)
            metrics["sigmas"][key] = entry
            if entry["runs"]:
                metrics["figures"].update(figures(entry, key, out))
            print_summary(key, entry["summary"])
    metrics["wall_time"] = time.perf_counter() - t_start
    E.write_metrics(out / "metrics.json", metrics)
    print(f"wrote {out / 'metrics.json'} ({metrics['wall_time']:.0f} s)", flush=True)
    return metrics


def variational_baselines(clean_tr, sigma, test_clean, test_noisy, args):
    """denoise_tv_chambolle at its best training weight, MAID-learned TV and FoE, on the test images."""
    clean_tr = np.asarray(clean_tr[:4], dtype=np.float64)
    noisy_tr = clean_tr + sigma * np.random.default_rng([args.seed, 7]).standard_normal(clean_tr.shape)
    out = {}
    if args.foe_budget > 0:
        f = out["foe_maid"] = X.foe_baseline(clean_tr, noisy_tr, test_clean, test_noisy, n_filters=args.foe_filters,
                                             size=args.foe_size, crop=args.foe_crop, budget=args.foe_budget,
                                             seed=args.seed)
        print(f"  MAID FoE {args.foe_filters}x{args.foe_size}² on {args.foe_crop}² crops ({f['status']},",
              f"cost {f['cost']}, {f['wall_time']:.0f} s): test {f['test']['psnr_mean']:.3f} dB", flush=True)
    if args.no_tv:
        return out
    ch = chambolle_baseline(noisy_tr, clean_tr, test_noisy, test_clean, args.quick)
    ch.pop("search", None)
    reg = vl.TotalVariation(isotropic=True)
    step0 = 0.05 * 96 * 96 / clean_tr[0].size  # the step of `varlearn learn` (scaled to the image size)
    res = vl.minimize_bilevel(vl.DenoisingProblem(noisy_tr, reg), vl.SquaredError(clean_tr), np.array([-5.0, -5.0]),
                              "maid", options={"budget": args.tv_budget, "maxiter": 200, "eps0": 0.1,
                                               "delta0": 0.1, "step0": step0, "rho": 0.5})
    te = evaluate_theta(vl.DenoisingProblem(test_noisy, reg), vl.SquaredError(test_clean), np.asarray(res.theta),
                        1e-3)
    print(f"  chambolle weight {ch['weight']:.4g}: test {ch['psnr_mean']:.3f} dB; MAID TV θ {np.round(res.theta, 3)} "
          f"({res.status}): test {te['psnr_mean']:.3f} dB", flush=True)
    return out | {"chambolle": ch, "tv_maid": {"theta": list(map(float, res.theta)), "status": res.status,
                                         "cost": int(res.n_lower_iter + res.n_cg_iter), "test": te}}


def summarize(entry):
    """mean ± std over seeds of the test PSNR/SSIM and validation PSNR of every method."""
    s = {"noisy_psnr": entry["noisy_psnr"]}
    for m in ("stn", "random", "grid") if entry["runs"] else ():
        runs = [r[m] for r in entry["runs"]]
        s[m] = {"test_psnr": X.mean_std([r["test"]["psnr_mean"] if r.get("test") else None for r in runs]),
                "test_ssim": X.mean_std([r["test"]["ssim_mean"] if r.get("test") else None for r in runs]),
                "val_psnr": X.mean_std([r["val_psnr"] for r in runs]),
                "cost": X.mean_std([r["cost"] for r in runs])}
    for m in ("random", "grid") if entry["runs"] else ():
        s["stn"]["beats_" + m] = sum(r["stn"]["val_psnr"] > r[m]["val_psnr"] for r in entry["runs"])
    for name, b in entry["baselines"].items():
        s[name] = {"test_psnr": (b.get("test") or b)["psnr_mean"], "test_ssim": (b.get("test") or b)["ssim_mean"]}
    return s


def figures(entry, key, out):
    """The cost plots (first seed) and the schedules (every seed) of one σ; returns {label: file name}."""
    r0 = entry["runs"][0]
    names = {f"{x}_{key}": f"stn_{x}_sigma{key}.png" for x in ("cost", "time", "schedules")}
    for x in ("cost", "time"):
        curves = {"STN (one run)": X.stn_curve(r0["stn"]["history"], x)}
        for m in ("random", "grid"):
            c = r0[m]["curve"]
            curves[f"{m} search"] = (c[x], c["best_val_psnr"])
        X.plot_cost(curves, out / f"stn_{x}_sigma{key}.png", x=x, stn_cost=r0["stn"]["cost"] if x == "cost" else None,
                    title=f"σ = {key}/255, seed {r0['seed']}", ymin=r0["stn"]["noisy_val_psnr"] - 0.5)
    X.plot_schedules({f"seed {r['seed']}": r["stn"]["history"] for r in entry["runs"]},
                     out / f"stn_schedules_sigma{key}.png")
    return names


def print_summary(key, s):
    print(f"sigma {key}/255 (noisy {s['noisy_psnr']:.2f} dB): " + "; ".join(
        [f"{m} test {s[m]['test_psnr']['mean']:.2f}±{s[m]['test_psnr']['std']:.2f} dB val "
         f"{s[m]['val_psnr']['mean']:.2f}" for m in ("stn", "random", "grid") if m in s]
        + [f"{m} {s[m]['test_psnr']:.2f} dB / {s[m]['test_ssim']:.3f}" for m in ("chambolle", "tv_maid", "foe_maid")
           if m in s]), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
