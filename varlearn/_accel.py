"""Optional accelerators: numba kernels on NumPy arrays, fused CuPy kernels on CuPy arrays.

The pure array-API code paths are the reference; accelerated kernels are used
when available and enabled.  ``VARLEARN_ACCEL=0`` in the environment, or
:func:`set_accelerated(False)`, forces the reference paths (the tests compare
both).
"""
from __future__ import annotations

import importlib
import logging
import os

logger = logging.getLogger("varlearn")

_enabled = os.environ.get("VARLEARN_ACCEL", "1") not in ("0", "false", "False", "no")
_cache: dict = {}


def set_accelerated(flag: bool) -> bool:
    """Enable or disable the accelerated kernels; returns the previous setting."""
    global _enabled
    old = _enabled
    _enabled = bool(flag)
    return old


def accelerated() -> bool:
    """Whether accelerated kernels are enabled."""
    return _enabled


def numba_module(name):
    """Import ``varlearn.<name>`` (a numba kernel module) or return ``None``.

    ``None`` when numba is not installed or the accelerators are disabled.
    """
    if not _enabled:
        return None
    key = ("numba", name)
    if key not in _cache:
        try:
            _cache[key] = importlib.import_module(f"varlearn.{name}")
        except ImportError as exc:
            logger.info("numba kernels unavailable (%s); using the NumPy reference path", exc)
            _cache[key] = None
    return _cache[key]


def cupy_module(name):
    """Import ``varlearn.<name>`` (a CuPy kernel module) or return ``None`` when disabled."""
    if not _enabled:
        return None
    key = ("cupy", name)
    if key not in _cache:
        _cache[key] = importlib.import_module(f"varlearn.{name}")
    return _cache[key]
