"""Progress on stderr with tqdm (nothing at all with ``--quiet``).

On a terminal the bar is redrawn in place; when stderr is a file or a pipe,
tqdm still writes its carriage-return updates, at most one every
``mininterval`` seconds.  Messages printed while a bar is open go through
:meth:`Progress.write`, so they do not break the bar.
"""
from __future__ import annotations

import contextlib
import sys

from tqdm import tqdm

from .errors import one_line


class Progress:
    """A tqdm bar on stderr over ``total`` steps, starting at ``initial``; disabled when not ``enabled``."""

    def __init__(self, total, label, enabled=True, initial=0, unit="it", mininterval=0.5):
        self.enabled = bool(enabled)
        self._bar = tqdm(total=total, initial=initial, desc=label, unit=unit, file=sys.stderr,
                         disable=not self.enabled, dynamic_ncols=True, mininterval=mininterval, leave=True)

    def update(self, k, text=""):
        """Show step ``k`` (absolute, not an increment) and ``text`` after the bar."""
        if not self.enabled:
            return
        self._bar.set_postfix_str(text, refresh=False)
        self._bar.update(k - self._bar.n)

    def write(self, message):
        """One line on stderr, above the bar (always shown: warnings are not progress)."""
        line = f"varlearn: {one_line(message)}"
        if self.enabled:
            self._bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self):
        self._bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


@contextlib.contextmanager
def compile_notice(enabled=True, progress=None):
    """Within the block, announce once on stderr that numba compiles its kernels (first run only).

    The line (:data:`varlearn._accel.COMPILE_NOTICE`) comes just before the
    first compilation of a varlearn kernel in this process, from the hook of
    :func:`varlearn._accel.on_compile`; nothing is shown when the kernels are
    already compiled (cached on disk) or when not ``enabled`` (``--quiet``).
    ``progress`` (a :class:`Progress`) keeps an open bar intact.
    """
    from .. import _accel

    if not enabled:
        yield
        return

    def show(stage, seconds):  # noqa: ARG001
        if stage == "start":
            line = _accel.COMPILE_NOTICE
            if progress is not None:
                progress.write(line)
            else:
                print(f"varlearn: {line}", file=sys.stderr, flush=True)

    remove = _accel.on_compile(show)
    try:
        yield
    finally:
        remove()
