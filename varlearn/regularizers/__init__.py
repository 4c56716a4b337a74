"""Regularizers: the :class:`Regularizer` protocol, compositions and the built-in models."""
from .base import PotentialRegularizer, Regularizer, SumRegularizer, Tikhonov
from .composite import Composite
from .foe import FieldOfExperts
from .tv import TotalVariation

__all__ = ["Regularizer", "Composite", "PotentialRegularizer", "Tikhonov", "SumRegularizer", "TotalVariation",
           "FieldOfExperts"]
