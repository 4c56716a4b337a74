"""The stochastic side of ``varlearn learn``: ``--method isgd`` options and where the per-image work runs.

``--method isgd`` (inexact stochastic gradient descent over mini-batches of
images, :class:`varlearn.bilevel.ISGD`) takes ``--batch-size``,
``--optimizer sgd|adam``, ``--step-schedule``/``--q``,
``--eps-schedule``/``--p``, ``--epochs`` and ``--image-budget``; the first
step ``--step0`` and the per-image accuracy ``--eps0`` are shared with the
other methods.  Every value is checked here, flag by flag, before anything is
read or created; a bad one is a :class:`~.errors.CliError` naming the flag and
the value (exit status 2).

``--workers N`` (a ``LocalCluster`` of N single-threaded worker processes,
closed at the end) and ``--scheduler ADDRESS`` (a running Dask scheduler, e.g.
``tcp://host:8786`` or a scheduler file) choose where the per-image solves run,
for ``--method isgd`` and for every method whose options take an ``executor``
(MAID, fixed, HOAG then run their full batch on it; ``varlearn[distributed]``).
They are stored in ``config.json`` under ``"execution"``, apart from the options.  They are chosen anew at every
start: ``--resume`` runs in this process unless ``--workers`` or
``--scheduler`` is given again (the cluster of the first session may be
gone).  Where the work runs changes neither the problem nor the checkpoint;
the per-image tasks of a cluster certify each image on its own, so θ agrees
with an in-process run to the accuracy of the solves, not bit for bit.
"""
from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

from .common import positive_float
from .errors import CliError

#: ``--method isgd`` option -> flag (the option names of stochastic-spec §4.2)
ISGD_FLAGS = {"batch_size": "--batch-size", "optimizer": "--optimizer", "step_schedule": "--step-schedule",
              "q": "--q", "eps_schedule": "--eps-schedule", "p": "--p", "max_epochs": "--epochs",
              "image_budget": "--image-budget", "checkpoint_every": "--checkpoint-every"}
#: ``learn`` attribute -> isgd option, for the flags that only ``--method isgd`` takes
_ARG_TO_OPTION = {"batch_size": "batch_size", "optimizer": "optimizer", "step_schedule": "step_schedule",
                  "q": "q", "eps_schedule": "eps_schedule", "p": "p", "epochs": "max_epochs",
                  "image_budget": "image_budget", "checkpoint_every": "checkpoint_every"}
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "poly", "log")
#: images per step when --batch-size is not given (at most the number of images)
DEFAULT_BATCH = 8
#: epochs when no limit at all is given (--max-iter, --epochs, --image-budget, --budget, --time-limit)
DEFAULT_EPOCHS = 30
#: first Adam step in θ units (Adam's steps do not scale with the gradient, so no size scaling)
ADAM_STEP0 = 0.05
#: ``learn`` attributes whose options may change on ``--resume`` (limits, not the problem)
RESUME_OVERRIDES = ("epochs", "image_budget", "checkpoint_every")
EXECUTION_FLAGS = {"workers": "--workers", "scheduler": "--scheduler"}
#: how long to try to reach a --scheduler
CONNECT_TIMEOUT = "10s"


def add_arguments(lp):
    g = lp.add_argument_group("stochastic (--method isgd: mini-batches of images)")
    g.add_argument("--batch-size", type=int, metavar="B",
                   help=f"images per step (default min({DEFAULT_BATCH}, number of images))")
    g.add_argument("--optimizer", choices=OPTIMIZERS,
                   help=f"sgd (default: theta -= step * z) or adam (step0 default {ADAM_STEP0}, not size-scaled)")
    g.add_argument("--step-schedule", choices=SCHEDULES,
                   help="step size step_k: constant step0, poly step0*(k+1)^-q (default) or log step0*log(k+1)^-q")
    g.add_argument("--q", type=float, metavar="Q", help="exponent of the step schedule (default 0.5)")
    g.add_argument("--eps-schedule", choices=SCHEDULES,
                   help="per-image lower-level accuracy eps_k: constant, poly eps0*(k+1)^-p (default) or log")
    g.add_argument("--p", type=float, metavar="P", help="exponent of the accuracy schedule (default 0.5)")
    g.add_argument("--epochs", type=int, metavar="E",
                   help=f"stop after E passes over the images (default {DEFAULT_EPOCHS} when no other limit is "
                        f"given)")
    g.add_argument("--image-budget", type=float, metavar="N",
                   help="stop after N image-iterations (one FISTA or CG iteration on one image counts 1; also "
                        "for the other methods)")
    g.add_argument("--checkpoint-every", type=int, metavar="K",
                   help="save checkpoint.npz every K steps (default 10) and at the end")
    g = lp.add_argument_group("where the per-image solves run (varlearn[distributed]; default: in this process)")
    ex = g.add_mutually_exclusive_group()
    ex.add_argument("--workers", type=int, metavar="N",
                    help="start a Dask LocalCluster of N single-threaded worker processes (closed at the end)")
    ex.add_argument("--scheduler", metavar="ADDRESS",
                    help="use the running Dask cluster at ADDRESS (tcp://host:8786, or a scheduler JSON file)")


def given(args):
    """The isgd-only flags given on the command line (``learn`` attribute names)."""
    return [name for name in _ARG_TO_OPTION if getattr(args, name, None) is not None]


def flag(name):
    return "--" + name.replace("_", "-")


def refuse(args, method, method_options=()):
    """:class:`CliError` when isgd-only flags are given with another method.

    ``--image-budget`` is accepted by every method whose options
    (``method_options``) have ``image_budget``.
    """
    names = [n for n in given(args) if not (n == "image_budget" and "image_budget" in method_options)]
    if names:
        flags = ", ".join(flag(n) for n in names)
        verb = "applies" if len(names) == 1 else "apply"
        raise CliError(f"{flags} {verb} to --method isgd only (got --method {method})")


def positive_int(flagname, value):
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise CliError(f"{flagname} must be a positive integer, got {value}")
    return int(value)


def nonnegative_float(flagname, value):
    v = float(value)
    if not (v >= 0 and math.isfinite(v)):
        raise CliError(f"{flagname} must be a finite number >= 0, got {value}")
    return v


def options(args):
    """The isgd options given by the isgd-only flags, each checked (the rest are the method's defaults)."""
    opts = {}
    if args.batch_size is not None:
        opts["batch_size"] = positive_int("--batch-size", args.batch_size)
    for name in ("optimizer", "step_schedule", "eps_schedule"):
        if getattr(args, name) is not None:
            opts[name] = getattr(args, name)
    for name in ("q", "p"):
        if getattr(args, name) is not None:
            opts[name] = nonnegative_float(flag(name), getattr(args, name))
    return resume_overrides(args, opts)


def image_budget(args):
    """``--image-budget`` checked, or None."""
    if args.image_budget is None:
        return None
    return positive_float("--image-budget", args.image_budget, allow_inf=True)


def resume_overrides(args, opts):
    """Apply the limits that may change with ``--resume`` (``--epochs``, ``--image-budget``,
    ``--checkpoint-every``) to ``opts``, each checked; returns ``opts``."""
    if args.epochs is not None:
        opts["max_epochs"] = positive_int("--epochs", args.epochs)
    if args.image_budget is not None:
        opts["image_budget"] = image_budget(args)
    if args.checkpoint_every is not None:
        opts["checkpoint_every"] = positive_int("--checkpoint-every", args.checkpoint_every)
    return opts


def fit_to_data(opts, n_images):
    """The batch size against the number of images: default ``min(8, N)``; larger than N is refused."""
    b = opts.setdefault("batch_size", min(DEFAULT_BATCH, n_images))
    if b > n_images:
        raise CliError(f"--batch-size {b} is larger than the number of training images ({n_images})")
    return opts


def steps_per_epoch(opts, n_images):
    return math.ceil(n_images / max(1, int(opts.get("batch_size") or 1)))


# --------------------------------------------------------------------------- where the work runs


def execution(args):
    """``{"workers": N or None, "scheduler": ADDRESS or None}`` from the flags, checked."""
    out = {"workers": None, "scheduler": None}
    if args.workers is not None:
        out["workers"] = positive_int("--workers", args.workers)
    if args.scheduler is not None:
        text = str(args.scheduler).strip()
        if not text:
            raise CliError("--scheduler needs an address such as tcp://host:8786 or a scheduler file")
        if "://" not in text and not Path(text).expanduser().is_file():
            raise CliError(f"--scheduler must be an address such as tcp://host:8786 or an existing scheduler "
                           f"file, got {args.scheduler!r}")
        out["scheduler"] = text
    return out


def check(exe, method, method_options):
    """Refuse ``--workers``/``--scheduler`` where they cannot work: no Dask, or a method without an executor."""
    used = [flag for key, flag in EXECUTION_FLAGS.items() if exe.get(key)]
    if not used:
        return
    if method != "isgd" and "executor" not in method_options:
        raise CliError(f"{used[0]} applies to --method isgd (got --method {method}, which runs in this process)")
    distributed = _import_distributed(used[0])
    if exe.get("scheduler"):  # reach the scheduler now, before the run folder is created
        _connect(distributed, exe["scheduler"]).close()


def _connect(distributed, address, timeout=CONNECT_TIMEOUT):
    try:
        if "://" in address:
            return distributed.Client(address, timeout=timeout)
        return distributed.Client(scheduler_file=address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        raise CliError(f"--scheduler {address}: cannot connect: {exc}") from exc


def describe(exe):
    if exe.get("workers"):
        return f"on a Dask LocalCluster of {exe['workers']} workers"
    if exe.get("scheduler"):
        return f"on the Dask cluster at {exe['scheduler']}"
    return "in this process"


def _import_distributed(flagname):
    try:
        import distributed
    except ImportError as exc:
        raise CliError(f"{flagname} needs Dask: pip install \"varlearn[distributed]\" ({exc})") from None
    return distributed


def _executor_class():
    try:
        from ..executors import DaskExecutor
    except ImportError:
        from ..distributed import DaskExecutor
    return DaskExecutor


@contextlib.contextmanager
def executor(exe):
    """Yield the ``executor`` option for ``exe`` (``None``: in process); clients opened here are closed after."""
    if not exe.get("workers") and not exe.get("scheduler"):
        yield None
        return
    flagname = "--workers" if exe.get("workers") else "--scheduler"
    distributed = _import_distributed(flagname)
    cls = _executor_class()
    with contextlib.ExitStack() as stack:
        # Dask's own log lines (a nanny killing its worker process at shutdown...) are not the user's business here
        dask_log = logging.getLogger("distributed")
        stack.callback(dask_log.setLevel, dask_log.level)
        dask_log.setLevel(logging.ERROR)
        if exe.get("workers"):
            # a free port for the dashboard: no warning when another cluster holds the default one
            ex = cls(n_workers=int(exe["workers"]), cluster_options={"dashboard_address": ":0"})
        else:
            client = _connect(distributed, exe["scheduler"])
            stack.callback(client.close)
            ex = cls(client=client)
        if hasattr(ex, "close"):
            stack.callback(ex.close)
        yield ex
