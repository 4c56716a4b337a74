"""Progress on stderr with tqdm (nothing at all with ``--quiet``).

On a terminal the bar is redrawn in place; when stderr is a file or a pipe,
tqdm still writes its carriage-return updates, at most one every
``mininterval`` seconds.  Messages printed while a bar is open go through
:meth:`Progress.write`, so they do not break the bar.
"""
from __future__ import annotations

import contextlib
import math
import sys

from tqdm import tqdm

from ..metrics import mean_psnr
from .errors import one_line


class Progress:
    """A tqdm bar on stderr over ``total`` steps, starting at ``initial``; disabled when not ``enabled``."""

    def __init__(self, total, label, enabled=True, initial=0, unit="it", mininterval=0.5):
        self.enabled = bool(enabled)
        self._bar = tqdm(total=total, initial=initial, desc=label, unit=unit, file=sys.stderr,
                         disable=not self.enabled, dynamic_ncols=True, mininterval=mininterval, leave=True)

    def update(self, k, text=""):
        """Show step ``k`` (absolute, not an increment) and ``text`` after the bar."""
        if not self.enabled:
            return
        self._bar.set_postfix_str(text, refresh=False)
        self._bar.update(k - self._bar.n)

    def write(self, message):
        """One line on stderr, above the bar (always shown: warnings are not progress)."""
        line = f"varlearn: {one_line(message)}"
        if self.enabled:
            self._bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self):
        self._bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


@contextlib.contextmanager
def compile_notice(enabled=True, progress=None):
    """Within the block, announce once on stderr that numba compiles its kernels (first run only).

    The line (:data:`varlearn._accel.COMPILE_NOTICE`) comes just before the
    first compilation of a varlearn kernel in this process, from the hook of
    :func:`varlearn._accel.on_compile`; nothing is shown when the kernels are
    already compiled (cached on disk) or when not ``enabled`` (``--quiet``).
    ``progress`` (a :class:`Progress`) keeps an open bar intact.
    """
    from .. import _accel

    if not enabled:
        yield
        return

    def show(stage, seconds):  # noqa: ARG001
        if stage == "start":
            line = _accel.COMPILE_NOTICE
            if progress is not None:
                progress.write(line)
            else:
                print(f"varlearn: {line}", file=sys.stderr, flush=True)

    remove = _accel.on_compile(show)
    try:
        yield
    finally:
        remove()


def _mean_psnr(x, clean):
    """Mean PSNR per image for the progress line (the convention of the final report: [0, 1], no clipping)."""
    if x is None or getattr(x, "shape", None) != getattr(clean, "shape", None):
        return math.nan  # no iterate, or that of a mini-batch
    try:
        return mean_psnr(x, clean)
    except ValueError:  # NaN pixels: the optimiser reports them itself
        return math.nan


def _num(row, key, spec):
    v = row.get(key)
    return "-" if v is None else format(v, spec)


def row_text(row, psnr=math.nan):
    """The text after the bar for one history row: full-batch methods and ISGD (epoch, image-iterations)."""
    if "epoch" in row:  # ISGD: the loss of the batch, the per-image accuracy, the cost in image-iterations
        return (f"epoch {row['epoch']} batch loss {_num(row, 'fun_batch', '.5g')} "
                f"eps/image {_num(row, 'eps_image', '.2e')} step {_num(row, 'step', '.2e')} "
                f"image-it {int(row.get('image_cost') or 0)}")
    acc = " (no step)" if row.get("accepted") is False else ""
    text = f"loss {row['fun']:.5g} eps {row['eps']:.2e} PSNR {psnr:.2f} dB cost {int(row['cost'])}"
    if row.get("image_cost") is not None:
        text += f" image-it {int(row['image_cost'])}"
    return text + acc


def progress_callback(bar, upper, history):
    """``callback(intermediate_result)`` of ``varlearn learn``: history.csv and the bar after every iteration."""

    def callback(r):
        rows = r.get("history")
        if rows is not None:
            history.update(rows)
        row = r.get("row") or (rows[-1] if rows else {})
        bar.update(r.nit, row_text(row, _mean_psnr(r.get("x"), upper.clean)))

    return callback
