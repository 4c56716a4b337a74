r"""Bounds of composite regularizers, from the constants of their parts.

Mixed into :class:`varlearn.regularizers.composite.Composite`; see that module
for the notation.  ``wgb`` is the operator's ``weighted_gram_bound``.

References
----------
.. [1] M. J. Ehrhardt, L. Roberts, "Analyzing inexact hypergradients for bilevel learning",
   IMA J. Appl. Math. 89 (2024) 254-278 (the constants of the hypergradient error bound).
.. [3] N. J. Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., SIAM (2002), §3.1.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_namespace
from ..linalg import gamma

__all__ = ["CompositeBounds", "potential_grad_error"]


def potential_grad_error(lam, d1_max, d2_max, row_l1, col_l1, n_terms, x, dtype):
    r"""First-order rounding bound of :math:`\nabla R = \sum_i\lambda_iK_i^T\varphi_i'(K_ix)` (Euclidean norm).

    For each term ``i`` (arrays over the terms): :math:`K_ix` is a sum of at
    most ``n_terms`` products, off by :math:`\gamma\,r_i\|x\|_\infty` with ``r_i =
    row_l1`` (the largest absolute row sum of :math:`K_i`); :math:`\varphi'` is
    ``d2_max``-Lipschitz and bounded by :math:`D_i = \min(d1\_max, d2\_max\,r_i\|x\|_\infty)`
    and is evaluated with relative error at most 4u; the adjoint sums at most
    ``c_i = col_l1`` (absolute column sum) times ``n_terms`` terms.  Per pixel
    the error is at most
    :math:`\sum_i\lambda_ic_i[(\gamma_{2k} + 4u)D_i + \gamma_{k}d2\_max\,r_i\|x\|_\infty]`, doubled for
    boundary folds, times :math:`\sqrt{\text{pixels}}` for the Euclidean norm.
    """
    xp = get_namespace(x)
    u = float(np.finfo(dtype).eps) / 2.0
    xinf = float(xp.abs(x).max()) if x.size else 0.0
    lam = np.atleast_1d(np.asarray(lam, dtype=np.float64))
    d2 = np.atleast_1d(np.asarray(d2_max, dtype=np.float64))
    r = np.atleast_1d(np.asarray(row_l1, dtype=np.float64))
    c = np.atleast_1d(np.asarray(col_l1, dtype=np.float64))
    d1 = np.minimum(np.atleast_1d(np.asarray(d1_max, dtype=np.float64)), d2 * r * xinf * (1.0 + 4.0 * u))
    g1, g2 = gamma(n_terms + 2, dtype), gamma(2 * n_terms + 4, dtype)
    per_pixel = float(np.sum(lam * c * ((g2 + 4.0 * u) * d1 + g1 * d2 * r * xinf)))
    return 2.0 * per_pixel * math.sqrt(x.size)

class CompositeBounds:
    """The bound methods of :class:`~varlearn.regularizers.composite.Composite` (a mixin)."""

    def _per(self, f, p):
        """``f`` of each value of ``p`` as a float64 array (a scalar gives shape (1,))."""
        p = np.atleast_1d(np.asarray(p if p is not None else 1.0, dtype=np.float64))
        return np.array([f(None if not self.potential.has_param else float(q)) for q in p])

    def lipschitz(self, lam, nu) -> float:
        r"""Upper bound on :math:`\|\nabla^2_{xx}R\|`: ``weighted_gram_bound(λ_c d2_max(ν_c))``."""
        lam, nu = self.params(lam, nu)
        return self._wgb(np.asarray(lam) * self._per(self.potential.d2_max, nu))

    def _wgb(self, w):
        """``weighted_gram_bound`` of ``w`` (a scalar or one weight per channel) as a float."""
        w = np.broadcast_to(np.asarray(w, dtype=np.float64).reshape(-1), (self.n_channels,))
        return float(self.operator.weighted_gram_bound(np.ascontiguousarray(w)))

    def convexity(self, lam, nu) -> float:
        """Lower bound on the smallest Hessian eigenvalue (0 for a convex potential)."""
        lam, nu = self.params(lam, nu)
        lo = self._per(self.potential.d2_min, nu)
        if np.all(lo >= 0):
            return 0.0
        return -self._wgb(np.asarray(lam) * np.maximum(0.0, -lo))

    def hessian_lipschitz(self, lam, nu):
        r"""Lipschitz constant of :math:`\nabla^2_{xx}R` in ``x``: ``wgb(λ_c d3_max(ν_c))·‖K‖`` (None if unknown)."""
        lam, nu = self.params(lam, nu)
        d3 = self._per(self.potential.d3_max, nu)
        if not np.all(np.isfinite(d3)):
            return None  # phi'' is not Lipschitz (e.g. Huber): the hypergradient estimates a constant
        return self._wgb(np.asarray(lam) * d3) * self.operator.norm_bound()

    def mixed_lipschitz(self, lam, nu, lam_scale=None, nu_scale=None):
        r"""Lipschitz constant in ``x`` of the mixed derivative (the columns of :meth:`mixed_norm_bound`).

        The column :math:`s\,\partial_\lambda\nabla R = s\sum_c K_c^T\varphi'_c` is
        ``|s| wgb(d2_max)``-Lipschitz, :math:`t\,\partial_\nu\nabla R` is
        ``|t| wgb(λ_c d2_dnu_max)``-Lipschitz; per-channel parameters give one
        column per channel (``wgb`` of a one-hot weight).  The columns add in squares.
        None when a constant is infinite (e.g. Huber).
        """
        lam, nu = self.params(lam, nu)
        s = np.asarray(lam if lam_scale is None else lam_scale, dtype=np.float64)
        cols = self._column_lipschitz(isinstance(lam, float), np.abs(s), self._per(self.potential.d2_max, nu))
        if nu is not None:
            t = np.abs(np.asarray(nu if nu_scale is None else nu_scale, dtype=np.float64))
            cols += self._column_lipschitz(isinstance(nu, float), t,
                                           np.asarray(lam) * self._per(self.potential.d2_dnu_max, nu))
        if not all(math.isfinite(c) for c in cols):
            return None
        return math.sqrt(sum(c * c for c in cols))

    def _column_lipschitz(self, scalar, scale, w):
        if scalar:
            return [float(scale) * self._wgb(w)]
        w = np.broadcast_to(w, (self.n_channels,))
        eye = np.eye(self.n_channels)
        return [float(scale[c]) * float(w[c]) * self._wgb(eye[c]) for c in range(self.n_channels)]

    def grad_error_bound(self, x, lam, nu):
        r"""First-order bound on the rounding error of :meth:`grad` in Euclidean norm (None if unknown).

        The smaller of two bounds.  (a) When the operator computes each entry of
        :math:`Kx` with relative error :math:`e_Ku` (``rounding_constants()['apply_ulps']``)
        and the potential evaluates :math:`\varphi'` with relative error
        :math:`e_\varphi u` (``d1_eval_ulps``), bounded by :math:`D` (``d1_max``) and
        with :math:`\sup|t|\|\varphi''\| = \kappa` (``d1_rel_cond``): each of the at most
        ``c = col_l1`` terms of an adjoint entry is off by
        :math:`(e_\varphi D + \kappa e_K + 1)u` (the last u for the product with the
        coefficient), their sum adds :math:`\gamma_c cD` and the weight :math:`u cD`, so per
        pixel :math:`\lambda c[(e_\varphi D + \kappa e_K + 2)u + \gamma_c D]`, times
        :math:`\sqrt{n}`.  For TV this is about 60u·λ·√n (against the former 64u).
        (b) :func:`potential_grad_error` from the absolute row and column sums.
        """
        lam, nu = self.params(lam, nu)
        rc = self.operator.rounding_constants()
        if rc is None:
            return None
        pot = self.potential
        lam_max = float(np.max(lam))
        d1 = float(np.max(self._per(pot.d1_max, nu)))
        d2 = self._per(pot.d2_max, nu)
        bounds = [potential_grad_error(np.asarray(lam) * np.ones_like(d2), self._per(pot.d1_max, nu), d2,
                                       rc["row_l1"], rc["col_l1"], rc["n_terms"], x, x.dtype)]
        kappa = self._per(pot.d1_rel_cond, nu) if pot.d1_rel_cond(None if nu is None else 1.0) is not None \
            else None
        if rc.get("apply_ulps") is not None and pot.d1_eval_ulps is not None and kappa is not None \
                and math.isfinite(d1):
            u = float(np.finfo(x.dtype).eps) / 2.0
            c = float(rc["col_l1"])
            per = lam_max * c * ((pot.d1_eval_ulps * d1 + float(np.max(kappa)) * rc["apply_ulps"] + 2.0) * u
                                 + gamma(int(math.ceil(c)), x.dtype) * d1)
            bounds.append(per * math.sqrt(x.size))
        return min(bounds)
