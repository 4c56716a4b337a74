"""Result objects: dictionaries with attribute access and a readable repr."""
from __future__ import annotations

import warnings

import numpy as np

__all__ = ["Result", "STATUS_MESSAGES", "DEPRECATED_KEYS", "ConvergenceWarning", "VarlearnWarning"]


class VarlearnWarning(UserWarning):
    """Base class of varlearn's warnings."""


class ConvergenceWarning(VarlearnWarning):
    """An iterative solver stopped before meeting its tolerance."""


#: one table of status messages for every solver
STATUS_MESSAGES = {
    "success": "the stopping rule was met",
    "maxiter": "the maximum number of iterations was reached before the tolerance",
    "nan": "a NaN or Inf appeared in the iterates",
    "indefinite": "the operator is not positive definite along a search direction",
    "linesearch_failed": "the line search could not certify a decrease",
    "callback_stop": "the callback raised StopIteration",
    "budget_exhausted": "the total cost budget was used up",
    "time_limit": "the wall-time limit was reached",
    "accuracy_floor": "the accuracy reached its floor (eps_floor, or the rounding level of the lower-level "
    "gradient) before the error bound certified a descent direction or the line search a decrease: the "
    "hypergradient is at the level of its attainable error",
    "precision_limit": "the tolerance is below what rounding errors of the computed gradient allow to certify",
    "lower_failed": "a lower-level solve did not meet its tolerance within lower_maxiter iterations and the "
    "error bound did not certify a descent direction",
    "cg_failed": "conjugate gradients did not meet the tolerance within cg_maxiter products and the "
    "error bound did not certify a descent direction",
    "gradient_tol": "the norm of the hypergradient is below the tolerance",
}


#: deprecated key -> current key (one naming table, docs/developer.md): reading the old key of a
#: Result that has the new one returns it with a DeprecationWarning
DEPRECATED_KEYS = {"time": "wall_time"}


class Result(dict):
    """A ``dict`` whose keys are also attributes (like ``scipy.optimize.OptimizeResult``).

    A key renamed by the naming table (:data:`DEPRECATED_KEYS`, e.g. ``time`` ->
    ``wall_time``) stays readable under its old name, as an item or an attribute, with a
    :class:`DeprecationWarning`, when the result has the new key and not the old one.
    """

    def _renamed(self, key, stacklevel):
        new = DEPRECATED_KEYS.get(key)
        if new is None or new not in self:
            raise KeyError(key)
        warnings.warn(f"Result key {key!r} is deprecated; use {new!r}", DeprecationWarning, stacklevel=stacklevel)
        return dict.__getitem__(self, new)

    def __missing__(self, key):
        return self._renamed(key, 3)

    def __getattr__(self, name):
        try:
            return dict.__getitem__(self, name) if name in self else self._renamed(name, 3)
        except KeyError as exc:
            raise AttributeError(name) from exc

    __setattr__ = dict.__setitem__
    __delattr__ = dict.__delitem__

    def __dir__(self):
        return list(self.keys())

    def __repr__(self):
        if not self:
            return f"{type(self).__name__}()"
        width = max(map(len, self.keys())) + 1
        lines = []
        for k, v in self.items():
            if hasattr(v, "shape") and getattr(v, "size", 0) > 6:
                text = f"<array shape={tuple(v.shape)} dtype={v.dtype}>"
            elif isinstance(v, list) and len(v) > 6:
                text = f"<list of {len(v)}>"
            else:
                text = repr(v) if not isinstance(v, np.ndarray) else np.array2string(v, precision=6)
            lines.append(f"{k.rjust(width)}: {text}")
        return "\n".join(lines)
