"""Hyperparameters of a Self-Tuning Network: values, ranges, perturbations, entropy.

Every hyperparameter ``h`` has an unconstrained value ``u_h`` (the quantity the
hyper-steps learn) and an unconstrained perturbation scale ``rho_h`` with
``sigma_h = softplus(rho_h)``.  A training step draws, per example ``b``
(or once per batch), ``ũ_{b,h} = u_h + sigma_h z_{b,h}``, ``z ~ N(0, 1)``;
the constrained value used by the training step is ``transform(ũ)`` (floored
for discrete hyperparameters) and the hypernetwork sees the unconstrained
``ũ`` (optionally centred, ``ũ - u``), so no transform derivative is needed.

Transforms (``lo``, ``hi`` the range):

========== ========================================= =====================================
name       constrained value ``v(u)``                 allowed range
========== ========================================= =====================================
sigmoid    ``lo + (hi - lo) * sigmoid(u)``            finite ``lo < hi`` (open interval)
log        ``clip(exp(u), lo, hi)``                   ``0 <= lo < hi <= inf``
softplus   ``lo + softplus(u)``                       finite ``lo``, ``hi = inf``
neg_softplus ``hi - softplus(u)``                     ``lo = -inf``, finite ``hi``
identity   ``clip(u, lo, hi)``                        any ``lo < hi``
========== ========================================= =====================================

With ``transform=None`` the choice follows the range: both ends finite ->
``sigmoid``; ``[lo, inf)`` -> ``softplus``; ``(-inf, hi]`` -> ``neg_softplus``;
unbounded -> ``identity``.  For the clipping transforms (``log``,
``identity``) the learned ``u`` is itself projected onto the range after every
step (:meth:`HyperParameters.project`).  Discrete hyperparameters take
``floor(v)`` clipped to the integers in ``[lo, hi)``.

References
----------
M. MacKay, P. Vicol, J. Lorraine, D. Duvenaud, R. Grosse, "Self-Tuning Networks:
Bilevel Optimization of Hyperparameters using Structured Best-Response
Functions", ICLR 2019, arXiv:1903.03088 (section 4 and appendix: perturbation,
entropy term, reparameterised gradients).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["Hyperparameter", "HyperParameters", "TRANSFORMS", "softplus", "inv_softplus", "sigmoid"]

TRANSFORMS = ("sigmoid", "log", "softplus", "neg_softplus", "identity")
_HALF_LOG_2PIE = 0.5 * math.log(2.0 * math.pi * math.e)


def softplus(x):
    """``log(1 + exp(x))``, stable for large ``|x|`` (NumPy)."""
    return np.logaddexp(0.0, x)


def inv_softplus(y):
    """Inverse of :func:`softplus` for ``y > 0``."""
    y = np.asarray(y, dtype=np.float64)
    return y + np.log(-np.expm1(-y))


def sigmoid(x):
    """Logistic function, stable for large ``|x|`` (NumPy)."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _real(value, what):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise ValueError(f"{what} must be a real number, got {type(value).__name__}: {value!r}")
    return float(value)


class Hyperparameter:
    """Description of one hyperparameter (validated on construction).

    Parameters
    ----------
    name : str
        A Python identifier, unique within a :class:`HyperParameters`.
    init : float
        Initial *constrained* value, inside the range (strictly inside for
        ``sigmoid``, ``> lo`` for ``softplus``, ``> 0`` for ``log``).
    range : (float, float), default (-inf, inf)
        ``(lo, hi)`` with ``lo < hi``; ``None`` ends mean unbounded.
    transform : str or None
        One of :data:`TRANSFORMS`; ``None`` chooses from the range (module docstring).
    discrete : bool
        Use ``floor(v)`` (clipped to the integers in ``[lo, hi)``).
    per_example : bool
        Draw one perturbation per example (dropout, noise, augmentation); ``False``
        draws one per batch (weight decay, anything acting on shared weights).
    sigma0 : float, default 0.5
        Initial perturbation scale ``softplus(rho)`` (> 0).
    box : (float, float), optional
        Search box for random/grid search (constrained values); defaults to
        the range, which must then be finite.
    scale : float, default 1
        The hypernet input is ``(ũ - c) / scale`` (``c = 0``, or ``u`` when centred).
    """

    def __init__(self, name, init, range=(-math.inf, math.inf), *, transform=None, discrete=False,
                 per_example=True, sigma0=0.5, box=None, scale=1.0):
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"hyperparameter name must be a Python identifier, got {name!r}")
        self.name = name
        lo, hi = self._pair(range, "range")
        if not lo < hi:
            raise ValueError(f"hyperparameter {name!r}: range must have lo < hi, got {(lo, hi)!r}")
        if transform is None:
            fin_lo, fin_hi = math.isfinite(lo), math.isfinite(hi)
            transform = {(True, True): "sigmoid", (True, False): "softplus",
                         (False, True): "neg_softplus", (False, False): "identity"}[(fin_lo, fin_hi)]
        if transform not in TRANSFORMS:
            raise ValueError(f"hyperparameter {name!r}: transform must be one of {TRANSFORMS} or None, "
                             f"got {transform!r}")
        need = {"sigmoid": math.isfinite(lo) and math.isfinite(hi), "log": lo >= 0,
                "softplus": math.isfinite(lo) and hi == math.inf,
                "neg_softplus": lo == -math.inf and math.isfinite(hi), "identity": True}
        if not need[transform]:
            rule = {"sigmoid": "a finite range", "log": "a range with lo >= 0",
                    "softplus": "a range [lo, inf) with finite lo", "neg_softplus": "a range (-inf, hi]"}[transform]
            raise ValueError(f"hyperparameter {name!r}: transform {transform!r} needs {rule}, got range {(lo, hi)!r}")
        self.lo, self.hi, self.transform = lo, hi, transform
        self.discrete = bool(discrete)
        if self.discrete and (not math.isfinite(lo) or not math.isfinite(hi) or math.ceil(hi) - 1 < math.ceil(lo)):
            raise ValueError(f"hyperparameter {name!r}: a discrete hyperparameter needs a finite range "
                             f"holding at least one integer in [lo, hi), got {(lo, hi)!r}")
        self.per_example = bool(per_example)
        init = _real(init, f"hyperparameter {name!r}: init")
        open_lo = transform in ("sigmoid", "softplus") or (transform == "log" and lo == 0)
        open_hi = transform in ("sigmoid", "neg_softplus")
        inside = (lo < init if open_lo else lo <= init) and (init < hi if open_hi else init <= hi)
        if not math.isfinite(init) or not inside:
            raise ValueError(f"hyperparameter {name!r}: init={init!r} is outside its range {(lo, hi)!r} "
                             f"(transform {transform!r})")
        self.init = init
        sigma0 = _real(sigma0, f"hyperparameter {name!r}: sigma0")
        if not (math.isfinite(sigma0) and sigma0 > 0):
            raise ValueError(f"hyperparameter {name!r}: sigma0 must be a finite number > 0, got {sigma0!r}")
        self.sigma0 = sigma0
        if box is None:
            if not (math.isfinite(lo) and math.isfinite(hi)):
                box = None
            else:
                box = (lo, hi)
        if box is not None:
            blo, bhi = self._pair(box, "box")
            if not (lo <= blo < bhi <= hi) or not (math.isfinite(blo) and math.isfinite(bhi)):
                raise ValueError(f"hyperparameter {name!r}: box must be finite with lo <= box_lo < box_hi <= hi, "
                                 f"got box {(blo, bhi)!r} for range {(lo, hi)!r}")
            if transform == "log" and blo <= 0:
                raise ValueError(f"hyperparameter {name!r}: a log-transformed box must be positive, got {(blo, bhi)!r}")
            box = (blo, bhi)
        self.box = box
        scale = _real(scale, f"hyperparameter {name!r}: scale")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"hyperparameter {name!r}: scale must be a finite number > 0, got {scale!r}")
        self.scale = scale

    def _pair(self, pair, what):
        try:
            lo, hi = pair
        except (TypeError, ValueError):
            raise ValueError(f"hyperparameter {self.name!r}: {what} must be a pair (lo, hi), got {pair!r}") from None
        lo = -math.inf if lo is None else _real(lo, f"hyperparameter {self.name!r}: {what} lo")
        hi = math.inf if hi is None else _real(hi, f"hyperparameter {self.name!r}: {what} hi")
        if math.isnan(lo) or math.isnan(hi):
            raise ValueError(f"hyperparameter {self.name!r}: {what} must not contain NaN, got {(lo, hi)!r}")
        return lo, hi

    # ------------------------------------------------------------------ transforms
    def to_constrained(self, u, floor=True):
        """Constrained value(s) ``v(u)`` (floored if discrete and ``floor``)."""
        u = np.asarray(u, dtype=np.float64)
        t, lo, hi = self.transform, self.lo, self.hi
        if t == "sigmoid":
            v = lo + (hi - lo) * sigmoid(u)
        elif t == "log":
            with np.errstate(over="ignore"):
                v = np.clip(np.exp(u), lo, hi)
        elif t == "softplus":
            v = lo + softplus(u)
        elif t == "neg_softplus":
            v = hi - softplus(u)
        else:
            v = np.clip(u, lo, hi)
        if self.discrete and floor:
            v = np.clip(np.floor(v), math.ceil(lo), math.ceil(hi) - 1)
        return v

    def to_unconstrained(self, v):
        """Inverse transform of constrained value(s) ``v`` (clipped to the range's interior)."""
        v = np.asarray(v, dtype=np.float64)
        t, lo, hi = self.transform, self.lo, self.hi
        tiny = 1e-12
        if t == "sigmoid":
            p = np.clip((v - lo) / (hi - lo), tiny, 1.0 - tiny)
            return np.log(p) - np.log1p(-p)
        if t == "log":
            return np.log(np.clip(v, max(lo, 1e-300), hi))
        if t == "softplus":
            return inv_softplus(np.maximum(v - lo, tiny))
        if t == "neg_softplus":
            return inv_softplus(np.maximum(hi - v, tiny))
        return np.clip(v, lo, hi)

    def u_bounds(self):
        """Bounds of ``u`` for the clipping transforms (``log``, ``identity``), else ``(-inf, inf)``."""
        if self.transform == "identity":
            return self.lo, self.hi
        if self.transform == "log":
            return (math.log(self.lo) if self.lo > 0 else -math.inf), (math.log(self.hi) if math.isfinite(self.hi)
                                                                        else math.inf)
        return -math.inf, math.inf

    def to_dict(self):
        return {"name": self.name, "init": self.init, "range": [self.lo, self.hi], "transform": self.transform,
                "discrete": self.discrete, "per_example": self.per_example, "sigma0": self.sigma0,
                "box": None if self.box is None else list(self.box), "scale": self.scale}

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        return cls(d.pop("name"), d.pop("init"), tuple(d.pop("range")), **d)

    def __repr__(self):
        return (f"Hyperparameter({self.name!r}, init={self.init!r}, range={(self.lo, self.hi)!r}, "
                f"transform={self.transform!r}, discrete={self.discrete}, per_example={self.per_example})")


class HyperParameters:
    """A container of named hyperparameters with learnable ``u`` and ``rho`` (host NumPy float64).

    Parameters
    ----------
    specs : sequence of Hyperparameter or dict
        The hyperparameters, in the order of the hypernet input's columns.
        A dict is passed to :class:`Hyperparameter` as keyword arguments.
    centred : bool, default False
        Hypernet input ``(ũ - u) / scale`` (Delta-STN style, zero at the current
        point) instead of the STN-faithful ``ũ / scale``.  The gradients are the
        same: the centre is treated as a constant, as in Bae & Grosse (2020).

    Attributes
    ----------
    u, rho : ndarray, shape (n,)
        The learned unconstrained values and scales; :attr:`params` exposes
        them as ``{"u": u, "rho": rho}`` for the optimisers (updated in place).
    """

    def __init__(self, specs, *, centred=False):
        items = []
        for s in specs:
            if isinstance(s, dict):
                s = Hyperparameter(**s)
            if not isinstance(s, Hyperparameter):
                raise ValueError(f"specs must hold Hyperparameter objects or dicts, got {type(s).__name__}: {s!r}")
            items.append(s)
        if not items:
            raise ValueError("specs must hold at least one hyperparameter, got none")
        names = [s.name for s in items]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"hyperparameter names must be unique, got duplicates {dup}")
        self.specs = items
        self.centred = bool(centred)
        self.u = np.array([s.to_unconstrained(s.init) for s in items], dtype=np.float64)
        self.rho = np.array([inv_softplus(s.sigma0) for s in items], dtype=np.float64)
        self._scale = np.array([s.scale for s in items])
        self._per_example = np.array([s.per_example for s in items])
        self._index = {n: i for i, n in enumerate(names)}

    # ------------------------------------------------------------------ basics
    @property
    def names(self):
        return [s.name for s in self.specs]

    @property
    def n(self):
        return len(self.specs)

    def __len__(self):
        return len(self.specs)

    def __contains__(self, name):
        return name in self._index

    def index(self, name):
        """Column of ``name``; ``KeyError`` naming it if absent."""
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"no hyperparameter named {name!r} (have {self.names})") from None

    @property
    def params(self):
        """``{"u": u, "rho": rho}`` (the arrays themselves, for in-place optimisers)."""
        return {"u": self.u, "rho": self.rho}

    @property
    def sigma(self):
        """Perturbation scales ``softplus(rho)``, shape (n,)."""
        return softplus(self.rho)

    # ------------------------------------------------------------------ perturbation
    def draw_z(self, batch, rng):
        """Standard normal draws ``(batch, n)``; per-batch columns share one draw."""
        z = rng.standard_normal((batch, self.n))
        if not self._per_example.all():
            z[:, ~self._per_example] = z[:1, ~self._per_example]
        return z

    def perturbed(self, z):
        """``ũ = u + softplus(rho) * z`` for given draws ``z`` of shape (B, n)."""
        return self.u[None, :] + self.sigma[None, :] * np.asarray(z, dtype=np.float64)

    def perturb(self, batch, rng):
        """Draw a perturbation: returns ``(ũ, z)``, both of shape (batch, n)."""
        z = self.draw_z(batch, rng)
        return self.perturbed(z), z

    def unperturbed(self, batch):
        """``u`` repeated ``batch`` times, shape (batch, n)."""
        return np.repeat(self.u[None, :], batch, axis=0)

    # ------------------------------------------------------------------ values
    def constrained(self, ut=None, floor=True):
        """Constrained values of ``ũ`` (shape (B, n) -> (B, n)); of ``u`` when ``ut`` is None (shape (n,))."""
        ut = self.u if ut is None else np.asarray(ut, dtype=np.float64)
        cols = [s.to_constrained(ut[..., i], floor=floor) for i, s in enumerate(self.specs)]
        return np.stack(cols, axis=-1)

    def values(self):
        """Current constrained values ``{name: value}`` (Python floats; ints for discrete)."""
        v = self.constrained()
        return {s.name: (int(v[i]) if s.discrete else float(v[i])) for i, s in enumerate(self.specs)}

    def set_values(self, values):
        """Set ``u`` from constrained values ``{name: value}`` (names must exist; values in range)."""
        for name, val in dict(values).items():
            s = self.specs[self.index(name)]
            Hyperparameter(s.name, val, (s.lo, s.hi), transform=s.transform)  # validates val by name
            self.u[self.index(name)] = float(s.to_unconstrained(val))

    def hnet_input(self, ut):
        """Hypernet input ``(ũ - c) / scale`` (``c = u`` if centred else 0), shape (B, n)."""
        ut = np.asarray(ut, dtype=np.float64)
        if self.centred:
            ut = ut - self.u[None, :]
        return ut / self._scale[None, :]

    def hnet_input_grad(self, grad_h):
        """Chain rule through :meth:`hnet_input`: ∂L/∂ũ from ∂L/∂h (shape (B, n))."""
        return np.asarray(grad_h, dtype=np.float64) / self._scale[None, :]

    def project(self):
        """Clip ``u`` onto the bounds of the clipping transforms (in place)."""
        for i, s in enumerate(self.specs):
            lo, hi = s.u_bounds()
            self.u[i] = min(max(self.u[i], lo), hi)

    # ------------------------------------------------------------------ gradients, entropy
    def grads(self, grad_ut, z):
        """Reparameterised gradients ``(∂u, ∂rho)`` from ``∂L/∂ũ`` of shape (B, n).

        ``∂u = Σ_b ∂ũ_b`` and ``∂rho = Σ_b ∂ũ_b z_b sigmoid(rho)``.
        """
        g = np.asarray(grad_ut, dtype=np.float64)
        z = np.asarray(z, dtype=np.float64)
        return g.sum(axis=0), (g * z).sum(axis=0) * sigmoid(self.rho)

    def entropy(self):
        """Entropy of the perturbation, ``Σ_h log(sigma_h sqrt(2 pi e))``."""
        return float(np.sum(np.log(self.sigma)) + self.n * _HALF_LOG_2PIE)

    def entropy_grad(self):
        """``∂H/∂rho = sigmoid(rho) / softplus(rho)``, shape (n,)."""
        return sigmoid(self.rho) / self.sigma

    # ------------------------------------------------------------------ state
    def state(self):
        """JSON-able state: the specs, ``centred``, and ``u``/``rho`` (as exact float lists)."""
        return {"specs": [s.to_dict() for s in self.specs], "centred": self.centred,
                "u": [float(x) for x in self.u], "rho": [float(x) for x in self.rho]}

    def load_state(self, state):
        """Restore ``u`` and ``rho`` (in place) from :meth:`state`; the specs must match by name."""
        names = [d["name"] for d in state["specs"]]
        if names != self.names:
            raise ValueError(f"state holds hyperparameters {names}, this container has {self.names}")
        self.u[:] = np.asarray(state["u"], dtype=np.float64)
        self.rho[:] = np.asarray(state["rho"], dtype=np.float64)

    @classmethod
    def from_state(cls, state):
        """A new container from :meth:`state`."""
        obj = cls([Hyperparameter.from_dict(d) for d in state["specs"]], centred=state["centred"])
        obj.load_state(state)
        return obj

    def copy(self):
        return HyperParameters.from_state(self.state())

    def __repr__(self):
        vals = ", ".join(f"{k}={v:.4g}" for k, v in self.values().items())
        return f"HyperParameters({vals})"
