r"""Conjugate gradients that report the true residual of what they return.

Used for the adjoint system :math:`H(\tilde x) q = \nabla U(\tilde x)` of the
hypergradient, whose error bound needs the residual of the returned ``q``.

References
----------
.. [HS52] M. R. Hestenes and E. Stiefel, "Methods of conjugate gradients for solving
   linear systems", J. Res. Nat. Bur. Standards 49 (1952), 409-436.
.. [H02] N. J. Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., SIAM,
   2002 (why the recurrence residual drifts from the true one in floating point).
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

from .._validation import check_int, check_positive
from ..backend import get_namespace
from ..linalg import vdot
from ..results import STATUS_MESSAGES, ConvergenceWarning, Result
from ._common import Notifier

logger = logging.getLogger("varlearn")

__all__ = ["CG", "cg"]


@dataclass(frozen=True)
class CG:
    r"""Conjugate gradients for ``A x = b`` with ``A`` symmetric positive definite ([HS52]_).

    **Stopping rule.** Stops when the recurrence residual satisfies ``||b - A x|| <= tol``
    (an absolute tolerance, Euclidean norm); the true residual is then recomputed with one
    more product and, if rounding made it exceed ``tol``, CG restarts from the current
    iterate.  A starting point that already satisfies the rule is returned unchanged
    (``nit`` counts the one product used to test it).  When CG stops for any other reason
    (``maxiter`` products, a non-positive curvature, the callback), the true residual
    ``||b - A x||`` of the returned ``x`` is recomputed with one more product (counted in
    ``nit``, so ``nit`` can be ``maxiter + 1``) unless ``x`` has not moved since the
    residual was last computed directly: the recurrence residual can sit orders of
    magnitude below the true one once rounding dominates ([H02]_), and is never reported.

    Parameters
    ----------
    maxiter : int >= 1
        Maximum number of iterations (products with A).

    Examples
    --------
    >>> import numpy as np
    >>> from varlearn.solvers import CG
    >>> A = np.array([[4.0, 1.0], [1.0, 3.0]])
    >>> res = CG(maxiter=10).solve(lambda v: A @ v, np.array([1.0, 2.0]), tol=1e-12)
    >>> bool(res.success and res.residual_norm <= 1e-12)
    True
    """

    maxiter: int = 1000

    def __post_init__(self):
        object.__setattr__(self, "maxiter", check_int(self.maxiter, "maxiter", minimum=1))

    def solve(self, matvec, b, tol, x0=None, callback=None):
        """Solve ``A x = b`` to the absolute true-residual tolerance ``tol``.

        Parameters
        ----------
        matvec : callable
            ``v -> A v`` on arrays shaped like ``b``.
        b : array
        tol : float > 0
        x0 : array, optional
            Starting point (default zero); not modified.
        callback : callable, optional
            ``callback(intermediate_result)`` after each CG step whose recurrence residual
            is still above ``tol``, with a
            :class:`~varlearn.results.Result` holding ``nit`` (products so far), ``x``,
            ``grad_norm`` and ``residual_norm`` (both the *recurrence* residual
            :math:`\\|r_k\\|`; the residual is the negative gradient of
            :math:`\\tfrac12 x^TAx - b^Tx`).  Raising :exc:`StopIteration` stops CG there
            (status ``"callback_stop"``); the true residual is then recomputed.

        Returns
        -------
        Result
            ``x``, ``nit`` (products with A, the cost unit, including the verification
            products), ``residual_norm`` (always the *true* residual ``||b - A x||`` of
            the returned ``x``, computed in floating point; NaN when it is not finite),
            ``residual`` (``"true"``: which residual ``residual_norm`` is), ``status``
            (``"success"``: ``residual_norm <= tol``; ``"maxiter"``, ``"indefinite"``,
            ``"callback_stop"`` or ``"nan"``), ``success`` (True only for
            ``"success"``: the requested accuracy was met), ``message``.
        """
        return self._solve(matvec, b, tol, x0, callback)

    def _solve(self, matvec, b, tol, x0, callback):
        # called by solve() and by cg(): warnings from done() point three frames up, at the user
        tol = check_positive(tol, "tol")
        notify = Notifier(callback)
        maxiter = self.maxiter
        xp = get_namespace(b, x0)
        nit = 0
        if x0 is None:
            x = xp.zeros_like(b)
            r = b.copy()
        else:
            if x0.shape != b.shape:
                raise ValueError(f"x0 must have the shape of b {tuple(b.shape)}, got {tuple(x0.shape)}")
            x = x0.astype(b.dtype, copy=True)
            r = b - matvec(x)
            nit += 1
        rr = vdot(r, r)
        true_rr = True  # whether rr is the true residual of x

        def done(status):
            nonlocal nit, rr
            if status != "success" and not true_rr and status != "nan":
                rr = _true_rr()
            if status == "success" and not math.sqrt(rr) <= tol:  # pragma: no cover - guarded by the callers
                status = "maxiter"
            res = Result(x=x, nit=nit, residual_norm=math.sqrt(rr) if rr >= 0 else math.nan, residual="true",
                         status=status, success=status == "success", message=STATUS_MESSAGES[status])
            if status != "success":
                warnings.warn(f"cg stopped with status {status!r} after {nit} products: true residual "
                              f"{res.residual_norm:.3e} > tol {tol:.3e}", ConvergenceWarning, stacklevel=4)
            return res

        def _true_rr():
            nonlocal nit
            rt = b - matvec(x)
            nit += 1
            v = vdot(rt, rt)
            return v if math.isfinite(v) else math.nan

        while True:
            if not math.isfinite(rr):
                return done("nan")
            if math.sqrt(rr) <= tol:
                return done("success")
            p = r.copy()
            while nit < maxiter:
                ap = matvec(p)
                nit += 1
                pap = vdot(p, ap)
                if not pap > 0:
                    # x is unchanged since rr was last set: done() recomputes it only if it is a recurrence value
                    return done("nan" if not math.isfinite(pap) else "indefinite")
                alpha = rr / pap
                x += alpha * p
                r -= alpha * ap
                true_rr = False
                rr_new = vdot(r, r)
                if not math.isfinite(rr_new):
                    rr = rr_new
                    return done("nan")
                if math.sqrt(rr_new) <= tol:
                    rr = rr_new
                    break
                p *= rr_new / rr
                p += r
                rr = rr_new
                if notify.active and notify(Result(nit=nit, x=x, grad_norm=math.sqrt(rr), residual_norm=math.sqrt(rr))):
                    return done("callback_stop")
            else:
                return done("maxiter")
            # verify with the true residual
            r = b - matvec(x)
            nit += 1
            rr = vdot(r, r)
            true_rr = True
            if math.sqrt(rr) <= tol:
                return done("success")
            logger.debug("cg: recurrence residual met tol but true residual %.3e did not; restarting", math.sqrt(rr))


def cg(matvec, b, tol, x0=None, maxiter=1000, callback=None):
    """Conjugate gradients for ``A x = b``: ``CG(maxiter).solve(matvec, b, tol, x0, callback)``.

    The functional front door of :class:`CG` (see there for the exact stopping rule and
    the returned :class:`~varlearn.results.Result`; ``residual_norm`` is always the true
    residual of the returned ``x``).

    Parameters
    ----------
    matvec, b, tol, x0, callback
        As in :meth:`CG.solve` (``tol``: absolute, on ``||b - A x||``, Euclidean norm).
    maxiter
        The option of :class:`CG`.

    Returns
    -------
    Result
        See :meth:`CG.solve`.
    """
    return CG(maxiter=maxiter)._solve(matvec, b, tol, x0, callback)
