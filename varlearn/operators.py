"""Linear operators on batches of images, with adjoints and norm bounds.

Images are arrays of shape ``(..., H, W)`` (any number of leading batch
axes).  An operator with ``K`` output channels maps them to ``(..., K, H, W)``
(same spatial size; the boundary rule of each operator is documented on it).

Every operator provides ``apply(x)``, ``adjoint(u)`` and ``norm_bound()`` (an
upper bound on the operator 2-norm).  ``output_mask(shape, xp)`` returns
``None`` when every output entry is a genuine output, or a 0/1 array (with the
output's trailing shape) marking the entries that exist in the operator as
written; entries outside the mask are always zero in ``apply`` and ignored by
``adjoint``.
"""
from __future__ import annotations

import math

from .backend import get_namespace

__all__ = ["LinearOperator", "Identity", "FiniteDifference", "FilterBank"]


class LinearOperator:
    """Base class: a linear map from images ``(..., H, W)`` to ``(..., K, H, W)``.

    Subclasses implement :meth:`apply`, :meth:`adjoint` and
    :meth:`norm_bound`, and set :attr:`n_channels`.  An operator that maps to
    images of the same shape without a channel axis sets ``n_channels = None``.
    """

    n_channels: int | None = None

    def apply(self, x):
        raise NotImplementedError

    def adjoint(self, u):
        raise NotImplementedError

    def norm_bound(self) -> float:
        raise NotImplementedError

    def output_mask(self, shape, xp):  # noqa: ARG002
        return None

    def output_shape(self, shape):
        """Shape of ``apply(x)`` for ``x`` of ``shape``."""
        shape = tuple(shape)
        if self.n_channels is None:
            return shape
        return shape[:-2] + (self.n_channels,) + shape[-2:]

    def __repr__(self):
        return f"{type(self).__name__}()"


class Identity(LinearOperator):
    """The identity (``n_channels = None``: output has the input's shape)."""

    n_channels = None

    def apply(self, x):
        return x

    def adjoint(self, u):
        return u

    def norm_bound(self) -> float:
        return 1.0


class FiniteDifference(LinearOperator):
    r"""Forward differences along the last two axes, without wrap-around.

    ``apply(x)[..., 0, i, j] = x[..., i, j+1] - x[..., i, j]`` for ``j < W-1``
    (horizontal) and ``apply(x)[..., 1, i, j] = x[..., i+1, j] - x[..., i, j]``
    for ``i < H-1`` (vertical).  The last column of the horizontal channel and
    the last row of the vertical channel do not exist in the operator as
    written (the MAID paper's :math:`(n-1)\times n` difference matrices); they
    are set to zero (a Neumann boundary) and :meth:`output_mask` marks them.

    :math:`\|D\|^2 \le 8`, so :meth:`norm_bound` returns :math:`\sqrt 8`.
    """

    n_channels = 2

    def apply(self, x, out=None):
        xp = get_namespace(x)
        if out is None:
            out = xp.empty(x.shape[:-2] + (2,) + x.shape[-2:], dtype=x.dtype)
        dh = out[..., 0, :, :]
        dv = out[..., 1, :, :]
        xp.subtract(x[..., :, 1:], x[..., :, :-1], out=dh[..., :, :-1])
        dh[..., :, -1] = 0
        xp.subtract(x[..., 1:, :], x[..., :-1, :], out=dv[..., :-1, :])
        dv[..., -1, :] = 0
        return out

    def adjoint(self, u, out=None):
        """``D^T u``: the negative divergence (entries outside the mask are ignored)."""
        xp = get_namespace(u)
        ph = u[..., 0, :, :]
        pv = u[..., 1, :, :]
        shape = u.shape[:-3] + u.shape[-2:]
        if out is None:
            out = xp.empty(shape, dtype=u.dtype)
        out[...] = 0
        out[..., :, :-1] -= ph[..., :, :-1]
        out[..., :, 1:] += ph[..., :, :-1]
        out[..., :-1, :] -= pv[..., :-1, :]
        out[..., 1:, :] += pv[..., :-1, :]
        return out

    def norm_bound(self) -> float:
        return math.sqrt(8.0)

    def output_mask(self, shape, xp):
        h, w = shape[-2], shape[-1]
        mask = xp.ones((2, h, w))
        mask[0, :, -1] = 0
        mask[1, -1, :] = 0
        return mask


# FilterBank is defined in its own module and re-exported here.
from ._filterbank import FilterBank  # noqa: E402,F401
