r"""Worker-side warm starts: a bounded LRU of :math:`(\tilde x_i, \bar q_i)` in each process that runs tasks.

With ``warm=WorkerWarm(run, max_bytes)`` a task reads the warm starts of its
images from the cache of the process it runs in (:data:`_CACHE`, one per
Dask worker process) and writes its results back, so no iterate travels
through the driver (stochastic-spec §4.6, ``warm_start="worker"``).  The
entries are keyed by ``(run, i)``: ``run`` names the run (a data fingerprint
and a run id), ``i`` the global image index.  They hold float32
:math:`\tilde x_i` and :math:`\bar q_i = q_i / w` (the adjoint without the
batch weight :math:`w = 1/b`, so a start serves batches of any size).

A miss (an image last solved elsewhere, evicted, a cache cleared, a worker
lost and restarted) means a cold start from :math:`y_i` and
:math:`q_i = 0`.  Certificates are computed from the returned iterates, so
every result stays certified; only the iteration counts -- and, since the
start points depend on where the tasks ran, the bits of the result -- change.
Runs with worker-side warm starts are therefore certified but not
bit-reproducible.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict

import numpy as np

__all__ = ["WorkerWarm", "WorkerCache", "clear_worker_cache", "worker_cache_info"]


@dataclasses.dataclass(frozen=True)
class WorkerWarm:
    """Request for worker-side warm starts, passed as ``warm`` to an executor call.

    Attributes
    ----------
    run : str
        Key of the run (entries of other runs are never read).
    max_bytes : int
        Bytes the cache of one process may hold (all runs together); the
        least recently used entries beyond it are evicted.
    """

    run: str
    max_bytes: int


class WorkerCache:
    """LRU ``(run, i) -> (x_i, q̄_i)`` (float32 host arrays) bounded by bytes."""

    def __init__(self):
        self.data = OrderedDict()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, run, indices, w):
        """``{i: (x_i, w q̄_i)}`` for the images of ``indices`` held for ``run`` (None if none is)."""
        out = {}
        for i in indices:
            entry = self.data.get((run, int(i)))
            if entry is None:
                self.misses += 1
                continue
            self.hits += 1
            self.data.move_to_end((run, int(i)))
            x_i, q_i = entry
            out[int(i)] = (x_i, None if q_i is None else w * q_i.astype(np.float64))
        return out or None

    def put(self, run, indices, x, q, w, max_bytes):
        """Store ``x[j]`` and ``q[j] / w`` (``q`` may be None) of every image ``indices[j]``; evict to ``max_bytes``."""
        for j, i in enumerate(indices):
            key = (run, int(i))
            old = self.data.pop(key, None)
            if old is not None:
                self.nbytes -= _size(old)
            entry = (np.asarray(x[j], dtype=np.float32).copy(),
                     None if q is None else (np.asarray(q[j], dtype=np.float64) / w).astype(np.float32))
            self.data[key] = entry
            self.nbytes += _size(entry)
        while self.data and self.nbytes > max_bytes:
            _, old = self.data.popitem(last=False)
            self.nbytes -= _size(old)

    def clear(self, run=None):
        """Drop the entries of ``run`` (all entries when None); returns how many were dropped."""
        keys = [k for k in self.data if run is None or k[0] == run]
        for k in keys:
            self.nbytes -= _size(self.data.pop(k))
        return len(keys)


def _size(entry):
    return sum(a.nbytes for a in entry if a is not None)


#: The cache of this process (each Dask worker process has its own).
_CACHE = WorkerCache()


def clear_worker_cache(run=None):
    """Empty this process's warm-start cache (of ``run`` only when given); run it on workers with ``client.run``."""
    return _CACHE.clear(run)


def worker_cache_info():
    """``{"entries", "nbytes", "hits", "misses"}`` of this process's warm-start cache."""
    return {"entries": len(_CACHE.data), "nbytes": int(_CACHE.nbytes), "hits": _CACHE.hits, "misses": _CACHE.misses}
