"""Smoothed total variation."""
from __future__ import annotations

import math

import numpy as np

from .. import _accel
from ..backend import get_namespace, xp_name
from ..linalg import vdot as _vdot
from ..operators import FiniteDifference
from .base import Regularizer, _host

__all__ = ["TotalVariation"]

_D = FiniteDifference()


def _as_batch(a):
    """View ``(..., H, W)`` as a C-contiguous ``(N, H, W)`` stack (copy only if needed)."""
    xp = get_namespace(a)
    a3 = a.reshape((-1,) + a.shape[-2:]) if a.ndim != 3 else a
    return xp.ascontiguousarray(a3)


class TotalVariation(Regularizer):
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

    Bounds: :math:`\|\nabla^2 R\| \le 8 e^{\theta_0 - \theta_1}`; R is convex.
    On NumPy arrays the hot operations run as fused numba kernels when numba is
    installed (see :mod:`varlearn._accel`), on CuPy arrays as fused CUDA kernels.
    """

    n_params = 2

    def __init__(self, isotropic=True, weight=0.1, smoothing=0.01):
        self.isotropic = bool(isotropic)
        self.default_weight = float(weight)
        self.default_smoothing = float(smoothing)

    def __repr__(self):
        return f"TotalVariation(isotropic={self.isotropic})"

    def init_params(self, rng=None):  # noqa: ARG002
        return np.array([math.log(self.default_weight), math.log(self.default_smoothing)])

    def param_layout(self):
        return [("log_weight", slice(0, 1)), ("log_smoothing", slice(1, 2))]

    @staticmethod
    def _scalars(theta):
        t = _host(theta)
        return math.exp(float(t[0])), math.exp(float(t[1]))

    def describe(self, theta):
        lam, nu = self._scalars(theta)
        return {"weight": lam, "smoothing": nu, "isotropic": self.isotropic}

    # ------------------------------------------------------------------ kernels
    def _kernels(self, x):
        """The fused kernel module for ``x``'s backend, or ``None``."""
        if xp_name(get_namespace(x)) == "cupy":
            return _accel.cupy_module("_tv_cupy")
        return _accel.numba_module("_tv_numba")

    # ------------------------------------------------------------------ reference
    def _flux(self, u, nu):
        """phi'(u) for u = Dx of shape (..., 2, H, W) (boundary entries are zero)."""
        xp = get_namespace(u)
        if self.isotropic:
            r = xp.sqrt(u[..., 0, :, :] ** 2 + u[..., 1, :, :] ** 2 + nu * nu)
            return u / r[..., None, :, :]
        return u / xp.sqrt(u * u + nu * nu)

    def value(self, x, theta):
        xp = get_namespace(x, theta)
        lam, nu = self._scalars(theta)
        k = self._kernels(x)
        if k is not None:
            return xp.asarray(k.value(_as_batch(x), lam, nu * nu, self.isotropic), dtype=x.dtype)
        u = _D.apply(x)
        if self.isotropic:
            r = xp.sqrt(u[..., 0, :, :] ** 2 + u[..., 1, :, :] ** 2 + nu * nu)
            return lam * xp.sum(r)
        mask = _D.output_mask(x.shape, xp).astype(x.dtype)
        return lam * xp.sum(xp.sqrt(u * u + nu * nu) * mask)

    def grad(self, x, theta):
        return self.grad_data(x, theta, None, 0.0)

    def grad_data(self, x, theta, y, data_w, out=None):
        """``data_w (x - y) + grad R(x)`` in one pass (``y`` ignored when ``data_w == 0``)."""
        xp = get_namespace(x, theta)
        lam, nu = self._scalars(theta)
        k = self._kernels(x)
        if k is not None:
            xb = _as_batch(x)
            yb = xb if y is None or data_w == 0 else _as_batch(y)
            ob = xp.empty_like(xb) if out is None else out.reshape(xb.shape)
            k.grad(xb, yb, float(data_w), lam, nu * nu, self.isotropic, ob)
            return ob.reshape(x.shape)
        g = lam * _D.adjoint(self._flux(_D.apply(x), nu))
        if y is not None and data_w != 0:
            g += data_w * (x - y)
        if out is not None:
            out[...] = g
            return out
        return g

    def hvp(self, x, theta, v):
        return self.hvp_data(x, theta, v, 0.0)

    def hvp_data(self, x, theta, v, data_w):
        """``data_w v + hess R(x) v``."""
        xp = get_namespace(x, theta, v)
        lam, nu = self._scalars(theta)
        k = self._kernels(x)
        if k is not None:
            xb = _as_batch(x)
            vb = _as_batch(v)
            out = xp.empty_like(xb)
            k.hvp(xb, vb, float(data_w), lam, nu * nu, self.isotropic, out)
            return out.reshape(x.shape)
        u = _D.apply(x)
        dv = _D.apply(v)
        if self.isotropic:
            s = u[..., 0, :, :] ** 2 + u[..., 1, :, :] ** 2 + nu * nu
            r = xp.sqrt(s)
            k_ = (u[..., 0, :, :] * dv[..., 0, :, :] + u[..., 1, :, :] * dv[..., 1, :, :]) / (s * r)
            p = dv / r[..., None, :, :] - u * k_[..., None, :, :]
        else:
            s = u * u + nu * nu
            p = (nu * nu) * dv / (s * xp.sqrt(s))
        out = lam * _D.adjoint(p)
        if data_w != 0:
            out += data_w * v
        return out

    def mixed_vjp(self, x, theta, w):
        xp = get_namespace(x, theta, w)
        lam, nu = self._scalars(theta)
        u = _D.apply(x)
        dw = _D.apply(w)
        if self.isotropic:
            s = u[..., 0, :, :] ** 2 + u[..., 1, :, :] ** 2 + nu * nu
            r = xp.sqrt(s)
            ud = u[..., 0, :, :] * dw[..., 0, :, :] + u[..., 1, :, :] * dw[..., 1, :, :]
            a = xp.sum(ud / r)
            b = -lam * nu * nu * xp.sum(ud / (s * r))
        else:
            s = u * u + nu * nu
            r = xp.sqrt(s)
            a = xp.sum(u * dw / r)
            b = -lam * nu * nu * xp.sum(u * dw / (s * r))
        return xp.stack([lam * a, b]).astype(theta.dtype)

    def mixed_norm_bound(self, x, theta):
        r"""Frobenius norm of :math:`J(x) = \partial_\theta \nabla_x R(x,\theta)` (its two columns
        computed exactly), an upper bound on its operator norm."""
        xp = get_namespace(x, theta)
        lam, nu = self._scalars(theta)
        u = _D.apply(x)
        if self.isotropic:
            s = u[..., 0, :, :] ** 2 + u[..., 1, :, :] ** 2 + nu * nu
            r = xp.sqrt(s)[..., None, :, :]
            s = s[..., None, :, :]
        else:
            s = u * u + nu * nu
            r = xp.sqrt(s)
        c0 = lam * _D.adjoint(u / r)
        c1 = (-lam * nu * nu) * _D.adjoint(u / (s * r))
        return math.sqrt(_vdot(c0, c0) + _vdot(c1, c1))

    def grad_error_bound(self, x, theta):
        r"""First-order bound on the rounding error of :meth:`grad`: :math:`64\,u\,e^{\theta_0}\sqrt{n}`.

        A difference of two entries of ``x`` is computed with relative error
        ``u``; the flux :math:`t/\sqrt{|t|^2+\nu^2}` has :math:`|t\,\partial_t| \le 1` and is
        evaluated with relative error :math:`\le 8u`, so each of the at most 4
        fluxes a pixel sums (each of modulus :math:`\le 1`) is off by :math:`\le 9u`,
        and the sum of four by at most :math:`4(9u) + 4u \le 40u`, times the
        weight; 64 leaves room for the rounding of the weight itself.
        """
        lam, _ = self._scalars(theta)
        u = float(np.finfo(x.dtype).eps) / 2.0
        return 64.0 * u * lam * math.sqrt(x.size)

    # ------------------------------------------------------------------ bounds
    def lipschitz(self, theta):
        lam, nu = self._scalars(theta)
        return 8.0 * lam / nu

    def convexity(self, theta):  # noqa: ARG002
        return 0.0

    def hessian_lipschitz(self, theta):
        r"""Lipschitz constant in x of :math:`\nabla^2_{xx} R`: :math:`8^{3/2}\,c\,e^{\theta_0}/\nu^2`.

        The per-pixel Hessian of :math:`\sqrt{|u|^2+\nu^2}` is Lipschitz in
        ``u`` with constant :math:`c/\nu^2`, :math:`c = 1.5/1.25^{5/2} \approx 0.8587`
        (attained at :math:`|u| = \nu/2`; the same for the scalar and the 2-D
        form), the differences of ``D(x - x')`` are bounded by its 2-norm and
        :math:`\|D\|^2\le 8`.
        """
        lam, nu = self._scalars(theta)
        c = 1.5 / 1.25 ** 2.5
        return lam * c / (nu * nu) * 8.0 ** 1.5

    def mixed_lipschitz(self, theta):
        # columns: lam D^T phi'(Dx) (Lipschitz 8 lam / nu) and -lam nu^2 D^T (u / r^3)
        # (Lipschitz 8 lam nu^2 sup|d/du (u/r^3)| <= 8 lam / nu)
        lam, nu = self._scalars(theta)
        return math.hypot(8.0 * lam / nu, 8.0 * lam / nu)
