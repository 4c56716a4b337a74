"""Checkpoint payload of a :class:`~varlearn.bilevel.state.BilevelState`: what is saved, and how it is read back.

The file format (``.npz`` arrays + JSON metadata, atomic, checksummed) is
:mod:`varlearn.bilevel.checkpoint`; this module maps a state to its metadata
fields and arrays and back.  Floats go through the one JSON policy of
:mod:`varlearn._io` (non-finite values as strings, read back exactly), so a
resumed run continues bit for bit.
"""
from __future__ import annotations

import math
import time

from ..backend import to_device, to_numpy
from .history import FLOAT_FIELDS, upgrade_row
from .options import RUNTIME_OPTIONS

__all__ = ["state_payload", "restore_state"]

def _json_float(v):
    # checkpoint metadata goes through varlearn._io.dumps_json (the one JSON policy: non-finite
    # floats as "nan"/"inf"/"-inf", read back exactly); this only makes NumPy scalars Python floats
    return None if v is None else float(v)


def _from_json_float(v):
    if v is None:
        return math.nan
    if v == "inf":
        return math.inf
    if v == "-inf":
        return -math.inf
    return float(v)


def _float_or_none(v):
    return None if v is None else _from_json_float(v)


def state_payload(method, state):
    """``(meta, arrays)`` of a bilevel ``state`` of ``method`` (the format of :mod:`varlearn.bilevel.checkpoint`)."""
    meta = {
        "kind": "varlearn-bilevel", "method": method,
        "options": {k: _json_float(v) if isinstance(v, float) else v for k, v in state.options.items()
                    if k not in RUNTIME_OPTIONS},
        "k": state.k, "eps": _json_float(state.eps), "delta": _json_float(state.delta),
        "step": _json_float(state.step), "n_lower": state.n_lower_iter, "n_cg": state.n_cg_iter,
        "image_lower": _json_float(state.image_lower_iter), "image_cg": _json_float(state.image_cg_iter),
        "elapsed": state.elapsed,
        "history": [{k: (_json_float(v) if isinstance(v, float) else v) for k, v in row.items()}
                    for row in state.history],
        "estimator": state.estimator.state_dict(),
        "L_hoag": _json_float(state.L_hoag), "eps_scale": state.eps_scale,
        "L_last": _json_float(state.L_last), "eps_prev": _json_float(state.eps_prev),
        "last": None if state.last is None else [_json_float(v) for v in state.last],
        "n_params": int(state.theta.shape[0]), "x_shape": list(state.problem.x_shape),
        "dtype": str(state.problem.dtype),
    }
    arrays = {"theta": to_numpy(state.theta)}
    for name in ("x_warm", "q_warm", "x_current"):
        if getattr(state, name) is not None:
            arrays[name] = to_numpy(getattr(state, name))
    if state.estimator._d is not None:
        arrays["estimator_d"] = to_numpy(state.estimator._d)
    return meta, arrays


def restore_state(state, meta, arrays):
    """Load validated checkpoint ``meta`` and ``arrays`` into a bilevel ``state``."""
    xp = state.xp
    dt = state.problem.dtype
    state.theta = to_device(arrays["theta"], xp)
    for name in ("x_warm", "q_warm", "x_current"):
        setattr(state, name, to_device(arrays[name], xp).astype(dt) if name in arrays else None)
    state.estimator._d = to_device(arrays["estimator_d"], xp) if "estimator_d" in arrays else None
    state.k = int(meta["k"])
    state.eps = _from_json_float(meta["eps"])
    state.delta = _from_json_float(meta["delta"])
    state.step = _float_or_none(meta["step"])
    state.n_lower_iter, state.n_cg_iter = int(meta["n_lower"]), int(meta["n_cg"])
    scale = math.nan if state.n_images is None else state.n_images  # older checkpoints: in-process counts
    image = [meta.get(k) for k in ("image_lower", "image_cg")]
    state.image_lower_iter, state.image_cg_iter = (
        (_from_json_float(image[0]), _from_json_float(image[1])) if None not in image
        else (state.n_lower_iter * scale, state.n_cg_iter * scale))
    if state.n_images is not None:  # whole image-iterations are counted as ints
        state.image_lower_iter, state.image_cg_iter = int(state.image_lower_iter), int(state.image_cg_iter)
    state.elapsed = float(meta["elapsed"])
    state.t_start = time.perf_counter()
    state.history = [{k: (_from_json_float(v) if k in FLOAT_FIELDS else v) for k, v in upgrade_row(row).items()}
                     for row in meta["history"]]
    state.estimator.load_state_dict(meta["estimator"])
    state.L_hoag = _float_or_none(meta["L_hoag"])
    state.eps_scale = float(meta["eps_scale"])
    state.L_last = _float_or_none(meta.get("L_last"))
    state.eps_prev = _float_or_none(meta["eps_prev"])
    state.last = None if meta["last"] is None else tuple(_from_json_float(v) for v in meta["last"])
