"""The data of ``varlearn learn``: options, their JSON description in ``config.json``, loading."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .. import datasets
from .common import size_type
from .errors import CliError

#: built-in images used when no data are given
DEFAULT_BUILTIN = ("camera", "moon", "coins", "astronaut")
#: Kodak images (1-based numbers) used by ``--dataset kodak`` by default
DEFAULT_KODAK = (1, 2, 3, 4)
#: image size of the built-in and Kodak images when ``--size`` is not given
DEFAULT_DATASET_SIZE = 96
DEFAULT_SIGMA = 0.1
DEFAULT_SEED = 0

#: why ``--size`` is refused with noisy image pairs
NOISY_RESIZE_WHY = ("resizing noisy images averages neighbouring pixels and so removes part of the noise: the "
                    "parameters would be learned for a lower noise level than the images have")


def add_arguments(lp):
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
    g.add_argument("--size", type=size_type("--size"), metavar="N|HxW",
                   help=f"resize every image (after --crop); default {DEFAULT_DATASET_SIZE} for built-in and "
                        "Kodak data, native size for folders; refused with --noisy (resizing removes noise: "
                        "use --crop)")
    g.add_argument("--crop", type=size_type("--crop"), metavar="N|HxW", help="center-crop every image first")
    g.add_argument("--bit-depth", type=int, metavar="B",
                   help="integer images in --clean/--noisy hold B-bit values (e.g. 12 for 12-bit camera data in 16-bit "
                        "files): divide by 2^B-1 instead of the container's maximum")
    g.add_argument("--seed", type=int, metavar="N",
                   help=f"seed of the synthetic noise, the FoE filters and the bound estimator "
                        f"(default {DEFAULT_SEED})")


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


def check_bit_depth(bit_depth):
    """:class:`CliError` naming ``--bit-depth`` unless it is ``None`` or an integer from 1 to 64."""
    if bit_depth is not None and not 1 <= bit_depth <= 64:
        raise CliError(f"--bit-depth must be an integer from 1 to 64, got {bit_depth}")


def refuse_noisy_resize(cfg):
    """:class:`CliError` naming ``--size`` when noisy image pairs would be resized."""
    if cfg.get("source") == "pairs" and cfg.get("size"):
        h, w = cfg["size"]
        raise CliError(f"--size {h}x{w} cannot be used with --noisy: {NOISY_RESIZE_WHY}; use --crop N|HxW to "
                       f"cut the images to a common size instead")


def data_config(args) -> dict:
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
        cfg = {"source": "pairs" if args.noisy is not None else "sigma", "size": args.size}
        refuse_noisy_resize(cfg)
        check_bit_depth(args.bit_depth)
        cfg.update({"clean_dir": str(_check_dir(args.clean, "--clean")),
                    "noisy_dir": str(_check_dir(args.noisy, "--noisy")) if args.noisy is not None else None,
                    "sigma": args.sigma, "crop": args.crop, "seed": seed, "bit_depth": args.bit_depth})
        return cfg
    if args.bit_depth is not None:
        raise CliError("--bit-depth applies to image folders (--clean DIR) only")
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


def load_data(cfg):
    """``(clean, noisy, names)`` as float64 NumPy stacks from a data config."""
    refuse_noisy_resize(cfg)  # also for a config.json written before the refusal existed
    size = tuple(cfg["size"]) if cfg.get("size") else None
    crop = tuple(cfg["crop"]) if cfg.get("crop") else None
    src = cfg["source"]
    if src == "pairs":
        clean, noisy, names = datasets.load_pairs(cfg["clean_dir"], cfg["noisy_dir"], crop=crop,
                                                  bit_depth=cfg.get("bit_depth"))
        return clean, noisy, list(names)
    if src == "sigma":
        clean, names = datasets.load_images(cfg["clean_dir"], size=size, crop=crop, bit_depth=cfg.get("bit_depth"))
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


def cli_words(message) -> str:
    """A library message about data with the library's argument names replaced by the command-line flags."""
    return str(message).replace("pass size= or crop=", "pass --size or --crop").replace("bit_depth=", "--bit-depth ")


def describe_data(cfg, clean, names):
    d = dict(cfg)
    d["names"] = list(names)
    d["n_images"] = int(clean.shape[0])
    d["shape"] = [int(s) for s in clean.shape[1:]]
    return d
