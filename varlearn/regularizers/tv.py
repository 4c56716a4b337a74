r"""Smoothed total variation: a parameterisation of the composition (finite differences, smoothed ℓ1).

References
----------
.. [1] L. I. Rudin, S. Osher, E. Fatemi, "Nonlinear total variation based noise removal
   algorithms", Physica D 60 (1992) 259-268.
.. [2] M. J. Ehrhardt, L. Roberts, "Inexact derivative-free optimization for bilevel learning",
   J. Math. Imaging Vis. 63 (2021) 580-600 (the anisotropic form with θ = (log weight, log smoothing)).
"""
from __future__ import annotations

from ..operators import FiniteDifference
from ..potentials import GroupSmoothedL1, SmoothedL1
from .base import PotentialRegularizer

__all__ = ["TotalVariation"]


class TotalVariation(PotentialRegularizer):
    r"""Smoothed total variation with θ = (log weight, log smoothing).

    Isotropic (default):

    .. math:: R(x,\theta) = e^{\theta_0} \sum_p \sqrt{|(Dx)_p|^2 + e^{2\theta_1}}

    where :math:`(Dx)_p` holds the forward differences at pixel ``p`` (zero
    across the last column / row: :class:`~varlearn.operators.FiniteDifference`).
    Anisotropic (``isotropic=False``, the MAID paper's form with its ½
    absorbed into :math:`\theta_0`):

    .. math:: R(x,\theta) = e^{\theta_0} \sum_{d\in\{h,v\}} \sum_p \sqrt{(D_d x)_p^2 + e^{2\theta_1}}

    summing only over the differences that exist ((W−1)·H horizontal and
    (H−1)·W vertical per image).

    This is ``PotentialRegularizer(FiniteDifference(), GroupSmoothedL1())``
    (isotropic) or ``PotentialRegularizer(FiniteDifference(), SmoothedL1())``
    (anisotropic) with the same θ: every derivative and bound comes from
    :class:`~varlearn.regularizers.composite.Composite`, and the fused numba /
    CUDA kernels registered for those pairs run on NumPy / CuPy arrays.
    Bounds: :math:`\|\nabla^2 R\| \le 8 e^{\theta_0 - \theta_1}`; R is convex;
    :math:`\nabla^2R` is :math:`8^{3/2}\cdot 0.8587\,e^{\theta_0}/\nu^2`-Lipschitz.

    Parameters
    ----------
    isotropic : bool
    weight, smoothing : float
        Default natural values returned by :meth:`init_params`.
    """

    def __init__(self, isotropic=True, weight=0.1, smoothing=0.01):
        self.isotropic = bool(isotropic)
        super().__init__(FiniteDifference(), GroupSmoothedL1() if self.isotropic else SmoothedL1(),
                         weight=weight, shape=smoothing)
        self.default_smoothing = float(smoothing)

    def __repr__(self):
        return f"TotalVariation(isotropic={self.isotropic})"

    def param_layout(self):
        return [("log_weight", slice(0, 1)), ("log_smoothing", slice(1, 2))]

    def describe(self, theta):
        lam, nu = self.natural_params(theta)
        return {"weight": lam, "smoothing": nu, "isotropic": self.isotropic}
