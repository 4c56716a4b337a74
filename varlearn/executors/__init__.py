"""Executors: the per-image work of a batch (solve, CG, hypergradient share) as independent tasks.

The denoising lower level is separable by image, so a batch splits into
chunks of images whose solves are independent tasks (stochastic-spec §4.6).
An executor runs them and composes their results into certified batch
quantities (:mod:`varlearn.executors._reduce` has the derivation):

- :class:`SerialExecutor`: in this process, one task after the other (the
  reference; no Dask);
- :class:`DaskExecutor`: on a ``dask.distributed`` cluster (a ``LocalCluster``
  on request, or the user's ``Client`` / scheduler address); needs the extra
  ``pip install "varlearn[distributed]"``.  Importing this package never
  imports Dask.

Both offer ``hypergradient(spec, indices, theta, eps, delta, ...)`` ->
:class:`BatchHypergradient` and ``trial(spec, indices, theta, eps, ...)`` ->
:class:`BatchValue`, where ``spec`` is a :class:`DenoisingDataset`.
:func:`executor_hypergradient` and :func:`executor_solve_lower` are the
full-batch forms with the results of :func:`~varlearn.hypergradient.hypergradient`
and :func:`~varlearn.solvers.solve_lower`, for MAID.
"""
from ._base import Executor, SerialExecutor
from ._dask import DISTRIBUTED_EXTRA, DaskExecutor
from ._reduce import (
    BatchHypergradient,
    BatchValue,
    Collector,
    DistributedTaskError,
    allocate,
    compose_hypergradient,
    compose_value,
)
from ._spec import DenoisingDataset, chunk_loss
from ._task import ChunkResult, FaultHook, TaskOptions, run_chunk
from ._worker_cache import WorkerWarm, clear_worker_cache, worker_cache_info
from .maid import executor_hypergradient, executor_solve_lower

__all__ = [
    "Executor", "SerialExecutor", "DaskExecutor", "DISTRIBUTED_EXTRA", "BatchHypergradient", "BatchValue",
    "ChunkResult", "Collector", "DistributedTaskError", "DenoisingDataset", "FaultHook", "TaskOptions",
    "allocate", "chunk_loss", "compose_hypergradient", "compose_value", "executor_hypergradient",
    "executor_solve_lower", "run_chunk", "WorkerWarm", "clear_worker_cache", "worker_cache_info",
]
