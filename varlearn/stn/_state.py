"""State of an STN run: the result object and the checkpoints (npz arrays + JSON metadata, no pickle).

A checkpoint (:func:`varlearn.bilevel.checkpoint.save_checkpoint`) holds the
arrays ``model/<key>`` (current weights), ``best/<key>`` (weights at the best
evaluation), ``opt_w/…``, ``opt_u/…``, ``opt_rho/…`` (optimiser moments) and
the JSON metadata ``kind="varlearn-stn"``, ``options`` (resolved), ``sigma``,
``seed``, ``model_config``, ``dtype``, ``hyper`` (the container's state),
``rng`` (the NumPy bit-generator state), the counters ``n_w``, ``n_h``,
``cost``, ``elapsed``, the ``history``, ``best``, the loss accumulators and the
optimiser settings.  Everything the run draws comes from that one generator,
so a restored run continues bit for bit.
"""
from __future__ import annotations

import csv
import io
import logging

import numpy as np

from ..backend import to_device, to_numpy
from ..bilevel.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ..results import STATUS_MESSAGES, Result
from ._trainutil import LIMIT_OPTIONS
from .hyperparameters import HyperParameters

logger = logging.getLogger("varlearn")

__all__ = ["STNResult", "MESSAGES", "save_trainer", "restore_trainer", "restore_checkpoint"]

MESSAGES = {**STATUS_MESSAGES, "max_steps": "the requested number of weight steps was done",
            "max_epochs": "the requested number of epochs was done"}
KIND = "varlearn-stn"


class STNResult(Result):
    """Result of :func:`train_stn` (a :class:`~varlearn.results.Result`: a dict with attribute access).

    Keys
    ----
    status : str
        ``"max_steps"``, ``"max_epochs"`` (the requested training length was
        done), ``"budget_exhausted"``, ``"time_limit"``, ``"callback_stop"``
        or ``"nan"`` (a non-finite training loss).
    success : bool
        True only for ``"max_steps"`` and ``"max_epochs"``: the run trained as
        long as asked.  A budget or wall-time limit cut the run short, and is
        reported as such.
    message, n_steps (weight steps), n_hyper_steps, epochs, cost (pixel passes), wall_time (s),
    hyper (final constrained values), hyper_u, hyper_sigma, hyper_state (JSON state of the container),
    final_val_psnr, final_val_loss, noisy_psnr (PSNR of the noisy evaluation crops),
    best (the history row with the lowest val_loss; for log_mse the highest mean PSNR),
    best_state (model arrays at that row),
    history (one dict per evaluation), options (resolved), seed.
    """

    def history_column(self, name):
        """One history column as a float array."""
        return np.array([row[name] for row in self["history"]], dtype=float)

    def history_csv(self, path=None):
        """The history as CSV text (written atomically to ``path`` when given)."""
        fields = list(self["history"][0]) if self["history"] else []
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        for row in self["history"]:
            w.writerow(row)
        text = buf.getvalue()
        if path is not None:
            from .._io import atomic_write_text  # noqa: PLC0415

            atomic_write_text(path, text)
        return text


def save_trainer(tr, path):
    """Write the complete state of an :class:`~varlearn.stn.train.STNTrainer` to ``path`` atomically."""
    arrays = {f"model/{k}": to_numpy(v) for k, v in tr.model.state().items()}
    if tr.best_state is not None:
        arrays.update({f"best/{k}": to_numpy(v) for k, v in tr.best_state.items()})
    opt_meta = {}
    for name, opt in (("w", tr.opt_w), ("u", tr.opt_u), ("rho", tr.opt_rho)):
        m, a = opt.state()
        opt_meta[name] = m
        arrays.update({f"opt_{name}/{k}": v for k, v in a.items()})
    get_config = getattr(tr.model, "get_config", None)
    meta = {"kind": KIND, "options": tr.options, "sigma": tr.sigma, "seed": tr.seed_entropy,
            "model_config": get_config() if get_config else None, "dtype": str(np.dtype(tr.dtype)),
            "hyper": tr.hyper.state(), "rng": tr.rng.bit_generator.state, "n_w": tr.n_w, "n_h": tr.n_h,
            "cost": tr.cost, "elapsed": tr.elapsed, "history": tr.history, "best": tr.best,
            "acc": tr._acc, "last_eval": tr._last_eval, "optimizers": opt_meta}
    save_checkpoint(path, meta, arrays)


def restore_trainer(tr, path):
    """Load the state written by :func:`save_trainer` into ``tr``; returns the metadata."""
    meta, arrays = load_checkpoint(path)
    where = f"checkpoint {str(path)!r}"
    if meta.get("kind") != KIND:
        raise CheckpointError(f"{where} is not an STN checkpoint (kind {meta.get('kind')!r})")
    saved = meta["options"]
    if tr._given_warmup is None:
        tr.options["warmup_steps"] = saved["warmup_steps"]
    for k, v in tr.options.items():
        if k not in LIMIT_OPTIONS and saved.get(k) != v:
            raise CheckpointError(f"{where}: option {k!r} was {saved.get(k)!r}, this run has {v!r}")
    if meta["sigma"] != tr.sigma:
        raise CheckpointError(f"{where}: sigma was {meta['sigma']!r}, this run has {tr.sigma!r}")
    if [d["name"] for d in meta["hyper"]["specs"]] != tr.hyper.names:
        raise CheckpointError(f"{where}: hyperparameters {[d['name'] for d in meta['hyper']['specs']]} "
                              f"do not match {tr.hyper.names}")
    if meta["seed"] != tr.seed_entropy:
        logger.warning("stn: resuming with the checkpoint's seed %s (not %s)", meta["seed"], tr.seed_entropy)
        tr.seed_entropy = meta["seed"]
        tr._make_eval_set(np.random.default_rng(np.random.SeedSequence(meta["seed"]).spawn(2)[1]))

    def group(prefix):
        return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

    tr.model.load_state({k: to_device(v, tr.xp) for k, v in group("model/").items()})
    best = group("best/")
    tr.best_state = {k: to_device(v, tr.xp) for k, v in best.items()} if best else None
    for name, opt in (("w", tr.opt_w), ("u", tr.opt_u), ("rho", tr.opt_rho)):
        opt.load_state(meta["optimizers"][name], group(f"opt_{name}/"))
    tr.hyper.load_state(meta["hyper"])
    tr.rng.bit_generator.state = meta["rng"]
    tr.n_w, tr.n_h = int(meta["n_w"]), int(meta["n_h"])
    tr.cost, tr.elapsed = float(meta["cost"]), float(meta["elapsed"])
    tr.history, tr.best = list(meta["history"]), meta["best"]
    tr._acc = list(meta["acc"])
    tr._last_eval = None if meta["last_eval"] is None else tuple(meta["last_eval"])
    return meta


def restore_checkpoint(path, *, xp=np, dtype=None):
    """Rebuild ``(model, hyper, meta)`` from an STN checkpoint (model weights as saved).

    Needs :func:`varlearn.stn.models.model_from_config`; ``xp`` places the model.
    """
    from .models import model_from_config  # noqa: PLC0415

    meta, arrays = load_checkpoint(path)
    if meta.get("kind") != KIND:
        raise CheckpointError(f"checkpoint {str(path)!r} is not an STN checkpoint (kind {meta.get('kind')!r})")
    model = model_from_config(meta["model_config"], dtype=dtype or meta["dtype"], xp=xp)
    model.load_state({k[6:]: to_device(v, xp) for k, v in arrays.items() if k.startswith("model/")})
    return model, HyperParameters.from_state(meta["hyper"]), meta
