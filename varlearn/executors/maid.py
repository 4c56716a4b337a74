"""Full-batch MAID (and HOAG, fixed accuracy) on an executor: drop-in replacements of its two solver calls.

In-process MAID calls :func:`~varlearn.hypergradient.hypergradient` on the
stacked problem and :func:`~varlearn.solvers.solve_lower` at its trial
points.  :func:`executor_hypergradient` and :func:`executor_solve_lower` take
the same arguments (an executor and a :class:`DenoisingDataset` instead of
the problem and loss) and return :class:`~varlearn.results.Result` objects
with the same keys, for the full batch ``range(N)``: the stacked ``x`` and
``q`` in image order, the composed ε, δ, ω, U and ‖∇U‖ (stochastic-spec §3),
and iteration counts in the stacked unit (image-iterations / N, rounded up)
plus ``image_lower_iter`` / ``image_cg_iter``.  With one task holding the
whole batch (``images_per_task >= N``, or the serial executor's default) the
results are those of the in-process calls.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..results import Result

__all__ = ["executor_hypergradient", "executor_solve_lower"]


def _stack(warm, n, which):
    return np.stack([warm[i][which] for i in range(n)])


def _warm(x0, q0, n):
    if x0 is None and q0 is None:
        return None
    x0 = None if x0 is None else np.asarray(x0)
    q0 = None if q0 is None else np.asarray(q0)
    return {i: (None if x0 is None else x0[i], None if q0 is None else q0[i]) for i in range(n)}


def _with_limits(spec, lower_maxiter, cg_maxiter, backtracking, constants):
    changes = {k: v for k, v in (("lower_maxiter", lower_maxiter), ("cg_maxiter", cg_maxiter),
                                 ("backtracking", backtracking), ("constants", constants)) if v is not None}
    return dataclasses.replace(spec, **changes) if changes else spec


def executor_hypergradient(executor, spec, theta, lower_tol, cg_tol, x0=None, q0=None, bound=True, estimator=None,
                           lower_maxiter=None, cg_maxiter=None, backtracking=None, lower_L0=None, constants=None,
                           key=None):
    """:func:`~varlearn.hypergradient.hypergradient` of the full batch, run on ``executor``.

    Parameters
    ----------
    executor : Executor
    spec : DenoisingDataset
    theta, lower_tol, cg_tol, x0, q0, bound, lower_L0
        As in :func:`~varlearn.hypergradient.hypergradient` (``lower_tol`` and
        ``cg_tol`` are the batch accuracies; ``x0``, ``q0`` stacks (N, H, W)).
    estimator : BoundEstimator, optional
        Its running maxima are sent to the tasks and updated from the result.
    lower_maxiter, cg_maxiter, backtracking, constants : optional
        Override the fields of ``spec`` of the same names.
    key : str, optional
        Label of the task keys.

    Returns
    -------
    Result
        The keys of ``hypergradient``'s result (``lower`` holds ``L``,
        ``status``, ``nit``; ``cg`` holds ``nit``, ``residual_norm``), plus
        ``image_lower_iter``, ``image_cg_iter``, ``n_retries``, ``batch`` (the
        :class:`BatchHypergradient`).
    """
    spec = _with_limits(spec, lower_maxiter, cg_maxiter, backtracking, constants)
    n = spec.n_samples
    consts = None
    if estimator is not None:
        consts = {"est_state": {"L_H": estimator.L_H, "L_J": estimator.L_J, "J_norm_max": estimator.J_norm_max}}
    bh = executor.hypergradient(spec, range(n), theta, lower_tol, cg_tol, warm=_warm(x0, q0, n), bound=bound,
                                key=key, lower_L0=lower_L0, constants=consts)
    if estimator is not None:
        st = bh.constants.get("est_state", {})
        estimator.L_H = max(estimator.L_H, st.get("L_H", 0.0))
        estimator.L_J = max(estimator.L_J, st.get("L_J", 0.0))
        estimator.J_norm_max = max(estimator.J_norm_max, st.get("J_norm_max", 0.0))
    chunks = bh.per_chunk
    L = max(r.L for r in chunks)
    lower = Result(L=L, status="maxiter" if bh.status == "lower_failed" else bh.status, nit=bh.n_lower_iter,
                   distance_bound=bh.eps, mu=min(r.mu for r in chunks))
    cg = Result(nit=bh.n_cg_iter, residual_norm=bh.delta, success=all(r.status != "cg_failed" for r in chunks))
    consts_out = {} if not math.isfinite(bh.omega) else {k: bh.constants[k] for k in
                                                           ("mu", "L_U", "L_H", "L_J", "J_norm")}
    return Result(
        grad=bh.grad, grad_norm=bh.grad_norm, error_bound=bh.omega, bound_exact=bh.bound_exact, status=bh.status,
        success=bh.success, x=_stack(bh.warm_out, n, 0), q=_stack(bh.warm_out, n, 1), eps=bh.eps, delta=bh.delta,
        upper_value=bh.fun, upper_grad_norm=bh.grad_U_norm, n_lower_iter=bh.n_lower_iter, n_cg_iter=bh.n_cg_iter,
        lower=lower, cg=cg, constants=consts_out, wall_time=bh.time, image_lower_iter=bh.image_lower_iter,
        image_cg_iter=bh.image_cg_iter, n_retries=bh.n_retries, batch=bh)


def executor_solve_lower(executor, spec, theta, tol, x0=None, maxiter=None, backtracking=None, L0=None, key=None):
    """:func:`~varlearn.solvers.solve_lower` of the full batch, run on ``executor`` (MAID's trial solves).

    Returns
    -------
    Result
        ``x`` (stacked), ``distance_bound`` (composed ε), ``status``
        (``"maxiter"`` when a chunk hit ``maxiter``, else the worst chunk status),
        ``success``, ``nit`` (image-iterations / N, rounded up), ``n_hvp`` (0),
        ``L`` (the largest chunk's), ``mu``, ``upper_value`` and
        ``upper_grad_norm`` (U and ‖∇U‖ at ``x``), ``image_lower_iter``,
        ``batch`` (the :class:`BatchValue`).
    """
    spec = _with_limits(spec, maxiter, None, backtracking, None)
    n = spec.n_samples
    bv = executor.trial(spec, range(n), theta, tol, warm=_warm(x0, None, n), key=key, lower_L0=L0)
    status = "maxiter" if bv.status == "lower_failed" else bv.status
    return Result(x=_stack(bv.warm_out, n, 0), distance_bound=bv.eps, status=status, success=bv.success,
                  nit=bv.n_lower_iter, n_hvp=0, L=bv.L, mu=min(r.mu for r in bv.per_chunk),
                  upper_value=bv.fun, upper_grad_norm=bv.grad_U_norm, image_lower_iter=bv.image_lower_iter,
                  batch=bv)
