"""Lower-level problems and upper-level losses."""
from .base import LowerProblem, UpperLoss
from .denoising import DenoisingProblem, SquaredError
from .logistic import CrossEntropy, MultinomialLogisticProblem
from .quadratic import LeastSquares, QuadraticProblem, make_paper_quadratic

__all__ = [
    "LowerProblem", "UpperLoss", "DenoisingProblem", "SquaredError",
    "MultinomialLogisticProblem", "CrossEntropy",
    "QuadraticProblem", "LeastSquares", "make_paper_quadratic",
]
