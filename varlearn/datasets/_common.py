"""Errors and argument checks shared by the modules of :mod:`varlearn.datasets`."""
from __future__ import annotations

import hashlib
import numbers
import os
from pathlib import Path

import numpy as np

__all__ = ["DataError", "DownloadError"]


class DataError(ValueError):
    """Bad data content: unreadable or corrupt file, NaN, checksum mismatch, mismatched pairs."""


class DownloadError(OSError):
    """A data file is not on disk and could not be downloaded."""


def as_path(value, name) -> Path:
    if isinstance(value, (str, os.PathLike)):
        return Path(value).expanduser()
    raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(value).__name__}: {value!r}")


def as_dir(value, name) -> Path:
    path = as_path(value, name)
    if not path.exists():
        raise FileNotFoundError(f"{name}: no such folder: {path}")
    if not path.is_dir():
        raise NotADirectoryError(f"{name}: {path} is not a folder")
    return path


def is_int(value) -> bool:
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_str(value) -> bool:
    return isinstance(value, str)


def parse_size(size, name="size"):
    """``None`` -> ``None``; ``n`` -> ``(n, n)``; ``(h, w)`` -> ``(h, w)``; positive ints only."""
    if size is None:
        return None
    if is_int(size):
        hw = (int(size), int(size))
    elif isinstance(size, (tuple, list)) and len(size) == 2 and all(is_int(s) for s in size):
        hw = (int(size[0]), int(size[1]))
    else:
        raise TypeError(f"{name} must be None, an int or a pair of ints (h, w), got {size!r}")
    if hw[0] < 1 or hw[1] < 1:
        raise ValueError(f"{name} must be positive, got {size!r}")
    return hw


def as_items(value, name, single, item_type, item_text):
    """``value`` as a non-empty list: one ``single`` item, or a sequence of ``item_type`` items.

    ``TypeError``/``ValueError`` naming ``name`` for anything else.
    """
    if single(value):
        return [value]
    try:
        items = list(value)
    except TypeError:
        raise TypeError(f"{name} must be {item_text} or a sequence of them, got {value!r}") from None
    if not items:
        raise ValueError(f"{name} must not be empty")
    for item in items:
        if not item_type(item):
            raise TypeError(f"{name} must hold {item_text}, got {item!r}")
    return items


def parse_indices(indices, n):
    """0-based positions in ``range(n)``: sorted, without duplicates; ``None`` means all."""
    if indices is None:
        return list(range(n))
    items = as_items(indices, "indices", is_int, is_int, "ints")
    for i in items:
        if not 0 <= int(i) < n:
            raise ValueError(f"indices must lie in [0, {n}), got {int(i)}")
    return sorted({int(i) for i in items})


def hw_text(shape) -> str:
    return "x".join(str(s) for s in shape)


def list_text(items, limit=10) -> str:
    items = sorted(items)
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path}") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


def check_digest(data: bytes, expected, what):
    """``DataError`` naming ``what`` and both hashes unless SHA-256(data) == expected."""
    got = hashlib.sha256(data).hexdigest()
    if got != expected:
        raise DataError(f"SHA-256 mismatch for {what}: expected {expected}, got {got}")
