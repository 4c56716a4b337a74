"""Helpers of :mod:`varlearn.stn.train`: option validation, patch sampling, losses."""
from __future__ import annotations

import math
import numbers

import numpy as np

from ..backend import get_namespace, to_device, to_numpy

#: what the trainer knows how to apply, with the range of a fixed value
KNOWN_HYPER = {
    "noise": "log ratio a of the training-noise level, sigma_train = sigma * exp(a) (any real)",
    "weight_decay": "weight-decay factor kappa >= 0 times model.decay() (1/2 sum of squared kernels)",
    "dropout": "per-example channel-dropout rate p in [0, 0.95]",
    "augment": "number k in 0..7 of dihedral transforms allowed: each patch gets one of the first k+1 "
               "(identity, rot90, rot180, rot270, transpose, and the transpose of the rotations)",
}
#: dropout rates are capped below 1 (the STN code uses 0.9 or 0.95)
MAX_DROPOUT = 0.95
FIXED_DEFAULTS = {"noise": 0.0, "weight_decay": 0.0, "dropout": 0.0, "augment": 0}

DEFAULTS = {
    "batch_size": 32, "patch_size": 40, "val_batch_size": 16, "val_patch_size": 64,
    "n_eval": None, "eval_batch_size": 32,
    "warmup_steps": None, "t_train": 2, "t_val": 1,
    "optimizer": "adam", "lr": 1e-3, "hyper_lr": 3e-3, "scale_lr": None, "tau": 1e-3, "tune_scales": True,
    "hyper_steps": True, "perturb": True, "val_loss": "log_mse", "data_range": 1.0, "fixed": None,
    "max_epochs": None, "max_steps": None, "budget": None, "time_limit": None, "steps_per_epoch": None,
    "eval_every": None, "eval_at_start": True, "checkpoint_every": None, "restore_best": False,
}
#: options that may differ between a checkpoint and the call that resumes it
LIMIT_OPTIONS = ("max_epochs", "max_steps", "budget", "time_limit", "checkpoint_every", "restore_best")


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _int(v, name, lo, none_ok=False):
    if v is None and none_ok:
        return None
    if not _is_int(v) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}{' or None' if none_ok else ''}, got {v!r}")
    return int(v)


def _real(v, name, lo=0.0, strict=True, none_ok=False, inf_ok=False):
    if v is None and none_ok:
        return None
    ok = not isinstance(v, (bool, np.bool_)) and isinstance(v, (numbers.Real, np.floating, np.integer))
    if ok:
        v = float(v)
        ok = (math.isfinite(v) or (inf_ok and v == math.inf)) and (v > lo if strict else v >= lo)
    if not ok:
        rel = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {rel} {lo}{' or None' if none_ok else ''}, got {v!r}")
    return v


def _bool(v, name):
    if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {v!r}")
    return bool(v)


def validate_options(options, hyper):
    """Merge ``options`` into :data:`DEFAULTS` and check every entry by name."""
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ValueError(f"options must be a dict or None, got {type(options).__name__}")
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; known options: {sorted(DEFAULTS)}")
    o = {**DEFAULTS, **options}
    for k in ("batch_size", "patch_size", "val_batch_size", "val_patch_size", "eval_batch_size", "t_train", "t_val"):
        o[k] = _int(o[k], k, 1)
    for k in ("n_eval", "steps_per_epoch", "eval_every", "max_steps", "checkpoint_every"):
        o[k] = _int(o[k], k, 1, none_ok=True)
    o["warmup_steps"] = _int(o["warmup_steps"], "warmup_steps", 0, none_ok=True)
    o["max_epochs"] = _real(o["max_epochs"], "max_epochs", none_ok=True)
    o["budget"] = _real(o["budget"], "budget", none_ok=True)
    o["time_limit"] = _real(o["time_limit"], "time_limit", strict=False, none_ok=True, inf_ok=True)
    for k in ("lr", "hyper_lr", "data_range"):
        o[k] = _real(o[k], k)
    o["scale_lr"] = _real(o["scale_lr"], "scale_lr", none_ok=True)
    o["tau"] = _real(o["tau"], "tau", strict=False)
    for k in ("tune_scales", "hyper_steps", "perturb", "eval_at_start", "restore_best"):
        o[k] = _bool(o[k], k)
    if o["optimizer"] not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {o['optimizer']!r}")
    if o["val_loss"] not in ("log_mse", "mse"):
        raise ValueError(f"val_loss must be 'log_mse' or 'mse', got {o['val_loss']!r}")
    if all(o[k] is None for k in ("max_epochs", "max_steps", "budget", "time_limit")):
        raise ValueError("give at least one stopping rule: max_epochs, max_steps, budget or time_limit "
                         "(all are None)")
    o["fixed"] = _validate_fixed(o["fixed"], hyper)
    for s in hyper.specs:
        _check_spec(s)
    return o


def _validate_fixed(fixed, hyper):
    if fixed is None:
        fixed = {}
    if not isinstance(fixed, dict):
        raise ValueError(f"fixed must be a dict of hyperparameter values, got {type(fixed).__name__}")
    out = dict(FIXED_DEFAULTS)
    for name, v in fixed.items():
        if name not in KNOWN_HYPER:
            raise ValueError(f"fixed[{name!r}]: unknown hyperparameter; known: {sorted(KNOWN_HYPER)}")
        if name in hyper:
            raise ValueError(f"fixed[{name!r}]: {name!r} is tuned (it is in the hyperparameter container)")
        if name == "noise":
            out[name] = _real(v, "fixed['noise']", lo=-math.inf)
        elif name == "weight_decay":
            out[name] = _real(v, "fixed['weight_decay']", strict=False)
        elif name == "dropout":
            out[name] = _real(v, "fixed['dropout']", strict=False)
            if out[name] > MAX_DROPOUT:
                raise ValueError(f"fixed['dropout'] must lie in [0, {MAX_DROPOUT}], got {v!r}")
        else:
            out[name] = _int(v, "fixed['augment']", 0)
            if out[name] > 7:
                raise ValueError(f"fixed['augment'] must be an integer in 0..7, got {v!r}")
    return out


def _check_spec(s):
    name = s.name
    if name not in KNOWN_HYPER:
        raise ValueError(f"hyperparameter {name!r} is not one the trainer can apply; known: "
                         + "; ".join(f"{k}: {v}" for k, v in KNOWN_HYPER.items()))
    if name == "weight_decay" and s.lo < 0:
        raise ValueError(f"hyperparameter 'weight_decay': range must have lo >= 0, got {(s.lo, s.hi)!r}")
    if name == "dropout" and (s.lo < 0 or s.hi > MAX_DROPOUT):
        raise ValueError(f"hyperparameter 'dropout': range must lie in [0, {MAX_DROPOUT}] (rates are capped "
                         f"below 1), got {(s.lo, s.hi)!r}")
    if name == "augment" and (not s.discrete or s.lo < 0 or s.hi > 8):
        raise ValueError(f"hyperparameter 'augment' must be discrete with a range inside [0, 8], "
                         f"got discrete={s.discrete}, range {(s.lo, s.hi)!r}")


# ----------------------------------------------------------------------------- data
_DIHEDRAL = [(k, False) for k in range(4)] + [(k, True) for k in range(4)]


class Samples:
    """Clean training or validation data: vectors ``(N, d)`` or 2-D images (a ``(N, H, W)`` stack or a list)."""

    def __init__(self, data, name, xp, dtype):
        if isinstance(data, (list, tuple)):
            if not data:
                raise ValueError(f"{name} must hold at least one image, got an empty list")
            arrays = list(data)
        else:
            arrays = [data]
        for a in arrays:
            if get_namespace(a) is not xp:
                raise TypeError(f"{name} lives in {get_namespace(a).__name__}, the model in {xp.__name__}; "
                                "move it explicitly with varlearn.backend.to_device")
            if getattr(a, "dtype", np.dtype(object)).kind != "f":
                raise ValueError(f"{name} must be a floating array (or list of them), got dtype "
                                 f"{getattr(a, 'dtype', None)}")
            if not bool(xp.isfinite(a).all()):
                raise ValueError(f"{name} contains NaN or Inf")
        if len(arrays) > 1 and all(a.ndim == 2 for a in arrays) and len({tuple(a.shape) for a in arrays}) == 1:
            arrays = [xp.stack(arrays)]
        self.name = name
        self.xp, self.dtype = xp, dtype
        if len(arrays) == 1 and arrays[0].ndim == 2 and not isinstance(data, (list, tuple)):
            self.mode = "vector"
            self.stack = arrays[0].astype(dtype, copy=False)
            self.n = self.stack.shape[0]
            self.images = None
            if self.n < 1:
                raise ValueError(f"{name} must hold at least one vector, got shape {tuple(self.stack.shape)}")
        else:
            self.mode = "image"
            if len(arrays) == 1 and arrays[0].ndim == 3:
                self.stack = arrays[0].astype(dtype, copy=False)
                self.images = [self.stack[i] for i in range(self.stack.shape[0])]
            else:
                bad = [i for i, a in enumerate(arrays) if a.ndim != 2]
                if bad:
                    raise ValueError(f"{name}: every image must be 2-D (H, W); item {bad[0]} has shape "
                                     f"{tuple(arrays[bad[0]].shape)}")
                self.stack = None
                self.images = [a.astype(dtype, copy=False) for a in arrays]
            self.n = len(self.images)
            if self.n < 1:
                raise ValueError(f"{name} must hold at least one image")
        self.pixels_per_item = int(np.prod(self.stack.shape[1:])) if self.mode == "vector" else None

    def min_side(self):
        return min(min(a.shape) for a in self.images)

    def total_pixels(self):
        return sum(int(a.shape[0] * a.shape[1]) for a in self.images) if self.mode == "image" else self.stack.size

    def check_patch(self, size, option):
        if self.mode == "image" and size > self.min_side():
            raise ValueError(f"{option}={size} is larger than the smallest {self.name} image side "
                             f"({self.min_side()})")

    def sample(self, rng, batch, size, aug=None):
        """``batch`` random vectors, or ``size x size`` patches (with dihedral indices ``aug`` (B,) or None)."""
        xp = self.xp
        idx = rng.integers(0, self.n, size=batch)
        if self.mode == "vector":
            return self.stack[xp.asarray(idx)]
        hs = np.array([self.images[i].shape[0] for i in idx])
        ws = np.array([self.images[i].shape[1] for i in idx])
        oi = rng.integers(0, hs - size + 1)
        oj = rng.integers(0, ws - size + 1)
        if self.stack is not None:
            r = np.arange(size)
            out = self.stack[xp.asarray(idx[:, None, None]), xp.asarray(oi[:, None, None] + r[None, :, None]),
                             xp.asarray(oj[:, None, None] + r[None, None, :])]
        else:
            out = xp.stack([self.images[i][a:a + size, b:b + size] for i, a, b in zip(idx, oi, oj)])
        if aug is not None:
            t = rng.integers(0, np.asarray(aug, dtype=np.int64) + 1)
            for b in np.flatnonzero(t):
                k, tr = _DIHEDRAL[int(t[b])]
                p = xp.rot90(out[b], k)
                out[b] = p.T if tr else p
        return out

    def fixed_crops(self, rng, n, size):
        """``n`` items cycling over the data: vectors, or one random ``size x size`` crop of each image in turn."""
        if self.mode == "vector":
            return self.stack[self.xp.asarray(np.arange(n) % self.n)]
        crops = []
        for i in range(n):
            img = self.images[i % self.n]
            a = int(rng.integers(0, img.shape[0] - size + 1))
            b = int(rng.integers(0, img.shape[1] - size + 1))
            crops.append(img[a:a + size, b:b + size])
        return self.xp.stack(crops)

    def add_noise(self, rng, clean, sigma):
        """``clean + sigma_b * N(0, 1)``, drawn on the host in float64 (same on every backend)."""
        noise = rng.standard_normal(tuple(clean.shape))
        sig = np.asarray(sigma, dtype=np.float64).reshape((-1,) + (1,) * (clean.ndim - 1))
        noise *= sig
        return clean + to_device(noise.astype(self.dtype), self.xp)


def loss_and_grad(out, clean, kind, want_per_item=False):
    """Loss of ``out`` against ``clean`` and its gradient.

    ``kind="mse"``: ``mean((out - clean)^2)`` over all entries.  ``"log_mse"``:
    the mean over items of ``log(mse_b)``.  With ``want_per_item`` also the
    per-item MSEs (host array).
    """
    xp = get_namespace(out)
    r = out - clean
    axes = tuple(range(1, r.ndim))
    per = xp.mean(r * r, axis=axes)
    n_items, per_item_size = r.shape[0], r.size // r.shape[0]
    if kind == "mse":
        loss = float(xp.mean(per))
        grad = r * (2.0 / r.size)
    else:
        loss = float(xp.mean(xp.log(per)))
        scale = (2.0 / (per_item_size * n_items)) / per
        grad = r * scale.reshape((-1,) + (1,) * (r.ndim - 1)).astype(r.dtype)
    if want_per_item:
        return loss, grad.astype(out.dtype, copy=False), to_numpy(per).astype(np.float64)
    return loss, grad.astype(out.dtype, copy=False)
