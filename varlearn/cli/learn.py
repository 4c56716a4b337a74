"""``varlearn learn``: learn TV or Field-of-Experts parameters and write a run folder."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .. import bilevel, io
from .._io import from_json_value
from ..backend import to_device
from ..bilevel import CheckpointError, load_checkpoint, minimize_bilevel, resolve_options
from ..problems import DenoisingProblem, SquaredError
from . import data, final, stochastic
from . import run as runfolder
from .common import (
    add_threads_argument,
    check_backend,
    input_errors,
    positive_float,
    thread_limit,
    verbose_logging,
    versions,
)
from .errors import CliError, Interrupted, note
from .progress import Progress, compile_notice, progress_callback

NAME = "learn"
HELP = "learn TV or Field-of-Experts parameters from image pairs"
DESCRIPTION = (
    "Learn denoising parameters and write a run folder (config.json, checkpoint.npz, history.csv, params.json, "
    "figures/). Data: --clean DIR --noisy DIR (pairs matched by file stem), --clean DIR --sigma S (noise added "
    "with --seed), or, with neither, built-in images "
    f"({', '.join(data.DEFAULT_BUILTIN)} at {data.DEFAULT_DATASET_SIZE}x{data.DEFAULT_DATASET_SIZE}, "
    f"sigma {data.DEFAULT_SIGMA}). Exit status: 0 finished (a warning line says when it stopped on a limit or "
    "accepted no step), 1 failure, 2 bad input, 130 Ctrl-C, 143 SIGTERM (the checkpoint is kept: --resume)."
)

DEFAULT_MAX_ITER = 30
METHODS = ("maid", "hoag", "fixed", "isgd")
#: the name of the outer-iteration limit among the methods' options (docs/developer.md's naming table)
MAXITER = "maxiter"
#: first step size of MAID / fixed / ISGD-with-SGD per model for 96x96 images (MAID adapts it)
DEFAULT_STEP0 = {"tv": 0.05, "foe": 0.005}
#: ``learn`` options that may be given again with ``--resume`` (they do not change the problem)
RESUME_OVERRIDES = ("max_iter", "budget", "time_limit", "checkpoint_interval", "backend",
                    *stochastic.RESUME_OVERRIDES, *stochastic.EXECUTION_FLAGS)
_OPTION_FLAGS = {MAXITER: "--max-iter", "eps0": "--eps0", "delta0": "--delta0", "step0": "--step0",
                 "budget": "--budget", "time_limit": "--time-limit", "seed": "--seed",
                 "checkpoint_interval": "--checkpoint-interval", **stochastic.ISGD_FLAGS}


def add_arguments(lp):
    data.add_arguments(lp)
    foe = io.get_model("foe").defaults
    g = lp.add_argument_group("model")
    g.add_argument("--model", choices=("tv", "foe"), help="total variation (default) or Field of Experts")
    iso = g.add_mutually_exclusive_group()
    iso.add_argument("--isotropic", dest="isotropic", action="store_true", default=None,
                     help="TV: isotropic (default)")
    iso.add_argument("--anisotropic", dest="isotropic", action="store_false", help="TV: anisotropic (the MAID paper)")
    g.add_argument("--filters", type=int, metavar="K", help=f"FoE: number of filters (default {foe['n_filters']})")
    g.add_argument("--filter-size", type=int, metavar="S", help=f"FoE: odd filter size (default {foe['size']})")

    g = lp.add_argument_group("optimisation")
    g.add_argument("--method", choices=METHODS,
                   help="upper-level method (default maid; isgd: mini-batches of images, see below)")
    g.add_argument("--max-iter", type=int, metavar="N",
                   help=f"outer iterations (default {DEFAULT_MAX_ITER}; isgd: steps, no limit by default)")
    g.add_argument("--eps0", type=float, metavar="E",
                   help="initial lower-level accuracy (default 0.1; fixed: 1e-4; isgd: per image, "
                        "0.01*sqrt(H*W))")
    g.add_argument("--delta0", type=float, metavar="D",
                   help="initial CG residual tolerance (maid/fixed; default 0.1; fixed: 1e-4)")
    g.add_argument("--step0", type=float, metavar="A",
                   help=f"initial step size (default for HxW images: tv {DEFAULT_STEP0['tv']}*9216/(H*W), "
                        f"foe {DEFAULT_STEP0['foe']}*9216/(H*W), also for isgd with sgd; isgd with adam: "
                        f"{stochastic.ADAM_STEP0}; hoag: 1/L from the first hypergradient)")
    g.add_argument("--budget", type=float, metavar="N", help="stop after N lower-level + CG iterations in total")
    g.add_argument("--time-limit", type=float, metavar="SEC", help="stop after SEC seconds of optimisation in total")
    g.add_argument("--checkpoint-interval", type=float, metavar="SEC",
                   help="save checkpoint.npz after an outer iteration only when SEC seconds have passed since the "
                        "last save (default 5; 0: after every iteration); it is always saved at the end")
    g.add_argument("--backend", choices=("numpy", "cupy"), help="array backend (default numpy; cupy needs a GPU)")
    g.add_argument("--dtype", choices=("float32", "float64"), help="working precision (default float64)")
    add_threads_argument(g)
    stochastic.add_arguments(lp)

    g = lp.add_argument_group("run folder")
    g.add_argument("--out", metavar="RUN", help="run folder to create (must be new or empty)")
    g.add_argument("--resume", metavar="RUN",
                   help="continue the run in RUN from its checkpoint, with its saved configuration")
    g.add_argument("--overwrite", action="store_true",
                   help="reuse a non-empty --out that holds a varlearn run, deleting that run's files")
    g.add_argument("--no-figures", dest="figures", action="store_false",
                   help="do not draw figures/ (drawing them takes a few seconds)")
    g.add_argument("--quiet", action="store_true", help="no progress bar or summary (warnings are still shown)")
    g.add_argument("--verbose", action="store_true", help="log the optimiser's messages on stderr")


# --------------------------------------------------------------------------- model and options


def _model_config(args) -> dict:
    model = args.model or "tv"
    if model == "tv":
        if args.filters is not None or args.filter_size is not None:
            raise CliError("--filters and --filter-size apply to --model foe only")
        config = {} if args.isotropic is None else {"isotropic": bool(args.isotropic)}
    else:
        if args.isotropic is not None:
            raise CliError("--isotropic/--anisotropic apply to --model tv only")
        if args.filters is not None and args.filters < 1:
            raise CliError(f"--filters must be a positive integer, got {args.filters}")
        if args.filter_size is not None and (args.filter_size < 1 or args.filter_size % 2 != 1):
            raise CliError(f"--filter-size must be a positive odd integer, got {args.filter_size}")
        config = {k: v for k, v in (("n_filters", args.filters), ("size", args.filter_size)) if v is not None}
    return {"model": model, **io.model_config(model, config)}


def _split_model(mc):
    return mc["model"], {k: v for k, v in mc.items() if k != "model"}


def _options(args, method, model, seed) -> dict:
    opts = {"seed": int(seed)}
    if method == "isgd":
        opts.update(stochastic.options(args))
        limits = (args.max_iter, args.epochs, args.image_budget, args.budget, args.time_limit)
        if all(v is None for v in limits):
            opts["max_epochs"] = stochastic.DEFAULT_EPOCHS
        if args.checkpoint_interval is not None:
            raise CliError("--checkpoint-interval does not apply to --method isgd (it saves checkpoint.npz every "
                           "--checkpoint-every K steps, default 10, and at the end)")
    else:
        stochastic.refuse(args, method, bilevel.DEFAULTS[method])
        if args.image_budget is not None:
            opts["image_budget"] = stochastic.image_budget(args)
    if args.max_iter is not None or method != "isgd":
        opts[MAXITER] = DEFAULT_MAX_ITER if args.max_iter is None else args.max_iter
        if opts[MAXITER] < 1:
            raise CliError(f"--max-iter must be a positive integer, got {opts[MAXITER]}")
    if method in ("maid", "fixed") or (method == "isgd" and opts.get("optimizer") != "adam"):
        opts["step0"] = DEFAULT_STEP0[model]  # scaled to the image size by _default_step0 once the data are read
    elif method == "isgd":
        opts["step0"] = stochastic.ADAM_STEP0
    if method == "fixed":
        opts["eps0"] = opts["delta0"] = 1e-4
    for name in ("eps0", "delta0", "step0"):
        v = getattr(args, name)
        if v is not None:
            if method == "hoag" and name == "delta0":
                raise CliError("--delta0 does not apply to --method hoag (it uses one tolerance, --eps0)")
            if method == "isgd" and name == "delta0":
                raise CliError("--delta0 does not apply to --method isgd (its CG tolerance follows the accuracy "
                               "schedule: delta_k = eps_k)")
            opts[name] = positive_float(_OPTION_FLAGS[name], v)
    if args.budget is not None:
        opts["budget"] = positive_float("--budget", args.budget, allow_inf=True)
    if args.time_limit is not None:
        opts["time_limit"] = positive_float("--time-limit", args.time_limit, allow_inf=True)
    if args.checkpoint_interval is not None:
        opts["checkpoint_interval"] = _interval(args.checkpoint_interval)
    _check_options(method, opts)
    return opts


def _interval(value):
    if not (value >= 0 and math.isfinite(value)):
        raise CliError(f"--checkpoint-interval must be a number of seconds >= 0, got {value}")
    return float(value)


def _default_step0(model, shape):
    """First step size: ``DEFAULT_STEP0[model]`` for 96x96 images, scaled by 96*96/(H*W).

    The upper loss is a sum over the pixels of an image (averaged over the
    images), so its gradient in θ grows with the pixel count; this keeps the
    first θ update of similar size for every image size (MAID then adapts it).
    """
    h, w = shape[-2:]
    return float(DEFAULT_STEP0[model] * (data.DEFAULT_DATASET_SIZE ** 2) / (h * w))


def _validate(method, opts):
    """The library's own check of the options (``ValueError`` naming the option)."""
    if method in bilevel.DEFAULTS:
        resolve_options(method, opts)
    elif method == "isgd" and hasattr(bilevel, "ISGD"):
        bilevel.ISGD(**opts)


def _check_options(method, opts):
    try:
        _validate(method, opts)
    except ValueError as exc:
        msg = str(exc)
        for name, flag in _OPTION_FLAGS.items():
            msg = msg.replace(f"option {name!r}", f"option {name!r} ({flag})")
        raise CliError(msg) from exc


def check_image_size(mc, shape, where):
    model, config = _split_model(mc)
    h, w = shape[-2:]
    need = io.min_image_size(model, config)
    if h < need or w < need:
        raise CliError(f"{where}: images of {h}x{w} are too small for this model (need at least {need}x{need})")


# --------------------------------------------------------------------------- preparation


def _given_learn_options(args):
    names = ("clean", "noisy", "sigma", "dataset", "images", "data_dir", "size", "crop", "bit_depth", "seed", "model",
             "isotropic", "filters", "filter_size", "method", "max_iter", "eps0", "delta0", "step0", "budget",
             "time_limit", "checkpoint_interval", "backend", "dtype", "out", *stochastic.given(args),
             *stochastic.EXECUTION_FLAGS)
    return list(dict.fromkeys(n for n in names if getattr(args, n) is not None))


def _resume_config(args):
    run = Path(args.resume).expanduser()
    cfg = runfolder.load_config(run)
    given = [n for n in _given_learn_options(args) if n not in RESUME_OVERRIDES]
    if args.out is not None and Path(args.out).expanduser().resolve() == run.resolve():
        given.remove("out")
    if given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise CliError(f"--resume: {flags} cannot be changed when resuming (the run's {runfolder.CONFIG_FILE} "
                       f"fixes them); only --max-iter, --budget, --time-limit, --checkpoint-interval, --backend "
                       f"and, for isgd, --epochs, --image-budget, --checkpoint-every, --workers, --scheduler may be "
                       f"given")
    if args.overwrite:
        raise CliError("--resume and --overwrite exclude each other")
    runfolder.remove_stale_temps(run)
    runfolder.rename_options(cfg)
    if cfg["method"] != "isgd":
        stochastic.refuse(args, cfg["method"], bilevel.DEFAULTS.get(cfg["method"], {}))
    elif args.checkpoint_interval is not None:
        raise CliError("--checkpoint-interval does not apply to --method isgd (use --checkpoint-every K steps)")
    stochastic.resume_overrides(args, cfg["options"])
    cfg["execution"] = stochastic.execution(args)  # chosen anew at every start
    for name in ("max_iter", "budget", "time_limit", "checkpoint_interval"):
        v = getattr(args, name)
        if v is not None:
            if name == "max_iter":
                if v < 1:
                    raise CliError(f"--max-iter must be a positive integer, got {v}")
                cfg["options"][MAXITER] = int(v)
            elif name == "checkpoint_interval":
                cfg["options"][name] = _interval(v)
            else:
                cfg["options"][name] = positive_float(_OPTION_FLAGS[name], v, allow_inf=True)
    _check_options(cfg["method"], cfg["options"])
    return run, cfg


def _new_config(args):
    data_cfg = data.data_config(args)
    mc = _model_config(args)
    method = args.method or "maid"
    opts = _options(args, method, mc["model"], data_cfg["seed"])
    exe = stochastic.execution(args)
    backend = args.backend or "numpy"
    check_backend(backend)
    run = runfolder.check_out(args.out, args.overwrite)
    cfg = {"kind": runfolder.CONFIG_KIND, "format_version": runfolder.FORMAT_VERSION, "data": data_cfg,
           "model": mc, "method": method, "options": opts, "execution": exe, "backend": backend,
           "dtype": args.dtype or "float64", "theta0": None}
    return run, cfg


def prepare(args):
    """Everything before the optimisation; every problem found here is bad input (exit 2)."""
    new = args.resume is None
    run, cfg = _new_config(args) if new else _resume_config(args)
    backend = args.backend or cfg["backend"]
    check_backend(backend)
    stochastic.check(cfg.get("execution") or {}, cfg["method"], bilevel.DEFAULTS.get(cfg["method"], {}))
    mc = cfg["model"]
    seed = int(cfg["data"].get("seed", data.DEFAULT_SEED))
    clean, noisy, names = data.load_data(cfg["data"])
    check_image_size(mc, clean.shape, "data")
    data_desc = data.describe_data(cfg["data"], clean, names)
    if not new:
        saved = cfg.get("data_loaded", {})
        if saved and (saved.get("names") != data_desc["names"] or saved.get("shape") != data_desc["shape"]):
            raise CliError(f"--resume: the data changed since the run started (now {len(names)} images "
                           f"{data_desc['shape']}, was {len(saved.get('names', []))} images {saved.get('shape')})")
    model, config = _split_model(mc)
    reg = io.build_model(model, config, seed=seed)
    if new:
        if cfg["method"] == "isgd":
            stochastic.fit_to_data(cfg["options"], clean.shape[0])
        if args.step0 is None and "step0" in cfg["options"] and cfg["options"].get("optimizer") != "adam":
            cfg["options"]["step0"] = _default_step0(model, clean.shape)
        _check_options(cfg["method"], cfg["options"])
        cfg["theta0"] = io.initial_theta(model, reg, config).tolist()
        cfg["data_loaded"] = {"names": data_desc["names"], "shape": data_desc["shape"]}
        cfg["created"] = runfolder.now()
        cfg["versions"] = versions(include_cupy=backend == "cupy")
    theta0 = np.asarray(from_json_value(cfg["theta0"]), dtype=np.float64)
    if theta0.ndim != 1 or theta0.shape[0] != reg.n_params or not np.all(np.isfinite(theta0)):
        raise CliError(f"{runfolder.CONFIG_FILE}: theta0 must hold {reg.n_params} finite numbers for this model")
    dtype = np.dtype(cfg["dtype"])
    problem = DenoisingProblem(to_device(noisy.astype(dtype), backend), reg)
    upper = SquaredError(to_device(clean.astype(dtype), backend))
    ckpt = run / runfolder.CHECKPOINT_FILE
    resume_from, history = None, None
    if not new and ckpt.exists():
        meta, _ = load_checkpoint(ckpt)  # CheckpointError (exit 2) when truncated or corrupted
        if meta.get("method") != cfg["method"]:
            raise CheckpointError(f"checkpoint {ckpt} is a {meta.get('method')!r} run but {runfolder.CONFIG_FILE} "
                                  f"says {cfg['method']!r}")
        resume_from, history = ckpt, meta.get("history")
    if new:
        runfolder.create_out(run, args.overwrite)
        runfolder.write_config(run, cfg)
    elif any(getattr(args, n) is not None for n in RESUME_OVERRIDES if n != "backend"):
        # new limits: the next --resume must use them too
        cfg.setdefault("resumed_with", []).append(
            {n: getattr(args, n) for n in RESUME_OVERRIDES if getattr(args, n) is not None} | {"at": runfolder.now()})
        runfolder.write_config(run, cfg)
    return {"run": run, "cfg": cfg, "reg": reg, "problem": problem, "upper": upper, "theta0": theta0,
            "clean": clean, "noisy": noisy, "names": names, "data_desc": data_desc, "backend": backend,
            "checkpoint": ckpt, "resume": resume_from, "history": history, "new": new}


# --------------------------------------------------------------------------- run


def run(args):
    with verbose_logging(args.verbose):
        with input_errors(data.cli_words):
            s = prepare(args)
        with thread_limit(args.threads, enabled=s["backend"] == "numpy") as threads:
            res = _optimise(args, s)
            try:
                return final.finish(s, res, threads, quiet=args.quiet, figures=args.figures)
            except KeyboardInterrupt as exc:
                raise Interrupted(
                    f"stopped in the final phase (tight solves, figures, params.json) after the optimisation "
                    f"finished; {s['checkpoint']} holds the learned θ: run 'varlearn learn --resume {s['run']}' "
                    f"to redo the final phase", exc) from None


def _optimise(args, s):
    run, cfg = s["run"], s["cfg"]
    opts = cfg["options"]
    exe = cfg.get("execution") or {}
    history = runfolder.HistoryWriter(run / runfolder.HISTORY_FILE)
    if s["history"]:
        history.write(from_json_value(s["history"]))
    start = len(s["history"]) - 1 if s["history"] else 0
    if not args.quiet:
        what = "resuming" if s["resume"] is not None else ("learning" if s["new"] else "restarting")
        shape = s["data_desc"]["shape"]
        how = f", batches of {opts['batch_size']}" if cfg["method"] == "isgd" else ""
        if cfg["method"] == "isgd" or exe.get("workers") or exe.get("scheduler"):
            how += f", {stochastic.describe(exe)}"
        note(f"{what} {cfg['model']['model']} on {len(s['names'])} images {shape[0]}x{shape[1]} "
             f"({cfg['data']['source']}), method {cfg['method']}{how}, run folder {run}")
    total = opts.get(MAXITER)
    if cfg["method"] == "isgd" and total is None and opts.get("max_epochs"):
        total = opts["max_epochs"] * stochastic.steps_per_epoch(opts, len(s["names"]))
    bar = Progress(total, "learn", enabled=not args.quiet, initial=max(start, 0))
    try:
        with bar, compile_notice(enabled=not args.quiet, progress=bar), stochastic.executor(exe) as ex:
            call_opts = opts if ex is None else dict(opts, executor=ex)
            return minimize_bilevel(s["problem"], s["upper"], to_device(s["theta0"], s["backend"]), cfg["method"],
                                    options=call_opts, callback=progress_callback(bar, s["upper"], history),
                                    checkpoint=s["checkpoint"], resume=s["resume"])
    except KeyboardInterrupt as exc:
        history.write()
        kept = (f"the checkpoint {s['checkpoint']} and history.csv are kept"
                if s["checkpoint"].exists() else "no checkpoint had been written yet")
        raise Interrupted(f"{kept}; continue with: varlearn learn --resume {run}", exc) from None
    except CheckpointError as exc:
        raise CliError(str(exc)) from exc
