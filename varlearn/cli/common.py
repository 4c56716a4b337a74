"""What several subcommands share: argument types, the backend check, versions, threads, logging."""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import platform
import sys

from .. import __version__
from ..backend import cupy_unusable_reason, cupy_usable
from .errors import CliError, Failure

logger = logging.getLogger("varlearn")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors raised as :class:`CliError` (exit status 2)."""

    def error(self, message):
        raise CliError(f"{self.prog}: {message} (see {self.prog} --help)")


def parse_hw(text, flag):
    """``"96"`` -> ``[96, 96]``; ``"96x128"`` -> ``[96, 128]``."""
    if text is None:
        return None
    parts = str(text).lower().replace("×", "x").split("x")
    try:
        hw = [int(p) for p in parts]
    except ValueError:
        raise CliError(f"{flag} must be N or HxW with positive integers, got {text!r}") from None
    if len(hw) == 1:
        hw = hw * 2
    if len(hw) != 2 or min(hw) < 1:
        raise CliError(f"{flag} must be N or HxW with positive integers, got {text!r}")
    return hw


def size_type(flag):
    """argparse ``type=`` for ``N|HxW`` options."""

    def parse(text):
        try:
            return parse_hw(text, flag)
        except CliError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def positive_float(flag, value, allow_inf=False):
    """``value`` as a positive float (``inf`` only with ``allow_inf``), else :class:`CliError` naming ``flag``."""
    if value is None:
        return None
    v = float(value)
    if not (v > 0) or (math.isinf(v) and not allow_inf) or math.isnan(v):
        kind = "a positive number" + (" (inf for no limit)" if allow_inf else "")
        raise CliError(f"{flag} must be {kind}, got {value}")
    return v


def thread_count(text):
    """argparse ``type=`` for ``--threads N|auto``: the package's own rule (``varlearn.set_threads``)."""
    from .._accel import _parse_threads

    try:
        return _parse_threads(text, "--threads")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--threads ")) from None


def add_threads_argument(parser):
    parser.add_argument("--threads", type=thread_count, default="auto", metavar="N|auto",
                        help="CPU threads of the numba kernels and of BLAS together (default auto: the kernels on "
                             "the cores other processes leave idle, at least one, and BLAS on one)")


@contextlib.contextmanager
def input_errors(words=str):
    """Report the library's bad-input exceptions raised in the block as :class:`CliError` (exit 2).

    ``ValueError`` (``DataError``, ``CheckpointError``, ``varlearn.io.ParamsError``...),
    ``FileNotFoundError``, ``NotADirectoryError`` and ``PermissionError`` become
    ``CliError(words(exc))``; a failed download (``DownloadError``) becomes
    :class:`~.errors.Failure` (exit 1).
    """
    from ..datasets import DownloadError

    try:
        yield
    except DownloadError as exc:
        raise Failure(str(exc)) from exc
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        raise CliError(words(exc)) from exc


def check_backend(name, flag="--backend"):
    if name == "cupy" and not cupy_usable():
        raise CliError(f"{flag} cupy: the GPU backend is not usable: {cupy_unusable_reason()}")


# --------------------------------------------------------------------------- threads


@contextlib.contextmanager
def thread_limit(spec, enabled=True):
    """Run the block under the package's one thread policy with ``spec`` (``N`` or ``"auto"``) threads.

    :func:`varlearn._accel.threads` caps the numba kernels and BLAS/OpenMP
    together and restores the previous setting afterwards.  Yields the number
    of kernel threads (``None`` when not ``enabled``, e.g. on the GPU backend).
    """
    if not enabled:
        yield None
        return
    from .. import _accel

    with _accel.threads(spec) as n:
        yield n


# --------------------------------------------------------------------------- misc


def versions(include_cupy=None) -> dict:
    """Versions of Python and the packages varlearn uses (``None`` for an optional one that is missing).

    Read from the installed distributions' metadata, so nothing is imported
    (importing Matplotlib alone takes seconds on a busy machine).
    """
    from importlib.metadata import PackageNotFoundError, version

    out = {"varlearn": __version__, "python": platform.python_version()}
    for name in ("numpy", "scipy", "scikit-image", "matplotlib", "imageio", "numba"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    if include_cupy is None:
        include_cupy = "cupy" in sys.modules
    if include_cupy:
        try:
            import cupy

            out["cupy"] = cupy.__version__
        except Exception:  # noqa: BLE001  (a broken CUDA install may raise anything)
            out["cupy"] = None
    return out


@contextlib.contextmanager
def verbose_logging(enabled):
    """Log the library's ``varlearn`` messages (level INFO) on stderr within the block."""
    if not enabled:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("varlearn: %(message)s"))
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
