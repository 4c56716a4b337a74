"""History rows and the result of a bilevel run: columns, CSV, and readers of older files.

The column names follow the naming table of ``docs/developer.md`` (§1.5).
Older files (history CSV, checkpoints) wrote the wall time as ``time`` and had
no ``bound_exact`` or image-cost columns; :func:`upgrade_row` reads such rows
as current ones, so every reader (plots, analysis, resume) sees one set of
names.
"""
from __future__ import annotations

import csv
import io
import math

import numpy as np

from .._io import atomic_write_text
from ..results import Result

__all__ = ["HISTORY_FIELDS", "FLOAT_FIELDS", "BilevelResult", "history_to_csv", "upgrade_row", "column"]

#: columns of ``BilevelResult.history`` (one row per outer iteration; row 0 is the start)
HISTORY_FIELDS = (
    "iter", "fun", "fun_upper", "fun_lower", "eps", "delta", "step", "n_backtracks", "accepted",
    "omega", "bound_exact", "grad_norm", "n_lower_iter", "n_cg_iter", "cost",
    "image_lower_iter", "image_cg_iter", "image_cost", "wall_time",
)

#: the float columns (NaN or ±inf are stored in JSON as strings, see :mod:`varlearn._io`)
FLOAT_FIELDS = frozenset({"fun", "fun_upper", "fun_lower", "eps", "delta", "step", "omega", "grad_norm",
                          "image_lower_iter", "image_cg_iter", "image_cost", "wall_time"})

#: renamed columns: old name -> current name
RENAMED_FIELDS = {"time": "wall_time"}


def upgrade_row(row):
    """A history row with the current column names (a new dict; ``row`` is not modified).

    ``time`` (files written before the rename) becomes ``wall_time``; the
    columns added since (``bound_exact``, ``image_lower_iter``,
    ``image_cg_iter``, ``image_cost``) are filled with ``None`` / NaN (unknown)
    when missing.
    """
    out = dict(row)
    for old, new in RENAMED_FIELDS.items():
        if old in out and new not in out:
            out[new] = out.pop(old)
    out.setdefault("bound_exact", None)
    for name in ("image_lower_iter", "image_cg_iter", "image_cost"):
        out.setdefault(name, math.nan)
    return out


def column(history, name):
    """One column of history rows (dicts, or CSV rows of strings) as a float array; NaN where empty.

    ``name`` is a current column name; rows of older files are read through
    :func:`upgrade_row` (so ``"wall_time"`` also finds an old ``time`` column).
    Booleans read as 0/1, ``None`` and ``""`` as NaN.
    """
    out = []
    for row in history:
        v = upgrade_row(row).get(name)
        if v is None or v == "":
            out.append(math.nan)
        elif isinstance(v, str) and v in ("True", "False"):
            out.append(1.0 if v == "True" else 0.0)
        else:
            try:
                out.append(float(v))
            except (TypeError, ValueError):
                out.append(math.nan)
    return np.asarray(out, dtype=float)


def history_to_csv(history, path=None):
    """Write history rows as CSV (atomically when ``path`` is given); returns the text.

    The header is :data:`HISTORY_FIELDS`; ``None`` is written as an empty field.
    Rows of older runs are written with the current names (:func:`upgrade_row`).
    """
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(HISTORY_FIELDS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in history:
        row = upgrade_row(row)
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in HISTORY_FIELDS})
    text = buf.getvalue()
    if path is not None:
        atomic_write_text(path, text)
    return text


class BilevelResult(Result):
    """Result of :func:`~varlearn.minimize_bilevel` and of the solver objects (a :class:`~varlearn.results.Result`).

    Keys: ``theta``, ``fun`` (upper loss at the last accepted lower-level
    iterate), ``fun_bounds`` (its certified lower and upper bounds), ``x``,
    ``nit``, ``status``, ``message``, ``success``, ``n_accepted`` (accepted
    steps; 0 means θ is still θ0, and the message says so),
    ``stationarity_bound`` (at ``accuracy_floor``: ``‖z‖ + ω``, a bound on
    ``‖∇f(θ)‖``; NaN otherwise), ``n_lower_iter``, ``n_cg_iter``,
    ``image_lower_iter``, ``image_cg_iter``, ``image_cost`` (image units, NaN
    for a non-separable problem: ``docs/developer.md`` §1.4), ``wall_time``,
    ``history`` (list of dicts with the keys of :data:`HISTORY_FIELDS`),
    ``method``, ``options``.

    ``success`` means the requested accuracy was met, as in SciPy: it is True
    only on ``gradient_tol`` (``‖z‖ <= gtol``) and on a *certified*
    ``accuracy_floor``: the error bound, with exact constants, says the
    hypergradient is at the level of its attainable error, so
    ``‖∇f(θ)‖ <= stationarity_bound``, and that bound is at most
    ``max(gtol, stationarity_rtol * ‖z_0‖)`` (``‖z_0‖`` the first hypergradient's
    norm, ``stationarity_rtol`` 1e-3 by default); a certified but larger bound
    (e.g. a float32 run whose attainable accuracy is poor) is not success.  A run that stopped on a limit
    (``maxiter``, ``budget_exhausted``, ``time_limit``), on a failure
    (``linesearch_failed``, ``lower_failed``, ``cg_failed``, ``nan``), on
    ``callback_stop`` or on an ``accuracy_floor`` reached with estimated
    constants has ``success`` False; ``status`` says which.
    """

    def history_column(self, name):
        """One history column as a NumPy array (see :func:`column`)."""
        return column(self["history"], name)
