"""Figures of a learning run (used by ``varlearn learn``).

Every function takes plain data (history rows as written by
:func:`varlearn.minimize_bilevel`, NumPy arrays, lists) and a path, draws one
figure with Matplotlib's Agg canvas (no display and no global backend switch
is needed: the figures are created with :class:`matplotlib.figure.Figure`
and rendered by :class:`~matplotlib.backends.backend_agg.FigureCanvasAgg`), and
writes a PNG atomically (rendered into memory, then a temporary file in the
same folder renamed into place).  Each returns the path written.
"""
from __future__ import annotations

import io
import math

import numpy as np

from ._io import atomic_write_bytes
from .metrics import psnr

__all__ = [
    "plot_accuracy",
    "plot_examples",
    "plot_filters",
    "plot_loss",
    "plot_psnr",
    "plot_steps",
    "save_figure",
]

_DPI = 100


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _margins(fig, left, right, bottom, top, wspace=0.2, hspace=0.2):
    """Fixed margins in inches (``wspace``/``hspace`` as fractions of an axes), instead of a tight layout.

    Measuring every text for a tight layout costs about as much as drawing the figure.
    """
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h,
                        wspace=wspace, hspace=hspace)


def save_figure(fig, path):
    """Render ``fig`` as PNG into memory and write it atomically to ``path``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _column(history, name):
    out = []
    for row in history:
        v = row.get(name)
        try:
            out.append(math.nan if v is None or v == "" else float(v))
        except (TypeError, ValueError):
            out.append(math.nan)
    return np.asarray(out, dtype=float)


def _accepted(history):
    return [row.get("accepted") for row in history]


def _positive(a):
    """NaN where ``a`` is not positive (for log axes)."""
    a = np.asarray(a, dtype=float).copy()
    a[~(a > 0)] = np.nan
    return a


def plot_loss(history, path, title="Upper-level loss"):
    """Upper loss against cost (lower-level + CG iterations) and against wall time.

    The shaded band shows the certified lower and upper bounds of the loss.
    """
    cost = _column(history, "cost")
    t = _column(history, "wall_time")
    if not np.isfinite(t).any():  # histories written before the rename of time to wall_time
        t = _column(history, "time")
    fun = _column(history, "fun")
    lo = _column(history, "fun_lower")
    hi = _column(history, "fun_upper")
    fig = _figure(10, 4)
    axes = fig.subplots(1, 2)
    for ax, xs, label in ((axes[0], cost, "cost (lower-level + CG iterations)"), (axes[1], t, "wall time (s)")):
        ax.plot(xs, fun, "o-", ms=3, label="loss")
        band = np.isfinite(lo) & np.isfinite(hi)
        if band.any():
            ax.fill_between(xs, _positive(lo), _positive(hi), where=band, alpha=0.25, label="certified bounds")
        if np.any(fun > 0):
            ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("upper loss")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper right")
    fig.suptitle(title)
    _margins(fig, left=1.0, right=0.15, bottom=0.55, top=0.55, wspace=0.3)
    return save_figure(fig, path)


def _finish_axes(fig, ax, path, xlabel, ylabel, title):
    """Labels, grid and legend of a one-axes figure; then lay it out and write it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    _margins(fig, left=0.95, right=0.15, bottom=0.55, top=0.35)
    return save_figure(fig, path)


def plot_accuracy(history, path):
    """The accuracies ε (lower level) and δ (CG residual) per outer iteration."""
    it = _column(history, "iter")
    fig = _figure(6, 4)
    ax = fig.subplots()
    ax.plot(it, _positive(_column(history, "eps")), "o-", ms=3, label="ε (lower-level accuracy)")
    ax.plot(it, _positive(_column(history, "delta")), "s--", ms=3, label="δ (CG residual)")
    ax.set_yscale("log")
    return _finish_axes(fig, ax, path, "outer iteration", "tolerance", "Accuracy path")


def plot_steps(history, path):
    """Step sizes per outer iteration; rejected iterations (no accepted step) are marked."""
    it = _column(history, "iter")
    step = _positive(_column(history, "step"))
    acc = _accepted(history)
    fig = _figure(6, 4)
    ax = fig.subplots()
    ax.plot(it, step, "o-", ms=3, label="step size")
    rejected = np.array([a is False or a == "False" for a in acc])
    if rejected.any():
        ax.plot(it[rejected], np.where(np.isfinite(step[rejected]), step[rejected], np.nanmin(step) if
                np.isfinite(step).any() else 1.0), "rx", ms=8, label="no step accepted")
    if np.isfinite(step).any():
        ax.set_yscale("log")
    return _finish_axes(fig, ax, path, "outer iteration", "step size α", "Step sizes")


def plot_psnr(names, series, path):
    """Grouped bars of PSNR per image.

    ``series`` maps a label (e.g. ``"noisy"``, ``"initial θ"``, ``"learned θ"``)
    to one value per name (dB).
    """
    names = [str(n) for n in names]
    n = len(names)
    k = max(1, len(series))
    width = 0.8 / k
    fig = _figure(max(6, 0.9 * n + 2), 4)
    ax = fig.subplots()
    x = np.arange(n)
    for i, (label, values) in enumerate(series.items()):
        vals = np.asarray(values, dtype=float)
        mean = float(np.mean(vals)) if vals.size else math.nan
        ax.bar(x + (i - (k - 1) / 2) * width, vals, width, label=f"{label} (mean {mean:.2f} dB)")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right")
    top = max([float(np.nanmax(np.asarray(v, dtype=float))) for v in series.values() if len(v)] + [1.0])
    ax.set_ylim(0, 1.35 * top)
    ax.set_ylabel("PSNR (dB)")
    ax.set_title("PSNR per image")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper center", ncol=min(k, 3), fontsize=7)
    _margins(fig, left=0.6, right=0.1, bottom=0.9, top=0.35)
    return save_figure(fig, path)


def plot_examples(clean, noisy, denoised, names, path, max_images=4):
    """Clean, noisy and denoised versions of the first ``max_images`` images (rows: images)."""
    clean = np.asarray(clean)
    noisy = np.asarray(noisy)
    denoised = np.asarray(denoised)
    n = min(max_images, clean.shape[0])
    fig = _figure(9, 3 * n)
    axes = np.atleast_2d(fig.subplots(n, 3, squeeze=False))
    for i in range(n):
        panels = (
            ("clean", clean[i]),
            (f"noisy ({psnr(noisy[i], clean[i]):.2f} dB)", noisy[i]),
            (f"denoised ({psnr(denoised[i], clean[i]):.2f} dB)", denoised[i]),
        )
        for j, (label, img) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(np.clip(img, 0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"{names[i]}: {label}" if j == 0 else label, fontsize=9)
            ax.axis("off")
    _margins(fig, left=0.05, right=0.05, bottom=0.05, top=0.3, wspace=0.05, hspace=0.12)
    return save_figure(fig, path)


def plot_filters(filters, path, weights=None, smoothings=None):
    """A grid of Field-of-Experts filters (each scaled to its own range).

    ``weights`` (e^{θ0+θ_i}) and ``smoothings`` (ν_i), when given, label the
    filters; the filters are shown in order of decreasing weight.
    """
    filters = np.asarray(filters, dtype=float)
    k = filters.shape[0]
    order = np.arange(k)
    if weights is not None:
        order = np.argsort(-np.asarray(weights, dtype=float), kind="stable")
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    fig = _figure(1.6 * cols, 1.7 * rows + 0.4)
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for slot, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if slot >= k:
            continue
        i = int(order[slot])
        f = filters[i]
        m = float(np.max(np.abs(f))) or 1.0
        ax.imshow(f, cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest")
        label = f"#{i}"
        if weights is not None:
            label += f" w={float(weights[i]):.2g}"
        if smoothings is not None:
            label += f"\nν={float(smoothings[i]):.2g}"
        ax.set_title(label, fontsize=7)
    fig.suptitle("Learned filters (by decreasing weight)")
    _margins(fig, left=0.05, right=0.05, bottom=0.05, top=0.9, wspace=0.1, hspace=0.45)
    return save_figure(fig, path)
