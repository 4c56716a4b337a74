"""Atomic, pickle-free checkpoints of bilevel runs (``.npz`` arrays + JSON metadata).

What a checkpoint holds
-----------------------
One ``.npz`` (zip) file, written atomically (:func:`varlearn._io.atomic_write_bytes`):

* ``__meta__``: a JSON text (:func:`varlearn._io.dumps_json`) with the run
  state of :func:`~varlearn.minimize_bilevel`: ``kind``, ``method``,
  ``options``, the counters ``k`` (outer iterations done), ``n_lower``,
  ``n_cg``, ``elapsed`` (seconds), the accuracies ``eps``, ``delta``, the
  step, the whole ``history`` (one row per outer iteration, ``k + 1`` rows),
  the bound estimator's state (random generator, Lipschitz estimates), the
  HOAG state, ``n_params``, ``x_shape``, ``dtype``, ``format_version`` and the
  SHA-256 of every array (``sha256``);
* ``__meta_sha256__``: the SHA-256 of the ``__meta__`` text itself, so that
  the metadata (and through it the array checksums) is covered too;
* the arrays: ``theta`` (``n_params`` floats), the warm starts ``x_warm``
  (lower-level solution) and ``q_warm`` (CG solution of the adjoint system),
  ``x_current`` (the latest lower-level iterate), each of shape ``x_shape`` in
  the problem's dtype, and ``estimator_d`` (``n_params`` floats, the last
  power-iteration direction) when present.

ISGD runs
---------
``method == "isgd"`` checkpoints (written by :mod:`varlearn.bilevel._isgd_state`,
which documents every field) hold the step counter ``k``, ``epoch``, ``pos``,
the sampler's exact ``PCG64`` state (JSON integers), Adam's ``adam_t`` with
the arrays ``adam_m``, ``adam_v``, the schedules, the cost counters, the
history and evaluation rows, the data ``fingerprint`` (:func:`data_fingerprint`;
resuming on other data raises :class:`CheckpointError`), the current
permutation ``sampler_perm`` and the float32 warm starts ``warm_idx``,
``warm_x``, ``warm_q`` (when they take at most 256 MiB).  Their fields are
validated by :func:`validate_bilevel_meta` as well.

How big it is
-------------
The warm-start arrays dominate: about three copies of the image stack, i.e.
``3 * n_images * height * width * itemsize`` bytes (stored uncompressed), plus
the history (a few hundred bytes per outer iteration).  A 2 x 2048² float64
run writes about 3 x 67 MB = 201 MB; 4 x 128² float64 about 1.6 MB.
:func:`~varlearn.minimize_bilevel` rewrites the file every
``checkpoint_every`` outer iterations (default 1) and at the end.

Loading never unpickles anything; :func:`load_checkpoint` checks the zip
structure, the metadata checksum, the array checksums, the format version and,
for bilevel-run checkpoints, the type and range of every metadata field, and
raises :class:`CheckpointError` naming the file (and the field) otherwise.
"""
from __future__ import annotations

import hashlib
import logging
import math
import zipfile
from pathlib import Path

import numpy as np

from .._io import atomic_write_bytes, atomic_write_text, dumps_json, loads_json, savez_atomic

logger = logging.getLogger("varlearn")

__all__ = ["save_checkpoint", "load_checkpoint", "validate_bilevel_meta", "CheckpointError", "data_fingerprint",
           "atomic_write_bytes", "atomic_write_text", "FORMAT_VERSION"]

#: version 2: the metadata is covered by ``__meta_sha256__`` (version 1 checked only the arrays; it still loads)
FORMAT_VERSION = 2


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted or does not match the run."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _digest(arrays: dict) -> dict:
    out = {}
    for k, a in arrays.items():
        a = np.ascontiguousarray(a)
        h = hashlib.sha256()
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
        out[k] = h.hexdigest()
    return out


# ---------------------------------------------------------------------- metadata validation
def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _nonneg_int(v):
    return _is_int(v) and v >= 0


def _pos_int(v):
    return _is_int(v) and v >= 1


def _nonneg_finite(v):
    return _is_real(v) and math.isfinite(v) and v >= 0


def _positive(v):  # a positive float; +inf is allowed (HOAG's step constant, options)
    return _is_real(v) and v > 0


def _positive_or_none(v):
    return v is None or _positive(v)


def _real_or_none(v):
    return v is None or _is_real(v)


def _shape(v):
    return isinstance(v, list) and len(v) >= 1 and all(_pos_int(n) for n in v)


_META_RULES = {
    "method": (lambda v: v in ("maid", "fixed", "hoag"), "one of 'maid', 'fixed', 'hoag'"),
    "options": (lambda v: isinstance(v, dict), "a JSON object"),
    "k": (_nonneg_int, "an integer >= 0"),
    "n_lower": (_nonneg_int, "an integer >= 0"),
    "n_cg": (_nonneg_int, "an integer >= 0"),
    "elapsed": (_nonneg_finite, "a finite number >= 0"),
    "eps": (_positive_or_none, "a positive number or null"),
    "delta": (_positive_or_none, "a positive number or null"),
    "step": (_positive_or_none, "a positive number or null"),
    "history": (lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v), "a list of JSON objects"),
    "estimator": (lambda v: isinstance(v, dict), "a JSON object"),
    "L_hoag": (_positive_or_none, "a positive number or null"),
    "eps_scale": (_positive, "a positive number"),
    "L_last": (_positive_or_none, "a positive number or null"),
    "eps_prev": (_positive_or_none, "a positive number or null"),
    "last": (lambda v: v is None or (isinstance(v, list) and len(v) == 3 and all(map(_real_or_none, v))),
             "null or a list of 3 numbers"),
    "n_params": (_pos_int, "an integer >= 1"),
    "x_shape": (_shape, "a list of positive integers"),
    "dtype": (lambda v: v in ("float32", "float64"), "'float32' or 'float64'"),
}

_ROW_COUNTERS = ("iter", "n_lower_iter", "n_cg_iter", "cost")

_SHA256_HEX = (lambda v: isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v),
               "a SHA-256 hex digest")
_COUNTER_NAMES = ("image_lower_iter", "image_cg_iter", "n_lower_iter", "n_cg_iter", "eval_cost")

#: metadata of an ISGD run (method "isgd"; written by varlearn.bilevel._isgd_state)
_ISGD_RULES = {
    "options": (lambda v: isinstance(v, dict), "a JSON object"),
    "k": (_nonneg_int, "an integer >= 0"),
    "epoch": (_nonneg_int, "an integer >= 0"),
    "pos": (_nonneg_int, "an integer >= 0"),
    "sampler": (lambda v: isinstance(v, dict) and isinstance(v.get("bit_generator"), dict), "a JSON object "
                "with the sampler's bit_generator state"),
    "adam_t": (_nonneg_int, "an integer >= 0"),
    "schedules": (lambda v: isinstance(v, dict) and set(v) == {"step", "eps"}, "a JSON object with 'step' and 'eps'"),
    "counters": (lambda v: isinstance(v, dict) and set(v) == set(_COUNTER_NAMES)
                 and all(_nonneg_int(c) for c in v.values()), f"a JSON object of integers >= 0 {_COUNTER_NAMES}"),
    "history": (lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v), "a list of JSON objects"),
    "evaluations": (lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v), "a list of JSON objects"),
    "fingerprint": _SHA256_HEX,
    "L_last": (_positive_or_none, "a positive number or null"),
    "estimator": (lambda v: isinstance(v, dict), "a JSON object"),
    "executor_constants": (lambda v: v is None or isinstance(v, dict), "null or a JSON object"),
    "noise": (lambda v: v is None or (isinstance(v, dict) and set(v) == {"mode", "seed", "sigma"}),
              "null or a JSON object with mode, seed and sigma"),
    "elapsed": (_nonneg_finite, "a finite number >= 0"),
    "warm_saved": (lambda v: isinstance(v, bool), "true or false"),
    "n_params": (_pos_int, "an integer >= 1"),
    "x_shape": (_shape, "a list of positive integers"),
    "dtype": (lambda v: v in ("float32", "float64"), "'float32' or 'float64'"),
}


def _validate_isgd_meta(meta, where, arrays):
    for name, (ok, what) in _ISGD_RULES.items():
        if name not in meta:
            raise CheckpointError(f"{where}: metadata field {name!r} is missing")
        if not ok(meta[name]):
            raise CheckpointError(f"{where}: metadata field {name!r} must be {what}, got {meta[name]!r:.80}")
    k, hist = meta["k"], meta["history"]
    if len(hist) not in (k, k + 1):  # k steps done; one more row when the last step stopped on 'nan'
        raise CheckpointError(f"{where}: metadata field 'history' has {len(hist)} rows, expected k = {k}")
    for i, row in enumerate(hist):
        if row.get("iter") != i:
            raise CheckpointError(f"{where}: metadata field 'history[{i}].iter' is {row.get('iter')!r}, expected {i}")
    if arrays is None:
        return
    n_img = meta["x_shape"][0]
    shapes = {"theta": (meta["n_params"],), "estimator_d": (meta["n_params"],), "adam_m": (meta["n_params"],),
              "adam_v": (meta["n_params"],)}
    if "theta" not in arrays:
        raise CheckpointError(f"{where}: array 'theta' is missing")
    if ("adam_m" in arrays) != ("adam_v" in arrays) or (meta["adam_t"] > 0) != ("adam_m" in arrays):
        raise CheckpointError(f"{where}: arrays 'adam_m' and 'adam_v' must be present exactly when adam_t > 0")
    perm = arrays.get("sampler_perm")
    if perm is not None and perm.size and perm.shape != (n_img,):
        raise CheckpointError(f"{where}: array 'sampler_perm' has shape {tuple(perm.shape)}, expected ({n_img},)")
    if "warm_idx" in arrays:
        m = arrays["warm_idx"].shape[0]
        shapes.update({"warm_idx": (m,), "warm_x": (m, *meta["x_shape"][1:]), "warm_q": (m, *meta["x_shape"][1:])})
        idx = arrays["warm_idx"]
        if idx.dtype.kind not in "iu" or (m and (idx.min() < 0 or idx.max() >= n_img)):
            raise CheckpointError(f"{where}: array 'warm_idx' must hold image indices in [0, {n_img})")
    for name, shape in shapes.items():
        if name in arrays and tuple(arrays[name].shape) != shape:
            raise CheckpointError(f"{where}: array {name!r} has shape {tuple(arrays[name].shape)}, "
                                  f"expected {shape}")


def validate_bilevel_meta(meta: dict, path="<checkpoint>", arrays=None):
    """Check the metadata of a bilevel-run checkpoint; raise :class:`CheckpointError` naming the field.

    ISGD runs (``method == "isgd"``) are checked against their own fields
    (:data:`_ISGD_RULES`: counters, sampler state, history of ``k`` rows with
    ``iter`` the row number, data fingerprint, and the shapes of ``theta``,
    ``adam_m``, ``adam_v``, ``sampler_perm`` and the warm starts); the others
    as follows.

    Checks every field of :data:`_META_RULES` (present, of the right type and
    range: counters are integers >= 0, accuracies positive, ...), that the
    history has ``k + 1`` rows (or none, for a run stopped by a limit inside
    its first outer iteration, ``k = 0``) whose counters are integers >= 0 with
    ``iter`` equal to the row number, and, when ``arrays`` is given, that
    ``theta`` has shape ``(n_params,)`` and the warm starts shape ``x_shape``.
    """
    where = f"checkpoint {str(path)!r}"
    if meta.get("method") == "isgd":
        return _validate_isgd_meta(meta, where, arrays)
    for name, (ok, what) in _META_RULES.items():
        if name not in meta:
            raise CheckpointError(f"{where}: metadata field {name!r} is missing")
        if not ok(meta[name]):
            raise CheckpointError(f"{where}: metadata field {name!r} must be {what}, got {meta[name]!r:.80}")
    hist = meta["history"]
    if len(hist) != meta["k"] + 1 and not (meta["k"] == 0 and len(hist) == 0):
        raise CheckpointError(f"{where}: metadata field 'history' has {len(hist)} rows, "
                              f"expected k + 1 = {meta['k'] + 1}")
    for i, row in enumerate(hist):
        for name in _ROW_COUNTERS:
            if name in row and not _nonneg_int(row[name]):
                raise CheckpointError(f"{where}: metadata field 'history[{i}].{name}' must be an integer >= 0, "
                                      f"got {row[name]!r:.80}")
        if row.get("iter", i) != i:
            raise CheckpointError(f"{where}: metadata field 'history[{i}].iter' is {row['iter']!r}, expected {i}")
    if arrays is None:
        return
    shapes = {"theta": (meta["n_params"],), "estimator_d": (meta["n_params"],)}
    shapes.update({k: tuple(meta["x_shape"]) for k in ("x_warm", "q_warm", "x_current")})
    if "theta" not in arrays:
        raise CheckpointError(f"{where}: array 'theta' is missing")
    for name, shape in shapes.items():
        if name in arrays and tuple(arrays[name].shape) != shape:
            raise CheckpointError(f"{where}: array {name!r} has shape {tuple(arrays[name].shape)}, "
                                  f"expected {shape}")


# ---------------------------------------------------------------------- data fingerprint
def data_fingerprint(problem, upper=None):
    """SHA-256 hex digest identifying the data of a run (resuming on other data is refused).

    For each of ``problem`` and ``upper``: its own ``fingerprint()`` when it
    has one (e.g. an image collection: names and sizes); otherwise its type
    name, ``x_shape`` and the bytes, dtype and shape of its ``noisy`` or
    ``clean`` image stack.  Device arrays are copied to the host for hashing
    (one explicit transfer of the data, once per run).
    """
    from ..backend import to_numpy

    h = hashlib.sha256()
    for obj in (problem, upper):
        if obj is None:
            continue
        own = getattr(obj, "fingerprint", None)
        if callable(own):
            h.update(f"{type(obj).__name__}:{own()}".encode())
            continue
        h.update(f"{type(obj).__name__}:{getattr(obj, 'x_shape', None)}".encode())
        for name in ("noisy", "clean"):
            a = getattr(obj, name, None)
            if a is not None:
                a = np.ascontiguousarray(to_numpy(a))
                h.update(f"{name}:{a.dtype}:{a.shape}".encode())
                h.update(a.tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------- save / load
def save_checkpoint(path, meta: dict, arrays: dict):
    """Save host arrays and JSON-serialisable ``meta`` atomically to ``path`` (``.npz``).

    ``meta`` gets ``format_version`` and the array checksums (``sha256``); the
    JSON text of ``meta`` is checksummed in ``__meta_sha256__``.  Bilevel-run
    metadata (``kind == "varlearn-bilevel"``) is validated first
    (:func:`validate_bilevel_meta`), so an invalid checkpoint is never written.
    """
    arrays = {k: np.asarray(v) for k, v in arrays.items() if v is not None}
    meta = dict(meta)
    if meta.get("kind") == "varlearn-bilevel":
        validate_bilevel_meta(loads_json(dumps_json(meta)), path, arrays)
    meta["format_version"] = FORMAT_VERSION
    meta["sha256"] = _digest(arrays)
    text = dumps_json(meta, indent=None)
    savez_atomic(path, {"__meta__": np.array(text), "__meta_sha256__": np.array(_sha256(text.encode("utf-8"))),
                        **arrays})


def load_checkpoint(path):
    """Load a checkpoint; returns ``(meta, arrays)``.

    Raises :class:`CheckpointError` naming the file when it is missing,
    truncated, corrupted (zip CRC, metadata or array SHA-256 mismatch), of
    another format, or (bilevel runs) holds an invalid metadata field (the
    message names it).  Never unpickles anything.
    """
    path = Path(path)
    where = f"checkpoint {str(path)!r}"
    if not path.is_file():
        raise CheckpointError(f"{where} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            if "__meta__" not in names:
                raise CheckpointError(f"{where} has no metadata: not a varlearn checkpoint")
            text = str(npz["__meta__"][()])
            stored = str(npz["__meta_sha256__"][()]) if "__meta_sha256__" in names else None
            arrays = {k: npz[k] for k in names if k not in ("__meta__", "__meta_sha256__")}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as exc:
        raise CheckpointError(f"{where} is truncated or corrupted ({type(exc).__name__}: {exc})") from exc
    try:
        meta = loads_json(text)
    except ValueError as exc:
        raise CheckpointError(f"{where} is corrupted: its metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where} is corrupted: its metadata is not a JSON object")
    version = meta.get("format_version")
    if version not in (1, FORMAT_VERSION):
        raise CheckpointError(f"{where} has format version {version!r}, expected {FORMAT_VERSION} (or 1)")
    if version == 1:  # written before the metadata checksum: only the arrays are covered
        if stored is not None:
            raise CheckpointError(f"{where} is corrupted: a version-1 checkpoint has no metadata checksum")
        logger.info("%s is format version 1: its metadata is not checksummed (only the arrays are)", where)
    elif stored != _sha256(text.encode("utf-8")):
        raise CheckpointError(f"{where} is corrupted: the metadata checksum does not match")
    expected = meta.get("sha256", {})
    got = _digest(arrays)
    if not isinstance(expected, dict) or set(expected) != set(got) or any(expected[k] != got[k] for k in got):
        raise CheckpointError(f"{where} is corrupted: array checksums do not match")
    if meta.get("kind") == "varlearn-bilevel":
        validate_bilevel_meta(meta, path, arrays)
    return meta, arrays
