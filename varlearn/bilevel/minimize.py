r"""``minimize_bilevel``: the dispatcher to the bilevel solver objects (MAID, fixed accuracy, HOAG, ...)."""
from __future__ import annotations

import importlib
import logging

from .base import BilevelSolver
from .fixed import FixedAccuracy
from .history import HISTORY_FIELDS, BilevelResult, history_to_csv
from .hoag import HOAG
from .maid import MAID
from .options import rename_options

logger = logging.getLogger("varlearn")

__all__ = ["minimize_bilevel", "register_method", "get_method", "BilevelResult", "HISTORY_FIELDS",
           "history_to_csv"]

_SOLVERS = {"maid": MAID, "fixed": FixedAccuracy, "hoag": HOAG}
#: methods whose class is imported on first use: name -> (module, class name)
_LAZY = {"isgd": ("varlearn.bilevel.isgd", "ISGD")}


def register_method(name, solver_class):
    """Make ``solver_class`` (a :class:`BilevelSolver` subclass) available as ``minimize_bilevel(method=name)``.

    Registering a name again replaces the earlier class.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if not (isinstance(solver_class, type) and issubclass(solver_class, BilevelSolver)):
        raise TypeError(f"solver_class must be a subclass of BilevelSolver, got {solver_class!r}")
    _SOLVERS[name] = solver_class
    return solver_class


def _method_names():
    return tuple(_SOLVERS) + tuple(n for n in _LAZY if n not in _SOLVERS)


def get_method(name):
    """The solver class registered as ``name``; ``ValueError`` naming the known methods otherwise."""
    if name in _SOLVERS:
        return _SOLVERS[name]
    if isinstance(name, str) and name in _LAZY:
        module, cls_name = _LAZY[name]
        try:
            cls = getattr(importlib.import_module(module), cls_name)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"method {name!r} is not available ({module}.{cls_name}: {exc})") from exc
        return register_method(name, cls)
    raise ValueError(f"method must be one of {_method_names()}, got {name!r}")


def minimize_bilevel(problem, upper, theta0, method="maid", options=None, callback=None, checkpoint=None,
                     resume=None):
    r"""Minimise :math:`f(\theta) = U(\hat x(\theta))` with inexact hypergradients.

    The function front door to the solver objects: ``minimize_bilevel(problem,
    upper, theta0, method, options, ...)`` is ``get_method(method)(**options).run(
    problem, upper, theta0, ...)`` (:class:`~varlearn.bilevel.MAID`,
    :class:`~varlearn.bilevel.FixedAccuracy`, :class:`~varlearn.bilevel.HOAG`;
    ``"isgd"``: :class:`varlearn.bilevel.isgd.ISGD`; more with
    :func:`register_method`), with the same θ, history and result bit for bit.

    Methods
    -------
    ``"maid"``
        The adaptively inexact method of Salehi, Mukherjee, Roberts & Ehrhardt.
        Each outer iteration computes the hypergradient ``z`` at accuracies
        (ε, δ), halving both (factor ``nu``) until the error bound satisfies
        :math:`\omega \le (1-\eta)\|z\|`; then backtracks
        :math:`\alpha_i = \alpha\rho^i` (``max_backtracks`` tries, one more per
        attempt) and accepts :math:`\theta^+ = \theta - \alpha_i z` only if the
        certified upper bound of :math:`f(\theta^+)` minus the certified lower
        bound of :math:`f(\theta)` is at most :math:`-\lambda\alpha_i\|z\|^2`
        (``armijo`` = λ; the bounds are :math:`U(\tilde x) \pm \|\nabla U(\tilde x)\|\epsilon
        \,(+ L_U\epsilon^2/2)`, with the :math:`L_U` term dropped from the lower
        bound when ``U`` is convex, and ε the achieved distance bound of each
        solve).  After a success: α ← ``rho_inc``·α, ε, δ ← ``nu_inc``·(ε, δ);
        after a failed attempt: ε, δ ← ``nu``·(ε, δ) and the hypergradient is
        recomputed (``max_attempts`` attempts per outer iteration).
    ``"fixed"``
        The same line search with ε, δ fixed and no certificate loop; stops with
        status ``"linesearch_failed"`` when an outer iteration accepts no step.
    ``"hoag"``
        HOAG (Pedregosa 2016) with tolerance ε_k for both solves decaying
        geometrically (``eps0 * decay_rate**k``), quadratically
        (``eps0/(k+1)**2``) or cubically, floored at ``eps_min``; step 1/L with
        HOAG's acceptance rule (constant ``hoag_C``) — see the MAID spec §6.4.

    Stopping (each with its own ``status``; ``success`` only where marked):

    * ``"gradient_tol"`` (success): ‖z‖ ≤ ``gtol`` at the current θ;
    * ``"accuracy_floor"`` (success when certified and small): the accuracy cannot go
      lower, either in the certificate loop (ω > (1 − η)‖z‖ and ε would go
      below ``eps_floor``, or the lower level reports ``"precision_limit"``:
      its tolerance is below what rounding allows to certify; ‖z‖ is at the
      level of its attainable error) or in the line search (every attempt
      failed and ε would go below ``eps_floor`` though no trial solve missed
      its tolerance: the decrease λα‖z‖² is below what the floor accuracy
      resolves).  ``stationarity_bound = ‖z‖ + ω`` bounds ‖∇f(θ)‖; it is
      certified when the bound's constants are exact (``bound_exact``) and,
      at the line-search floor, the certificate is on and both solvers of the
      last hypergradient met their tolerances (in the certificate loop ω is a
      valid bound whatever the solvers' status, ``"precision_limit"``
      included), and ``success`` when it is certified and at most
      ``max(gtol, stationarity_rtol * ‖z_0‖)``;
    * ``"lower_failed"`` / ``"cg_failed"``: in the certificate loop, ω > (1 − η)‖z‖
      and the lower-level solve (``lower_maxiter``) or CG (``cg_maxiter``)
      did not meet its tolerance, so a smaller tolerance would not help; or
      (``"lower_failed"``) the line search reached the floor while a trial
      solve of the last attempt missed its tolerance.  Raise the limit;
    * ``"nan"``: the lower-level solve at the current θ (θ0 in practice: trial
      points with non-finite solves are rejected) produced non-finite values;
    * ``"maxiter"`` (``maxiter`` outer iterations), ``"budget_exhausted"``
      (lower-level + CG iterations ≥ ``budget``, or ``image_cost`` ≥
      ``image_budget``, checked between solves),
      ``"time_limit"``: a limit was reached;
    * ``"linesearch_failed"``: ``"fixed"`` accepted no step in an outer
      iteration;
    * ``"callback_stop"``: the callback raised ``StopIteration``.

    Options and defaults: :data:`varlearn.bilevel.options.DEFAULTS`.  The
    common option ``executor`` (None by default) runs the full-batch solves of
    ``"maid"``, ``"fixed"`` and ``"hoag"`` on an executor of
    :mod:`varlearn.executors` (a NumPy ``DenoisingProblem`` with a
    ``SquaredError``): with one task for the whole batch the run is the
    in-process run bit for bit; with smaller tasks every image is solved to its
    share of the batch accuracy (stochastic-spec §3) and the image counters are
    the tasks' own.

    Parameters
    ----------
    problem : LowerProblem
    upper : UpperLoss
    theta0 : array
        Starting hyperparameters (1-D, the problem's array namespace).
    method : {"maid", "fixed", "hoag", "isgd"} or a name given to :func:`register_method`
    options : dict, optional
        The method's options, validated by name (``ValueError`` naming an
        unknown or bad one); the deprecated ``max_iter`` means ``maxiter``
        (with a :class:`DeprecationWarning`).
    callback : callable, optional
        ``callback(intermediate_result)`` after every outer iteration, with a
        :class:`~varlearn.results.Result` holding ``theta``, ``fun``, ``nit``,
        the last history row as ``row``, a copy of all rows so far as
        ``history``, ``x`` and the live ``state``
        (:class:`~varlearn.bilevel.BilevelState`, read only).  Raising
        ``StopIteration`` stops the run (status ``"callback_stop"``).
    checkpoint : path, optional
        Where to save the run state (atomically): after an outer iteration
        ``k`` with ``k % checkpoint_every == 0`` when at least
        ``checkpoint_interval`` seconds (default 5) have passed since the
        previous save (the first such iteration is always saved), and always
        at the end, whatever the status.  Each save rewrites the whole file
        (about three copies of ``x``: 201 MB for 2 × 2048² float64), so the
        interval bounds the I/O; a run killed in between resumes from the last
        save and recomputes the iterations since, exactly as they ran.
    resume : path, optional
        A checkpoint to continue from; its saved options are used, updated by
        ``options``.

    Returns
    -------
    BilevelResult
        History columns and cost counters: ``docs/developer.md`` §1.4-1.5
        (``wall_time``; ``bound_exact``; the image-cost columns ``nit × N``
        for a separable problem of ``N`` images, NaN otherwise).
    """
    cls = get_method(method)
    options = rename_options(options, stacklevel=3)
    return cls(**options).run(problem, upper, theta0, callback=callback, checkpoint=checkpoint, resume=resume)
