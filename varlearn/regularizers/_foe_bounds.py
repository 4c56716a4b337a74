r"""Certified constants of :class:`~varlearn.regularizers.FieldOfExperts` (used by the hypergradient bound).

Notation: :math:`\lambda_i = e^{\theta_0+\theta_i}`, :math:`u_i = K_ix`, :math:`S_{ab}` the
correlation with the unit tap at :math:`(a, b)` (reflect padding), so that
:math:`K_i = \sum_{ab} k_i[a,b] S_{ab}`.  Facts used:

* :math:`\|K_i\| \le b_i`, the smaller of the Schur and the certified Fourier bounds of
  :mod:`varlearn._filterbank`;
* with reflect padding an output pixel reads one input pixel and an input pixel is read by
  at most :math:`w_aw_b` outputs (:math:`w = 1` for the centre offset, else 2), so
  :math:`\|S_{ab}\| \le \sqrt{w_aw_b}` and :math:`\sum_{ab}\|S_{ab}\|^2 \le (2s-1)^2`; hence for
  the correlation :math:`D_d` with any kernel ``d``, :math:`\|D_d\| \le (2s-1)\|d\|_2`;
* :math:`\sum_{ab}\|S_{ab}x\|^2 = \sum_p P_p`, :math:`P_p = \sum_{ab}\tilde x^2_{p+(a,b)}` (the
  patch energy, computed exactly).

The mixed derivative :math:`J = \partial_\theta\nabla_xR` has the columns :math:`\nabla_xR` (θ0),
:math:`\lambda_iK_i^T\varphi'(u_i)` (θ_i), :math:`\lambda_i\nu_iK_i^T\partial_\nu\varphi'(u_i)`
(θ_{K+i}) and, for tap :math:`(a,b)` of filter ``i``,
:math:`\lambda_i[S_{ab}^T\varphi'(u_i) + K_i^T(\varphi''(u_i)\odot S_{ab}x)]`.  A matrix made of
column blocks :math:`J_B` has :math:`\|J\| \le (\sum_B\|J_B\|^2)^{1/2}`, and the same holds for
Lipschitz constants of the blocks.
"""
from __future__ import annotations

import math

import numpy as np

from .._filterbank import (
    Blocks,
    as_stack,
    fourier_norm_bounds,
    im2col,
    reflect_pad,
    schur_norm_bounds,
    weighted_gram_bound,
    work_array,
)
from .._validation import check_positive
from ..backend import get_namespace
from ..linalg import norm as _lnorm
from .base import potential_grad_error


def _per_filter(fun, nu):
    return np.array([fun(float(v)) for v in nu], dtype=np.float64)


def _norms(reg, taps):
    return np.minimum(schur_norm_bounds(np.abs(taps), reg.size), fourier_norm_bounds(taps, reg.size))


def lipschitz(reg, theta):
    lam, nu, taps = reg._bound_data(theta)
    return weighted_gram_bound(taps, lam * _per_filter(reg.potential.d2_max, nu))


def convexity(reg, theta):
    if reg.potential.convex:
        return 0.0
    lam, nu, taps = reg._bound_data(theta)
    lo = np.minimum(0.0, _per_filter(reg.potential.d2_min, nu))
    return -weighted_gram_bound(taps, lam * -lo)


def hessian_lipschitz(reg, theta):
    r"""Lipschitz constant in x of the Hessian, :math:`\|\sum_i\lambda_i c_i\|k_i\|_1 K_i^TK_i\|`.

    :math:`c_i = \sup|\varphi'''(\cdot;\nu_i)|`: the Hessian is
    :math:`\sum_i \lambda_i K_i^T \mathrm{diag}(\varphi''(K_ix)) K_i` and
    :math:`|\varphi''(K_ix)_p - \varphi''(K_ix')_p| \le c_i\|k_i\|_1\|x - x'\|_\infty`,
    :math:`\|\cdot\|_\infty \le \|\cdot\|_2`.  ``None`` when :math:`\varphi''` is not Lipschitz.
    """
    lam, nu, taps = reg._bound_data(theta)
    w = lam * _per_filter(reg.potential.d3_max, nu) * np.abs(taps).sum(axis=(1, 2))
    if not np.all(np.isfinite(w)):
        return None  # phi'' is not Lipschitz (e.g. Huber): no constant to claim
    return weighted_gram_bound(taps, w)


def grad_error_bound(reg, x, theta):
    r"""First-order rounding bound of ``grad`` (:func:`~varlearn.regularizers.base.potential_grad_error`).

    Filter ``i`` has absolute row and column sums :math:`\|k_i\|_1`; a pixel of
    :math:`K_ix` sums ``size**2`` products and a pixel of the adjoint
    ``n_filters * size**2``.
    """
    lam, nu, taps = reg._bound_data(theta)
    l1 = np.abs(taps).sum(axis=(1, 2))
    k = reg.n_filters * reg.size * reg.size
    return potential_grad_error(lam, _per_filter(reg.potential.d1_max, nu), _per_filter(reg.potential.d2_max, nu),
                                l1, l1, k, x, x.dtype)


def _fixed_columns(reg, theta):
    """Lipschitz constants of the θ0, θ_i and θ_{K+i} columns (``None`` when one does not exist)."""
    lam, nu, taps = reg._bound_data(theta)
    b = _norms(reg, taps)
    c_w = lam * _per_filter(reg.potential.d2_max, nu) * b * b               # column θ_i
    c_nu = lam * nu * _per_filter(reg.potential.d2_dnu_max, nu) * b * b     # column θ_{K+i}
    c_0 = lipschitz(reg, theta)                                              # column θ0: grad R
    total = c_0 ** 2 + float(np.sum(c_w ** 2 + c_nu ** 2))
    return total if math.isfinite(total) else None


def mixed_lipschitz(reg, theta):
    """Lipschitz constant in x of J for fixed filters; ``None`` for learned filters (it depends on x:
    see :func:`mixed_lipschitz_at`) or a potential whose constants do not exist."""
    if reg.learn_filters:
        return None
    total = _fixed_columns(reg, theta)
    return None if total is None else math.sqrt(total)


def _patch_energy(x3, s):
    """``P[n, i, j] = sum of x~^2 over the s x s reflect-padded window at (i, j)`` (float64)."""
    xp = get_namespace(x3)
    p = s // 2
    h, w = x3.shape[-2:]
    x2 = reflect_pad(x3.astype(xp.float64), p)
    x2 *= x2
    out = xp.zeros(x3.shape, dtype=xp.float64)
    for a in range(s):
        for b in range(s):
            out += x2[:, a:a + h, b:b + w]
    return out


def mixed_lipschitz_at(reg, x, theta, radius):
    r"""Lipschitz constant of J on the ball :math:`\|x' - x\| \le` ``radius`` (learned filters too).

    Tap block of filter ``i``: :math:`J(x)d - J(x')d = \lambda_i[D_d^T(\varphi'(u_i) - \varphi'(u_i'))
    + K_i^T((\varphi''(u_i) - \varphi''(u_i'))\odot D_dx) + K_i^T(\varphi''(u_i')\odot D_d(x - x'))]`, so
    its constant is :math:`\lambda_ib_i[2(2s-1)\sup\varphi''_i + \sup|\varphi'''_i|\,\|k_i\|_1
    (X + (2s-1)r)]` with :math:`X = (\sum_pP_p)^{1/2} \ge \|D_dx\|/\|d\|` at ``x``, or with
    :math:`\|k_i\|_1(X + (2s-1)r)` replaced by :math:`b_i(X_\infty + 2r)`,
    :math:`X_\infty = \max_pP_p^{1/2} \ge \|D_dx\|_\infty/\|d\|` (bounding the middle term by
    :math:`\|\varphi''(u_i) - \varphi''(u_i')\|_2\|D_dx\|_\infty` instead of the sup-norm of the first
    factor times :math:`\|D_dx\|`; a patch of the reflect-padded :math:`x' - x` has norm at most
    :math:`2\|x' - x\|`), whichever is smaller.  The other columns as in :func:`mixed_lipschitz`.
    """
    r = check_positive(radius, "radius", allow_zero=True)
    total = _fixed_columns(reg, theta)
    if total is None:
        return None
    if not reg.learn_filters:
        return math.sqrt(total)
    lam, nu, taps = reg._bound_data(theta)
    b = _norms(reg, taps)
    s = reg.size
    d3 = _per_filter(reg.potential.d3_max, nu)
    if not np.all(np.isfinite(d3)):
        return None
    energy = _patch_energy(as_stack(x), s)
    x_f = math.sqrt(float(energy.sum())) + (2 * s - 1) * r
    x_patch = math.sqrt(float(energy.max())) + 2.0 * r
    # the middle term two ways: sup-norm of the phi'' change times |D_d x|, or its 2-norm times max |D_d x|
    mid = d3 * np.minimum(np.abs(taps).sum(axis=(1, 2)) * x_f, b * x_patch)
    tap = lam * b * (2.0 * (2 * s - 1) * _per_filter(reg.potential.d2_max, nu) + mid)
    return math.sqrt(total + float(np.sum(tap * tap)))


def mixed_norm_bound(reg, x, theta):
    r"""Upper bound on :math:`\|J(x)\|`: the exact norm of the θ0 column and Frobenius bounds of the rest.

    One pass over the stack gives, per filter, :math:`s_1 = \|\varphi'(u_i)\|^2`,
    :math:`s_2 = \|\partial_\nu\varphi'(u_i)\|^2` and :math:`s_3 = \sum_p\varphi''(u_i)_p^2P_p`; then
    :math:`\|J\|^2 \le \|\nabla_xR\|^2 + \sum_i\lambda_i^2b_i^2(s_1 + \nu_i^2s_2)
    + \sum_i\lambda_i^2((2s-1)\sqrt{s_1} + b_i\sqrt{s_3})^2` (the last sum only for learned filters:
    :math:`\|[S_{ab}^T\varphi']_{ab}\|_F \le (2s-1)\|\varphi'\|` and
    :math:`\|[K_i^T(\varphi''\odot S_{ab}x)]_{ab}\|_F \le b_i\sqrt{s_3}`).  Sums are accumulated in
    float64; a relative slack of :math:`64u` covers the rounding of the computed columns.
    """
    xp = get_namespace(x, theta)
    lam, nu, taps_h = reg._bound_data(theta)
    b = _norms(reg, taps_h)
    k, s, p = reg.n_filters, reg.size, reg.size // 2
    x3 = as_stack(x)
    n, h, w = x3.shape
    taps = xp.asarray(taps_h.reshape(k, s * s), dtype=x.dtype)
    nu_c = xp.asarray(nu, dtype=x.dtype)[:, None]
    xpad = reflect_pad(x3, p)
    energy = _patch_energy(x3, s) if reg.learn_filters else None
    blocks = Blocks(n, h, w, k, s, x.dtype, xp)
    cbuf = xp.empty(blocks.size() * s * s, dtype=x.dtype)
    ubuf = xp.empty(blocks.size() * k, dtype=x.dtype)
    acc = xp.zeros((3, k), dtype=xp.float64)
    pot = reg.potential
    for blk in blocks:
        c, m = blk[1] - blk[0], (blk[3] - blk[2]) * w
        cols = im2col(xpad, blk, s, work_array(cbuf, (c, s * s, m)))
        u = xp.matmul(taps, cols, out=work_array(ubuf, (c, k, m)))
        d1 = pot.d1(u, nu_c).astype(xp.float64)
        acc[0] += xp.sum(d1 * d1, axis=(0, 2))
        dn = pot.d1_dnu(u, nu_c).astype(xp.float64)
        acc[1] += xp.sum(dn * dn, axis=(0, 2))
        if energy is not None:
            d2 = pot.d2(u, nu_c).astype(xp.float64)
            e = energy[blk[0]:blk[1], blk[2]:blk[3], :].reshape(c, 1, m)
            acc[2] += xp.sum(d2 * d2 * e, axis=(0, 2))
    s1, s2, s3 = (np.asarray(a.get() if hasattr(a, "get") else a, dtype=np.float64) for a in acc)
    g0 = _lnorm(reg.grad(x, theta).astype(xp.float64))
    total = g0 * g0 + float(np.sum(lam * lam * b * b * (s1 + nu * nu * s2)))
    if reg.learn_filters:
        total += float(np.sum((lam * ((2 * s - 1) * np.sqrt(s1) + b * np.sqrt(s3))) ** 2))
    u_round = float(np.finfo(x.dtype).eps) / 2.0
    return math.sqrt(total) * (1.0 + 64.0 * u_round)
