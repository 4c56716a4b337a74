r"""The :class:`LinearOperator` abstract base class and the :class:`Identity`.

Images are arrays of shape ``(..., H, W)`` (any number of leading batch
axes).  An operator with ``C`` output channels maps them to ``(..., C, H, W)``
(same spatial size; the boundary rule of each operator is documented on it);
one with ``n_channels = None`` maps them to arrays of the input's shape.

References
----------
.. [1] A. Chambolle, T. Pock, "An introduction to continuous optimization for imaging",
   Acta Numerica 25 (2016) 161-319 (operators and adjoints in variational imaging).
.. [2] S. Roth, M. J. Black, "Fields of Experts", Int. J. Comput. Vision 82 (2009) 205-229.
"""
from __future__ import annotations

import abc

import numpy as np

from ..backend import get_namespace

__all__ = ["LinearOperator", "Identity"]


class LinearOperator(abc.ABC):
    r"""Abstract base class: a linear map :math:`K` from images ``(..., H, W)`` to ``(..., C, H, W)``.

    Subclasses implement :meth:`apply`, :meth:`adjoint` and :meth:`norm_bound`
    and set :attr:`n_channels` (``None``: the output has the input's shape).
    The other methods have generic defaults that a subclass may improve:
    :meth:`output_mask`, :meth:`weighted_gram_bound`, :meth:`pullback`,
    :meth:`param_vjp` (operators with parameters set :attr:`n_params`) and
    :meth:`rounding_constants`.

    References
    ----------
    .. [1] A. Chambolle, T. Pock, Acta Numerica 25 (2016) 161-319.
    """

    #: number of output channels C (None: no channel axis)
    n_channels: int | None = None
    #: number of the operator's own parameters (e.g. filter taps); 0 for fixed operators
    n_params: int = 0

    @abc.abstractmethod
    def apply(self, x):
        """:math:`Kx` for ``x`` of shape ``(..., H, W)``: shape :meth:`output_shape`, ``x``'s namespace and dtype."""

    @abc.abstractmethod
    def adjoint(self, u):
        r""":math:`K^Tu` for ``u`` of shape :meth:`output_shape` (entries outside :meth:`output_mask` ignored)."""

    @abc.abstractmethod
    def norm_bound(self) -> float:
        r"""An upper bound on the operator 2-norm :math:`\|K\|`, valid for every accepted image size."""

    def output_mask(self, shape, xp):  # noqa: ARG002
        """``None`` when every output entry exists, else a 0/1 array of the output's trailing shape.

        Entries outside the mask do not exist in the operator as written: they
        are always zero in :meth:`apply` and ignored by :meth:`adjoint`.
        """
        return None

    def output_shape(self, shape):
        """Shape of ``apply(x)`` for ``x`` of ``shape``."""
        shape = tuple(shape)
        if self.n_channels is None:
            return shape
        return shape[:-2] + (self.n_channels,) + shape[-2:]

    def weighted_gram_bound(self, w) -> float:
        r"""An upper bound on :math:`\|\sum_c w_c K_c^TK_c\|` for weights :math:`w_c \ge 0`.

        Parameters
        ----------
        w : array_like of shape (C,)
            Host floats, one per output channel (C = 1 without channel axis).

        Returns
        -------
        float
            Default :math:`\max_c w_c\,\|K\|^2` (from :meth:`norm_bound`).
        """
        w = np.asarray(w, dtype=np.float64)
        return float(w.max(initial=0.0)) * self.norm_bound() ** 2

    def param_vjp(self, x, u):
        r""":math:`\partial\langle u, Kx\rangle/\partial p` for the operator's parameters ``p``.

        Parameters
        ----------
        x : array (..., H, W)
        u : array shaped like ``apply(x)``

        Returns
        -------
        array
            Shaped like the parameters (operators without parameters have none
            and raise ``TypeError``).
        """
        raise TypeError(f"{type(self).__name__} has no parameters (n_params = {self.n_params})")

    def rounding_constants(self):
        """Constants of the rounding analysis of ``apply`` / ``adjoint``, or ``None`` when unknown.

        Returns
        -------
        dict or None
            ``row_l1``: largest absolute row sum of K; ``col_l1``: largest absolute
            column sum; ``n_terms``: products per output entry; ``apply_ulps``:
            a bound on the relative error of each computed entry of ``apply`` in units
            of the unit roundoff ``u`` (``None`` when only an absolute bound holds).
        """
        return None

    def pullback(self, x, fn, v=None, n_stats=0, *, weights=None, param_grad=False, out=None):
        r"""The blocked primitive :math:`K^T f(Kx)`: apply ``fn`` to blocks of ``Kx`` (and ``Kv``).

        Parameters
        ----------
        x : array (..., H, W)
        fn : callable
            ``fn(u, kv, channels)``: ``u`` a block of :math:`Kx` shaped ``(c, C_block, m)``
            (c images, ``channels`` the slice of the channels it holds, m pixels),
            ``kv`` the same block of :math:`Kv` (``None`` without ``v``); both are fresh
            buffers that ``fn`` may overwrite and must not keep.  Returns
            ``(y, s)`` (or ``(yx, yv, s)`` with ``param_grad``): ``y`` shaped like ``u`` or
            ``None``, ``s`` a ``(C_block, n_stats)`` float64 array of sums over the block or
            ``None``.
        v : array (..., H, W), optional
        n_stats : int
        weights : array (C,), optional
            Channel weights :math:`w_c` folded into the adjoint.
        param_grad : bool
            Return the parameter cotangent
            :math:`\sum_c w_c[\partial\langle y_{x,c}, K_cx\rangle + \partial\langle y_{v,c}, K_cv\rangle]/\partial p`
            instead of :math:`K^Ty`.
        out : array like ``x``, optional
            Where to write :math:`K^Ty` (not with ``param_grad``).

        Returns
        -------
        g : array or None
            :math:`\sum_c w_c K_c^T y_c`, shaped like ``x`` (``None`` when ``fn``
            returned no ``y``), or the parameter cotangent.
        stats : array (C, n_stats) or None
            Float64 sums of ``s`` over the blocks, in block order (``None`` if ``n_stats == 0``).

        Notes
        -----
        This generic default uses one block, the whole stack (``u = apply(x)``
        viewed as ``(N, C, H*W)``); operators with a cheaper blocked evaluation
        (:class:`~varlearn.operators.FilterBank`) override it.
        """
        xp = get_namespace(x)
        u = self._fresh(x)
        kv = None if v is None else self._fresh(v)
        shape4 = u.shape
        c = 1 if self.n_channels is None else self.n_channels
        hw = x.shape[-1] * x.shape[-2]
        n_img = x.size // hw if hw else 0

        def block(a):
            return a.reshape(n_img, c, hw)

        res = fn(block(u), None if kv is None else block(kv), slice(0, c))
        s = res[-1]
        stats = None
        if n_stats:
            stats = xp.zeros((c, n_stats), dtype=np.float64) if s is None else xp.asarray(s, dtype=np.float64)
        w = None if weights is None else xp.asarray(weights).reshape(1, c, 1)

        def scaled(y):
            y = y.reshape(n_img, c, hw)
            return (y if w is None else y * w.astype(y.dtype, copy=False)).reshape(shape4)

        if param_grad:
            yx, yv = res[0], res[1]
            g = self.param_vjp(x, scaled(yx))
            if yv is not None:
                g = g + self.param_vjp(v, scaled(yv))
            return g, stats
        y = res[0]
        if y is None:
            return None, stats
        g = self.adjoint(scaled(y))
        if out is not None:
            out[...] = g
            g = out
        return g, stats

    def _fresh(self, x):
        """``apply(x)`` in a buffer of its own (never ``x`` itself)."""
        u = self.apply(x)
        if u is x:
            u = x.copy()
        return u

    def __repr__(self):
        return f"{type(self).__name__}()"


class Identity(LinearOperator):
    """The identity (``n_channels = None``: the output has the input's shape)."""

    n_channels = None

    def apply(self, x):
        return x

    def adjoint(self, u):
        return u

    def norm_bound(self) -> float:
        return 1.0

    def rounding_constants(self):
        return {"row_l1": 1.0, "col_l1": 1.0, "n_terms": 1, "apply_ulps": 0.0}
