r"""Certificates across a batch: allocation of the accuracy to chunks and composition of their results.

Derivation (stochastic-spec §3, checked here).  The batch :math:`B` of
:math:`b` images is split into chunks :math:`C` of :math:`n_C` images.  The lower
level :math:`h_B = \sum_C h_C` is block-separable and every block is
:math:`\mu`-strongly convex with the same :math:`\mu`; :math:`U_B = \sum_C U_C` with
:math:`U_C = \frac1b\sum_{i\in C}\tfrac12\|x_i-c_i\|^2`, so :math:`L_U = 1/b`.

* **Distance.** The stacked norm adds in squares:
  :math:`\|\tilde x_B-\hat x_B\|^2 = \sum_C\|\tilde x_C-\hat x_C\|^2 \le \sum_C\epsilon_C^2`,
  so :math:`\epsilon = (\sum_C\epsilon_C^2)^{1/2}` certifies the batch.  The
  targets :math:`\epsilon_C = \epsilon\sqrt{n_C/b}` give :math:`\sum_C\epsilon_C^2 = \epsilon^2`
  exactly (:func:`allocate`), i.e. :math:`\epsilon/\sqrt b` per image.
* **CG.** :math:`H_B` is block-diagonal and :math:`\nabla U_B` stacks the
  :math:`\nabla U_C`, so the batch residual is the stack of the chunk residuals:
  :math:`\delta = (\sum_C r_C^2)^{1/2}`, targets :math:`\delta\sqrt{n_C/b}`.
* **Constants.** :math:`\|\nabla U_B\| = (\sum_C\|\nabla U_C\|^2)^{1/2}`;
  :math:`J_B` stacks the :math:`J_C` row-wise, so
  :math:`\|J_B\|^2 = \lambda_{\max}(\sum_C J_C^TJ_C) \le \sum_C\|J_C\|^2` (equality for
  Frobenius bounds such as TV's).  :math:`H_B(x)-H_B(x')` is block-diagonal, so
  :math:`L_H = \max_C L_{H,C}` (likewise :math:`L_J`, as :math:`J_B(x)-J_B(x')` stacks the
  blocks; each chunk's local constants hold on the ball of radius
  :math:`\epsilon_C \ge \|\tilde x_C-\hat x_C\|` it was evaluated on, which is all the
  bound uses), and :math:`\mu = \min_C\mu_C`.
* **Bound.** ω is :func:`~varlearn.hypergradient.error_bound` with these
  composed quantities, plus the rounding of :math:`J^Tq`:
  :math:`32u\|J\|\|q\|`, and of the float64 sum of the chunk shares:
  :math:`(n_{\text{chunks}}-1)\,u_{64}\sum_C\|z_C\|`.  For one chunk it is the
  in-process bound.
* **Dropped chunks.** With :math:`b' < b` images done, the shares are rescaled
  to the mean over the :math:`b'` images: :math:`z`, :math:`U`, :math:`\|\nabla U\|`, the
  residual and :math:`q` by :math:`b/b'`, :math:`L_U = 1/b'`; :math:`\epsilon` and :math:`\|J\|`
  are those of the images done.  The certificate is then for :math:`f_{B'}`.

Function values are bracketed by the stacked form
:math:`U \pm (\|\nabla U\|\epsilon + \tfrac12 L_U\epsilon^2)` (no quadratic term below:
the loss is convex), as in-process MAID does.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..hypergradient import error_bound

__all__ = ["BatchHypergradient", "BatchValue", "DistributedTaskError", "allocate", "compose_hypergradient",
           "compose_value", "Collector"]

_U64 = float(np.finfo(np.float64).eps) / 2.0
# the worst status of a chunk decides the batch's (hypergradient's statuses, worst first)
_STATUS_ORDER = ("nan", "lower_failed", "precision_limit", "cg_failed", "success")


class DistributedTaskError(RuntimeError):
    """A task failed after all its retries (``on_task_failure="raise"``).

    Attributes
    ----------
    indices : tuple of int
        The images of the failed chunk(s).
    details : str
        The last error of each failed chunk (with its traceback when known).
    """

    def __init__(self, message, indices, details=""):
        super().__init__(message)
        self.indices = tuple(indices)
        self.details = details


@dataclasses.dataclass
class BatchHypergradient:
    r"""The composed hypergradient of a batch (:meth:`Executor.hypergradient`).

    Attributes
    ----------
    grad : numpy.ndarray
        :math:`z_B = \sum_C z_C` (float64, summed in chunk order), rescaled by
        :math:`b/b'` when chunks were dropped.
    omega : float
        Bound (or estimate, see ``bound_exact``) on :math:`\|z_B-\nabla f_B\|`; NaN when
        ``bound=False`` or a chunk produced non-finite values.
    fun : float
        :math:`U_B(\tilde x_B)`, the mean squared error of the batch (images done).
    eps, delta : float
        Achieved batch accuracies :math:`(\sum\epsilon_C^2)^{1/2}`, :math:`(\sum r_C^2)^{1/2}`.
    bound_exact : bool or None
    image_lower_iter, image_cg_iter : int
        Image-iterations of the FISTA and CG work (retried attempts not counted).
    n_retries, n_dropped : int
        Resubmitted tasks; dropped chunks.
    warm_out : dict
        ``{index: (x_i, q_i)}`` for the images done (working dtype).
    per_chunk : list of ChunkResult
        In chunk order (their ``x``/``q`` are the arrays of ``warm_out``).
    grad_norm, grad_U_norm : float
    fun_lower, fun_upper : float
        Certified bracket of :math:`f_B` at θ.
    status : str
        Worst chunk status; ``success`` is True when every chunk met its targets.
    n_images : int
        Images done (:math:`b'`).
    n_uncertified : int
        Chunks whose status is not ``"success"``.
    dropped : tuple of int
        Indices of the images of dropped chunks.
    constants : dict
        ``mu``, ``L_U``, ``L_H``, ``L_J``, ``J_norm`` as composed, plus the estimators'
        running maxima ``est_state`` (pass back as ``constants=``).
    n_lower_iter, n_cg_iter : int
        Image-iterations divided by the batch size, rounded up (the stacked count of in-process runs).
    time : float
        Wall seconds of the call.
    """

    grad: np.ndarray
    omega: float
    fun: float
    eps: float
    delta: float
    bound_exact: bool | None
    image_lower_iter: int
    image_cg_iter: int
    n_retries: int
    n_dropped: int
    warm_out: dict
    per_chunk: list
    grad_norm: float = math.nan
    grad_U_norm: float = math.nan
    fun_lower: float = math.nan
    fun_upper: float = math.nan
    status: str = "success"
    success: bool = True
    n_images: int = 0
    n_uncertified: int = 0
    dropped: tuple = ()
    constants: dict = dataclasses.field(default_factory=dict)
    n_lower_iter: int = 0
    n_cg_iter: int = 0
    time: float = 0.0


@dataclasses.dataclass
class BatchValue:
    """The composed lower-level solves of a batch, no CG (:meth:`Executor.trial`).

    Attributes as in :class:`BatchHypergradient`: ``fun``, ``eps``, ``fun_lower``,
    ``fun_upper``, ``grad_U_norm``, ``status``, ``success``, ``image_lower_iter``,
    ``n_lower_iter``, ``n_retries``, ``n_dropped``, ``n_images``, ``n_uncertified``,
    ``dropped``, ``warm_out`` (``{index: (x_i, None)}``), ``per_chunk``, ``L``
    (the largest final FISTA step constant of the chunks), ``time``.
    """

    fun: float
    eps: float
    fun_lower: float
    fun_upper: float
    grad_U_norm: float
    status: str
    success: bool
    image_lower_iter: int
    n_lower_iter: int
    n_retries: int
    n_dropped: int
    n_images: int
    n_uncertified: int
    dropped: tuple
    warm_out: dict
    per_chunk: list
    L: float = math.nan
    time: float = 0.0


def allocate(total, sizes):
    r"""Per-chunk targets :math:`t\sqrt{n_C/b}` for a batch target ``total``: their squares sum to ``total**2``."""
    b = float(sum(sizes))
    return [total * math.sqrt(n / b) for n in sizes]


def _worst(statuses):
    ranks = [_STATUS_ORDER.index(s) if s in _STATUS_ORDER else 0 for s in statuses]
    return _STATUS_ORDER[min(ranks)] if ranks else "success"


def _common(results, n_batch, dropped, n_retries):
    """Shared pieces of both compositions: scale b/b', U, ‖∇U‖, ε, costs, warm starts."""
    done = sum(len(r.indices) for r in results)
    if done == 0:
        raise ValueError("no chunk of the batch was completed")
    scale = n_batch / done
    fun = scale * math.fsum(r.fun for r in results)
    gU = scale * math.sqrt(math.fsum(r.grad_U_sq for r in results))
    eps = math.sqrt(math.fsum(r.eps_sq for r in results))
    L_U = 1.0 / done
    warm = {}
    for r in results:
        for k, i in enumerate(r.indices):
            warm[i] = (r.x[k], None if r.q is None else r.q[k])
    status = _worst(r.status for r in results)
    return dict(done=done, scale=scale, fun=fun, gU=gU, eps=eps, L_U=L_U, warm=warm, status=status,
                n_unc=sum(r.status != "success" for r in results),
                img_lower=sum(r.image_lower_iter for r in results),
                dropped=tuple(i for d in dropped for i in d), n_dropped=len(dropped), n_retries=n_retries,
                lo=fun - gU * eps, up=fun + gU * eps + 0.5 * L_U * eps * eps)


def compose_hypergradient(results, n_batch, dtype=np.float64, dropped=(), n_retries=0, elapsed=0.0):
    """Compose chunk results (a list in chunk order) into a :class:`BatchHypergradient` (see the module text).

    ``dropped`` lists the index tuples of dropped chunks; ``dtype`` is the
    working dtype of the solves (its unit roundoff enters the rounding terms).
    """
    c = _common(results, n_batch, dropped, n_retries)
    scale = c["scale"]
    grad = np.zeros_like(results[0].grad, dtype=np.float64)
    for r in results:
        grad += r.grad
    grad *= scale
    delta = scale * math.sqrt(math.fsum(r.delta_sq for r in results))
    J = math.sqrt(math.fsum(r.J_sq for r in results))
    qn = scale * math.sqrt(math.fsum(r.q_norm_sq for r in results))
    mu = min(r.mu for r in results)
    L_H = max(r.L_H for r in results)
    L_J = max(r.L_J for r in results)
    u = float(np.finfo(dtype).eps) / 2.0
    pieces = (J, L_H, L_J, mu)
    if all(math.isfinite(v) for v in pieces) and c["status"] != "nan":
        zsum = math.fsum(float(np.linalg.norm(r.grad)) for r in results)
        omega = (error_bound(c["eps"], delta, mu, c["L_U"], c["gU"], J, L_J, L_H / (mu * mu))
                 + 32.0 * u * J * qn + (len(results) - 1) * _U64 * scale * zsum)
        exact = all(bool(r.bound_exact) for r in results)
    else:
        omega, exact = math.nan, None
    est = {}
    for r in results:
        for k, v in (r.est_state or {}).items():
            est[k] = max(est.get(k, 0.0), float(v))
    img_cg = sum(r.image_cg_iter for r in results)
    return BatchHypergradient(
        grad=grad, omega=omega, fun=c["fun"], eps=c["eps"], delta=delta, bound_exact=exact,
        image_lower_iter=c["img_lower"], image_cg_iter=img_cg, n_retries=c["n_retries"],
        n_dropped=c["n_dropped"], warm_out=c["warm"], per_chunk=list(results),
        grad_norm=float(np.linalg.norm(grad)), grad_U_norm=c["gU"], fun_lower=c["lo"], fun_upper=c["up"],
        status=c["status"], success=c["status"] == "success", n_images=c["done"], n_uncertified=c["n_unc"],
        dropped=c["dropped"],
        constants={"mu": mu, "L_U": c["L_U"], "L_H": L_H, "L_J": L_J, "J_norm": J, "est_state": est},
        n_lower_iter=-(-c["img_lower"] // n_batch), n_cg_iter=-(-img_cg // n_batch), time=elapsed)


def compose_value(results, n_batch, dropped=(), n_retries=0, elapsed=0.0):
    """Compose trial chunk results into a :class:`BatchValue`."""
    c = _common(results, n_batch, dropped, n_retries)
    return BatchValue(
        fun=c["fun"], eps=c["eps"], fun_lower=c["lo"], fun_upper=c["up"], grad_U_norm=c["gU"],
        status=c["status"], success=c["status"] == "success", image_lower_iter=c["img_lower"],
        n_lower_iter=-(-c["img_lower"] // n_batch), n_retries=c["n_retries"], n_dropped=c["n_dropped"],
        n_images=c["done"], n_uncertified=c["n_unc"], dropped=c["dropped"], warm_out=c["warm"],
        per_chunk=list(results), L=max(r.L for r in results), time=elapsed)


class Collector:
    """Results of one call by chunk: accepts each chunk once, with the tag it expects.

    Parameters
    ----------
    tags : list of tuple
        The expected tag of each chunk (index = chunk).
    """

    def __init__(self, tags):
        self.tags = list(tags)
        self.results = [None] * len(self.tags)
        self.n_discarded = 0

    def add(self, result):
        """Store ``result``; False (and discarded) for a stale result or a duplicate."""
        c = getattr(result, "chunk", None)
        if not isinstance(c, int) or not 0 <= c < len(self.tags) or result.tag != self.tags[c] \
                or self.results[c] is not None:
            self.n_discarded += 1
            return False
        self.results[c] = result
        return True

    def missing(self):
        return [c for c, r in enumerate(self.results) if r is None]
