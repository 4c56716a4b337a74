"""The picklable description of a separable denoising task: data, regularizer, noise, solver limits."""
from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

from ..datasets.collection import ImageCollection
from ..problems import DenoisingProblem, SquaredError
from ..regularizers import Regularizer

__all__ = ["DenoisingDataset", "chunk_loss"]

_NOISE_MODES = ("fixed", "fresh")


def chunk_loss(clean, n_batch):
    r"""The squared-error share of a chunk in a batch of ``n_batch`` images.

    :math:`U_C(x) = \frac{1}{b}\sum_{i\in C}\tfrac12\|x_i - c_i\|^2`, so that the
    losses of the chunks of a batch add up to the batch's mean squared error
    and :math:`L_{U_C} = 1/b` (stochastic-spec §3).  For a chunk holding the
    whole batch this is ``SquaredError(clean)`` itself.
    """
    if clean.shape[0] == n_batch:
        return SquaredError(clean)
    return SquaredError(clean, weight=1.0 / n_batch)


@dataclasses.dataclass(frozen=True)
class DenoisingDataset:
    r"""A denoising problem over an :class:`~varlearn.datasets.ImageCollection`, described, not loaded.

    Lower level per image :math:`h_i(x,\theta) = \tfrac12\|x - y_i\|^2 + R(x,\theta)`,
    upper level the mean squared error against the clean images.  Picklable
    and small: it is what every task of an executor receives (C6 ``spec``).

    Parameters
    ----------
    collection : ImageCollection
    regularizer : Regularizer
    sigma : float, optional
        Standard deviation of the synthetic noise; required when the
        collection holds clean images only, must be None when it has noisy
        images.
    noise : {"fixed", "fresh"}
        ``"fixed"``: image ``i``'s noise depends on ``(noise_seed, i)``;
        ``"fresh"``: on ``(noise_seed, i, epoch)`` (redrawn every epoch).
    noise_seed : int
    dtype : {"float64", "float32"}
        Working precision of the solves.
    lower_maxiter, cg_maxiter : int
        Iteration limits of each chunk's FISTA and CG (as in
        :func:`~varlearn.hypergradient.hypergradient`).
    backtracking : {"auto", True, False}
    constants : {"exact", "estimate"}
        As in :func:`~varlearn.hypergradient.hypergradient`.
    estimator_seed : int
        Seeds the constant estimators of the tasks, together with the call
        and chunk number, so a retried task repeats its estimate.
    """

    collection: ImageCollection
    regularizer: Regularizer
    sigma: float | None = None
    noise: str = "fixed"
    noise_seed: int = 0
    dtype: str = "float64"
    lower_maxiter: int = 10000
    cg_maxiter: int = 2000
    backtracking: object = "auto"
    constants: str = "exact"
    estimator_seed: int = 0

    def __post_init__(self):
        if not isinstance(self.collection, ImageCollection):
            raise TypeError(f"collection must be an ImageCollection, got {type(self.collection).__name__}")
        if not isinstance(self.regularizer, Regularizer):
            raise TypeError(f"regularizer must be a Regularizer, got {type(self.regularizer).__name__}")
        if self.noise not in _NOISE_MODES:
            raise ValueError(f"noise must be one of {_NOISE_MODES}, got {self.noise!r}")
        if self.collection.has_noisy and self.sigma is not None:
            raise ValueError(f"sigma must be None: the collection holds noisy images (got sigma={self.sigma!r})")
        if not self.collection.has_noisy:
            s = self.sigma
            if isinstance(s, bool) or not isinstance(s, numbers.Real) or not math.isfinite(s) or s < 0:
                raise ValueError(f"sigma must be a finite number >= 0 for a collection of clean images, got {s!r}")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be 'float64' or 'float32', got {self.dtype!r}")
        if self.constants not in ("exact", "estimate"):
            raise ValueError(f"constants must be 'exact' or 'estimate', got {self.constants!r}")
        for name in ("lower_maxiter", "cg_maxiter"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")

    @classmethod
    def from_problem(cls, problem, upper, **options):
        """The description of an in-memory ``DenoisingProblem`` with its ``SquaredError``.

        The images travel with the tasks (a few per task).  ``options`` are
        the other fields (solver limits).
        """
        if not isinstance(problem, DenoisingProblem):
            raise TypeError(f"problem must be a DenoisingProblem, got {type(problem).__name__}")
        if not isinstance(upper, SquaredError):
            raise TypeError(f"upper must be a SquaredError, got {type(upper).__name__}")
        from ..backend import to_numpy  # noqa: PLC0415

        noisy, clean = to_numpy(problem.noisy), to_numpy(upper.clean)
        if noisy.shape != clean.shape:
            raise ValueError(f"the problem's noisy images {noisy.shape} and the loss's clean images "
                             f"{clean.shape} differ in shape")
        coll = ImageCollection.from_array(clean, noisy=noisy, dtype=noisy.dtype)
        return cls(coll, problem.regularizer, dtype=str(noisy.dtype), **options)

    # ------------------------------------------------------------------ Separable-like members
    @property
    def n_samples(self):
        return len(self.collection)

    @property
    def image_shape(self):
        return self.collection.image_shape

    @property
    def n_params(self):
        return self.regularizer.n_params

    def fingerprint(self):
        """The collection's fingerprint (the data a checkpoint was written for)."""
        return self.collection.fingerprint()

    def for_task(self, indices):
        """This description with a collection that can read ``indices`` (see ``ImageCollection.for_task``)."""
        coll = self.collection.for_task(indices)
        return self if coll is self.collection else dataclasses.replace(self, collection=coll)

    def read_pairs(self, indices, epoch=None):
        """(clean, noisy) of ``indices`` in :attr:`dtype` (noise per :attr:`noise`; ``epoch`` for "fresh")."""
        if self.noise == "fresh" and not self.collection.has_noisy and epoch is None:
            raise ValueError("epoch is required for noise='fresh'")
        ep = epoch if self.noise == "fresh" else None
        clean, noisy = self.collection.read_pairs(indices, sigma=self.sigma, seed=self.noise_seed, epoch=ep)
        dt = np.dtype(self.dtype)
        return clean.astype(dt, copy=False), noisy.astype(dt, copy=False)

    def problems(self, indices, n_batch, epoch=None):
        """(DenoisingProblem, chunk loss of weight 1/n_batch) for the images ``indices``."""
        clean, noisy = self.read_pairs(indices, epoch)
        return DenoisingProblem(noisy, self.regularizer), chunk_loss(clean, n_batch)
