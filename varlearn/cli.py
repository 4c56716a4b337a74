"""The ``varlearn`` command line: ``learn``, ``denoise`` and ``info``.

``varlearn learn`` learns the parameters of a total-variation or
Field-of-Experts denoiser from image pairs (or clean images plus a noise level,
or built-in images) by bilevel optimisation, and writes a run folder::

    RUN/config.json     what was asked (data, model, θ0, method, options); written at the start
    RUN/checkpoint.npz  the optimiser state after every outer iteration (no pickle)
    RUN/history.csv     one row per outer iteration (varlearn.bilevel.HISTORY_FIELDS)
    RUN/params.json     the learned θ, the parameters in natural units, results, versions
    RUN/figures/*.png   loss, accuracy path, step sizes, PSNR per image, examples (FoE: filters)

Every file is written atomically (temporary file + rename), so a run killed
at any moment leaves complete files only; ``varlearn learn --resume RUN``
rebuilds the same problem from ``config.json`` and continues from the
checkpoint.

``varlearn denoise`` applies a ``params.json`` to new images and
``varlearn info`` reports versions and backends.

Exit status: 0 success, 1 failure (an unexpected error, or a run that stopped
without success), 2 bad input (bad arguments, unreadable or mismatched data,
a bad checkpoint or run folder, an unusable GPU), 130 interrupted (Ctrl-C).
Errors are reported as one line on stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from . import __version__, datasets
from .backend import cupy_unusable_reason, cupy_usable, to_device, to_numpy
from .bilevel import (
    CheckpointError,
    history_to_csv,
    load_checkpoint,
    minimize_bilevel,
    resolve_options,
)
from .bilevel.checkpoint import atomic_write_bytes, atomic_write_text
from .datasets import DataError, DownloadError
from .problems import DenoisingProblem, SquaredError
from .regularizers import FieldOfExperts, TotalVariation
from .results import ConvergenceWarning
from .solvers import solve_lower

__all__ = ["CliError", "main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.json"
HISTORY_FILE = "history.csv"
CHECKPOINT_FILE = "checkpoint.npz"
FIGURES_DIR = "figures"
FIGURE_FILES = ("loss.png", "accuracy.png", "steps.png", "psnr.png", "examples.png", "filters.png")
RUN_FILES = (CONFIG_FILE, PARAMS_FILE, HISTORY_FILE, CHECKPOINT_FILE)

CONFIG_KIND = "varlearn-run-config"
PARAMS_KIND = "varlearn-params"
FORMAT_VERSION = 1

#: built-in images used when no data are given
DEFAULT_BUILTIN = ("camera", "moon", "coins", "astronaut")
#: Kodak images (1-based numbers) used by ``--dataset kodak`` by default
DEFAULT_KODAK = (1, 2, 3, 4)
#: image size of the built-in and Kodak images when ``--size`` is not given
DEFAULT_DATASET_SIZE = 96
DEFAULT_SIGMA = 0.1
DEFAULT_SEED = 0
DEFAULT_MAX_ITER = 30
#: first step size of MAID / fixed per model (MAID adapts it; these converge on the built-in data)
DEFAULT_STEP0 = {"tv": 0.05, "foe": 0.005}
#: θ0 of TV: log weight and log smoothing, as in the MAID paper
DEFAULT_TV_THETA0 = (-5.0, -5.0)
DEFAULT_FOE_FILTERS = 16
DEFAULT_FOE_SIZE = 5
#: accuracy of the final lower-level solves: root-mean-square distance per pixel
DEFAULT_PIXEL_TOL = 1e-4
FINAL_MAXITER = 20000

#: ``learn`` options that may be given again with ``--resume`` (they do not change the problem)
RESUME_OVERRIDES = ("max_iter", "budget", "time_limit", "backend")

logger = logging.getLogger("varlearn")


class CliError(Exception):
    """Bad input on the command line: reported as one line, exit status 2."""


class _Failure(Exception):
    """A failure after the input was accepted: one line, exit status 1."""


class _Interrupted(Exception):
    """Ctrl-C: one line, exit status 130."""


# --------------------------------------------------------------------------- small helpers


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _err(msg, prefix="error"):
    print(f"varlearn: {prefix}: {_one_line(msg)}", file=sys.stderr, flush=True)


def _jsonable(obj):
    """JSON-safe copy: non-finite floats become the strings "inf", "-inf", "nan"; arrays become lists."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        if math.isfinite(v):
            return v
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def _float_from_json(v):
    if isinstance(v, str) and v in ("inf", "-inf", "nan"):
        return float(v)
    return v


def _dump_json(obj) -> str:
    return json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n"


def _read_json(path: Path, what: str) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliError(f"{what}: no such file: {path}") from None
    except OSError as exc:
        raise CliError(f"{what}: cannot read {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{what}: {path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CliError(f"{what}: {path} does not hold a JSON object")
    return data


def _versions(include_cupy=None) -> dict:
    """Versions of Python and the packages varlearn uses (optional ones when present)."""
    import matplotlib
    import scipy
    import skimage

    out = {
        "varlearn": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-image": skimage.__version__,
        "matplotlib": matplotlib.__version__,
    }
    try:
        import imageio

        out["imageio"] = imageio.__version__
    except ImportError:
        pass
    try:
        import numba

        out["numba"] = numba.__version__
    except ImportError:
        out["numba"] = None
    if include_cupy is None:
        include_cupy = "cupy" in sys.modules
    if include_cupy:
        try:
            import cupy

            out["cupy"] = cupy.__version__
        except Exception:  # noqa: BLE001  (a broken CUDA install may raise anything)
            out["cupy"] = None
    return out


def _parse_hw(text, flag):
    """``"96"`` -> ``[96, 96]``; ``"96x128"`` -> ``[96, 128]``."""
    if text is None:
        return None
    parts = str(text).lower().replace("×", "x").split("x")
    try:
        hw = [int(p) for p in parts]
    except ValueError:
        raise CliError(f"{flag} must be N or HxW with positive integers, got {text!r}") from None
    if len(hw) == 1:
        hw = hw * 2
    if len(hw) != 2 or min(hw) < 1:
        raise CliError(f"{flag} must be N or HxW with positive integers, got {text!r}")
    return hw


def _positive_float(flag, value, allow_inf=False):
    if value is None:
        return None
    v = float(value)
    if not (v > 0) or (math.isinf(v) and not allow_inf) or math.isnan(v):
        kind = "a positive number" + (" (inf for no limit)" if allow_inf else "")
        raise CliError(f"{flag} must be {kind}, got {value}")
    return v


def _thread_count(text):
    if text == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {text!r}")
    return n


@contextlib.contextmanager
def _numba_threads(spec, enabled=True):
    """Run the block with the numba kernels on :func:`_set_threads` threads; restores the old count.

    Yields the number of threads (``None`` without numba or when not ``enabled``).
    """
    if not enabled:
        yield None
        return
    try:
        import numba
    except ImportError:
        yield None
        return
    old = numba.get_num_threads()
    try:
        yield _set_threads(spec)
    finally:
        numba.set_num_threads(old)


def _set_threads(spec):
    """Set the number of threads of the numba CPU kernels; returns it (``None`` without numba).

    ``"auto"``: the cores left idle by the 1-minute load average (at least 1).
    The parallel kernels wait for their slowest thread, so on a busy machine
    more threads than idle cores make them many times slower.
    """
    try:
        import numba
    except ImportError:
        return None
    max_threads = int(numba.config.NUMBA_NUM_THREADS)
    if spec == "auto" or spec is None:
        try:
            load = os.getloadavg()[0]
        except (OSError, AttributeError):
            load = 0.0
        n = max(1, min(max_threads, (os.cpu_count() or 1) - round(load)))
    else:
        n = min(int(spec), max_threads)
    numba.set_num_threads(n)
    return n


# --------------------------------------------------------------------------- progress bar


class ProgressBar:
    """A one-line progress bar on stderr (redrawn in place on a terminal, one line per update otherwise)."""

    def __init__(self, total, label, stream=None, enabled=True, width=20):
        self.total = max(int(total), 1) if total else None
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.width = width
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.t0 = time.perf_counter()
        self._last_len = 0
        self._open = False

    def _bar(self, k):
        if self.total is None:
            return f"{k}"
        frac = min(max(k / self.total, 0.0), 1.0)
        full = round(frac * self.width)
        return f"[{'#' * full}{'-' * (self.width - full)}] {k}/{self.total}"

    def update(self, k, text=""):
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        line = f"{self.label} {self._bar(k)} {text} {elapsed:5.1f}s".rstrip()
        if self.tty:
            pad = max(self._last_len - len(line), 0)
            self.stream.write("\r" + line + " " * pad)
            self._last_len = len(line)
            self._open = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self):
        if self.enabled and self.tty and self._open:
            self.stream.write("\n")
            self.stream.flush()
        self._open = False


# --------------------------------------------------------------------------- argument parser


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors raised as :class:`CliError` (exit status 2)."""

    def error(self, message):
        raise CliError(f"{self.prog}: {message} (see {self.prog} --help)")


def _size_type(flag):
    def parse(text):
        try:
            return _parse_hw(text, flag)
        except CliError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def build_parser():
    p = _Parser(prog="varlearn", description="Learn the parameters of variational denoisers by bilevel optimisation.",
                epilog="Exit status: 0 success, 1 failure, 2 bad input, 130 interrupted.")
    p.add_argument("--version", action="version", version=f"varlearn {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{learn,denoise,info}", parser_class=_Parser)

    # ---------------------------------------------------------------- learn
    lp = sub.add_parser(
        "learn",
        help="learn TV or Field-of-Experts parameters from image pairs",
        description=(
            "Learn denoising parameters and write a run folder (config.json, checkpoint.npz, history.csv, "
            "params.json, figures/). Data: --clean DIR --noisy DIR (pairs matched by file stem), "
            "--clean DIR --sigma S (noise added with --seed), or, with neither, built-in images "
            f"({', '.join(DEFAULT_BUILTIN)} at {DEFAULT_DATASET_SIZE}x{DEFAULT_DATASET_SIZE}, sigma {DEFAULT_SIGMA})."
        ),
    )
    g = lp.add_argument_group("data")
    g.add_argument("--clean", metavar="DIR", help="folder of clean images")
    g.add_argument("--noisy", metavar="DIR", help="folder of noisy images, paired with --clean by file stem")
    g.add_argument("--sigma", type=float, metavar="S",
                   help=f"add Gaussian noise of this standard deviation (intensities in [0, 1]) to the clean "
                        f"images; default {DEFAULT_SIGMA} for built-in / Kodak data")
    g.add_argument("--dataset", choices=("builtin", "kodak"),
                   help="data when --clean is not given: scikit-image's built-in images (default) or Kodak")
    g.add_argument("--images", metavar="LIST",
                   help=f"comma-separated built-in image names (default {','.join(DEFAULT_BUILTIN)}) or Kodak "
                        f"numbers 1-24 (ranges allowed, default 1-4)")
    g.add_argument("--data-dir", metavar="DIR",
                   help="folder holding the Kodak files (default: $VARLEARN_DATA, the cache, else download)")
    g.add_argument("--size", type=_size_type("--size"), metavar="N|HxW",
                   help=f"resize every image (after --crop); default {DEFAULT_DATASET_SIZE} for built-in and "
                        "Kodak data, native size for folders")
    g.add_argument("--crop", type=_size_type("--crop"), metavar="N|HxW", help="center-crop every image first")
    g.add_argument("--seed", type=int, metavar="N",
                   help=f"seed of the synthetic noise, the FoE filters and the bound estimator (default {DEFAULT_SEED})")

    g = lp.add_argument_group("model")
    g.add_argument("--model", choices=("tv", "foe"), help="total variation (default) or Field of Experts")
    iso = g.add_mutually_exclusive_group()
    iso.add_argument("--isotropic", dest="isotropic", action="store_true", default=None,
                     help="TV: isotropic (default)")
    iso.add_argument("--anisotropic", dest="isotropic", action="store_false", help="TV: anisotropic (the MAID paper)")
    g.add_argument("--filters", type=int, metavar="K", help=f"FoE: number of filters (default {DEFAULT_FOE_FILTERS})")
    g.add_argument("--filter-size", type=int, metavar="S", help=f"FoE: odd filter size (default {DEFAULT_FOE_SIZE})")

    g = lp.add_argument_group("optimisation")
    g.add_argument("--method", choices=("maid", "hoag", "fixed"), help="upper-level method (default maid)")
    g.add_argument("--max-iter", type=int, metavar="N", help=f"outer iterations (default {DEFAULT_MAX_ITER})")
    g.add_argument("--eps0", type=float, metavar="E", help="initial lower-level accuracy (default 0.1; fixed: 1e-4)")
    g.add_argument("--delta0", type=float, metavar="D",
                   help="initial CG residual tolerance (maid/fixed; default 0.1; fixed: 1e-4)")
    g.add_argument("--step0", type=float, metavar="A",
                   help=f"initial step size (default for HxW images: tv {DEFAULT_STEP0['tv']}*9216/(H*W), "
                        f"foe {DEFAULT_STEP0['foe']}*9216/(H*W); hoag: 1/L from the first hypergradient)")
    g.add_argument("--budget", type=float, metavar="N", help="stop after N lower-level + CG iterations in total")
    g.add_argument("--time-limit", type=float, metavar="SEC", help="stop after SEC seconds of optimisation in total")
    g.add_argument("--backend", choices=("numpy", "cupy"), help="array backend (default numpy; cupy needs a GPU)")
    g.add_argument("--dtype", choices=("float32", "float64"), help="working precision (default float64)")
    g.add_argument("--threads", type=_thread_count, default="auto", metavar="N|auto",
                   help="threads of the numba CPU kernels (default auto: the idle cores by the load average)")

    g = lp.add_argument_group("run folder")
    g.add_argument("--out", metavar="RUN", help="run folder to create (must be new or empty)")
    g.add_argument("--resume", metavar="RUN",
                   help="continue the run in RUN from its checkpoint, with its saved configuration")
    g.add_argument("--overwrite", action="store_true", help="reuse a non-empty --out, deleting its varlearn files")
    g.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    g.add_argument("--verbose", action="store_true", help="log the optimiser's messages on stderr")
    lp.set_defaults(func=cmd_learn)

    # ---------------------------------------------------------------- denoise
    dp = sub.add_parser(
        "denoise",
        help="denoise images with learned parameters",
        description=(
            "Denoise images with the parameters of a run. Writes DIR/<stem>.png: 8-bit PNG for 8-bit inputs, "
            "16-bit PNG for 16-bit, other integer and floating-point inputs. Colour inputs are converted to gray."
        ),
    )
    dp.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    dp.add_argument("--params", required=True, metavar="FILE", help="RUN/params.json (or the run folder)")
    dp.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    dp.add_argument("--tol", type=float, default=DEFAULT_PIXEL_TOL, metavar="T",
                    help=f"certified root-mean-square distance per pixel to the exact solution "
                         f"(default {DEFAULT_PIXEL_TOL:g})")
    dp.add_argument("--max-iter", type=int, default=FINAL_MAXITER, metavar="N",
                    help=f"lower-level iterations per image (default {FINAL_MAXITER})")
    dp.add_argument("--backend", choices=("numpy", "cupy"), default="numpy", help="array backend (default numpy)")
    dp.add_argument("--threads", type=_thread_count, default="auto", metavar="N|auto",
                    help="threads of the numba CPU kernels (default auto: the idle cores by the load average)")
    dp.add_argument("--overwrite", action="store_true", help="replace existing output files")
    dp.add_argument("--quiet", action="store_true", help="no progress or summary")
    dp.set_defaults(func=cmd_denoise)

    # ---------------------------------------------------------------- info
    ip = sub.add_parser("info", help="versions, backends and GPU availability",
                        description="Print versions, backends and whether a GPU is usable.")
    ip.set_defaults(func=cmd_info)
    return p


# --------------------------------------------------------------------------- data


def _check_dir(path, flag) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise CliError(f"{flag}: no such folder: {p}")
    if not p.is_dir():
        raise CliError(f"{flag}: {p} is not a folder")
    return p.resolve()


def _parse_kodak_list(text):
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                a, b = (int(s) for s in part.split("-", 1))
                out.extend(range(a, b + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise CliError(f"--images: Kodak images are numbers 1-24 or ranges like 1-8, got {part!r}") from None
    if not out or any(not 1 <= i <= 24 for i in out):
        raise CliError(f"--images: Kodak images are numbers 1-24, got {text!r}")
    return sorted(set(out))


def _data_config(args) -> dict:
    """Validate the data options and describe the data (JSON-safe; enough to reload them)."""
    seed = DEFAULT_SEED if args.seed is None else args.seed
    if seed < 0:
        raise CliError(f"--seed must be a non-negative integer, got {seed}")
    if args.sigma is not None and not (math.isfinite(args.sigma) and args.sigma > 0):
        raise CliError(f"--sigma must be a positive finite number (noise standard deviation), got {args.sigma}")
    if args.noisy is not None and args.clean is None:
        raise CliError("--noisy needs --clean DIR (the clean images the noisy ones are paired with)")
    if args.clean is not None:
        if args.dataset is not None or args.images is not None or args.data_dir is not None:
            raise CliError("--dataset, --images and --data-dir do not apply when --clean DIR is given")
        if args.noisy is not None and args.sigma is not None:
            raise CliError("give either --noisy DIR or --sigma S with --clean, not both")
        if args.noisy is None and args.sigma is None:
            raise CliError("--clean DIR needs --noisy DIR (image pairs) or --sigma S (synthetic noise)")
        cfg = {"source": "pairs" if args.noisy is not None else "sigma",
               "clean_dir": str(_check_dir(args.clean, "--clean")),
               "noisy_dir": str(_check_dir(args.noisy, "--noisy")) if args.noisy is not None else None,
               "sigma": args.sigma, "size": args.size, "crop": args.crop, "seed": seed}
        return cfg
    dataset = args.dataset or "builtin"
    sigma = DEFAULT_SIGMA if args.sigma is None else args.sigma
    size = [DEFAULT_DATASET_SIZE] * 2 if args.size is None else args.size
    if dataset == "builtin":
        if args.data_dir is not None:
            raise CliError("--data-dir applies to --dataset kodak only")
        if args.images is None:
            names = list(DEFAULT_BUILTIN)
        else:
            names = [s.strip() for s in args.images.split(",") if s.strip()]
            if not names:
                raise CliError("--images: no image names given")
        return {"source": "builtin", "images": names, "sigma": sigma, "size": size, "crop": args.crop, "seed": seed}
    numbers = list(DEFAULT_KODAK) if args.images is None else _parse_kodak_list(args.images)
    data_dir = str(_check_dir(args.data_dir, "--data-dir")) if args.data_dir is not None else None
    return {"source": "kodak", "images": numbers, "data_dir": data_dir, "sigma": sigma, "size": size,
            "crop": args.crop, "seed": seed}


def _load_data(cfg):
    """(clean, noisy, names) as float64 NumPy stacks from a data config."""
    size = tuple(cfg["size"]) if cfg.get("size") else None
    crop = tuple(cfg["crop"]) if cfg.get("crop") else None
    src = cfg["source"]
    if src == "pairs":
        clean, noisy, names = datasets.load_pairs(cfg["clean_dir"], cfg["noisy_dir"], size=size, crop=crop)
        return clean, noisy, list(names)
    if src == "sigma":
        clean, names = datasets.load_images(cfg["clean_dir"], size=size, crop=crop)
    elif src == "builtin":
        names = list(cfg["images"])
        try:
            clean = datasets.builtin_images(names, size=None if crop else size)
        except (ValueError, TypeError) as exc:
            raise CliError(f"--images: {exc}") from exc
        if crop:
            clean = _crop_resize(clean, crop, size)
    elif src == "kodak":
        idx = [int(i) - 1 for i in cfg["images"]]
        clean, names = datasets.kodak(root=cfg.get("data_dir"), size=None if crop else size, indices=idx)
        if crop:
            clean = _crop_resize(clean, crop, size)
    else:
        raise CliError(f"unknown data source {src!r} in the run configuration")
    noisy = datasets.add_noise(clean, cfg["sigma"], rng=cfg["seed"])
    return clean, noisy, list(names)


def _crop_resize(stack, crop, size):
    try:
        out = datasets.center_crop(stack, crop)
    except ValueError as exc:
        raise CliError(f"--crop: {exc}") from exc
    return datasets.resize(np.ascontiguousarray(out), size) if size else np.ascontiguousarray(out)


def _describe_data(cfg, clean, names):
    d = dict(cfg)
    d["names"] = list(names)
    d["n_images"] = int(clean.shape[0])
    d["shape"] = [int(s) for s in clean.shape[1:]]
    return d


# --------------------------------------------------------------------------- model


def _model_config(args) -> dict:
    model = args.model or "tv"
    if model == "tv":
        if args.filters is not None or args.filter_size is not None:
            raise CliError("--filters and --filter-size apply to --model foe only")
        return {"model": "tv", "isotropic": True if args.isotropic is None else bool(args.isotropic)}
    if args.isotropic is not None:
        raise CliError("--isotropic/--anisotropic apply to --model tv only")
    k = DEFAULT_FOE_FILTERS if args.filters is None else args.filters
    s = DEFAULT_FOE_SIZE if args.filter_size is None else args.filter_size
    if k < 1:
        raise CliError(f"--filters must be a positive integer, got {k}")
    if s < 1 or s % 2 != 1:
        raise CliError(f"--filter-size must be a positive odd integer, got {s}")
    return {"model": "foe", "n_filters": int(k), "size": int(s)}


def _make_regularizer(mc, seed):
    if mc["model"] == "tv":
        return TotalVariation(isotropic=bool(mc["isotropic"]))
    if mc["model"] == "foe":
        return FieldOfExperts(n_filters=int(mc["n_filters"]), size=int(mc["size"]), rng=int(seed))
    raise CliError(f"unknown model {mc['model']!r}")


def _initial_theta(mc, reg):
    if mc["model"] == "tv":
        return np.array(DEFAULT_TV_THETA0, dtype=np.float64)
    return np.asarray(reg.init_params(), dtype=np.float64)


def _check_image_size(mc, shape, where):
    h, w = shape[-2:]
    need = int(mc["size"]) if mc["model"] == "foe" else 2
    if h < need or w < need:
        raise CliError(f"{where}: images of {h}x{w} are too small for this model (need at least {need}x{need})")


# --------------------------------------------------------------------------- options


_OPTION_FLAGS = {"max_iter": "--max-iter", "eps0": "--eps0", "delta0": "--delta0", "step0": "--step0",
                 "budget": "--budget", "time_limit": "--time-limit", "seed": "--seed"}


def _options(args, method, model, seed) -> dict:
    opts = {"max_iter": DEFAULT_MAX_ITER if args.max_iter is None else args.max_iter, "seed": int(seed)}
    if opts["max_iter"] < 1:
        raise CliError(f"--max-iter must be a positive integer, got {opts['max_iter']}")
    if method in ("maid", "fixed"):
        opts["step0"] = DEFAULT_STEP0[model]  # scaled to the image size by _default_step0 once the data are read
    if method == "fixed":
        opts["eps0"] = opts["delta0"] = 1e-4
    for name in ("eps0", "delta0", "step0"):
        v = getattr(args, name)
        if v is not None:
            if method == "hoag" and name == "delta0":
                raise CliError("--delta0 does not apply to --method hoag (it uses one tolerance, --eps0)")
            opts[name] = _positive_float(_OPTION_FLAGS[name], v)
    if args.budget is not None:
        opts["budget"] = _positive_float("--budget", args.budget, allow_inf=True)
    if args.time_limit is not None:
        opts["time_limit"] = _positive_float("--time-limit", args.time_limit, allow_inf=True)
    _check_options(method, opts)
    return opts


def _default_step0(model, shape):
    """First step size: ``DEFAULT_STEP0[model]`` for 96x96 images, scaled by 96*96/(H*W).

    The upper loss is a sum over the pixels of an image (averaged over the
    images), so its gradient in θ grows with the pixel count; this keeps the
    first θ update of similar size for every image size (MAID then adapts it).
    """
    h, w = shape[-2:]
    return float(DEFAULT_STEP0[model] * (DEFAULT_DATASET_SIZE * DEFAULT_DATASET_SIZE) / (h * w))


def _check_options(method, opts):
    try:
        resolve_options(method, opts)
    except ValueError as exc:
        msg = str(exc)
        for name, flag in _OPTION_FLAGS.items():
            msg = msg.replace(f"option {name!r}", f"option {name!r} ({flag})")
        raise CliError(msg) from exc


# --------------------------------------------------------------------------- run folder


def _is_nonempty_dir(p: Path) -> bool:
    return p.is_dir() and any(p.iterdir())


def _remove_stale_temps(run: Path):
    """Delete temporary files that an interrupted atomic write left behind (``.NAME.*.tmp``)."""
    for folder in (run, run / FIGURES_DIR):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file():
                with contextlib.suppress(OSError):
                    entry.unlink()


def _clear_run(run: Path):
    """Delete the files varlearn writes in a run folder (for ``--overwrite``); other files are kept."""
    for name in RUN_FILES:
        with contextlib.suppress(FileNotFoundError):
            (run / name).unlink()
    fig = run / FIGURES_DIR
    if fig.is_dir():
        for name in FIGURE_FILES:
            with contextlib.suppress(FileNotFoundError):
                (fig / name).unlink()
        with contextlib.suppress(OSError):
            fig.rmdir()
    _remove_stale_temps(run)


def _check_out(args) -> Path:
    """The ``--out`` folder, checked (nothing is created or deleted yet)."""
    if args.out is None:
        raise CliError("learn needs --out RUN (a new run folder) or --resume RUN")
    run = Path(args.out).expanduser()
    if run.exists() and not run.is_dir():
        raise CliError(f"--out: {run} exists and is not a folder")
    if _is_nonempty_dir(run) and not args.overwrite:
        raise CliError(f"--out: {run} exists and is not empty; use --resume {run} to continue that run, "
                       f"--overwrite to replace it, or another folder")
    return run


def _create_out(run: Path, overwrite: bool):
    if overwrite and _is_nonempty_dir(run):
        _clear_run(run)
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"--out: cannot create {run}: {exc}") from exc


def _given_learn_options(args):
    names = ("clean", "noisy", "sigma", "dataset", "images", "data_dir", "size", "crop", "seed", "model",
             "isotropic", "filters", "filter_size", "method", "max_iter", "eps0", "delta0", "step0", "budget",
             "time_limit", "backend", "dtype", "out")
    return [n for n in names if getattr(args, n) is not None]


def _load_config(run: Path) -> dict:
    if not run.exists():
        raise CliError(f"--resume: no such folder: {run}")
    if not run.is_dir():
        raise CliError(f"--resume: {run} is not a folder")
    path = run / CONFIG_FILE
    if not path.is_file():
        raise CliError(f"--resume: {run} has no {CONFIG_FILE}: not a varlearn run folder")
    cfg = _read_json(path, "--resume")
    if cfg.get("kind") != CONFIG_KIND or cfg.get("format_version") != FORMAT_VERSION:
        raise CliError(f"--resume: {path} is not a varlearn run configuration (version {FORMAT_VERSION})")
    for key in ("data", "model", "method", "options", "theta0", "dtype", "backend"):
        if key not in cfg:
            raise CliError(f"--resume: {path} lacks the entry {key!r}")
    cfg["options"] = {k: _float_from_json(v) for k, v in cfg["options"].items()}
    return cfg


# --------------------------------------------------------------------------- learn


def _check_backend(name, flag="--backend"):
    if name == "cupy" and not cupy_usable():
        raise CliError(f"{flag} cupy: the GPU backend is not usable: {cupy_unusable_reason()}")


def _psnr_per_image(x, clean):
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    c = np.clip(np.asarray(clean, dtype=np.float64), 0.0, 1.0)
    mse = np.mean((x - c) ** 2, axis=(-2, -1))
    return 10.0 * np.log10(1.0 / np.maximum(mse, 1e-30))


def _final_solve(problem, theta, label, quiet):
    """Solve the lower level tightly (RMS distance DEFAULT_PIXEL_TOL per pixel); host result."""
    n_pix = int(np.prod(problem.x_shape))
    tol = DEFAULT_PIXEL_TOL * math.sqrt(n_pix)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        r = solve_lower(problem, theta, tol, maxiter=FINAL_MAXITER)
    for w in caught:
        if not quiet:
            _err(f"{label}: {w.message}", prefix="warning")
    return to_numpy(r.x).astype(np.float64)


def _prepare_learn(args):
    """Everything before the optimisation; every problem found here is bad input (exit 2)."""
    if args.resume is not None:
        run = Path(args.resume).expanduser()
        cfg = _load_config(run)
        given = [n for n in _given_learn_options(args) if n not in RESUME_OVERRIDES]
        if args.out is not None and Path(args.out).expanduser().resolve() == run.resolve():
            given.remove("out")
        if given:
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            raise CliError(f"--resume: {flags} cannot be changed when resuming (the run's {CONFIG_FILE} fixes "
                           f"them); only --max-iter, --budget, --time-limit and --backend may be given")
        if args.overwrite:
            raise CliError("--resume and --overwrite exclude each other")
        _remove_stale_temps(run)
        for name in ("max_iter", "budget", "time_limit"):
            v = getattr(args, name)
            if v is not None:
                if name == "max_iter":
                    if v < 1:
                        raise CliError(f"--max-iter must be a positive integer, got {v}")
                    cfg["options"]["max_iter"] = int(v)
                else:
                    cfg["options"][name] = _positive_float(_OPTION_FLAGS[name], v, allow_inf=True)
        _check_options(cfg["method"], cfg["options"])
        backend = args.backend or cfg["backend"]
        new = False
        overridden = [n for n in RESUME_OVERRIDES if getattr(args, n) is not None]
    else:
        data_cfg = _data_config(args)
        mc = _model_config(args)
        method = args.method or "maid"
        opts = _options(args, method, mc["model"], data_cfg["seed"])
        backend = args.backend or "numpy"
        _check_backend(backend)
        run = _check_out(args)
        cfg = {"kind": CONFIG_KIND, "format_version": FORMAT_VERSION, "data": data_cfg, "model": mc,
               "method": method, "options": opts, "backend": backend, "dtype": args.dtype or "float64",
               "theta0": None}
        new = True
    _check_backend(backend)
    mc = cfg["model"]
    seed = int(cfg["data"].get("seed", DEFAULT_SEED))
    clean, noisy, names = _load_data(cfg["data"])
    _check_image_size(mc, clean.shape, "data")
    data_desc = _describe_data(cfg["data"], clean, names)
    if not new:
        saved = cfg.get("data_loaded", {})
        if saved and (saved.get("names") != data_desc["names"] or saved.get("shape") != data_desc["shape"]):
            raise CliError(f"--resume: the data changed since the run started (now {len(names)} images "
                           f"{data_desc['shape']}, was {len(saved.get('names', []))} images {saved.get('shape')})")
    reg = _make_regularizer(mc, seed)
    if new:
        if args.step0 is None and "step0" in cfg["options"]:
            cfg["options"]["step0"] = _default_step0(mc["model"], clean.shape)
            _check_options(cfg["method"], cfg["options"])
        cfg["theta0"] = _initial_theta(mc, reg).tolist()
        cfg["data_loaded"] = {"names": data_desc["names"], "shape": data_desc["shape"]}
        cfg["created"] = datetime.datetime.now().isoformat(timespec="seconds")
        cfg["versions"] = _versions(include_cupy=backend == "cupy")
    theta0 = np.asarray([_float_from_json(v) for v in cfg["theta0"]], dtype=np.float64)
    if theta0.ndim != 1 or theta0.shape[0] != reg.n_params or not np.all(np.isfinite(theta0)):
        raise CliError(f"{CONFIG_FILE}: theta0 must hold {reg.n_params} finite numbers for this model")
    dtype = np.dtype(cfg["dtype"])
    clean_dev = to_device(clean.astype(dtype), backend)
    noisy_dev = to_device(noisy.astype(dtype), backend)
    problem = DenoisingProblem(noisy_dev, reg)
    upper = SquaredError(clean_dev)
    ckpt = run / CHECKPOINT_FILE
    resume_from = None
    if not new and ckpt.exists():
        meta, _ = load_checkpoint(ckpt)  # CheckpointError (exit 2) when truncated or corrupted
        if meta.get("method") != cfg["method"]:
            raise CheckpointError(f"checkpoint {ckpt} is a {meta.get('method')!r} run but {CONFIG_FILE} says "
                                  f"{cfg['method']!r}")
        resume_from = ckpt
    if new:
        _create_out(run, args.overwrite)
        atomic_write_text(run / CONFIG_FILE, _dump_json(cfg))
    elif any(n != "backend" for n in overridden):
        # new limits: the next --resume must use them too
        cfg.setdefault("resumed_with", []).append(
            {n: getattr(args, n) for n in overridden} | {"at": datetime.datetime.now().isoformat(timespec="seconds")})
        atomic_write_text(run / CONFIG_FILE, _dump_json(cfg))
    return {"run": run, "cfg": cfg, "reg": reg, "problem": problem, "upper": upper, "theta0": theta0,
            "clean": clean, "noisy": noisy, "names": names, "data_desc": data_desc, "backend": backend,
            "checkpoint": ckpt, "resume": resume_from}


def _progress_callback(bar, upper):
    def callback(r):
        row = r.row
        psnr = upper.psnr(r.x) if r.get("x") is not None else math.nan
        acc = {True: "", False: " (no step)", None: ""}.get(row.get("accepted"), "")
        bar.update(r.nit, f"loss {row['fun']:.5g} eps {row['eps']:.2e} PSNR {psnr:.2f} dB "
                          f"cost {int(row['cost'])}{acc}")

    return callback


def _natural_summary(model, params):
    if model == "tv":
        return f"weight {params['weight']:.4g}, smoothing {params['smoothing']:.4g}"
    return (f"global weight {params['global_weight']:.4g}, {params['n_filters']} filters "
            f"{params['size']}x{params['size']}")


def _write_figures(run, model, history, names, clean, noisy, x0, x1, psnr, params):
    from . import plotting

    figs = run / FIGURES_DIR
    figs.mkdir(exist_ok=True)
    written = []
    written.append(plotting.plot_loss(history, figs / "loss.png"))
    written.append(plotting.plot_accuracy(history, figs / "accuracy.png"))
    written.append(plotting.plot_steps(history, figs / "steps.png"))
    written.append(plotting.plot_psnr(names, {"noisy": psnr["noisy"], "initial θ": psnr["initial"],
                                              "learned θ": psnr["learned"]}, figs / "psnr.png"))
    written.append(plotting.plot_examples(clean, noisy, x1, names, figs / "examples.png"))
    if model == "foe":
        written.append(plotting.plot_filters(np.asarray(params["filters"]), figs / "filters.png",
                                             weights=np.asarray(params["weights"]) * params["global_weight"],
                                             smoothings=params["smoothings"]))
    return [str(Path(p).relative_to(run)) for p in written]


@contextlib.contextmanager
def _verbose_logging(enabled):
    if not enabled:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("varlearn: %(message)s"))
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def cmd_learn(args):
    with _verbose_logging(args.verbose):
        try:
            s = _prepare_learn(args)
        except DownloadError as exc:
            raise _Failure(str(exc)) from exc
        except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
            # DataError and CheckpointError are ValueErrors too
            raise CliError(str(exc).replace("pass size= or crop=", "pass --size or --crop")) from exc
        with _numba_threads(args.threads, enabled=s["backend"] == "numpy") as threads:
            return _learn(args, s, threads)


def _learn(args, s, threads):
    run, cfg, problem, upper = s["run"], s["cfg"], s["problem"], s["upper"]
    model = cfg["model"]["model"]
    quiet = args.quiet
    opts = cfg["options"]
    bar = ProgressBar(opts["max_iter"], "learn", enabled=not quiet)
    if not quiet:
        what = "resuming" if s["resume"] is not None else ("restarting" if args.resume else "learning")
        print(f"varlearn: {what} {model} on {len(s['names'])} images {s['data_desc']['shape'][0]}x"
              f"{s['data_desc']['shape'][1]} ({cfg['data']['source']}), method {cfg['method']}, run folder {run}",
              file=sys.stderr, flush=True)
    xp_theta0 = to_device(s["theta0"], s["backend"])
    try:
        res = minimize_bilevel(problem, upper, xp_theta0, cfg["method"], options=opts,
                               callback=_progress_callback(bar, upper), checkpoint=s["checkpoint"],
                               resume=s["resume"])
    except KeyboardInterrupt:
        bar.close()
        raise _Interrupted(f"continue from the last checkpoint with: varlearn learn --resume {run}") from None
    except CheckpointError as exc:
        bar.close()
        raise CliError(str(exc)) from exc
    finally:
        bar.close()

    theta = to_numpy(res.theta).astype(np.float64)
    reg = s["reg"]
    params = reg.describe(theta)
    x0 = _final_solve(problem, to_device(s["theta0"], s["backend"]), "initial θ", quiet)
    x1 = _final_solve(problem, res.theta, "learned θ", quiet)
    psnr = {"noisy": _psnr_per_image(s["noisy"], s["clean"]).tolist(),
            "initial": _psnr_per_image(x0, s["clean"]).tolist(),
            "learned": _psnr_per_image(x1, s["clean"]).tolist()}
    history_to_csv(res.history, run / HISTORY_FILE)
    fig_error = None
    try:
        figures = _write_figures(run, model, res.history, s["names"], s["clean"], s["noisy"], x0, x1, psnr, params)
    except Exception as exc:  # noqa: BLE001  (figures are secondary: keep the results, report at the end)
        figures = []
        fig_error = f"{type(exc).__name__}: {exc}"
    out = {
        "kind": PARAMS_KIND, "format_version": FORMAT_VERSION,
        "model": model, "model_config": {k: v for k, v in cfg["model"].items() if k != "model"},
        "theta": theta.tolist(), "params": params,
        "theta0": [float(v) for v in s["theta0"]],
        "data": s["data_desc"],
        "method": cfg["method"], "options": res.options,
        "status": res.status, "message": res.message, "success": bool(res.success),
        "fun": res.fun, "fun_bounds": list(res.fun_bounds), "nit": int(res.nit),
        "n_lower_iter": int(res.n_lower_iter), "n_cg_iter": int(res.n_cg_iter), "wall_time": res.wall_time,
        "psnr": {"noisy_mean": float(np.mean(psnr["noisy"])), "initial_mean": float(np.mean(psnr["initial"])),
                 "learned_mean": float(np.mean(psnr["learned"])),
                 "per_image": [{"name": n, "noisy": a, "initial": b, "learned": c}
                               for n, a, b, c in zip(s["names"], psnr["noisy"], psnr["initial"], psnr["learned"])]},
        "backend": s["backend"], "dtype": cfg["dtype"], "threads": threads,
        "files": {"config": CONFIG_FILE, "checkpoint": CHECKPOINT_FILE, "history": HISTORY_FILE,
                  "figures": figures},
        "figures_error": fig_error,
        "versions": _versions(include_cupy=s["backend"] == "cupy"),
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    atomic_write_text(run / PARAMS_FILE, _dump_json(out))
    if not quiet:
        print(f"varlearn: learned {_natural_summary(model, params)}; status {res.status} after {res.nit} "
              f"iterations ({res.wall_time:.1f}s); mean PSNR {out['psnr']['noisy_mean']:.2f} dB noisy -> "
              f"{out['psnr']['learned_mean']:.2f} dB denoised; wrote {run / PARAMS_FILE}")
    if fig_error is not None:
        raise _Failure(f"the results are in {run} but the figures could not be drawn: {fig_error}")
    if not res.success:
        raise _Failure(f"learning stopped without success ({res.status}: {res.message}); results written to {run}")
    return EXIT_OK


# --------------------------------------------------------------------------- denoise


def _load_params(path_text):
    path = Path(path_text).expanduser()
    if path.is_dir():
        path = path / PARAMS_FILE
    p = _read_json(path, "--params")
    if p.get("kind") != PARAMS_KIND:
        raise CliError(f"--params: {path} is not a varlearn params.json")
    model = p.get("model")
    mc = p.get("model_config")
    theta = p.get("theta")
    if model not in ("tv", "foe") or not isinstance(mc, dict):
        raise CliError(f"--params: {path}: unknown model {model!r}")
    if not isinstance(theta, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              for v in theta):
        raise CliError(f"--params: {path}: theta must be a list of numbers")
    theta = np.asarray(theta, dtype=np.float64)
    if not np.all(np.isfinite(theta)):
        raise CliError(f"--params: {path}: theta contains non-finite values")
    try:
        if model == "tv":
            reg = TotalVariation(isotropic=bool(mc.get("isotropic", True)))
            mcfull = {"model": "tv", "isotropic": reg.isotropic}
        else:
            reg = FieldOfExperts(n_filters=int(mc["n_filters"]), size=int(mc["size"]))
            mcfull = {"model": "foe", "n_filters": reg.n_filters, "size": reg.size}
    except (KeyError, TypeError, ValueError) as exc:
        raise CliError(f"--params: {path}: bad model_config {mc!r} ({exc})") from exc
    if theta.shape[0] != reg.n_params:
        raise CliError(f"--params: {path}: theta has {theta.shape[0]} numbers, the {model} model needs {reg.n_params}")
    return path, reg, mcfull, theta


def _collect_inputs(inputs):
    files = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted((e for e in p.iterdir() if e.is_file() and not e.name.startswith(".")
                            and e.suffix.lower() in datasets.IMAGE_EXTENSIONS), key=lambda e: e.name)
            if not found:
                raise CliError(f"{p}: no image files in this folder (extensions {' '.join(datasets.IMAGE_EXTENSIONS)})")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        elif p.exists():
            raise CliError(f"{p}: not a regular file or folder")
        else:
            raise CliError(f"{p}: no such file or folder")
    seen = {}
    for f in files:
        if f.stem in seen and seen[f.stem] != f.resolve():
            raise CliError(f"two inputs share the file stem {f.stem!r} ({seen[f.stem]} and {f}); "
                           f"the outputs would collide")
        seen[f.stem] = f.resolve()
    unique = []
    for f in files:
        if f.resolve() not in [u.resolve() for u in unique]:
            unique.append(f)
    return unique


def _bit_depth(path: Path) -> int:
    """16 when the file stores more than 8 bits per sample (or floating point), else 8."""
    import imageio.v3 as iio

    plugins = ("tifffile", "pillow") if path.suffix.lower() in (".tif", ".tiff") else ("pillow", "tifffile")
    for plugin in plugins:
        try:
            dt = np.dtype(iio.improps(path, plugin=plugin, index=0).dtype)
        except Exception:  # noqa: BLE001,S112  (the plugins raise many kinds of errors)
            continue
        if dt.kind == "b" or (dt.kind in "ui" and dt.itemsize == 1):
            return 8
        return 16
    return 8


def _encode_png(img, bits):
    import imageio.v3 as iio

    x = np.clip(np.asarray(img, dtype=np.float64), 0.0, 1.0)
    if bits == 16:
        arr = np.rint(x * 65535.0).astype(np.uint16)
    else:
        arr = np.rint(x * 255.0).astype(np.uint8)
    return iio.imwrite("<bytes>", arr, extension=".png")


def cmd_denoise(args):
    try:
        _check_backend(args.backend)
        params_path, reg, mc, theta = _load_params(args.params)
        if not (math.isfinite(args.tol) and args.tol > 0):
            raise CliError(f"--tol must be a positive number, got {args.tol}")
        if args.max_iter < 1:
            raise CliError(f"--max-iter must be a positive integer, got {args.max_iter}")
        files = _collect_inputs(args.inputs)
        out_dir = Path(args.out).expanduser()
        if out_dir.exists() and not out_dir.is_dir():
            raise CliError(f"--out: {out_dir} exists and is not a folder")
        targets = [out_dir / (f.stem + ".png") for f in files]
        for f, t in zip(files, targets):
            if t.resolve() == f.resolve():
                raise CliError(f"--out: the output {t} would replace its input; choose another folder")
        if not args.overwrite:
            existing = [t for t in targets if t.exists()]
            if existing:
                raise CliError(f"--out: {existing[0]} exists ({len(existing)} output file(s) exist); "
                               f"use --overwrite to replace them")
        images = []
        for f in files:
            img = datasets.load_image(f, as_gray=True)
            _check_image_size(mc, img.shape, str(f))
            images.append((img, _bit_depth(f)))
        out_dir.mkdir(parents=True, exist_ok=True)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        raise CliError(str(exc)) from exc
    with _numba_threads(args.threads, enabled=args.backend == "numpy"):
        n_warn = _denoise_files(args, reg, theta, files, targets, images)
    if not args.quiet:
        print(f"varlearn: denoised {len(files)} image(s) with {params_path} into {out_dir}"
              + (f" ({n_warn} solve(s) did not reach the tolerance)" if n_warn else ""))
    return EXIT_OK


def _denoise_files(args, reg, theta, files, targets, images):
    bar = ProgressBar(len(files), "denoise", enabled=not args.quiet)
    theta_dev = to_device(theta, args.backend)
    n_warn = 0
    try:
        for i, (f, t, (img, bits)) in enumerate(zip(files, targets, images)):
            problem = DenoisingProblem(to_device(img, args.backend), reg)
            tol = args.tol * math.sqrt(img.size)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                r = solve_lower(problem, theta_dev, tol, maxiter=args.max_iter)
            for w in caught:
                n_warn += 1
                bar.close()
                _err(f"{f}: {w.message}", prefix="warning")
            x = to_numpy(r.x)[0]
            atomic_write_bytes(t, _encode_png(x, bits))
            bar.update(i + 1, f"{f.name} -> {t.name} ({bits}-bit, {r.nit} iterations)")
    except KeyboardInterrupt:
        raise _Interrupted("the images written so far are complete") from None
    finally:
        bar.close()
    return n_warn


# --------------------------------------------------------------------------- info


def cmd_info(args):
    from . import _accel

    v = _versions(include_cupy=False)
    lines = [f"varlearn {v['varlearn']}", f"python {v['python']} ({platform.platform()})"]
    for name in ("numpy", "scipy", "scikit-image", "matplotlib", "imageio"):
        if name in v:
            lines.append(f"{name} {v[name]}")
    if v.get("numba"):
        state = "enabled" if _accel.accelerated() else "disabled (VARLEARN_ACCEL=0)"
        lines.append(f"numba {v['numba']} (CPU kernels {state})")
    else:
        lines.append("numba not installed (CPU kernels off: pip install 'varlearn[fast]')")
    usable = cupy_usable()
    reason = cupy_unusable_reason()
    try:
        import cupy

        lines.append(f"cupy {cupy.__version__}")
    except Exception:  # noqa: BLE001
        lines.append("cupy not installed (GPU backend: pip install 'varlearn[gpu]')")
    lines.append("backends: numpy" + (", cupy" if usable else ""))
    if usable:
        lines.append("GPU: usable (--backend cupy)")
    else:
        lines.append(f"GPU: not usable: {reason}")
    print("\n".join(lines))
    return EXIT_OK


# --------------------------------------------------------------------------- entry point


def main(argv=None) -> int:
    """Run the ``varlearn`` command; returns the exit status (never calls ``sys.exit``)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except CliError as exc:
        _err(exc)
        return EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
    if getattr(args, "func", None) is None:
        _err("choose a command: learn, denoise or info (see varlearn --help)")
        return EXIT_USAGE
    try:
        return args.func(args)
    except (CliError, DataError, CheckpointError) as exc:
        _err(exc)
        return EXIT_USAGE
    except _Interrupted as exc:
        _err(exc, prefix="interrupted")
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        _err("interrupted", prefix="interrupted")
        return EXIT_INTERRUPTED
    except _Failure as exc:
        _err(exc)
        return EXIT_FAILURE
    except Exception as exc:
        _err(f"unexpected {type(exc).__name__}: {exc}")
        if os.environ.get("VARLEARN_DEBUG"):
            raise
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
