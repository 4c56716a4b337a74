"""Measurements behind ``scripts/benchmark_stn.py``: STN layers and one training step, with PyTorch beside them.

See the script's docstring for what is timed and how to read it.  PyTorch is
imported only inside :func:`torch_cases` (never a dependency of varlearn): without
it that function returns ``None``.  Nothing here prints.
"""
from __future__ import annotations

import resource
import time
import tracemalloc

import numpy as np

from .layers import Geometry, conv2d, conv2d_backward, conv_padded, conv_padded_backward, to_padded
from .models import DnCNNSTN
from .optim import Adam

__all__ = ["interleaved", "rss_mib", "varlearn_conv", "varlearn_step", "memory_growth", "conv_methods",
           "torch_cases"]

def interleaved(cases, repeat):
    """Minimum wall and CPU seconds per case over ``repeat`` rounds; each round calls every case once, in turn.

    Interleaving puts every case under the same (shared-machine) load, so the
    ratios of one run are comparable even when the load changes during it.
    The CPU time of the process (``time.process_time``, all its threads) does
    not count the time the process waits for a core, which on a loaded machine
    is most of the noise of the wall time.
    """
    for fun in cases.values():
        fun()
    wall = {name: float("inf") for name in cases}
    cpu = dict(wall)
    for _ in range(repeat):
        for name, fun in cases.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fun()
            c1, t1 = time.process_time(), time.perf_counter()
            wall[name] = min(wall[name], t1 - t0)
            cpu[name] = min(cpu[name], c1 - c0)
    return wall, cpu


def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------------------- varlearn
def varlearn_conv(b, c, s, rng):
    x = rng.standard_normal((b, c, s, s)).astype(np.float32)
    w = (0.1 * rng.standard_normal((c, c, 3, 3))).astype(np.float32)
    g = rng.standard_normal((b, c, s, s)).astype(np.float32)
    geom = Geometry(b, s, s, 3)
    xf, gf = to_padded(x, geom), to_padded(g, geom)

    def nchw():
        conv2d(x, w)
        conv2d_backward(x, w, g)

    def padded():
        conv_padded(xf, w, geom)
        conv_padded_backward(xf, gf, w, geom)

    return nchw, padded


def varlearn_step(args, rng):
    model = DnCNNSTN(args.n_hyper, depth=args.depth, channels=args.channels, dtype=np.float32, rng=0)
    for k, v in model.params.items():
        if k.endswith(".A"):
            v[...] = 0.05 * rng.standard_normal(v.shape)
    opt = Adam(model.params, lr=1e-4)
    b, s = args.batch, args.size
    clean = rng.random((b, s, s)).astype(np.float32)
    noisy = (clean + 0.1 * rng.standard_normal((b, s, s))).astype(np.float32)
    h = rng.standard_normal((b, args.n_hyper)).astype(np.float32)
    rates = rng.uniform(0.0, 0.2, b).astype(np.float32)
    mask_rng = np.random.default_rng(1)

    def step():
        out, cache = model.forward(noisy, h, dropout=rates, rng=mask_rng)
        r = out - clean
        grads, _ = model.backward(cache, (2.0 / r.size) * r)
        opt.step(grads)
        return float(np.mean(r * r))

    return step, model


#: the code whose allocations :func:`memory_growth` counts (tracemalloc attributes an array to the
#: innermost Python frame that allocated it: a line of varlearn or of NumPy's Python code)
_OWN_CODE = (tracemalloc.Filter(True, "*varlearn*"), tracemalloc.Filter(True, "*numpy*"))


def _live_kib():
    """KiB alive now that were allocated from varlearn's or NumPy's code (:data:`_OWN_CODE`)."""
    snap = tracemalloc.take_snapshot().filter_traces(_OWN_CODE)
    return sum(stat.size for stat in snap.statistics("filename")) / 1024


def memory_growth(step, n_steps):
    """Traced allocations (KiB) alive after step 5 and after step ``n_steps``, their peak, and the RSS (MiB).

    The live figures count only allocations made from varlearn's or NumPy's code, so that other
    threads of the process (for example a Dask client's event loop in a test session) do not
    count as growth of the step; the peak is that of every traced allocation.
    """
    tracemalloc.start()
    live = {}
    for i in range(1, n_steps + 1):
        step()
        if i in (5, n_steps):
            live[i] = _live_kib()
    peak = tracemalloc.get_traced_memory()[1] / 1024
    tracemalloc.stop()
    return {"live_kib_after_5": live[5], f"live_kib_after_{n_steps}": live[n_steps], "peak_kib": peak,
            "max_rss_mib": rss_mib()}


def conv_methods(b, c, s, rng):
    """Alternatives for the forward correlation ``c -> 2c`` on the padded layout (``--methods``)."""
    geom = Geometry(b, s, s, 3)
    x = to_padded(rng.standard_normal((b, c, s, s)).astype(np.float32), geom)
    w = rng.standard_normal((2 * c, c, 3, 3)).astype(np.float32)
    lo, hi, n, offs = geom.lo, geom.hi, geom.n, geom.offsets
    taps = [np.ascontiguousarray(w[:, :, a, bb]) for a in range(3) for bb in range(3)]
    wcol = np.ascontiguousarray(w.transpose(0, 2, 3, 1).reshape(2 * c, 9 * c))

    def per_tap(block=None):
        y = np.empty((2 * c, n), np.float32)
        step = block or (hi - lo)
        tmp = np.empty((2 * c, step), np.float32)
        for s0 in range(lo, hi, step):
            e0 = min(hi, s0 + step)
            yv = y[:, s0:e0]
            np.matmul(taps[0], x[:, s0 + offs[0]:e0 + offs[0]], out=yv)
            for t in range(1, 9):
                np.matmul(taps[t], x[:, s0 + offs[t]:e0 + offs[t]], out=tmp[:, :e0 - s0])
                yv += tmp[:, :e0 - s0]
        return y

    def im2col_full():
        cols = np.empty((9, c, hi - lo), np.float32)
        for t, d in enumerate(offs):
            cols[t] = x[:, lo + d:hi + d]
        y = np.empty((2 * c, n), np.float32)
        np.matmul(wcol, cols.reshape(9 * c, -1), out=y[:, lo:hi])
        return y

    def taps_along_outputs(block=1024):
        wst = np.ascontiguousarray(w.transpose(2, 3, 0, 1).reshape(9 * 2 * c, c))
        y = np.empty((2 * c, n), np.float32)
        for s0 in range(lo, hi, block):
            e0 = min(hi, s0 + block)
            z = (wst @ x[:, s0 - lo:e0 + lo]).reshape(9, 2 * c, -1)
            yv = y[:, s0:e0]
            yv[...] = z[0, :, lo + offs[0]:lo + offs[0] + e0 - s0]
            for t in range(1, 9):
                yv += z[t, :, lo + offs[t]:lo + offs[t] + e0 - s0]
        return y

    wper = np.ascontiguousarray(np.broadcast_to(w[None, :c], (b, c, c, 3, 3)))
    return {"per-tap GEMMs, whole batch": per_tap, "per-tap GEMMs, blocks of 4096": lambda: per_tap(4096),
            "im2col, one GEMM": im2col_full, "taps along the outputs": taps_along_outputs,
            "im2col blocks (varlearn)": lambda: conv_padded(x, w, geom),
            "per-example kernels c -> c (STN layer)": lambda: conv_padded(x, wper, geom)}


# ---------------------------------------------------------------------------- torch
def torch_cases(args, rng):
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return None
    torch.set_num_threads(args.threads)
    F = torch.nn.functional
    b, c, s, n = args.batch, args.channels, args.size, args.n_hyper

    x = torch.tensor(rng.standard_normal((b, c, s, s)), dtype=torch.float32, requires_grad=True)
    w = torch.tensor(0.1 * rng.standard_normal((c, c, 3, 3)), dtype=torch.float32, requires_grad=True)
    g = torch.tensor(rng.standard_normal((b, c, s, s)), dtype=torch.float32)

    def conv():
        x.grad = w.grad = None
        F.conv2d(x, w, padding=1).backward(g)

    w2 = torch.tensor(0.1 * rng.standard_normal((2 * c, c, 3, 3)), dtype=torch.float32)

    def fwd2c():
        with torch.no_grad():
            F.conv2d(x, w2, padding=1)

    chans = [1] + [c] * (args.depth - 1) + [1]
    tr = np.random.default_rng(0)

    def param(*shape, scale=1.0):
        return torch.tensor(scale * tr.uniform(-1, 1, shape), dtype=torch.float32, requires_grad=True)

    layers = []
    for ci, co in zip(chans[:-1], chans[1:]):
        bound = (6.0 / (9 * ci)) ** 0.5
        layers.append({"w": param(2 * co, ci, 3, 3, scale=bound), "b_e": param(co, scale=0.0),
                       "b_h": param(co, scale=(9 * ci) ** -0.5), "A": param(2 * co, n, scale=0.05)})
    plain = [{"w": param(co, ci, 3, 3, scale=(6.0 / (9 * ci)) ** 0.5), "b": param(co, scale=0.0)}
             for ci, co in zip(chans[:-1], chans[1:])]
    opt_stn = torch.optim.Adam([t for lay in layers for t in lay.values()], lr=1e-4)
    opt_plain = torch.optim.Adam([t for lay in plain for t in lay.values()], lr=1e-4)
    clean = torch.tensor(rng.random((b, 1, s, s)), dtype=torch.float32)
    noisy = clean + 0.1 * torch.randn(b, 1, s, s)
    h = torch.randn(b, n)
    rates = torch.tensor(rng.uniform(0.0, 0.2, b), dtype=torch.float32)

    def stn_step():
        opt_stn.zero_grad(set_to_none=True)
        a = noisy
        for i, lay in enumerate(layers):
            co = lay["w"].shape[0] // 2
            z = F.conv2d(a, lay["w"], padding=1)
            gains = h @ lay["A"].T
            a = (z[:, :co] + gains[:, :co, None, None] * z[:, co:]
                 + (lay["b_e"] + gains[:, co:] * lay["b_h"])[:, :, None, None])
            if i < len(layers) - 1:
                keep = (1.0 - rates)[:, None]
                mask = (torch.rand(b, co) < keep).float() / keep
                a = torch.relu(a) * mask[:, :, None, None]
        loss = F.mse_loss(noisy - a, clean)
        loss.backward()
        opt_stn.step()

    def stn_grouped_step():
        """The same network with a kernel per example: one grouped convolution (groups = B) per layer."""
        opt_stn.zero_grad(set_to_none=True)
        a = noisy.reshape(1, b, s, s)
        for i, lay in enumerate(layers):
            co = lay["w"].shape[0] // 2
            gains = h @ lay["A"].T
            weff = lay["w"][None, :co] + gains[:, :co, None, None, None] * lay["w"][None, co:]
            bias = lay["b_e"] + gains[:, co:] * lay["b_h"]
            a = F.conv2d(a, weff.reshape(b * co, -1, 3, 3), bias.reshape(-1), padding=1, groups=b)
            if i < len(layers) - 1:
                keep = (1.0 - rates)[:, None]
                mask = (torch.rand(b, co) < keep).float() / keep
                a = torch.relu(a) * mask.reshape(1, b * co, 1, 1)
        F.mse_loss(noisy - a.reshape(b, 1, s, s), clean).backward()
        opt_stn.step()

    def plain_step():
        opt_plain.zero_grad(set_to_none=True)
        a = noisy
        for i, lay in enumerate(plain):
            a = F.conv2d(a, lay["w"], lay["b"], padding=1)
            if i < len(plain) - 1:
                a = torch.relu(a)
        F.mse_loss(noisy - a, clean).backward()
        opt_plain.step()

    return {"conv": conv, "fwd2c": fwd2c, "stn_step": stn_step, "stn_grouped_step": stn_grouped_step,
            "plain_step": plain_step, "version": torch.__version__}


# ---------------------------------------------------------------------------- main
