"""Linear operators on batches of images, with adjoints and norm bounds.

Every operator derives from :class:`LinearOperator` (``apply``, ``adjoint``,
``norm_bound``, and the optional ``output_mask``, ``weighted_gram_bound``,
``pullback``, ``param_vjp``, ``rounding_constants``): :class:`Identity`,
:class:`FiniteDifference` and :class:`FilterBank`.
"""
from .base import Identity, LinearOperator
from .finite_difference import FiniteDifference

__all__ = ["LinearOperator", "Identity", "FiniteDifference", "FilterBank"]


def __getattr__(name):
    # FilterBank is imported on first use: its module imports this package (no import cycle)
    if name == "FilterBank":
        from .._filterbank import FilterBank

        return FilterBank
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
