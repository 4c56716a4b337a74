r"""The ``Separable`` protocol: problems and losses that split into independent samples.

A bilevel problem is *separable* when the lower level is a sum of independent
per-sample objectives and the upper loss a weighted sum of per-sample losses,

.. math:: h(x, \theta) = \sum_i h_i(x_i, \theta), \qquad U(x) = w \sum_i u_i(x_i),

as for denoising a stack of images (sample ``i`` = one pair of a clean and a
noisy image).  Then the hypergradient of the mean loss over a mini-batch ``B``
needs only the images of ``B``: :meth:`Separable.subset` builds the problem (or
the loss) of those images alone, the loss with the batch weight ``w = 1/|B|``,
so that its hypergradient is the unbiased estimate
:math:`\nabla f_B = \frac{1}{|B|}\sum_{i\in B}\nabla f_i` of :math:`\nabla f`.

Stochastic methods (:class:`~varlearn.bilevel.isgd.ISGD`) require the
protocol and refuse other problems with a ``ValueError``
(:func:`require_separable`).

References
----------
M. S. Salehi, S. Mukherjee, L. Roberts, M. J. Ehrhardt, "Bilevel learning with
inexact stochastic gradients", SSVM 2025, LNCS 15667, pp. 347–359, arXiv 2412.12049.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from ..backend import get_namespace

__all__ = ["Separable", "is_separable", "require_separable", "check_indices", "take"]


@runtime_checkable
class Separable(Protocol):
    """A problem or upper loss made of ``n_samples`` independent samples.

    Attributes
    ----------
    n_samples : int
        Number of samples (images) ``N``.
    sample_weight : float
        Weight of each sample's term: 1 for :class:`~varlearn.DenoisingProblem`
        (the lower level is a plain sum), ``w`` for
        :class:`~varlearn.SquaredError` (1/N by default).

    Methods
    -------
    subset(indices)
        A new object of the same kind for the samples ``indices`` (1-D integers
        in ``[0, n_samples)``, in that order, repeats allowed).  A loss subset
        has weight ``1/len(indices)``.  Only the selected samples are copied.
    """

    @property
    def n_samples(self) -> int: ...

    @property
    def sample_weight(self) -> float: ...

    def subset(self, indices): ...


def is_separable(obj) -> bool:
    """Whether ``obj`` implements the :class:`Separable` protocol."""
    return isinstance(obj, Separable)


def require_separable(obj, name, method="isgd"):
    """Return ``obj``; raise ``ValueError`` naming ``name`` when it is not :class:`Separable`."""
    if not is_separable(obj):
        raise ValueError(
            f"method {method!r} samples mini-batches and needs a separable {name} (the Separable protocol: "
            f"n_samples, subset(indices), sample_weight); {type(obj).__name__} is not separable "
            f"(its lower level couples all samples in one solve)"
        )
    return obj


def check_indices(indices, n, name="indices"):
    """Validate sample indices; returns a 1-D host ``int64`` array.

    ``indices`` must be a non-empty sequence (or host array) of integers in
    ``[0, n)``; anything else raises ``ValueError`` (``TypeError`` for a
    non-integer dtype) naming ``name`` and the value.
    """
    idx = np.asarray(indices)
    if idx.ndim != 1 or idx.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of integers, got shape {tuple(idx.shape)}")
    if idx.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {idx.dtype}")
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= n:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} must lie in [0, {n}), got {bad}")
    return idx.astype(np.int64, copy=False)


def take(stack, indices, n):
    """``stack[indices]`` along the first axis: a copy of the selected images only.

    The (host) indices are validated with :func:`check_indices` and moved to
    the device of ``stack`` explicitly (a few integers).
    """
    idx = check_indices(indices, n)
    xp = get_namespace(stack)
    return stack[xp.asarray(idx)] if xp is not np else stack[idx]
