r"""Layers of Self-Tuning Networks with hand-written backward passes (NumPy or CuPy).

Convolutions run on the padded, channel-major, flat layout of
:mod:`varlearn.stn._conv` (:class:`Geometry`, :func:`to_padded`,
:func:`from_padded`; im2col + GEMM per block, the method and its measured
alternatives are described there).

Layers
------
* :func:`conv2d` / :func:`conv2d_backward`: multi-channel 2-D correlation,
  NCHW, stride 1, "same" zero padding (public NCHW wrappers of the padded kernels).
* :class:`STNConv2d`: the STN-gated convolution (MacKay et al. 2019, §1.2 of
  the STN spec); :class:`STNLinear`: the STN-gated linear layer (§1.1).
* :func:`relu`, :func:`channel_dropout_mask`: ReLU and per-example channel dropout.

References
----------
M. MacKay, P. Vicol, J. Lorraine, D. Duvenaud, R. Grosse, "Self-Tuning Networks:
Bilevel Optimization of Hyperparameters using Structured Best-Response
Functions", ICLR 2019 (arXiv:1903.03088).
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_namespace, xp_name
from ._conv import (
    Geometry,
    _check_kernel,
    conv_padded,
    conv_padded_backward,
    conv_padded_input_grad,
    conv_padded_weight_grad,
    from_padded,
    to_padded,
    zero_border,
)

__all__ = [
    "Geometry", "to_padded", "from_padded", "zero_border", "conv_padded", "conv_padded_input_grad",
    "conv_padded_weight_grad", "conv_padded_backward", "conv2d", "conv2d_backward", "relu",
    "channel_dropout_mask", "STNConv2d", "STNLinear",
]


# ---------------------------------------------------------------------------- NCHW convolution
def _nchw_geometry(x, w):
    if x.ndim != 4:
        raise ValueError(f"x must have shape (B, C, H, W), got shape {tuple(x.shape)}")
    _check_kernel(w, x.shape[1])
    if w.shape[2] % 2 != 1:
        raise ValueError(f"w must have an odd kernel size, got shape {tuple(w.shape)}")
    return Geometry(x.shape[0], x.shape[2], x.shape[3], w.shape[2])


def conv2d(x, w, b=None):
    r"""Multi-channel 2-D correlation, NCHW, stride 1, "same" zero padding.

    ``y[n, o] = Σ_c w[o, c] ⋆ x[n, c] + b[o]`` with
    ``(w ⋆ x)[i, j] = Σ_{a,b} w[a, b] x[i + a - p, j + b - p]`` (zero outside),
    ``p = k // 2`` (PyTorch's ``conv2d(x, w, b, padding=p)``).

    Parameters
    ----------
    x : array (B, C_in, H, W)
    w : array (C_out, C_in, k, k), k odd
    b : array (C_out,), optional
    """
    geom = _nchw_geometry(x, w)
    yf = conv_padded(to_padded(x, geom), w, geom)
    y = from_padded(yf, geom)
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y


def conv2d_backward(x, w, grad_y):
    """Gradients ``(dx, dw, db)`` of ``<grad_y, conv2d(x, w, b)>`` in ``x``, ``w`` and ``b``."""
    geom = _nchw_geometry(x, w)
    if tuple(grad_y.shape) != (x.shape[0], w.shape[0]) + tuple(x.shape[2:]):
        raise ValueError(f"grad_y must have shape {(x.shape[0], w.shape[0]) + tuple(x.shape[2:])}, "
                         f"got shape {tuple(grad_y.shape)}")
    gf = to_padded(grad_y, geom)
    xf = to_padded(x, geom)
    dx, dw = conv_padded_backward(xf, gf, w, geom)
    return from_padded(dx, geom), dw, grad_y.sum(axis=(0, 2, 3))


# ---------------------------------------------------------------------------- pointwise layers
def relu(a, out=None):
    """``max(a, 0)`` (in place with ``out=a``); its backward is ``g * (relu(a) > 0)``."""
    xp = get_namespace(a)
    return xp.maximum(a, 0, out=out)


def _rng_namespace(rng):
    mod = type(rng).__module__.split(".")[0]
    if mod == "cupy":
        return "cupy"
    if isinstance(rng, (np.random.Generator, np.random.RandomState)):
        return "numpy"
    raise TypeError(f"rng must be a numpy.random.Generator or a CuPy generator, got {type(rng).__name__}")


def channel_dropout_mask(rates, n_channels, rng, dtype):
    r"""Per-example channel-dropout mask ``(B, C)``: ``0`` with probability ``p_b``, else ``1/(1 - p_b)``.

    Inverted dropout: the mask has expectation 1, so evaluation (no dropout)
    needs no rescaling.  ``rates`` is a ``(B,)`` array in ``[0, 1)`` of the
    data's namespace and ``rng`` a generator of the same namespace (the mask is
    drawn on the device of the data).  The backward pass multiplies by the
    same mask.
    """
    xp = get_namespace(rates)
    if _rng_namespace(rng) != xp_name(xp):
        raise TypeError(f"rng is a {_rng_namespace(rng)} generator but the data are {xp_name(xp)} arrays; "
                        f"pass a generator of the data's namespace")
    if rates.ndim != 1:
        raise ValueError(f"dropout must be a (B,) array of rates, got shape {tuple(rates.shape)}")
    lo, hi = float(rates.min()), float(rates.max())
    if not (lo >= 0.0 and hi < 1.0):
        raise ValueError(f"dropout rates must lie in [0, 1), got values in [{lo}, {hi}]")
    u = rng.random((rates.shape[0], n_channels))
    keep = 1.0 - rates.astype(dtype)[:, None]
    return xp.where(u < keep, 1.0 / keep, 0.0).astype(dtype)


# ---------------------------------------------------------------------------- STN layers
def _uniform(rng, bound, shape):
    return bound * (2.0 * rng.random(shape) - 1.0)


def _gain_grads(lam, a, dgains):
    """Gradients of the gains map: ``dA = dgainsᵀ λ̃`` and ``dλ̃ = dgains A``."""
    return dgains.T @ lam, dgains @ a


class STNConv2d:
    r"""STN-gated convolution (STN spec §1.2) on the padded layout.

    .. math:: y_b = K_e \star x_b + b_e + g_w(\tilde\lambda_b) \odot (K_h \star x_b)
              + g_b(\tilde\lambda_b) \odot b_h, \qquad
              [g_w; g_b] = A\tilde\lambda_b,

    one gain per output channel and example.  Parameters (a dict, see
    :meth:`init_params`): ``K_e, K_h`` ``(C_out, C_in, k, k)``, ``b_e, b_h``
    ``(C_out,)``, ``A`` ``(2 C_out, n_hyper)`` (zero at initialisation, so the
    layer starts as its ungated base layer).
    """

    names = ("K_e", "K_h", "b_e", "b_h", "A")

    def __init__(self, c_in, c_out, n_hyper, kernel_size=3):
        self.c_in, self.c_out, self.n_hyper, self.kernel_size = int(c_in), int(c_out), int(n_hyper), int(kernel_size)

    def init_params(self, rng, dtype, xp, gain=2.0 ** 0.5):
        """Kaiming-uniform kernels (std ``gain/√fan_in``), ``b_e = 0``, ``b_h ~ U(±1/√fan_in)``, ``A = 0``."""
        co, ci, k, n = self.c_out, self.c_in, self.kernel_size, self.n_hyper
        fan_in = ci * k * k
        bound = gain * math.sqrt(3.0 / fan_in)
        host = {"K_e": _uniform(rng, bound, (co, ci, k, k)), "K_h": _uniform(rng, bound, (co, ci, k, k)),
                "b_e": np.zeros(co), "b_h": _uniform(rng, 1.0 / math.sqrt(fan_in), (co,)),
                "A": np.zeros((2 * co, n))}
        return {key: xp.asarray(v, dtype=dtype) for key, v in host.items()}

    def forward(self, p, x, lam, geom):
        """``x`` ``(C_in, N)`` with zero borders, ``lam`` ``(B, n_hyper)`` -> ``(y, cache)``, ``y`` ``(C_out, N)``.

        ``y`` has zero borders and may be modified in place by the caller.
        Method: the gains are per example, so example ``b`` is convolved with
        its own kernel ``K_e + diag(g_w,b) K_h`` (one GEMM per image block, as
        many operations as the ungated layer); ``K_h ⋆ x`` is never formed.
        """
        co = self.c_out
        gains = lam @ p["A"].T
        w = p["K_e"][None] + gains[:, :co, None, None, None] * p["K_h"][None]
        bias = p["b_e"][:, None] + gains[:, co:].T * p["b_h"][:, None]
        y = zero_border(conv_padded(x, w, geom, bias=bias), geom)
        return y, (x, w, gains, lam, geom)

    def backward(self, p, cache, g, need_input_grad=True):
        """``g`` = dL/dy ``(C_out, N)``, zero on borders -> ``(grads, dx or None, dlam)``.

        With ``dW_b = Σ_q g_b[:, q] x_b[:, q + d]ᵀ`` the per-example kernel
        gradient: ``dK_e = Σ_b dW_b``, ``dK_h = Σ_b diag(g_w,b) dW_b`` and
        ``∂g_w[b, o] = <dW_b[o], K_h[o]>``.
        """
        xp = get_namespace(g)
        x, w, gains, lam, geom = cache
        co = self.c_out
        sg = g.reshape(co, geom.batch, -1).sum(axis=2)
        if need_input_grad:
            dx, dwb = conv_padded_backward(x, g, w, geom, per_example=True)
        else:  # the im2col of x is cheaper when C_in < C_out (the first layer)
            dx, dwb = None, conv_padded_weight_grad(x, g, geom, per_example=True)
        flat = dwb.reshape(geom.batch, co, -1)
        dgw = xp.einsum("boj,oj->bo", flat, p["K_h"].reshape(co, -1))
        dkh = xp.einsum("bo,boj->oj", gains[:, :co], flat).reshape(p["K_h"].shape)
        dgains = xp.concatenate([dgw, (sg * p["b_h"][:, None]).T], axis=1)
        da, dlam = _gain_grads(lam, p["A"], dgains)
        grads = {"K_e": dwb.sum(axis=0), "K_h": dkh, "b_e": sg.sum(axis=1),
                 "b_h": (sg * gains[:, co:].T).sum(axis=1), "A": da}
        return grads, dx, dlam


class STNLinear:
    r"""STN-gated linear layer (STN spec §1.1), rows of the input are examples.

    .. math:: y_b = W_e x_b + b_e + g_w(\tilde\lambda_b) \odot (W_h x_b) + g_b(\tilde\lambda_b) \odot b_h,
              \qquad [g_w; g_b] = A\tilde\lambda_b,

    one gain per output unit and example.  Parameters: ``W_e, W_h``
    ``(d_out, d_in)``, and with ``bias`` ``b_e, b_h`` ``(d_out,)``; ``A`` is
    ``(2 d_out, n_hyper)`` with a bias and ``(d_out, n_hyper)`` without, zero
    at initialisation.
    """

    def __init__(self, d_in, d_out, n_hyper, bias=True):
        self.d_in, self.d_out, self.n_hyper, self.bias = int(d_in), int(d_out), int(n_hyper), bool(bias)
        self.names = ("W_e", "W_h", "b_e", "b_h", "A") if self.bias else ("W_e", "W_h", "A")

    def init_params(self, rng, dtype, xp, gain=1.0):
        """Uniform weights (std ``gain/√d_in``), ``b_e = 0``, ``b_h ~ U(±1/√d_in)``, ``A = 0``."""
        bound = gain * math.sqrt(3.0 / self.d_in)
        shape = (self.d_out, self.d_in)
        host = {"W_e": _uniform(rng, bound, shape), "W_h": _uniform(rng, bound, shape)}
        if self.bias:
            host["b_e"] = np.zeros(self.d_out)
            host["b_h"] = _uniform(rng, 1.0 / math.sqrt(self.d_in), (self.d_out,))
        host["A"] = np.zeros(((2 if self.bias else 1) * self.d_out, self.n_hyper))
        return {key: xp.asarray(v, dtype=dtype) for key, v in host.items()}

    def forward(self, p, x, lam):
        """``x`` ``(B, d_in)``, ``lam`` ``(B, n_hyper)`` -> ``(y, cache)`` with ``y`` ``(B, d_out)``."""
        d = self.d_out
        gains = lam @ p["A"].T
        zh = x @ p["W_h"].T
        y = x @ p["W_e"].T + gains[:, :d] * zh
        if self.bias:
            y += p["b_e"] + gains[:, d:] * p["b_h"]
        return y, (x, zh, gains, lam)

    def backward(self, p, cache, g, need_input_grad=True):
        """``g`` = dL/dy ``(B, d_out)`` -> ``(grads, dx or None, dlam)``."""
        xp = get_namespace(g)
        x, zh, gains, lam = cache
        d = self.d_out
        gh = g * gains[:, :d]
        parts = [(g * zh)]
        grads = {"W_e": g.T @ x, "W_h": gh.T @ x}
        if self.bias:
            grads["b_e"] = g.sum(axis=0)
            grads["b_h"] = (g * gains[:, d:]).sum(axis=0)
            parts.append(g * p["b_h"])
        dgains = xp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        grads["A"], dlam = _gain_grads(lam, p["A"], dgains)
        dx = g @ p["W_e"] + gh @ p["W_h"] if need_input_grad else None
        return grads, dx, dlam
