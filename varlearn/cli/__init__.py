"""The ``varlearn`` command line: ``learn``, ``denoise`` and ``info``.

``varlearn learn`` learns the parameters of a total-variation or
Field-of-Experts denoiser from image pairs (or clean images plus a noise level,
or built-in images) by bilevel optimisation, and writes a run folder::

    RUN/config.json     what was asked (data, model, θ0, method, options); written first (the run marker)
    RUN/checkpoint.npz  the optimiser state after every outer iteration (no pickle)
    RUN/history.csv     one row per outer iteration (varlearn.bilevel.HISTORY_FIELDS), written as the run goes
    RUN/params.json     the learned θ, the parameters in natural units, results, versions (varlearn.io)
    RUN/figures/*.png   loss, accuracy path, step sizes, PSNR per image, examples (FoE: filters)

Every file is written atomically (temporary file + rename), so a run killed
at any moment leaves complete files only; ``varlearn learn --resume RUN``
rebuilds the same problem from ``config.json`` and continues from the
checkpoint.  ``varlearn denoise`` applies a ``params.json`` to new images and
``varlearn info`` reports versions and backends.

Exit status: 0 finished (a warning line says when a run stopped on a limit or
accepted no step), 1 failure (an unexpected error, or a run that stopped on a
failure such as ``linesearch_failed``), 2 bad input (bad arguments,
unreadable or mismatched data, a bad checkpoint, run folder or params file, an
unusable GPU), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).  Errors are
reported as one line on stderr.

Modules: :mod:`.learn`, :mod:`.denoise`, :mod:`.info` (one per subcommand),
:mod:`.data` (learn's data options), :mod:`.final` (learn's final phase),
:mod:`.run` (the run folder), :mod:`.progress` (tqdm progress, the compile
notice), :mod:`.common` (argument types, threads, versions), :mod:`.errors`
(exit statuses, exceptions, one-line messages, SIGTERM).

Adding a subcommand
-------------------
Write ``varlearn/cli/NAME.py`` defining

* ``NAME`` (the subcommand), ``HELP`` (one line for ``varlearn --help``) and
  ``DESCRIPTION`` (for ``varlearn NAME --help``);
* ``add_arguments(parser)``: add the options to the argparse sub-parser
  (:func:`.common.add_threads_argument` and the types in :mod:`.common` are
  there to share);
* ``run(args) -> int``: do the work and return the exit status.  Raise
  :class:`.errors.CliError` for bad input (exit 2), :class:`.errors.Failure`
  for a failure (exit 1) and :class:`.errors.Interrupted` from an ``except
  KeyboardInterrupt`` to say what was kept (exit 130, or 143 for SIGTERM,
  which arrives as :class:`.errors.Terminated`, a ``KeyboardInterrupt``).
  ``ValueError`` subclasses of the library (``DataError``,
  ``CheckpointError``, ``varlearn.io.ParamsError``) are reported as bad input.

then add ``"NAME"`` to :data:`SUBCOMMANDS` below: that is the one registration line.
"""
from __future__ import annotations

import importlib
import os
import sys

from .. import __version__
from ..bilevel import CheckpointError
from ..datasets import DataError
from ..io import ParamsError
from .common import Parser
from .errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    CliError,
    Failure,
    Interrupted,
    Terminated,
    report,
    sigterm_as_interrupt,
)

__all__ = ["CliError", "SUBCOMMANDS", "build_parser", "main"]

#: the subcommand modules of ``varlearn/cli/``, in the order ``varlearn --help`` lists them
SUBCOMMANDS = ("learn", "denoise", "stn", "info")


def build_parser():
    """The argparse parser of the ``varlearn`` command (one sub-parser per :data:`SUBCOMMANDS` module)."""
    p = Parser(prog="varlearn", description="Learn the parameters of variational denoisers by bilevel optimisation.",
               epilog="Exit status: 0 success or a run stopped on a limit (with a warning), 1 failure, 2 bad input, "
                      "130 interrupted (Ctrl-C), 143 terminated (SIGTERM).")
    p.add_argument("--version", action="version", version=f"varlearn {__version__}")
    modules = [importlib.import_module(f"{__name__}.{name}") for name in SUBCOMMANDS]
    sub = p.add_subparsers(dest="command", metavar="{" + ",".join(m.NAME for m in modules) + "}", parser_class=Parser)
    for m in modules:
        sp = sub.add_parser(m.NAME, help=m.HELP, description=m.DESCRIPTION)
        m.add_arguments(sp)
        sp.set_defaults(func=m.run)
    return p


def main(argv=None) -> int:
    """Run the ``varlearn`` command; returns the exit status (never calls ``sys.exit``)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except CliError as exc:
        report(exc)
        return EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
    if getattr(args, "func", None) is None:
        report(f"choose a command: {', '.join(SUBCOMMANDS)} (see varlearn --help)")
        return EXIT_USAGE
    try:
        with sigterm_as_interrupt():
            return args.func(args)
    except (CliError, DataError, CheckpointError, ParamsError) as exc:
        report(exc)
        return EXIT_USAGE
    except Interrupted as exc:
        report(exc, prefix=exc.prefix)
        return exc.code
    except Terminated:
        report("stopped", prefix="terminated (SIGTERM)")
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        report("stopped", prefix="interrupted (Ctrl-C)")
        return EXIT_INTERRUPTED
    except Failure as exc:
        report(exc)
        return EXIT_FAILURE
    except Exception as exc:
        report(f"unexpected {type(exc).__name__}: {exc}")
        if os.environ.get("VARLEARN_DEBUG"):
            raise
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
