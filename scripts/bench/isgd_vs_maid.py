"""Benchmark: ISGD against MAID at equal image cost on Kodak TV and on FoE from crops (stochastic-spec §6.1-6.2).

Reported, never asserted.  Every method gets the same image budget (one FISTA
or CG iteration on one image costs 1; evaluation solves are not counted) and
is evaluated at ``--points`` equally spaced fractions of it with the θ it had
reached at that cost or less (training loss f(θ) from tight solves).  The
table gives, per method: f at ¼, ½ and the whole budget, the held-out PSNR,
the image cost at which f first came within 1% of MAID's final loss (on the
evaluation grid; ``-`` if never), the wall time and the throughput in
image-iterations per second of optimisation.  The problems and methods are
those of ``scripts/reproduce_isgd.py`` (:mod:`varlearn.isgd_experiment`);
``--methods`` keeps only the labels containing one of the given words.

``--quick``: the tiny problems of ``reproduce_isgd.py --quick``.
``--json PATH`` writes every record.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from varlearn import experiments as E
from varlearn import isgd_experiment as I

BUDGET = {"tv": 6e4, "foe": 1e4}
QUICK_BUDGET = {"tv": 1.5e3, "foe": 8e2}


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny problems (seconds)")
    p.add_argument("--data-dir", default=None, help="folder with the Kodak files (default: the shared copy)")
    p.add_argument("--problems", nargs="+", choices=("tv", "foe"), default=["tv", "foe"])
    p.add_argument("--budget-tv", type=E.positive_float, default=None, help=f"default {BUDGET['tv']:g}")
    p.add_argument("--budget-foe", type=E.positive_float, default=None, help=f"default {BUDGET['foe']:g}")
    p.add_argument("--points", type=int, default=8, help="evaluation points per run (fractions k/points)")
    p.add_argument("--methods", nargs="+", default=["MAID", "decaying"],
                   help="keep the runs whose label contains one of these words (e.g. MAID, sgd, adam, constant)")
    p.add_argument("--all-schedules", action="store_true",
                   help="FoE: also ISGD with one schedule decaying and the other constant")
    p.add_argument("--foe-crops", type=int, default=I.FOE_CPU["n_crops"])
    p.add_argument("--foe-crop", type=int, default=I.FOE_CPU["crop"])
    p.add_argument("--threads", type=int, default=1, help="kernel and BLAS threads")
    p.add_argument("--json", default=None, help="write the records to this file")
    return p


def report(records, fractions, budget):
    """Lines of the benchmark table."""
    maid = [r for r in records if r["label"] == "MAID" and not r.get("skipped")]
    target = 1.01 * maid[0]["points"][-1]["f_train"] if maid else None
    idx = [fractions.index(f) for f in (0.25, 0.5, 1.0) if f in fractions]
    lines = [f"{'run':<34}{'seed':>5}" + "".join(f"{'f@' + format(fractions[i], 'g'):>11}" for i in idx)
             + f"{'held-out':>10}{'cost to 1.01 f_MAID':>21}{'wall s':>8}{'img-it/s':>10}"]
    for r in records:
        if r.get("skipped"):
            continue
        held = np.mean([q["psnr_mean"] for q in r["heldout"].values()])
        reach = I.cost_to_reach(r, target) if target else None
        lines.append(f"{r['label']:<34}{r['seed']:>5}" + "".join(f"{r['points'][i]['f_train']:>11.5g}" for i in idx)
                     + f"{held:>10.3f}{E.fmt(reach, '.0f'):>21}{r['wall_time']:>8.1f}"
                     + f"{r['image_cost'] / max(r['wall_time'], 1e-9):>10.0f}")
    lines.append(f"(image budget {budget:g} per run; held-out: mean PSNR over the held-out sets)")
    return lines


def main(argv=None):
    args = parser().parse_args(argv)
    if args.points < 1:
        E.usage_error(f"--points must be a positive integer, got {args.points}")
    fractions = [k / args.points for k in range(1, args.points + 1)]
    for f in (0.25, 0.5):
        if f not in fractions:
            fractions.append(f)
    fractions.sort()
    out = {"quick": args.quick, "fractions": fractions, "machine": E.machine_info("numpy"), "problems": {}}
    with E.thread_limit(args.threads):
        for name in args.problems:
            scale = ({"n_crops": args.foe_crops, "crop": args.foe_crop, "partial": args.all_schedules}
                     if name == "foe" else {})
            task, specs = E.load_data(I.build, name, args.data_dir, quick=args.quick, **scale)
            specs = [s for s in specs if any(w.lower() in s.label.lower() for w in args.methods)]
            budget = getattr(args, f"budget_{name}") or (QUICK_BUDGET if args.quick else BUDGET)[name]
            print(f"== {name}: {task.n_images} images {task.problem.x_shape[1]}x{task.problem.x_shape[2]}, "
                  f"image budget {budget:g}", flush=True)
            records = I.compare(task, specs, budget, tuple(fractions))
            print("\n".join(report(records, fractions, budget)), flush=True)
            out["problems"][name] = {"scale": task.scale, "image_budget": budget, "runs": records}
    if args.json:
        E.write_metrics(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
