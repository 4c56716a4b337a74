"""Reproduce the MNIST multinomial-logistic-regression experiment of the MAID paper (maid-spec §6.4, claim §8.4).

Lower level: cross-entropy of a linear model (no bias) on MNIST digits resized
to 12×12 (144 features in [0, 1]) plus ½Σ e^θ ⊙ W², one ridge weight per
coefficient (1440 hyperparameters), θ0 = −3.  Upper level: mean cross-entropy
on a validation set.  Methods at equal cost (``--budget``):

* ``maid``: MAID with ε0 = δ0 = 0.1, ρ = 0.9, ν̄ = 1.05, ν = 0.5 and α0 = HOAG's
  first step 1/L, L = ‖z0‖/√p (z0: the hypergradient at θ0 with tolerance 0.1);
  the Theorem-2.1 certificate uses the problem's true constants
  (μ = min e^θ, L_H, L_J);
* ``maid-nobound``: the same with the certificate off (``bound=False``): ε is
  only adapted by line-search failures (the deepinv default); accepted steps
  are still certified decreases of f.  It uses α0 = 100 and ρ = 0.5
  (``--nobound-step0``, ``--nobound-rho``): with the paper's α0 (≈ 1400 at
  θ0 = −3) the first trial points have ridge weights near e^−17, whose lower
  problems cannot be certified within ``--lower-maxiter`` iterations, so
  MAID spends its first ~10^4 iterations backtracking;
* ``hoag-geometric``, ``hoag-quadratic``, ``hoag-cubic``: HOAG (ε0 = 0.1).

``--split paper`` (default) is the paper's setup: the lower level uses the
60000 training digits and the upper level the 10000 *test* digits, so the
reported "validation accuracy" is measured on the data the hyperparameters were
fitted to.  ``--split holdout`` is a proper protocol: the last ``--n-holdout``
(10000) of the training digits form the upper-level (validation) set, the
other 50000 the lower level, and accuracy is also reported on the untouched
10000 test digits.

``--quick``: 1000 training and 500 test digits resized to 8×8 (640
hyperparameters; holdout 250), a budget of 6000 and at most 500 iterations per
lower-level solve.

The lower level is a dense (n × 144) @ (144 × 10) product per iteration; on
shared cores OpenBLAS threads stall each other, so ``--blas-threads 1`` (the
default with ``--quick``) can be several times faster when other jobs compete.

Writes ``metrics.json`` and ``mlr_loss_vs_cost.png``, ``mlr_eps_path.png``,
``mlr_accuracy_vs_cost.png`` into ``--out``.
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
from varlearn.datasets import mnist  # noqa: E402

METHODS = ("maid", "maid-nobound", "hoag-geometric", "hoag-quadratic", "hoag-cubic")


def load(args, quick):
    """Features (n, 144) in [0, 1] and labels for the lower level, the upper level and the test set."""
    n_train = args.n_train or (1000 if quick else 60000)
    n_test = args.n_test or (500 if quick else 10000)
    Xtr, ytr = mnist(args.data_dir, "train", size=args.image_size)
    Xte, yte = mnist(args.data_dir, "test", size=args.image_size)
    Xtr = Xtr.reshape(len(Xtr), -1)[:n_train]
    ytr = ytr[:n_train]
    Xte = Xte.reshape(len(Xte), -1)[:n_test]
    yte = yte[:n_test]
    if args.split == "paper":
        return {"lower": (Xtr, ytr), "upper": (Xte, yte), "test": None,
                "desc": f"lower: first {n_train} training digits; upper (validation): first {n_test} test digits"}
    n_hold = args.n_holdout or (250 if quick else 10000)
    if not 0 < n_hold < n_train:
        raise SystemExit(f"--n-holdout must lie in [1, {n_train - 1}], got {n_hold}")
    k = n_train - n_hold
    return {"lower": (Xtr[:k], ytr[:k]), "upper": (Xtr[k:], ytr[k:]), "test": (Xte, yte),
            "desc": f"lower: training digits 0..{k - 1}; upper (validation): training digits {k}..{n_train - 1}; "
                    f"test: first {n_test} test digits (never used for learning)"}


def make_figures(out, runs, image_size, split):
    """Loss vs cost, ε path and validation accuracy vs cost, from the ``runs`` of ``metrics.json``.

    Returns ``{name: path}``.  Accuracy, like the loss, is drawn as a staircase
    (that of the last iterate completed at each cost).
    """
    figs = {}
    plot_runs = [{"label": r["label"], "method": "hoag" if r["method"] == "hoag" else
                  ("maid" if r["key"] == "maid" else "fixed"), "history": r["history"],
                  "eps0": r["options"]["eps0"]} for r in runs]
    figs["loss_vs_cost"] = C.plot_loss_vs_cost(
        out / "mlr_loss_vs_cost.png", plot_runs, logy=True, ylabel="validation cross-entropy",
        title=f"MNIST {image_size}×{image_size} logistic regression ({split} split): upper loss vs cost")
    figs["eps_path"] = C.plot_eps_path(out / "mlr_eps_path.png", plot_runs, title="MNIST: accuracy ε_k")
    plt = C._plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=90)
    for r, pr in zip(runs, plot_runs):
        cost = np.asarray(r["history"]["cost"][1:len(r["val_accuracy_path"]) + 1], dtype=float)
        acc = np.asarray(r["val_accuracy_path"][:cost.size], dtype=float)
        ax.plot(np.maximum(cost, 1), acc, C._STYLES[pr["method"]], lw=1.0, label=r["label"], drawstyle="steps-post")
    ax.set_xscale("log")
    ax.set_xlabel("cost (lower-level + CG iterations)")
    ax.set_ylabel("validation accuracy")
    figs["accuracy_vs_cost"] = C.finish_figure(plt, fig, ax, out / "mlr_accuracy_vs_cost.png",
                                               f"MNIST ({split} split): validation accuracy vs cost", len(runs))
    return figs


def main(argv=None):
    p = C.make_parser(__doc__.splitlines()[0], seed=23, out="results/mlr")
    p.add_argument("--split", choices=["paper", "holdout"], default="paper",
                   help="paper: upper level on the test digits (as in the paper); holdout: upper level on "
                        "held-out training digits, test accuracy on the untouched test digits")
    p.add_argument("--n-train", type=int, default=None, help="training digits used (default 60000; quick 1000)")
    p.add_argument("--n-test", type=int, default=None, help="test digits used (default 10000; quick 250)")
    p.add_argument("--n-holdout", type=int, default=None,
                   help="with --split holdout: training digits moved to the upper level (default 10000; quick 250)")
    p.add_argument("--image-size", type=int, default=None, help="digits are resized to this side (default 12; quick 8)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), help=f"methods to run, from {METHODS}")
    p.add_argument("--eps0", type=float, default=0.1, help="initial accuracy of MAID and HOAG")
    p.add_argument("--lower-maxiter", type=int, default=None,
                   help="iteration cap of each lower-level solve (default 2000, the reference's; quick 500)")
    p.add_argument("--maid-step0", type=float, default=None,
                   help="initial step α0 of 'maid' (default: HOAG's first step 1/L, as in the paper)")
    p.add_argument("--maid-rho", type=float, default=0.9,
                   help="step decrease ρ of 'maid' in backtracking (the paper's MNIST run: 0.9)")
    p.add_argument("--nobound-step0", type=float, default=100.0,
                   help="initial step α0 of 'maid-nobound' (chosen from 1, 10, 100 on 10000 training digits; "
                        "see REPRODUCTION.md)")
    p.add_argument("--nobound-rho", type=float, default=0.5, help="step decrease ρ of 'maid-nobound'")
    p.add_argument("--blas-threads", type=int, default=None,
                   help="limit OpenBLAS to this many threads during the runs (default: unchanged; quick 1)")
    args = p.parse_args(argv)
    for name in ("maid_step0", "nobound_step0"):
        v = getattr(args, name)
        if v is not None and not (v > 0 and math.isfinite(v)):
            raise SystemExit(f"--{name.replace('_', '-')} must be a positive finite step, got {v!r}")
    for name in ("maid_rho", "nobound_rho"):
        v = getattr(args, name)
        if not 0 < v < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must lie in (0, 1), got {v!r}")
    with C.blas_threads(args.blas_threads or (1 if args.quick else None)):
        return _main(args)


def _main(args):
    quick = args.quick
    budget = args.budget or (6000.0 if quick else 6e5)
    max_iter = args.max_iter or (50 if quick else 500)
    lower_maxiter = args.lower_maxiter or (500 if quick else 2000)
    args.image_size = args.image_size or (8 if quick else 12)
    for m in args.methods:
        if m not in METHODS:
            raise SystemExit(f"--methods: unknown method {m!r}; choose from {', '.join(METHODS)}")
    xp = C.array_module(args.backend)
    out = C.prepare_out(args.out)

    data = load(args, quick)
    (A, y), (B, yb) = data["lower"], data["upper"]
    n_classes = 10
    problem = vl.MultinomialLogisticProblem(to_device(A, xp), to_device(y, xp), n_classes)
    upper = vl.CrossEntropy(to_device(B, xp), to_device(yb, xp), n_classes)
    test = None
    if data["test"] is not None:
        test = vl.CrossEntropy(to_device(data["test"][0], xp), to_device(data["test"][1], xp), n_classes)
    train_loss = vl.CrossEntropy(to_device(A, xp), to_device(y, xp), n_classes)
    p_dim = problem.n_params
    theta0 = to_device(np.full(p_dim, -3.0), xp)

    # MAID's α0: HOAG's first step 1/L, L = ||z0|| / sqrt(p)
    with C.Timer() as t0:
        hg0 = vl.hypergradient(problem, upper, theta0, args.eps0, args.eps0, bound=False, lower_maxiter=lower_maxiter)
    L0 = hg0.grad_norm / math.sqrt(p_dim)
    step0 = 1.0 / L0 if L0 > 0 and math.isfinite(L0) else 1.0 / 1508.34
    first = {"grad_norm": hg0.grad_norm, "L": L0, "step0": step0, "cost": hg0.n_lower_iter + hg0.n_cg_iter,
             "time": t0.seconds}

    runs = []
    for m in args.methods:
        if m.startswith("maid"):
            method = "maid"
            maid_step0 = args.maid_step0 if args.maid_step0 is not None else step0
            if m == "maid":
                alpha0, rho = maid_step0, args.maid_rho
            else:
                alpha0, rho = args.nobound_step0, args.nobound_rho
            opts = {"eps0": args.eps0, "delta0": args.eps0, "rho": rho, "nu": 0.5, "nu_inc": 1.05, "step0": alpha0,
                    "bound": m == "maid"}
            label = (f"MAID (α0={alpha0:.4g}, ρ={rho:g})" if m == "maid"
                     else f"MAID, certificate off (α0={alpha0:.4g}, ρ={rho:g})")
        else:
            method = "hoag"
            decay = m.split("-", 1)[1]
            opts = {"eps0": args.eps0, "decay": decay}
            label = f"HOAG {decay}"
        opts.update(budget=budget, max_iter=max_iter, seed=args.seed, lower_maxiter=lower_maxiter)
        acc_val, acc_test = [], []

        def callback(r, acc_val=acc_val, acc_test=acc_test):
            if r.x is not None:
                acc_val.append(float(upper.accuracy(r.x)))
                acc_test.append(float(test.accuracy(r.x)) if test is not None else None)

        res, err = C.guarded_minimize(problem, upper, theta0, method, opts, callback=callback)
        theta = to_numpy(res["theta"])
        extra = {"key": m, "error": err, "val_accuracy_path": acc_val,
                 "test_accuracy_path": acc_test if test is not None else None,
                 "theta_stats": {"min": float(theta.min()), "max": float(theta.max()), "mean": float(theta.mean()),
                                 "mu_final": float(np.exp(theta.min()))},
                 "val_accuracy": None, "test_accuracy": None, "test_loss": None, "train_accuracy": None,
                 "train_loss": None}
        x = res["x"]
        if x is not None:
            extra.update({
                "val_accuracy": float(upper.accuracy(x)),
                "test_accuracy": float(test.accuracy(x)) if test is not None else None,
                "test_loss": float(test.value(x)) if test is not None else None,
                "train_accuracy": float(train_loss.accuracy(x)), "train_loss": float(train_loss.value(x)),
            })
        runs.append(C.summarize_run(res, label, extra=extra))
        r = runs[-1]
        if err is not None:
            print(f"  {label:<40} FAILED: {err}", flush=True)
            continue
        print(f"  {label:<40} {r['status']:<17} nit {r['nit']:>4} cost {r['cost']:>7} val loss {r['fun']:.5f} "
              f"val acc {r['val_accuracy']:.4f}" + (f" test acc {r['test_accuracy']:.4f}" if test is not None else "")
              + f" time {r['wall_time']:.0f}s", flush=True)

    figs = make_figures(out, runs, args.image_size, args.split)

    metrics = {
        "experiment": "mlr", "quick": quick, "split": args.split, "seed": args.seed, "data": data["desc"],
        "scale": {"image_size": args.image_size, "n_lower": int(A.shape[0]), "n_upper": int(B.shape[0]),
                  "n_test": None if test is None else int(data["test"][0].shape[0]), "n_features": int(A.shape[1]),
                  "n_params": int(p_dim), "budget": budget, "max_iter": max_iter, "lower_maxiter": lower_maxiter},
        "first_hypergradient": first, "machine": C.machine_info(args.backend), "runs": runs,
        "figures": {k: os.path.basename(str(v)) for k, v in figs.items()},
    }
    C.write_json(out / "metrics.json", metrics)

    print(f"MNIST {args.image_size}x{args.image_size}, split {args.split}: {data['desc']}")
    print(f"alpha0 = 1/L = {step0:.6g} (L = ||z0||/sqrt(p) = {L0:.4g}); budget {budget:g}")
    print(f"{'method':<42}{'status':<18}{'nit':>5}{'cost':>9}{'val loss':>10}{'val acc':>9}{'test acc':>9}"
          f"{'train acc':>10}{'ε final':>10}{'time s':>8}")
    for r in runs:
        print(f"{r['label']:<42}{r['status']:<18}{r['nit']:>5}{r['cost']:>9}{C.fmt(r['fun'], '.5f'):>10}"
              f"{C.fmt(r['val_accuracy'], '.4f'):>9}{C.fmt(r['test_accuracy'], '.4f'):>9}"
              f"{C.fmt(r['train_accuracy'], '.4f'):>10}{C.fmt(r['eps_final'], '.2e'):>10}{r['wall_time']:>8.0f}")
        if r["error"]:
            print(f"    {r['error']}")
    print(f"wrote {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
