"""``varlearn denoise``: apply the parameters of a run (``params.json``) to new images."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .. import datasets, io
from .._io import atomic_write_bytes
from ..backend import get_namespace, to_device, to_numpy
from ..problems import DenoisingProblem
from ..stn.io import denoise_stn, is_stn_params, load_stn
from .common import add_threads_argument, check_backend, input_errors, thread_limit
from .data import check_bit_depth, cli_words
from .errors import EXIT_OK, CliError, Interrupted, warn
from .final import DEFAULT_PIXEL_TOL, FINAL_MAXITER, final_solve
from .progress import Progress, compile_notice

NAME = "denoise"
HELP = "denoise images with learned parameters"
DESCRIPTION = ("Denoise images with the parameters of a run. Writes DIR/<stem>.png: 8-bit PNG for 8-bit inputs, "
               "16-bit PNG for 16-bit, other integer and floating-point inputs. Colour inputs are converted to "
               "gray. Values are clipped to [0, 1] and rounded.")


def add_arguments(dp):
    dp.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    dp.add_argument("--params", required=True, metavar="FILE", help="RUN/params.json (or the run folder)")
    dp.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    dp.add_argument("--tol", type=float, default=DEFAULT_PIXEL_TOL, metavar="T",
                    help=f"certified root-mean-square distance per pixel to the exact solution "
                         f"(default {DEFAULT_PIXEL_TOL:g})")
    dp.add_argument("--max-iter", type=int, default=FINAL_MAXITER, metavar="N",
                    help=f"lower-level iterations per image (default {FINAL_MAXITER})")
    dp.add_argument("--bit-depth", type=int, metavar="B",
                    help="integer inputs hold B-bit values (e.g. 12 in 16-bit files): divide by 2^B-1")
    dp.add_argument("--backend", choices=("numpy", "cupy"), default="numpy", help="array backend (default numpy)")
    add_threads_argument(dp)
    dp.add_argument("--overwrite", action="store_true", help="replace existing output files")
    dp.add_argument("--quiet", action="store_true", help="no progress or summary")


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
    unique = []
    for f in files:
        r = f.resolve()
        if f.stem in seen and seen[f.stem] != r:
            raise CliError(f"two inputs share the file stem {f.stem!r} ({seen[f.stem]} and {f}); "
                           f"the outputs would collide")
        if f.stem not in seen:
            unique.append(f)
        seen[f.stem] = r
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


def _prepare(args):
    check_backend(args.backend)
    loaded = _load_stn(args.params, args.backend) if is_stn_params(args.params) else io.load_params(args.params)
    if not (math.isfinite(args.tol) and args.tol > 0):
        raise CliError(f"--tol must be a positive number, got {args.tol}")
    if args.max_iter < 1:
        raise CliError(f"--max-iter must be a positive integer, got {args.max_iter}")
    check_bit_depth(args.bit_depth)
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
    need = loaded.min_size if loaded.get("kind") == "stn" else io.min_image_size(loaded.model, loaded.model_config)
    images = []
    for f in files:
        img = datasets.load_image(f, as_gray=True, bit_depth=args.bit_depth)
        if min(img.shape[-2:]) < need:
            raise CliError(f"{f}: images of {img.shape[0]}x{img.shape[1]} are too small for this model "
                           f"(need at least {need}x{need})")
        images.append((img, _bit_depth(f)))
    out_dir.mkdir(parents=True, exist_ok=True)
    return loaded, files, targets, images, out_dir


def run(args):
    with input_errors(cli_words):
        loaded, files, targets, images, out_dir = _prepare(args)
    with thread_limit(args.threads, enabled=args.backend == "numpy"):
        n_warn = _denoise_files(args, loaded, files, targets, images)
    if not args.quiet:
        print(f"varlearn: denoised {len(files)} image(s) with {loaded.path} into {out_dir}"
              + (f" ({n_warn} solve(s) did not reach the tolerance)" if n_warn else ""))
    return EXIT_OK


def _denoise_files(args, loaded, files, targets, images):
    theta_dev = None if loaded.get("kind") == "stn" else to_device(loaded.theta, args.backend)
    n_warn = 0
    try:
        with Progress(len(files), "denoise", enabled=not args.quiet, unit="image") as bar, \
                compile_notice(enabled=not args.quiet, progress=bar):
            for i, (f, t, (img, bits)) in enumerate(zip(files, targets, images)):
                if theta_dev is None:  # an STN network (varlearn stn): one forward pass
                    atomic_write_bytes(t, _encode_png(_denoise_stn_image(loaded, img, args.backend), bits))
                    bar.update(i + 1, f"{f.name} -> {t.name} ({bits}-bit, STN)")
                    continue
                problem = DenoisingProblem(to_device(img, args.backend), loaded.regularizer)
                r, messages = final_solve(problem, theta_dev, tol=args.tol, maxiter=args.max_iter)
                for m in messages:
                    n_warn += 1
                    warn(f"{f}: {m}")
                atomic_write_bytes(t, _encode_png(to_numpy(r.x)[0], bits))
                bar.update(i + 1, f"{f.name} -> {t.name} ({bits}-bit, {r.nit} iterations)")
    except KeyboardInterrupt as exc:
        raise Interrupted("the images written so far are complete", exc) from None
    return n_warn


# --------------------------------------------------------------------------- STN denoisers (varlearn stn runs)
def _load_stn(path, backend):
    """The STN denoiser of ``path`` placed on ``backend`` (:func:`varlearn.stn.io.load_stn`; ``kind="stn"``)."""
    xp = np if backend == "numpy" else get_namespace(to_device(np.zeros(1), backend))
    loaded = load_stn(path, xp=xp)
    loaded["kind"] = "stn"
    return loaded


def _denoise_stn_image(loaded, img, backend):
    """One host image denoised by ``loaded`` (:func:`_load_stn`) on ``backend``; a host float64 array."""
    x = denoise_stn(to_device(np.asarray(img, dtype=loaded.model.dtype), backend), loaded.model, loaded.hyper)
    return to_numpy(x).astype(np.float64)
