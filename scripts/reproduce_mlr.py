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

``--split paper`` (default, the paper's): lower level on the 60000 training digits,
upper level on the 10000 *test* digits (so "validation accuracy" is on the data the
hyperparameters were fitted to).  ``--split holdout``: the last ``--n-holdout`` (10000)
training digits form the upper level, the other 50000 the lower one, and accuracy is
also reported on the untouched test digits.  ``--quick``: 1000 training and 500 test
digits of 8×8 (640 hyperparameters; holdout 250), budget 6000, lower solves capped
at 500 iterations.  On shared cores BLAS threads stall each other: ``--threads 1``
(the default with ``--quick``) can be several times faster.

Writes ``metrics.json`` and ``mlr_loss_vs_cost.png``, ``mlr_eps_path.png``,
``mlr_accuracy_vs_cost.png`` into ``--out``.
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
from varlearn.datasets import mnist

METHODS = ("maid", "maid-nobound", "hoag-geometric", "hoag-quadratic", "hoag-cubic")


def load(args, quick):
    """Features (n, d) in [0, 1] and labels for the lower level, the upper level and the test set."""
    n_train = args.n_train or (1000 if quick else 60000)
    n_test = args.n_test or (500 if quick else 10000)
    Xtr, ytr = E.load_data(mnist, args.data_dir, "train", size=args.image_size, indices=list(range(n_train)))
    Xte, yte = E.load_data(mnist, args.data_dir, "test", size=args.image_size, indices=list(range(n_test)))
    Xtr, Xte = Xtr.reshape(len(Xtr), -1), Xte.reshape(len(Xte), -1)
    if args.split == "paper":
        return {"lower": (Xtr, ytr), "upper": (Xte, yte), "test": None,
                "desc": f"lower: first {n_train} training digits; upper (validation): first {n_test} test digits"}
    k = n_train - args.n_holdout
    return {"lower": (Xtr[:k], ytr[:k]), "upper": (Xtr[k:], ytr[k:]), "test": (Xte, yte),
            "desc": f"lower: training digits 0..{k - 1}; upper (validation): training digits {k}..{n_train - 1}; "
                    f"test: first {n_test} test digits (never used for learning)"}


def make_figures(out, runs, image_size, split):
    """Loss vs cost, ε path and validation accuracy vs cost (staircases) from the ``runs`` of metrics.json."""
    plot_runs = [{"label": r["label"], "method": "hoag" if r["method"] == "hoag" else
                  ("maid" if r["key"] == "maid" else "fixed"), "history": r["history"],
                  "eps0": r["options"]["eps0"]} for r in runs]
    acc = [(np.maximum(r["history"]["cost"][1:len(r["val_accuracy_path"]) + 1], 1), r["val_accuracy_path"],
            r["label"], F.STYLES[pr["method"]]) for r, pr in zip(runs, plot_runs)]
    return {
        "loss_vs_cost": F.plot_loss_vs_cost(
            out / "mlr_loss_vs_cost.png", plot_runs, logy=True, ylabel="validation cross-entropy",
            title=f"MNIST {image_size}×{image_size} logistic regression ({split} split): upper loss vs cost"),
        "eps_path": F.plot_eps_path(out / "mlr_eps_path.png", plot_runs, title="MNIST: accuracy ε_k"),
        "accuracy_vs_cost": F.plot_series(out / "mlr_accuracy_vs_cost.png", acc, steps=True,
                                          xlabel="cost (lower-level + CG iterations)", ylabel="validation accuracy",
                                          title=f"MNIST ({split} split): validation accuracy vs cost")}


def method_options(spec, args, step0):
    """minimize_bilevel options and label of one method."""
    if spec.method == "hoag":
        return {"eps0": args.eps0, **spec.options}, spec.label
    nob = spec.name == "maid-nobound"
    alpha0 = args.nobound_step0 if nob else (args.maid_step0 if args.maid_step0 is not None else step0)
    rho = args.nobound_rho if nob else args.maid_rho
    opts = {"eps0": args.eps0, "delta0": args.eps0, "rho": rho, "nu": 0.5, "nu_inc": 1.05, "step0": alpha0,
            "bound": True, **spec.options}
    return opts, f"{spec.label} (α0={alpha0:.4g}, ρ={rho:g})"


def run_all(args, problem, upper, test, train_loss, theta0, step0, budget, max_iter, lower_maxiter):
    runs = []
    for spec in args.methods:
        opts, label = method_options(spec, args, step0)
        opts.update(budget=budget, maxiter=max_iter, seed=args.seed, lower_maxiter=lower_maxiter)
        acc_val, acc_test = [], []

        def callback(r, acc_val=acc_val, acc_test=acc_test):
            if r.x is not None:
                acc_val.append(float(upper.accuracy(r.x)))
                acc_test.append(float(test.accuracy(r.x)) if test is not None else None)

        res, err = A.guarded_minimize(problem, upper, theta0, spec.method, opts, callback=callback,
                                      progress=lambda line: print(line, flush=True))
        theta = to_numpy(res["theta"])
        x = res["x"]
        extra = {"key": spec.name, "error": err, "val_accuracy_path": acc_val,
                 "test_accuracy_path": acc_test if test is not None else None,
                 "theta_stats": {"min": float(theta.min()), "max": float(theta.max()), "mean": float(theta.mean()),
                                 "mu_final": float(np.exp(theta.min()))},
                 "val_accuracy": None if x is None else float(upper.accuracy(x)),
                 "test_accuracy": None if x is None or test is None else float(test.accuracy(x)),
                 "test_loss": None if x is None or test is None else float(test.value(x)),
                 "train_accuracy": None if x is None else float(train_loss.accuracy(x)),
                 "train_loss": None if x is None else float(train_loss.value(x))}
        r = A.summarize_run(res, label, extra=extra)
        runs.append(r)
        print(f"  {label:<40} FAILED: {err}" if err else
              f"  {label:<40} {r['status']:<17} nit {r['nit']:>4} cost {r['cost']:>7} val loss {r['fun']:.5f} "
              f"val acc {r['val_accuracy']:.4f}" + (f" test acc {r['test_accuracy']:.4f}" if test else "")
              + f" time {r['wall_time']:.0f}s", flush=True)
    return runs


def main(argv=None):
    p = E.make_parser(__doc__.splitlines()[0], seed=23, out="results/mlr")
    p.add_argument("--split", choices=["paper", "holdout"], default="paper",
                   help="paper: upper level on the test digits (as in the paper); holdout: upper level on "
                        "held-out training digits, test accuracy on the untouched test digits")
    p.add_argument("--n-train", type=int, default=None, help="training digits used (default 60000; quick 1000)")
    p.add_argument("--n-test", type=int, default=None, help="test digits used (default 10000; quick 500)")
    p.add_argument("--n-holdout", type=int, default=None,
                   help="with --split holdout: training digits moved to the upper level (default 10000; quick 250)")
    p.add_argument("--image-size", type=int, default=None, help="digits are resized to this side (default 12; quick 8)")
    p.add_argument("--methods", nargs="+", type=E.method_arg, default=[A.parse_method(m) for m in METHODS],
                   help=f"methods to run, from {METHODS}")
    p.add_argument("--eps0", type=E.positive_float, default=0.1, help="initial accuracy of MAID and HOAG")
    p.add_argument("--lower-maxiter", type=int, default=None,
                   help="iteration cap of each lower-level solve (default 2000, the reference's; quick 500)")
    p.add_argument("--maid-step0", type=E.positive_float, default=None,
                   help="initial step α0 of 'maid' (default: HOAG's first step 1/L, as in the paper)")
    p.add_argument("--maid-rho", type=E.open_unit_float, default=0.9,
                   help="step decrease ρ of 'maid' in backtracking (the paper's MNIST run: 0.9)")
    p.add_argument("--nobound-step0", type=E.positive_float, default=100.0,
                   help="initial step α0 of 'maid-nobound' (chosen from 1, 10, 100 on 10000 training digits; "
                        "see REPRODUCTION.md)")
    p.add_argument("--nobound-rho", type=E.open_unit_float, default=0.5, help="step decrease ρ of 'maid-nobound'")
    p.add_argument("--threads", "--blas-threads", type=int, default=None,
                   help="limit BLAS and numba to this many threads during the runs (default: unchanged; quick 1)")
    args = p.parse_args(argv)
    for spec in args.methods:
        if spec.method == "fixed":
            p.error(f"--methods: {spec.token!r} is not part of this experiment; choose from {', '.join(METHODS)}")
    quick = args.quick
    args.image_size = args.image_size or (8 if quick else 12)
    args.n_holdout = args.n_holdout or (250 if quick else 10000)
    n_train = args.n_train or (1000 if quick else 60000)
    if args.split == "holdout" and not 0 < args.n_holdout < n_train:
        p.error(f"--n-holdout must lie in [1, {n_train - 1}], got {args.n_holdout}")
    budget = args.budget or (6000.0 if quick else 6e5)
    max_iter = args.max_iter or (50 if quick else 500)
    lower_maxiter = args.lower_maxiter or (500 if quick else 2000)
    xp = E.array_module(args.backend)
    data = load(args, quick)
    out = E.prepare_out(args.out)

    (Xa, ya), (Xb, yb) = data["lower"], data["upper"]
    problem = vl.MultinomialLogisticProblem(to_device(Xa, xp), to_device(ya, xp), 10)
    upper = vl.CrossEntropy(to_device(Xb, xp), to_device(yb, xp), 10)
    test = None if data["test"] is None else vl.CrossEntropy(*(to_device(a, xp) for a in data["test"]), 10)
    train_loss = vl.CrossEntropy(to_device(Xa, xp), to_device(ya, xp), 10)
    theta0 = to_device(np.full(problem.n_params, -3.0), xp)
    with E.thread_limit(args.threads or (1 if quick else None)):
        with E.Timer() as t0:  # MAID's α0: HOAG's first step 1/L, L = ||z0|| / sqrt(p)
            hg0 = vl.hypergradient(problem, upper, theta0, args.eps0, args.eps0, bound=False,
                                   lower_maxiter=lower_maxiter)
        L0 = hg0.grad_norm / math.sqrt(problem.n_params)
        step0 = 1.0 / L0 if L0 > 0 and math.isfinite(L0) else 1.0 / 1508.34
        runs = run_all(args, problem, upper, test, train_loss, theta0, step0, budget, max_iter, lower_maxiter)
    first = {"grad_norm": hg0.grad_norm, "L": L0, "step0": step0, "cost": hg0.n_lower_iter + hg0.n_cg_iter,
             "time": t0.seconds}
    figs = make_figures(out, runs, args.image_size, args.split)
    metrics = {
        "experiment": "mlr", "quick": quick, "split": args.split, "seed": args.seed, "data": data["desc"],
        "scale": {"image_size": args.image_size, "n_lower": int(Xa.shape[0]), "n_upper": int(Xb.shape[0]),
                  "n_test": None if test is None else int(data["test"][0].shape[0]), "n_features": int(Xa.shape[1]),
                  "n_params": int(problem.n_params), "budget": budget, "max_iter": max_iter,
                  "lower_maxiter": lower_maxiter},
        "first_hypergradient": first, "machine": E.machine_info(args.backend), "runs": runs,
        "figures": {k: os.path.basename(str(v)) for k, v in figs.items()},
    }
    E.write_metrics(out / "metrics.json", metrics)
    print(f"MNIST {args.image_size}x{args.image_size}, split {args.split}: {data['desc']}")
    print(f"alpha0 = 1/L = {step0:.6g} (L = ||z0||/sqrt(p) = {L0:.4g}); budget {budget:g}")
    print(f"{'method':<42}{'status':<18}{'nit':>5}{'cost':>9}{'val loss':>10}{'val acc':>9}{'test acc':>9}"
          f"{'train acc':>10}{'ε final':>10}{'time s':>8}")
    for r in runs:
        print(f"{r['label']:<42}{r['status']:<18}{r['nit']:>5}{r['cost']:>9}{E.fmt(r['fun'], '.5f'):>10}"
              f"{E.fmt(r['val_accuracy'], '.4f'):>9}{E.fmt(r['test_accuracy'], '.4f'):>9}"
              f"{E.fmt(r['train_accuracy'], '.4f'):>10}{E.fmt(r['eps_final'], '.2e'):>10}{r['wall_time']:>8.0f}"
              + (f"\n    {r['error']}" if r["error"] else ""))
    print(f"wrote {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
