"""Figures of bilevel experiments (matplotlib, Agg backend, PNG written atomically).

Every function takes the output ``path`` first, draws one figure and returns
``path``.  A run is a dict with ``label``, ``method`` and ``history`` (the
column dict of :func:`varlearn.bilevel.analysis.summarize_run`), optionally
``linestyle``, ``color`` and ``eps0``.  The PNG is rendered in memory and
written with :func:`varlearn._io.atomic_write_bytes`, so an interrupted run
never leaves a truncated figure.
"""
from __future__ import annotations

import io
import math

import numpy as np

from .._io import atomic_write_bytes

__all__ = ["plot_loss_vs_cost", "plot_eps_path", "plot_series", "plot_landscape", "plot_filters",
           "finish_figure", "save_png", "STYLES"]

#: line style per method
STYLES = {"maid": "-", "fixed": "--", "hoag": ":", "gd": "-."}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _new(size=(6.4, 4.4)):
    plt = _plt()
    fig, ax = plt.subplots(figsize=size, dpi=90)
    # fixed margins instead of tight_layout (which measures every tick label: seconds per figure)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=0.92)
    return plt, fig, ax


def _style(run):
    return run.get("linestyle") or STYLES.get(run.get("method", ""), "-")


def _colors(plt, runs):
    """One colour per run; tab20 when the default cycle (10 colours) would repeat."""
    if len(runs) <= 10:
        return [run.get("color") or f"C{i}" for i, run in enumerate(runs)]
    cmap = plt.get_cmap("tab20")
    return [run.get("color") or cmap(i % 20) for i, run in enumerate(runs)]


def _floats(values):
    return np.asarray([math.nan if v is None else v for v in values], dtype=float)


def save_png(plt, fig, path):
    """Render ``fig`` to PNG in memory, write it atomically to ``path``, close it; returns ``path``."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def finish_figure(plt, fig, ax, path, title, n_runs, legend_loc="best"):
    """Title, grid and legend (two columns beyond six runs), then :func:`save_png`."""
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if n_runs > 6 else 1, loc=legend_loc)
    return save_png(plt, fig, path)


def plot_loss_vs_cost(path, runs, *, fstar=None, title=None, ylabel=None, key="fun", logy=None):
    """Upper-level loss (or its gap ``f - f*`` when ``fstar`` is given) against cumulative cost.

    Log-scaled cost axis.  Drawn as a staircase: the loss at a cost is that
    of the last iterate completed by then (a straight line between two
    iterates far apart in cost would show losses no run had).
    """
    plt, fig, ax = _new()
    floor = None
    for run, color in zip(runs, _colors(plt, runs)):
        cost = _floats(run["history"]["cost"])
        val = _floats(run["history"][key])
        if fstar is not None:
            val = val - fstar
            pos = val[val > 0]
            if pos.size:
                floor = pos.min() if floor is None else min(floor, pos.min())
        ax.plot(np.maximum(cost, 1.0), val, _style(run), label=run["label"], lw=1.2, color=color,
                drawstyle="steps-post")
    ax.set_xscale("log")
    if fstar is not None or logy:
        ax.set_yscale("log")
        if floor is not None:
            ax.set_ylim(bottom=max(floor * 0.5, 1e-16))
    ax.set_xlabel("cost (lower-level + CG iterations)")
    ax.set_ylabel(ylabel or ("f - f*" if fstar is not None else "upper-level loss"))
    return finish_figure(plt, fig, ax, path, title, len(runs))


def plot_eps_path(path, runs, *, title=None, key="eps"):
    """Lower-level accuracy ε_k against the outer iteration (log–log).

    A run dict may carry ``eps0`` (the initial accuracy): it is drawn as a
    marker at iteration 0 joined to the first history row, whose ε is already
    the value after MAID's certificate loop of iteration 0.
    """
    plt, fig, ax = _new()
    for run, color in zip(runs, _colors(plt, runs)):
        it = _floats(run["history"]["iter"])
        eps = _floats(run["history"][key])
        ax.plot(it + 1.0, eps, _style(run), label=run["label"], lw=1.0, color=color)
        if run.get("eps0") is not None and eps.size and key == "eps":
            ax.plot([0.8, 1.0], [run["eps0"], eps[0]], ":", color=color, lw=0.8)
            ax.plot([0.8], [run["eps0"]], "o", color=color, ms=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("outer iteration + 1 (dots: initial ε0)")
    ax.set_ylabel("lower-level accuracy ε" if key == "eps" else key)
    return finish_figure(plt, fig, ax, path, title, len(runs))


def plot_series(path, series, *, xlabel, ylabel, title=None, logx=True, logy=False, steps=False, hlines=()):
    """Free-form lines: ``series`` is a list of ``(x, y, label, style)``; ``hlines`` grey reference levels."""
    plt, fig, ax = _new()
    for x, y, label, style in series:
        ax.plot(_floats(x), _floats(y), style, lw=1.0, label=label, drawstyle="steps-post" if steps else "default")
    for level in hlines:
        ax.axhline(level, color="grey", lw=0.6)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return finish_figure(plt, fig, ax, path, title, len(series))


def plot_landscape(path, grid, runs, theta_star, title=None):
    """Filled contours of f on a 2-D θ grid (``grid``: ``theta0``, ``theta1``, ``f``) with the runs' θ paths.

    A run needs ``label`` and ``theta_path`` (a list of θ); ``theta_star`` is
    marked with a red star.
    """
    plt, fig, ax = _new((6.4, 4.8))
    F = np.asarray(grid["f"], dtype=float)
    levels = np.nanmin(F) + (np.nanmax(F) - np.nanmin(F)) * np.linspace(0, 1, 30) ** 3
    cs = ax.contourf(grid["theta1"], grid["theta0"], F, levels=np.unique(levels), cmap="viridis")
    fig.colorbar(cs, ax=ax, label="f(θ) (tight solves)")
    for r in runs:
        p = np.asarray(r["theta_path"])
        ax.plot(p[:, 1], p[:, 0], "-", lw=0.8, label=r["label"])
    ax.plot(theta_star[1], theta_star[0], "r*", ms=12, label="grid optimum")
    ax.set_xlabel("θ1")
    ax.set_ylabel("θ0")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()  # room for the colour bar's label and the title
    return finish_figure(plt, fig, ax, path, None, len(runs) + 1, legend_loc="lower right")


def plot_filters(path, filters, weights, title):
    """Filters (``(K, s, s)``) as gray images sorted by decreasing weight, each titled with its weight."""
    plt = _plt()
    filt = np.asarray(filters)
    w = np.asarray(weights, dtype=float)
    k = filt.shape[0]
    cols = min(12, k)
    rows = int(math.ceil(k / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(0.8 * cols + 0.4, 0.9 * rows + 0.6), dpi=90, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for pos, i in enumerate(np.argsort(-w)):
        ax = axes.ravel()[pos]
        m = max(abs(filt[i].min()), abs(filt[i].max()), 1e-12)
        ax.imshow(filt[i], cmap="gray", vmin=-m, vmax=m, interpolation="nearest")
        ax.set_title(f"{w[i]:.2g}", fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return save_png(plt, fig, path)
