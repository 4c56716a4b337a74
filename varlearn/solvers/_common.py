"""Pieces shared by the solver objects: the callback convention."""
from __future__ import annotations

import inspect
import warnings

__all__ = ["Notifier"]


def _takes_positional(fn, n):
    """Whether ``fn``'s signature binds exactly like a function of ``n`` positional arguments."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: the current form
        return False
    try:
        sig.bind(*([None] * n))
    except TypeError:
        return False
    return True


class Notifier:
    """Calls a user callback as ``callback(intermediate_result)``.

    ``intermediate_result`` is a :class:`~varlearn.results.Result`; raising
    :exc:`StopIteration` in the callback stops the solver, which then returns with
    status ``"callback_stop"`` (``success`` False).

    ``legacy`` names the arguments of a deprecated positional form (e.g. ``("k", "x",
    "grad_norm")`` for :func:`~varlearn.solvers.solve_lower`).  A callable that cannot be
    called with one argument but can with ``len(legacy)`` is taken to be of that form
    (decided once, from its signature); it keeps working and a :class:`DeprecationWarning`
    is emitted.  Anything that accepts one argument (including ``*args``) gets the
    current form.
    """

    def __init__(self, callback, legacy=(), owner="solver", stacklevel=3):
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
        self.fn = callback
        self.is_legacy = bool(callback is not None and legacy and not _takes_positional(callback, 1)
                              and _takes_positional(callback, len(legacy)))
        if self.is_legacy:
            names = ", ".join(legacy)
            warnings.warn(
                f"{owner}: callback({names}) is deprecated; write callback(intermediate_result) "
                f"(a Result with {names} among its fields)", DeprecationWarning, stacklevel=stacklevel,
            )

    @property
    def active(self):
        """Whether a callback of the current form is set."""
        return self.fn is not None and not self.is_legacy

    def legacy_call(self, *args):
        """Call a callback of the deprecated positional form (nothing otherwise)."""
        if self.is_legacy:
            self.fn(*args)

    def __call__(self, result):
        """Call a callback of the current form; True when it asks to stop (StopIteration)."""
        try:
            self.fn(result)
        except StopIteration:
            return True
        return False

