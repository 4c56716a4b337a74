r"""Self-Tuning-Network denoisers with hand-written backward passes (NumPy or CuPy).

Every model follows the :class:`STNModel` protocol that the STN trainer
(:mod:`varlearn.stn.train`) relies on: ``forward(y, h, dropout=, rng=)``
returns ``(out, cache)``, ``backward(cache, grad_out)`` returns the gradients
of ``<grad_out, out>`` with respect to every trainable array and to the
hypernet input ``h``; ``decay()`` is the weight-decay penalty.

Models (``MODELS``):

* ``"dncnn"`` :class:`DnCNNSTN`: D STN-gated 3x3 convolutions, ReLU, residual
  output ``x̂ = y − f(y)`` (STN spec §7.2 A).
* ``"vn"`` :class:`VariationalSTN`: T unrolled gradient steps of a gated
  Field-of-Experts energy (STN spec §7.2 B).
* ``"linear"`` :class:`LinearSTN`: a two-layer linear denoiser with an
  STN-gated first layer (the exact test of STN spec §7.6.1).

References
----------
M. MacKay et al., "Self-Tuning Networks", ICLR 2019 (arXiv:1903.03088).
K. Zhang et al., "Beyond a Gaussian denoiser: residual learning of deep CNN
for image denoising", IEEE TIP 26(7), 2017 (DnCNN).
Y. Chen, T. Pock, "Trainable nonlinear reaction diffusion", IEEE TPAMI 39(6),
2017 (TNRD); E. Kobler et al., "Variational networks", GCPR 2017.
"""
from __future__ import annotations

import math

import numpy as np

from .._validation import check_int, check_positive
from ..backend import get_namespace, xp_name
from ..operators import FilterBank
from ..potentials import POTENTIALS
from .layers import (
    Geometry,
    STNConv2d,
    STNLinear,
    _gain_grads,
    channel_dropout_mask,
    from_padded,
    relu,
    to_padded,
)

#: std of the last DnCNN layer's kernels times √fan_in (small: the residual starts near 0)
LAST_GAIN = 0.1

__all__ = ["STNModel", "DnCNNSTN", "VariationalSTN", "LinearSTN", "MODELS", "model_from_config"]


def _make_rng(rng):
    if rng is None:
        return np.random.default_rng(0)
    if isinstance(rng, (np.random.Generator, np.random.RandomState)):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be None, an int or a numpy Generator, got {type(rng).__name__}")


def _check_odd(value, name):
    v = check_int(value, name, minimum=1)
    if v % 2 != 1:
        raise ValueError(f"{name} must be odd, got {value!r}")
    return v


class STNModel:
    """Protocol (and base class) of the STN models.

    Attributes
    ----------
    n_hyper : int
        Dimension ``n`` of the hypernet input ``h``.
    params : dict[str, array]
        Every trainable array (elementary weights, response weights, hypernet
        maps).  An optimiser updates them in place; the models read them at
        every call, so replacing an entry by a new array of the same shape also works.
    dtype : numpy.dtype
        float32 or float64; inputs must have it.
    xp : module
        numpy or cupy; inputs must live there.

    Methods
    -------
    forward(y, h, *, dropout=None, rng=None) -> (out, cache)
        ``y`` ``(B, H, W)`` noisy images (``(B, d)`` for :class:`LinearSTN`),
        ``h`` ``(B, n_hyper)`` hypernet input.  ``dropout`` is ``None`` (eval
        mode) or the per-example channel-dropout rates ``(B,)`` in ``[0, 1)``
        (a scalar is used for every example) of the hidden feature maps, with
        masks drawn from ``rng`` (a generator of the data's namespace).
        ``out`` has ``y``'s shape.
    backward(cache, grad_out) -> (grads, grad_h)
        Gradients of ``<grad_out, out>``: a dict with the keys of ``params``
        and ``(B, n_hyper)`` for ``h``, with the dropout masks of the forward pass.
    decay() -> (value, grads)
        ``½ Σ ‖W‖²`` over the kernels (elementary and response; not biases, not
        hypernet maps, not potential weights) and its gradient, a dict whose
        keys (:attr:`decay_keys`) are a subset of ``params``.
    get_config() -> dict
        JSON-able; :func:`model_from_config` rebuilds an untrained model.
    state() -> dict, load_state(arrays)
        The live parameter arrays; loading checks names, shapes and dtypes.
    """

    kind = None
    decay_keys: tuple = ()

    def __init__(self, n_hyper, dtype, xp):
        self.n_hyper = check_int(n_hyper, "n_hyper", minimum=1)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
        self.xp = np if xp is None else xp
        if getattr(self.xp, "__name__", "") not in ("numpy", "cupy"):
            raise ValueError(f"xp must be the numpy or cupy module, got {xp!r}")
        self.params = {}

    @property
    def n_weights(self):
        """Number of trainable scalars."""
        return int(sum(int(v.size) for v in self.params.values()))

    def _sub(self, prefix, names):
        return {n: self.params[f"{prefix}.{n}"] for n in names}

    def _put(self, grads, prefix, sub):
        for n, v in sub.items():
            grads[f"{prefix}.{n}"] = v

    def decay(self):
        xp = self.xp
        value = 0.0  # summed in float64 in the namespace of the weights: one device-to-host transfer, not one per array
        grads = {}
        for k in self.decay_keys:
            w = self.params[k]
            value = value + xp.vdot(w.ravel(), w.ravel()).astype(xp.float64)
            grads[k] = w
        return 0.5 * float(value), grads

    def get_config(self):
        raise NotImplementedError

    def state(self):
        return dict(self.params)

    def load_state(self, arrays):
        """Copy ``arrays`` (NumPy or the model's namespace) into :attr:`params`, in place."""
        missing = sorted(set(self.params) - set(arrays))
        extra = sorted(set(arrays) - set(self.params))
        if missing or extra:
            raise ValueError(f"state does not match the model: missing {missing}, unexpected {extra}")
        for k, v in arrays.items():
            p = self.params[k]
            if tuple(v.shape) != tuple(p.shape):
                raise ValueError(f"state[{k!r}] has shape {tuple(v.shape)}, the model needs {tuple(p.shape)}")
            if np.dtype(v.dtype) != self.dtype:
                raise ValueError(f"state[{k!r}] has dtype {v.dtype}, the model's dtype is {self.dtype}")
        for k, v in arrays.items():
            self.params[k][...] = self.xp.asarray(v)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "model")
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ input checks
    def _check_inputs(self, y, h, dropout, rng, ndim):
        if not (isinstance(y, np.ndarray) or type(y).__module__.split(".")[0] == "cupy"):
            raise TypeError(f"y must be a NumPy or CuPy array, got {type(y).__name__}")
        if xp_name(get_namespace(y)) != xp_name(self.xp):
            raise TypeError(f"y is a {xp_name(get_namespace(y))} array but the model's arrays are "
                            f"{xp_name(self.xp)} arrays; move it explicitly (varlearn.backend.to_device)")
        if y.ndim != ndim:
            shape = "(B, H, W)" if ndim == 3 else "(B, d)"
            raise ValueError(f"y must have shape {shape}, got shape {tuple(y.shape)}")
        if y.dtype != self.dtype:
            raise ValueError(f"y has dtype {y.dtype} but the model's dtype is {self.dtype}")
        b = y.shape[0]
        if not hasattr(h, "shape") or tuple(h.shape) != (b, self.n_hyper):
            raise ValueError(f"h must have shape ({b}, {self.n_hyper}), got {getattr(h, 'shape', type(h).__name__)}")
        get_namespace(y, h)
        h = h.astype(self.dtype, copy=False)
        if dropout is None:
            return h, None
        if rng is None:
            raise ValueError("rng must be given when dropout is given (it draws the masks)")
        if np.isscalar(dropout):
            dropout = self.xp.full((b,), float(dropout), dtype=self.dtype)
        get_namespace(y, dropout)
        if tuple(dropout.shape) != (b,):
            raise ValueError(f"dropout must have shape ({b},), got shape {tuple(dropout.shape)}")
        return h, dropout


# ---------------------------------------------------------------------------- model A
class DnCNNSTN(STNModel):
    r"""STN-DnCNN-lite: ``depth`` STN-gated convolutions, ReLU, residual output (STN spec §7.2 A).

    .. math:: \hat x = y - f(y; \tilde\lambda), \qquad
              f = L_D \circ \rho \circ L_{D-1} \circ \dots \circ \rho \circ L_1,

    each ``L_l`` an :class:`~varlearn.stn.layers.STNConv2d` (``1 -> C -> ... -> C
    -> 1`` channels, zero "same" padding), ``ρ`` the ReLU followed by channel
    dropout in training mode; no batch norm.  Parameter keys
    ``conv{l}.{K_e,K_h,b_e,b_h,A}``; the hypernet maps ``conv{l}.A`` start at 0,
    so the model starts as its ungated base network.

    Parameters
    ----------
    n_hyper : int >= 1
    depth : int >= 2
    channels : int >= 1
    kernel_size : odd int >= 1
    dtype : float32 or float64
    rng : None, int or numpy Generator
        Initial weights (Kaiming-uniform, std ``√2/√fan_in``; the last layer
        ``LAST_GAIN/√fan_in`` so that the model starts near ``x̂ = y``: 26.1 dB
        against 25.6 dB after 120 Adam steps on Kodak crops at σ = 25/255),
        drawn on the host (``None``: seed 0) and placed on ``xp`` once.
    xp : numpy or cupy module
    """

    kind = "dncnn"

    def __init__(self, n_hyper, depth=5, channels=32, kernel_size=3, dtype=np.float32, rng=None, xp=None):
        super().__init__(n_hyper, dtype, xp)
        self.depth = check_int(depth, "depth", minimum=2)
        self.channels = check_int(channels, "channels", minimum=1)
        self.kernel_size = _check_odd(kernel_size, "kernel_size")
        rng = _make_rng(rng)
        chans = [1] + [self.channels] * (self.depth - 1) + [1]
        self.layers = [STNConv2d(chans[i], chans[i + 1], self.n_hyper, self.kernel_size) for i in range(self.depth)]
        for i, layer in enumerate(self.layers):
            last = i == self.depth - 1
            sub = layer.init_params(rng, self.dtype, self.xp, gain=LAST_GAIN if last else math.sqrt(2.0))
            self._put(self.params, f"conv{i}", sub)
        self.decay_keys = tuple(f"conv{i}.{n}" for i in range(self.depth) for n in ("K_e", "K_h"))

    def get_config(self):
        return {"model": self.kind, "n_hyper": self.n_hyper, "depth": self.depth, "channels": self.channels,
                "kernel_size": self.kernel_size, "dtype": self.dtype.name}

    def forward(self, y, h, *, dropout=None, rng=None):
        h, dropout = self._check_inputs(y, h, dropout, rng, ndim=3)
        b, hh, ww = y.shape
        geom = Geometry(b, hh, ww, self.kernel_size)
        x = to_padded(y[:, None], geom)
        caches, masks = [], []
        for i, layer in enumerate(self.layers):
            z, c = layer.forward(self._sub(f"conv{i}", layer.names), x, h, geom)
            caches.append(c)
            if i < self.depth - 1:
                relu(z, out=z)
                mask = None
                if dropout is not None:
                    mask = channel_dropout_mask(dropout, layer.c_out, rng, self.dtype)
                    z.reshape(layer.c_out, b, -1)[...] *= mask.T[:, :, None]
                masks.append(mask)
            x = z
        out = y - from_padded(x, geom)[:, 0]
        return out, (geom, caches, masks)

    def backward(self, cache, grad_out):
        geom, caches, masks = cache
        xp = self.xp
        g = to_padded(-grad_out[:, None].astype(self.dtype, copy=False), geom)
        grads, gh = {}, xp.zeros((geom.batch, self.n_hyper), dtype=self.dtype)
        for i in range(self.depth - 1, -1, -1):
            layer = self.layers[i]
            sub, dx, dlam = layer.backward(self._sub(f"conv{i}", layer.names), caches[i], g, need_input_grad=i > 0)
            self._put(grads, f"conv{i}", sub)
            gh += dlam
            if i > 0:
                if masks[i - 1] is not None:
                    dx.reshape(dx.shape[0], geom.batch, -1)[...] *= masks[i - 1].T[:, :, None]
                xp.multiply(dx, caches[i][0] > 0, out=dx)  # ReLU (and dropped channels): input of layer i
                g = dx
        return grads, gh


# ---------------------------------------------------------------------------- model B
class VariationalSTN(STNModel):
    r"""STN-gated variational network: ``n_stages`` unrolled gradient steps (STN spec §7.2 B).

    .. math:: x_0 = y, \qquad x_{t+1} = x_t - \sum_i \bar k_i^t \star \big(w_i^t\,
              \varphi'(k_i^t \star x_t;\ \nu_i^t)\big) - \alpha_t (x_t - y),

    with per-example gated filters :math:`k_i^t(\lambda) = k_{e,i}^t + (a_i^{t\top}\tilde\lambda)k_{h,i}^t`
    and potential weights :math:`w_i^t(\lambda) = w_{e,i}^t + (b_i^{t\top}\tilde\lambda)w_{h,i}^t`
    (``[a; b] = A^t``, zero at initialisation), ``⋆`` the reflect-boundary
    correlation of :class:`varlearn.operators.FilterBank` and ``\bar k ⋆`` its
    adjoint.  Since the gains are per example and the bank is linear, stage
    ``t`` applies one bank of the ``2K`` filters ``[k_e; k_h]`` and gates the
    responses.  ``φ`` is a potential of :mod:`varlearn.potentials` (default
    smoothed ℓ1, :math:`\varphi'(u) = u/\sqrt{u^2+\nu^2}`) with learned
    :math:`\log\nu_i^t`; ``α_t`` is a plain learned scalar.  Training-mode
    dropout drops whole experts ``i`` per example and stage.

    Parameter keys ``stage{t}.{k_e, k_h}`` ``(K, s, s)``, ``stage{t}.{w_e,
    w_h, log_nu}`` ``(K,)``, ``stage{t}.alpha`` ``(1,)``, ``stage{t}.A``
    ``(2K, n_hyper)``.  Decay penalises ``k_e`` and ``k_h``.

    Parameters
    ----------
    n_hyper : int >= 1
    n_stages : int >= 1
    n_filters : int >= 1
    size : odd int >= 1
    potential : {"smoothed_l1", "log_student_t", "huber"}
    nu : float > 0
        Initial ``ν`` of every expert.
    weight : float
        Initial ``w_e``.
    alpha : float
        Initial ``α_t``.
    dtype, rng, xp : as in :class:`DnCNNSTN` (filters: zero-mean, unit ℓ2 norm).
    """

    kind = "vn"

    def __init__(self, n_hyper, n_stages=5, n_filters=8, size=5, potential="smoothed_l1", nu=0.1, weight=0.01,
                 alpha=0.1, dtype=np.float32, rng=None, xp=None):
        super().__init__(n_hyper, dtype, xp)
        self.n_stages = check_int(n_stages, "n_stages", minimum=1)
        self.n_filters = check_int(n_filters, "n_filters", minimum=1)
        self.size = _check_odd(size, "size")
        if potential not in ("smoothed_l1", "log_student_t", "huber"):
            raise ValueError(f"potential must be 'smoothed_l1', 'log_student_t' or 'huber', got {potential!r}")
        self.potential_name = potential
        self.potential = POTENTIALS[potential]()
        self.nu0 = check_positive(nu, "nu")
        self.weight0, self.alpha0 = float(weight), float(alpha)
        rng = _make_rng(rng)
        k, s = self.n_filters, self.size
        for t in range(self.n_stages):
            host = {}
            for name in ("k_e", "k_h"):
                f = rng.standard_normal((k, s, s))
                f -= f.mean(axis=(1, 2), keepdims=True)
                host[name] = f / np.maximum(np.sqrt((f * f).sum(axis=(1, 2), keepdims=True)), 1e-12)
            host.update(w_e=np.full(k, self.weight0), w_h=np.full(k, self.weight0),
                        log_nu=np.full(k, math.log(self.nu0)), alpha=np.array([self.alpha0]),
                        A=np.zeros((2 * k, self.n_hyper)))
            for name, v in host.items():
                self.params[f"stage{t}.{name}"] = self.xp.asarray(v, dtype=self.dtype)
        self.decay_keys = tuple(f"stage{t}.{n}" for t in range(self.n_stages) for n in ("k_e", "k_h"))

    def get_config(self):
        return {"model": self.kind, "n_hyper": self.n_hyper, "n_stages": self.n_stages,
                "n_filters": self.n_filters, "size": self.size, "potential": self.potential_name,
                "nu": self.nu0, "weight": self.weight0, "alpha": self.alpha0, "dtype": self.dtype.name}

    def forward(self, y, h, *, dropout=None, rng=None):
        h, dropout = self._check_inputs(y, h, dropout, rng, ndim=3)
        xp, k = self.xp, self.n_filters
        if min(y.shape[1:]) < self.size // 2 + 1:
            raise ValueError(f"y images must be at least {self.size // 2 + 1} pixels wide, got shape {y.shape}")
        x, stages = y, []
        for t in range(self.n_stages):
            p = self._sub(f"stage{t}", ("k_e", "k_h", "w_e", "w_h", "log_nu", "alpha", "A"))
            bank = FilterBank(xp.concatenate([p["k_e"], p["k_h"]], axis=0))
            u2 = bank.apply(x)
            gains = h @ p["A"].T
            gk = gains[:, :k, None, None]
            u = u2[:, :k] + gk * u2[:, k:]
            wgt = p["w_e"] + gains[:, k:] * p["w_h"]
            nu = xp.exp(p["log_nu"])[:, None, None]
            phi1 = self.potential.d1(u, nu)
            mask = None if dropout is None else channel_dropout_mask(dropout, k, rng, self.dtype)
            scale = wgt if mask is None else wgt * mask
            psi = scale[:, :, None, None] * phi1
            v = xp.concatenate([psi, gk * psi], axis=1)
            x_next = x - bank.adjoint(v) - p["alpha"][0] * (x - y)
            stages.append((x, u2, u, gains, scale, mask, bank, v))
            x = x_next
        return x, (y, h, stages)

    def backward(self, cache, grad_out):
        y, h, stages = cache
        xp, k = self.xp, self.n_filters
        g = grad_out.astype(self.dtype, copy=False)
        grads, gh = {}, xp.zeros((y.shape[0], self.n_hyper), dtype=self.dtype)
        for t in range(self.n_stages - 1, -1, -1):
            p = self._sub(f"stage{t}", ("w_e", "w_h", "log_nu", "alpha", "A"))
            x, u2, u, gains, scale, mask, bank, v = stages[t]
            gk = gains[:, :k, None, None]
            alpha = p["alpha"][0]
            d_alpha = -xp.vdot(g.ravel(), (x - y).ravel())
            gr = -g
            dv = bank.apply(gr)
            d_taps = bank.tap_vjp(gr, v)
            psi = v[:, :k]
            dpsi = dv[:, :k] + gk * dv[:, k:]
            dgk = (dv[:, k:] * psi).sum(axis=(2, 3))
            nu = xp.exp(p["log_nu"])[:, None, None]
            phi1 = self.potential.d1(u, nu)
            dscale = (dpsi * phi1).sum(axis=(2, 3))
            dwgt = dscale if mask is None else dscale * mask
            dphi1 = dpsi * scale[:, :, None, None]
            du = dphi1 * self.potential.d2(u, nu)
            dnu = (dphi1 * self.potential.d1_dnu(u, nu)).sum(axis=(0, 2, 3))
            dgk += (du * u2[:, k:]).sum(axis=(2, 3))
            du2 = xp.concatenate([du, gk * du], axis=1)
            d_taps += bank.tap_vjp(x, du2)
            g = (1.0 - alpha) * g + bank.adjoint(du2)
            dgains = xp.concatenate([dgk, dwgt * p["w_h"]], axis=1)
            da, dlam = _gain_grads(h, p["A"], dgains)
            gh += dlam
            sub = {"k_e": d_taps[:k], "k_h": d_taps[k:], "w_e": dwgt.sum(axis=0),
                   "w_h": (dwgt * gains[:, k:]).sum(axis=0), "log_nu": dnu * nu[:, 0, 0],
                   "alpha": xp.reshape(d_alpha, (1,)).astype(self.dtype), "A": da}
            self._put(grads, f"stage{t}", sub)
        return grads, gh


# ---------------------------------------------------------------------------- linear model
class LinearSTN(STNModel):
    r"""Two-layer linear denoiser with an STN-gated first layer (STN spec §1.4 and §7.6.1).

    .. math:: \hat x_b = W_2\big(W_e y_b + g_w(\tilde\lambda_b)\odot(W_h y_b)\big) \;(+\text{biases}),
              \qquad g_w = A\tilde\lambda_b,

    i.e. :class:`~varlearn.stn.layers.STNLinear` (``dim -> hidden``, gated per
    hidden unit) followed by a plain linear layer ``hidden -> dim``; no
    nonlinearity, so ``x̂ = D(λ) y`` with ``D(λ) = W_2 (W_e + diag(Aλ̃) W_h)``.
    Training-mode dropout drops hidden units per example.  Keys
    ``layer1.{W_e, W_h, A}`` (+ ``b_e, b_h`` with ``bias``), ``layer2.W``
    (+ ``layer2.b``); decay penalises ``layer1.W_e, layer1.W_h, layer2.W``.
    Input ``y`` is ``(B, dim)``.
    """

    kind = "linear"

    def __init__(self, dim, hidden, n_hyper, bias=False, dtype=np.float64, rng=None, xp=None):
        super().__init__(n_hyper, dtype, xp)
        self.dim = check_int(dim, "dim", minimum=1)
        self.hidden = check_int(hidden, "hidden", minimum=1)
        self.bias = bool(bias)
        rng = _make_rng(rng)
        self.layer1 = STNLinear(self.dim, self.hidden, self.n_hyper, bias=self.bias)
        self._put(self.params, "layer1", self.layer1.init_params(rng, self.dtype, self.xp))
        bound = math.sqrt(3.0 / self.hidden)
        self.params["layer2.W"] = self.xp.asarray(bound * (2 * rng.random((self.dim, self.hidden)) - 1), self.dtype)
        if self.bias:
            self.params["layer2.b"] = self.xp.zeros(self.dim, dtype=self.dtype)
        self.decay_keys = ("layer1.W_e", "layer1.W_h", "layer2.W")

    def get_config(self):
        return {"model": self.kind, "dim": self.dim, "hidden": self.hidden, "n_hyper": self.n_hyper,
                "bias": self.bias, "dtype": self.dtype.name}

    def forward(self, y, h, *, dropout=None, rng=None):
        h, dropout = self._check_inputs(y, h, dropout, rng, ndim=2)
        if y.shape[1] != self.dim:
            raise ValueError(f"y must have shape (B, {self.dim}), got shape {tuple(y.shape)}")
        z, c1 = self.layer1.forward(self._sub("layer1", self.layer1.names), y, h)
        mask = None if dropout is None else channel_dropout_mask(dropout, self.hidden, rng, self.dtype)
        if mask is not None:
            z = z * mask
        out = z @ self.params["layer2.W"].T
        if self.bias:
            out += self.params["layer2.b"]
        return out, (c1, z, mask)

    def backward(self, cache, grad_out):
        c1, z, mask = cache
        g = grad_out.astype(self.dtype, copy=False)
        grads = {"layer2.W": g.T @ z}
        if self.bias:
            grads["layer2.b"] = g.sum(axis=0)
        gz = g @ self.params["layer2.W"]
        if mask is not None:
            gz = gz * mask
        sub, _, gh = self.layer1.backward(self._sub("layer1", self.layer1.names), c1, gz, need_input_grad=False)
        self._put(grads, "layer1", sub)
        return grads, gh


MODELS = {"dncnn": DnCNNSTN, "vn": VariationalSTN, "linear": LinearSTN}


def model_from_config(config, dtype=None, xp=None, rng=None):
    """Rebuild an untrained model from :meth:`STNModel.get_config` (``dtype`` overrides the stored one)."""
    if not isinstance(config, dict) or "model" not in config:
        raise ValueError(f"config must be a dict with a 'model' entry, got {config!r}")
    name = config["model"]
    if name not in MODELS:
        raise ValueError(f"config['model'] must be one of {sorted(MODELS)}, got {name!r}")
    kwargs = {k: v for k, v in config.items() if k not in ("model", "dtype")}
    dt = dtype if dtype is not None else config.get("dtype", "float32")
    try:
        return MODELS[name](**kwargs, dtype=dt, xp=xp, rng=rng)
    except TypeError as exc:
        raise ValueError(f"config does not fit the {name!r} model: {exc}") from None
