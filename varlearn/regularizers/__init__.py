"""Regularizers: the :class:`Regularizer` protocol and the built-in models."""
from .base import PotentialRegularizer, Regularizer, SumRegularizer, Tikhonov
from .foe import FieldOfExperts
from .tv import TotalVariation

__all__ = ["Regularizer", "PotentialRegularizer", "Tikhonov", "SumRegularizer", "TotalVariation", "FieldOfExperts"]
