"""First-order optimisers over dicts of NumPy/CuPy arrays, updated in place, with checkpointable state.

Both optimisers take ``params``, a dict ``name -> array`` whose arrays they
update in place (so a model holding the same arrays sees the update), and
``step(grads)`` with a dict of gradients of the same shapes (missing names
are skipped; the step count still advances).  :meth:`state` returns
``(meta, arrays)``: a JSON-able dict and a dict of host arrays for
:func:`varlearn.bilevel.checkpoint.save_checkpoint`; :meth:`load_state`
restores it exactly, so a resumed run takes bit-identical steps.

References
----------
D. P. Kingma, J. Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015,
arXiv:1412.6980.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from ..backend import get_namespace, to_device, to_numpy

__all__ = ["Adam", "SGD", "make_optimizer"]


def _positive(value, name, allow_zero=False):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise ValueError(f"{name} must be a real number, got {type(value).__name__}: {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")
    return value


class _Optimizer:
    kind = ""

    def __init__(self, params, lr):
        if not isinstance(params, dict) or not params:
            raise ValueError(f"params must be a non-empty dict of arrays, got {type(params).__name__}")
        self.params = params
        self.lr = _positive(lr, "lr")
        self.t = 0
        self._slots = {}  # slot name -> dict of arrays like params

    def _slot(self, slot, name):
        d = self._slots.setdefault(slot, {})
        if name not in d:
            p = self.params[name]
            d[name] = get_namespace(p).zeros_like(p)
        return d[name]

    def _check(self, grads):
        for k, g in grads.items():
            if k not in self.params:
                raise ValueError(f"grads has an entry {k!r} that is not a parameter (have {sorted(self.params)})")
            if tuple(g.shape) != tuple(self.params[k].shape):
                raise ValueError(f"grads[{k!r}] has shape {tuple(g.shape)}, the parameter "
                                 f"{tuple(self.params[k].shape)}")

    def state(self):
        """``(meta, arrays)``: JSON-able settings/counters and the host copies of the moment arrays."""
        arrays = {f"{slot}/{k}": to_numpy(a) for slot, d in self._slots.items() for k, a in d.items()}
        return {"kind": self.kind, "t": self.t, "lr": self.lr, **self._hyper()}, arrays

    def load_state(self, meta, arrays):
        """Restore from :meth:`state` (arrays go to the parameters' namespace and dtype)."""
        if meta.get("kind") != self.kind:
            raise ValueError(f"optimizer state is of kind {meta.get('kind')!r}, expected {self.kind!r}")
        self.t = int(meta["t"])
        self.lr = float(meta["lr"])
        self._slots = {}
        for key, a in arrays.items():
            slot, name = key.split("/", 1)
            if name not in self.params:
                raise ValueError(f"optimizer state has moments for {name!r}, which is not a parameter")
            p = self.params[name]
            self._slots.setdefault(slot, {})[name] = to_device(np.asarray(a), get_namespace(p)).astype(p.dtype)

    def _hyper(self):
        return {}


class Adam(_Optimizer):
    """Adam with bias correction: ``p -= lr * m̂ / (sqrt(v̂) + eps)``.

    Parameters
    ----------
    params : dict of arrays
        Updated in place.
    lr : float
        Step size (> 0); may be changed between steps through the attribute.
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    """

    kind = "adam"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, lr)
        b1, b2 = betas
        self.beta1 = _positive(b1, "betas[0]", allow_zero=True)
        self.beta2 = _positive(b2, "betas[1]", allow_zero=True)
        if self.beta1 >= 1 or self.beta2 >= 1:
            raise ValueError(f"betas must lie in [0, 1), got {betas!r}")
        self.eps = _positive(eps, "eps")

    def _hyper(self):
        return {"beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}

    def step(self, grads):
        """One Adam step on the parameters named in ``grads``."""
        self._check(grads)
        self.t += 1
        c1 = 1.0 - self.beta1 ** self.t
        c2 = 1.0 - self.beta2 ** self.t
        step = self.lr / c1
        for k, g in grads.items():
            p = self.params[k]
            m = self._slot("m", k)
            v = self._slot("v", k)
            m *= self.beta1
            m += (1.0 - self.beta1) * g
            v *= self.beta2
            v += (1.0 - self.beta2) * (g * g)
            xp = get_namespace(p)
            denom = xp.sqrt(v / c2)
            denom += self.eps
            p -= (step * m / denom).astype(p.dtype, copy=False)


class SGD(_Optimizer):
    """SGD with (heavy-ball) momentum: ``b = momentum * b + g``, ``p -= lr * b``.

    Parameters
    ----------
    params : dict of arrays
    lr : float
    momentum : float in [0, 1), default 0.9
    """

    kind = "sgd"

    def __init__(self, params, lr=1e-2, momentum=0.9):
        super().__init__(params, lr)
        self.momentum = _positive(momentum, "momentum", allow_zero=True)
        if self.momentum >= 1:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}")

    def _hyper(self):
        return {"momentum": self.momentum}

    def step(self, grads):
        """One momentum-SGD step on the parameters named in ``grads``."""
        self._check(grads)
        self.t += 1
        for k, g in grads.items():
            p = self.params[k]
            if self.momentum > 0:
                b = self._slot("b", k)
                b *= self.momentum
                b += g
                p -= (self.lr * b).astype(p.dtype, copy=False)
            else:
                p -= (self.lr * g).astype(p.dtype, copy=False)


def make_optimizer(kind, params, lr):
    """``Adam(params, lr)`` for ``kind="adam"``, ``SGD(params, lr, momentum=0.9)`` for ``"sgd"``."""
    if kind == "adam":
        return Adam(params, lr)
    if kind == "sgd":
        return SGD(params, lr)
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {kind!r}")
