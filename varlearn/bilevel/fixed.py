"""Fixed-accuracy descent (:class:`FixedAccuracy`): MAID's line search with ε, δ fixed."""
from __future__ import annotations

from .maid import MAID

__all__ = ["FixedAccuracy"]


class FixedAccuracy(MAID):
    r"""Inexact gradient descent at a fixed accuracy: the baseline of the MAID paper.

    Every outer iteration computes the hypergradient ``z`` at the fixed
    accuracies ``eps0`` (lower-level distance) and ``delta0`` (CG residual),
    with no certificate loop, then runs MAID's certified backtracking line
    search (:class:`~varlearn.bilevel.MAID`): :math:`\alpha_i = \alpha\rho^i`
    for ``max_backtracks`` tries (one more per attempt, ``max_attempts``
    attempts), accepting the first step whose certified decrease is at least
    :math:`\lambda\alpha_i\|z\|^2`; after a success α ← ``rho_inc``·α.

    Parameters
    ----------
    **options
        ``maxiter``, ``eps0``, ``delta0``, ``step0``, ``rho``, ``rho_inc``,
        ``armijo``, ``max_backtracks``, ``max_attempts`` and the common
        options: :data:`varlearn.bilevel.options.DEFAULTS` ``["fixed"]``.

    Notes
    -----
    Stops with status ``"linesearch_failed"`` (not success) when an outer
    iteration accepts no step, ``"gradient_tol"`` (success) when
    ``‖z‖ <= gtol``, or on a limit (``maxiter``, ``budget_exhausted``,
    ``time_limit``).

    References
    ----------
    M. S. Salehi, S. Mukherjee, L. Roberts, M. J. Ehrhardt, "An adaptively
    inexact first-order method for bilevel optimization with application to
    hyperparameter learning", SIAM J. Math. Data Sci. (2025), arXiv 2308.10098
    (the fixed-accuracy runs of its experiments).
    """

    method = "fixed"
    adaptive = False
