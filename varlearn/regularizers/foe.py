r"""Field of Experts: a learned bank of filters with a smooth sparsity potential."""
from __future__ import annotations

import math

import numpy as np

from .. import _accel
from .._filterbank import (
    Blocks,
    as_stack,
    check_float_array,
    check_out,
    col2im_add,
    fold_pad,
    im2col,
    reflect_pad,
    work_array,
)
from .._validation import check_int
from ..backend import get_namespace, is_cupy_array, xp_name
from ..potentials import Potential, SmoothedL1
from . import _foe_bounds as _fb
from .base import Regularizer, _host

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


_CUPY_KERNELS: dict = {}


def _cupy_kernel(xp, name):
    """Fused CuPy kernels of the smoothed-l1 path (``None`` on NumPy or when accelerators are off).

    ``value(u, y)``: ``y = sqrt(u² + 1)``; ``d1(u, y)``: ``y = u / sqrt(u² + 1)``;
    ``d2(u, kv)``: ``kv /= (u² + 1)^{3/2}`` in place.
    """
    if xp_name(xp) != "cupy" or not _accel.accelerated():
        return None
    k = _CUPY_KERNELS.get(name)
    if k is None:
        if name == "value":
            k = xp.ElementwiseKernel("T u", "T y", "y = sqrt(u * u + (T)1)", "varlearn_foe_value")
        elif name == "d1":
            k = xp.ElementwiseKernel("T u", "T y", "y = u / sqrt(u * u + (T)1)", "varlearn_foe_d1")
        elif name == "d2":
            k = xp.ElementwiseKernel("T u", "T kv", "T s = u * u + (T)1; kv = kv / (s * sqrt(s))",
                                     "varlearn_foe_d2")
        else:  # pragma: no cover
            raise KeyError(name)
        _CUPY_KERNELS[name] = k
    return k


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
        Any potential with a shape parameter; :class:`SmoothedL1` (the
        default) runs a faster specialised path.
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

    Bounds (:func:`varlearn._filterbank.weighted_gram_bound` bounds
    :math:`\|\sum_i w_i K_i^TK_i\|` by :math:`4\sup_\omega\sum_i w_i|\hat k_i(\omega)|^2`,
    certified on an FFT grid, or by Schur's test; see :mod:`varlearn._filterbank`):
    ``lipschitz`` bounds :math:`\|\sum_i\lambda_i\sup\varphi''(\cdot;\nu_i)K_i^TK_i\|`
    with :math:`\lambda_i = e^{\theta_0+\theta_i}` (:math:`\sup\varphi'' = 1/\nu_i` for
    smoothed ℓ1); it can be loose (``lipschitz_is_loose`` is True, so FISTA
    backtracks).  ``hessian_lipschitz`` bounds
    :math:`\|\sum_i\lambda_i\sup|\varphi'''_i|\,\|k_i\|_1 K_i^TK_i\|`
    (``|(K_i z)_p| <= ||k_i||_1 ||z||_∞ <= ||k_i||_1 ||z||_2``).
    ``mixed_lipschitz`` is ``None`` when the filters are learned: the column
    of a tap contains :math:`K_i^T(\varphi''(K_ix)\odot S_{ab}x)`, whose
    Lipschitz constant in ``x`` grows with ‖x‖; with fixed filters it is the
    root sum of squares of the column constants.

    On NumPy the work runs in cache-sized blocks (see
    :mod:`varlearn._filterbank`), and ``K x`` is never stored for the whole
    stack: one gradient or Hessian-vector product is one im2col + GEMM pass
    and one transposed GEMM + col2im pass per block.
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
        self._fast = type(potential) is SmoothedL1
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

    def _unpack(self, x, theta):
        """Validate and return ``xp, lam0, lam (K,), nu (K,), taps (K, s*s)`` (θ's dtype, 0-d/1-D arrays)."""
        check_float_array(x, "x")
        self._check_theta(theta)
        xp = get_namespace(x, theta)
        s = self.size
        c = s // 2
        if x.ndim < 2 or x.shape[-2] < c + 1 or x.shape[-1] < c + 1:
            raise ValueError(f"x must have shape (..., H, W) with H, W >= {c + 1} for {s}x{s} filters, "
                             f"got shape {tuple(x.shape)}")
        k = self.n_filters
        lam0 = xp.exp(theta[0])
        lam = xp.exp(theta[1:k + 1])
        nu = xp.exp(theta[k + 1:2 * k + 1])
        return xp, lam0, lam, nu, self._taps(theta, xp)

    def _host_params(self, theta):
        """``lam0, lam, nu, taps`` as NumPy float64 (for the Python-level bounds)."""
        self._check_theta(theta)
        t = np.asarray(_host(theta), dtype=np.float64)
        k, s = self.n_filters, self.size
        taps = t[2 * k + 1:].reshape(k, s, s) if self.learn_filters else self.filters
        return math.exp(t[0]), np.exp(t[1:k + 1]), np.exp(t[k + 1:2 * k + 1]), taps

    # ------------------------------------------------------------------ set-up of one pass
    def _forward_matrix(self, taps, nu, dtype, xp):
        """Taps applied in the forward GEMM: scaled by 1/ν on the smoothed-ℓ1 path."""
        a = taps / nu[:, None] if self._fast else taps
        return xp.ascontiguousarray(a.astype(dtype))

    def _adjoint_matrix(self, taps, lam0, lam, dtype, xp):
        """``(s*s, K)`` transposed taps scaled by the weights ``e^{θ0} e^{θ_i}``."""
        return xp.ascontiguousarray((taps * (lam0 * lam)[:, None]).T.astype(dtype))

    # ------------------------------------------------------------------ value and derivatives
    def value(self, x, theta):
        xp, lam0, lam, nu, taps = self._unpack(x, theta)
        k, s, p = self.n_filters, self.size, self.size // 2
        h, w = x.shape[-2:]
        x3 = as_stack(x)
        a = self._forward_matrix(taps, nu, x.dtype, xp)
        nu_c = nu.astype(x.dtype)[:, None]
        xpad = reflect_pad(x3, p)
        blocks = Blocks(x3.shape[0], h, w, k, s, x.dtype, xp)
        cbuf = xp.empty(blocks.size() * s * s, dtype=x.dtype)
        ubuf = xp.empty(blocks.size() * k, dtype=x.dtype)
        acc = xp.zeros(k, dtype=np.float64)
        kern = _cupy_kernel(xp, "value") if self._fast else None
        for blk in blocks:
            c, m = blk[1] - blk[0], (blk[3] - blk[2]) * w
            cols = im2col(xpad, blk, s, work_array(cbuf, (c, s * s, m)))
            u = xp.matmul(a, cols, out=work_array(ubuf, (c, k, m)))
            if self._fast and kern is not None:
                kern(u, u)
                acc += xp.sum(u, axis=(0, 2)).astype(np.float64)
            elif self._fast:  # sqrt(ũ² + 1), times ν below
                xp.multiply(u, u, out=u)
                u += 1.0
                xp.sqrt(u, out=u)
                acc += xp.sum(u, axis=(0, 2)).astype(np.float64)
            else:
                acc += xp.sum(self.potential.value(u, nu_c), axis=(0, 2)).astype(np.float64)
        wgt = lam0 * lam * nu if self._fast else lam0 * lam
        return xp.sum(wgt.astype(np.float64) * acc).astype(x.dtype)

    def grad(self, x, theta):
        return self.grad_data(x, theta, None, 0.0)

    def grad_data(self, x, theta, y, data_w, out=None):
        """``data_w (x - y) + grad R(x)`` (``y`` ignored when ``data_w == 0``), into ``out`` when given."""
        xp, lam0, lam, nu, taps = self._unpack(x, theta)
        k, s, p = self.n_filters, self.size, self.size // 2
        h, w = x.shape[-2:]
        x3 = as_stack(x)
        n = x3.shape[0]
        a = self._forward_matrix(taps, nu, x.dtype, xp)
        bt = self._adjoint_matrix(taps, lam0, lam, x.dtype, xp)
        nu_c = nu.astype(x.dtype)[:, None]
        xpad = reflect_pad(x3, p)
        zpad = xp.zeros_like(xpad)
        blocks = Blocks(n, h, w, k, s, x.dtype, xp)
        cbuf = xp.empty(blocks.size() * s * s, dtype=x.dtype)
        ubuf = xp.empty(blocks.size() * k, dtype=x.dtype)
        kern = _cupy_kernel(xp, "d1") if self._fast else None
        tbuf = xp.empty(blocks.size() * k, dtype=x.dtype) if self._fast and kern is None else None
        for blk in blocks:
            c, m = blk[1] - blk[0], (blk[3] - blk[2]) * w
            cols = im2col(xpad, blk, s, work_array(cbuf, (c, s * s, m)))
            u = xp.matmul(a, cols, out=work_array(ubuf, (c, k, m)))
            if self._fast and kern is not None:
                kern(u, u)
            elif self._fast:  # φ'(u) = ũ / sqrt(ũ² + 1)
                t = work_array(tbuf, (c, k, m))
                xp.multiply(u, u, out=t)
                t += 1.0
                xp.sqrt(t, out=t)
                u /= t
            else:
                u = self.potential.d1(u, nu_c)
            g = xp.matmul(bt, u, out=work_array(cbuf, (c, s * s, m)))
            col2im_add(g, blk, s, zpad)
        o3 = None if out is None else check_out(out, x.shape, x.dtype).reshape(n, h, w)
        o3 = fold_pad(zpad, p, out=o3)
        if y is not None and data_w != 0:
            o3 += data_w * (x3 - as_stack(y))
        if out is not None:
            return out
        return o3.reshape(x.shape)

    def hvp(self, x, theta, v):
        return self.hvp_data(x, theta, v, 0.0)

    def hvp_data(self, x, theta, v, data_w):
        """``data_w v + hess R(x) v``."""
        xp, lam0, lam, nu, taps = self._unpack(x, theta)
        check_float_array(v, "v")
        if tuple(v.shape) != tuple(x.shape):
            raise ValueError(f"v must have the shape of x {tuple(x.shape)}, got shape {tuple(v.shape)}")
        k, s, p = self.n_filters, self.size, self.size // 2
        h, w = x.shape[-2:]
        x3, v3 = as_stack(x), as_stack(v).astype(x.dtype, copy=False)
        n = x3.shape[0]
        a = self._forward_matrix(taps, nu, x.dtype, xp)
        bt = self._adjoint_matrix(taps, lam0, lam, x.dtype, xp)
        nu_c = nu.astype(x.dtype)[:, None]
        xpad = reflect_pad(x3, p)
        vpad = reflect_pad(v3, p)
        zpad = xp.zeros_like(xpad)
        blocks = Blocks(n, h, w, 2 * k, s, x.dtype, xp)  # two inputs per block
        cbuf = xp.empty(2 * blocks.size() * s * s, dtype=x.dtype)
        ubuf = xp.empty(2 * blocks.size() * k, dtype=x.dtype)
        kern = _cupy_kernel(xp, "d2") if self._fast else None
        tbuf = xp.empty(blocks.size() * k, dtype=x.dtype) if self._fast and kern is None else None
        for blk in blocks:
            c, m = blk[1] - blk[0], (blk[3] - blk[2]) * w
            cols = work_array(cbuf, (2, c, s * s, m))
            im2col(xpad, blk, s, cols[0])
            im2col(vpad, blk, s, cols[1])
            uv = xp.matmul(a, cols, out=work_array(ubuf, (2, c, k, m)))
            u, kv = uv[0], uv[1]
            if self._fast and kern is not None:
                kern(u, kv)
                q = kv
            elif self._fast:  # φ''(u) K v = ṽ / (ũ² + 1)^{3/2}
                t = work_array(tbuf, (c, k, m))
                xp.multiply(u, u, out=t)
                t += 1.0
                xp.sqrt(t, out=u)
                t *= u
                kv /= t
                q = kv
            else:
                q = self.potential.d2(u, nu_c) * kv
            g = xp.matmul(bt, q, out=work_array(cbuf, (c, s * s, m)))
            col2im_add(g, blk, s, zpad)
        o3 = fold_pad(zpad, p)
        if data_w != 0:
            o3 += data_w * v3
        return o3.reshape(x.shape)

    def mixed_vjp(self, x, theta, w):
        r""":math:`(\partial_\theta \nabla_x R)^T w`, shaped like θ.

        With :math:`g_i = \langle K_i w, \varphi'(K_i x)\rangle` and
        :math:`\lambda_i = e^{\theta_0 + \theta_i}`: θ0 gets :math:`\sum_i\lambda_i g_i`,
        θ_i gets :math:`\lambda_i g_i`, θ_{K+i} gets
        :math:`\lambda_i\nu_i\langle K_i w, \partial_\nu\varphi'(K_ix)\rangle`, and tap
        ``k_i[a,b]`` gets :math:`\lambda_i[\sum_p \varphi''(K_ix)_p (K_iw)_p \tilde x_{p+(a,b)}
        + \sum_p \varphi'(K_ix)_p \tilde w_{p+(a,b)}]` (``~`` = reflect padding).
        """
        xp, lam0, lam, nu, taps = self._unpack(x, theta)
        check_float_array(w, "w")
        if tuple(w.shape) != tuple(x.shape):
            raise ValueError(f"w must have the shape of x {tuple(x.shape)}, got shape {tuple(w.shape)}")
        k, s, p = self.n_filters, self.size, self.size // 2
        h, wd = x.shape[-2:]
        x3, w3 = as_stack(x), as_stack(w).astype(x.dtype, copy=False)
        n = x3.shape[0]
        a = self._forward_matrix(taps, nu, x.dtype, xp)
        nu_c = nu.astype(x.dtype)[:, None]
        xpad = reflect_pad(x3, p)
        wpad = reflect_pad(w3, p)
        blocks = Blocks(n, h, wd, 2 * k, s, x.dtype, xp)
        cbuf = xp.empty(2 * blocks.size() * s * s, dtype=x.dtype)
        ubuf = xp.empty(2 * blocks.size() * k, dtype=x.dtype)
        t1buf = xp.empty(blocks.size() * k, dtype=x.dtype)
        t2buf = xp.empty(blocks.size() * k, dtype=x.dtype)
        g_acc = xp.zeros(k, dtype=np.float64)
        h_acc = xp.zeros(k, dtype=np.float64)
        tap_acc = xp.zeros((k, s * s), dtype=x.dtype)
        for blk in blocks:
            c, m = blk[1] - blk[0], (blk[3] - blk[2]) * wd
            cols = work_array(cbuf, (2, c, s * s, m))
            im2col(xpad, blk, s, cols[0])
            im2col(wpad, blk, s, cols[1])
            uw = xp.matmul(a, cols, out=work_array(ubuf, (2, c, k, m)))
            u, kw = uw[0], uw[1]
            if self._fast:
                # ũ, w̃ scaled by 1/ν; r = sqrt(ũ²+1): φ'(u) = ũ/r, φ''(u)(Kw) = w̃/r³,
                # Kw = ν w̃ and ν ∂_ν φ'(u) (Kw) = -ν ũ w̃ / r³
                t1 = work_array(t1buf, (c, k, m))
                t2 = work_array(t2buf, (c, k, m))
                xp.multiply(u, u, out=t1)
                t1 += 1.0
                xp.sqrt(t1, out=t2)
                t1 *= t2
                xp.divide(u, t2, out=t2)                      # t2 = φ'(u)
                g_acc += xp.einsum("ckm,ckm->k", kw, t2).astype(np.float64)   # times ν below
                xp.divide(kw, t1, out=t1)                     # t1 = φ''(u) Kw
                h_acc -= xp.einsum("ckm,ckm->k", u, t1).astype(np.float64)   # times ν below
                y1, y2 = t1, t2
            else:
                d1 = self.potential.d1(u, nu_c)
                g_acc += xp.einsum("ckm,ckm->k", kw, d1).astype(np.float64)
                h_acc += xp.einsum("ckm,ckm->k", kw, self.potential.d1_dnu(u, nu_c)).astype(np.float64)
                y1, y2 = self.potential.d2(u, nu_c) * kw, d1
            tap_acc += xp.sum(xp.matmul(y1, cols[0].transpose(0, 2, 1)), axis=0)
            tap_acc += xp.sum(xp.matmul(y2, cols[1].transpose(0, 2, 1)), axis=0)
        lam_i = (lam0 * lam).astype(np.float64)
        nu64 = nu.astype(np.float64)
        if self._fast:
            g_acc = g_acc * nu64
        col_w = lam_i * g_acc
        col_nu = lam_i * nu64 * h_acc
        parts = [xp.sum(col_w)[None], col_w, col_nu]
        if self.learn_filters:
            parts.append((lam_i[:, None] * tap_acc.astype(np.float64)).ravel())
        return xp.concatenate(parts).astype(theta.dtype)

    # ------------------------------------------------------------------ bounds (see _foe_bounds)
    def _bound_data(self, theta):
        """Host ``lam_i = e^{θ0+θ_i}``, ``nu_i``, taps ``(K, s, s)`` for the Python-level bounds."""
        lam0, lam, nu, taps = self._host_params(theta)
        return lam0 * lam, nu, np.asarray(taps, dtype=np.float64)

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
