"""Denoising: the lower-level problem and the squared-error upper loss."""
from __future__ import annotations

import math

import numpy as np

from .._validation import check_array
from ..backend import as_float_array
from ..linalg import norm as _lnorm
from ..regularizers import Regularizer
from .base import LowerProblem, UpperLoss

__all__ = ["DenoisingProblem", "SquaredError"]


def _as_stack(a, name):
    a = as_float_array(a, name=name)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"{name} must have shape (N, H, W) or (H, W), got shape {tuple(a.shape)}")
    if a.shape[-1] < 2 or a.shape[-2] < 2:
        raise ValueError(f"{name} images must be at least 2x2, got shape {tuple(a.shape)}")
    return a


class DenoisingProblem(LowerProblem):
    r"""Variational denoising of a batch of images.

    .. math:: h(x, \theta) = \tfrac12 \|x - y\|^2 + R(x, \theta)

    for noisy images ``y`` of shape ``(N, H, W)`` (a single ``(H, W)`` image
    becomes a batch of one).  μ = 1 + (a lower bound on R's curvature) and
    L = 1 + (R's Lipschitz bound) are the constants of ``h`` as written.

    Parameters
    ----------
    noisy : array of shape (N, H, W) or (H, W)
        NumPy or CuPy; integer images are scaled to [0, 1]; float32/float64 kept.
    regularizer : Regularizer
    """

    def __init__(self, noisy, regularizer: Regularizer):
        if not isinstance(regularizer, Regularizer):
            raise TypeError(f"regularizer must be a Regularizer, got {type(regularizer).__name__}")
        y = _as_stack(noisy, "noisy")
        self._set_data(y)
        self.noisy = y
        self.regularizer = regularizer
        self.dtype = y.dtype
        self.x_shape = tuple(y.shape)
        self.n_params = regularizer.n_params
        self._noisy_norm = None

    def _default_params(self, rng):
        return self.regularizer.init_params(rng)

    def initial_x(self):
        return self.noisy.copy()

    def describe(self, theta):
        return self.regularizer.describe(theta)

    def value(self, x, theta):
        d = x - self.noisy
        return 0.5 * self.xp.vdot(d.ravel(), d.ravel()) + self.regularizer.value(x, theta)

    def grad(self, x, theta):
        r""":math:`x - y + \nabla_x R(x, \theta)`: the array :meth:`fused_grad` computes without a step."""
        return self.fused_grad(x, theta)[0]

    def fused_grad(self, x, theta, *, x_prev=None, beta=0.0, step=None, out=None):
        """The regularizer's fused pass with the data term: ``regularizer.fused_grad(..., y=noisy, data_w=1)``.

        See :meth:`LowerProblem.fused_grad`; a regularizer whose (operator, potential)
        pair has a registered kernel runs the whole FISTA step in one pass.
        """
        return self.regularizer.fused_grad(x, theta, self.noisy, 1.0, x_prev=x_prev, beta=beta, step=step, out=out)

    def hvp(self, x, theta, v):
        r""":math:`v + \nabla^2_{xx}R(x, \theta)\,v` by ``regularizer.fused_hvp(x, theta, v, data_w=1)``."""
        return self.regularizer.fused_hvp(x, theta, v, 1.0)

    def mixed_vjp(self, x, theta, w):
        return self.regularizer.mixed_vjp(x, theta, w)

    def strong_convexity(self, theta):
        c = self.regularizer.convexity(theta)
        mu = 1.0 + c
        if not mu > 0:
            raise ValueError(
                f"the denoising problem is not strongly convex at this theta "
                f"(curvature bound of the regularizer {c!r} <= -1)"
            )
        return mu

    def lipschitz(self, theta):
        return 1.0 + self.regularizer.lipschitz(theta)

    def lipschitz_is_loose(self, theta):
        return self.regularizer.lipschitz_is_loose(theta)

    def hessian_lipschitz(self, theta):
        return self.regularizer.hessian_lipschitz(theta)

    def mixed_lipschitz(self, theta):
        return self.regularizer.mixed_lipschitz(theta)

    def mixed_norm_bound(self, x, theta):
        return self.regularizer.mixed_norm_bound(x, theta)

    def mixed_lipschitz_at(self, x, theta, radius):
        return self.regularizer.mixed_lipschitz_at(x, theta, radius)

    def grad_error_bound(self, x, theta):
        """``2u(‖x‖ + ‖y‖)`` for the data term plus the regularizer's bound (the generic
        estimate of :class:`~varlearn.problems.base.LowerProblem` when it has none)."""
        r = self.regularizer.grad_error_bound(x, theta)
        if r is None:
            return super().grad_error_bound(x, theta)
        u = float(np.finfo(self.dtype).eps) / 2.0
        if self._noisy_norm is None:
            self._noisy_norm = _lnorm(self.noisy)
        return 2.0 * u * (_lnorm(x) + self._noisy_norm) + float(r)

    def param_layout(self):
        return self.regularizer.param_layout()

    # -------------------------------------------------- Separable protocol (varlearn.problems.separable)
    @property
    def n_samples(self):
        """Number of images ``N`` (the samples of the :class:`~varlearn.problems.separable.Separable` protocol)."""
        return int(self.x_shape[0])

    #: h is the plain sum of the per-image objectives h_i (weight 1 each)
    sample_weight = 1.0

    def subset(self, indices):
        """The denoising problem of the images ``indices`` (a new problem; only those images are copied).

        ``indices`` are validated by :func:`~varlearn.problems.separable.check_indices`
        (1-D integers in ``[0, N)``, repeats allowed); the regularizer object is shared.
        """
        from .separable import take

        return DenoisingProblem(take(self.noisy, indices, self.n_samples), self.regularizer)


class SquaredError(UpperLoss):
    r"""Weighted sum over images of :math:`\tfrac12\|x_i - c_i\|^2`: :math:`U(x) = \frac{w}{2}\|x - c\|^2`.

    ``weight`` w defaults to 1/N (the mean over the N images); :math:`L_U = w`;
    convex.  A mini-batch loss carries the batch weight 1/b (:meth:`subset`).
    """

    convex = True

    def __init__(self, clean, weight=None):
        c = as_float_array(clean, name="clean")
        if c.ndim == 2:
            c = c[None]
        if c.ndim != 3:
            raise ValueError(f"clean must have shape (N, H, W) or (H, W), got shape {tuple(c.shape)}")
        self.clean = c
        self.n_images = c.shape[0]
        if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))
                                   or not (0 < weight < math.inf)):
            raise ValueError(f"weight must be a positive finite number or None, got {weight!r}")
        # the default divides by N (as before, bit for bit); an explicit weight multiplies
        self._weight = None if weight is None else float(weight)

    def _check(self, x):
        check_array(x, "x", shape=self.clean.shape, finite=False)

    def value(self, x):
        d = (x - self.clean).ravel()
        xp = self._xp(x)
        if self._weight is None:
            return 0.5 * xp.vdot(d, d) / self.n_images
        return 0.5 * xp.vdot(d, d) * self._weight

    def grad(self, x):
        if self._weight is None:
            return (x - self.clean) / self.n_images
        return (x - self.clean) * self._weight

    def lipschitz(self):
        return self.sample_weight

    def _xp(self, x):
        from ..backend import get_namespace

        return get_namespace(x, self.clean)

    def psnr(self, x, data_range=1.0):
        """Mean over images of the PSNR (dB) of ``x`` against the clean images, ``x`` clipped to [0, data_range].

        :func:`varlearn.metrics.mean_psnr` with ``clip=True`` (the clean images must lie in
        ``[0, data_range]``); use that function directly for unclipped values.
        """
        from ..metrics import mean_psnr

        return mean_psnr(x, self.clean, data_range=data_range, clip=True)

    # -------------------------------------------------- Separable protocol (varlearn.problems.separable)
    @property
    def n_samples(self):
        """Number of images ``N``."""
        return int(self.n_images)

    @property
    def sample_weight(self):
        """The weight w of every image's ½‖x_i − c_i‖² (1/N unless given)."""
        return 1.0 / self.n_images if self._weight is None else self._weight

    def subset(self, indices):
        """The loss of the images ``indices`` with weight ``1/len(indices)`` (only those images are copied).

        ``SquaredError(clean).subset(range(N))`` equals ``SquaredError(clean)`` bit
        for bit; repeated indices count repeatedly.
        """
        from .separable import take

        return SquaredError(take(self.clean, indices, self.n_samples))
