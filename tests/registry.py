"""Registries that drive the generic test suites.

Adding one line here runs the whole derivative / solver suite on a new
regularizer or problem.  Each factory takes ``(xp, rng)`` and returns the
object plus a θ (NumPy float64; the tests move it to ``xp``).
"""
import numpy as np

import varlearn as vl
from varlearn.operators import FiniteDifference, Identity
from varlearn.potentials import POTENTIALS, GroupSmoothedL1


def _theta(*v):
    return np.asarray(v, dtype=np.float64)


REGULARIZERS = {
    "tv_iso": lambda rng: (vl.TotalVariation(isotropic=True), _theta(-1.0, -2.0)),
    "tv_aniso": lambda rng: (vl.TotalVariation(isotropic=False), _theta(-1.5, -1.0)),
    "tv_iso_sharp": lambda rng: (vl.TotalVariation(isotropic=True), _theta(-3.0, -4.0)),
    "tikhonov": lambda rng: (vl.Tikhonov(), _theta(-0.5)),
    "tikhonov_grad": lambda rng: (vl.Tikhonov(FiniteDifference()), _theta(-0.5)),
    "potential_huber_fd": lambda rng: (vl.PotentialRegularizer(FiniteDifference(), POTENTIALS["huber"]()),
                                       _theta(-1.0, -1.0)),
    "potential_student_fd": lambda rng: (vl.PotentialRegularizer(FiniteDifference(), POTENTIALS["log_student_t"]()),
                                         _theta(-3.0, -0.5)),  # keeps 1/2|x-y|^2 + R strongly convex
    "potential_l1_identity": lambda rng: (vl.PotentialRegularizer(Identity(), POTENTIALS["smoothed_l1"]()),
                                          _theta(-1.0, -1.5)),
    # the compositions that TV is a parameterisation of (tests/test_composition.py checks they are equal)
    "potential_l1_fd": lambda rng: (vl.PotentialRegularizer(FiniteDifference(), POTENTIALS["smoothed_l1"]()),
                                    _theta(-1.5, -1.0)),
    "potential_group_l1_fd": lambda rng: (vl.PotentialRegularizer(FiniteDifference(), GroupSmoothedL1()),
                                          _theta(-1.0, -2.0)),
    "sum_tv_tikhonov": lambda rng: (vl.TotalVariation() + vl.Tikhonov(), _theta(-1.0, -2.0, -3.0)),
    "foe": lambda rng: (
        vl.FieldOfExperts(n_filters=3, size=3, rng=rng),
        None,  # init_params with a random perturbation, see tests
    ),
    "foe_7x7": lambda rng: (vl.FieldOfExperts(n_filters=2, size=7, rng=rng), None),
}

# regularizers whose Huber potential has a jump in phi'' (no Hessian Taylor test at kinks):
# the random points used by the tests avoid the kinks with probability one.

POTENTIAL_NAMES = sorted(POTENTIALS)


def power_norm(apply, shape, rng, n_iter=60):
    """Power-iteration estimate of the largest ``|eigenvalue|`` of a symmetric linear map (a lower bound
    on its norm that converges to it), from a standard-normal start drawn from ``rng``."""
    v = rng.standard_normal(shape)
    v /= np.linalg.norm(v)
    lam = 0.0
    for _ in range(n_iter):
        hv = apply(v)
        lam = np.linalg.norm(hv)
        v = hv / lam
    return lam
