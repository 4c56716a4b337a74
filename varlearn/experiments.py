"""Helpers of the experiment front ends (``scripts/reproduce_*.py``, ``scripts/benchmark_*.py``).

The scripts are thin command-line front ends; what they share lives here:

* :func:`make_parser`: the options every reproduction script has
  (``--quick``, ``--data-dir``, ``--backend``, ``--seed``, ``--out``,
  ``--max-iter``, ``--budget``);
* :func:`usage_error`: a one-line ``error:`` message on stderr and exit
  status 2 (the argparse convention);
* :func:`load_data`: call a data loader; a missing or bad data set ends the
  script with one line (exit 2) *before* any output folder is created;
* :func:`array_module`, :func:`prepare_out`, :func:`machine_info`,
  :func:`write_metrics`, :func:`method_arg` (argparse type of the method
  grammar :func:`varlearn.bilevel.analysis.parse_method`), :func:`indices_arg`,
  :func:`thread_limit`, :class:`Timer`, :func:`fmt`.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from ._io import dump_json
from .backend import cupy_unusable_reason, cupy_usable
from .bilevel.analysis import parse_method

__all__ = ["make_parser", "usage_error", "load_data", "array_module", "prepare_out", "machine_info",
           "write_metrics", "method_arg", "indices_arg", "thread_limit", "Timer", "fmt", "positive_float",
           "open_unit_float"]


def make_parser(description, *, seed, out, max_iter=None, budget=None):
    """An ``ArgumentParser`` with the options common to every reproduction script."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny scale that runs in seconds (used by the test suite); the scale is recorded in "
                        "metrics.json")
    p.add_argument("--data-dir", default=None,
                   help="folder holding the data sets (kodak/, mnist/); default: $VARLEARN_DATA, then the cache, "
                        "then a checksum-verified download")
    p.add_argument("--backend", choices=["numpy", "cupy"], default="numpy", help="array backend (cupy needs a GPU)")
    p.add_argument("--seed", type=int, default=seed, help="random seed of the experiment")
    p.add_argument("--out", default=out, help="output folder for metrics.json and the figures")
    p.add_argument("--max-iter", type=int, default=max_iter,
                   help="outer iterations per run (default: the paper's, or the quick one)")
    p.add_argument("--budget", type=float, default=budget,
                   help="total lower-level + CG iterations per run (default: see the script)")
    return p


def usage_error(message, prog=None):
    """Print ``PROG: error: MESSAGE`` (one line) on stderr and exit with status 2."""
    prog = prog or os.path.basename(sys.argv[0]) or "varlearn"
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def load_data(loader, *args, **kwargs):
    """``loader(*args, **kwargs)``; a data set that is missing, unreadable or bad ends with :func:`usage_error`.

    Catches :class:`OSError` (a missing file, a failed download) and
    :class:`ValueError` (bad content, a checksum mismatch); call it before
    :func:`prepare_out` so that a failed run leaves no empty output folder.
    """
    try:
        return loader(*args, **kwargs)
    except (OSError, ValueError) as exc:
        usage_error(f"cannot load the data: {exc}")


def array_module(backend):
    """The array namespace for ``--backend``; :func:`usage_error` with the reason when CuPy is not usable."""
    if backend == "numpy":
        return np
    if not cupy_usable():
        usage_error(f"--backend cupy: {cupy_unusable_reason()}")
    import cupy

    return cupy


def prepare_out(path):
    """Create the output folder (and its parents); returns it as a :class:`~pathlib.Path`."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_metrics(path, metrics):
    """Write ``metrics`` as JSON atomically (the package's JSON policy, :mod:`varlearn._io`)."""
    return dump_json(path, metrics)


def method_arg(token):
    """argparse ``type=`` of a method string: a :class:`~varlearn.bilevel.analysis.MethodSpec`."""
    try:
        return parse_method(token)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def indices_arg(text):
    """argparse ``type=`` of an index list: ``"0-3,7"`` -> ``[0, 1, 2, 3, 7]`` (ranges include both ends)."""
    out = []
    try:
        for part in filter(None, (t.strip() for t in text.split(","))):
            a, _, b = part.partition("-")
            out.extend(range(int(a), int(b or a) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"cannot parse {text!r}; use e.g. 0-3 or 0,2,5") from None
    if not out:
        raise argparse.ArgumentTypeError(f"no index in {text!r}")
    return out


def _checked_float(ok, what):
    def conv(text):
        try:
            v = float(text)
        except ValueError:
            v = float("nan")
        if not ok(v):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return v

    conv.__name__ = what
    return conv


#: argparse types: a positive finite float, a float in the open interval (0, 1)
positive_float = _checked_float(lambda v: 0 < v < float("inf"), "a positive finite number")
open_unit_float = _checked_float(lambda v: 0 < v < 1, "a number in (0, 1)")


def machine_info(backend):
    """Where and with what a run happened (recorded in every metrics.json)."""
    from . import __version__

    info = {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "numpy": np.__version__, "varlearn": __version__, "backend": backend}
    with contextlib.suppress(OSError):
        info["load_average_at_start"] = list(os.getloadavg())
    try:
        import numba

        info["numba"] = numba.__version__
    except ImportError:
        info["numba"] = None
    if backend == "cupy":
        import cupy

        dev = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        info["gpu"] = dev["name"].decode() if isinstance(dev["name"], bytes) else str(dev["name"])
        info["cupy"] = cupy.__version__
    return info


def thread_limit(n):
    """Context manager: at most ``n`` kernel and BLAS threads inside (``None``: unchanged).

    The package's one thread policy, :func:`varlearn._accel.threads`.
    """
    if n is None:
        return contextlib.nullcontext()
    from . import _accel

    return _accel.threads(n)


class Timer:
    """Wall-clock timer: ``with Timer() as t: ...; t.seconds``."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        return False


def fmt(v, spec=".4g"):
    """Format a number for a printed table (``-`` for ``None``)."""
    if v is None:
        return "-"
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)
