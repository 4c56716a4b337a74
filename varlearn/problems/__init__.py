"""Lower-level problems and upper-level losses."""
from .base import LowerProblem, UpperLoss
from .denoising import DenoisingProblem, SquaredError

__all__ = ["LowerProblem", "UpperLoss", "DenoisingProblem", "SquaredError"]

try:  # added by the logistic / quadratic work
    from .logistic import CrossEntropy, MultinomialLogisticProblem  # noqa: F401

    __all__ += ["MultinomialLogisticProblem", "CrossEntropy"]
except ImportError:  # pragma: no cover
    pass
try:
    from .quadratic import LeastSquares, QuadraticProblem  # noqa: F401

    __all__ += ["QuadraticProblem", "LeastSquares"]
except ImportError:  # pragma: no cover
    pass
