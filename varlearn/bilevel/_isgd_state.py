"""Helpers of :mod:`varlearn.bilevel.isgd`: warm-start store, executor seam, projection, checkpoints.

Checkpoint of an ISGD run (``kind = "varlearn-bilevel"``, ``method = "isgd"``;
format of :mod:`varlearn.bilevel.checkpoint`, validated there):

* metadata: ``options`` (JSON values; a callable ``project``, an executor
  object or a held-out ``eval_set`` are recorded by the marker ``"<object>"``
  and must be passed again on resume), ``k``, ``epoch``, ``pos``, ``sampler``
  (kind, n, batch size, seed, epoch, position and the exact ``PCG64`` state as
  JSON integers), ``adam_t``, ``schedules``, ``counters``, ``history``,
  ``evaluations``, ``fingerprint`` (of the data; a mismatch on resume raises
  :class:`~varlearn.bilevel.checkpoint.CheckpointError`), ``L_last``,
  ``estimator``, ``elapsed``, ``warm_saved``, ``status``, ``n_params``,
  ``x_shape``, ``dtype``;
* arrays: ``theta``, ``adam_m``, ``adam_v`` (Adam only, after its first
  step), ``sampler_perm`` (int64; empty when none), ``estimator_d`` (when
  set) and, when the warm starts take at most 256 MiB, ``warm_idx`` (int64, in
  LRU order, oldest first), ``warm_x`` and ``warm_q`` (float32,
  ``(n_warm, H, W)``).  Without them a resumed run is still exact in its
  batches, accuracies and certificates, but not bit for bit (the solves start
  elsewhere).
"""
from __future__ import annotations

import logging
import math
from collections import OrderedDict

import numpy as np

from ..backend import to_device, to_numpy
from ..linalg import norm as _lnorm
from .checkpoint import CheckpointError, data_fingerprint, load_checkpoint, save_checkpoint

logger = logging.getLogger("varlearn")

WARM_SAVE_MAX_BYTES = 256 * 2 ** 20
_MARKER = "<object>"
_OBJECT_OPTIONS = ("project", "executor", "client", "eval_set")


class WarmStore:
    """LRU store ``i -> (x_i, q̄_i)`` in float32 on the problem's device (``capacity`` images)."""

    def __init__(self, capacity):
        self.capacity = int(capacity)
        self.data = OrderedDict()

    def fill(self, idx, sub_problem, w):
        """Warm starts ``(x0, q0)`` for the batch ``idx`` (None where no image has one).

        Images without a stored start begin at ``sub_problem.initial_x()`` and
        ``q = 0``; a stored ``q̄_i`` is scaled by the batch weight ``w``.
        """
        hits = [j for j, i in enumerate(idx) if int(i) in self.data]
        if not hits:
            return None, None
        x0 = sub_problem.initial_x()
        q0 = sub_problem.xp.zeros(sub_problem.x_shape, dtype=sub_problem.dtype)
        for j in hits:
            i = int(idx[j])
            x_i, q_i = self.data[i]
            self.data.move_to_end(i)
            x0[j] = x_i
            q0[j] = w * q_i.astype(q0.dtype)
        return x0, q0

    def put(self, idx, x, q, w):
        for j, i in enumerate(idx):
            i = int(i)
            self.data[i] = (x[j].astype(np.float32), (q[j] / w).astype(np.float32))
            self.data.move_to_end(i)
        while len(self.data) > self.capacity:
            self.data.popitem(last=False)

    def nbytes(self):
        return sum(a.nbytes + b.nbytes for a, b in self.data.values())


def warm_capacity(problem, opts):
    """Images the warm-start store may hold (0: no warm starts).

    ``"none"`` gives 0; ``"driver"``, ``"auto"`` and (serial executor)
    ``"worker"`` keep float32 ``x`` and ``q̄`` of at most
    ``warm_start_max_bytes // (8 H W)`` images (all N when they fit).
    """
    if opts["warm_start"] == "none":
        return 0
    per_image = 8 * int(np.prod(problem.x_shape[1:]))
    return int(min(problem.n_samples, opts["warm_start_max_bytes"] // per_image))


def make_executor(opts):
    """The executor object of the run, or None for the in-process reference path (``"serial"``)."""
    ex = opts["executor"]
    if ex == "serial":
        return None
    if ex == "dask":
        raise ImportError("executor='dask' needs varlearn's Dask executor (pip install \"varlearn[dask]\"), "
                          "which is not available in this installation")
    return ex


def executor_hypergradient(state, idx, eps, delta, bound):  # pragma: no cover - wired when the executor lands
    raise NotImplementedError("external executors are not wired into ISGD yet")


def apply_projection(project, theta_new, theta_old):
    """``project(theta_new)``, checked: same shape, finite; ``ValueError`` naming the option otherwise."""
    xp_theta = project(theta_new)
    shape = getattr(xp_theta, "shape", None)
    if shape != theta_old.shape:
        raise ValueError(f"option 'project' must return an array of shape {tuple(theta_old.shape)}, got "
                         f"{type(xp_theta).__name__} of shape {shape}")
    if not math.isfinite(float(_lnorm(xp_theta))):
        raise ValueError("option 'project' returned a non-finite theta")
    return xp_theta.astype(np.float64, copy=False)


# ---------------------------------------------------------------------- checkpoints
def _json_options(opts):
    out = {}
    for k, v in opts.items():
        if k in _OBJECT_OPTIONS and not (v is None or isinstance(v, str)):
            v = _MARKER
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


def save(state, path):
    """Write the whole state of the run to ``path`` (atomic)."""
    meta = {
        "kind": "varlearn-bilevel", "method": "isgd", "options": _json_options(state.opts),
        "k": state.k, "epoch": state.epoch, "pos": state.sampler.position, "sampler": state.sampler.state_dict(),
        "adam_t": state.adam_t,
        "schedules": {"step": state.step_schedule.state_dict(), "eps": state.eps_schedule.state_dict()},
        "counters": {"image_lower_iter": state.image_lower_iter, "image_cg_iter": state.image_cg_iter,
                     "n_lower_iter": state.n_lower_iter, "n_cg_iter": state.n_cg_iter,
                     "eval_cost": state.eval_cost},
        "history": state.history, "evaluations": state.evaluations, "fingerprint": state.fingerprint,
        "L_last": state.L_last, "estimator": state.estimator.state_dict(), "elapsed": state.elapsed,
        "status": state.status, "n_params": int(state.theta.shape[0]), "x_shape": list(state.problem.x_shape),
        "dtype": str(state.problem.dtype),
    }
    arrays = {"theta": to_numpy(state.theta), "sampler_perm": state.sampler.perm_array()}
    if state.adam_m is not None:
        arrays["adam_m"], arrays["adam_v"] = to_numpy(state.adam_m), to_numpy(state.adam_v)
    if state.estimator._d is not None:
        arrays["estimator_d"] = to_numpy(state.estimator._d)
    warm = state.warm
    meta["warm_saved"] = warm is not None and warm.nbytes() <= WARM_SAVE_MAX_BYTES
    if meta["warm_saved"] and warm.data:
        keys = list(warm.data)
        arrays["warm_idx"] = np.asarray(keys, dtype=np.int64)
        arrays["warm_x"] = np.stack([to_numpy(warm.data[i][0]) for i in keys])
        arrays["warm_q"] = np.stack([to_numpy(warm.data[i][1]) for i in keys])
    elif warm is not None and not meta["warm_saved"]:
        logger.info("isgd checkpoint: warm starts (%d bytes) exceed %d bytes and are not saved; a resumed run "
                    "starts those solves cold", warm.nbytes(), WARM_SAVE_MAX_BYTES)
    save_checkpoint(path, meta, arrays)


def read_checkpoint(path):
    meta, arrays = load_checkpoint(path)
    if meta.get("kind") != "varlearn-bilevel" or meta.get("method") != "isgd":
        raise CheckpointError(f"checkpoint {str(path)!r} is not an ISGD run (method {meta.get('method')!r})")
    return meta, arrays


def saved_options(meta):
    """The checkpoint's options, less the object-valued ones (which must be passed again)."""
    return {k: v for k, v in meta["options"].items() if v != _MARKER}


def restore(state, meta, arrays, path):
    """Load a checkpoint into a fresh ``state`` of the same problem; raises :class:`CheckpointError`."""
    where = f"checkpoint {str(path)!r}"
    if meta["fingerprint"] != state.fingerprint:
        raise CheckpointError(f"{where} was written for other data (fingerprint {meta['fingerprint'][:12]}..., "
                              f"this problem's is {state.fingerprint[:12]}...)")
    if meta["n_params"] != state.theta.shape[0] or tuple(meta["x_shape"]) != tuple(state.problem.x_shape):
        raise CheckpointError(f"{where} was written for n_params={meta['n_params']}, x_shape="
                              f"{tuple(meta['x_shape'])}; this problem has n_params={state.theta.shape[0]}, "
                              f"x_shape={tuple(state.problem.x_shape)}")
    for name in _OBJECT_OPTIONS:
        if meta["options"].get(name) == _MARKER and state.opts[name] is None:
            raise CheckpointError(f"{where}: the run used an object for option {name!r}; pass it again to resume")
    try:
        state.sampler.load_state_dict(meta["sampler"], arrays.get("sampler_perm"))
    except ValueError as exc:
        raise CheckpointError(f"{where}: {exc}") from exc
    xp = state.problem.xp
    state.theta = to_device(arrays["theta"], xp).astype(np.float64)
    state.k = int(meta["k"])
    state.adam_t = int(meta["adam_t"])
    if "adam_m" in arrays:
        state.adam_m, state.adam_v = to_device(arrays["adam_m"], xp), to_device(arrays["adam_v"], xp)
    for key, v in meta["counters"].items():
        setattr(state, key, int(v))
    state.history = [dict(r) for r in meta["history"]]
    state.evaluations = [dict(r) for r in meta["evaluations"]]
    state.L_last = None if meta["L_last"] is None else float(meta["L_last"])
    state.estimator.load_state_dict(meta["estimator"])
    state.estimator._d = to_device(arrays["estimator_d"], xp) if "estimator_d" in arrays else None
    state.elapsed = float(meta["elapsed"])
    if state.warm is not None and "warm_idx" in arrays:
        for j, i in enumerate(arrays["warm_idx"]):
            state.warm.data[int(i)] = (to_device(arrays["warm_x"][j], xp), to_device(arrays["warm_q"][j], xp))
    elif state.warm is not None and not meta["warm_saved"]:
        logger.info("%s holds no warm starts: the resumed solves start cold (certified, not bit-identical)", where)
    state.status = None
    return state


__all__ = ["WarmStore", "warm_capacity", "make_executor", "apply_projection", "save", "restore",
           "read_checkpoint", "saved_options", "data_fingerprint"]
