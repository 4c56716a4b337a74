"""varlearn: learn the parameters of variational models by bilevel optimisation."""
import logging

from . import backend, operators, potentials, testing
from .problems import *  # noqa: F401,F403
from .problems import __all__ as _problems_all
from .regularizers import (
    FieldOfExperts,
    PotentialRegularizer,
    Regularizer,
    SumRegularizer,
    Tikhonov,
    TotalVariation,
)
from .results import ConvergenceWarning, Result, VarlearnWarning
from .solvers import cg, solve_lower
from .hypergradient import hypergradient
from .bilevel import BilevelResult, minimize_bilevel

__version__ = "0.1.0"

logging.getLogger("varlearn").addHandler(logging.NullHandler())

__all__ = [
    "backend", "operators", "potentials", "testing",
    "Regularizer", "PotentialRegularizer", "Tikhonov", "SumRegularizer", "TotalVariation", "FieldOfExperts",
    "solve_lower", "cg", "hypergradient", "minimize_bilevel", "BilevelResult", "Result", "ConvergenceWarning", "VarlearnWarning", "__version__",
] + list(_problems_all)
