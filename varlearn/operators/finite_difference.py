r"""Forward finite differences (the discrete gradient of total variation).

References
----------
.. [1] A. Chambolle, "An algorithm for total variation minimization and applications",
   J. Math. Imaging Vis. 20 (2004) 89-97 (forward differences with a Neumann boundary).
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_namespace
from .base import LinearOperator

__all__ = ["FiniteDifference"]


class FiniteDifference(LinearOperator):
    r"""Forward differences along the last two axes, without wrap-around.

    ``apply(x)[..., 0, i, j] = x[..., i, j+1] - x[..., i, j]`` for ``j < W-1``
    (horizontal) and ``apply(x)[..., 1, i, j] = x[..., i+1, j] - x[..., i, j]``
    for ``i < H-1`` (vertical).  The last column of the horizontal channel and
    the last row of the vertical channel do not exist in the operator as
    written (the MAID paper's :math:`(n-1)\times n` difference matrices); they
    are set to zero (a Neumann boundary) and :meth:`output_mask` marks them.

    :math:`\|D\|^2 \le 8`, so :meth:`norm_bound` returns :math:`\sqrt 8`; each
    channel has :math:`\|D_d^TD_d\| \le 4`, so
    :math:`\|w_hD_h^TD_h + w_vD_v^TD_v\| \le \min(8\max w, 4(w_h + w_v))`.

    References
    ----------
    .. [1] A. Chambolle, J. Math. Imaging Vis. 20 (2004) 89-97.
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

    def weighted_gram_bound(self, w) -> float:
        w = np.asarray(w, dtype=np.float64).reshape(-1)
        if w.size == 1:
            w = np.repeat(w, 2)
        return float(min(8.0 * w.max(), 4.0 * w.sum()))

    def output_mask(self, shape, xp):
        h, w = shape[-2], shape[-1]
        mask = xp.ones((2, h, w))
        mask[0, :, -1] = 0
        mask[1, -1, :] = 0
        return mask

    def rounding_constants(self):
        # a row is (+1, -1), a pixel is in at most 4 rows; one subtraction per entry (relative error u)
        return {"row_l1": 2.0, "col_l1": 4.0, "n_terms": 2, "apply_ulps": 1.0}
