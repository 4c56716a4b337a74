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
  ``estimator``, ``executor_constants`` (the executor's running estimates),
  ``noise`` (mode, seed and σ of synthetic noise, or null; must match on resume),
  ``elapsed``, ``warm_saved``, ``n_params``,
  ``x_shape``, ``dtype``;
* arrays: ``theta``, ``adam_m``, ``adam_v`` (Adam only, after its first
  step), ``sampler_perm`` (int64; empty when none), ``estimator_d`` (when
  set) and, when the warm starts take at most 256 MiB, ``warm_idx`` (int64, in
  LRU order, oldest first), ``warm_x`` and ``warm_q`` (float32,
  ``(n_warm, H, W)``).  Without them a resumed run is still exact in its
  batches, accuracies and certificates, but not bit for bit (the solves start
  elsewhere).  In ``"worker"`` mode the starts live in the workers' caches
  and are never saved: a resumed run starts them cold under a new run key.
"""
from __future__ import annotations

import logging
import math
import time
import uuid
import warnings
from collections import OrderedDict

import numpy as np

from ..backend import to_device, to_numpy
from ..linalg import norm as _lnorm
from ..problems.separable import require_separable
from ..results import ConvergenceWarning, Result
from ..solvers import solve_lower
from .checkpoint import CheckpointError, data_fingerprint, load_checkpoint, save_checkpoint
from .isgd_options import ISGD_DEFAULTS

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
        """Store ``x[j]`` and ``q̄ = q[j] / w`` of every image ``idx[j]`` (the last copy of a repeated
        index wins) as the most recent entries; the least recently used beyond ``capacity`` are dropped."""
        for j, i in enumerate(idx):
            i = int(i)
            x_j, q_j = x[j], q[j]
            self.data[i] = (x_j.astype(np.float32), (q_j / w).astype(np.float32))
            self.data.move_to_end(i)
        while len(self.data) > self.capacity:
            self.data.popitem(last=False)

    def nbytes(self):
        """Bytes held (float32 ``x`` and ``q̄`` of every stored image)."""
        return sum(a.nbytes + b.nbytes for a, b in self.data.values())

    def as_dict(self, idx, w):
        """``{i: (x_i, w q̄_i)}`` for the images of ``idx`` that have a warm start (executor form), or None."""
        out = {}
        for i in idx:
            i = int(i)
            if i in self.data:
                x_i, q_i = self.data[i]
                self.data.move_to_end(i)
                out[i] = (x_i, w * q_i.astype(np.float64))
        return out or None


def describe_data(problem, upper):
    """``(n_samples, x_shape, xp, dtype)`` of the data; refuses what ISGD cannot sample.

    ``problem`` is a :class:`~varlearn.problems.separable.Separable` problem
    with a separable ``upper`` of as many samples, or a
    :class:`~varlearn.executors.DenoisingDataset` with ``upper=None``.
    """
    if _is_dataset(problem):
        if upper is not None:
            raise ValueError(f"upper must be None for a DenoisingDataset (its loss is the mean squared error "
                             f"against the collection's clean images), got {type(upper).__name__}")
        n = int(problem.n_samples)
        return n, (n, *problem.image_shape), np, np.dtype(problem.dtype)
    require_separable(problem, "problem")
    require_separable(upper, "upper loss")
    n = int(problem.n_samples)
    if int(upper.n_samples) != n:
        raise ValueError(f"the problem has {n} samples but the upper loss has {upper.n_samples}")
    return n, tuple(problem.x_shape), problem.xp, problem.dtype


def _is_dataset(problem):
    from ..executors import DenoisingDataset  # noqa: PLC0415 - beside bilevel in layer 6, loaded on use

    return isinstance(problem, DenoisingDataset)


def make_executor(opts, problem, upper):
    """``(spec, executor, owned)`` for the run; ``(None, None, False)`` on the in-process path.

    ``"serial"`` and ``"dask"`` make varlearn's executors (``owned``: closed at
    the end of the run) over the task description ``spec``: the
    ``DenoisingDataset`` itself, or ``DenoisingDataset.from_problem`` for an
    in-memory ``DenoisingProblem`` with ``SquaredError`` on NumPy.  Other
    separable problems, and data on a GPU, take the in-process path with
    ``"serial"`` (and refuse ``"dask"`` or an executor object); so does
    ``"inprocess"``.  An executor object brings its own settings: the options
    ``images_per_task``, ``task_retries``, ``on_task_failure``,
    ``max_drop_fraction``, ``client`` and ``n_workers`` must then keep their
    defaults (``ValueError`` naming the option otherwise).
    """
    from ..executors import DaskExecutor, DenoisingDataset, SerialExecutor  # noqa: PLC0415
    from ..problems import DenoisingProblem, SquaredError  # noqa: PLC0415

    ex = opts["executor"]
    limits = {"lower_maxiter": opts["lower_maxiter"], "cg_maxiter": opts["cg_maxiter"],
              "backtracking": opts["backtracking_lower"]}
    if isinstance(problem, DenoisingDataset):
        if ex == "inprocess":
            return None, None, False
        spec = problem
    elif (ex != "inprocess" and isinstance(problem, DenoisingProblem) and isinstance(upper, SquaredError)
          and problem.xp is np and getattr(upper, "_weight", None) is None):
        spec = DenoisingDataset.from_problem(problem, upper, **limits)
    else:
        if ex not in ("serial", "inprocess"):
            raise ValueError(f"option 'executor' {ex!r} needs a DenoisingProblem with SquaredError on NumPy, or "
                             f"a DenoisingDataset; got {type(problem).__name__} on {problem.backend!r}; use "
                             f"executor='inprocess'")
        return None, None, False
    common = {"images_per_task": opts["images_per_task"], "task_retries": opts["task_retries"],
              "on_task_failure": opts["on_task_failure"], "max_drop_fraction": opts["max_drop_fraction"]}
    if ex == "serial":
        return spec, SerialExecutor(**common), True
    if ex == "dask":
        return spec, DaskExecutor(client=opts["client"], n_workers=opts["n_workers"], **common), True
    for name in ("images_per_task", "task_retries", "on_task_failure", "max_drop_fraction", "client", "n_workers"):
        if opts[name] != ISGD_DEFAULTS[name]:
            raise ValueError(f"option {name!r} configures the executors ISGD makes ('serial', 'dask'); the "
                             f"executor object given in option 'executor' has its own settings, got "
                             f"{name}={opts[name]!r}")
    return spec, ex, False


def warm_capacity(n, x_shape, opts, executor):
    """Images the driver's warm-start store may hold (0: no driver-side warm starts).

    ``"none"`` gives 0, as do ``"worker"`` and (with a non-serial executor,
    when N·H·W·4 bytes exceed ``warm_start_max_bytes``) ``"auto"``: see
    :func:`warm_mode`.  Otherwise float32 ``x`` and ``q̄`` of at most
    ``warm_start_max_bytes // (8 H W)`` images (all N when they fit).
    """
    if warm_mode(n, x_shape, opts, executor) != "driver":
        return 0
    pixels = int(np.prod(x_shape[1:]))
    return int(min(n, opts["warm_start_max_bytes"] // (8 * pixels)))


def warm_mode(n, x_shape, opts, executor):
    """Where the warm starts live: ``"driver"``, ``"worker"`` or ``"none"``.

    ``"auto"`` is ``"driver"`` with the serial (or no) executor or when
    N·H·W·4 bytes fit in ``warm_start_max_bytes``, else ``"worker"``.
    ``"worker"`` needs a :class:`~varlearn.executors.DaskExecutor`: each
    worker process keeps an LRU of at most ``warm_start_max_bytes`` and tasks
    are placed on the worker holding their images' starts (a miss or a lost
    worker is a cold start: certified, not bit-reproducible).  With any other
    executor ``"worker"`` solves start cold (``"none"``).
    """
    from ..executors import DaskExecutor, SerialExecutor  # noqa: PLC0415

    mode = opts["warm_start"]
    if mode == "auto":
        pixels = int(np.prod(x_shape[1:]))
        serial = executor is None or isinstance(executor, SerialExecutor)
        mode = "driver" if serial or n * pixels * 4 <= opts["warm_start_max_bytes"] else "worker"
    if mode == "worker" and not isinstance(executor, DaskExecutor):
        return "none"
    return mode


def batch_problems(state, idx, epoch):
    """The batch's lower-level problem and loss (weight 1/b) for the in-process path."""
    if state.upper is None:  # a DenoisingDataset read in this process
        return state.problem.problems(idx, len(idx), epoch=epoch)
    return state.problem.subset(idx), state.upper.subset(idx)


def executor_hypergradient(state, idx, epoch, eps, delta, bound, L0):
    """The batch hypergradient through ``state.executor`` (C6), in the form of the in-process path."""
    b = len(idx)
    w = 1.0 / b  # the executor's chunk losses carry the batch weight
    warm = state.warm.as_dict(idx, w) if state.warm is not None else _worker_warm(state)
    bh = state.executor.hypergradient(state.spec, [int(i) for i in idx], to_numpy(state.theta), eps, delta,
                                      warm=warm, bound=bound, key=f"isgd-{state.k}", epoch=epoch, lower_L0=L0,
                                      constants=state.constants)
    if bh.status != "nan":
        state.constants = {"est_state": bh.constants.get("est_state")}
        Ls = [c.L for c in bh.per_chunk if c.L is not None and math.isfinite(c.L)]
        state.L_last = max(Ls) if Ls else state.L_last
        if state.warm is not None and bh.warm_out:
            keys = [i for i in idx if int(i) in bh.warm_out]
            state.warm.put(keys, [bh.warm_out[int(i)][0] for i in keys], [bh.warm_out[int(i)][1] for i in keys], w)
    uncertified = sum(len(c.indices) for c in bh.per_chunk if c.status != "success")
    return Result(grad=to_device(np.asarray(bh.grad, dtype=np.float64), state.xp), omega=bh.omega, fun=bh.fun,
                  bound_exact=bh.bound_exact, n_lower_iter=bh.n_lower_iter, n_cg_iter=bh.n_cg_iter,
                  image_lower_iter=bh.image_lower_iter, image_cg_iter=bh.image_cg_iter, n_retries=bh.n_retries,
                  n_dropped=bh.n_dropped, n_uncertified=uncertified, status=bh.status, x=None)


def _worker_warm(state):
    """The run's :class:`~varlearn.executors.WorkerWarm` request in ``"worker"`` mode, else None (made once)."""
    if not hasattr(state, "worker_warm"):
        from ..executors import WorkerWarm  # noqa: PLC0415

        mode = warm_mode(state.n_samples, state.x_shape, state.options, state.executor)
        run = f"{state.fingerprint[:16]}-{uuid.uuid4().hex[:8]}"  # a fresh run (or a resume) never reads others
        state.worker_warm = WorkerWarm(run, int(state.options["warm_start_max_bytes"])) if mode == "worker" else None
    return state.worker_warm


def _executor(state):
    """The run's executor, or a SerialExecutor for a DenoisingDataset on the in-process path."""
    if state.executor is not None:
        return state.executor
    from ..executors import SerialExecutor  # noqa: PLC0415

    return SerialExecutor()


def evaluate_set(state, problem, upper, tol):
    """``(U, mean PSNR, image cost)`` of a cold solve of all images of ``problem`` to ``tol`` per image."""
    o = state.options
    if upper is None:  # a DenoisingDataset: through the executor, PSNR read back a batch at a time
        from ..problems import SquaredError  # noqa: PLC0415

        n = int(problem.n_samples)
        bv = _executor(state).trial(problem, list(range(n)), to_numpy(state.theta), math.sqrt(n) * tol,
                                    key=f"isgd-eval-{state.k}", epoch=state.epoch)  # epoch: noise="fresh"
        done = [i for i in range(n) if i in bv.warm_out]  # all but dropped chunks (on_task_failure="drop")
        psnr_sum, step = 0.0, o["batch_size"]
        for start in range(0, len(done), step):
            idx = done[start:start + step]
            clean = problem.read_pairs(idx, epoch=state.epoch)[0]
            x = np.stack([np.asarray(bv.warm_out[i][0]) for i in idx])
            psnr_sum += len(idx) * float(SquaredError(clean).psnr(x))
        return float(bv.fun), psnr_sum / max(1, len(done)), int(bv.image_lower_iter)
    n = int(problem.x_shape[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sol = solve_lower(problem, state.theta, math.sqrt(n) * tol, maxiter=o["lower_maxiter"],
                          backtracking=o["backtracking_lower"])
    psnr = float(upper.psnr(sol.x)) if hasattr(upper, "psnr") else math.nan
    return float(upper.value(sol.x)), psnr, (sol.nit + sol.n_hvp) * n


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
        "kind": "varlearn-bilevel", "method": "isgd", "options": _json_options(state.options),
        "k": state.k, "epoch": state.epoch, "pos": state.sampler.position, "sampler": state.sampler.state_dict(),
        "adam_t": state.adam_t,
        "schedules": {"step": state.step_schedule.state_dict(), "eps": state.eps_schedule.state_dict()},
        "counters": {"image_lower_iter": state.image_lower_iter, "image_cg_iter": state.image_cg_iter,
                     "n_lower_iter": state.n_lower_iter, "n_cg_iter": state.n_cg_iter,
                     "eval_cost": state.eval_cost},
        "history": state.history, "evaluations": state.evaluations, "fingerprint": state.fingerprint,
        "L_last": state.L_last, "estimator": state.estimator.state_dict(), "elapsed": state.elapsed,
        "executor_constants": state.constants, "noise": _noise(state),
        "n_params": int(state.theta.shape[0]), "x_shape": list(state.x_shape),
        "dtype": str(state.dtype),
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


def _noise(state):
    """The noise mode and seed of a ``DenoisingDataset`` (counter-based: no state), or None."""
    spec = state.spec if state.spec is not None else (state.problem if state.upper is None else None)
    if spec is None or getattr(spec, "collection", None) is None or spec.collection.has_noisy:
        return None
    return {"mode": spec.noise, "seed": int(spec.noise_seed), "sigma": float(spec.sigma)}


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
    if meta["n_params"] != state.theta.shape[0] or tuple(meta["x_shape"]) != tuple(state.x_shape):
        raise CheckpointError(f"{where} was written for n_params={meta['n_params']}, x_shape="
                              f"{tuple(meta['x_shape'])}; this problem has n_params={state.theta.shape[0]}, "
                              f"x_shape={tuple(state.x_shape)}")
    if meta.get("noise") != _noise(state):
        raise CheckpointError(f"{where} was written with noise {meta.get('noise')!r}, this run has {_noise(state)!r}")
    for name in ("project", "eval_set"):  # they change the run; an executor object does not
        if meta["options"].get(name) == _MARKER and state.options[name] in (None, "train"):
            raise CheckpointError(f"{where}: the run used an object for option {name!r}; pass it again to resume")
    try:
        state.sampler.load_state_dict(meta["sampler"], arrays.get("sampler_perm"))
    except ValueError as exc:
        raise CheckpointError(f"{where}: {exc}") from exc
    xp = state.xp
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
    state.constants = meta["executor_constants"]
    state.estimator.load_state_dict(meta["estimator"])
    state.estimator._d = to_device(arrays["estimator_d"], xp) if "estimator_d" in arrays else None
    state.elapsed = float(meta["elapsed"])
    state.t_start = time.perf_counter()
    if state.warm is not None and "warm_idx" in arrays:
        for j, i in enumerate(arrays["warm_idx"]):
            state.warm.data[int(i)] = (to_device(arrays["warm_x"][j], xp), to_device(arrays["warm_q"][j], xp))
    elif state.warm is not None and not meta["warm_saved"]:
        logger.info("%s holds no warm starts: the resumed solves start cold (certified, not bit-identical)", where)
    state.status = None
    return state


__all__ = ["WarmStore", "describe_data", "warm_capacity", "warm_mode", "make_executor", "batch_problems",
           "executor_hypergradient", "evaluate_set", "apply_projection", "save", "restore", "read_checkpoint",
           "saved_options", "data_fingerprint"]
