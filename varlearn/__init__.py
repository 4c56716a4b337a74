"""varlearn: learn the parameters of variational models by bilevel optimisation."""
import logging

from . import backend, operators, potentials, testing
from ._accel import get_threads, set_threads, thread_info, threads
from .bilevel import BilevelResult, minimize_bilevel
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
from .solvers import cg, solve_lower

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
    # solvers and the bilevel driver
    "solve_lower", "cg", "hypergradient", "minimize_bilevel", "BilevelResult",
    # results and warnings
    "Result", "ConvergenceWarning", "VarlearnWarning",
    # the thread policy (numba kernels and BLAS together)
    "set_threads", "get_threads", "threads", "thread_info",
    "__version__",
]
