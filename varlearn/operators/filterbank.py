r"""The filter-bank operator: ``K`` correlation filters with a reflect boundary.

:class:`FilterBank` maps images ``(..., H, W)`` to ``(..., K, H, W)`` with
``(K_i x)[p] = Σ_{a,b} k_i[a, b] x̃[p + (a, b)]`` (``x̃``: ``x`` reflect-padded
by ``s // 2``; see :mod:`varlearn._filterbank` for the exact rule, the choice of
im2col + GEMM and the certified norm bounds).

Every operation is one sweep over cache-sized blocks of the stack
(:class:`_Sweep`): copy the ``s²`` shifted views of a block of each padded input
into ``cols`` (im2col), multiply by the ``(K, s²)`` tap matrix, and for the
adjoint multiply by its transpose and add the shifted rows back (col2im).
:meth:`FilterBank.pullback`, the one blocked :math:`K^T f(Kx)` primitive,
hands every block of ``K x`` (and ``K v``) to a callback, so that
a Field-of-Experts value, gradient, Hessian-vector product or mixed derivative
is one sweep and ``K x`` is never stored for the whole stack.

References
----------
S. Roth and M. J. Black, "Fields of Experts", International Journal of
Computer Vision 82 (2009), 205-229.
K. Chellapilla, S. Puri and P. Simard, "High performance convolutional neural
networks for document processing", 10th International Workshop on Frontiers
in Handwriting Recognition (2006) (the im2col + GEMM formulation).
"""
from __future__ import annotations

import math

import numpy as np

from .._filterbank import (
    Blocks,
    as_stack,
    block_view,
    check_filters,
    check_float_array,
    check_image_shape,
    check_out,
    col2im_add,
    fold_pad,
    fourier_norm_bounds,
    im2col,
    matmul_into,
    power_spectra,
    reflect_pad,
    schur_norm_bounds,
    weighted_gram_bound,
    work_array,
)
from ..backend import get_namespace, to_numpy, xp_name
from .base import LinearOperator

__all__ = ["FilterBank"]


class _Sweep:
    """One pass over the work blocks of a stack ``(N, H, W)`` for a bank of ``k`` filters of size ``s``.

    ``inputs`` are padded stacks whose blocks are copied into ``cols``
    ``(len(inputs), c, s², m)`` (im2col) at each step of the iteration;
    ``adjoint=True`` allocates the padded accumulator of :meth:`add_adjoint`.
    The blocks are sized for ``max(1, len(inputs))`` arrays of ``k`` channels
    (see :class:`varlearn._filterbank.Blocks`).
    """

    def __init__(self, shape, k, s, dtype, xp, inputs=(), adjoint=False):
        n, h, w = shape
        self.xp, self.s, self.w, self.inputs = xp, s, w, list(inputs)
        ni = max(1, len(self.inputs))
        self.blocks = Blocks(n, h, w, ni * k, s, dtype, xp)
        self.cbuf = xp.empty(ni * self.blocks.size() * s * s, dtype=dtype)
        self.ubuf = xp.empty(ni * self.blocks.size() * k, dtype=dtype)
        self.k = k
        p = s // 2
        self.zpad = xp.zeros((n, h + 2 * p, w + 2 * p), dtype=dtype) if adjoint else None

    def __iter__(self):
        """Yield ``(block, cols)``; ``cols`` ``(n_inputs, c, s², m)`` holds the im2col of every input."""
        s = self.s
        for blk in self.blocks:
            c, m = blk[1] - blk[0], (blk[3] - blk[2]) * self.w
            cols = work_array(self.cbuf, (len(self.inputs), c, s * s, m))
            for j, xpad in enumerate(self.inputs):
                im2col(xpad, blk, s, cols[j])
            yield blk, cols

    def forward(self, mat, cols):
        """``mat @ cols``: ``(n_inputs, c, k, m)`` in the block buffer (valid until the next block)."""
        ni, c, _, m = cols.shape
        return self.xp.matmul(mat, cols, out=work_array(self.ubuf, (ni, c, self.k, m)))

    def add_adjoint(self, mat_t, y, blk):
        """``zpad += col2im(mat_t @ y)`` for the block (overwrites the block's ``cols``)."""
        c, _, m = y.shape
        g = self.xp.matmul(mat_t, y, out=work_array(self.cbuf, (c, self.s * self.s, m)))
        col2im_add(g, blk, self.s, self.zpad)

    def result(self, out=None):
        """The adjoint accumulated so far, with the padding folded back: ``(N, H, W)``."""
        return fold_pad(self.zpad, self.s // 2, out=out)


class FilterBank(LinearOperator):
    r"""A bank of ``K`` correlation filters of odd size ``s``, reflect boundary.

    ``apply(x)`` maps ``(..., H, W)`` to ``(..., K, H, W)`` with
    ``apply(x)[..., i, :, :] = k_i ⋆ x`` (see :mod:`varlearn._filterbank` for the
    exact indexing and boundary rule); ``adjoint(u)`` is its exact adjoint;
    ``param_vjp(x, u)`` (alias ``tap_vjp``) is the derivative of
    :math:`\langle u, Kx\rangle` in the taps; ``pullback`` is the blocked
    :math:`\sum_i w_i K_i^T f_i(K_ix)`.  Images must be at least
    ``(s//2 + 1) x (s//2 + 1)``.

    Parameters
    ----------
    filters : array of shape (K, s, s)
        NumPy or CuPy; the operator computes in the namespace of ``filters``
        and in the dtype of its input (the taps are cast, cached per dtype).
        Inputs in another namespace raise ``TypeError``.
    """

    def __init__(self, filters):
        self.filters = check_filters(filters)
        self.n_filters = int(self.filters.shape[0])
        self.size = int(self.filters.shape[1])
        self.n_channels = self.n_filters
        self.n_params = self.n_filters * self.size * self.size
        self.pad = self.size // 2
        self._mats = {}
        self._host = None

    def __repr__(self):
        return f"FilterBank(n_filters={self.n_filters}, size={self.size})"

    # ------------------------------------------------------------------ helpers
    def _matrices(self, xp, dtype):
        """``(F, F^T)``: the ``(K, s*s)`` tap matrix and its contiguous transpose in ``dtype``."""
        key = (xp_name(xp), np.dtype(dtype).str)
        mats = self._mats.get(key)
        if mats is None:
            if xp_name(get_namespace(self.filters)) != xp_name(xp):
                raise TypeError(
                    f"the filters are {xp_name(get_namespace(self.filters))} arrays but the input is a "
                    f"{xp_name(xp)} array; move one of them explicitly (varlearn.backend.to_device)"
                )
            f = xp.ascontiguousarray(self.filters.reshape(self.n_filters, -1).astype(dtype))
            mats = (f, xp.ascontiguousarray(f.T))
            self._mats[key] = mats
        return mats

    def _check_x(self, x, name="x"):
        check_float_array(x, name)
        check_image_shape(x.shape, self.size, name=name)
        return get_namespace(x)

    def _check_like(self, a, x, name):
        """``a`` (an image batch like ``x``) as an ``(N, H, W)`` stack in ``x``'s dtype."""
        check_float_array(a, name)
        if tuple(a.shape) != tuple(x.shape):
            raise ValueError(f"{name} must have the shape of x {tuple(x.shape)}, got shape {tuple(a.shape)}")
        return as_stack(a).astype(x.dtype, copy=False)

    # ------------------------------------------------------------------ operator
    def apply(self, x, out=None):
        """``K x``: ``(..., H, W)`` -> ``(..., K, H, W)`` (written into ``out`` when given)."""
        xp = self._check_x(x)
        k, h, w = self.n_filters, x.shape[-2], x.shape[-1]
        f, _ = self._matrices(xp, x.dtype)
        x3 = as_stack(x)
        shape = tuple(x.shape[:-2]) + (k, h, w)
        if out is None:
            out = xp.empty(shape, dtype=x.dtype)
        check_out(out, shape, x.dtype)
        o4 = out.reshape(x3.shape[0], k, h, w)
        for blk, cols in _Sweep(x3.shape, k, self.size, x.dtype, xp, [reflect_pad(x3, self.pad)]):
            matmul_into(xp, f, cols[0], block_view(o4, blk))
        return out

    def adjoint(self, u, out=None):
        """``K^T u``: ``(..., K, H, W)`` -> ``(..., H, W)`` (written into ``out`` when given)."""
        check_float_array(u, "u")
        xp = get_namespace(u)
        k = self.n_filters
        if u.ndim < 3 or u.shape[-3] != k:
            raise ValueError(f"u must have shape (..., {k}, H, W), got shape {tuple(u.shape)}")
        check_image_shape(u.shape, self.size, name="u")
        h, w = u.shape[-2:]
        _, ft = self._matrices(xp, u.dtype)
        u4 = u.reshape((-1, k, h, w))
        shape = tuple(u.shape[:-3]) + (h, w)
        o3 = None if out is None else check_out(out, shape, u.dtype).reshape(u4.shape[0], h, w)
        sweep = _Sweep((u4.shape[0], h, w), k, self.size, u.dtype, xp, adjoint=True)
        for blk, _ in sweep:
            sweep.add_adjoint(ft, block_view(u4, blk), blk)
        res = sweep.result(o3)
        return out if out is not None else res.reshape(shape)

    def tap_vjp(self, x, u):
        r"""Derivative of :math:`\langle u, Kx\rangle` in the taps, shape ``(K, s, s)``.

        ``out[i, a, b] = Σ_batch Σ_p u_i[p] x̃[p + (a, b)]`` with ``x̃`` the
        reflect-padded ``x`` (summed over all leading batch axes).
        """
        xp = self._check_x(x)
        check_float_array(u, "u")
        xp = get_namespace(x, u)
        k, s = self.n_filters, self.size
        h, w = x.shape[-2:]
        expected = tuple(x.shape[:-2]) + (k, h, w)
        if tuple(u.shape) != expected:
            raise ValueError(f"u must have shape {expected}, got shape {tuple(u.shape)}")
        x3 = as_stack(x)
        u4 = u.reshape(x3.shape[0], k, h, w)
        acc = xp.zeros((k, s * s), dtype=x.dtype)
        for blk, cols in _Sweep(x3.shape, k, s, x.dtype, xp, [reflect_pad(x3, self.pad)]):
            acc += xp.sum(xp.matmul(block_view(u4, blk), cols[0].transpose(0, 2, 1)), axis=0)
        return acc.reshape(k, s, s)

    def param_vjp(self, x, u):
        """:meth:`tap_vjp` flattened: the derivative in the ``n_params = K*s*s`` taps (row-major)."""
        return self.tap_vjp(x, u).reshape(-1)

    def pullback(self, x, fn, v=None, n_stats=0, *, weights=None, param_grad=False, out=None):
        r"""The blocked :math:`\sum_i w_i K_i^T y_i` with :math:`y = f(Kx, Kv)`, in one sweep.

        Parameters
        ----------
        x : array (..., H, W)
        fn : callable ``fn(u, kv, channels) -> (y, s)``
            Called once per work block with ``u = (K x)`` of the block, shaped
            ``(c, K, m)`` (``c`` images, ``m`` pixels of a band of rows),
            ``kv = (K v)`` of the block likewise (``None`` without ``v``) and
            ``channels = slice(0, K)``.  ``y`` is shaped like ``u`` (it may be
            ``u`` or ``kv`` itself, written in place) or ``None``; ``s`` is a
            ``(K, n_stats)`` float64 array of per-channel sums or ``None``.
            With ``param_grad=True`` it returns ``(yx, yv, s)`` instead.
            The block arrays are reused: ``fn`` must not keep them.
        v : array like ``x``, optional
        n_stats : int
            Columns of the accumulated statistics.
        weights : array (K,), optional
            Channel weights :math:`w_i` (default 1), folded into the adjoint
            matrix (or, with ``param_grad``, applied to the rows of the result).
        param_grad : bool
            Return the parameter cotangent
            :math:`\sum_i w_i[\partial_k\langle yx_i, K_ix\rangle + \partial_k\langle yv_i, K_iv\rangle]`
            (1-D, the layout of :meth:`param_vjp`) instead of the adjoint.
        out : array like ``x``, optional
            C-contiguous destination of the adjoint.

        Returns
        -------
        g : array like ``x`` (1-D of length ``n_params`` with ``param_grad``), or None
            ``None`` when ``fn`` never returned a ``y``.
        stats : (K, n_stats) float64 array or None
            The sums over the blocks of ``s`` (``None`` when ``n_stats == 0``).
        """
        xp = self._check_x(x)
        k, s = self.n_filters, self.size
        x3 = as_stack(x)
        stack = [x3] if v is None else [x3, self._check_like(v, x, "v")]
        xp = get_namespace(*stack)
        f, ft = self._matrices(xp, x.dtype)
        if weights is not None:
            weights = xp.asarray(weights).astype(x.dtype)
            if tuple(weights.shape) != (k,):
                raise ValueError(f"weights must have shape ({k},), got shape {tuple(weights.shape)}")
            if not param_grad:
                ft = xp.ascontiguousarray((f * weights[:, None]).T)
        sweep = _Sweep(x3.shape, k, s, x.dtype, xp, [reflect_pad(a, self.pad) for a in stack],
                       adjoint=not param_grad)
        stats = xp.zeros((k, n_stats), dtype=np.float64) if n_stats else None
        pacc = xp.zeros((k, s * s), dtype=x.dtype) if param_grad else None
        any_y = False
        channels = slice(0, k)
        for blk, cols in sweep:
            uk = sweep.forward(f, cols)
            res = fn(uk[0], uk[1] if v is not None else None, channels)
            if param_grad:
                for y, col in zip(res[:2], cols):
                    if y is not None:
                        pacc += xp.sum(xp.matmul(y, col.transpose(0, 2, 1)), axis=0)
            elif res[0] is not None:
                any_y = True
                sweep.add_adjoint(ft, res[0], blk)
            if res[-1] is not None and stats is not None:
                stats += res[-1]
        if param_grad:
            if weights is not None:
                pacc *= weights[:, None]
            return pacc.reshape(-1), stats
        if not any_y:
            return None, stats
        if out is not None:
            sweep.result(check_out(out, x.shape, x.dtype).reshape(x3.shape))
            return out, stats
        return sweep.result().reshape(x.shape), stats

    # ------------------------------------------------------------------ bounds
    def filter_norm_bounds(self):
        r"""Upper bounds on :math:`\|K_i\|_2` (array of length K, namespace of the filters).

        The smaller of the certified Fourier bound :math:`2\sup|\hat k_i|` and
        the Schur bound (:mod:`varlearn._filterbank`); at most ``2 ||k_i||_1``;
        valid for every image size the operator accepts.
        """
        xp = get_namespace(self.filters)
        f = self.filters
        return xp.minimum(schur_norm_bounds(xp.abs(f), self.size), fourier_norm_bounds(f, self.size))

    def row_norm_bounds(self):
        r"""Upper bounds on :math:`\|K_i\|_{2\to\infty} = \max_p \|(\text{row } p \text{ of } K_i)\|_2` (NumPy, K).

        A row of :math:`K_i` holds the taps of :math:`k_i`, those that the
        reflection sends to the same pixel added together.  Along one axis a
        window of ``2c + 1`` offsets (``c = s // 2``) reads one pixel directly and
        at most once through each mirror (images have at least ``c + 1`` pixels
        per axis), and through both mirrors only when ``c >= 2`` (a window that
        passes both edges needs ``n <= 2c`` and ``n >= c + 1``), so at most
        ``m = min(c + 1, 3)`` offsets per axis share a pixel.  By Cauchy-Schwarz
        the row norm is at most :math:`m\|k_i\|_2`, and at most :math:`\|k_i\|_1`;
        hence :math:`|(K_iz)_p| \le` ``bound[i]`` :math:`\|z\|_2`.
        """
        f = np.asarray(to_numpy(self.filters), dtype=np.float64)
        l1 = np.abs(f).sum(axis=(1, 2))
        l2 = np.sqrt((f * f).sum(axis=(1, 2)))
        return np.minimum(l1, min(self.pad + 1, 3) * l2)

    def rounding_constants(self):
        """Per-filter rounding constants: absolute row and column sums at most ``||k_i||_1`` (arrays (K,)),
        ``n_terms = K s²`` products per entry of the adjoint (``s²`` per entry of ``apply``)."""
        l1 = np.abs(np.asarray(to_numpy(self.filters), dtype=np.float64)).sum(axis=(1, 2))
        return {"row_l1": l1, "col_l1": l1, "n_terms": self.n_filters * self.size * self.size, "apply_ulps": None}

    def weighted_gram_bound(self, w) -> float:
        r"""Certified upper bound on :math:`\|\sum_i w_i K_i^TK_i\|` for weights ``w_i >= 0`` (Python float).

        The smaller of the Fourier bound :math:`4\sup_\omega\sum_i w_i|\hat k_i(\omega)|^2`
        and :math:`\sum_i w_i b_i^2` (:func:`varlearn._filterbank.weighted_gram_bound`).
        """
        w = np.asarray(to_numpy(w), dtype=np.float64).reshape(-1)
        if w.shape != (self.n_filters,):
            raise ValueError(f"w must have shape ({self.n_filters},), got shape {w.shape}")
        if np.any(np.isnan(w)) or np.any(w < 0):
            raise ValueError(f"w must hold weights >= 0, got {w!r}")
        if self._host is None:  # the host taps and their spectra, once per bank (bounds call this often)
            f = np.asarray(to_numpy(self.filters), dtype=np.float64)
            spec = power_spectra(f, self.size)
            b = np.minimum(schur_norm_bounds(np.abs(f), self.size), fourier_norm_bounds(f, self.size, spec))
            self._host = (f, spec, b)
        f, spec, b = self._host
        return weighted_gram_bound(f, w, spectra=spec, norms=b)

    def norm_bound(self) -> float:
        r""":math:`\|K\|_2 = \|\sum_i K_i^T K_i\|^{1/2}`, bounded by :meth:`weighted_gram_bound` (unit weights)."""
        return math.sqrt(self.weighted_gram_bound(np.ones(self.n_filters)))
