"""ISGD against MAID at equal image cost, on Kodak TV and on an FoE learned from many crops (issue 14).

Problems (:mod:`varlearn.isgd_experiment`):

* ``tv``: REPRODUCTION.md's TV setting -- 24 Kodak images at 96×96 gray,
  σ = 0.1 (``default_rng(19)``), anisotropic TV, θ0 = (−5, −5), f* = 8.34624;
  held out: scikit-image's camera, moon, coins, astronaut at 96×96.
* ``foe``: a Field of Experts (``--foe-filters`` × ``--foe-filter-size``²)
  learned from ``--foe-crops`` non-overlapping ``--foe-crop``² crops of the
  native gray Kodak images 5–24 (default: 8 filters 5×5, 96 crops of 64×64);
  held out: the centre 128×128 of Kodak 1–4 and of the four built-in images.

Methods, all with the same image budget (one FISTA or CG iteration on one
image costs 1): MAID (REPRODUCTION.md's options; for FoE also with the
certificate off) and ISGD with SGD or Adam, decaying (poly, q = p = ½) or
constant step and accuracy schedules (for TV also one schedule decaying and
the other constant), over ``--seeds`` seeds.  Every run is evaluated at ¼, ½
and all of the budget with the θ it had reached at that cost or less: the
training loss f(θ) from tight solves (not counted in the cost), and at the
end the PSNR on the training and held-out images (estimate clipped to [0, 1]).

``--quick``: 4 Kodak images of 32×32 (TV) and 8 crops of 24×24 with 2
filters 3×3 (FoE), tiny budgets, one seed: seconds (the test suite runs it).
``--time-cap SEC``: runs not started SEC seconds after a problem began are
skipped and listed; every method's first seed runs before any method's
second.  Data come from ``--data-dir`` or the shared offline copy
(:func:`varlearn.datasets.shared_data_dir`).  ``--threads N`` caps the
kernel and BLAS threads.

Writes ``metrics.json`` (every run, the summary per method, the claims) and
``isgd_{tv,foe}_loss_vs_cost.png`` into ``--out``.
"""
from __future__ import annotations

import argparse
import sys

from varlearn import experiments as E
from varlearn import isgd_experiment as I

FRACTIONS = (0.25, 0.5, 1.0)
BUDGET = {"tv": 6e4, "foe": 2e4}
QUICK_BUDGET = {"tv": 1.5e3, "foe": 8e2}


def positive_int(text):
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return v


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny scale, seconds (used by the test suite)")
    p.add_argument("--data-dir", default=None, help="folder with the Kodak files (default: the shared copy)")
    p.add_argument("--out", default="runs/isgd", help="output folder")
    p.add_argument("--problems", nargs="+", choices=("tv", "foe"), default=["tv", "foe"])
    p.add_argument("--tv-budget", type=E.positive_float, default=None,
                   help=f"image budget of every TV run (default {BUDGET['tv']:g}; quick {QUICK_BUDGET['tv']:g})")
    p.add_argument("--foe-budget", type=E.positive_float, default=None,
                   help=f"image budget of every FoE run (default {BUDGET['foe']:g}; quick {QUICK_BUDGET['foe']:g})")
    p.add_argument("--seeds", type=positive_int, default=2, help="ISGD seeds on TV (FoE: --foe-seeds)")
    p.add_argument("--foe-seeds", type=positive_int, default=1, help="ISGD seeds on FoE")
    p.add_argument("--tv-batch", type=positive_int, default=4, help="ISGD batch size on TV")
    p.add_argument("--foe-batch", type=positive_int, default=8, help="ISGD batch size on FoE")
    p.add_argument("--foe-filters", type=positive_int, default=I.FOE_CPU["n_filters"])
    p.add_argument("--foe-filter-size", type=positive_int, default=I.FOE_CPU["filter_size"])
    p.add_argument("--foe-crops", type=positive_int, default=I.FOE_CPU["n_crops"])
    p.add_argument("--foe-crop", type=positive_int, default=I.FOE_CPU["crop"])
    p.add_argument("--time-cap", type=E.positive_float, default=None,
                   help="seconds per problem after which no new run is started")
    p.add_argument("--threads", type=positive_int, default=None, help="kernel and BLAS threads")
    return p


def build(args, name):
    scale = {"n_filters": args.foe_filters, "filter_size": args.foe_filter_size, "n_crops": args.foe_crops,
             "crop": args.foe_crop} if name == "foe" else {}
    return E.load_data(I.build, name, args.data_dir, quick=args.quick,
                       seeds=args.seeds if name == "tv" else args.foe_seeds,
                       batch_size=args.tv_batch if name == "tv" else args.foe_batch, **scale)


def main(argv=None):
    args = parser().parse_args(argv)
    if args.foe_filter_size % 2 != 1:
        E.usage_error(f"--foe-filter-size must be odd, got {args.foe_filter_size}")
    built = {name: build(args, name) for name in args.problems}  # a missing data set exits 2 here
    out = E.prepare_out(args.out)
    budgets = {"tv": args.tv_budget, "foe": args.foe_budget}
    metrics = {"experiment": "isgd_vs_maid", "quick": args.quick, "fractions": list(FRACTIONS),
               "machine": E.machine_info("numpy"), "problems": {}}
    with E.thread_limit(args.threads):
        for name, (task, specs) in built.items():
            budget = budgets[name] or (QUICK_BUDGET if args.quick else BUDGET)[name]
            print(f"== {name}: {task.n_images} images {task.problem.x_shape[1]}x{task.problem.x_shape[2]}, "
                  f"image budget {budget:g} per run", flush=True)
            with E.Timer() as t:
                block = {"scale": task.scale, "image_budget": budget, "f_star": task.f_star, **I.baseline(task),
                         "runs": [], "partial": True}
                metrics["problems"][name] = block

                def show(r, block=block):
                    print(f"  {r['label']:<38} seed {r['seed']} {r['status']:<17} it {r['nit']:>5} "
                          f"cost {r['image_cost']:>9.0f} f {r['points'][-1]['f_train']:.6g} "
                          f"({r['wall_time']:.1f}s)", flush=True)
                    block["runs"].append(r)  # metrics.json after every run: a killed script keeps what it did
                    E.write_metrics(out / "metrics.json", metrics)

                records = I.compare(task, specs, budget, FRACTIONS, progress=show, time_cap=args.time_cap)
            block.update(runs=records, partial=False, summary=I.summary(records),
                         claims=I.claims(records, FRACTIONS), wall_time=t.seconds,
                         figure=I.plot_curves(out / f"isgd_{name}_loss_vs_cost.png", records,
                                              f"{name}: training loss at equal image cost").name)
            print("\n".join(I.table(records, task.f_star)), flush=True)
            E.write_metrics(out / "metrics.json", metrics)
    print(f"wrote {out / 'metrics.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
