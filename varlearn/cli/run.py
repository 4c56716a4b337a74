"""The run folder of ``varlearn learn``: create, refuse, ``--overwrite``, resume, ``config.json``, history.

A folder is a *varlearn run* when it holds a ``config.json`` whose ``kind`` is
``"varlearn-run-config"`` (written first by ``varlearn learn``).
``--overwrite`` only ever deletes the files of such a folder; any other
non-empty folder is refused.
"""
from __future__ import annotations

import contextlib
import csv
import datetime
import io
import json
import time
from pathlib import Path

from .._io import atomic_write_text, dump_json
from ..bilevel import HISTORY_FIELDS, history_to_csv
from ..io import PARAMS_FILE, read_json
from .errors import CliError

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
CHECKPOINT_FILE = "checkpoint.npz"
FIGURES_DIR = "figures"
FIGURE_FILES = ("loss.png", "accuracy.png", "steps.png", "psnr.png", "examples.png", "filters.png")
RUN_FILES = (CONFIG_FILE, PARAMS_FILE, HISTORY_FILE, CHECKPOINT_FILE)
CONFIG_KIND = "varlearn-run-config"
FORMAT_VERSION = 1


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def _is_nonempty_dir(p: Path) -> bool:
    return p.is_dir() and any(p.iterdir())


def is_varlearn_run(run: Path) -> bool:
    """Whether ``run`` holds a ``config.json`` written by ``varlearn learn``."""
    path = Path(run) / CONFIG_FILE
    if not path.is_file():
        return False
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and cfg.get("kind") == CONFIG_KIND


def remove_stale_temps(run: Path):
    """Delete temporary files that an interrupted atomic write left behind (``.NAME.*.tmp``)."""
    for folder in (run, run / FIGURES_DIR):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file():
                with contextlib.suppress(OSError):
                    entry.unlink()


def _clear_run(run: Path):
    """Delete the files varlearn writes in a run folder; other files are kept."""
    for name in RUN_FILES[1:] + (CONFIG_FILE,):  # config.json (the run marker) last
        with contextlib.suppress(FileNotFoundError):
            (run / name).unlink()
    fig = run / FIGURES_DIR
    if fig.is_dir():
        for name in FIGURE_FILES:
            with contextlib.suppress(FileNotFoundError):
                (fig / name).unlink()
        with contextlib.suppress(OSError):
            fig.rmdir()
    remove_stale_temps(run)


def check_out(out, overwrite) -> Path:
    """The ``--out`` folder, checked (nothing is created or deleted yet)."""
    if out is None:
        raise CliError("learn needs --out RUN (a new run folder) or --resume RUN")
    run = Path(out).expanduser()
    if run.exists() and not run.is_dir():
        raise CliError(f"--out: {run} exists and is not a folder")
    if _is_nonempty_dir(run):
        if not overwrite:
            raise CliError(f"--out: {run} exists and is not empty; use --resume {run} to continue that run, "
                           f"--overwrite to replace it, or another folder")
        if not is_varlearn_run(run):
            raise CliError(f"--overwrite: {run} is not a varlearn run folder (it has no {CONFIG_FILE} written "
                           f"by varlearn learn), so nothing in it is deleted; choose a new or empty --out")
    return run


def create_out(run: Path, overwrite: bool):
    """Create the run folder; with ``overwrite``, first clear the varlearn run it holds."""
    if overwrite and _is_nonempty_dir(run):
        if not is_varlearn_run(run):  # checked again right before deleting anything
            raise CliError(f"--overwrite: {run} is not a varlearn run folder; nothing in it is deleted")
        _clear_run(run)
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"--out: cannot create {run}: {exc}") from exc


def write_config(run: Path, cfg: dict):
    dump_json(run / CONFIG_FILE, cfg, indent=2)


def load_config(run: Path) -> dict:
    """The ``config.json`` of the run folder ``run`` (for ``--resume``), checked."""
    if not run.exists():
        raise CliError(f"--resume: no such folder: {run}")
    if not run.is_dir():
        raise CliError(f"--resume: {run} is not a folder")
    path = run / CONFIG_FILE
    if not path.is_file():
        raise CliError(f"--resume: {run} has no {CONFIG_FILE}: not a varlearn run folder")
    cfg = read_json(path, "--resume", error=CliError)
    if cfg.get("kind") != CONFIG_KIND or cfg.get("format_version") != FORMAT_VERSION:
        raise CliError(f"--resume: {path} is not a varlearn run configuration (version {FORMAT_VERSION})")
    for key in ("data", "model", "method", "options", "theta0", "dtype", "backend"):
        if key not in cfg:
            raise CliError(f"--resume: {path} lacks the entry {key!r}")
    return cfg


#: option names of config.json files written before docs/developer.md's naming table -> the names now
RENAMED_OPTIONS = {"max_iter": "maxiter"}


def rename_options(cfg: dict):
    """Rename, in place, the options of a ``config.json`` written before the naming table (``max_iter``)."""
    opts = cfg.get("options") or {}
    for old, new in RENAMED_OPTIONS.items():
        if old in opts:
            opts.setdefault(new, opts.pop(old))
    return cfg


def history_csv(rows, path):
    """Write history rows as CSV, atomically.

    Rows of the full-batch methods have the columns :data:`HISTORY_FIELDS`
    (:func:`varlearn.bilevel.history_to_csv`); rows with other keys (ISGD's
    ``epoch``, ``fun_batch``, ``image_cost``...) get every key that occurs, in
    the order first seen.
    """
    keys = list(dict.fromkeys(k for row in rows for k in row))
    if set(keys) <= set(HISTORY_FIELDS):
        return history_to_csv(rows, path)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in keys})
    atomic_write_text(path, buf.getvalue())
    return buf.getvalue()


class HistoryWriter:
    """Writes ``history.csv`` (atomically) while the run goes.

    :meth:`update` rewrites the file with the rows so far when ``min_interval``
    seconds have passed since the last write (the first ``eager`` updates are
    always written); :meth:`write` writes unconditionally.  A run killed at
    any moment leaves a complete ``history.csv`` at most ``min_interval``
    seconds behind the checkpoint.
    """

    def __init__(self, path: Path, min_interval=2.0, eager=10):
        self.path = Path(path)
        self.min_interval = float(min_interval)
        self.eager = int(eager)
        self.rows = None
        self._n_updates = 0
        self._last = -float("inf")

    def update(self, rows):
        self.rows = rows
        self._n_updates += 1
        if self._n_updates <= self.eager or time.monotonic() - self._last >= self.min_interval:
            self.write()

    def write(self, rows=None):
        if rows is not None:
            self.rows = rows
        if self.rows is None:
            return
        history_csv(self.rows, self.path)
        self._last = time.monotonic()
