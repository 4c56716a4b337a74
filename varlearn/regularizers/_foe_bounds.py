r"""Certified constants of :class:`~varlearn.regularizers.FieldOfExperts`, from its parts.

FoE is the composition :math:`R = \sum_i\lambda_i\sum_p\varphi((K_ix)_p;\nu_i)` of the
:class:`~varlearn.operators.FilterBank` :math:`K` and the potential :math:`\varphi` with per-filter
natural parameters :math:`\lambda_i = e^{\theta_0+\theta_i}`, :math:`\nu_i = e^{\theta_{K+i}}`.  The
constants of the weights and smoothings come from
:class:`~varlearn.regularizers.composite.Composite` (in natural parameters), the operator
norms from the bank's ``weighted_gram_bound`` / ``filter_norm_bounds`` / ``row_norm_bounds``;
this module adds the θ0 column and the columns of the taps.

Notation: :math:`u_i = K_ix`, :math:`S_{ab}` the correlation with the unit tap at :math:`(a, b)`
(reflect padding), so that :math:`K_i = \sum_{ab} k_i[a,b] S_{ab}`.  Facts used:

* :math:`\|K_i\| \le b_i` (``filter_norm_bounds``: the smaller of the Schur and the certified
  Fourier bounds of :mod:`varlearn._filterbank`);
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

References
----------
.. [1] M. J. Ehrhardt, L. Roberts, "Analyzing inexact hypergradients for bilevel learning",
   IMA J. Appl. Math. 89 (2024) 254-278 (the constants of the hypergradient error bound).
.. [2] S. Roth, M. J. Black, "Fields of Experts", Int. J. Comput. Vision 82 (2009) 205-229.
"""
from __future__ import annotations

import math

import numpy as np

from .._filterbank import as_stack, reflect_pad
from .._validation import check_positive
from ..backend import get_namespace, to_numpy
from ..linalg import norm as _lnorm
from ..operators import FilterBank
from ..operators.filterbank import _Sweep
from .composite import Composite


def _parts(reg, theta, on_device=False):
    """Host float64 ``lam (K,)``, ``nu (K,)``, the bank of the taps and the composite (natural parameters).

    The bank holds host float64 taps, or with ``on_device`` the taps in θ's namespace and dtype (for
    passes over an ``x`` in that namespace).
    """
    lam0, lam, nu, taps = reg._host_params(theta)
    taps = reg.natural_params(theta)[2] if on_device else np.asarray(taps, dtype=np.float64)
    bank = FilterBank(taps)
    return lam0 * lam, nu, bank, Composite(bank, reg.potential)


def _per_filter(fun, nu):
    return np.array([fun(float(v)) for v in nu], dtype=np.float64)


def lipschitz(reg, theta):
    r""":math:`\|\sum_i\lambda_i\sup\varphi''_i K_i^TK_i\|`, bounded by the bank's ``weighted_gram_bound``."""
    lam, nu, _, comp = _parts(reg, theta)
    return comp.lipschitz(lam, nu)


def convexity(reg, theta):
    lam, nu, _, comp = _parts(reg, theta)
    return comp.convexity(lam, nu)


def hessian_lipschitz(reg, theta):
    r"""Lipschitz constant in x of the Hessian: :math:`\|\sum_i\lambda_i c_i r_i K_i^TK_i\|`.

    :math:`c_i = \sup|\varphi'''(\cdot;\nu_i)|`: the Hessian is
    :math:`\sum_i \lambda_i K_i^T \mathrm{diag}(\varphi''(K_ix)) K_i` and
    :math:`|\varphi''(K_ix)_p - \varphi''(K_ix')_p| \le c_i r_i\|x - x'\|_2` with :math:`r_i \ge
    \|K_i\|_{2\to\infty}` (``row_norm_bounds``: at most :math:`\|k_i\|_1`); the smaller of this and the
    composite's bound.  ``None`` when :math:`\varphi''` is not Lipschitz.
    """
    lam, nu, bank, comp = _parts(reg, theta)
    generic = comp.hessian_lipschitz(lam, nu)
    if generic is None:
        return None  # phi'' is not Lipschitz (e.g. Huber): no constant to claim
    w = lam * _per_filter(reg.potential.d3_max, nu) * bank.row_norm_bounds()
    return min(generic, bank.weighted_gram_bound(w))


def grad_error_bound(reg, x, theta):
    r"""First-order rounding bound of ``grad``: the composite's, from the bank's ``rounding_constants``.

    :func:`~varlearn.regularizers.composite.potential_grad_error` with per-filter constants:
    filter ``i`` has absolute row and column sums :math:`\|k_i\|_1`; a pixel of :math:`K_ix` sums ``size**2``
    products and a pixel of the adjoint ``n_filters * size**2``.
    """
    lam, nu, _, comp = _parts(reg, theta)
    return comp.grad_error_bound(x, lam, nu)


def _fixed_columns(reg, theta):
    r"""Sum of the squared Lipschitz constants of the θ0, θ_i and θ_{K+i} columns (``None`` if one is unknown).

    θ0: the gradient (:func:`lipschitz`); θ_i and θ_{K+i}: the composite's per-channel columns
    :math:`\lambda_i\sup\varphi''_i\|K_i\|^2` and
    :math:`\lambda_i\nu_i\sup|\partial_\nu\varphi''_i|\|K_i\|^2`.
    """
    lam, nu, _, comp = _parts(reg, theta)
    cols = comp.mixed_lipschitz(lam, nu)
    if cols is None:
        return None
    total = comp.lipschitz(lam, nu) ** 2 + cols ** 2
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
    its constant is :math:`\lambda_ib_i[2(2s-1)\sup\varphi''_i + \sup|\varphi'''_i|\,r_i
    (X + (2s-1)r)]` with :math:`X = (\sum_pP_p)^{1/2} \ge \|D_dx\|/\|d\|` at ``x`` and
    :math:`r_i \ge \|K_i\|_{2\to\infty}` (``row_norm_bounds``), or with
    :math:`r_i(X + (2s-1)r)` replaced by :math:`b_i(X_\infty + 2r)`,
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
    lam, nu, bank, _ = _parts(reg, theta)
    b = np.asarray(to_numpy(bank.filter_norm_bounds()), dtype=np.float64)
    s = reg.size
    d3 = _per_filter(reg.potential.d3_max, nu)
    if not np.all(np.isfinite(d3)):
        return None
    energy = _patch_energy(as_stack(x), s)
    x_f = math.sqrt(float(energy.sum())) + (2 * s - 1) * r
    x_patch = math.sqrt(float(energy.max())) + 2.0 * r
    # the middle term two ways: sup-norm of the phi'' change times |D_d x|, or its 2-norm times max |D_d x|
    mid = d3 * np.minimum(bank.row_norm_bounds() * x_f, b * x_patch)
    tap = lam * b * (2.0 * (2 * s - 1) * _per_filter(reg.potential.d2_max, nu) + mid)
    return math.sqrt(total + float(np.sum(tap * tap)))


def _tap_sums(reg, x, theta):
    r"""Per filter :math:`s_1 = \|\varphi'(u_i)\|^2` and :math:`s_3 = \sum_p\varphi''(u_i)_p^2P_p` (host float64).

    One sweep of the bank over the blocks of ``x`` (:class:`~varlearn.operators.filterbank._Sweep`,
    the block loop of :meth:`~varlearn.operators.FilterBank.pullback`, which also knows the pixels
    of each block for the patch energy).
    """
    xp = get_namespace(x, theta)
    _, nu, taps = reg.natural_params(theta)
    bank = FilterBank(taps)
    f, _ = bank._matrices(xp, x.dtype)
    nu_b = xp.asarray(nu, dtype=x.dtype)[:, None]
    x3 = as_stack(x)
    energy = _patch_energy(x3, reg.size)
    acc = xp.zeros((2, reg.n_filters), dtype=np.float64)
    pot = reg.potential
    sweep = _Sweep(x3.shape, reg.n_filters, reg.size, x.dtype, xp, [reflect_pad(x3, bank.pad)])
    for blk, cols in sweep:
        u = sweep.forward(f, cols)[0]
        d1 = pot.d1(u, nu_b).astype(np.float64)
        acc[0] += xp.sum(d1 * d1, axis=(0, 2))
        d2 = pot.d2(u, nu_b).astype(np.float64)
        n0, n1, r0, r1 = blk
        e = energy[n0:n1, r0:r1, :].reshape(n1 - n0, 1, -1)
        acc[1] += xp.sum(d2 * d2 * e, axis=(0, 2))
    return (np.asarray(to_numpy(a), dtype=np.float64) for a in acc)


def mixed_norm_bound(reg, x, theta):
    r"""Upper bound on :math:`\|J(x)\|`: the exact norm of the θ0 column and Frobenius bounds of the rest.

    :math:`\|J\|^2 \le \|\nabla_xR\|^2 + B^2 + \sum_i\lambda_i^2((2s-1)\sqrt{s_1} + b_i\sqrt{s_3})^2`,
    with :math:`B` the composite's ``mixed_norm_bound`` of the θ_i and θ_{K+i} columns
    (:math:`\|\lambda_iK_i^T\varphi'(u_i)\| \le \lambda_ib_i\|\varphi'(u_i)\|` and likewise for the
    smoothings) and the last sum only for learned filters
    (:math:`\|[S_{ab}^T\varphi']_{ab}\|_F \le (2s-1)\|\varphi'\|` and
    :math:`\|[K_i^T(\varphi''\odot S_{ab}x)]_{ab}\|_F \le b_i\sqrt{s_3}`, :func:`_tap_sums`).  Sums are
    accumulated in float64; a relative slack of :math:`64u` covers the rounding of the computed columns.
    """
    lam, nu, bank, comp = _parts(reg, theta, on_device=True)
    xp = get_namespace(x, theta)
    g0 = _lnorm(reg.grad(x, theta).astype(xp.float64))
    total = g0 * g0 + comp.mixed_norm_bound(x, lam, nu) ** 2
    if reg.learn_filters:
        b = np.asarray(to_numpy(bank.filter_norm_bounds()), dtype=np.float64)
        s1, s3 = _tap_sums(reg, x, theta)
        total += float(np.sum((lam * ((2 * reg.size - 1) * np.sqrt(s1) + b * np.sqrt(s3))) ** 2))
    u_round = float(np.finfo(x.dtype).eps) / 2.0
    return math.sqrt(total) * (1.0 + 64.0 * u_round)
