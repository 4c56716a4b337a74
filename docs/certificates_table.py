"""Observed / claimed constants of the hypergradient bound for every model (docs/certificates.md).

Run: ``python docs/certificates_table.py [--mnist DIR]``.  Observed values come from
:func:`varlearn.testing.observed_constants` (lower estimates: pairs of points in a ball of radius
``R`` around the lower-level solution); "claimed" is what the problem reports now; "before" what
it reported before issue 12 (the global logistic L_H, the estimated FoE constants).
"""
import argparse
import warnings

import numpy as np

import varlearn as vl
from varlearn.hypergradient import hypergradient
from varlearn.problems import make_paper_quadratic
from varlearn.testing import observed_constants

R = 1e-3


def _images(rng, n, size):
    yy, xx = np.mgrid[:size, :size] / size
    clean = np.stack([((xx > 0.3 + 0.1 * k) * 0.6 + (yy > 0.5) * 0.3 + 0.1 * np.sin(7 * xx * (k + 1)))
                      for k in range(n)])
    return clean, clean + 0.1 * rng.standard_normal(clean.shape)


def models(mnist_dir):
    rng = np.random.default_rng(0)
    prob, U, th = make_paper_quadratic(m=200)
    yield "quadratic (paper, m=200)", prob, U, th
    clean, noisy = _images(rng, 3, 32)
    yield "TV iso, 3x32², θ=(-4,-4)", vl.DenoisingProblem(noisy, vl.TotalVariation()), vl.SquaredError(clean), \
        np.array([-4.0, -4.0])
    reg = vl.FieldOfExperts(n_filters=8, size=5, rng=1)
    clean, noisy = _images(rng, 2, 32)
    yield "FoE 8 filters 5x5 learned, 2x32²", vl.DenoisingProblem(noisy, reg), vl.SquaredError(clean), \
        reg.init_params()
    if mnist_dir:
        from varlearn.datasets import mnist

        a, y = mnist(root=mnist_dir, split="train", size=(12, 12), download=False)
        av, yv = mnist(root=mnist_dir, split="test", size=(12, 12), download=False)
        prob = vl.MultinomialLogisticProblem(a.reshape(len(a), -1), y, 10)
        yield "logistic MNIST 12x12 (60000 x 144 x 10), θ=-3", prob, vl.CrossEntropy(av.reshape(len(av), -1), yv, 10), \
            np.full(prob.n_params, -3.0)
    A = rng.standard_normal((2000, 20))
    y = np.argmax(A @ rng.standard_normal((20, 5)) + 0.5 * rng.standard_normal((2000, 5)), axis=1)
    prob = vl.MultinomialLogisticProblem(A, y, 5)
    yield "logistic synthetic 2000 x 20 x 5, θ=-3", prob, vl.CrossEntropy(A[:500], y[:500], 5), \
        np.full(prob.n_params, -3.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mnist", default=None)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    print("| model | constant | observed | claimed before | claimed now | observed/claimed before | now |")
    print("|---|---|---|---|---|---|---|")
    for name, prob, U, th in models(args.mnist):
        hg = hypergradient(prob, U, th, 1e-9, 1e-9, lower_maxiter=50000, cg_maxiter=20000)
        obs = observed_constants(prob, th, hg.x, R, rng=0)
        est = hypergradient(prob, U, th, 1e-9, 1e-9, x0=hg.x, constants="estimate")
        before = {"L_H": prob.hessian_lipschitz(th), "L_J": prob.mixed_lipschitz(th),
                  "J_norm": prob.mixed_norm_bound(hg.x, th)}
        if name.startswith("FoE"):  # before issue 12 FoE's L_J and |J| (learned filters) were estimated
            before["L_J"] = before["J_norm"] = None
        for key in before:
            if before[key] is None:
                before[key] = est.constants[key]
        for key in ("L_H", "L_J", "J_norm"):
            now = obs["claimed_" + key]
            b = before[key]
            o = obs[key]

            def ratio(c, o=o):
                return "exact (0)" if c == 0 and o == 0 else (f"{o / c:.3g}" if c else "n/a")

            print(f"| {name} | {key} | {o:.3g} | {b:.3g} | {now:.3g} | {ratio(b)} | {ratio(now)} |")


if __name__ == "__main__":
    main()
