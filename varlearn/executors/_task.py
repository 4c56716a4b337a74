r"""The pure task of an executor: one chunk of images, solved, with its hypergradient share.

A task gets a :class:`~varlearn.executors.DenoisingDataset`, the (global)
indices of its images, θ, its accuracy targets :math:`\epsilon_C,\delta_C` and
the batch size ``b`` (its loss has weight :math:`1/b`).  It reads its images
(or receives them), builds a :class:`~varlearn.problems.DenoisingProblem` and
the chunk loss, calls :func:`~varlearn.hypergradient.hypergradient` (or, for a
trial, :func:`~varlearn.solvers.solve_lower`) and returns a
:class:`ChunkResult` of host arrays and Python numbers.  Its output depends on
its arguments only, so a retried task returns the same certified result.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import time
import warnings
from pathlib import Path

import numpy as np

from ..backend import to_numpy
from ..hypergradient import BoundEstimator, hypergradient
from ..linalg import norm as _lnorm
from ..results import ConvergenceWarning
from ..solvers import solve_lower
from ._worker_cache import _CACHE, WorkerWarm

logger = logging.getLogger("varlearn")

__all__ = ["ChunkResult", "TaskOptions", "FaultHook", "run_chunk"]

_threads_set = {"done": False}


@dataclasses.dataclass
class TaskOptions:
    """What a task needs besides its data and θ.

    Attributes
    ----------
    phase : {"grad", "trial"}
        ``"grad"``: lower-level solve, CG and hypergradient share;
        ``"trial"``: the lower-level solve only (MAID's trial points).
    tag : tuple
        ``(call id, phase, θ digest, chunk)``: the driver accepts a result only
        with the tag it expects (stale results and duplicates are dropped).
    bound : bool
        Evaluate the pieces of the error bound.
    epoch : int or None
        For ``noise="fresh"``.
    lower_L0 : float or None
        FISTA's starting step constant.
    est_seed : tuple of int
        Seed words of the constant estimator: (``spec.estimator_seed``, a word of the
        call's ``key`` -- or the executor's call count without one --, chunk), so a
        retried task, and a resumed run passing the same keys, repeats its estimates.
    est_state : dict or None
        Running maxima ``L_H``, ``L_J``, ``J_norm_max`` of the estimator.
    threads : int or None
        Kernel threads to set on first use in this process (1 on Dask workers).
    fault : callable or None
        Test-only hook called with ``(tag, indices)`` before the work.
    """

    phase: str
    tag: tuple
    bound: bool = True
    epoch: int | None = None
    lower_L0: float | None = None
    est_seed: tuple = (0,)
    est_state: dict | None = None
    threads: int | None = None
    fault: object = None


@dataclasses.dataclass
class ChunkResult:
    r"""What one task returns (host arrays, Python numbers).

    Attributes
    ----------
    chunk : int
        Position of the chunk in the batch: the reduction order.
    indices : tuple of int
        Global indices of its images.
    tag : tuple
        The :attr:`TaskOptions.tag` it was run with.
    status : str
        ``"success"``, ``"lower_failed"``, ``"precision_limit"``, ``"cg_failed"`` or ``"nan"``
        (as :func:`~varlearn.hypergradient.hypergradient`).
    fun : float
        :math:`U_C(\tilde x_C)`, weight 1/b.
    grad_U_sq : float
        :math:`\|\nabla U_C(\tilde x_C)\|^2`.
    eps_sq, delta_sq : float
        Squares of the achieved distance bound :math:`\epsilon_C` and of the true
        CG residual (with its rounding margin) :math:`r_C`; ``delta_sq`` is NaN for trials.
    grad : numpy.ndarray or None
        :math:`z_C = -J_C^T q_C` in float64 (None for trials).
    J_sq, q_norm_sq : float
        :math:`\|J_C\|^2` (bound or estimate; NaN without a bound) and :math:`\|q_C\|^2`.
    mu, L_H, L_J : float
        Strong convexity and the Lipschitz constants used for this chunk (NaN without a bound).
    bound_exact : bool or None
    est_state : dict or None
        Running maxima of the constant estimator after the task.
    n_lower_iter, n_cg_iter : int
        Stacked iterations of the chunk's solves (as ``hypergradient`` counts them).
    image_lower_iter, image_cg_iter : int
        The same times the number of images of the chunk.
    L : float
        FISTA's final step constant.
    x, q : numpy.ndarray
        :math:`\tilde x_C` and :math:`q_C`, shape (n_C, H, W), in the working dtype (``q`` None for trials).
    time : float
        Seconds the task computed.
    worker : str
        ``host:pid`` of the process that ran it.
    address : str or None
        The Dask address of the worker that ran it when it used worker-side
        warm starts (where its images' starts now are), else None.
    """

    chunk: int
    indices: tuple
    tag: tuple
    status: str
    fun: float
    grad_U_sq: float
    eps_sq: float
    delta_sq: float
    grad: np.ndarray | None
    J_sq: float
    q_norm_sq: float
    mu: float
    L_H: float
    L_J: float
    bound_exact: bool | None
    est_state: dict | None
    n_lower_iter: int
    n_cg_iter: int
    image_lower_iter: int
    image_cg_iter: int
    L: float
    x: np.ndarray
    q: np.ndarray | None
    time: float
    worker: str
    address: str | None = None


@dataclasses.dataclass(frozen=True)
class FaultHook:
    """Test-only fault injection: fail the task of chunk ``chunk`` of phase ``phase``.

    ``mode="exit"`` ends the worker process with ``os._exit(1)`` (a lost
    worker), ``mode="raise"`` raises ``RuntimeError`` (an erred task).  With
    ``marker`` given the fault happens once: the first task that finds no file
    at ``marker`` creates it and fails, later ones run normally.  Never used
    outside tests.
    """

    chunk: int
    mode: str = "raise"
    marker: str | None = None
    phase: str = "grad"

    def __call__(self, tag, indices):
        if tag[3] != self.chunk or tag[1] != self.phase:
            return
        if self.marker is not None:
            path = Path(self.marker)
            if path.exists():
                return
            path.write_text(f"{os.getpid()} {tag}\n")
        if self.mode == "exit":
            os._exit(1)
        raise RuntimeError(f"injected fault in chunk {self.chunk} (images {list(indices)})")


def set_threads_once(n):
    """Set varlearn's kernel threads to ``n`` once in this process (``None``: leave them)."""
    if n is None or _threads_set["done"]:
        return
    from .._accel import set_threads  # noqa: PLC0415

    set_threads(n)
    _threads_set["done"] = True


def _warm_stack(warm, indices, problem, which):
    """Stack the warm starts of ``indices`` (noisy image / zero where an image has none); None if none has one."""
    if not warm or not any(i in warm and warm[i][which] is not None for i in indices):
        return None
    xp = problem.xp
    out = problem.noisy.copy() if which == 0 else xp.zeros(problem.x_shape, dtype=problem.dtype)
    for k, i in enumerate(indices):
        w = warm.get(i)
        if w is not None and w[which] is not None:
            out[k] = xp.asarray(w[which], dtype=problem.dtype)
    return out


def _estimator(opts):
    est = BoundEstimator(seed=np.random.SeedSequence(list(opts.est_seed)))
    if opts.est_state:
        est.L_H = float(opts.est_state.get("L_H", 0.0))
        est.L_J = float(opts.est_state.get("L_J", 0.0))
        est.J_norm_max = float(opts.est_state.get("J_norm_max", 0.0))
    return est


def _est_state(est):
    return {"L_H": est.L_H, "L_J": est.L_J, "J_norm_max": est.J_norm_max}


def _failed(chunk, indices, opts, problem, t0, exc):
    """The result of a chunk whose solve overflowed: status "nan", ε infinite, z NaN."""
    logger.info("task %s: %s: %s", opts.tag, type(exc).__name__, exc)
    nan = math.nan
    z = None if opts.phase == "trial" else np.full(problem.n_params, nan)
    return ChunkResult(chunk, tuple(indices), opts.tag, "nan", nan, nan, math.inf, nan, z, nan, nan, nan, nan,
                       nan, None, opts.est_state, 0, 0, 0, 0, nan, to_numpy(problem.noisy), None,
                       time.perf_counter() - t0, _whoami())


def _whoami():
    return f"{socket.gethostname()}:{os.getpid()}"


def run_chunk(spec, chunk, indices, theta, eps_c, delta_c, n_batch, opts, warm=None, data=None):
    r"""Run one task: the chunk ``chunk`` holding the images ``indices`` of a batch of ``n_batch``.

    Parameters
    ----------
    spec : DenoisingDataset
    chunk : int
    indices : tuple of int
        Global image indices.
    theta : numpy.ndarray
    eps_c, delta_c : float
        The chunk's targets :math:`\epsilon_C` (FISTA stops when the certified
        distance is below it) and :math:`\delta_C` (CG residual; ignored for trials).
    n_batch : int
        Images in the batch (the loss weight is ``1/n_batch``).
    opts : TaskOptions
    warm : dict or WorkerWarm, optional
        ``{index: (x_i or None, q_i or None)}`` warm starts; images without
        one start from their noisy image (and q from 0).  A
        :class:`~varlearn.executors._worker_cache.WorkerWarm`: read the starts
        from this process's cache and write the results back (a miss is a
        cold start: certified, not bit-reproducible).
    data : tuple, optional
        Raw ``(clean, noisy)`` blocks of the rows ``sorted(set(indices))``
        (Dask collections: futures resolved by Dask); else the task reads
        its images from ``spec.collection``.

    Returns
    -------
    ChunkResult
    """
    t0 = time.perf_counter()
    set_threads_once(opts.threads)
    if opts.fault is not None:
        opts.fault(opts.tag, indices)
    spec = _with_data(spec, indices, data)
    problem, upper = spec.problems(indices, n_batch, opts.epoch)
    theta = np.asarray(theta, dtype=np.float64)
    cache = warm if isinstance(warm, WorkerWarm) else None
    if cache is not None:
        warm = _CACHE.get(cache.run, indices, 1.0 / n_batch)
    res = _solve(spec, chunk, indices, theta, eps_c, delta_c, n_batch, opts, warm, problem, upper, t0)
    if cache is not None:
        if res.status != "nan":
            _CACHE.put(cache.run, indices, res.x, res.q, 1.0 / n_batch, cache.max_bytes)
        res.address = _worker_address()
    return res


def _worker_address():
    """The address of the Dask worker running this task, or None outside one."""
    try:
        from distributed import get_worker  # noqa: PLC0415 - only on the Dask path

        return get_worker().address
    except (ImportError, ValueError):
        return None


def _solve(spec, chunk, indices, theta, eps_c, delta_c, n_batch, opts, warm, problem, upper, t0):
    x0 = _warm_stack(warm, indices, problem, 0)
    n_c = len(indices)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if opts.phase == "trial":
                return _trial(spec, chunk, indices, theta, eps_c, n_c, opts, problem, upper, x0, t0)
            q0 = _warm_stack(warm, indices, problem, 1)
            est = _estimator(opts) if opts.bound else None  # only the bound uses estimates
            hg = hypergradient(problem, upper, theta, eps_c, delta_c, x0=x0, q0=q0, bound=opts.bound,
                               estimator=est, lower_maxiter=spec.lower_maxiter, cg_maxiter=spec.cg_maxiter,
                               backtracking=spec.backtracking, lower_L0=opts.lower_L0, constants=spec.constants)
    except (OverflowError, FloatingPointError) as exc:
        return _failed(chunk, indices, opts, problem, t0, exc)
    c = hg.constants or {}
    nan = math.nan
    J = c.get("J_norm", nan)
    est_out = opts.est_state if est is None else _est_state(est)
    return ChunkResult(
        chunk, tuple(indices), opts.tag, hg.status, float(hg.upper_value), float(hg.upper_grad_norm) ** 2,
        float(hg.eps) ** 2, float(hg.delta) ** 2, to_numpy(hg.grad).astype(np.float64), float(J) ** 2,
        _lnorm(hg.q) ** 2, float(c.get("mu", hg.lower.mu)), float(c.get("L_H", nan)), float(c.get("L_J", nan)),
        hg.bound_exact, est_out, int(hg.n_lower_iter), int(hg.n_cg_iter), int(hg.n_lower_iter) * n_c,
        int(hg.n_cg_iter) * n_c, float(hg.lower.L), to_numpy(hg.x), to_numpy(hg.q), time.perf_counter() - t0,
        _whoami())


def _with_data(spec, indices, data):
    if data is None:
        return spec
    coll = spec.collection.with_rows(spec.collection.task_rows(indices), *data)
    return dataclasses.replace(spec, collection=coll)


def _trial(spec, chunk, indices, theta, eps_c, n_c, opts, problem, upper, x0, t0):
    low = solve_lower(problem, theta, eps_c, x0=x0, maxiter=spec.lower_maxiter, backtracking=spec.backtracking,
                      L0=opts.lower_L0)
    status = "lower_failed" if low.status == "maxiter" else low.status
    nan = math.nan
    if status == "nan":
        fun = gU = nan
    else:
        fun = float(upper.value(low.x))
        gU = _lnorm(upper.grad(low.x))
    n = int(low.nit + low.n_hvp)
    return ChunkResult(chunk, tuple(indices), opts.tag, status, fun, gU * gU, float(low.distance_bound) ** 2, nan,
                       None, nan, nan, float(low.mu), nan, nan, None, opts.est_state, n, 0, n * n_c, 0, float(low.L),
                       to_numpy(low.x), None, time.perf_counter() - t0, _whoami())
