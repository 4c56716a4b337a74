r"""Padded-layout 2-D correlations for the STN layers (NumPy or CuPy), with their adjoints.

The convolutions of :mod:`varlearn.stn.layers` work on a *padded, channel-major, flat* layout: a batch of
``B`` maps ``H x W`` with ``C`` channels is stored as an array ``(C, N)``,
``N = B * (H + 2p) * (W + 2p)``, ``p = k // 2``, holding every map zero-padded by
``p`` pixels (:class:`Geometry`, :func:`to_padded`, :func:`from_padded`).
In this layout the tap ``(a, b)`` of a "same"-size correlation is the shift of
the flat index by ``d_ab = (a - p)(W + 2p) + (b - p)``, so one tap is a
contiguous slice of every row and the im2col matrix of a block of positions
is ``k²`` slice copies; evaluating the correlation on every flat position in
``[lo, N - lo)``, ``lo = p (W + 2p) + p``, computes all valid outputs and some
junk on border positions, which is zeroed afterwards (:func:`zero_border`).
The layout needs no per-layer padding copy, and the input gradient is the same
correlation with the flipped, transposed kernel.

Method.  Seconds (the minimum over 9 interleaved rounds, one BLAS thread,
float32) of one forward correlation ``32 -> 64`` channels 3x3 on a batch of
32 maps 40 x 40, from ``python scripts/benchmark_stn.py --methods`` on the
2-core development machine while it was idle (NumPy 2.4 with OpenBLAS,
PyTorch 2.13 CPU):

==================================================  =======
per-tap GEMMs over the whole batch, accumulated       0.062
per-tap GEMMs in blocks of 4096 positions             0.043
one im2col of the whole batch + one GEMM              0.041
the taps stacked along the outputs, shifted sums      0.055
**im2col + GEMM per block of about 2.5 MB** (here)    0.031
the same, a kernel per example, ``32 -> 32``          0.020
PyTorch ``conv2d`` (oneDNN)                           0.026
==================================================  =======

The GEMMs run at about 50-70 GFLOP/s against about 80 for PyTorch's direct
convolution, and the k² slice copies of im2col add about 20 %; a
channel-last variant of the same layout measured the same.  The backward
pass (:func:`conv_padded_backward`) takes the input and kernel gradients from
one im2col of the output gradient (20 % faster than two passes).  A plain
convolution forward + backward costs 1.2x PyTorch's (1.4x through the NCHW
wrappers, which convert the layout).  The STN layer does not stack ``K_e``
and ``K_h`` into ``2 C_out`` outputs: its gains are per example, so it
convolves example ``b`` with its own kernel ``K_e + diag(g_w,b) K_h`` (the
``32 -> 32`` row: half the work; see :class:`varlearn.stn.layers.STNConv2d`); a training step of
the 5-layer STN-DnCNN takes 0.86x the time of the same network in PyTorch.

References
----------
K. Chellapilla, S. Puri, P. Simard, "High performance convolutional neural networks
for document processing", IWFHR 2006 (im2col + GEMM).
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np

from .. import _accel
from ..backend import get_namespace, xp_name

__all__ = [
    "Geometry", "to_padded", "from_padded", "zero_border", "conv_padded", "conv_padded_input_grad",
    "conv_padded_weight_grad", "conv_padded_backward",
]

# bytes of one im2col block (k*k*C_in, m): see the module docstring
_BLOCK_BYTES = {"numpy": 5 << 19, "cupy": 1 << 30}


# ---------------------------------------------------------------------------- layout
class Geometry:
    """The padded channel-major layout of a batch of ``B`` maps ``H x W`` for odd kernels ``k x k``.

    Attributes: ``batch, height, width, pad, hp, wp`` (padded size),
    ``n = batch*hp*wp`` (flat length), ``lo, hi`` (the computed flat range),
    ``offsets`` (the ``k*k`` flat tap shifts, row-major in ``(a, b)``).
    """

    def __init__(self, batch, height, width, kernel_size=3):
        for name, v in (("batch", batch), ("height", height), ("width", width), ("kernel_size", kernel_size)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size!r}")
        self.batch, self.height, self.width, self.kernel_size = int(batch), int(height), int(width), int(kernel_size)
        p = self.kernel_size // 2
        self.pad = p
        self.hp, self.wp = self.height + 2 * p, self.width + 2 * p
        self.n = self.batch * self.hp * self.wp
        self.lo = p * self.wp + p
        self.hi = self.n - self.lo
        self.offsets = [(a - p) * self.wp + (b - p) for a in range(kernel_size) for b in range(kernel_size)]

    def __repr__(self):
        return f"Geometry({self.batch}, {self.height}, {self.width}, kernel_size={self.kernel_size})"

    def blocks(self, rows, itemsize, xp):
        """Work blocks ``(b0, b1, s, e)``: images ``b0:b1``, local flat positions ``[s, e)`` of each.

        The local positions ``[lo, S - lo)`` (``S = hp * wp``) of an image hold
        all its outputs; a block's im2col array ``(b1 - b0, rows, e - s)`` has
        about ``_BLOCK_BYTES`` bytes.  On NumPy a block lies in one image (one
        GEMM per block, written in place); on CuPy a block holds several whole
        images when they fit (one batched GEMM).
        """
        sz = self.hp * self.wp
        lo, hi = self.lo, sz - self.lo
        m = max(256, _BLOCK_BYTES[xp_name(xp)] // max(1, rows * itemsize))
        if xp_name(xp) == "cupy" and hi - lo <= m:
            c = max(1, min(self.batch, m // (hi - lo)))
            return [(b0, min(self.batch, b0 + c), lo, hi) for b0 in range(0, self.batch, c)]
        nb = -(-(hi - lo) // m)
        m = -(-(hi - lo) // nb)
        return [(b, b + 1, s, min(hi, s + m)) for b in range(self.batch) for s in range(lo, hi, m)]


def to_padded(x, geom):
    """``(B, C, H, W)`` -> the padded channel-major ``(C, N)`` array of ``geom`` (zero borders)."""
    xp = get_namespace(x)
    if x.ndim != 4 or (x.shape[0], x.shape[2], x.shape[3]) != (geom.batch, geom.height, geom.width):
        raise ValueError(f"x must have shape ({geom.batch}, C, {geom.height}, {geom.width}), got {tuple(x.shape)}")
    p = geom.pad
    c = x.shape[1]
    buf = xp.zeros((c, geom.batch, geom.hp, geom.wp), dtype=x.dtype)
    buf[:, :, p:p + geom.height, p:p + geom.width] = x.transpose(1, 0, 2, 3)
    return buf.reshape(c, geom.n)


def from_padded(buf, geom):
    """The interior of a padded ``(C, N)`` array as a new ``(B, C, H, W)`` array."""
    p = geom.pad
    v = buf.reshape(buf.shape[0], geom.batch, geom.hp, geom.wp)[:, :, p:p + geom.height, p:p + geom.width]
    return v.transpose(1, 0, 2, 3).copy()


def zero_border(buf, geom):
    """Set the padding positions of a padded ``(C, N)`` array to zero, in place; returns ``buf``."""
    p = geom.pad
    if p:
        v = buf.reshape(buf.shape[0], geom.batch, geom.hp, geom.wp)
        v[:, :, :p, :] = 0
        v[:, :, geom.hp - p:, :] = 0
        v[:, :, p:geom.hp - p, :p] = 0
        v[:, :, p:geom.hp - p, geom.wp - p:] = 0
    return buf


def _tap_matrix(w):
    """``(..., C_out, C_in, k, k)`` -> the contiguous ``(..., C_out, k*k*C_in)`` matrix in im2col order."""
    xp = get_namespace(w)
    k = w.shape[-1]
    nd = w.ndim
    perm = tuple(range(nd - 4)) + (nd - 4, nd - 2, nd - 1, nd - 3)
    return xp.ascontiguousarray(w.transpose(perm)).reshape(w.shape[:-3] + (k * k * w.shape[-3],))


def _im2col(x3, blk, offsets, cols):
    """``cols[j, t, c, i] = x3[c, b0 + j, s + i + offsets[t]]``; ``x3`` ``(C, B, S)``, ``cols`` ``(nb, k*k, C, m)``."""
    b0, b1, s, e = blk
    m = e - s
    for t, d in enumerate(offsets):
        cols[:b1 - b0, t, :, :m] = x3[:, b0:b1, s + d:e + d].transpose(1, 0, 2)


def _check_kernel(w, c_in, batch=None, name="w"):
    ok = w.ndim in (4, 5) and w.shape[-1] == w.shape[-2] and w.shape[-3] == c_in
    if ok and w.ndim == 5:
        ok = batch is not None and w.shape[0] == batch
    if not ok:
        lead = "" if batch is None else f"[{batch},] "
        raise ValueError(f"{name} must have shape {lead}(C_out, {c_in}, k, k), got shape {tuple(w.shape)}")


@functools.lru_cache(maxsize=1)
def _blas_controller():
    """One threadpoolctl controller for the process (a fresh one per call would allocate every time)."""
    from threadpoolctl import ThreadpoolController  # noqa: PLC0415

    return ThreadpoolController()


def _for_blocks(xp, geom, rows, dtype, body):
    """Call ``body(block, cols)`` for every block of ``geom``, ``cols`` a work array ``(nb, rows, m)``.

    On NumPy with more than one varlearn kernel thread (``varlearn.set_threads``,
    or ``"auto"`` on idle cores) the blocks are shared out over the threads
    by image (:func:`varlearn._accel.run_chunks`, each thread with its own
    work array; NumPy's copies and BLAS release the GIL) and BLAS runs on one
    thread meanwhile; the images' outputs are disjoint and each image's blocks
    run in order, so the results do not depend on the threads.
    """
    blocks = geom.blocks(rows, np.dtype(dtype).itemsize, xp)
    shape = (max(b1 - b0 for b0, b1, _, _ in blocks), rows, max(e - s for _, _, s, e in blocks))
    info = _accel.thread_info() if xp_name(xp) == "numpy" and len(blocks) > 1 else {"threads": 1}
    if info["threads"] <= 1:
        cols = xp.empty(shape, dtype=dtype)
        for blk in blocks:
            body(blk, cols)
        return

    groups = {}  # the blocks of one image go to one thread (they add into the same accumulator rows)
    for blk in blocks:
        groups.setdefault(blk[0], []).append(blk)
    groups = list(groups.values())

    def kernel(c0, c1):
        cols = np.empty(shape, dtype=dtype)
        for group in groups[c0:c1]:
            for blk in group:
                body(blk, cols)

    with contextlib.ExitStack() as stack:
        if info["blas"] > 1:
            stack.enter_context(_blas_controller().limit(limits=1))
        _accel.run_chunks(kernel, len(groups), (), n_threads=info["threads"])


def conv_padded(xf, w, geom, out=None, bias=None):
    r"""Correlation on the padded layout: ``out[o, q] = Σ_{c,a,b} w[o, c, a, b] xf[c, q + d_ab] + bias[o]``.

    ``xf`` ``(C_in, N)`` must have zero borders.  ``w`` is ``(C_out, C_in, k, k)``,
    or ``(B, C_out, C_in, k, k)`` for a kernel per example; ``bias`` (optional)
    is ``(C_out,)`` or ``(C_out, B)``.  The border positions of ``out``
    ``(C_out, N)`` hold unspecified values afterwards (call :func:`zero_border`).
    """
    return _correlate(xf, w, geom, out=out, bias=bias)[0]


def _correlate(xf, w, geom, out=None, bias=None, partner=None, per_example=False):
    """:func:`conv_padded`; with ``partner`` ``(C_p, N)`` also ``acc[., r, c] = Σ_q cols[r, q] partner[c, q]``.

    ``acc`` reuses each block's im2col matrix ``cols`` ``(k*k*C_in, m)`` while
    it is in cache; it is ``(B, k*k*C_in, C_p)`` per example with
    ``per_example``, else ``(1, k*k*C_in, C_p)``.
    """
    xp = get_namespace(xf, w)
    ci = xf.shape[0]
    _check_kernel(w, ci, geom.batch)
    co, k = w.shape[-4], w.shape[-1]
    if k != geom.kernel_size or xf.shape[1] != geom.n:
        raise ValueError(f"xf {tuple(xf.shape)} and w {tuple(w.shape)} do not match {geom!r}")
    per = w.ndim == 5
    wm = _tap_matrix(w.astype(xf.dtype, copy=False))
    if out is None:
        out = xp.empty((co, geom.n), dtype=xf.dtype)
    rows = k * k * ci
    x3, o3 = xf.reshape(ci, geom.batch, -1), out.reshape(co, geom.batch, -1)
    if bias is not None:
        bias = bias.astype(xf.dtype, copy=False).reshape(co, -1)
    acc = None
    if partner is not None:
        p3 = partner.reshape(partner.shape[0], geom.batch, -1)
        acc = xp.zeros((geom.batch, rows, partner.shape[0]), dtype=xf.dtype)
    numpy_out = xp_name(xp) == "numpy"  # NumPy's matmul writes into strided outputs

    def body(blk, cols):
        b0, b1, s, e = blk
        _im2col(x3, blk, geom.offsets, cols.reshape(cols.shape[0], k * k, ci, -1))
        c = cols[:b1 - b0, :, :e - s]
        a = wm[b0:b1] if per else wm
        if numpy_out and b1 - b0 == 1:
            xp.matmul(a[0] if per else a, c[0], out=o3[:, b0, s:e])
        else:
            o3[:, b0:b1, s:e] = xp.matmul(a, c).transpose(1, 0, 2)
        if bias is not None:
            o3[:, b0:b1, s:e] += bias[:, b0:b1, None] if bias.shape[1] > 1 else bias[:, :, None]
        if acc is not None:
            acc[b0:b1] += xp.matmul(c, p3[:, b0:b1, s:e].transpose(1, 2, 0))

    _for_blocks(xp, geom, rows, xf.dtype, body)
    if acc is not None and not per_example:
        acc = acc.sum(axis=0, keepdims=True)
    return out, acc


def _flip(w):
    """The kernel of the adjoint correlation: ``(..., C_in, C_out, k, k)``, flipped in both spatial axes."""
    return w.swapaxes(-3, -4)[..., ::-1, ::-1]


def conv_padded_input_grad(gf, w, geom, out=None):
    """Adjoint of :func:`conv_padded` in its input: ``gf`` ``(C_out, N)`` -> ``(C_in, N)``, zero borders."""
    return zero_border(conv_padded(gf, _flip(w), geom, out=out), geom)


def conv_padded_weight_grad(xf, gf, geom, per_example=False):
    r"""``dw[o, c, a, b] = Σ_q gf[o, q] xf[c, q + d_ab]`` (the kernel gradient; ``gf`` zero on borders).

    With ``per_example`` the sum over ``q`` runs over each example's positions
    separately and the result is ``(B, C_out, C_in, k, k)``.
    """
    xp = get_namespace(xf, gf)
    ci, co, k = xf.shape[0], gf.shape[0], geom.kernel_size
    rows = k * k * ci
    x3, g3 = xf.reshape(ci, geom.batch, -1), gf.reshape(co, geom.batch, -1)
    acc = xp.zeros((geom.batch, co, rows), dtype=xf.dtype)

    def body(blk, cols):
        b0, b1, s, e = blk
        _im2col(x3, blk, geom.offsets, cols.reshape(cols.shape[0], k * k, ci, -1))
        acc[b0:b1] += xp.matmul(g3[:, b0:b1, s:e].transpose(1, 0, 2), cols[:b1 - b0, :, :e - s].transpose(0, 2, 1))

    _for_blocks(xp, geom, rows, xf.dtype, body)
    if not per_example:
        acc = acc.sum(axis=0, keepdims=True)
    dw = acc.reshape(acc.shape[0], co, k, k, ci).transpose(0, 1, 4, 2, 3)
    return xp.ascontiguousarray(dw if per_example else dw[0])


def conv_padded_backward(xf, gf, w, geom, per_example=False):
    r"""``(dx, dw)``: :func:`conv_padded_input_grad` and :func:`conv_padded_weight_grad` in one pass.

    Both use the im2col matrix of ``gf``: with ``-d_ab = d_{k-1-a, k-1-b}``,
    ``dw[o, c, a, b] = Σ_q gf[o, q - d_ab] xf[c, q]`` is the product of the
    input-gradient pass's im2col block (flipped tap) with the unshifted block
    of ``xf``, so one im2col serves both GEMMs (one copy pass less, and the
    second GEMM reads the block while it is in cache).
    """
    xp = get_namespace(xf, gf)
    k, co, ci = geom.kernel_size, gf.shape[0], xf.shape[0]
    dx, acc = _correlate(gf, _flip(w), geom, partner=xf, per_example=per_example)
    dw = acc.reshape(acc.shape[0], k, k, co, ci)[:, ::-1, ::-1].transpose(0, 3, 4, 1, 2)
    return zero_border(dx, geom), xp.ascontiguousarray(dw if per_example else dw[0])
