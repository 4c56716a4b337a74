"""varlearn: learn the parameters of variational models by bilevel optimisation."""
import logging

from . import backend, operators, potentials, testing
from ._accel import get_threads, set_threads, thread_info, threads
from .bilevel import HOAG, ISGD, MAID, BilevelResult, BilevelSolver, FixedAccuracy, minimize_bilevel
from .hypergradient import hypergradient
from .problems import (
    CrossEntropy,
    DenoisingProblem,
    LeastSquares,
    LowerProblem,
    MultinomialLogisticProblem,
    QuadraticProblem,
    SquaredError,
    UpperLoss,
    make_paper_quadratic,
)
from .regularizers import (
    FieldOfExperts,
    PotentialRegularizer,
    Regularizer,
    SumRegularizer,
    Tikhonov,
    TotalVariation,
)
from .results import ConvergenceWarning, Result, VarlearnWarning
from .solvers import CG, FISTA, cg, solve_lower

__version__ = "0.1.0"

logging.getLogger("varlearn").addHandler(logging.NullHandler())

__all__ = [
    # modules
    "backend", "operators", "potentials", "testing",
    # problems and losses
    "LowerProblem", "UpperLoss", "DenoisingProblem", "SquaredError",
    "MultinomialLogisticProblem", "CrossEntropy",
    "QuadraticProblem", "LeastSquares", "make_paper_quadratic",
    # regularizers
    "Regularizer", "PotentialRegularizer", "Tikhonov", "SumRegularizer", "TotalVariation", "FieldOfExperts",
    # lower-level and linear solvers (objects and functional front doors), hypergradients
    "FISTA", "CG", "solve_lower", "cg", "hypergradient",
    # upper-level solvers and the bilevel driver
    "BilevelSolver", "MAID", "HOAG", "FixedAccuracy", "ISGD", "minimize_bilevel", "BilevelResult",
    # results and warnings
    "Result", "ConvergenceWarning", "VarlearnWarning",
    # the thread policy (numba kernels and BLAS together)
    "set_threads", "get_threads", "threads", "thread_info",
    "__version__",
]
