"""The Dask executor: the tasks of :mod:`varlearn.executors` on a ``dask.distributed`` cluster.

Imported only when a :class:`DaskExecutor` is made: the core of varlearn never
imports Dask.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import traceback

from ._base import Executor
from ._task import run_chunk, set_threads_once
from ._worker_cache import WorkerWarm

logger = logging.getLogger("varlearn")

__all__ = ["DaskExecutor", "DISTRIBUTED_EXTRA"]

#: How to install the optional dependency of the Dask executor.
DISTRIBUTED_EXTRA = 'pip install "varlearn[distributed]"'


def _distributed():
    try:
        import distributed  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(f"DaskExecutor needs dask.distributed, an optional dependency: {DISTRIBUTED_EXTRA}") \
            from exc
    return distributed


class DaskExecutor(Executor):
    """Runs the tasks on a ``dask.distributed`` cluster; results do not depend on where or when they ran.

    Every task has an explicit key ``varlearn-{run}-{call}-{phase}-{chunk}-{attempt}``
    (Dask reuses the result of an equal key, so a retry gets a new one).
    Results are collected with ``as_completed``, stored by chunk and summed in
    chunk order, in float64.  A worker lost mid-task is handled by Dask (the
    task is rerouted; after ``distributed.scheduler.allowed-failures`` lost
    workers it errs with ``KilledWorker``); an erred task is resubmitted up
    to ``task_retries`` times, then ``on_task_failure`` applies.  Workers run
    varlearn's kernels on one thread.

    With ``warm=WorkerWarm(...)`` (worker-side warm starts, stochastic-spec
    §4.6) each task is submitted with ``workers=[the worker that last held
    most of its images]`` and ``allow_other_workers=True``; it reads its
    starts from that worker's cache.  A task that runs elsewhere (the worker
    is busy, lost or gone) starts cold from the noisy images: certified, but
    not bit-reproducible.

    Parameters
    ----------
    client : distributed.Client or str, optional
        A client of the user's cluster, or a scheduler address
        (``"tcp://host:8786"``) to connect to.  Every worker must run the same
        versions of varlearn and its dependencies and be able to read the
        data.  Default: a ``LocalCluster(n_workers, threads_per_worker=1,
        processes=True, memory_limit="auto")`` (its dashboard on a free port) opened on first use and closed
        by :meth:`close` (scripts using it need an ``if __name__ ==
        "__main__":`` guard).
    n_workers : int, optional
        Workers of the local cluster (default ``min(4, os.cpu_count())``); not
        allowed with ``client``.
    images_per_task : int or "auto"
        ``"auto"``: ⌈b / workers⌉ images per task.
    task_retries, on_task_failure, max_drop_fraction
        As :class:`~varlearn.executors.Executor`.
    cluster_options : dict, optional
        More keyword arguments of ``LocalCluster``.

    Raises
    ------
    ImportError
        When dask.distributed is not installed (naming the extra ``varlearn[distributed]``).
    """

    threads = 1

    def __init__(self, client=None, n_workers=None, images_per_task="auto", task_retries=2, on_task_failure="raise",
                 max_drop_fraction=0.1, cluster_options=None):
        _distributed()
        super().__init__(images_per_task, task_retries, on_task_failure, max_drop_fraction)
        if client is not None and n_workers is not None:
            raise ValueError("n_workers applies to the local cluster only; it cannot be given with client")
        if n_workers is not None and (isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1):
            raise ValueError(f"n_workers must be a positive int, got {n_workers!r}")
        if client is not None and not isinstance(client, str) and not hasattr(client, "submit"):
            raise TypeError(f"client must be a distributed.Client or a scheduler address, got {client!r}")
        self._client_arg = client
        self._n_workers = n_workers
        self._cluster_options = dict(cluster_options or {})
        self._client = None
        self._cluster = None
        self._own_client = False
        self._where = {}  # (run, image index) -> address of the worker whose cache holds its warm start

    @property
    def client(self):
        """The ``distributed.Client`` in use (connected or started on first use)."""
        if self._client is None:
            distributed = _distributed()
            arg = self._client_arg
            if arg is None:
                n = self._n_workers or min(4, os.cpu_count() or 1)
                opts = {"threads_per_worker": 1, "processes": True, "memory_limit": "auto",
                        "dashboard_address": ":0"}
                opts.update(self._cluster_options)
                self._cluster = distributed.LocalCluster(n_workers=n, **opts)
                self._client = distributed.Client(self._cluster)
                self._own_client = True
                logger.info("DaskExecutor: started a LocalCluster of %d worker(s)", n)
            elif isinstance(arg, str):
                self._client = distributed.Client(arg)
                self._own_client = True
            else:
                self._client = arg
            # one kernel thread on every worker there is now (tasks set it again on workers that join later)
            self._client.run(set_threads_once, self.threads)
        return self._client

    def close(self):
        """Close the client and the local cluster if this executor opened them (a user's client is left open)."""
        if self._own_client and self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        self._client = self._cluster = None
        self._own_client = False

    def n_workers(self):
        """Workers the scheduler knows now (at least 1)."""
        return max(1, len(self.client.scheduler_info().get("workers", {})))

    def _auto_images(self, b):
        return math.ceil(b / self.n_workers())

    def _prepare_data(self, spec, indices):
        coll = spec.collection
        if coll.kind != "dask":
            return spec.for_task(indices), None
        rows = coll.task_rows(indices)
        parts = [coll._source[rows]] + ([coll._noisy[rows]] if coll.has_noisy else [])
        futures = self.client.compute(parts)  # the rows move worker to worker; lost ones are recomputed
        data = (futures[0], futures[1] if coll.has_noisy else None)
        return dataclasses.replace(spec, collection=coll.without_data()), data

    def _placement(self, task):
        """``submit`` restrictions: the worker that last held most of the chunk's warm starts (loosely)."""
        if not isinstance(task.warm, WorkerWarm):
            return {}
        held = [self._where.get((task.warm.run, i)) for i in task.indices]
        held = [a for a in held if a is not None]
        if not held:
            return {}
        best = max(set(held), key=lambda a: (held.count(a), a))
        return {"workers": [best], "allow_other_workers": True}

    def _run(self, spec, theta, n_batch, tasks, report):
        distributed = _distributed()
        client = self.client
        futures = {}
        for t in tasks:
            tspec, data = t.data
            call, phase, _, chunk = t.opts.tag
            key = f"varlearn-{call}-{phase}-{chunk}-{t.attempt}"
            fut = client.submit(run_chunk, tspec, t.chunk, t.indices, theta, t.eps_c, t.delta_c, n_batch, t.opts,
                                warm=t.warm, data=data, key=key, pure=False, **self._placement(t))
            futures[fut] = t
        for fut in distributed.as_completed(list(futures)):
            t = futures[fut]
            if fut.status == "finished":
                res = fut.result()
                if isinstance(t.warm, WorkerWarm) and res.address is not None:
                    self._where.update({(t.warm.run, i): res.address for i in t.indices})
                report(t, res, None)
            else:
                exc = fut.exception()
                if exc is None:
                    exc = RuntimeError(f"task {fut.key} ended with status {fut.status!r}")
                tb = fut.traceback()
                text = "".join(traceback.format_exception(type(exc), exc, tb)) if tb is not None else repr(exc)
                report(t, exc, text)
            fut.release()
