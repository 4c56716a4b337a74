"""Training of Self-Tuning Networks: the alternating algorithm of MacKay et al. (2019) for denoisers.

Public API: :func:`train_stn` (one call) and :class:`STNTrainer` (the same run,
step by step), returning an :class:`STNResult`.

The hyperparameters the trainer can apply (the names of a
:class:`~varlearn.stn.hyperparameters.HyperParameters` container; the others
stay at ``options["fixed"]``):

``noise``
    training-noise level ``sigma_train = sigma * exp(a)`` (``a`` the value; per example);
``weight_decay``
    ``kappa`` in ``kappa * model.decay()`` added to the training loss (mean over the batch);
``dropout``
    per-example channel-dropout rate passed to ``model.forward`` (range within [0, 0.95]);
``augment``
    discrete ``k`` in 0..7: each training patch gets one of the first ``k + 1``
    dihedral transforms, uniformly (image data only).

Suggested specs: ``Hyperparameter("noise", 0.0, (-1.5, 1.5), transform="identity")``,
``Hyperparameter("weight_decay", 1e-4, (1e-8, 1e-1), transform="log", per_example=False)``,
``Hyperparameter("dropout", 0.05, (0, 0.5))``,
``Hyperparameter("augment", 3.5, (0, 8), discrete=True)``.

Cost
----
The run's ``cost`` counts *pixel passes*: a forward **and** backward pass of the
network over one pixel (one entry for vector data) costs 1, a forward-only
pass 1/3.  A weight step costs ``batch_size * patch_size**2``, a hyper-step
``val_batch_size * val_patch_size**2``, an evaluation ``n_eval *
val_patch_size**2 / 3``.  The count is exact and machine independent; the
wall time is reported beside it.

References
----------
M. MacKay, P. Vicol, J. Lorraine, D. Duvenaud, R. Grosse, "Self-Tuning Networks:
Bilevel Optimization of Hyperparameters using Structured Best-Response
Functions", ICLR 2019, arXiv:1903.03088.
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np

from ..backend import get_namespace, to_device, to_numpy
from ..metrics import psnr_from_mse
from ._state import MESSAGES, STNResult, restore_checkpoint, restore_trainer, save_trainer
from ._trainutil import Samples, loss_and_grad, validate_options
from .hyperparameters import HyperParameters
from .optim import Adam, make_optimizer

logger = logging.getLogger("varlearn")

__all__ = ["train_stn", "STNTrainer", "STNResult", "restore_checkpoint"]


class _Stop(Exception):
    def __init__(self, status):
        super().__init__(status)
        self.status = status


def _hyper_turn(o, n_w, n_h):
    """Whether a hyper-step is due after ``n_w`` weight and ``n_h`` hyper-steps (the schedule of ``next_action``)."""
    k = n_w - o["warmup_steps"]
    return o["hyper_steps"] and k > 0 and k % o["t_train"] == 0 and n_h < (k // o["t_train"]) * o["t_val"]


def _model_xp_dtype(model):
    arrays = list(model.params.values())
    if not arrays:
        raise ValueError("model.params is empty: nothing to train")
    return get_namespace(*arrays), arrays[0].dtype


class STNTrainer:
    """One STN run (see :func:`train_stn` for the parameters and the algorithm).

    Use :meth:`run` to train until a stopping rule fires; :meth:`save` and
    :meth:`restore` write and read the complete state.
    """

    def __init__(self, model, hyper, train_images, val_images, *, sigma, options=None, seed=0):
        if not isinstance(hyper, HyperParameters):
            raise ValueError(f"hyper must be a HyperParameters container, got {type(hyper).__name__}")
        if getattr(model, "n_hyper", None) != hyper.n:
            raise ValueError(f"model.n_hyper={getattr(model, 'n_hyper', None)!r} does not match the "
                             f"{hyper.n} hyperparameter(s) {hyper.names}")
        self.sigma = float(sigma) if isinstance(sigma, (int, float, np.floating, np.integer)) else math.nan
        if isinstance(sigma, bool) or not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
        if not (seed is None or (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0)):
            raise ValueError(f"seed must be None or an integer >= 0, got {seed!r}")
        self.model, self.hyper = model, hyper
        self.xp, self.dtype = _model_xp_dtype(model)
        o = validate_options(options, hyper)
        self._given_warmup = o["warmup_steps"]
        self.train = Samples(train_images, "train_images", self.xp, self.dtype)
        self.val = Samples(val_images, "val_images", self.xp, self.dtype)
        if self.train.mode != self.val.mode:
            raise ValueError(f"train_images are {self.train.mode}s but val_images are {self.val.mode}s")
        if self.train.mode == "vector":
            if "augment" in hyper or o["fixed"]["augment"]:
                raise ValueError("augment (dihedral transforms) needs image data, got vectors")
            if self.train.stack.shape[1:] != self.val.stack.shape[1:]:
                raise ValueError(f"train and val vectors differ in length: {self.train.stack.shape[1:]} "
                                 f"vs {self.val.stack.shape[1:]}")
            self.px_train = self.px_val = self.train.pixels_per_item
        else:
            self.train.check_patch(o["patch_size"], "patch_size")
            self.val.check_patch(o["val_patch_size"], "val_patch_size")
            self.px_train, self.px_val = o["patch_size"] ** 2, o["val_patch_size"] ** 2
        if o["steps_per_epoch"] is None:
            o["steps_per_epoch"] = max(1, math.ceil(self.train.total_pixels() / (o["batch_size"] * self.px_train)))
        if o["eval_every"] is None:
            o["eval_every"] = o["steps_per_epoch"]
        if o["warmup_steps"] is None:
            total = o["max_steps"] or (o["max_epochs"] and math.ceil(o["max_epochs"] * o["steps_per_epoch"]))
            o["warmup_steps"] = int(round(0.05 * total)) if total else 0
        if o["n_eval"] is None:
            o["n_eval"] = self.val.n if self.val.mode == "vector" else 32
        self.options = o
        ss = np.random.SeedSequence(seed)
        self.seed_entropy = int(ss.entropy)
        s_train, s_eval = ss.spawn(2)
        self.rng = np.random.default_rng(s_train)
        self._make_eval_set(np.random.default_rng(s_eval))
        self.opt_w = make_optimizer(o["optimizer"], model.params, o["lr"])
        self.opt_u = Adam({"u": hyper.u}, o["hyper_lr"])
        self.opt_rho = Adam({"rho": hyper.rho}, o["scale_lr"] or o["hyper_lr"])
        self.n_w = self.n_h = 0
        self.cost, self.elapsed = 0.0, 0.0
        self.history, self.best, self.best_state = [], None, None
        self._acc = [0.0, 0, 0.0, 0]  # train-loss sum/count, hyper-loss sum/count since the last evaluation
        self._last_eval = None

    # ------------------------------------------------------------------ data
    def _make_eval_set(self, rng):
        clean = self.val.fixed_crops(rng, self.options["n_eval"], self.options["val_patch_size"])
        self.eval_clean = clean
        self.eval_noisy = self.val.add_noise(rng, clean, np.full(clean.shape[0], self.sigma))
        _, _, per = loss_and_grad(self.eval_noisy, clean, "mse", want_per_item=True)
        self.noisy_psnr = float(np.mean(self._psnr(per)))

    def _psnr(self, per_mse):
        return psnr_from_mse(per_mse, data_range=self.options["data_range"])

    def _h(self, ut):
        return to_device(self.hyper.hnet_input(ut).astype(self.dtype), self.xp)

    def _mask_rng(self):
        """Generator for the dropout masks, in the data's namespace; on CuPy seeded from the host generator."""
        if self.xp is np:
            return self.rng
        return self.xp.random.default_rng(int(self.rng.integers(0, 2 ** 63)))

    def _column(self, vals, name, batch):
        if name in self.hyper:
            return vals[:, self.hyper.index(name)]
        return np.full(batch, float(self.options["fixed"][name]))

    # ------------------------------------------------------------------ steps
    def _draw(self, batch, perturb):
        """``(ũ, z)``: perturbed draws, or ``u`` itself with ``z = 0``."""
        if perturb:
            return self.hyper.perturb(batch, self.rng)
        return self.hyper.unperturbed(batch), np.zeros((batch, self.hyper.n))

    def weight_step(self):
        """One training step: perturbed hyperparameters (if ``perturb``), fresh patches and noise."""
        o, hy, rng = self.options, self.hyper, self.rng
        B = o["batch_size"]
        ut, _ = self._draw(B, o["perturb"])
        vals = hy.constrained(ut)
        aug = None
        if "augment" in hy or o["fixed"]["augment"]:
            aug = self._column(vals, "augment", B).astype(np.int64)
        clean = self.train.sample(rng, B, o["patch_size"], aug)
        noisy = self.train.add_noise(rng, clean, self.sigma * np.exp(self._column(vals, "noise", B)))
        drop, mask_rng = None, None
        if "dropout" in hy or o["fixed"]["dropout"] > 0:
            drop = to_device(self._column(vals, "dropout", B).astype(self.dtype), self.xp)
            mask_rng = self._mask_rng()
        out, cache = self.model.forward(noisy, self._h(ut), dropout=drop, rng=mask_rng)
        loss, grad_out = loss_and_grad(out, clean, "mse")
        grads, _ = self.model.backward(cache, grad_out)
        kappa = float(np.mean(self._column(vals, "weight_decay", B)))
        if kappa > 0:
            dval, dgrads = self.model.decay()
            loss += kappa * float(dval)
            for k, g in dgrads.items():
                grads[k] = grads[k] + kappa * g
        if not math.isfinite(loss):
            raise _Stop("nan")
        self.opt_w.step(grads)
        self.n_w += 1
        return self._tally(0, B * self.px_train, loss)

    def _tally(self, slot, pixels, loss):
        """Count a step's cost and add its loss to the running mean (slot 0: weight steps, 2: hyper-steps)."""
        self.cost += pixels
        self._acc[slot] += loss
        self._acc[slot + 1] += 1
        return loss

    def hyper_step(self):
        """One hyper-step on validation crops at the target noise level (eval mode, entropy term ``tau``)."""
        o, hy, rng = self.options, self.hyper, self.rng
        B = o["val_batch_size"]
        ut, z = self._draw(B, o["tune_scales"])
        clean = self.val.sample(rng, B, o["val_patch_size"])
        noisy = self.val.add_noise(rng, clean, np.full(B, self.sigma))
        out, cache = self.model.forward(noisy, self._h(ut), dropout=None, rng=None)
        loss, grad_out = loss_and_grad(out, clean, o["val_loss"])
        _, grad_h = self.model.backward(cache, grad_out)
        gu, grho = hy.grads(hy.hnet_input_grad(to_numpy(grad_h)), z)
        self.opt_u.step({"u": gu})
        if o["tune_scales"]:
            self.opt_rho.step({"rho": grho - o["tau"] * hy.entropy_grad()})
        hy.project()
        self.n_h += 1
        return self._tally(2, B * self.px_val, loss)

    def evaluate(self):
        """Validation at the unperturbed ``u``: ``(val_loss, val_psnr, per-crop MSEs)`` on the fixed crops (costed)."""
        o = self.options
        pers = []
        for s in range(0, self.eval_clean.shape[0], o["eval_batch_size"]):
            y = self.eval_noisy[s:s + o["eval_batch_size"]]
            out, _ = self.model.forward(y, self._h(self.hyper.unperturbed(y.shape[0])), dropout=None, rng=None)
            pers.append(loss_and_grad(out, self.eval_clean[s:s + o["eval_batch_size"]], "mse", True)[2])
        per = np.concatenate(pers)
        self.cost += per.size * self.px_val / 3.0
        loss = float(np.mean(np.log(per))) if o["val_loss"] == "log_mse" else float(np.mean(per))
        return loss, float(np.mean(self._psnr(per))), per

    # ------------------------------------------------------------------ schedule
    def next_action(self):
        """``"hyper"`` or ``"weight"``: warm-up, then ``t_train`` weight steps and ``t_val`` hyper-steps per cycle."""
        return "hyper" if _hyper_turn(self.options, self.n_w, self.n_h) else "weight"

    def phase(self):
        if not self.options["hyper_steps"]:
            return "fixed"
        return "warmup" if self.n_w < self.options["warmup_steps"] else "tuning"

    def _limit_status(self):
        o = self.options
        if o["max_steps"] is not None and self.n_w >= o["max_steps"]:
            return "max_steps"
        if o["max_epochs"] is not None and self.n_w >= o["max_epochs"] * o["steps_per_epoch"]:
            return "max_epochs"
        if o["budget"] is not None and self.cost >= o["budget"]:
            return "budget_exhausted"
        if o["time_limit"] is not None and self.elapsed >= o["time_limit"]:  # run() has just called clock()
            return "time_limit"
        return None

    def _eval_row(self, final=False):
        loss, psnr, _ = self.evaluate()
        a = self._acc
        row = {"step": self.n_w, "hyper_step": self.n_h, "epoch": self.n_w / self.options["steps_per_epoch"],
               "cost": self.cost, "time": self.elapsed, "phase": self.phase(),
               "train_loss": a[0] / a[1] if a[1] else math.nan, "hyper_loss": a[2] / a[3] if a[3] else math.nan,
               "val_loss": loss, "val_psnr": psnr, "final": final}
        vals, sig = self.hyper.values(), self.hyper.sigma
        for i, name in enumerate(self.hyper.names):
            row[name] = vals[name]
            row["u_" + name] = float(self.hyper.u[i])
            row["sigma_" + name] = float(sig[i])
        self._acc = [0.0, 0, 0.0, 0]
        self._last_eval = (self.n_w, self.n_h)
        self.history.append(row)
        if self.best is None or loss < self.best["val_loss"]:
            self.best = row
            self.best_state = {k: self.xp.array(v, copy=True) for k, v in self.model.state().items()}
        logger.info("stn: step %d (hyper %d, %s) cost %.4g: val PSNR %.3f dB, val loss %.5g, %s", self.n_w, self.n_h,
                    row["phase"], self.cost, psnr, loss,
                    ", ".join(f"{k}={v:.4g}" for k, v in vals.items()))
        return row

    def run(self, callback=None, checkpoint=None):
        """Train until a stopping rule fires; returns an :class:`STNResult` (see :func:`train_stn`)."""
        o = self.options
        t0 = time.perf_counter()
        t_base = self.elapsed
        status = None

        def clock():
            self.elapsed = t_base + (time.perf_counter() - t0)

        def notify(info):
            if callback is not None:
                try:
                    if callback(info) is True:
                        raise _Stop("callback_stop")
                except StopIteration:
                    raise _Stop("callback_stop") from None

        try:
            if not self.history and o["eval_at_start"]:
                clock()
                notify({"event": "eval", **self._eval_row()})
            while True:
                clock()
                status = self._limit_status()
                if status is not None:
                    break
                kind = self.next_action()
                loss = self.hyper_step() if kind == "hyper" else self.weight_step()
                clock()
                if kind == "weight" and self.n_w % o["eval_every"] == 0:
                    notify({"event": "eval", **self._eval_row()})
                    if checkpoint is not None and o["checkpoint_every"] is None:
                        self.save(checkpoint)
                if checkpoint is not None and o["checkpoint_every"] and kind == "weight" \
                        and self.n_w % o["checkpoint_every"] == 0:
                    self.save(checkpoint)
                notify({"event": "step", "kind": kind, "loss": loss, "step": self.n_w, "hyper_step": self.n_h,
                        "cost": self.cost, "time": self.elapsed, "phase": self.phase()})
        except _Stop as stop:
            status = stop.status
        clock()
        if checkpoint is not None:
            self.save(checkpoint)  # the state at the stop, before the final evaluation: resumes exactly
        history, best, best_state, cost = self.history, self.best, self.best_state, self.cost
        if self._last_eval != (self.n_w, self.n_h) and status != "nan":
            # evaluate without changing the resumable state (the checkpoint above holds it)
            snapshot = (self.cost, self._acc, self._last_eval, self.history, self.best, self.best_state)
            self.history = list(self.history)
            self._eval_row(final=True)
            history, best, best_state, cost = self.history, self.best, self.best_state, self.cost
            self.cost, self._acc, self._last_eval, self.history, self.best, self.best_state = snapshot
        return self._result(status, list(history), best, best_state, cost)

    def _result(self, status, history, best, best_state, cost):
        last = history[-1] if history else {}
        if self.options["restore_best"] and best_state is not None:
            self.model.load_state(best_state)
        return STNResult(
            status=status, message=MESSAGES.get(status, status), success=status in ("max_steps", "max_epochs"),
            n_steps=self.n_w, n_hyper_steps=self.n_h, epochs=self.n_w / self.options["steps_per_epoch"],
            cost=cost, wall_time=self.elapsed, hyper=self.hyper.values(),
            hyper_u=dict(zip(self.hyper.names, map(float, self.hyper.u))),
            hyper_sigma=dict(zip(self.hyper.names, map(float, self.hyper.sigma))), hyper_state=self.hyper.state(),
            final_val_psnr=last.get("val_psnr", math.nan), final_val_loss=last.get("val_loss", math.nan),
            noisy_psnr=self.noisy_psnr, best=best, best_state=best_state, history=history,
            options=dict(self.options), seed=self.seed_entropy)

    # ------------------------------------------------------------------ checkpoints
    def save(self, path):
        """Write the complete state atomically (npz + JSON, no pickle; see :mod:`varlearn.stn._state`)."""
        save_trainer(self, path)

    def restore(self, path):
        """Load the state written by :meth:`save` (same model, hyperparameters, data and algorithm options)."""
        return restore_trainer(self, path)

    # ------------------------------------------------------------------ planning
    def planned_cost(self):
        """Cost of this run from the current state to its step/epoch limit, counted without training.

        Only for runs that end on ``max_steps`` or ``max_epochs`` (a cost
        budget or time limit makes the length unknown, and may stop the run
        earlier than planned); ``ValueError`` otherwise.
        """
        o = self.options
        if o["max_steps"] is None and o["max_epochs"] is None:
            raise ValueError("planned_cost needs max_steps or max_epochs (the run length is otherwise unknown)")
        n_w, n_h, cost, last = self.n_w, self.n_h, self.cost, self._last_eval
        eval_cost = o["n_eval"] * self.px_val / 3.0
        if not self.history and o["eval_at_start"]:
            cost, last = cost + eval_cost, (0, 0)
        limits = [o["max_steps"]] if o["max_steps"] is not None else []
        if o["max_epochs"] is not None:
            limits.append(math.ceil(o["max_epochs"] * o["steps_per_epoch"]))
        limit = min(limits)
        while n_w < limit:
            if _hyper_turn(o, n_w, n_h):
                n_h += 1
                cost += o["val_batch_size"] * self.px_val
                continue
            n_w += 1
            cost += o["batch_size"] * self.px_train
            if n_w % o["eval_every"] == 0:
                cost, last = cost + eval_cost, (n_w, n_h)
        if last != (n_w, n_h):
            cost += eval_cost
        return cost


def train_stn(model, hyper, train_images, val_images, *, sigma, options=None, callback=None, checkpoint=None,
              resume=False, seed=0):
    """Train a Self-Tuning Network denoiser and tune its hyperparameters online.

    Parameters
    ----------
    model : STN model
        ``model.params`` (dict of arrays, updated in place), ``model.n_hyper``,
        ``forward(y, h, *, dropout=None, rng=None) -> (out, cache)``,
        ``backward(cache, grad_out) -> (grads, grad_h)``, ``decay() -> (value, grads)``,
        ``state()``/``load_state(arrays)``, ``get_config()``; e.g. the models of
        :mod:`varlearn.stn.models`.  Its arrays fix the backend and dtype.
    hyper : HyperParameters
        The tuned hyperparameters (names among ``noise``, ``weight_decay``,
        ``dropout``, ``augment``; module docstring); ``hyper.u``/``hyper.rho``
        are updated in place.  Untuned ones stay at ``options["fixed"]``.
    train_images, val_images : array or list of arrays
        Clean data in the model's namespace: a ``(N, H, W)`` stack or a list of
        2-D images (patches are drawn from them), or a single ``(N, d)`` array of
        vectors (for :class:`~varlearn.stn.models.LinearSTN`).  Split by image.
    sigma : float
        Target noise level (> 0): validation crops get noise of this level,
        training patches ``sigma * exp(a)`` with ``a`` the ``noise`` value.
    options : dict, optional
        ``batch_size`` (32), ``patch_size`` (40), ``val_batch_size`` (16),
        ``val_patch_size`` (64): training patches and hyper-step crops;
        ``n_eval`` (32 crops, or all validation vectors), ``eval_batch_size`` (32):
        the fixed-seed evaluation set; ``warmup_steps`` (None: 5% of the step
        limit, else 0), ``t_train`` (2), ``t_val`` (1); ``optimizer``
        (``"adam"`` or ``"sgd"``, momentum 0.9) and ``lr`` (1e-3) of the weights;
        ``hyper_lr`` (3e-3), ``scale_lr`` (None: ``hyper_lr``), Adam for ``u`` and
        ``rho``; ``tau`` (1e-3) the entropy weight; ``tune_scales`` (True);
        ``hyper_steps`` (True; False trains at fixed λ) and ``perturb`` (True;
        False trains at the unperturbed λ); ``val_loss`` (``"log_mse"``: mean
        per-crop log-MSE, i.e. mean PSNR, or ``"mse"``); ``data_range`` (1);
        ``fixed`` (values of the untuned hyperparameters, default 0);
        ``steps_per_epoch`` (None: the training pixels over the pixels of one
        batch); ``eval_every`` (None: one epoch of weight steps);
        ``eval_at_start`` (True); ``checkpoint_every`` (None: at each evaluation);
        ``restore_best`` (False: load :attr:`best_state` into the model at the end);
        the stopping rules ``max_steps``, ``max_epochs``, ``budget`` (pixel
        passes), ``time_limit`` (seconds, counting earlier sessions of a resumed
        run).  At least one stopping rule is required.  Every option is checked
        and a bad one raises ``ValueError`` naming it.
    callback : callable, optional
        Called with a dict after every step (``event="step"``) and every
        evaluation (``event="eval"``, the history row).  Returning True or
        raising ``StopIteration`` stops the run (``"callback_stop"``).
    checkpoint : path, optional
        Checkpoint file (``.npz``), written atomically at every evaluation (or
        every ``checkpoint_every`` weight steps) and at the stop.
    resume : bool
        Continue the run saved in ``checkpoint``.  Only the options in
        :data:`~varlearn.stn._trainutil.LIMIT_OPTIONS` may differ; the resumed
        run takes exactly the steps (bit for bit) the uninterrupted one would.
    seed : int or None
        Seeds every random draw (patches, noise, dropout masks, perturbations,
        the fixed evaluation crops).  The same seed gives identical runs.

    Returns
    -------
    STNResult

    Notes
    -----
    The algorithm (MacKay et al. 2019, section 4; spec §2.5).  Warm-up: the
    first ``warmup_steps`` weight steps, with perturbed hyperparameters and
    ``u``, ``rho`` frozen.  Then cycles of ``t_train`` weight steps and
    ``t_val`` hyper-steps.  A weight step draws ``ũ_b = u + softplus(rho) z_b``
    (per example, or per batch), patches augmented with ``augment(ũ_b)``,
    fresh noise at ``sigma exp(a_b)``, channel dropout ``dropout(ũ_b)``, and
    minimises the MSE plus ``mean_b kappa_b * model.decay()`` with respect to
    every model array.  A hyper-step draws validation crops with noise at
    ``sigma`` (no augmentation, no dropout), feeds ``ũ`` (or ``u`` when
    ``tune_scales`` is off) to the hypernetwork, and takes an Adam step on
    ``u`` with ``Σ_b ∂L_V/∂ũ_b`` and on ``rho`` with the reparameterised
    gradient minus ``tau ∂H/∂rho``.  Evaluations use the unperturbed ``u`` on
    the fixed crops and keep the best model (lowest validation loss: with
    ``val_loss="log_mse"`` exactly the highest mean PSNR).

    Stopping rules, checked before every step, in this order: ``max_steps``
    (weight steps done), ``max_epochs`` (weight steps / ``steps_per_epoch``),
    ``budget`` (cost so far >= budget), ``time_limit`` (elapsed seconds).
    The state at the stop is checkpointed; then a final evaluation is made
    unless the last one was at the same state, and is the last history row
    (``final=True``).  Its cost is included in ``result.cost`` but not in the
    checkpoint, so a resumed run continues exactly.

    On CuPy data, weights and masks stay on the device; each step copies the host-drawn noise (so both
    backends draw the same numbers) and the ``(B, n)`` hypernet inputs/gradients, and reads the loss.

    References
    ----------
    M. MacKay, P. Vicol, J. Lorraine, D. Duvenaud, R. Grosse, "Self-Tuning
    Networks: Bilevel Optimization of Hyperparameters using Structured
    Best-Response Functions", ICLR 2019, arXiv:1903.03088.
    """
    trainer = STNTrainer(model, hyper, train_images, val_images, sigma=sigma, options=options, seed=seed)
    if resume:
        if checkpoint is None:
            raise ValueError("resume=True needs a checkpoint path, got checkpoint=None")
        trainer.restore(checkpoint)
    return trainer.run(callback=callback, checkpoint=checkpoint)
