r"""Field of Experts: a learned bank of filters with a smooth sparsity potential.

A parameterisation: θ is mapped to per-filter natural parameters (weights, smoothings, taps) of the
composition of a :class:`~varlearn.operators.FilterBank` and a potential
(:class:`~varlearn.regularizers.composite.Composite`); every derivative and bound comes from the
parts, and this module only chain-rules them back to θ.

References
----------
.. [1] S. Roth, M. J. Black, "Fields of Experts", Int. J. Comput. Vision 82 (2009) 205-229.
.. [2] M. S. Salehi, S. Mukherjee, L. Roberts, M. J. Ehrhardt, "An adaptively inexact first-order
   method for bilevel optimization with application to hyperparameter learning" (MAID), 2023.
"""
from __future__ import annotations

import math

import numpy as np

from .._filterbank import check_float_array
from .._validation import check_int
from ..backend import get_namespace, is_cupy_array, xp_name
from ..operators import FilterBank
from ..potentials import Potential, SmoothedL1
from . import _foe_bounds as _fb
from .base import Regularizer, _host
from .composite import Composite

__all__ = ["FieldOfExperts"]

#: default θ values (log scale) returned by :meth:`FieldOfExperts.init_params`
INIT_LOG_GLOBAL_WEIGHT = -3.0
INIT_LOG_WEIGHT = -3.0
INIT_LOG_SMOOTHING = -3.0
#: seed of the default filters when the constructor gets ``rng=None``
DEFAULT_SEED = 0


def _make_rng(rng):
    """``None | int | np.random.Generator | np.random.RandomState`` -> a NumPy random source."""
    if rng is None:
        return np.random.default_rng(DEFAULT_SEED)
    if isinstance(rng, (np.random.Generator, np.random.RandomState)):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be None, an int, a numpy Generator or RandomState, got {type(rng).__name__}")


class FieldOfExperts(Regularizer):
    r"""Field-of-Experts regularizer with learnable filters, weights and smoothings.

    .. math:: R(x,\theta) = e^{\theta_0} \sum_{i=1}^{K} e^{\theta_i}
              \sum_p \varphi\big((k_i \star x)_p;\ \nu_i\big), \qquad \nu_i = e^{\theta_{K+i}},

    with ``φ`` the potential (default :class:`~varlearn.potentials.SmoothedL1`,
    :math:`\sqrt{t^2+\nu^2}`) and ``⋆`` the "same"-size 2-D cross-correlation
    with reflect padding of :class:`~varlearn.operators.FilterBank` (images
    must be at least ``(size//2+1) x (size//2+1)``).  There is no ½ and no 1/N: the
    MAID paper's ½ is absorbed into :math:`\theta_0`, and the denoising problem
    adds ½‖x − y‖².

    θ layout (``param_layout()``)::

        [θ0 | K log weights | K log smoothings | K*size*size filter taps]

    the taps row-major in ``(K, size, size)`` and present only when
    ``learn_filters`` (2449 numbers for K = 48, size = 7); otherwise the
    filters are the fixed attribute :attr:`filters`.

    Parameters
    ----------
    n_filters : int >= 1
    size : odd int >= 1
    learn_filters : bool
        Whether the filter taps are part of θ.
    rng : None, int, numpy Generator or RandomState
        Source of the default filters, drawn once here (``None``: seed 0), so
        ``init_params()`` of one instance is reproducible.
    potential : Potential, optional
        Any potential with a shape parameter (default :class:`SmoothedL1`).
        When it has a ``homogeneity`` ``a`` (:math:`\varphi(t;\nu) = \nu^a\varphi(t/\nu;1)`)
        the smoothings are folded into the filters (see :meth:`_pass`).
    filters : array of shape (n_filters, size, size), optional
        Use these filters instead of random ones (copied to a NumPy float64
        array).  The attribute :attr:`filters` holds the taps that
        ``init_params()`` puts into θ, and the fixed filters when
        ``learn_filters=False``.

    Notes
    -----
    ``init_params``: θ0 = −3, log weights −3, log smoothings −3 (the MAID
    reference code intends −3.5 for the smoothings but writes the wrong index
    range, so its runs start at −3), filters Xavier-normal on a ``size x size``
    tensor (std :math:`\sqrt{2/(2\,size)}`) minus their mean.

    Computation: θ ↦ :math:`\lambda_i = e^{\theta_0+\theta_i}`, :math:`\nu_i`, taps
    (:meth:`natural_params`), then :class:`~varlearn.regularizers.composite.Composite`
    ``(FilterBank(taps), potential)`` with per-filter :math:`(\lambda_i, \nu_i)`; every pass is one
    blocked :meth:`~varlearn.operators.FilterBank.pullback` (cache-sized blocks, im2col + GEMM,
    ``K x`` never stored for the whole stack; weights folded into the adjoint GEMM).

    Bounds (:mod:`varlearn.regularizers._foe_bounds`): ``lipschitz`` is the composite's
    :math:`\|\sum_i\lambda_i\sup\varphi''(\cdot;\nu_i)K_i^TK_i\|`, bounded by the bank's
    ``weighted_gram_bound`` (certified FFT or Schur bound, :mod:`varlearn._filterbank`); it can be
    loose (``lipschitz_is_loose`` is True, so FISTA backtracks).  ``hessian_lipschitz`` bounds
    :math:`\|\sum_i\lambda_i\sup|\varphi'''_i|\,r_i K_i^TK_i\|` with
    :math:`r_i \ge \|K_i\|_{2\to\infty}` (``row_norm_bounds``), or takes the composite's bound.
    ``mixed_lipschitz`` is ``None`` when the filters are learned: the column
    of a tap contains :math:`K_i^T(\varphi''(K_ix)\odot S_{ab}x)`, whose
    Lipschitz constant in ``x`` grows with ‖x‖ (``mixed_lipschitz_at`` bounds it on a ball);
    with fixed filters it is the root sum of squares of the column constants.
    """

    def __init__(self, n_filters=48, size=7, learn_filters=True, rng=None, potential=None, filters=None):
        self.n_filters = check_int(n_filters, "n_filters", minimum=1)
        size = check_int(size, "size", minimum=1)
        if size % 2 != 1:
            raise ValueError(f"size must be odd, got {size!r}")
        self.size = size
        if potential is None:
            potential = SmoothedL1()
        if not isinstance(potential, Potential):
            raise TypeError(f"potential must be a Potential, got {type(potential).__name__}")
        if not potential.has_param:
            raise ValueError(f"potential must have a shape parameter (a smoothing), got {potential!r}")
        self.potential = potential
        self._fold = potential.homogeneity is not None
        self.learn_filters = bool(learn_filters)
        self.rng = rng
        if filters is None:
            filters = self._draw_filters(_make_rng(rng))
        else:
            filters = np.array(_host(filters), dtype=np.float64)
            expected = (self.n_filters, size, size)
            if filters.shape != expected:
                raise ValueError(f"filters must have shape {expected}, got shape {filters.shape}")
            if not np.all(np.isfinite(filters)):
                raise ValueError("filters contains NaN or Inf values")
        self.filters = filters
        k = self.n_filters
        self.n_params = 1 + 2 * k + (k * size * size if self.learn_filters else 0)
        self._fixed_cache = {}

    def __repr__(self):
        return (f"FieldOfExperts(n_filters={self.n_filters}, size={self.size}, "
                f"learn_filters={self.learn_filters}, potential={self.potential!r})")

    # ------------------------------------------------------------------ parameters
    def _draw_filters(self, rng):
        k, s = self.n_filters, self.size
        std = math.sqrt(2.0 / (2 * s))  # Xavier-normal on an s x s tensor: fan_in = fan_out = s
        f = std * np.asarray(rng.standard_normal(size=(k, s, s)), dtype=np.float64)
        return f - f.mean(axis=(1, 2), keepdims=True)

    def init_params(self, rng=None):
        """Default θ (NumPy float64, 1-D); see the class notes.

        ``rng=None`` uses the filters drawn at construction (reproducible);
        otherwise fresh zero-mean filters are drawn from ``rng``.
        """
        k = self.n_filters
        parts = [np.array([INIT_LOG_GLOBAL_WEIGHT]), np.full(k, INIT_LOG_WEIGHT), np.full(k, INIT_LOG_SMOOTHING)]
        if self.learn_filters:
            f = self.filters if rng is None else self._draw_filters(_make_rng(rng))
            parts.append(f.ravel())
        return np.concatenate(parts).astype(np.float64)

    def param_layout(self):
        k = self.n_filters
        out = [("log_global_weight", slice(0, 1)), ("log_weights", slice(1, k + 1)),
               ("log_smoothings", slice(k + 1, 2 * k + 1))]
        if self.learn_filters:
            out.append(("filters", slice(2 * k + 1, self.n_params)))
        return out

    def split(self, theta):
        """Named views of θ: ``log_global_weight`` (0-d), ``log_weights``, ``log_smoothings`` (K),
        ``filters`` (K, size, size; the fixed filters when they are not learned)."""
        self._check_theta(theta)
        k, s = self.n_filters, self.size
        d = {"log_global_weight": theta[0], "log_weights": theta[1:k + 1],
             "log_smoothings": theta[k + 1:2 * k + 1]}
        d["filters"] = theta[2 * k + 1:].reshape(k, s, s) if self.learn_filters else self.filters
        return d

    def _check_theta(self, theta):
        if not (isinstance(theta, np.ndarray) or is_cupy_array(theta)):
            raise TypeError(f"theta must be a 1-D NumPy or CuPy array, got {type(theta).__name__}")
        if theta.ndim != 1 or theta.shape[0] != self.n_params:
            raise ValueError(f"theta must be a 1-D array of length {self.n_params}, got shape {tuple(theta.shape)}")

    def _taps(self, theta, xp):
        """The ``(K, s*s)`` taps in θ's namespace and dtype."""
        k, s = self.n_filters, self.size
        if self.learn_filters:
            return theta[2 * k + 1:].reshape(k, s * s)
        key = (xp_name(xp), theta.dtype.str)
        t = self._fixed_cache.get(key)
        if t is None:
            t = xp.asarray(self.filters.reshape(k, s * s), dtype=theta.dtype)
            self._fixed_cache[key] = t
        return t

    def _host_params(self, theta):
        """``lam0, lam, nu, taps`` as NumPy float64 (for the Python-level bounds)."""
        self._check_theta(theta)
        t = np.asarray(_host(theta), dtype=np.float64)
        k, s = self.n_filters, self.size
        taps = t[2 * k + 1:].reshape(k, s, s) if self.learn_filters else self.filters
        return math.exp(t[0]), np.exp(t[1:k + 1]), np.exp(t[k + 1:2 * k + 1]), taps

    # ------------------------------------------------------------------ θ -> the composition
    def natural_params(self, theta):
        r"""``(lam, nu, filters)``: :math:`\lambda_i = e^{\theta_0+\theta_i}`, :math:`\nu_i = e^{\theta_{K+i}}`
        (``(K,)`` arrays) and the ``(K, size, size)`` taps, in θ's namespace and dtype."""
        self._check_theta(theta)
        xp = get_namespace(theta)
        k, s = self.n_filters, self.size
        lam = xp.exp(theta[0] + theta[1:k + 1])
        return lam, xp.exp(theta[k + 1:2 * k + 1]), self._taps(theta, xp).reshape(k, s, s)

    def _pass(self, x, theta):
        r"""Validate; return ``(composite, lam', nu', lam, nu)`` for one pass over ``x``.

        The composite is :math:`\sum_i \lambda'_i \sum_p \varphi((K'_ix)_p; \nu'_i)`.  For a
        potential of homogeneity ``a`` (:math:`\varphi(t;\nu) = \nu^a\varphi(t/\nu; 1)`) the
        smoothings are folded into the filters, :math:`K' = K/\nu`, :math:`\lambda' = \lambda\nu^a`,
        :math:`\nu' = 1` (the same function; the forward GEMM does the scaling); otherwise
        :math:`K' = K`, :math:`\lambda' = \lambda`, :math:`\nu' = \nu`.
        """
        check_float_array(x, "x")
        lam, nu, taps = self.natural_params(theta)
        xp = get_namespace(x, theta)
        c = self.size // 2
        if x.ndim < 2 or x.shape[-2] < c + 1 or x.shape[-1] < c + 1:
            raise ValueError(f"x must have shape (..., H, W) with H, W >= {c + 1} for {self.size}x{self.size} "
                             f"filters, got shape {tuple(x.shape)}")
        if self._fold:
            a = self.potential.homogeneity
            bank = FilterBank(taps / nu[:, None, None])
            return Composite(bank, self.potential), lam * nu ** a, xp.ones_like(nu), lam, nu
        return Composite(FilterBank(taps), self.potential), lam, nu, lam, nu

    # ------------------------------------------------------------------ value and derivatives
    def value(self, x, theta):
        comp, lam_p, nu_p, _, _ = self._pass(x, theta)
        return comp.value(x, lam_p, nu_p)

    def grad(self, x, theta):
        comp, lam_p, nu_p, _, _ = self._pass(x, theta)
        return comp.grad(x, lam_p, nu_p)

    def hvp(self, x, theta, v):
        comp, lam_p, nu_p, _, _ = self._pass(x, theta)
        check_float_array(v, "v")
        return comp.hvp(x, lam_p, nu_p, v)

    def fused_grad(self, x, theta, y=None, data_w=0.0, *, x_prev=None, beta=0.0, step=None, out=None):
        comp, lam_p, nu_p, _, _ = self._pass(x, theta)
        return comp.fused_grad(x, lam_p, nu_p, y, data_w, x_prev=x_prev, beta=beta, step=step, out=out)

    def fused_hvp(self, x, theta, v, data_w=0.0, *, out=None):
        comp, lam_p, nu_p, _, _ = self._pass(x, theta)
        check_float_array(v, "v")
        return comp.fused_hvp(x, lam_p, nu_p, v, data_w, out=out)

    def mixed_vjp(self, x, theta, w):
        r""":math:`(\partial_\theta \nabla_x R)^T w`, shaped like θ.

        The composite gives :math:`\partial_{\lambda'}`, :math:`\partial_{\nu'}` and
        :math:`\partial_{K'}` of :math:`\langle w, \nabla_xR\rangle`; with the folded smoothings
        (:meth:`_pass`) the natural ones are :math:`\partial_\lambda = \nu^a\partial_{\lambda'}`,
        :math:`\nu\partial_\nu = \partial_{\nu'}` (Euler's identity for the homogeneous
        :math:`\varphi`) and :math:`\partial_K = \partial_{K'}/\nu`.  Then θ0 gets
        :math:`\sum_i\lambda_i\partial_{\lambda_i}`, θ_i gets :math:`\lambda_i\partial_{\lambda_i}`,
        θ_{K+i} gets :math:`\nu_i\partial_{\nu_i}` and the taps :math:`\partial_K`.
        """
        comp, lam_p, nu_p, lam, nu = self._pass(x, theta)
        check_float_array(w, "w")
        if tuple(w.shape) != tuple(x.shape):
            raise ValueError(f"w must have the shape of x {tuple(x.shape)}, got shape {tuple(w.shape)}")
        xp = get_namespace(x, theta)
        d_lam, d_nu, d_op = comp.mixed(x, lam_p, nu_p, w, op_params=self.learn_filters)
        lam64, nu64 = lam.astype(np.float64), nu.astype(np.float64)
        if self._fold:
            col_w = lam64 * nu64 ** self.potential.homogeneity * d_lam
            col_nu = xp.asarray(d_nu, dtype=np.float64)
        else:
            col_w = lam64 * d_lam
            col_nu = nu64 * d_nu
        parts = [xp.sum(col_w)[None], col_w, col_nu]
        if self.learn_filters:
            taps = d_op.reshape(self.n_filters, -1).astype(np.float64)
            parts.append((taps / nu64[:, None] if self._fold else taps).ravel())
        return xp.concatenate(parts).astype(theta.dtype)

    # ------------------------------------------------------------------ bounds (see _foe_bounds)
    def lipschitz(self, theta):
        r""":math:`\|\sum_i \lambda_i \sup\varphi''(\cdot;\nu_i)\,K_i^TK_i\|`, bounded by ``weighted_gram_bound``."""
        return _fb.lipschitz(self, theta)

    def convexity(self, theta):
        return _fb.convexity(self, theta)

    def lipschitz_is_loose(self, theta):
        return True

    def hessian_lipschitz(self, theta):
        return _fb.hessian_lipschitz(self, theta)

    def mixed_lipschitz(self, theta):
        return _fb.mixed_lipschitz(self, theta)

    def mixed_lipschitz_at(self, x, theta, radius):
        return _fb.mixed_lipschitz_at(self, x, theta, radius)

    def mixed_norm_bound(self, x, theta):
        return _fb.mixed_norm_bound(self, x, theta)

    def grad_error_bound(self, x, theta):
        return _fb.grad_error_bound(self, x, theta)

    def describe(self, theta):
        lam0, lam, nu, taps = self._host_params(theta)
        return {
            "n_filters": self.n_filters,
            "size": self.size,
            "learn_filters": self.learn_filters,
            "potential": type(self.potential).__name__,
            "global_weight": lam0,
            "weights": lam.tolist(),
            "smoothings": nu.tolist(),
            "filters": np.asarray(taps, dtype=float).tolist(),
        }
