"""``varlearn stn``: train a Self-Tuning-Network denoiser (or its equal-cost search) and write a run folder.

The run folder::

    RUN/config.json     what was asked (data, split by image, model, tuned hyperparameters, options); written first
    RUN/checkpoint.npz  the trainer's complete state at every evaluation and at the stop (no pickle): --resume
    RUN/history.csv     one row per evaluation (validation PSNR at the unperturbed λ, λ, cost, time), as it goes
    RUN/model.npz       the selected network's weights (the best evaluation)
    RUN/params.json     the λ it applies, sigma, results, versions (varlearn.stn.io): varlearn denoise --params RUN
    RUN/figures/*.png   val_psnr.png (against time), schedules.png (λ trajectories), examples.png
                        (--baseline: cost.png, best validation PSNR so far against cost, and examples.png)

``--baseline random|grid`` runs the black-box search over the same box instead:
``K = floor(budget / C_trial)`` full fixed-λ trainings; with ``--match RUN`` the
budget is the cost of the STN run in RUN and every trial trains for as many
weight steps as it did, on its data and network (MacKay et al. 2019).

References
----------
M. MacKay, P. Vicol, J. Lorraine, D. Duvenaud, R. Grosse, "Self-Tuning Networks",
ICLR 2019, arXiv:1903.03088.
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np

from .._io import atomic_write_text, dumps_json
from ..backend import get_namespace, to_device, to_numpy
from ..datasets import BUILTIN_NAMES, DownloadError, add_noise
from ..io import read_json
from ..plotting import plot_examples
from ..stn import experiment as X
from ..stn.io import save_stn
from ..stn.train import STNResult, STNTrainer
from . import data
from .common import add_threads_argument, check_backend, size_type, thread_limit, verbose_logging, versions
from .errors import CliError, Failure, Interrupted, note, warn
from .progress import Progress
from .run import now

NAME = "stn"
HELP = "train a Self-Tuning-Network denoiser (learned network, hyperparameters tuned online)"
DESCRIPTION = (
    "Train a small denoising network (dncnn or vn) on patches of clean images with noise added, tuning its "
    "training-noise level and weight decay (--tune) online by a Self-Tuning Network, and write a run folder "
    "(config.json, checkpoint.npz, history.csv, model.npz, params.json, figures/). The images are split by image "
    "into training and validation (--val, seeded). With no --clean: scikit-image's built-in images at 128x128. "
    "Exit status: 0 finished (a warning says when a time or cost limit stopped it), 1 failure, 2 bad input, "
    "130 Ctrl-C, 143 SIGTERM (the checkpoint is kept: --resume RUN).")

CONFIG_KIND = "varlearn-stn-config"
FORMAT_VERSION = 1
DEFAULT_STEPS = 300
DEFAULT_SIGMA = 0.1
DEFAULT_SIZE = 128
TRAIN_DEFAULTS = {"batch_size": 16, "patch_size": 32, "val_batch_size": 8, "val_patch_size": 48, "n_eval": 32,
                  "lr": 1e-3, "hyper_lr": 3e-2}
FILES = ("config.json", "checkpoint.npz", "history.csv", "model.npz", "params.json", "trials.csv")
FIGURES = ("val_psnr.png", "schedules.png", "examples.png", "cost.png")
#: options that --resume may change
RESUME_OK = ("steps", "epochs", "budget", "time_limit", "backend")
_FLAGS = {"max_steps": "--steps", "max_epochs": "--epochs", "budget": "--budget", "time_limit": "--time-limit",
          "batch_size": "--batch-size", "patch_size": "--patch-size", "val_patch_size": "--val-patch-size",
          "lr": "--lr", "hyper_lr": "--hyper-lr", "warmup_steps": "--warmup", "eval_every": "--eval-every"}


def add_arguments(p):
    g = p.add_argument_group("data")
    g.add_argument("--clean", metavar="DIR", help="folder of clean images")
    g.add_argument("--sigma", type=float, metavar="S", help=f"target noise level (default {DEFAULT_SIGMA})")
    g.add_argument("--dataset", choices=("builtin", "kodak"), help="with no --clean: built-in images or Kodak")
    g.add_argument("--images", metavar="LIST", help="built-in names or Kodak numbers (1-24, ranges allowed)")
    g.add_argument("--data-dir", metavar="DIR", help="folder holding the Kodak files")
    g.add_argument("--size", type=size_type("--size"), metavar="N|HxW",
                   help=f"resize every image (default {DEFAULT_SIZE} for built-in and Kodak images)")
    g.add_argument("--crop", type=size_type("--crop"), metavar="N|HxW", help="center-crop every image first")
    g.add_argument("--val", type=int, metavar="N", help="validation images (default: a fifth, at least 1)")
    g.add_argument("--seed", type=int, metavar="N", help="seed of the split, the weights and the training (0)")
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=("dncnn", "vn"), help="DnCNN-lite (default) or a variational network")
    g.add_argument("--depth", type=int, metavar="D", help="dncnn: layers (default 5)")
    g.add_argument("--channels", type=int, metavar="C", help="dncnn: channels (default 16)")
    g.add_argument("--stages", type=int, metavar="T", help="vn: unrolled stages (default 5)")
    g.add_argument("--filters", type=int, metavar="K", help="vn: filters per stage (default 8)")
    g.add_argument("--filter-size", type=int, metavar="S", help="vn: odd filter size (default 5)")
    g.add_argument("--dtype", choices=("float32", "float64"), help="working precision (default float32)")
    g = p.add_argument_group("training")
    g.add_argument("--tune", metavar="LIST", help=f"tuned hyperparameters, from {','.join(X.HYPER_SPECS)} "
                                                  f"(default {','.join(X.DEFAULT_TUNE)})")
    for flag, key in (("--batch-size", "batch_size"), ("--patch-size", "patch_size"),
                      ("--val-patch-size", "val_patch_size")):
        g.add_argument(flag, type=int, metavar="N", help=f"default {TRAIN_DEFAULTS[key]}")
    g.add_argument("--lr", type=float, metavar="R", help=f"Adam step of the weights (default {TRAIN_DEFAULTS['lr']})")
    g.add_argument("--hyper-lr", type=float, metavar="R",
                   help=f"Adam step of the hyperparameters (default {TRAIN_DEFAULTS['hyper_lr']})")
    g.add_argument("--warmup", type=int, metavar="N", help="weight steps before tuning (default 5%% of --steps)")
    g.add_argument("--eval-every", type=int, metavar="N", help="weight steps between evaluations (default: 1/12 run)")
    g = p.add_argument_group("stopping (default --steps %d)" % DEFAULT_STEPS)
    g.add_argument("--steps", type=int, metavar="N", help="weight steps")
    g.add_argument("--epochs", type=float, metavar="E", help="epochs (training pixels / batch pixels steps each)")
    g.add_argument("--budget", type=float, metavar="C", help="cost in pixel passes")
    g.add_argument("--time-limit", type=float, metavar="SEC", help="seconds of training in total")
    g = p.add_argument_group("equal-cost baselines")
    g.add_argument("--baseline", choices=("random", "grid"), help="black-box search instead of an STN run")
    g.add_argument("--match", metavar="RUN", help="STN run folder whose cost, data, network and length to match")
    g.add_argument("--grid-over", metavar="LIST", help="grid axes (default noise)")
    g = p.add_argument_group("run folder and device")
    g.add_argument("--out", metavar="RUN", help="run folder to create (new or empty)")
    g.add_argument("--resume", metavar="RUN", help="continue the STN run in RUN from its checkpoint")
    g.add_argument("--overwrite", action="store_true", help="replace the varlearn stn run in a non-empty --out")
    g.add_argument("--backend", choices=("numpy", "cupy"), help="array backend (default numpy)")
    add_threads_argument(g)
    g.add_argument("--no-figures", dest="figures", action="store_false", help="do not draw figures/")
    g.add_argument("--quiet", action="store_true", help="no progress or summary (warnings are still shown)")
    g.add_argument("--verbose", action="store_true", help="log the trainer's messages on stderr")


# --------------------------------------------------------------------------- configuration
def _pos(flag, v, integer=False, minimum=None):
    if v is None:
        return None
    ok = (v >= (minimum if minimum is not None else 1)) if integer else (math.isfinite(v) and v > 0)
    if not ok:
        what = f"an integer >= {minimum if minimum is not None else 1}" if integer else "a positive finite number"
        raise CliError(f"{flag} must be {what}, got {v}")
    return v


def _names(text, flag):
    names = [s.strip() for s in str(text).split(",") if s.strip()]
    bad = [n for n in names if n not in X.HYPER_SPECS]
    if not names or bad or len(set(names)) != len(names):
        raise CliError(f"{flag} must list distinct names from {','.join(X.HYPER_SPECS)}, got {text!r}")
    return names


def _model_config(args):
    kind = args.model or "dncnn"
    own = {"dncnn": (("depth", "--depth", 2), ("channels", "--channels", 1)),
           "vn": (("stages", "--stages", 1), ("filters", "--filters", 1), ("filter_size", "--filter-size", 1))}
    for other, opts in own.items():
        for name, flag, _ in opts:
            if other != kind and getattr(args, name) is not None:
                raise CliError(f"{flag} applies to --model {other} only (this run is --model {kind})")
    cfg = dict(X.MODEL_DEFAULTS[kind])
    key = {"stages": "n_stages", "filters": "n_filters", "filter_size": "size"}
    for name, flag, lo in own[kind]:
        v = _pos(flag, getattr(args, name), integer=True, minimum=lo)
        if v is not None:
            cfg[key.get(name, name)] = int(v)
    if kind == "vn" and cfg["size"] % 2 != 1:
        raise CliError(f"--filter-size must be odd, got {cfg['size']}")
    return {"model": kind, **cfg}


def _limits(args):
    lim = {"max_steps": _pos("--steps", args.steps, integer=True), "max_epochs": _pos("--epochs", args.epochs),
           "budget": _pos("--budget", args.budget), "time_limit": _pos("--time-limit", args.time_limit)}
    return {k: (int(v) if k == "max_steps" else float(v)) for k, v in lim.items() if v is not None}


def _data_config(args):
    if args.seed is not None and args.seed < 0:
        raise CliError(f"--seed must be a non-negative integer, got {args.seed}")
    if args.clean is None:
        if args.size is None:
            args.size = [DEFAULT_SIZE, DEFAULT_SIZE]
        if args.images is None:
            args.images = "1-24" if args.dataset == "kodak" else ",".join(BUILTIN_NAMES)
    elif args.sigma is None:
        args.sigma = DEFAULT_SIGMA
    import argparse  # noqa: PLC0415

    dp = argparse.ArgumentParser(add_help=False)
    data.add_arguments(dp)  # learn's data options this command does not have keep their defaults
    for action in dp._actions:
        if not hasattr(args, action.dest):
            setattr(args, action.dest, action.default)
    return data.data_config(args)


def _new_config(args):
    if args.out is None:
        raise CliError("stn needs --out RUN (a new run folder) or --resume RUN")
    dcfg = _data_config(args)
    mc = _model_config(args)
    tune = _names(args.tune or ",".join(X.DEFAULT_TUNE), "--tune")
    opts = dict(TRAIN_DEFAULTS)
    for flag, key in (("--batch-size", "batch_size"), ("--patch-size", "patch_size"),
                      ("--val-patch-size", "val_patch_size"), ("--warmup", "warmup_steps"),
                      ("--eval-every", "eval_every")):
        v = _pos(flag, getattr(args, key if key not in ("warmup_steps",) else "warmup"), integer=True,
                 minimum=0 if key == "warmup_steps" else 1)
        if v is not None:
            opts[key] = int(v)
    for flag, key in (("--lr", "lr"), ("--hyper-lr", "hyper_lr")):
        if getattr(args, key) is not None:
            opts[key] = float(_pos(flag, getattr(args, key)))
    lim = _limits(args)
    mode = args.baseline or "stn"
    match = None
    if args.match is not None:
        if mode == "stn":
            raise CliError("--match applies with --baseline random|grid only")
        match = _match(args)
        dcfg, mc, tune, opts, lim = match["data"], match["model"], match["tune"], match["options"], match["limits"]
    elif mode != "stn" and ("budget" not in lim or not ({"max_steps", "max_epochs"} & set(lim))):
        raise CliError(f"--baseline {mode} needs --match RUN (an STN run) or both --budget C (the total cost) and "
                       f"--steps/--epochs (the length of one trial)")
    if mode == "stn" and not lim:
        lim = {"max_steps": DEFAULT_STEPS}
    if "max_steps" in lim and "eval_every" not in opts:
        opts["eval_every"] = max(1, lim["max_steps"] // 12)
    grid = _names(args.grid_over, "--grid-over") if args.grid_over else ["noise"]
    if mode == "grid" and not set(grid) <= set(tune):
        raise CliError(f"--grid-over {','.join(grid)} must be among the tuned hyperparameters {','.join(tune)}")
    seed = 0 if args.seed is None else int(args.seed)
    backend = args.backend or "numpy"
    return {"kind": CONFIG_KIND, "format_version": FORMAT_VERSION, "mode": mode, "data": dcfg,
            "val": args.val if match is None else match["val"], "model": mc, "dtype": args.dtype or "float32",
            "tune": tune, "options": opts, "limits": lim, "grid_over": grid, "seed": seed if match is None
            else match["seed"], "backend": backend, "match": match and {"run": match["run"], "cost": match["cost"]}}


def _match(args):
    cfg = _load_config(Path(args.match).expanduser(), "--match")
    rec = read_json(Path(args.match).expanduser() / "params.json", "--match", error=CliError)
    if cfg["mode"] != "stn" or "results" not in rec:
        raise CliError(f"--match: {args.match} is not a finished STN run (mode {cfg['mode']!r})")
    given = [f for f, v in (("--clean", args.clean), ("--dataset", args.dataset), ("--model", args.model),
                            ("--tune", args.tune), ("--steps", args.steps), ("--epochs", args.epochs),
                            ("--seed", args.seed)) if v is not None]
    if given:
        raise CliError(f"--match takes the data, network and length from {args.match}: drop {', '.join(given)}")
    res = rec["results"]
    lim = {"max_steps": int(res["n_steps"])}
    if args.budget is not None:
        raise CliError("--match sets the budget to the STN run's cost; drop --budget")
    return {"run": str(Path(args.match).resolve()), "cost": float(res["cost"]), "data": cfg["data"],
            "model": cfg["model"], "tune": cfg["tune"], "options": cfg["options"], "limits": lim,
            "val": cfg["val"], "seed": cfg["seed"]}


def _load_config(run, flag):
    if not (run / "config.json").is_file():
        raise CliError(f"{flag}: {run} has no config.json: not a varlearn stn run folder")
    cfg = read_json(run / "config.json", flag, error=CliError)
    if cfg.get("kind") != CONFIG_KIND or cfg.get("format_version") != FORMAT_VERSION:
        raise CliError(f"{flag}: {run}/config.json is not a varlearn stn run configuration")
    return cfg


def _resume_config(args):
    run = Path(args.resume).expanduser()
    cfg = _load_config(run, "--resume")
    if cfg["mode"] != "stn":
        raise CliError(f"--resume: {run} is a {cfg['mode']} search; searches cannot be resumed (run it again)")
    given = [n for n in ("clean", "sigma", "dataset", "images", "data_dir", "size", "crop", "val", "seed", "model",
                         "depth", "channels", "stages", "filters", "filter_size", "dtype", "tune", "batch_size",
                         "patch_size", "val_patch_size", "lr", "hyper_lr", "warmup", "eval_every", "baseline",
                         "match", "grid_over") if getattr(args, n) is not None]
    if args.out is not None and Path(args.out).expanduser().resolve() != run.resolve():
        given.append("out")
    if given or args.overwrite:
        flags = ", ".join("--" + n.replace("_", "-") for n in given + (["overwrite"] if args.overwrite else []))
        raise CliError(f"--resume: {flags} cannot be given when resuming (config.json fixes them); only "
                       f"--steps, --epochs, --budget, --time-limit and --backend may")
    new = _limits(args)
    if new:
        cfg["limits"] = new
    if args.backend:
        cfg["backend"] = args.backend
    return run, cfg


def _out_folder(args):
    run = Path(args.out).expanduser()
    if run.exists() and not run.is_dir():
        raise CliError(f"--out: {run} exists and is not a folder")
    if run.is_dir() and any(run.iterdir()):
        if not args.overwrite:
            raise CliError(f"--out: {run} exists and is not empty; use --resume {run}, --overwrite or another folder")
        _load_config(run, "--overwrite")  # only a varlearn stn run is cleared
        for name in FILES:
            with contextlib.suppress(FileNotFoundError):
                (run / name).unlink()
        for name in FIGURES:
            with contextlib.suppress(FileNotFoundError):
                (run / "figures" / name).unlink()
    return run


def _flag_words(msg):
    """A trainer message with option names (``patch_size=40``, ``lr must``) spelled as the flags."""
    import re  # noqa: PLC0415

    keys = "|".join(sorted(_FLAGS, key=len, reverse=True))
    return re.sub(rf"(?<![\w-])({keys})(=| must)", lambda m: _FLAGS[m.group(1)] + (" " if m.group(2) == "=" else
                                                                                      m.group(2)), msg)


# --------------------------------------------------------------------------- data and model
def _prepare(args):
    new = args.resume is None
    if new:
        cfg = _new_config(args)  # checks every argument before anything in --out is touched
        run = _out_folder(args)
    else:
        run, cfg = _resume_config(args)
    check_backend(cfg["backend"])
    clean, _, names = data.load_data(cfg["data"])
    n_val = cfg["val"] if cfg["val"] is not None else max(1, round(clean.shape[0] / 5))
    if clean.shape[0] < 2:
        raise CliError(f"data: {clean.shape[0]} image(s); the split by image needs at least 2")
    if not 1 <= n_val < clean.shape[0]:
        raise CliError(f"--val must be in 1..{clean.shape[0] - 1} for {clean.shape[0]} images, got {n_val}")
    tr, va = X.split_by_image(clean.shape[0], int(n_val), cfg["seed"])
    split = {"train": [names[i] for i in tr], "val": [names[i] for i in va]}
    if not new and cfg.get("split") != split:
        raise CliError(f"--resume: the data changed since the run started (split now {split}, was {cfg.get('split')})")
    cfg["split"] = split
    xp = _xp(cfg["backend"])
    dtype = np.dtype(cfg["dtype"])
    train = [to_device(clean[i].astype(dtype), xp) for i in tr]
    val = [to_device(clean[i].astype(dtype), xp) for i in va]
    hyper = X.make_hyper(cfg["tune"])
    mc = {k: v for k, v in cfg["model"].items() if k != "model"}
    model = X.make_model(cfg["model"]["model"], hyper.n, mc, dtype=dtype, xp=xp, seed=cfg["seed"])
    sigma = cfg["data"]["sigma"]
    options = {**cfg["options"], **cfg["limits"]}
    trainer = None
    try:
        if cfg["mode"] == "stn":
            trainer = STNTrainer(model, hyper, train, val, sigma=sigma, options=options, seed=cfg["seed"])
        else:
            X.make_hyper(cfg["tune"])  # the trial options are checked by the search itself
    except ValueError as exc:
        raise CliError(_flag_words(str(exc))) from exc
    if new:
        cfg["created"] = now()
        cfg["versions"] = versions(include_cupy=cfg["backend"] == "cupy")
        run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run / "config.json", dumps_json(cfg, indent=2))
    val_clean = np.stack([clean[i] for i in va]) if len({clean[i].shape for i in va}) == 1 else None
    return {"run": run, "cfg": cfg, "model": model, "hyper": hyper, "trainer": trainer, "train": train, "val": val,
            "val_clean": [clean[i] for i in va], "val_names": split["val"], "sigma": sigma, "new": new,
            "options": options, "val_stack": val_clean}


def _xp(backend):
    return np if backend == "numpy" else get_namespace(to_device(np.zeros(1), backend))


# --------------------------------------------------------------------------- run
def run(args):
    with verbose_logging(args.verbose):
        try:
            s = _prepare(args)
        except DownloadError as exc:
            raise Failure(str(exc)) from exc
        except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
            raise CliError(str(exc)) from exc
        with thread_limit(args.threads, enabled=s["cfg"]["backend"] == "numpy"):
            if s["cfg"]["mode"] == "stn":
                return _run_stn(args, s)
            return _run_search(args, s)


def _run_stn(args, s):
    run, tr, cfg = s["run"], s["trainer"], s["cfg"]
    ckpt = run / "checkpoint.npz"
    if not s["new"]:
        if not ckpt.exists():
            raise CliError(f"--resume: {run} has no checkpoint.npz (the run never reached its first evaluation)")
        try:
            tr.restore(ckpt)
        except ValueError as exc:
            raise CliError(str(exc)) from exc
    total = cfg["limits"].get("max_steps")
    if not args.quiet:
        note(f"{'resuming' if not s['new'] else 'training'} STN {cfg['model']['model']} on {len(s['train'])} "
             f"training / {len(s['val'])} validation images, sigma {s['sigma']:g}, tuning {','.join(cfg['tune'])}; "
             f"run folder {run}")
    bar = Progress(total, "stn", enabled=not args.quiet, initial=tr.n_w, unit="step")

    def callback(info):
        if info["event"] == "eval":
            STNResult(history=tr.history).history_csv(run / "history.csv")
            bar.update(info["step"], f"val PSNR {info['val_psnr']:.2f} dB")
        else:
            bar.update(info["step"])

    try:
        with bar:
            r = tr.run(callback=callback, checkpoint=ckpt)
    except KeyboardInterrupt as exc:
        kept = "the checkpoint and history.csv are kept" if ckpt.exists() else "no evaluation had been checkpointed"
        raise Interrupted(f"{kept}; continue with: varlearn stn --resume {run}", exc) from None
    r.history_csv(run / "history.csv")
    if r.status == "nan":
        raise Failure(f"training diverged (non-finite loss) at step {r.n_steps}; try a smaller --lr; "
                      f"history.csv and the checkpoint are kept in {run}")
    # the denoiser written is the best evaluation's: its weights with the λ they were evaluated at
    s["model"].load_state(r.best_state)
    hyper = X.hyper_at_row(s["hyper"], r.best)
    results = {"status": r.status, "message": r.message, "success": r.success, "n_steps": r.n_steps,
               "n_hyper_steps": r.n_hyper_steps, "cost": r.cost, "wall_time": r.wall_time,
               "best_val_psnr": r.best["val_psnr"], "best_step": r.best["step"], "noisy_val_psnr": r.noisy_psnr,
               "final_lam": r.hyper}
    return _finish(args, s, hyper, results, r.history)


def _run_search(args, s):
    cfg, run = s["cfg"], s["run"]
    budget = cfg["match"]["cost"] if cfg["match"] else cfg["limits"]["budget"]
    trial = {**cfg["options"], **{k: v for k, v in cfg["limits"].items() if k in ("max_steps", "max_epochs")}}
    bar = Progress(None, f"{cfg['mode']} search", enabled=not args.quiet, unit="trial")

    def callback(t):
        bar.update(t["index"] + 1, f"trial val PSNR {t['val_psnr']:.2f} dB")

    try:
        with bar:
            res = X.equal_cost_search(cfg["mode"], s["model"], s["hyper"], s["train"], s["val"], sigma=s["sigma"],
                                      stn_cost=budget, trial_options=trial, seed=cfg["seed"],
                                      grid_names=cfg["grid_over"] if cfg["mode"] == "grid" else None,
                                      callback=callback)
    except KeyboardInterrupt as exc:
        raise Interrupted(f"a search is not checkpointed; nothing was kept in {run}", exc) from None
    except ValueError as exc:
        raise CliError(_flag_words(str(exc))) from exc
    eq = res["equal"]
    if eq.best is None:
        raise CliError(f"--budget {budget:g} is below the cost of one trial ({eq.trial_cost:g})")
    rows = [{"index": t["index"], **{f"lam_{k}": v for k, v in t["values"].items()}, "val_psnr": t["val_psnr"],
             "cost": t["cost"], "wall_time": t["wall_time"]} for t in res["trials"]]
    STNResult(history=rows).history_csv(run / "trials.csv")
    hyper = s["hyper"].copy()
    hyper.set_values(eq.best["values"])
    results = {"status": eq.status, "kind": cfg["mode"], "n_trials": eq.n_trials, "trial_cost": eq.trial_cost,
               "budget": budget, "cost": eq.total_cost, "wall_time": eq.wall_time,
               "best_val_psnr": eq.best["val_psnr"]}
    if args.figures:
        curves = {f"{cfg['mode']} search": (res["curve"]["cost"], res["curve"]["best_val_psnr"])}
        if cfg["match"]:
            with contextlib.suppress(OSError, ValueError, KeyError):
                hist = X.read_history_csv(Path(cfg["match"]["run"]) / "history.csv")
                curves = {"STN (one run)": X.stn_curve(hist), **curves}
        (run / "figures").mkdir(exist_ok=True)
        X.plot_cost(curves, run / "figures" / "cost.png", stn_cost=budget if cfg["match"] else None)
    return _finish(args, s, hyper, results, None)


def _finish(args, s, hyper, results, history):
    """Evaluate on the whole validation images, write model.npz, params.json and the figures; summary line."""
    run, cfg = s["run"], s["cfg"]
    rng = np.random.default_rng(np.random.SeedSequence([cfg["seed"], 0xE7A1]))
    noisy = [add_noise(c, s["sigma"], rng=rng) for c in s["val_clean"]]
    qs = [X.quality(s["model"], hyper, c[None], y[None]) for c, y in zip(s["val_clean"], noisy)]
    per = [q for q, _ in qs]
    results["val_images"] = {"names": s["val_names"], "noisy_psnr": [q["noisy_psnr_mean"] for q in per],
                             "psnr": [q["psnr_mean"] for q in per], "ssim": [q["ssim_mean"] for q in per],
                             "noisy_psnr_mean": float(np.mean([q["noisy_psnr_mean"] for q in per])),
                             "psnr_mean": float(np.mean([q["psnr_mean"] for q in per])),
                             "ssim_mean": float(np.mean([q["ssim_mean"] for q in per])),
                             "note": "whole validation images (used for model selection, not for training), "
                                     "fixed noise; estimate clipped to [0, 1]"}
    save_stn(run, s["model"], hyper, sigma=s["sigma"], results=results, mode=cfg["mode"], data=cfg["data"],
             split=cfg["split"], versions=versions(include_cupy=cfg["backend"] == "cupy"))
    if args.figures:
        fig = run / "figures"
        fig.mkdir(exist_ok=True)
        if history:
            X.plot_val_psnr(history, fig / "val_psnr.png", noisy_psnr=results.get("noisy_val_psnr"))
            X.plot_schedules(history, fig / "schedules.png")
        if s["val_stack"] is not None:
            den = np.stack([to_numpy(d)[0] for _, d in qs])
            plot_examples(s["val_stack"], np.stack([to_numpy(y) for y in noisy]), den, s["val_names"],
                          fig / "examples.png")
    v = results["val_images"]
    lam = ", ".join(f"{k}={x:.4g}" for k, x in hyper.values().items())
    if results.get("status") in ("time_limit", "budget_exhausted"):
        warn(f"the run stopped on its {results['status'].replace('_', ' ')} after {results.get('n_steps')} steps")
    if not args.quiet:
        what = (f"STN trained {results['n_steps']} steps" if cfg["mode"] == "stn" else
                f"{cfg['mode']} search: best of {results['n_trials']} trial(s)")
        note(f"{what} in {results['wall_time']:.1f} s (cost {results['cost']:.4g}): validation images "
             f"{v['noisy_psnr_mean']:.2f} dB noisy -> {v['psnr_mean']:.2f} dB denoised (SSIM {v['ssim_mean']:.3f}); "
             f"λ {lam}; wrote {run}")
    return 0
