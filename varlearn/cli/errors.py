"""Exit statuses, the command line's exceptions, one-line messages and the SIGTERM handler."""
from __future__ import annotations

import contextlib
import signal
import sys
import threading

EXIT_OK = 0
#: an unexpected error, a failed download, or a run that stopped on a failure (results written)
EXIT_FAILURE = 1
#: bad input: arguments, files, folders, checkpoints, an unusable GPU
EXIT_USAGE = 2
#: Ctrl-C (SIGINT): 128 + 2, as a shell reports it
EXIT_INTERRUPTED = 130
#: SIGTERM (e.g. a batch system's time limit): 128 + 15
EXIT_TERMINATED = 143


class CliError(Exception):
    """Bad input on the command line: reported as one line, exit status 2."""


class Failure(Exception):
    """A failure after the input was accepted: one line, exit status 1."""


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by the SIGTERM handler (see :func:`sigterm_as_interrupt`).

    A subclass of :class:`KeyboardInterrupt`, so every ``except
    KeyboardInterrupt`` that cleans up after Ctrl-C cleans up after SIGTERM too.
    """


class Interrupted(Exception):
    """Ctrl-C or SIGTERM with a message saying what was kept: one line, exit 130 or 143."""

    def __init__(self, message, cause=None):
        super().__init__(message)
        self.terminated = isinstance(cause, Terminated)

    @property
    def code(self):
        return EXIT_TERMINATED if self.terminated else EXIT_INTERRUPTED

    @property
    def prefix(self):
        return "terminated (SIGTERM)" if self.terminated else "interrupted (Ctrl-C)"


def one_line(text) -> str:
    return " ".join(str(text).split())


def report(message, prefix="error"):
    """``varlearn: PREFIX: MESSAGE`` as one line on stderr."""
    print(f"varlearn: {prefix}: {one_line(message)}", file=sys.stderr, flush=True)


def warn(message):
    report(message, prefix="warning")


def note(message):
    """An informational line on stderr (``varlearn: MESSAGE``)."""
    print(f"varlearn: {one_line(message)}", file=sys.stderr, flush=True)


def _raise_terminated(signum, frame):  # noqa: ARG001
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread (the old handler is restored).

    Outside the main thread (where handlers cannot be installed) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
