r"""Multinomial logistic regression with one ridge weight per coefficient.

Lower level (MAID paper, MNIST experiment; maid-spec §6.4):

.. math::

    h(W, \theta) = \mathrm{CE}(A W, y) + \tfrac12 \sum_{jk} e^{\theta_{jk}} W_{jk}^2,
    \qquad \mathrm{CE}(Z, y) = \frac1n \sum_{i=1}^n \Big(\operatorname{lse}(Z_{i,:}) - Z_{i, y_i}\Big),

with features ``A`` of shape ``(n, d)``, integer labels ``y``, weights ``W`` of
shape ``(d, c)`` (no bias) and θ the log ridge weights, one per entry of ``W``,
flattened row-major (``theta.reshape(d, c)`` lines up with ``W``).

Constants (all true bounds for ``h`` as written; derivations in the comments
of :class:`MultinomialLogisticProblem`):

* μ = min e^θ (CE is convex).
* L = ½‖A‖₂²/n + max e^θ.
* Hessian Lipschitz constant: max_i‖a_i‖ · ‖A‖₂² / (√2 n).
* Lipschitz constant of the mixed derivative in W: max e^θ; its norm at W:
  max |e^θ ⊙ W|.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .._validation import as_real_floating, check_array, check_int, check_positive
from ..backend import get_namespace, is_cupy_array, xp_name
from .base import LowerProblem, UpperLoss

__all__ = ["MultinomialLogisticProblem", "CrossEntropy"]

# Relative slack put on eigenvalues computed in floating point so that the
# reported constants stay bounds despite rounding (eigvalsh is backward stable:
# its error is a small multiple of d * eps * ||A^T A||).
_EIG_SLACK = 1e-10


# ---------------------------------------------------------------------- helpers
def _as_features(features, name):
    """A 2-D, finite, floating feature matrix (integers become float64 without rescaling)."""
    features = as_real_floating(features, name)
    if features.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n_samples, n_features), got shape {tuple(features.shape)}")
    if features.shape[0] < 1 or features.shape[1] < 1:
        raise ValueError(f"{name} must have at least one row and one column, got shape {tuple(features.shape)}")
    return check_array(features, name)


def _as_labels(labels, n, xp, name, n_classes=None):
    """Integer labels, 1-D of length ``n``, in ``[0, n_classes)``, in the namespace ``xp``."""
    if not (isinstance(labels, np.ndarray) or is_cupy_array(labels)):
        labels = np.asarray(labels)
    if xp_name(get_namespace(labels)) != xp_name(xp):
        raise TypeError(
            f"{name} is a {xp_name(get_namespace(labels))} array but the features are "
            f"{xp_name(xp)} arrays; move it explicitly (varlearn.backend.to_device)"
        )
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must be a 1-D array of length {n} (one per row of the features), "
                         f"got shape {tuple(labels.shape)}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0:
        raise ValueError(f"{name} must be >= 0, got a label {lo}")
    if n_classes is not None and hi >= n_classes:
        raise ValueError(f"{name} must lie in [0, n_classes) = [0, {n_classes}), got a label {hi}")
    return labels.astype(xp.int64, copy=False), hi


def _sq_spectral_norm(a):
    """‖a‖₂² (largest eigenvalue of aᵀa, in float64, with a tiny upward slack), as a float."""
    xp = get_namespace(a)
    a64 = a.astype(xp.float64, copy=False)
    gram = a64.T @ a64
    lam = float(xp.linalg.eigvalsh(gram)[-1])
    return max(lam, 0.0) * (1.0 + _EIG_SLACK)


class _ClassMajor:
    """Features stored transposed, ``(d, n)`` C-contiguous, with the label positions.

    Scores are formed class-major, ``Z^T = W^T A^T`` of shape ``(c, n)``: the
    products with ``A`` then run as wide GEMMs and the row-wise softmax becomes
    ``c`` contiguous vector passes, about twice as fast as the row-major layout
    for the tall, narrow MNIST problem (``n = 60000``, ``d = 144``, ``c = 10``).
    """

    def __init__(self, a, labels):
        xp = get_namespace(a)
        self.xp = xp
        self.ft = xp.ascontiguousarray(a.T)          # (d, n)
        self.n = int(a.shape[0])
        self.labels = labels
        # positions of the true-class entries in a raveled (c, n) array (the same for any c)
        self.flat_labels = labels * self.n + xp.arange(self.n)

    def scores(self, w):
        """``(A W)^T``, shape ``(c, n)``, C-contiguous."""
        return self.xp.ascontiguousarray(w.T @ self.ft)

    def softmax_ce(self, w, want_softmax=True):
        """Mean cross-entropy of ``A W`` and, if asked, the softmax ``S^T`` of shape ``(c, n)``.

        Stable: the column (sample) maximum is subtracted before exponentiating.
        """
        xp = self.xp
        zt = self.scores(w)
        zt -= zt.max(axis=0)
        z_true = zt.reshape(-1)[self.flat_labels]
        xp.exp(zt, out=zt)
        ssum = zt.sum(axis=0)
        ce = xp.mean(xp.log(ssum) - z_true)
        if not want_softmax:
            return ce, None
        zt /= ssum
        return ce, zt

    def grad_from_softmax(self, st):
        """``A^T (S - Y) / n`` from ``S^T`` (overwritten), shape ``(d, c)``."""
        st.reshape(-1)[self.flat_labels] -= 1.0
        return (st @ self.ft.T).T / self.n

    def hvp_ce(self, st, v):
        """``A^T [S (A V) - S rowsum(S (A V))] / n`` from ``S^T``, shape ``(d, c)``."""
        sp = st * (v.T @ self.ft)
        sp -= st * sp.sum(axis=0)
        return (sp @ self.ft.T).T / self.n


def _check_w(w, shape, name="x"):
    if tuple(w.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got shape {tuple(w.shape)}")


# ---------------------------------------------------------------------- lower level
class MultinomialLogisticProblem(LowerProblem):
    r"""Ridge-regularised multinomial logistic regression (lower level of the MNIST experiment).

    .. math:: h(W, \theta) = \frac1n\sum_i -\log \operatorname{softmax}(A W)_{i, y_i}
              + \tfrac12 \sum e^{\theta} \odot W^2

    Parameters
    ----------
    features : array of shape (n, d)
        Training features ``A`` (NumPy or CuPy).  float32 / float64 are kept;
        integers become float64 **without** rescaling.  Must be finite.
    labels : integer array of shape (n,)
        Class of each row, in ``[0, n_classes)``; same namespace as ``features``.
    n_classes : int >= 2
    ridge_shape : None
        Reserved; only the per-weight ridge (θ of length ``d * n_classes``) is
        implemented, and any other value raises ``ValueError``.

    Notes
    -----
    ``x`` is the weight matrix ``W`` of shape ``(d, n_classes)``; θ is the
    vector of log ridge weights flattened row-major, so ``theta.reshape(d,
    n_classes)`` pairs with ``W``.  Derivatives, with ``S`` the row softmax of
    ``AW`` and ``Y`` the one-hot labels:

    * ∇ₓh = Aᵀ(S − Y)/n + e^θ ⊙ W;
    * ∇²ₓₓh V = Aᵀ[S ⊙ (AV) − S ⊙ rowsum(S ⊙ (AV))]/n + e^θ ⊙ V;
    * (∂θ∇ₓh)ᵀ w = e^θ ⊙ W ⊙ w (flattened).

    The features are copied once into a transposed, C-contiguous ``(d, n)``
    array (the class-major layout of the products, about twice as fast on
    MNIST-shaped data); the attribute ``features`` is an ``(n, d)`` view of
    that copy, so the caller's array is not kept.

    ``hvp`` keeps the softmax of the last point it saw (a copy of ``W`` is
    compared, entry by entry, before reuse), so a run of Hessian products at
    one point (conjugate gradients) costs one product with ``A`` and one with
    ``Aᵀ`` each instead of two and one.
    """

    def __init__(self, features, labels, n_classes, ridge_shape=None):
        if ridge_shape is not None:
            raise ValueError(f"ridge_shape must be None (one ridge weight per coefficient), got {ridge_shape!r}")
        if isinstance(n_classes, bool) or not isinstance(n_classes, (numbers.Integral, np.integer)):
            raise TypeError(f"n_classes must be an integer, got {n_classes!r}")
        n_classes = check_int(n_classes, "n_classes", minimum=2)
        a = _as_features(features, "features")
        self._set_data(a)
        xp = self.xp
        n, d = a.shape
        y, _ = _as_labels(labels, n, xp, "labels", n_classes)
        self._cm = _ClassMajor(a, y)
        # the original row-major array is not kept: ``features`` is a view of the transposed copy
        self.features = self._cm.ft.T
        self.labels = y
        self.n_samples = int(n)
        self.n_features = int(d)
        self.n_classes = int(n_classes)
        self.dtype = a.dtype
        self.x_shape = (int(d), int(n_classes))
        self.n_params = int(d) * int(n_classes)
        # ‖A‖₂² and max_i ‖a_i‖, once (d×d eigenproblem, float64)
        self._a_norm_sq = _sq_spectral_norm(a)
        a64 = a.astype(xp.float64, copy=False)
        self._max_row_norm = math.sqrt(float((a64 * a64).sum(axis=1).max())) * (1.0 + _EIG_SLACK)
        # row norms ‖a_i‖ (float64) for hessian_lipschitz_at
        self._row_norms = xp.sqrt((a64 * a64).sum(axis=1)) * (1.0 + _EIG_SLACK)
        # for grad_error_bound: ‖|A|‖₂ and max_i ‖a_i‖₁
        self._abs_a_norm = math.sqrt(_sq_spectral_norm(xp.abs(a)))
        self._max_row_l1 = float(xp.abs(a64).sum(axis=1).max()) * (1.0 + _EIG_SLACK)
        self._cache_w = None
        self._cache_s = None

    # ------------------------------------------------------------------ θ
    def _default_params(self, rng):  # noqa: ARG002
        # the paper starts every log ridge weight at -3
        return np.full(self.n_params, -3.0)

    def param_layout(self):
        """Blocks of θ: a single block of log ridge weights."""
        return [("log_ridge", slice(0, self.n_params))]

    def _ridge(self, theta):
        """e^θ reshaped like W, in the data dtype."""
        if theta.ndim != 1 or theta.shape[0] != self.n_params:
            raise ValueError(f"theta must be a 1-D array of length {self.n_params}, got shape {tuple(theta.shape)}")
        return self.xp.exp(theta).astype(self.dtype, copy=False).reshape(self.x_shape)

    def _exp_range(self, theta):
        self.check_theta(theta)
        xp = self.xp
        e = xp.exp(theta.astype(xp.float64, copy=False))
        return float(e.min()), float(e.max())

    # ------------------------------------------------------------------ derivatives
    def value(self, x, theta):
        _check_w(x, self.x_shape)
        lam = self._ridge(theta)
        ce, _ = self._cm.softmax_ce(x, want_softmax=False)
        return ce + 0.5 * self.xp.sum(lam * x * x)

    def grad(self, x, theta):
        _check_w(x, self.x_shape)
        lam = self._ridge(theta)
        _, st = self._cm.softmax_ce(x)
        return self._cm.grad_from_softmax(st) + lam * x

    def _softmax_at(self, x):
        xp = self.xp
        if (self._cache_w is not None and self._cache_w.dtype == x.dtype
                and bool(xp.array_equal(self._cache_w, x))):
            return self._cache_s
        _, st = self._cm.softmax_ce(x)
        self._cache_w = x.copy()
        self._cache_s = st
        return st

    def hvp(self, x, theta, v):
        _check_w(x, self.x_shape)
        _check_w(v, self.x_shape, "v")
        lam = self._ridge(theta)
        return self._cm.hvp_ce(self._softmax_at(x), v) + lam * v

    def mixed_vjp(self, x, theta, w):
        _check_w(x, self.x_shape)
        _check_w(w, self.x_shape, "w")
        lam = self._ridge(theta)
        return (lam * x * w).reshape(-1).astype(theta.dtype, copy=False)

    # ------------------------------------------------------------------ constants
    def strong_convexity(self, theta):
        # CE is convex in W (log-sum-exp of linear maps minus a linear term) and the
        # ridge term has Hessian diag(e^θ): μ = min e^θ.
        return self._exp_range(theta)[0]

    def lipschitz(self, theta):
        # Hessian of CE: (1/n) Σ_i (a_i a_iᵀ) ⊗ (diag(s_i) − s_i s_iᵀ).  For u = Vᵀa_i,
        # uᵀ(diag(s) − ssᵀ)u is the variance of u's entries under the distribution s,
        # at most (max u − min u)²/4 ≤ ‖u‖²/2 (Popoviciu; (u_k − u_l)² ≤ 2‖u‖²).  Summing,
        # ⟨V, ∇²CE V⟩ ≤ ‖AV‖_F²/(2n) ≤ ½‖A‖₂²‖V‖²/n.
        return 0.5 * self._a_norm_sq / self.n_samples + self._exp_range(theta)[1]

    def hessian_lipschitz(self, theta):  # noqa: ARG002
        # The ridge term is quadratic; only CE has a third derivative.  For one row,
        # D³lse(z)[a, b, b] = E_s[(a − ā)(b − b̄)²] (third cumulant of the softmax
        # distribution s), so |D³lse[a, b, b]| ≤ max_k|a_k − ā| · Var_s(b)
        #   ≤ (√2‖a‖) · (‖b‖²/2) = ‖a‖‖b‖²/√2.
        # With a = Dᵀa_i, b = Vᵀa_i and averaging over rows:
        # |D³CE[D, V, V]| ≤ (1/(√2 n)) Σ_i ‖Dᵀa_i‖‖Vᵀa_i‖² ≤ max_i‖a_i‖‖D‖ ‖AV‖_F² /(√2 n)
        #   ≤ max_i‖a_i‖ ‖A‖₂² ‖D‖‖V‖² /(√2 n),
        # which bounds ‖∇²h(W + D) − ∇²h(W)‖ / ‖D‖ by the mean value theorem.
        return self._max_row_norm * self._a_norm_sq / (math.sqrt(2.0) * self.n_samples)

    @property
    def local_bound_cost(self):
        """Hessian-vector products that one :meth:`hessian_lipschitz_at` costs (counted as CG cost)."""
        return max(1, math.ceil(self.n_features / (2 * self.n_classes)))

    def hessian_lipschitz_at(self, x, theta, radius):
        r"""Lipschitz constant of the Hessian on the ball :math:`\|W' - W\| \le` ``radius`` around ``x = W``.

        Row ``i`` contributes :math:`\sqrt2\|a_i\|\,\|D\|\,\tau_i\|V^Ta_i\|^2` to
        :math:`|D^3\mathrm{CE}[D, V, V]|` (see :meth:`hessian_lipschitz`), where :math:`\tau_i`
        bounds :math:`\mathrm{Var}_{s'}(\beta)/\|\beta\|^2` over the ball: scores move by at most
        :math:`\|a_i\|r`, so :math:`s'_{ik} \le e^{2\|a_i\|r}s_{ik}`, and the variance is at most
        the second moment about :math:`\beta_m` (``m`` the most likely class at ``W``):
        :math:`\tau_i = \min(\tfrac12, 2e^{2\|a_i\|r}(1 - s_{im} + 8u))`.  Hence
        :math:`L_H \le \sqrt2\,\lambda_{max}(A^T\mathrm{diag}(\|a_i\|\tau_i)A)/n`, never above
        :meth:`hessian_lipschitz` and much below it when the predictions are confident.  Costs one
        ``d x d`` Gram matrix (``local_bound_cost`` Hessian-vector products).
        """
        _check_w(x, self.x_shape)
        xp = self.xp
        r = check_positive(radius, "radius", allow_zero=True)
        u = float(np.finfo(self.dtype).eps) / 2.0
        st = self._softmax_at(x)  # cached by CG's products at the same x (read only here)
        rest = 1.0 - st.max(axis=0).astype(xp.float64)  # 1 - s_im
        tau = xp.minimum(0.5, 2.0 * xp.exp(2.0 * r * self._row_norms) * (rest + 8.0 * u))
        ft = self._cm.ft.astype(xp.float64, copy=False)
        gram = (ft * (self._row_norms * tau)) @ ft.T
        lam = float(xp.linalg.eigvalsh(gram)[-1]) * (1.0 + _EIG_SLACK) + 16.0 * self.n_features * u * float(
            xp.abs(gram).max())
        return min(math.sqrt(2.0) * lam / self.n_samples, self.hessian_lipschitz(theta))

    def mixed_lipschitz(self, theta):
        # J(W) = ∂θ∇ₓh = diag(e^θ ⊙ W) is linear in W with ‖J(W) − J(W')‖ ≤ max e^θ ‖W − W'‖.
        return self._exp_range(theta)[1]

    def mixed_norm_bound(self, x, theta):
        # J is diagonal: its norm is the largest |e^θ ⊙ W|.
        _check_w(x, self.x_shape)
        lam = self._ridge(theta)
        return float(self.xp.abs(lam * x).max())

    def grad_error_bound(self, x, theta):
        r"""First-order bound on the rounding error of :meth:`grad` (standard model, Higham 2002 §3.1).

        Scores :math:`Z = AW`: :math:`|\delta Z_{ik}| \le m := \gamma_d \max|W| \max_i\|a_i\|_1`.
        The softmax is invariant under the shift by the row maximum, so score
        errors change it by at most :math:`2mS_{ik}`; the rounding of the
        shifted scores, ``exp``, the sum and the division add at most
        :math:`S_{ik}(2c+4)u + u` (``exp`` of a shifted score :math:`-t \le 0` rounded to
        :math:`-t(1+\delta)` is off by :math:`te^{-t}u \le u/e`), so
        :math:`|\delta S_{ik}| \le S_{ik}(2m + (2c+4)u) + u`.  Then :math:`A^T(S - Y)/n` adds
        :math:`\gamma_n\||A|\|_2\|S - Y\|_F/n` with :math:`\|S - Y\|_F \le \sqrt{2n}`, and
        the ridge term :math:`3u\|e^\theta \odot W\|`.
        """
        from .base import gamma

        _check_w(x, self.x_shape)
        xp = self.xp
        dt = self.dtype
        u = float(np.finfo(dt).eps) / 2.0
        n, d, c = self.n_samples, self.n_features, self.n_classes
        wmax = float(xp.abs(x).max())
        m = gamma(d, dt) * wmax * self._max_row_l1
        ridge = float(xp.linalg.norm((xp.exp(theta.astype(xp.float64)).reshape(self.x_shape) * x).ravel()))
        ds = math.sqrt(n) * (2.0 * m + (2 * c + 6) * u) + u * math.sqrt(n * c)
        ce = self._abs_a_norm / n * (gamma(n, dt) * math.sqrt(2.0 * n) + ds)
        return (ce + 3.0 * u * ridge) * (1.0 + gamma(2, dt))

    def describe(self, theta):
        lo, hi = self._exp_range(theta)
        return {"n_params": self.n_params, "ridge_min": lo, "ridge_max": hi}

    def __repr__(self):
        return (f"MultinomialLogisticProblem(n_samples={self.n_samples}, n_features={self.n_features}, "
                f"n_classes={self.n_classes}, backend={self.backend!r})")


# ---------------------------------------------------------------------- upper level
class CrossEntropy(UpperLoss):
    r"""Mean cross-entropy on validation data: :math:`U(W) = \mathrm{CE}(A_{val} W, y_{val})`.

    Parameters
    ----------
    features : array of shape (n_val, d)
    labels : integer array of shape (n_val,)
    n_classes : int >= 2, optional
        Number of columns of ``W``.  When omitted, any ``W`` with more columns
        than the largest label is accepted.

    ``lipschitz()`` = ½‖A_val‖₂²/n_val (see
    :meth:`MultinomialLogisticProblem.lipschitz`); convex.
    """

    convex = True

    def __init__(self, features, labels, n_classes=None):
        if n_classes is not None:
            if isinstance(n_classes, bool) or not isinstance(n_classes, (numbers.Integral, np.integer)):
                raise TypeError(f"n_classes must be an integer, got {n_classes!r}")
            n_classes = check_int(n_classes, "n_classes", minimum=2)
        a = _as_features(features, "features")
        xp = get_namespace(a)
        y, hi = _as_labels(labels, a.shape[0], xp, "labels", n_classes)
        self._cm = _ClassMajor(a, y)
        self.features = self._cm.ft.T
        self.labels = y
        self.n_samples = int(a.shape[0])
        self.n_features = int(a.shape[1])
        self.n_classes = n_classes
        self._min_classes = max(hi + 1, 2)
        self._a_norm_sq = _sq_spectral_norm(a)

    def _check(self, x):
        if x.ndim != 2 or x.shape[0] != self.n_features:
            raise ValueError(f"x must have shape ({self.n_features}, n_classes), got shape {tuple(x.shape)}")
        if self.n_classes is not None and x.shape[1] != self.n_classes:
            raise ValueError(f"x must have shape ({self.n_features}, {self.n_classes}), got shape {tuple(x.shape)}")
        if x.shape[1] < self._min_classes:
            raise ValueError(f"x has {x.shape[1]} columns but the labels go up to {self._min_classes - 1}")

    def value(self, x):
        self._check(x)
        ce, _ = self._cm.softmax_ce(x, want_softmax=False)
        return ce

    def grad(self, x):
        self._check(x)
        _, st = self._cm.softmax_ce(x)
        return self._cm.grad_from_softmax(st)

    def lipschitz(self):
        return 0.5 * self._a_norm_sq / self.n_samples

    def accuracy(self, x):
        """Fraction of validation rows whose largest score ``(A_val W)_i`` is at the true label."""
        self._check(x)
        xp = get_namespace(self.features, x)
        pred = xp.argmax(self._cm.scores(x), axis=0)
        return float(xp.mean((pred == self.labels).astype(xp.float64)))

    def __repr__(self):
        return f"CrossEntropy(n_samples={self.n_samples}, n_features={self.n_features})"
