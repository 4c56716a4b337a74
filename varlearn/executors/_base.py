"""The executor interface, the task loop with retries, and the serial (reference) executor."""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import numbers
import time
import traceback
import uuid

import numpy as np

from .._validation import check_positive
from ._reduce import Collector, DistributedTaskError, allocate, compose_hypergradient, compose_value
from ._spec import DenoisingDataset
from ._task import TaskOptions, run_chunk
from ._worker_cache import WorkerWarm

logger = logging.getLogger("varlearn")

__all__ = ["Executor", "SerialExecutor"]

_FAILURE_MODES = ("raise", "drop")


def theta_digest(theta):
    """Short SHA-256 digest of θ's float64 bytes (part of every task tag)."""
    return hashlib.sha256(np.ascontiguousarray(theta, dtype=np.float64).tobytes()).hexdigest()[:16]


@dataclasses.dataclass
class _Task:
    """One chunk of a call: its arguments (``data`` = (spec for the task, raw rows or None)) and its attempts."""

    chunk: int
    indices: tuple
    eps_c: float
    delta_c: float | None
    opts: TaskOptions
    warm: dict | None
    data: tuple
    attempt: int = 0
    errors: list = dataclasses.field(default_factory=list)


class Executor:
    """Runs the per-image work of a batch as tasks of chunks of images, and composes their results.

    Subclasses provide :meth:`_run` (run a list of tasks, report each
    outcome); this class splits a batch into chunks, allocates the accuracy
    (``allocate``), retries failed tasks, applies ``on_task_failure`` and
    composes the chunk results in chunk order (stochastic-spec §3, §4.6).

    Parameters
    ----------
    images_per_task : int or "auto"
        Images per task; ``"auto"`` lets the executor choose (the whole batch
        serially, ⌈b / workers⌉ on Dask).
    task_retries : int
        How often a failed task is resubmitted (under a new key) before
        ``on_task_failure`` applies.
    on_task_failure : {"raise", "drop"}
        ``"raise"``: :class:`DistributedTaskError` naming the images;
        ``"drop"``: the chunk is left out and the batch rescaled to the
        images done (at most ``max_drop_fraction`` of the batch, else raise).
        Never use ``"drop"`` for MAID (its line search compares f at two θ on
        the same images).
    max_drop_fraction : float
        Largest fraction of a batch's images that may be dropped.
    """

    def __init__(self, images_per_task="auto", task_retries=2, on_task_failure="raise", max_drop_fraction=0.1):
        if images_per_task != "auto" and (isinstance(images_per_task, bool)
                                          or not isinstance(images_per_task, numbers.Integral)
                                          or images_per_task < 1):
            raise ValueError(f"images_per_task must be a positive int or 'auto', got {images_per_task!r}")
        if isinstance(task_retries, bool) or not isinstance(task_retries, numbers.Integral) or task_retries < 0:
            raise ValueError(f"task_retries must be an int >= 0, got {task_retries!r}")
        if on_task_failure not in _FAILURE_MODES:
            raise ValueError(f"on_task_failure must be one of {_FAILURE_MODES}, got {on_task_failure!r}")
        if not (isinstance(max_drop_fraction, numbers.Real) and 0 <= max_drop_fraction < 1):
            raise ValueError(f"max_drop_fraction must lie in [0, 1), got {max_drop_fraction!r}")
        self.images_per_task = images_per_task
        self.task_retries = int(task_retries)
        self.on_task_failure = on_task_failure
        self.max_drop_fraction = float(max_drop_fraction)
        self.fault_hook = None  # test-only: a FaultHook passed to every task
        self._run_id = uuid.uuid4().hex[:8]
        self._calls = 0

    # ----------------------------------------------------------------- to override
    threads = None  # kernel threads set in the processes that run tasks (None: leave as is)

    def _auto_images(self, b):
        return b

    def _run(self, spec, theta, n_batch, tasks, report):
        """Run ``tasks`` (attempt ``task.attempt``); call ``report(task, result_or_exception, text)``."""
        raise NotImplementedError

    def _prepare_data(self, spec, indices):
        """(spec for the task, data) for a chunk: in-memory rows travel with the task."""
        return spec.for_task(indices), None

    # ----------------------------------------------------------------- public
    def chunks(self, n):
        """Split ``n`` positions into contiguous chunks of near-equal size (``numpy.array_split``)."""
        k = self._auto_images(n) if self.images_per_task == "auto" else self.images_per_task
        n_chunks = max(1, math.ceil(n / max(1, int(k))))
        return [tuple(int(p) for p in part) for part in np.array_split(np.arange(n), n_chunks)]

    def hypergradient(self, spec, indices, theta, eps, delta, *, warm=None, bound=True, key=None, epoch=None,
                      lower_L0=None, constants=None):
        r"""The hypergradient of the batch ``indices`` at θ, certified to batch accuracies ``eps``, ``delta``.

        Chunk ``C`` solves to :math:`\epsilon\sqrt{n_C/b}` and CG to
        :math:`\delta\sqrt{n_C/b}`, so the composed accuracies are at most ``eps``
        and ``delta`` (per image: ``eps / sqrt(b)``).

        Parameters
        ----------
        spec : DenoisingDataset
        indices : sequence of int
            The batch (global indices; order kept, chunks are contiguous runs of it).
        theta : array
        eps, delta : float > 0
        warm : dict or WorkerWarm, optional
            ``{index: (x_i, q_i)}`` warm starts (``q_i`` may be None), sent with
            the tasks (deterministic).  A :class:`WorkerWarm`: every task reads
            and writes the warm-start cache of the process it runs in (on Dask,
            tasks are placed on the worker that last held most of their images);
            a miss or a lost worker means a cold start -- certified, but not
            bit-reproducible.
        bound : bool
            Compute ω.
        key : str, optional
            Label put into the task keys (e.g. the outer iteration).
        epoch : int, optional
            For ``noise="fresh"``.
        lower_L0 : float, optional
            FISTA's starting step constant for every chunk.
        constants : dict, optional
            ``constants["est_state"]`` of an earlier result: running maxima of
            the constant estimators.

        Returns
        -------
        BatchHypergradient

        Raises
        ------
        DistributedTaskError
            A task failed ``task_retries + 1`` times with ``on_task_failure="raise"``, or too many were dropped.
        """
        return self._call("grad", spec, indices, theta, eps, delta, warm, bound, key, epoch, lower_L0, constants)

    def trial(self, spec, indices, theta, eps, *, warm=None, key=None, epoch=None, lower_L0=None):
        """Lower-level solves only, to batch accuracy ``eps``: a :class:`BatchValue` (MAID's trial points)."""
        return self._call("trial", spec, indices, theta, eps, None, warm, False, key, epoch, lower_L0, None)

    def close(self):
        """Release what the executor opened (nothing for the serial executor)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ----------------------------------------------------------------- the loop
    def _call(self, phase, spec, indices, theta, eps, delta, warm, bound, key, epoch, lower_L0, constants):
        t0 = time.perf_counter()
        if not isinstance(spec, DenoisingDataset):
            raise TypeError(f"spec must be a DenoisingDataset, got {type(spec).__name__}")
        idx = spec.collection.check_indices(indices)
        eps = check_positive(eps, "eps")
        if phase == "grad":
            delta = check_positive(delta, "delta")
        theta = np.asarray(theta, dtype=np.float64)
        if theta.shape != (spec.n_params,):
            raise ValueError(f"theta must have shape ({spec.n_params},), got {theta.shape}")
        self._calls += 1
        call = f"{self._run_id}-{'' if key is None else str(key) + '-'}{self._calls}"
        digest = theta_digest(theta)
        # the estimators' seed: from the caller's key when given (the same in a resumed run), else the call count
        call_word = self._calls if key is None else int(hashlib.sha256(str(key).encode()).hexdigest()[:15], 16)
        parts = self.chunks(len(idx))
        sizes = [len(p) for p in parts]
        eps_t = allocate(eps, sizes)
        delta_t = allocate(delta, sizes) if phase == "grad" else [None] * len(parts)
        est_state = None if not constants else constants.get("est_state")
        tasks = []
        for c, part in enumerate(parts):
            ind = tuple(idx[p] for p in part)
            opts = TaskOptions(phase=phase, tag=(call, phase, digest, c), bound=bound, epoch=epoch,
                               lower_L0=lower_L0, est_seed=(spec.estimator_seed, call_word, c),
                               est_state=est_state, threads=self.threads, fault=self.fault_hook)
            if isinstance(warm, WorkerWarm):
                w = warm
            else:
                w = None if not warm else {i: warm[i] for i in ind if i in warm}
            tspec, data = self._prepare_data(spec, ind)
            tasks.append(_Task(c, ind, eps_t[c], delta_t[c], opts, w, (tspec, data)))
        collector = Collector([t.opts.tag for t in tasks])
        n_retries, failed = self._loop(spec, theta, len(idx), tasks, collector)
        dropped = [t.indices for t in failed]
        results = [r for r in collector.results if r is not None]
        elapsed = time.perf_counter() - t0
        if phase == "grad":
            out = compose_hypergradient(results, len(idx), np.dtype(spec.dtype), dropped, n_retries, elapsed)
        else:
            out = compose_value(results, len(idx), dropped, n_retries, elapsed)
        logger.debug("executor %s %s: %d chunks, %d retries, %d dropped, %.3f s", call, phase, len(tasks),
                     n_retries, len(dropped), elapsed)
        return out

    def _loop(self, spec, theta, n_batch, tasks, collector):
        pending = list(tasks)
        failed = []
        n_retries = 0
        while pending:
            outcome = {}

            def report(task, value, text, _outcome=outcome):
                if isinstance(value, BaseException):
                    _outcome.setdefault(task.chunk, (task, value, text))
                elif not collector.add(value):
                    logger.info("executor: discarded a stale or duplicate result of chunk %d", task.chunk)

            self._run(spec, theta, n_batch, pending, report)
            this_round, pending = pending, []
            for task in this_round:
                if collector.results[task.chunk] is not None or task.chunk not in outcome:
                    continue
                _, exc, text = outcome[task.chunk]
                task.errors.append(text or f"{type(exc).__name__}: {exc}")
                if task.attempt < self.task_retries:
                    task.attempt += 1
                    n_retries += 1
                    logger.warning("executor: task of images %s failed (%s: %s); retry %d of %d", list(task.indices),
                                   type(exc).__name__, exc, task.attempt, self.task_retries)
                    pending.append(task)
                else:
                    failed.append(task)
            lost = [t for t in this_round if collector.results[t.chunk] is None and t.chunk not in outcome]
            if lost:  # neither a result nor an error: an executor bug, never silently ignored
                raise RuntimeError(f"executor: no outcome for the chunks {[t.chunk for t in lost]}")
        if failed:
            self._on_failure(failed, n_batch)
        return n_retries, failed

    def _on_failure(self, failed, n_batch):
        images = tuple(i for t in failed for i in t.indices)
        details = "\n\n".join(f"chunk {t.chunk} (images {list(t.indices)}):\n{t.errors[-1]}" for t in failed)
        tries = self.task_retries + 1
        if self.on_task_failure == "raise":
            raise DistributedTaskError(
                f"{len(failed)} task(s) failed {tries} time(s); images {list(images)}; last error:\n{details}",
                images, details)
        if len(images) > self.max_drop_fraction * n_batch:
            raise DistributedTaskError(
                f"{len(images)} of {n_batch} images failed {tries} time(s), more than max_drop_fraction="
                f"{self.max_drop_fraction}; images {list(images)}; last error:\n{details}", images, details)
        logger.warning("executor: dropped %d image(s) %s after %d failed attempts", len(images), list(images), tries)


class SerialExecutor(Executor):
    """The reference executor: the same tasks, run one after the other in this process (no Dask).

    ``images_per_task="auto"`` runs the whole batch as one task, which is then
    exactly :func:`~varlearn.hypergradient.hypergradient` on the stacked batch.
    Other parameters as :class:`Executor`.
    """

    def _run(self, spec, theta, n_batch, tasks, report):
        for task in tasks:
            tspec, data = task.data
            try:
                res = run_chunk(tspec, task.chunk, task.indices, theta, task.eps_c, task.delta_c, n_batch,
                                task.opts, warm=task.warm, data=data)
            except Exception as exc:  # a failed task is reported, retried or dropped by the loop
                report(task, exc, traceback.format_exc())
            else:
                report(task, res, None)
