"""Atomic, pickle-free checkpoints of bilevel runs (``.npz`` arrays + JSON metadata)."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError", "atomic_write_bytes", "atomic_write_text"]

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupted or does not match the run."""


def _fsync_dir(path: Path):
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
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
    """Write ``data`` to ``path`` atomically: temporary file in the same folder, fsync, rename."""
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
    atomic_write_bytes(path, text.encode("utf-8"))


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


def save_checkpoint(path, meta: dict, arrays: dict):
    """Save host arrays and JSON-serialisable ``meta`` atomically to ``path`` (``.npz``)."""
    import io

    arrays = {k: np.asarray(v) for k, v in arrays.items() if v is not None}
    meta = dict(meta)
    meta["format_version"] = FORMAT_VERSION
    meta["sha256"] = _digest(arrays)
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.array(json.dumps(meta)), **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path):
    """Load a checkpoint; returns ``(meta, arrays)``.

    Raises :class:`CheckpointError` naming the file when it is missing,
    truncated, corrupted (zip CRC or SHA-256 mismatch) or of another format.
    Never unpickles anything.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            if "__meta__" not in names:
                raise CheckpointError(f"checkpoint {str(path)!r} has no metadata: not a varlearn checkpoint")
            meta = json.loads(str(npz["__meta__"][()]))
            arrays = {k: npz[k] for k in names if k != "__meta__"}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated or corrupted ({type(exc).__name__}: {exc})"
        ) from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {meta.get('format_version')!r}, "
            f"expected {FORMAT_VERSION}"
        )
    expected = meta.get("sha256", {})
    got = _digest(arrays)
    if set(expected) != set(got) or any(expected[k] != got[k] for k in got):
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupted: array checksums do not match")
    return meta, arrays
