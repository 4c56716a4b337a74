"""Lower-level and linear solvers: certified strongly convex FISTA and conjugate gradients.

Solver objects after SciPy and jaxopt: options at construction (validated by name and
value), one ``solve`` method, a :class:`~varlearn.results.Result` back.
:func:`solve_lower` and :func:`cg` are the functional front doors.  Any object with the
same ``solve`` signature can replace them in :func:`~varlearn.hypergradient.hypergradient`
(``lower_solver=``, ``linear_solver=``).
"""
from .cg import CG, cg
from .fista import FISTA, estimate_lipschitz, solve_lower

__all__ = ["FISTA", "CG", "solve_lower", "cg", "estimate_lipschitz"]
