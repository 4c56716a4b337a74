r"""Composite regularizers :math:`R(x) = \sum_c \lambda_c \sum_j \varphi\big((K_c x)_j;\ \nu_c\big)`.

:class:`Composite` holds an operator :math:`K` (channels :math:`K_c`, see
:mod:`varlearn.operators`) and a potential :math:`\varphi` (scalar or group,
see :mod:`varlearn.potentials`), and computes everything a regularizer needs in
the *natural* parameters: weights :math:`\lambda` and shapes :math:`\nu`, each a
scalar or one value per channel (a group potential takes scalars only).  The
parameterisations (:class:`~varlearn.regularizers.PotentialRegularizer`,
:class:`~varlearn.TotalVariation`, :class:`~varlearn.FieldOfExperts`) only map
θ to natural parameters and chain-rule back; no derivative is written twice.

With :math:`u = Kx`:

* gradient :math:`\nabla R = \sum_c\lambda_cK_c^T\varphi'(u_c;\nu_c)`,
* Hessian-vector product :math:`\sum_c\lambda_cK_c^T[\nabla^2\varphi(u_c)]K_cv`,
* mixed derivatives of :math:`\langle w, \nabla R\rangle`:
  :math:`\partial_{\lambda_c} = \langle K_cw, \varphi'(u_c)\rangle`,
  :math:`\partial_{\nu_c} = \lambda_c\langle K_cw, \partial_\nu\varphi'(u_c)\rangle`, and for the
  operator's parameters :math:`p`:
  :math:`\sum_c\lambda_c[\partial_p\langle\nabla^2\varphi(u_c)K_cw, K_cx\rangle
  + \partial_p\langle\varphi'(u_c), K_cw\rangle]`.

Every array pass goes through :meth:`~varlearn.operators.LinearOperator.pullback`
(blocked for filter banks).  For scalar :math:`\lambda, \nu` the value, gradient
and Hessian-vector product run the fused kernel registered for the exact
(operator, potential) pair when there is one (:mod:`varlearn.regularizers._kernels`).

Bounds, from the parts (``wgb`` is the operator's ``weighted_gram_bound``):
Lipschitz constant of :math:`\nabla R`: ``wgb(λ_c d2_max(ν_c))``; convexity
``-wgb(λ_c max(0, -d2_min))``; Lipschitz constant of :math:`\nabla^2 R`:
``wgb(λ_c d3_max(ν_c)) · ‖K‖`` (:math:`|(K_c\delta)_j| \le \|K\delta\| \le \|K\|\|\delta\|`, and
for a group potential the group vector of :math:`K\delta` obeys the same bound).

References
----------
.. [1] M. J. Ehrhardt, L. Roberts, "Inexact derivative-free optimization for bilevel learning",
   J. Math. Imaging Vis. 63 (2021) 580-600.
.. [2] S. Roth, M. J. Black, "Fields of Experts", Int. J. Comput. Vision 82 (2009) 205-229.
.. [3] N. J. Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., SIAM (2002), §3.1.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_namespace, to_numpy
from ..linalg import gradient_step, norm64
from ..operators import LinearOperator
from ..potentials import Potential
from ._kernels import find_kernel
from .composite_bounds import CompositeBounds

__all__ = ["Composite"]


def _find_kernel(operator, potential, x):
    """The registered kernel set of the pair for ``x`` (C3), or ``None``."""
    return find_kernel(operator, potential, x)


def _stack(a):
    """``a`` as a C-contiguous ``(N, H, W)`` stack (a view when possible; no namespace lookup on the fast path)."""
    a3 = a if a.ndim == 3 else a.reshape((-1,) + a.shape[-2:])
    return a3 if a3.flags.c_contiguous else get_namespace(a).ascontiguousarray(a3)


def _host_param(p, name, n_channels, allow_none):
    """A natural parameter on the host: a Python float or a float64 array of shape (C,)."""
    if p is None:
        if allow_none:
            return None
        raise ValueError(f"{name} is required for this potential, got None")
    if isinstance(p, float):
        return p
    a = np.asarray(to_numpy(p), dtype=np.float64)
    if a.ndim == 0:
        return float(a)
    c = 1 if n_channels is None else n_channels
    if a.shape != (c,):
        raise ValueError(f"{name} must be a scalar or of shape ({c},) (one per channel), got shape {a.shape}")
    return a


class Composite(CompositeBounds):
    r"""An operator composed with a potential, in natural parameters; see the module docstring.

    Parameters
    ----------
    operator : LinearOperator
    potential : Potential
        Scalar, or a group potential over the operator's channel axis.

    Notes
    -----
    ``lam`` and ``nu`` are Python floats, or arrays of shape ``(C,)`` (NumPy or
    ``x``'s namespace; ``C = operator.n_channels``, 1 without channel axis);
    ``nu`` is ``None`` for a potential without shape parameter.  The value of a
    scalar potential counts only the entries inside the operator's
    ``output_mask``; a group potential counts every group.
    """

    def __init__(self, operator: LinearOperator, potential: Potential):
        if not isinstance(operator, LinearOperator):
            raise TypeError(f"operator must be a LinearOperator, got {type(operator).__name__}")
        if not isinstance(potential, Potential):
            raise TypeError(f"potential must be a Potential, got {type(potential).__name__}")
        if potential.group_axis is not None and operator.n_channels is None:
            raise ValueError(f"the group potential {potential!r} needs an operator with a channel axis, "
                             f"got {operator!r}")
        self.operator = operator
        self.potential = potential
        self.group = potential.group_axis is not None
        self.n_channels = 1 if operator.n_channels is None else operator.n_channels
        self._masked = {}  # trailing shape -> masked entries per channel (host float64)

    def __repr__(self):
        return f"Composite({self.operator!r}, {self.potential!r})"

    # ------------------------------------------------------------------ parameters
    def params(self, lam, nu):
        """Validated natural parameters on the host: ``(lam, nu)`` floats or float64 ``(C,)`` arrays."""
        lam = _host_param(lam, "lam", self.operator.n_channels, False)
        nu = _host_param(nu, "nu", self.operator.n_channels, not self.potential.has_param)
        if self.group and not (isinstance(lam, float) and (nu is None or isinstance(nu, float))):
            raise ValueError(f"a group potential takes scalar lam and nu, got lam={lam!r}, nu={nu!r}")
        return lam, nu

    def _scalar(self, lam, nu):
        return isinstance(lam, float) and (nu is None or isinstance(nu, float))

    def _dev(self, p, xp, dtype):
        """A parameter as used inside a block ``(c, C, m)``: a float, or a ``(1, C, 1)`` array."""
        if p is None or isinstance(p, float):
            return p
        if np.all(p == p[0]):  # equal values (e.g. FoE's folded smoothings): a scalar broadcasts faster
            return float(p[0])
        return xp.asarray(p, dtype=dtype).reshape(1, -1, 1)

    def _view(self, a):
        """A block as the potential sees it: ``(c, C, 1, m)`` for a group potential (group axis -3)."""
        return a[:, :, None, :] if self.group and a is not None else a

    def _csum(self, a, exact=False):
        """Sums per channel of a potential-shaped block, as float64: ``(C_block,)``.

        The block is summed in its own dtype (NumPy: pairwise along the pixel axis)
        and the result cast to float64; the caller accumulates the blocks in float64
        (``pullback``'s statistics).  For float32 data the per-block sum thus carries a
        float32 rounding error (relative at most about ``log2(m) u_32`` of the sum of
        moduli, ``m`` pixels of the block, pairwise; a plain loop ``m u_32``) [3]_;
        float64 data is summed as before (unchanged).  ``exact=True`` accumulates every
        entry in float64 (used by the certified bound :meth:`mixed_norm_bound`).
        """
        xp = get_namespace(a)
        axes = (0, 2, 3) if self.group else (0, 2)
        if exact or a.dtype == np.float64:
            return xp.sum(a, axis=axes, dtype=np.float64)
        return xp.sum(a, axis=axes).astype(np.float64)

    def _cdot(self, a, b):
        """Per-channel sums of ``a * b`` as float64: one einsum in the block's dtype, no temporary.

        NumPy's einsum accumulates each channel of the block in the block's dtype in a
        plain loop, so for float32 data the per-block sum has a relative error (to the sum
        of moduli) of at most about ``m u_32`` [3]_ (``m`` entries of the channel in the
        block); the blocks are then added in float64 (``pullback``'s statistics).  Float64
        data: unchanged.  No certified quantity relies on these sums: they feed ``mixed``
        (the mixed derivatives, not a bound); ``grad_error_bound`` concerns the gradient
        and :meth:`mixed_norm_bound` sums in float64 per entry.
        """
        xp = get_namespace(a, b)
        return xp.einsum("ckpm,ckpm->k" if self.group else "ckm,ckm->k", a, b).astype(np.float64)

    @staticmethod
    def _sel(p, ch):
        """A block parameter restricted to the block's channels."""
        return p if p is None or isinstance(p, float) else p[:, ch]

    # ------------------------------------------------------------------ value, gradient, Hessian
    def value(self, x, lam, nu):
        r""":math:`R(x) = \sum_c\lambda_c\sum_j\varphi((K_cx)_j;\nu_c)`, a 0-d array of ``x``'s dtype.

        Each block's per-channel sums are taken in ``x``'s dtype (:meth:`_csum`) and
        accumulated across blocks in float64.
        """
        xp = get_namespace(x)
        lam, nu = self.params(lam, nu)
        if self._scalar(lam, nu):
            k = _find_kernel(self.operator, self.potential, x)
            if k is not None:
                return xp.asarray(k.value(_stack(x), lam, nu), dtype=x.dtype)
        pot, nu_b = self.potential, self._dev(nu, xp, x.dtype)

        def fn(u, kv, ch):  # noqa: ARG001
            phi = pot.value(self._view(u), self._sel(nu_b, ch), out=None if self.group else u)
            if self.group:
                s = xp.zeros((u.shape[1], 1), dtype=np.float64)
                s[0, 0] = xp.sum(phi, dtype=np.float64)
                return None, s
            return None, self._csum(phi)[:, None]

        _, stats = self.operator.pullback(x, fn, n_stats=1)
        sums = stats[:, 0]
        if not self.group:
            n_out = self._masked_counts(x.shape)
            if n_out is not None:
                nu_h = np.broadcast_to(np.asarray(1.0 if nu is None else nu, dtype=np.float64), n_out.shape)
                zero = np.zeros(1, dtype=x.dtype)
                phi0 = np.array([float(pot.value(zero, None if nu is None else n)[0]) for n in nu_h])
                sums = sums - xp.asarray(n_out * phi0)
        lam_d = lam if isinstance(lam, float) else xp.asarray(lam, dtype=np.float64)
        return xp.asarray(xp.sum(lam_d * sums), dtype=x.dtype)

    def _masked_counts(self, shape):
        """Entries per channel outside the operator's output mask for images of ``shape`` (None: none)."""
        key = tuple(shape)
        if key not in self._masked:
            mask = self.operator.output_mask(shape, np)
            if mask is None:
                self._masked[key] = None
            else:
                n_img = math.prod(shape[:-2])
                m = np.asarray(mask, dtype=np.float64).reshape(self.n_channels, -1)
                self._masked[key] = n_img * (m.shape[1] - m.sum(axis=1))
        return self._masked[key]

    def grad(self, x, lam, nu, out=None):
        r""":math:`\nabla_xR(x) = \sum_c\lambda_cK_c^T\varphi'(K_cx;\nu_c)`, written into ``out`` when given."""
        lam, nu = self.params(lam, nu)
        if self._scalar(lam, nu):
            k = _find_kernel(self.operator, self.potential, x)
            if k is not None:
                return self._kernel_grad(k, x, lam, nu, None, 0.0, None, 0.0, None, out)[0]
        return self._grad(x, lam, nu, out)

    def _grad(self, x, lam, nu, out):
        xp = get_namespace(x)
        pot, nu_b = self.potential, self._dev(nu, xp, x.dtype)

        def fn(u, kv, ch):  # noqa: ARG001
            pot.d1(self._view(u), self._sel(nu_b, ch), out=self._view(u))
            return u, None

        return self._pull(x, fn, lam, out=out)

    def _pull(self, x, fn, lam, v=None, out=None):
        """``pullback`` of ``fn`` with the weights ``lam`` folded in (a scalar scales the result)."""
        scalar = isinstance(lam, float)
        weights = None if scalar else get_namespace(x).asarray(lam, dtype=x.dtype)
        g, _ = self.operator.pullback(x, fn, v=v, weights=weights, out=out)
        if scalar and lam != 1.0:
            g *= lam
        return g

    def hvp(self, x, lam, nu, v, out=None):
        r""":math:`\nabla^2_{xx}R(x)\,v = \sum_c\lambda_cK_c^T[\nabla^2\varphi(K_cx)]K_cv`."""
        lam, nu = self.params(lam, nu)
        if self._scalar(lam, nu):
            k = _find_kernel(self.operator, self.potential, x)
            if k is not None:
                return self._kernel_hvp(k, x, lam, nu, v, 0.0, out)
        return self._hvp(x, lam, nu, v, out)

    def _hvp(self, x, lam, nu, v, out):
        xp = get_namespace(x, v)
        pot, nu_b = self.potential, self._dev(nu, xp, x.dtype)

        def fn(u, kv, ch):  # noqa: ARG001
            pot.hess_apply(self._view(u), self._sel(nu_b, ch), self._view(kv), out=self._view(kv))
            return kv, None

        return self._pull(x, fn, lam, v=v, out=out)

    # ------------------------------------------------------------------ fused passes (C1)
    def fused_grad(self, x, lam, nu, y=None, data_w=0.0, *, x_prev=None, beta=0.0, step=None, out=None):
        r"""Gradient of :math:`\tfrac{w}{2}\|z-y\|^2 + R(z)` at :math:`z = x + \beta(x - x_{prev})`, optionally a step.

        ``g = data_w (z - y) + ∇R(z)``; ``out <- g`` (``step`` None) or ``z - step g``.
        Returns ``(out, ‖g‖)`` (float64 sum of squares, one host synchronisation).
        ``out`` must not alias ``x`` or ``x_prev``.  One kernel pass for a
        registered pair with scalar parameters, else one :meth:`grad` and axpys.
        """
        lam, nu = self.params(lam, nu)
        data_w = float(data_w)
        if data_w != 0.0 and y is None:
            raise ValueError(f"y is required when data_w != 0, got data_w={data_w!r} and y=None")
        if self._scalar(lam, nu):
            k = _find_kernel(self.operator, self.potential, x)
            if k is not None:
                return self._kernel_grad(k, x, lam, nu, y, data_w, x_prev, float(beta), step, out)
        z = x if (x_prev is None or beta == 0) else x + beta * (x - x_prev)
        g = self._grad(z, lam, nu, out if step is None else None)
        if data_w != 0.0:
            g += data_w * (z - y)
        return (g if step is None else gradient_step(z, g, step, out)), norm64(g)

    def fused_hvp(self, x, lam, nu, v, data_w=0.0, *, out=None):
        """``data_w v + ∇²R(x) v`` (one kernel pass for a registered pair with scalar parameters)."""
        lam, nu = self.params(lam, nu)
        data_w = float(data_w)
        if self._scalar(lam, nu):
            k = _find_kernel(self.operator, self.potential, x)
            if k is not None:
                return self._kernel_hvp(k, x, lam, nu, v, data_w, out)
        h = self._hvp(x, lam, nu, v, None if out is v else out)
        if data_w != 0.0:
            h += data_w * v
        return _into(h, out) if out is v else h

    def _kernel_grad(self, k, x, lam, nu, y, data_w, x_prev, beta, step, out):
        x3 = _stack(x)
        y3 = _stack(y) if (y is not None and data_w != 0.0) else None
        p3 = _stack(x_prev) if (x_prev is not None and beta != 0.0) else None
        o3, direct = _out3(x, x3, out)
        g2 = k.fused_grad(x3, y3, data_w, lam, nu, p3, beta if p3 is not None else 0.0,
                          None if step is None else float(step), o3)
        return _finish(x, o3, out, direct), math.sqrt(max(float(g2), 0.0))

    def _kernel_hvp(self, k, x, lam, nu, v, data_w, out):
        x3 = _stack(x)
        o3, direct = _out3(x, x3, out)
        k.fused_hvp(x3, _stack(v), data_w, lam, nu, o3)
        return _finish(x, o3, out, direct)

    # ------------------------------------------------------------------ mixed derivatives
    def mixed(self, x, lam, nu, w, op_params=False):
        r"""Derivatives of :math:`\langle w, \nabla_xR(x)\rangle` in the natural parameters.

        Returns
        -------
        d_lam : array
            Float64, 0-d for a scalar ``lam`` else ``(C,)`` (``x``'s namespace).
        d_nu : array or None
            Likewise for ``nu`` (None without shape parameter).
        d_op : array or None
            The derivative in the operator's parameters (``op_params=True``), else None.

        Notes
        -----
        One :meth:`~varlearn.potentials.Potential.d1_hess_apply` per block (when the
        Hessian product is needed) into two work arrays reused across the blocks.  The
        per-channel sums of a block are taken in the block's dtype and accumulated across
        blocks in float64 (:meth:`_cdot`: for float32 data a relative rounding error of at
        most about ``m u_32`` per block sum, ``m`` its entries per channel).
        """
        xp = get_namespace(x, w)
        lam, nu = self.params(lam, nu)
        pot, nu_b = self.potential, self._dev(nu, xp, x.dtype)
        has_nu = nu is not None
        weights = None if isinstance(lam, float) else xp.asarray(lam, dtype=x.dtype)

        # for an a-homogeneous potential, d_nu phi'(t) = ((a - 1) phi'(t) - phi''(t) t) / nu (Euler's
        # relation t phi_t + nu phi_nu = a phi, differentiated in t): the nu column from the Hessian
        # product (needed anyway for the operator's parameters), no d1_dnu pass
        homog = has_nu and pot.homogeneity is not None
        nu_v = None if not homog else (nu if isinstance(nu, float) else xp.asarray(nu, dtype=np.float64))

        bufs = _Buffers()
        need_h = homog or op_params

        def fn(u, kw, ch):
            nb = self._sel(nu_b, ch)
            uv, kwv = self._view(u), self._view(kw)
            if need_h:  # phi' and the Hessian product in one call, into two reused block buffers
                d1, hk = pot.d1_hess_apply(uv, nb, kwv, out_d1=self._view(bufs.get(0, u)),
                                           out_hv=self._view(bufs.get(1, u)))
            else:
                d1, hk = pot.d1(uv, nb, out=self._view(bufs.get(0, u))), None
            s0 = self._cdot(d1, kwv)
            if homog:
                s1 = ((pot.homogeneity - 1) * s0 - self._cdot(uv, hk)) / (nu_v if isinstance(nu_v, float) else nu_v[ch])
            elif has_nu:
                s1 = self._cdot(pot.d1_dnu(uv, nb), kwv)
            s = xp.stack([s0, s1], axis=1) if has_nu else s0[:, None]
            return (hk.reshape(u.shape), d1.reshape(u.shape), s) if op_params else (None, s)

        g, stats = self.operator.pullback(x, fn, v=w, n_stats=2 if has_nu else 1, weights=weights,
                                          param_grad=op_params)
        if op_params and isinstance(lam, float):
            g = g * lam
        lam_d = lam if isinstance(lam, float) else xp.asarray(lam, dtype=np.float64)
        s_lam, s_nu = stats[:, 0], (stats[:, 1] * lam_d if has_nu else None)
        d_lam = xp.sum(s_lam) if isinstance(lam, float) else s_lam
        d_nu = None
        if has_nu:
            d_nu = xp.sum(s_nu) if isinstance(nu, float) else s_nu
        return d_lam, d_nu, (g if op_params else None)

    def mixed_norm_bound(self, x, lam, nu, lam_scale=None, nu_scale=None):
        r"""Upper bound on the norm of the mixed derivative: the Frobenius norm of its columns.

        The columns are :math:`s\,\partial_\lambda\nabla R` and :math:`t\,\partial_\nu\nabla R`
        (``lam_scale`` = s, ``nu_scale`` = t, default ``lam`` and ``nu``: the columns of
        log-parameters).  A scalar parameter has one column, computed exactly (one
        pullback); a per-channel one has a column per channel, each bounded by
        :math:`|s_c|\,\|K_c\|\,\|\varphi'(K_cx)\|` (:math:`\|K_c\|^2` from ``weighted_gram_bound``
        of a one-hot weight), from one pass of per-channel sums.
        """
        lam, nu = self.params(lam, nu)
        s = np.asarray(lam if lam_scale is None else lam_scale, dtype=np.float64)
        total = self._column_norms2(x, self.potential.d1, nu, s, not isinstance(lam, float))
        if nu is not None:
            t = np.asarray(nu if nu_scale is None else nu_scale, dtype=np.float64) * np.asarray(lam)
            total += self._column_norms2(x, self.potential.d1_dnu, nu, t, not isinstance(nu, float))
        return math.sqrt(total)

    def _column_norms2(self, x, deriv, nu, scale, per_channel):
        """Sum of the squared norms of the columns ``scale_c K_c^T deriv(K_c x)`` (bounds if per channel)."""
        xp = get_namespace(x)
        nu_b = self._dev(nu, xp, x.dtype)

        def fn(u, kv, ch):  # noqa: ARG001
            y = deriv(self._view(u), self._sel(nu_b, ch), out=self._view(u))
            if per_channel:
                return None, self._csum(y * y, exact=True)[:, None]
            return u, None

        if not per_channel:
            g, _ = self.operator.pullback(x, fn)
            return (float(np.sum(scale)) * norm64(g)) ** 2
        _, stats = self.operator.pullback(x, fn, n_stats=1)
        y2 = to_numpy(stats[:, 0])
        scale = np.broadcast_to(scale, (self.n_channels,))
        eye = np.eye(self.n_channels)
        k2 = np.array([self._wgb(eye[c]) for c in range(self.n_channels)])
        return float(np.sum(scale * scale * k2 * y2))


class _Buffers:
    """Block-sized work arrays reused across the blocks of one pass (no allocation per block)."""

    def __init__(self):
        self._flat = {}

    def get(self, i, like):
        """Work array ``i`` shaped and typed like ``like`` (contents undefined)."""
        f = self._flat.get(i)
        if f is None or f.size < like.size or f.dtype != like.dtype:
            f = self._flat[i] = get_namespace(like).empty(like.size, dtype=like.dtype)
        return f[:like.size].reshape(like.shape)


def _into(g, out):
    if out is None:
        return g
    out[...] = g
    return out


def _out3(x, x3, out):
    """An ``(N, H, W)`` C-contiguous output buffer: ``out`` itself when it can be, else a new one."""
    if out is not None and out.flags.c_contiguous and out.shape == x.shape and out.dtype == x3.dtype:
        return (out if out.ndim == 3 else out.reshape(x3.shape)), True
    return get_namespace(x3).empty_like(x3), False


def _finish(x, o3, out, direct):
    if out is None:
        return o3.reshape(x.shape)
    if not direct:
        out[...] = o3.reshape(x.shape)
    return out
