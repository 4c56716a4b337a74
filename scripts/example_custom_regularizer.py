"""Plug your own regularizer into varlearn: two ways, both checked and learned.

1. No derivatives to write: compose an operator with a potential
   (``PotentialRegularizer``).
2. Full control: subclass ``Regularizer`` and write value, grad, hvp and
   mixed_vjp yourself; ``varlearn.testing.check_regularizer`` verifies them.

Run: ``python scripts/example_custom_regularizer.py`` (a few seconds).
"""
import math
import sys

import numpy as np

import varlearn as vl
from varlearn.datasets import add_noise, builtin_images
from varlearn.operators import FiniteDifference
from varlearn.potentials import Huber
from varlearn.testing import check_regularizer


class LaplacianTikhonov(vl.Regularizer):
    r"""R(x, θ) = ½ e^{θ0} ‖Δx‖², Δ the 5-point Laplacian with zero padding."""

    n_params = 1

    @staticmethod
    def _lap(x):
        out = -4.0 * x
        out[..., 1:, :] += x[..., :-1, :]
        out[..., :-1, :] += x[..., 1:, :]
        out[..., :, 1:] += x[..., :, :-1]
        out[..., :, :-1] += x[..., :, 1:]
        return out  # symmetric: the adjoint is itself

    def init_params(self, rng=None):
        return np.array([math.log(0.05)])

    def value(self, x, theta):
        lx = self._lap(x)
        return 0.5 * np.exp(theta[0]) * np.vdot(lx, lx)

    def grad(self, x, theta):
        return np.exp(theta[0]) * self._lap(self._lap(x))

    def hvp(self, x, theta, v):
        return np.exp(theta[0]) * self._lap(self._lap(v))

    def mixed_vjp(self, x, theta, w):
        # d/dθ0 <grad R(x), w> = <grad R(x), w>
        return np.array([np.vdot(self.grad(x, theta), w)])

    def lipschitz(self, theta):
        return 64.0 * math.exp(theta[0])  # ||Δ|| <= 8

    def convexity(self, theta):
        return 0.0


def main(argv=None):
    rng = np.random.default_rng(0)
    clean = builtin_images(["camera", "coins"], size=48)
    noisy = add_noise(clean, 0.1, rng)
    upper = vl.SquaredError(clean)
    results = {}
    for name, reg in [("huber-on-differences", vl.PotentialRegularizer(FiniteDifference(), Huber())),
                      ("laplacian-tikhonov", LaplacianTikhonov())]:
        theta0 = reg.init_params()
        # 1. check every derivative (Taylor tests, Hessian symmetry, mixed derivative)
        report = check_regularizer(reg, clean[:1] + 0.01, theta0)
        if not report.ok:
            raise SystemExit(f"{name}: derivative check failed: {report.failures()}")
        # 2. learn its parameters with MAID
        problem = vl.DenoisingProblem(noisy, reg)
        res = vl.minimize_bilevel(problem, upper, theta0, options={"max_iter": 15, "step0": 0.05})
        results[name] = (upper.psnr(noisy), upper.psnr(res.x), res.theta)
        print(f"{name:>22}: PSNR {results[name][0]:.2f} -> {results[name][1]:.2f} dB, "
              f"theta = {np.round(res.theta, 3)}, {reg.describe(res.theta)}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
