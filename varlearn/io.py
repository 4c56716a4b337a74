"""Learned parameters on disk (``params.json``) and the one registry of models.

Models
------
A *model* is a named recipe for a :class:`~varlearn.regularizers.Regularizer`:
how to build it from a small JSON-safe configuration, what that
configuration defaults to, which θ a run starts from, and how small an image
it can take.  The command line, the scripts and the Self-Tuning-Network front
end all build their regularizers through :func:`build_model`, so a model is
described once::

    reg = build_model("foe", {"n_filters": 8, "size": 5}, seed=0)
    theta0 = initial_theta("foe", reg)

Two models are registered: ``"tv"`` (:class:`~varlearn.TotalVariation`,
configuration ``{"isotropic": bool}``, θ0 = (−5, −5) as in the MAID paper) and
``"foe"`` (:class:`~varlearn.FieldOfExperts`, configuration
``{"n_filters": int, "size": odd int}``, θ0 =
:meth:`FieldOfExperts.init_params` with filters drawn from ``seed``).
:func:`register_model` adds others.  :func:`build_model` accepts any builder;
:func:`save_params` and :func:`load_params` need what a
:class:`~varlearn.regularizers.Regularizer` has: ``n_params`` and
``describe(theta)`` (the natural units).  Models whose state is not one θ
vector (the STN networks) keep their own files (:mod:`varlearn.stn.io`) and
reuse :class:`ParamsError`, :func:`read_json` and :data:`PARAMS_FILE`.

``params.json``
---------------
:func:`save_params` is the only writer and :func:`load_params` the only reader
of a ``params.json``.  The file holds::

    kind, format_version   "varlearn-params", 1
    model, model_config    the registry name and its configuration
    theta                  the learned θ (authoritative)
    params                 θ in natural units (``Regularizer.describe``), for people to read
    ...                    anything else the writer adds (data, method, results, versions)

θ is authoritative.  ``params`` is derived from it and written for people;
editing it does not change the model, so :func:`load_params` refuses a file
whose ``params`` disagree with θ (relative difference above 1e-9, or a
different non-numeric value) and names the first field that disagrees.
Non-finite numbers are stored as the strings ``"nan"``, ``"inf"`` and
``"-inf"`` (the JSON policy of :mod:`varlearn._io`), so the files are strict JSON.  Files are
written atomically (temporary file in the same folder, then a rename).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ._io import dump_json, from_json_value, loads_json, to_json_value
from .regularizers import FieldOfExperts, TotalVariation
from .results import Result

__all__ = [
    "PARAMS_FILE",
    "PARAMS_KIND",
    "ModelSpec",
    "ParamsError",
    "build_model",
    "get_model",
    "initial_theta",
    "load_params",
    "min_image_size",
    "model_config",
    "model_names",
    "natural_units",
    "read_json",
    "register_model",
    "save_params",
]

PARAMS_FILE = "params.json"
PARAMS_KIND = "varlearn-params"
PARAMS_FORMAT = 1
#: relative tolerance of the θ-versus-natural-units check of :func:`load_params`
UNITS_RTOL = 1e-9
#: entries of a params file that :func:`save_params` writes itself
_RESERVED = ("kind", "format_version", "model", "model_config", "theta", "params", "note")
_NOTE = ("theta is authoritative; params is theta in natural units, written for reading only "
         "(a file whose params disagree with theta is refused)")


class ParamsError(ValueError):
    """A ``params.json`` that cannot be used: unreadable, of another kind, or inconsistent."""


# --------------------------------------------------------------------------- JSON


def read_json(path, what="file", error=ValueError) -> dict:
    """Read a JSON object from ``path`` (non-finite strings back to floats, see :func:`varlearn._io.loads_json`).

    Raises ``error`` naming ``what`` and the path when the file is missing,
    unreadable, not valid JSON or not a JSON object.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what}: no such file: {path}") from None
    except OSError as exc:
        raise error(f"{what}: cannot read {path}: {exc}") from exc
    try:
        data = loads_json(text)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise error(f"{what}: {path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise error(f"{what}: {path} does not hold a JSON object")
    return data


# --------------------------------------------------------------------------- model registry


@dataclass(frozen=True)
class ModelSpec:
    """How to build one model (see :func:`register_model`)."""

    name: str
    build: Callable[[dict, Any], Any]
    defaults: dict
    normalize: Callable[[dict], dict]
    theta0: Callable[[Any, dict], np.ndarray]
    min_size: Callable[[dict], int]
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name, build, *, defaults=None, normalize=None, theta0=None, min_size=None, description="",
                   replace=False):
    """Register a model under ``name`` (used by :func:`build_model` and ``params.json``).

    Parameters
    ----------
    name : str
        Registry name, stored as ``model`` in run configurations and params files.
    build : callable
        ``build(config, seed)`` returns the regularizer; ``config`` is the full
        configuration (defaults filled in, normalised), ``seed`` an ``int`` or
        ``None`` for any random initialisation.
    defaults : dict, optional
        Default configuration; keys outside it are refused by :func:`model_config`.
    normalize : callable, optional
        ``normalize(config)`` returns the checked configuration (JSON-safe
        values) or raises ``ValueError`` naming the key and the value.
    theta0 : callable, optional
        ``theta0(regularizer, config)``: the starting θ; default
        ``regularizer.init_params()``.
    min_size : callable, optional
        ``min_size(config)``: the smallest image side the model takes (default 2).
    description : str
    replace : bool
        Allow replacing an existing registration (otherwise ``ValueError``).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"model {name!r} is already registered (pass replace=True to replace it)")
    if not callable(build):
        raise TypeError(f"build must be callable, got {build!r}")
    spec = ModelSpec(
        name=name, build=build, defaults=dict(defaults or {}),
        normalize=normalize or (lambda c: dict(c)),
        theta0=theta0 or (lambda reg, config: np.asarray(reg.init_params(), dtype=np.float64)),
        min_size=min_size or (lambda config: 2), description=description,
    )
    _REGISTRY[name] = spec
    return spec


def model_names():
    """The registered model names, in registration order."""
    return tuple(_REGISTRY)


def get_model(name) -> ModelSpec:
    """The :class:`ModelSpec` of ``name``; ``ValueError`` naming the known models otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(_REGISTRY)}") from None


def model_config(name, config=None) -> dict:
    """The full, checked configuration of model ``name``: ``config`` over the defaults.

    Raises ``ValueError`` for an unknown key or a bad value (naming both).
    """
    spec = get_model(name)
    config = dict(config or {})
    config.pop("model", None)
    unknown = sorted(set(config) - set(spec.defaults))
    if unknown:
        raise ValueError(f"model {name!r}: unknown configuration entr{'y' if len(unknown) == 1 else 'ies'} "
                         f"{', '.join(map(repr, unknown))}; known: {', '.join(spec.defaults) or 'none'}")
    return spec.normalize({**spec.defaults, **config})


def build_model(name, config=None, *, seed=None):
    """Build the regularizer of model ``name`` from ``config`` (see :func:`model_config`).

    ``seed`` drives any random initialisation (FoE filters); the same name,
    configuration and seed give the same regularizer.
    """
    spec = get_model(name)
    return spec.build(model_config(name, config), seed)


def initial_theta(name, regularizer, config=None) -> np.ndarray:
    """The θ a run of model ``name`` starts from (float64, 1-D)."""
    spec = get_model(name)
    theta = np.asarray(spec.theta0(regularizer, model_config(name, config)), dtype=np.float64)
    return theta.reshape(-1)


def min_image_size(name, config=None) -> int:
    """The smallest image side (pixels) model ``name`` takes."""
    spec = get_model(name)
    return int(spec.min_size(model_config(name, config)))


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _tv_normalize(c):
    if not isinstance(c["isotropic"], (bool, np.bool_)):
        raise ValueError(f"model 'tv': isotropic must be true or false, got {c['isotropic']!r}")
    return {"isotropic": bool(c["isotropic"])}


def _foe_normalize(c):
    k, s = c["n_filters"], c["size"]
    if not _is_int(k) or k < 1:
        raise ValueError(f"model 'foe': n_filters must be a positive integer, got {k!r}")
    if not _is_int(s) or s < 1 or s % 2 != 1:
        raise ValueError(f"model 'foe': size must be a positive odd integer, got {s!r}")
    return {"n_filters": int(k), "size": int(s)}


#: θ0 of TV: log weight and log smoothing, as in the MAID paper
TV_THETA0 = (-5.0, -5.0)

register_model(
    "tv", lambda c, seed: TotalVariation(isotropic=c["isotropic"]),
    defaults={"isotropic": True}, normalize=_tv_normalize,
    theta0=lambda reg, c: np.array(TV_THETA0, dtype=np.float64),
    description="smoothed total variation; θ = (log weight, log smoothing)",
)
register_model(
    "foe", lambda c, seed: FieldOfExperts(n_filters=c["n_filters"], size=c["size"],
                                          rng=0 if seed is None else int(seed)),
    defaults={"n_filters": 16, "size": 5}, normalize=_foe_normalize,
    min_size=lambda c: c["size"],
    description="Field of Experts; θ = (log global weight, log weights, log smoothings, filter taps)",
)


# --------------------------------------------------------------------------- params.json


def natural_units(regularizer, theta) -> dict:
    """θ in natural units (``regularizer.describe(theta)``), JSON-safe."""
    return to_json_value(regularizer.describe(np.asarray(theta, dtype=np.float64)))


def save_params(path, model, config, theta, *, regularizer=None, seed=None, **extra) -> dict:
    """Write a ``params.json`` atomically; returns the record written.

    Parameters
    ----------
    path : path-like
        The file (a folder is taken to mean ``folder/params.json``).
    model : str
        Registered model name.
    config : dict
        Its configuration (checked with :func:`model_config`).
    theta : array_like
        The learned θ (host, 1-D, finite); stored exactly (JSON keeps every float64 digit).
    regularizer : Regularizer, optional
        The regularizer θ belongs to (built with :func:`build_model` when not given).
    seed : int, optional
        Seed for :func:`build_model` when ``regularizer`` is not given.
    **extra
        Further JSON-safe entries (data, method, results...); they may not use
        the names ``kind``, ``format_version``, ``model``, ``model_config``,
        ``theta``, ``params`` or ``note``.
    """
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise ValueError(f"save_params: {', '.join(clash)} are written by save_params itself")
    config = model_config(model, config)
    reg = build_model(model, config, seed=seed) if regularizer is None else regularizer
    theta = _check_theta(np.asarray(theta, dtype=np.float64), reg, model, "save_params")
    record = {"kind": PARAMS_KIND, "format_version": PARAMS_FORMAT, "model": model, "model_config": config,
              "theta": theta.tolist(), "params": natural_units(reg, theta), "note": _NOTE}
    record.update(to_json_value(extra))
    path = Path(path)
    if path.is_dir():
        path = path / PARAMS_FILE
    dump_json(path, record, indent=2)
    return record


def _check_theta(theta, reg, model, where):
    if theta.ndim != 1 or theta.shape[0] != reg.n_params:
        raise ParamsError(f"{where}: theta has {theta.size} numbers, the {model} model needs {reg.n_params}")
    if not np.all(np.isfinite(theta)):
        raise ParamsError(f"{where}: theta contains non-finite values")
    return theta


def _disagreement(stored, derived, field):
    """The first sub-field where ``stored`` differs from ``derived`` as ``(field, stored, derived)``, or None."""
    if isinstance(derived, dict):
        if not isinstance(stored, dict):
            return field, stored, derived
        for key in stored:
            if key not in derived:
                return f"{field}.{key}", stored[key], "(no such parameter)"
        for key, value in derived.items():
            if key in stored:
                found = _disagreement(stored[key], value, f"{field}.{key}")
                if found:
                    return found
        return None
    if isinstance(derived, list):
        if not isinstance(stored, list) or len(stored) != len(derived):
            return field, stored, derived
        for i, (s, d) in enumerate(zip(stored, derived)):
            found = _disagreement(s, d, f"{field}[{i}]")
            if found:
                return found
        return None
    if isinstance(derived, float) and not isinstance(stored, bool) and isinstance(stored, (int, float)):
        if stored == derived or (math.isnan(stored) and math.isnan(derived)):
            return None
        if abs(stored - derived) <= UNITS_RTOL * max(abs(derived), abs(stored)):
            return None
        return field, stored, derived
    if stored != derived or type(stored) is not type(derived):
        return field, stored, derived
    return None


def load_params(path):
    """Read a ``params.json`` (or ``folder/params.json``) written by :func:`save_params`.

    Returns a :class:`~varlearn.results.Result` with ``path``, ``model``,
    ``model_config``, ``theta`` (float64), ``regularizer`` (built with
    :func:`build_model`), ``params`` (natural units from θ) and ``record``
    (the whole file).

    Raises
    ------
    ParamsError
        Naming the file and the problem: missing, not JSON, not a varlearn
        params file, an unknown model or configuration, a ``seed`` that is not
        a non-negative integer, θ of the wrong length or not finite, or
        natural units that disagree with θ (the field, the stored and the
        θ-derived value are named; θ is authoritative, so edit θ or delete
        ``params``).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / PARAMS_FILE
    record = read_json(path, "params", error=ParamsError)
    if record.get("kind") != PARAMS_KIND:
        raise ParamsError(f"{path} is not a varlearn params.json (kind {record.get('kind')!r})")
    if record.get("format_version", PARAMS_FORMAT) != PARAMS_FORMAT:
        raise ParamsError(f"{path}: format version {record.get('format_version')!r}, expected {PARAMS_FORMAT}")
    model = record.get("model")
    try:
        spec = get_model(model)
        config = model_config(model, record.get("model_config") or {})
    except (ValueError, TypeError) as exc:
        raise ParamsError(f"{path}: {exc}") from exc
    theta = record.get("theta")
    if not isinstance(theta, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              for v in theta):
        raise ParamsError(f"{path}: theta must be a list of numbers")
    seed = record.get("seed")
    if seed is not None and not (_is_int(seed) and seed >= 0):
        raise ParamsError(f"{path}: seed must be a non-negative integer or absent, got {seed!r}")
    reg = spec.build(config, seed)
    theta = _check_theta(np.asarray(theta, dtype=np.float64), reg, model, str(path))
    derived = from_json_value(natural_units(reg, theta))  # as a reader of the file sees it
    if "params" in record:
        found = _disagreement(record["params"], derived, "params")
        if found:
            field, stored, value = found
            raise ParamsError(
                f"{path}: {field} = {stored!r} disagrees with theta, which gives {value!r}; theta is "
                f"authoritative and the natural units are written for reading only: change theta "
                f"(log units) or delete the 'params' entry")
    return Result(path=path, model=model, model_config=config, theta=theta, regularizer=reg, params=derived,
                  record=record)
