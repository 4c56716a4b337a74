"""Regularizers: the :class:`Regularizer` protocol and the built-in models."""
from .base import PotentialRegularizer, Regularizer, SumRegularizer, Tikhonov
from .tv import TotalVariation

try:
    from .foe import FieldOfExperts
except ImportError:  # pragma: no cover - added by the Field-of-Experts work
    FieldOfExperts = None

__all__ = ["Regularizer", "PotentialRegularizer", "Tikhonov", "SumRegularizer", "TotalVariation", "FieldOfExperts"]
