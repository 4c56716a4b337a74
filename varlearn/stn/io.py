"""Trained Self-Tuning-Network denoisers on disk, and applying them to images.

A trained STN denoiser is two files in one folder (normally a run folder of
``varlearn stn``):

``model.npz``
    The network's arrays (``model.state()``), written with :func:`numpy.savez`
    (no pickle; read back with ``allow_pickle=False``).
``params.json``
    JSON metadata (the JSON policy of :mod:`varlearn._io`)::

        kind, format_version   "varlearn-stn-params", 1
        model                  "stn"
        model_config           STNModel.get_config() (rebuilds the untrained network)
        hyper                  HyperParameters.state() with u at the λ the denoiser applies
        lam                    that λ as constrained values {name: value} (for people and scripts)
        sigma                  the target noise level the network was tuned for ([0, 1] intensities)
        weights                {"file": "model.npz", "sha256": ..., "n_weights": ...}
        receptive_radius       pixels of context one output pixel depends on (tiling margin)
        ...                    anything else the writer adds (data, options, results, versions)

``hyper`` is authoritative: :func:`load_stn` rebuilds λ from it and refuses a
file whose ``lam`` disagrees (relative difference above 1e-9), or whose
weights file is missing or has another checksum.  Both files are written
atomically (temporary file + rename), the weights first, so a reader never
sees a ``params.json`` that points to a half-written ``model.npz``.

The denoiser is applied (:func:`denoise_stn`) in evaluation mode (no dropout,
no perturbation) with the hypernet input at the unperturbed λ, exactly as the
trainer evaluates it (:meth:`varlearn.stn.train.STNTrainer.evaluate`).

References
----------
M. MacKay, P. Vicol, J. Lorraine, D. Duvenaud, R. Grosse, "Self-Tuning Networks:
Bilevel Optimization of Hyperparameters using Structured Best-Response
Functions", ICLR 2019, arXiv:1903.03088.
"""
from __future__ import annotations

import hashlib
import io as _bytesio
import math
from pathlib import Path

import numpy as np

from .._io import atomic_write_bytes, atomic_write_text, dumps_json, to_json_value
from ..backend import get_namespace, to_device, to_numpy
from ..io import PARAMS_FILE, ParamsError, read_json
from ..results import Result
from .hyperparameters import HyperParameters
from .models import model_from_config

__all__ = ["STN_PARAMS_KIND", "WEIGHTS_FILE", "STNParamsError", "save_stn", "load_stn", "is_stn_params",
           "denoise_stn", "receptive_radius", "hnet_input_at"]

STN_PARAMS_KIND = "varlearn-stn-params"
STN_PARAMS_FORMAT = 1
WEIGHTS_FILE = "model.npz"
#: relative tolerance of the ``lam``-versus-``hyper`` check of :func:`load_stn`
LAM_RTOL = 1e-9
_RESERVED = ("kind", "format_version", "model", "model_config", "hyper", "lam", "sigma", "weights",
             "receptive_radius")


class STNParamsError(ParamsError):
    """An STN ``params.json`` / ``model.npz`` that cannot be used (a :class:`varlearn.io.ParamsError`)."""


def receptive_radius(config):
    """Pixels of context (each side) one output pixel of the model ``config`` depends on.

    ``"dncnn"``: ``depth * (kernel_size // 2)``; ``"vn"``: every stage applies
    a filter and its adjoint, ``n_stages * 2 * (size // 2)``.  ``ValueError``
    for models that do not act on images (``"linear"``).
    """
    kind = config.get("model")
    if kind == "dncnn":
        return int(config["depth"]) * (int(config["kernel_size"]) // 2)
    if kind == "vn":
        return int(config["n_stages"]) * 2 * (int(config["size"]) // 2)
    raise ValueError(f"model {kind!r} does not denoise images (dncnn and vn do)")


def _params_path(path):
    path = Path(path).expanduser()
    return path / PARAMS_FILE if path.is_dir() else path


def save_stn(folder, model, hyper, *, sigma, values=None, **extra):
    """Write ``model.npz`` and ``params.json`` of a trained STN denoiser into ``folder``.

    Parameters
    ----------
    folder : path-like
        Created if needed.
    model : STNModel
        Its current arrays are saved (copied to the host).
    hyper : HyperParameters
        The container the model was trained with; the denoiser applies its
        unperturbed ``u`` (not changed here).
    sigma : float
        Target noise level the model was tuned for (> 0).
    values : dict, optional
        Constrained values ``{name: value}`` to apply instead of ``hyper``'s
        current ones (a copy is changed).
    **extra
        Further JSON-safe entries (results, data, options, versions); not the
        names written here (``kind``, ``model``, ``hyper``, ``lam``, ...).

    Returns
    -------
    dict
        The ``params.json`` record written.
    """
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise ValueError(f"save_stn: {', '.join(clash)} are written by save_stn itself")
    if not isinstance(hyper, HyperParameters):
        raise ValueError(f"hyper must be a HyperParameters container, got {type(hyper).__name__}")
    s = float(sigma) if isinstance(sigma, (int, float, np.floating, np.integer)) else math.nan
    if isinstance(sigma, bool) or not (math.isfinite(s) and s > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    h = hyper.copy()
    if values is not None:
        h.set_values(values)
    config = model.get_config()
    radius = receptive_radius(config)
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {k: to_numpy(v) for k, v in model.state().items()}
    buf = _bytesio.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    atomic_write_bytes(folder / WEIGHTS_FILE, data)
    record = {"kind": STN_PARAMS_KIND, "format_version": STN_PARAMS_FORMAT, "model": "stn",
              "model_config": config, "hyper": h.state(), "lam": h.values(), "sigma": s,
              "weights": {"file": WEIGHTS_FILE, "sha256": hashlib.sha256(data).hexdigest(),
                          "n_weights": int(sum(a.size for a in arrays.values()))},
              "receptive_radius": radius}
    record.update(to_json_value(extra))
    atomic_write_text(folder / PARAMS_FILE, dumps_json(record, indent=2))
    return record


def is_stn_params(path):
    """Whether ``path`` (a ``params.json`` or its folder) is an STN params file; False if unreadable."""
    try:
        record = read_json(_params_path(path), "params")
    except ValueError:
        return False
    return record.get("kind") == STN_PARAMS_KIND


def _lam_disagrees(stored, derived):
    if not isinstance(stored, dict) or set(stored) != set(derived):
        return "lam", stored, derived
    for k, d in derived.items():
        v = stored[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"lam.{k}", v, d
        if v != d and abs(v - d) > LAM_RTOL * max(abs(v), abs(d)):
            return f"lam.{k}", v, d
    return None


def load_stn(path, *, xp=None, dtype=None):
    """Read an STN denoiser written by :func:`save_stn` (``path``: its folder or ``params.json``).

    Parameters
    ----------
    path : path-like
    xp : numpy or cupy module, optional
        Where to place the model (default NumPy).
    dtype : optional
        Override the stored dtype (float32 or float64).

    Returns
    -------
    Result
        ``path``, ``model`` (the network with the saved weights), ``hyper``
        (the container at the saved λ), ``lam`` (constrained values),
        ``sigma``, ``model_config``, ``receptive_radius``, ``min_size``
        (smallest image side, 1) and ``record`` (the whole ``params.json``).

    Raises
    ------
    STNParamsError
        Naming the file and the problem: not an STN params file, a bad model
        configuration or hyperparameter state, ``lam`` disagreeing with
        ``hyper``, a missing weights file, a checksum mismatch, or arrays that
        do not fit the model.
    """
    p = _params_path(path)
    record = read_json(p, "params", error=STNParamsError)
    if record.get("kind") != STN_PARAMS_KIND:
        raise STNParamsError(f"{p} is not a varlearn STN params.json (kind {record.get('kind')!r})")
    if record.get("format_version") != STN_PARAMS_FORMAT:
        raise STNParamsError(f"{p}: format version {record.get('format_version')!r}, expected {STN_PARAMS_FORMAT}")
    for key in ("model_config", "hyper", "lam", "sigma", "weights"):
        if key not in record:
            raise STNParamsError(f"{p}: the entry {key!r} is missing")
    try:
        model = model_from_config(record["model_config"], dtype=dtype, xp=xp)
        hyper = HyperParameters.from_state(record["hyper"])
        radius = receptive_radius(record["model_config"])
    except (ValueError, TypeError, KeyError) as exc:
        raise STNParamsError(f"{p}: {exc}") from exc
    if model.n_hyper != hyper.n:
        raise STNParamsError(f"{p}: the model takes {model.n_hyper} hyperparameter(s), hyper holds {hyper.n}")
    found = _lam_disagrees(record["lam"], hyper.values())
    if found:
        field, stored, value = found
        raise STNParamsError(f"{p}: {field} = {stored!r} disagrees with hyper (which gives {value!r}); hyper is "
                             f"authoritative: change hyper.u or delete nothing and re-save")
    sigma = record["sigma"]
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (math.isfinite(sigma) and sigma > 0):
        raise STNParamsError(f"{p}: sigma must be a finite number > 0, got {sigma!r}")
    w = record["weights"]
    if not isinstance(w, dict) or not isinstance(w.get("file"), str) or Path(w["file"]).name != w["file"]:
        raise STNParamsError(f"{p}: weights must name a file in the same folder, got {w!r}")
    wpath = p.parent / w["file"]
    try:
        data = wpath.read_bytes()
    except OSError as exc:
        raise STNParamsError(f"{p}: cannot read the weights file {wpath}: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != w.get("sha256"):
        raise STNParamsError(f"{wpath}: checksum {digest[:12]}... does not match params.json "
                             f"({str(w.get('sha256'))[:12]}...): the weights file was changed or is damaged")
    try:
        with np.load(_bytesio.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        model.load_state({k: v.astype(model.dtype, copy=False) for k, v in arrays.items()})
    except (ValueError, OSError) as exc:
        raise STNParamsError(f"{wpath}: {exc}") from exc
    return Result(path=p, model=model, hyper=hyper, lam=hyper.values(), sigma=float(sigma),
                  model_config=record["model_config"], receptive_radius=radius, min_size=1, record=record)


def hnet_input_at(hyper, batch, values=None, dtype=np.float32, xp=np):
    """Hypernet input ``(batch, n)`` at the unperturbed λ (``values`` override ``hyper``'s, on a copy)."""
    h = hyper
    if values is not None:
        h = hyper.copy()
        h.set_values(values)
    return to_device(h.hnet_input(h.unperturbed(batch)).astype(dtype), xp)


def _tiles(n, tile):
    """Core intervals ``[a, b)`` of length ``tile`` (the last shorter) covering ``range(n)``."""
    return [(a, min(a + tile, n)) for a in range(0, n, tile)]


def denoise_stn(images, model, hyper, *, values=None, tile=256):
    """Denoise images with an STN denoiser at the unperturbed λ (evaluation mode).

    Parameters
    ----------
    images : array
        ``(H, W)`` or ``(N, H, W)`` noisy images in the model's namespace
        (cast to the model's dtype; never moved between devices).
    model : STNModel
        An image model (``"dncnn"`` or ``"vn"``).
    hyper : HyperParameters
        Gives λ (its unperturbed ``u``) for the hypernet input.
    values : dict, optional
        Constrained values ``{name: value}`` to use instead of ``hyper``'s (e.g.
        another training-noise ratio); ``hyper`` is not changed.
    tile : int, default 256
        Images larger than ``tile`` x ``tile`` are processed in tiles of this
        core size with a margin of :func:`receptive_radius` pixels on every
        side, which gives the same output as one pass over the whole image
        (up to rounding) with bounded memory.

    Returns
    -------
    array
        The denoised images, same shape as ``images``, model's dtype, not clipped.
    """
    if not (isinstance(tile, (int, np.integer)) and not isinstance(tile, bool) and tile >= 1):
        raise ValueError(f"tile must be an integer >= 1, got {tile!r}")
    xp = model.xp
    if get_namespace(images) is not xp:
        raise TypeError(f"images are {get_namespace(images).__name__} arrays but the model's arrays are "
                        f"{xp.__name__} arrays; move them explicitly (varlearn.backend.to_device)")
    single = images.ndim == 2
    y = images[None] if single else images
    if y.ndim != 3:
        raise ValueError(f"images must have shape (H, W) or (N, H, W), got shape {tuple(images.shape)}")
    y = y.astype(model.dtype, copy=False)
    r = receptive_radius(model.get_config())
    n, hh, ww = y.shape
    out = xp.empty_like(y)
    h_in = hnet_input_at(hyper, 1, values, model.dtype, xp)
    for i in range(n):
        for a, b in _tiles(hh, tile):
            for c, d in _tiles(ww, tile):
                a0, b0, c0, d0 = max(a - r, 0), min(b + r, hh), max(c - r, 0), min(d + r, ww)
                o, _ = model.forward(xp.ascontiguousarray(y[i:i + 1, a0:b0, c0:d0]), h_in)
                out[i, a:b, c:d] = o[0, a - a0:b - a0, c - c0:d - c0]
    return out[0] if single else out
