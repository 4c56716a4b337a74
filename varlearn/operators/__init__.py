"""Linear operators on batches of images, with adjoints and norm bounds.

Every operator derives from :class:`LinearOperator` (``apply``, ``adjoint``,
``norm_bound``, and the optional ``output_mask``, ``weighted_gram_bound``,
``pullback``, ``param_vjp``, ``rounding_constants``): :class:`Identity`,
:class:`FiniteDifference` and :class:`FilterBank`.
"""
from .base import Identity, LinearOperator
from .filterbank import FilterBank
from .finite_difference import FiniteDifference

__all__ = ["LinearOperator", "Identity", "FiniteDifference", "FilterBank"]
