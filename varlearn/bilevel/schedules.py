r"""A-priori step and accuracy schedules of stochastic bilevel methods.

A schedule maps the step counter ``k = 0, 1, 2, ...`` (mini-batch steps
counted across epochs) to a positive number: the step size
:math:`\alpha_k` or the per-image lower-level accuracy :math:`\epsilon_k`.

=============  =================================================================
``kind``       value at step ``k`` (``base`` = α0 or ε0, ``power`` = q or p)
=============  =================================================================
``constant``   ``base``
``poly``       ``base * (k + 1) ** (-power)``
``log``        ``base`` at ``k = 0``, else ``base * log(k + 1) ** (-power)``
=============  =================================================================

The ``log`` schedule follows the authors' code: since ``log 2 < 1`` it is
*above* ``base`` at ``k = 1`` (by the factor ``log(2) ** -power``, at most
1.45 for ``power <= 1``), equal to it near ``k = 2`` and decays slowly after.
``power = 0`` makes every kind constant.

Schedules are pure functions of ``k`` (no state): a checkpoint stores only
``kind``, ``base`` and ``power`` (in the run's options).

References
----------
M. S. Salehi, S. Mukherjee, L. Roberts, M. J. Ehrhardt, "Bilevel learning with
inexact stochastic gradients", SSVM 2025, arXiv 2412.12049 (decaying step and
accuracy schedules; a rate :math:`O(k^{-1/4})` in expectation with suitable choices);
"Bilevel learning via inexact stochastic gradient descent", arXiv 2511.06774.
"""
from __future__ import annotations

import math

__all__ = ["Schedule", "SCHEDULES"]

SCHEDULES = ("constant", "poly", "log")


class Schedule:
    """``Schedule(kind, base, power)``; ``schedule(k)`` is the value at step ``k``.

    Parameters
    ----------
    kind : {"constant", "poly", "log"}
    base : float > 0, finite
    power : float >= 0, finite (ignored by ``"constant"``)
    name : str
        How errors name the schedule (e.g. ``"step_schedule"``).
    """

    def __init__(self, kind, base, power=0.0, name="schedule"):
        if kind not in SCHEDULES:
            raise ValueError(f"option {name!r} must be one of {SCHEDULES}, got {kind!r}")
        for label, v, ok in (("base", base, lambda t: 0 < t < math.inf), ("power", power, lambda t: 0 <= t < math.inf)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v):
                raise ValueError(f"{name} {label} must be a {'positive' if label == 'base' else 'non-negative'} "
                                 f"finite number, got {v!r}")
        self.kind, self.base, self.power, self.name = kind, float(base), float(power), name

    def __call__(self, k):
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"{self.name}: the step counter k must be an integer >= 0, got {k!r}")
        if self.kind == "constant" or self.power == 0.0:
            return self.base
        if self.kind == "poly":
            return self.base * (k + 1.0) ** (-self.power)
        if k == 0:
            return self.base
        return self.base * math.log(k + 1.0) ** (-self.power)

    def state_dict(self):
        """``{"kind", "base", "power"}`` (JSON)."""
        return {"kind": self.kind, "base": self.base, "power": self.power}

    def __repr__(self):
        return f"Schedule({self.kind!r}, base={self.base!r}, power={self.power!r})"
