"""Atomic file writes and the one JSON policy of varlearn.

Atomic writes
-------------
:func:`atomic_write_bytes` writes to a temporary file in the destination
folder, flushes and ``fsync``\\ s it, renames it over the destination
(``os.replace``, atomic on POSIX and Windows) and ``fsync``\\ s the folder.  A
reader therefore sees either the old file or the complete new one, never a
truncated file, even after a crash or ``SIGKILL`` in the middle of a write.
The file gets the usual mode (``0o666`` minus the umask), not ``mkstemp``'s
``0o600``.

JSON policy
-----------
Every JSON file varlearn writes (run folders, ``metrics.json`` of the
scripts, checkpoint metadata) goes through :func:`dumps_json` and is read
through :func:`loads_json`:

* the output is always valid JSON (RFC 8259): ``json.dumps`` runs with
  ``allow_nan=False``, so a bare ``NaN``/``Infinity`` can never be written;
* a non-finite float is written as one of the strings ``"nan"``, ``"inf"``,
  ``"-inf"``; ``None`` is written as ``null`` (so "missing" and "not a
  number" stay distinct);
* :func:`loads_json` turns exactly these three strings back into floats, at
  any depth, so ``loads_json(dumps_json(x)) == x`` for every finite or
  non-finite float (NaN compares by ``math.isnan``).  The price: a *string*
  value that is exactly ``"nan"``, ``"inf"`` or ``"-inf"`` comes back as a
  float;
* NumPy scalars become Python scalars, arrays (NumPy, or any object with
  ``__cuda_array_interface__``, copied to the host explicitly) become nested
  lists, tuples become lists, :class:`pathlib.Path` and ``numpy.dtype``
  become strings; any other object raises :class:`TypeError` naming its type
  (nothing is silently stringified).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = [
    "atomic_write_bytes", "atomic_write_text", "to_json_value", "from_json_value",
    "dumps_json", "loads_json", "dump_json", "load_json", "NONFINITE_STRINGS", "savez_atomic",
]

#: how non-finite floats are spelled in varlearn's JSON files
NONFINITE_STRINGS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


# ---------------------------------------------------------------------- atomic writes
def _fsync_dir(path: Path):
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # e.g. Windows: folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data: bytes):
    """Write ``data`` to ``path`` atomically: temporary file in the same folder, fsync, rename.

    The parent folder is created when missing.  On any error (including
    ``KeyboardInterrupt``) the temporary file is removed and ``path`` is left
    as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path, text: str):
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def savez_atomic(path, arrays: dict):
    """``numpy.savez`` of ``arrays`` (name -> array, uncompressed, no pickles) written atomically to ``path``."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------- JSON
def _float(v: float):
    if math.isfinite(v):
        return v
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


def to_json_value(obj):
    """A copy of ``obj`` made of plain JSON types, following the module's policy."""
    if isinstance(obj, dict):
        return {str(k): to_json_value(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_value(v) for v in obj]
    if hasattr(obj, "__cuda_array_interface__"):
        from .backend import to_numpy  # explicit host copy, for serialisation only

        obj = to_numpy(obj)
    if isinstance(obj, np.ndarray):
        return to_json_value(obj.tolist())
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _float(float(obj))
    if isinstance(obj, (Path, np.dtype)):
        return str(obj)
    raise TypeError(f"cannot write an object of type {type(obj).__name__} as JSON: {obj!r:.80}")


def from_json_value(obj):
    """Inverse of :func:`to_json_value` for what JSON can hold: ``"nan"``/``"inf"``/``"-inf"`` become floats."""
    if isinstance(obj, dict):
        return {k: from_json_value(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_json_value(v) for v in obj]
    if isinstance(obj, str) and obj in NONFINITE_STRINGS:
        return NONFINITE_STRINGS[obj]
    return obj


def dumps_json(obj, *, indent=1) -> str:
    """``obj`` as a JSON text (ending with a newline), always valid JSON; see the module policy."""
    return json.dumps(to_json_value(obj), indent=indent, allow_nan=False) + "\n"


def loads_json(text: str):
    """Parse a JSON text written by :func:`dumps_json` (non-finite strings back to floats).

    Bare ``NaN``/``Infinity`` tokens (invalid JSON) are refused with a
    :class:`ValueError`.
    """

    def refuse(token):
        raise ValueError(f"invalid JSON: bare {token} (varlearn writes non-finite floats as strings)")

    return from_json_value(json.loads(text, parse_constant=refuse))


def dump_json(path, obj, *, indent=1):
    """Write ``obj`` to ``path`` as JSON (:func:`dumps_json`), atomically; returns ``path``."""
    atomic_write_text(path, dumps_json(obj, indent=indent))
    return path


def load_json(path):
    """Read a JSON file written by :func:`dump_json` (see :func:`loads_json`)."""
    return loads_json(Path(path).read_text(encoding="utf-8"))
