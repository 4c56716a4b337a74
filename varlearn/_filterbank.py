r"""Helpers of the filter bank: blocks, reflect padding, im2col / col2im and certified norm bounds.

The operator itself is :class:`varlearn.operators.FilterBank`
(``varlearn/operators/filterbank.py``); this module imports no operator.
:class:`~varlearn.operators.FilterBank` maps images ``(..., H, W)`` to ``(..., K, H, W)``:

.. math:: (K_i x)[p] = \sum_{a,b=0}^{s-1} k_i[a,b]\; \tilde x[p_r + a, p_c + b],

where :math:`\tilde x` is ``x`` padded by ``c = s // 2`` pixels on every side
with NumPy's ``mode="reflect"`` (mirror about the edge pixel, which is *not*
repeated: ``x[-1] -> x[1]``, ``x[H] -> x[H-2]``; PyTorch's ``"reflect"`` is
the same rule).  Equivalently ``(k ⋆ x)[p] = Σ_{a,b} k[a,b] x[refl(p + (a-c, b-c))]``,
a "same"-size cross-correlation.  The adjoint is the correlation adjoint on the
padded grid followed by the adjoint of the padding (the mirrored border rows and
columns are folded back onto the pixels they copy).

Images must be at least ``(c + 1) x (c + 1)`` (one reflection reaches every
padded pixel, as in NumPy).

Method.  Seconds per ``apply`` (``K x`` for the whole stack) on 20 x 256²
images, 48 filters 7 x 7, float64 / float32, on the 2-core development machine
(NumPy 2.4, OpenBLAS), measured side by side in one run with one BLAS thread:

===============================================  ==============  =============
method                                            float64         float32
===============================================  ==============  =============
direct: 48·49 shifted axpys over the stack        4.9             2.2
FFT (scipy.fft rfft2/irfft2, per image x bank)    2.4             1.9
im2col + one GEMM per block (this module)         0.19            0.10
===============================================  ==============  =============

(an earlier, quieter run with two BLAS threads: 4.6 / 2.2, 1.3 / 0.70 and
0.14 / 0.062).  im2col + GEMM is exact (no FFT round-off, no wrap-around to
undo) and 10-25x faster than the alternatives, so every operation here is:
copy the 49 shifted views of a block of the padded input into ``cols``
``(s², m)``, multiply by the ``(K, s²)`` tap matrix (BLAS / cuBLAS), and for the
adjoint multiply by its transpose and add the 49 shifted rows back (col2im).
The work runs in blocks (a band of rows of one image on NumPy, several whole
images on CuPy) so that the working set is a few MiB whatever the stack size:
peak memory is the padded input (and output) plus a few blocks, never the
49-fold im2col of the stack (514 MB above) nor, in the Field-of-Experts
kernels, the 48-fold ``K x``.  On NumPy, blocks of about 3 MiB per
``(max(K, s²), m)`` array were fastest (bands of about 30 rows of a 256-wide
image in float64, 60 in float32; 0.5 MiB and 16 MiB were 10-20 % slower):
large enough for an efficient GEMM, small enough for the elementwise passes of
the Field-of-Experts kernels to stay in cache.

Note on threads: under load from other processes (the shared 2-core
development machines), OpenBLAS with 2 threads made these GEMM-heavy calls
3-7x *slower* than with ``OPENBLAS_NUM_THREADS=1``; on an idle machine extra
threads help the GEMMs (16 cores: ``apply`` 2x faster, a gradient 1.4x).

Norm bounds.  Two bounds, each valid for every accepted image size; the code
takes the smaller.

*Fourier bound.*  Along one axis of length ``n``, the reflect-padded signal is
a window of the ``N = 2n - 2``-periodic symmetric extension ``y`` of ``x``, and
``K_i x`` is the restriction to ``[0, n)`` of the ``N``-periodic correlation
of ``y`` with ``k_i``, whose eigenvalues are samples of the DTFT
:math:`\hat k_i(\omega) = \sum_{a,b} k_i[a,b] e^{-\mathrm i(\omega_1 a + \omega_2 b)}`.
One period of ``y`` holds every pixel at most twice per axis
(:math:`\|y\|^2 \le 4\|x\|^2` in 2-D), so for weights :math:`w_i \ge 0`

.. math:: \Big\|\sum_i w_i K_i^T K_i\Big\| \le 4 \sup_\omega \sum_i w_i |\hat k_i(\omega)|^2,
          \qquad \|K_i\| \le 2 \sup_\omega |\hat k_i(\omega)| .

The supremum of the trigonometric polynomial :math:`g = \sum_i w_i|\hat k_i|^2`
(degree ``D = 2c`` per axis) is certified from its maximum on an ``M x M`` FFT
grid: at the maximiser the gradient vanishes and Bernstein's inequality bounds
the second derivatives by :math:`D^2 \sup g`, so
:math:`\sup g \le \max_\text{grid} g / (1 - 2 D^2\pi^2/M^2)` (``M >= 16 D``:
at most 8.4 % above the grid maximum; 4.5 % for 7 x 7 filters, ``M = 128``).
The factor 2 is attained: a corner tap is a shift whose mirrored border
reaches one pixel twice per axis (:math:`\|K\| = 2 = 2\sup|\hat k|`).

*Schur bound* (:math:`\|A\|^2 \le \max_\text{row}\sum|A|\cdot\max_\text{col}\sum|A|`).
A row of :math:`K_i` holds the taps of ``k_i`` (absolute sum at most
:math:`\|k_i\|_1`).  Along one axis, input index ``q`` is read through tap
offset ``d = a - c`` from output ``q - d`` and, through the left mirror, only if
``d <= -1`` and through the right mirror only if ``d >= 1``, so
:math:`\|K_i\|^2 \le \|k_i\|_1 \sum_{a,b}|k_i[a,b]|(1 + [a\ne c])(1 + [b\ne c])`.
It wins for filters concentrated on the centre tap.

For random zero-mean 7 x 7 filters (the Field-of-Experts initialisation) the
true norm is within 1 % of :math:`\sup|\hat k_i|`, 0.36-0.45 :math:`\|k_i\|_1`:
the bound is 1.9-2.1x the norm (the boundary can double it: see the corner tap)
against 4.4-5.5x for ``2 ||k_i||_1``; for a bank of 6 such filters the Fourier
bound of :math:`\|\sum_i K_i^TK_i\|^{1/2}` is 2.0x the norm against 3.1x for
:math:`(\sum_i\|K_i\|^2)^{1/2}`.
"""
from __future__ import annotations

import math

import numpy as np

from .backend import get_namespace, xp_name

__all__ = ["Blocks", "as_stack", "reflect_pad", "fold_pad", "im2col", "col2im_add", "block_view",
           "work_array", "weighted_gram_bound", "fourier_norm_bounds", "schur_norm_bounds", "power_spectra"]

# bytes of one (c, max(K, s^2), m) work array per block: see the module docstring
_BLOCK_BYTES = {"numpy": 3 << 20, "cupy": 128 << 20}
# col2im by gathering (one reduction) instead of 49 shifted additions
_COL2IM_GATHER = {"numpy": False, "cupy": True}


# ---------------------------------------------------------------------------- helpers
def check_filters(filters):
    """Validate a filter bank ``(K, s, s)`` (s odd) and return it as an array."""
    if not (isinstance(filters, np.ndarray) or type(filters).__module__.split(".")[0] == "cupy"):
        filters = np.asarray(filters, dtype=np.float64)
    if filters.ndim != 3 or filters.shape[1] != filters.shape[2]:
        raise ValueError(f"filters must have shape (K, s, s), got shape {tuple(filters.shape)}")
    k, s = int(filters.shape[0]), int(filters.shape[1])
    if k < 1:
        raise ValueError(f"filters must hold at least one filter, got shape {tuple(filters.shape)}")
    if s % 2 != 1:
        raise ValueError(f"filters must have an odd size s, got shape {tuple(filters.shape)}")
    if filters.dtype.kind != "f":
        filters = filters.astype(np.float64)
    return filters


def check_image_shape(shape, s, name="x"):
    if len(shape) < 2:
        raise ValueError(f"{name} must have shape (..., H, W), got shape {tuple(shape)}")
    h, w = shape[-2], shape[-1]
    c = s // 2
    if h < c + 1 or w < c + 1:
        raise ValueError(
            f"{name} images must be at least {c + 1}x{c + 1} for {s}x{s} filters "
            f"(reflect padding by {c}), got shape {tuple(shape)}"
        )


def schur_norm_bounds(abs_taps, s):
    r"""Schur-test bounds on :math:`\|K_i\|_2` from the absolute taps ``(K, s, s)`` (any namespace)."""
    xp = get_namespace(abs_taps)
    c = s // 2
    wgt = 1.0 + (xp.arange(s) != c).astype(abs_taps.dtype)
    l1 = xp.sum(abs_taps, axis=(1, 2))
    col = xp.sum(abs_taps * wgt[:, None] * wgt[None, :], axis=(1, 2))
    return xp.sqrt(l1 * col)


def _grid(s):
    """FFT grid size ``M >= max(64, 16 D)`` and the certification factor for degree ``D = 2 (s // 2)``."""
    d = 2 * (s // 2)
    m = 64
    while m < 16 * d:
        m *= 2
    return m, 1.0 / (1.0 - 2.0 * d * d * math.pi ** 2 / (m * m))


def power_spectra(taps, s):
    r""":math:`|\hat k_i|^2` on the half ``M x (M/2+1)`` FFT grid (``|\hat k(-\omega)| = |\hat k(\omega)|``)."""
    xp = get_namespace(taps)
    m, _ = _grid(s)
    f = xp.fft.rfft2(taps, s=(m, m), axes=(-2, -1))
    return f.real * f.real + f.imag * f.imag


def fourier_norm_bounds(taps, s, spectra=None):
    r"""Certified :math:`2\sup_\omega|\hat k_i(\omega)| \ge \|K_i\|` for taps ``(K, s, s)`` (any namespace)."""
    xp = get_namespace(taps)
    _, factor = _grid(s)
    if spectra is None:
        spectra = power_spectra(taps, s)
    return 2.0 * xp.sqrt(factor * xp.max(spectra, axis=(-2, -1)))


def weighted_gram_bound(taps, weights, spectra=None, norms=None):
    r"""Upper bound on :math:`\|\sum_i w_i K_i^T K_i\|` for taps ``(K, s, s)`` and weights ``w_i >= 0``.

    NumPy in, Python float out: the smaller of the Fourier bound
    :math:`4\sup_\omega\sum_i w_i|\hat k_i|^2` and the sum of the weighted
    squared per-filter bounds (module docstring).  ``spectra``
    (:func:`power_spectra` of the taps) and ``norms`` (the per-filter bounds)
    may be passed when already computed.
    """
    taps = np.asarray(taps, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    s = taps.shape[-1]
    _, factor = _grid(s)
    spec = power_spectra(taps, s) if spectra is None else spectra
    fourier = 4.0 * factor * float(np.max(np.tensordot(w, spec, axes=(0, 0))))
    b = np.minimum(schur_norm_bounds(np.abs(taps), s), fourier_norm_bounds(taps, s, spec)) if norms is None else norms
    return min(fourier, float(np.sum(w * b * b)))


def as_stack(a):
    """View ``(..., H, W)`` as ``(N, H, W)`` (a copy only when the layout needs one)."""
    return a.reshape((-1,) + tuple(a.shape[-2:]))


def reflect_pad(x3, p, out=None):
    """Pad a stack ``(N, H, W)`` by ``p`` pixels with NumPy's ``mode="reflect"`` (requires H, W >= p + 1).

    Padded index ``j < p`` copies original index ``p - j`` and padded index
    ``p + n + j`` copies original index ``n - 2 - j``.
    """
    xp = get_namespace(x3)
    n, h, w = x3.shape
    if out is None:
        out = xp.empty((n, h + 2 * p, w + 2 * p), dtype=x3.dtype)
    out[:, p:p + h, p:p + w] = x3
    if p:
        out[:, p:p + h, :p] = x3[:, :, 1:p + 1][:, :, ::-1]
        out[:, p:p + h, p + w:] = x3[:, :, w - 1 - p:w - 1][:, :, ::-1]
        out[:, :p, :] = out[:, p + 1:2 * p + 1, :][:, ::-1, :]
        out[:, p + h:, :] = out[:, h - 1:h + p - 1, :][:, ::-1, :]
    return out


def fold_pad(z, p, out=None):
    """Adjoint of :func:`reflect_pad`: fold the border of ``z`` ``(N, H+2p, W+2p)`` back.

    ``z`` is modified in place (its border is added to the interior); the
    interior is copied into ``out`` (allocated when ``None``) and returned.
    """
    hp, wp = z.shape[-2:]
    h, w = hp - 2 * p, wp - 2 * p
    if p:
        # rows first (forward padding did the columns first), over the full width
        z[:, p + 1:2 * p + 1, :] += z[:, :p, :][:, ::-1, :]
        z[:, h - 1:h + p - 1, :] += z[:, p + h:, :][:, ::-1, :]
        zi = z[:, p:p + h, :]
        zi[:, :, p + 1:2 * p + 1] += zi[:, :, :p][:, :, ::-1]
        zi[:, :, w - 1:w + p - 1] += zi[:, :, p + w:][:, :, ::-1]
    interior = z[:, p:p + h, p:p + w]
    if out is None:
        return interior.copy()
    out[...] = interior
    return out


class Blocks:
    """A partition of a stack ``(N, H, W)`` into work blocks ``(n0, n1, r0, r1)``.

    A block is either several whole images (``r0, r1 = 0, H``) or a band of
    rows of one image, sized so that one ``(c, max(K, s²), m)`` work array holds
    about ``_BLOCK_BYTES`` bytes (``m = (r1 - r0) * W`` pixels per image).
    """

    def __init__(self, n, h, w, k, s, dtype, xp, target=None):
        if target is None:
            target = _BLOCK_BYTES[xp_name(xp)]
        rows = max(k, s * s)
        m_target = max(w, int(target) // (rows * np.dtype(dtype).itemsize))
        self.n, self.h, self.w, self.s = n, h, w, s
        if h * w <= m_target:
            c = max(1, min(n, m_target // (h * w)))
            nb = -(-n // c)
            c = -(-n // nb)  # balance the images over the blocks
            self.blocks = [(n0, min(n, n0 + c), 0, h) for n0 in range(0, n, c)]
            self.c_max, self.m_max = c, h * w
        else:
            nr = max(1, m_target // w)
            nb = -(-h // nr)
            nr = -(-h // nb)  # balance the rows over the bands
            self.blocks = [(i, i + 1, r0, min(h, r0 + nr)) for i in range(n) for r0 in range(0, h, nr)]
            self.c_max, self.m_max = 1, nr * w

    def __iter__(self):
        return iter(self.blocks)

    def size(self):
        """Number of entries ``c_max * m_max`` of one channel of the largest block."""
        return self.c_max * self.m_max


def _as_strided(xp, a, shape, strides):
    return xp.lib.stride_tricks.as_strided(a, shape=shape, strides=strides)


def im2col(xpad, block, s, out):
    """Fill ``out`` ``(c, s*s, m)`` (C-contiguous) with the ``s*s`` shifted copies of a block of ``xpad``.

    ``out[j, a*s + b, r*W + q] = xpad[n0 + j, r0 + r + a, q + b]``: one copy from
    a strided view of the C-contiguous ``xpad`` (a single kernel on CuPy; on
    NumPy about 25 % faster than 49 slice copies).
    """
    xp = get_namespace(xpad)
    n0, n1, r0, r1 = block
    c, nr = n1 - n0, r1 - r0
    w = xpad.shape[-1] - (s - 1)
    o5 = out.reshape(c, s, s, nr, w)
    if xpad.flags.c_contiguous:
        st = xpad.strides
        view = _as_strided(xp, xpad[n0:n1, r0:, :], (c, s, s, nr, w), (st[0], st[1], st[2], st[1], st[2]))
        o5[...] = view
    else:  # pragma: no cover - the callers always pass a fresh padded copy
        for a in range(s):
            src = xpad[n0:n1, r0 + a:r1 + a, :]
            for b in range(s):
                o5[:, a, b] = src[:, :, b:b + w]
    return out


def col2im_add(g, block, s, zpad):
    """Add the ``s*s`` rows of ``g`` ``(c, s*s, m)`` at their shifts into ``zpad`` (adjoint of :func:`im2col`).

    NumPy: 49 shifted in-place additions.  CuPy (``_COL2IM_GATHER``): one
    zero-padded copy of ``g`` and one reduction over a strided view that
    gathers, for every padded pixel, the 49 entries that land on it (3 kernels
    instead of 49).
    """
    xp = get_namespace(g)
    n0, n1, r0, r1 = block
    c, nr = n1 - n0, r1 - r0
    w = zpad.shape[-1] - (s - 1)
    g5 = g.reshape(c, s, s, nr, w)
    if _COL2IM_GATHER[xp_name(xp)] and s > 1:
        e = s - 1
        gp = xp.zeros((c, s, s, nr + 2 * e, w + 2 * e), dtype=g.dtype)
        gp[:, :, :, e:e + nr, e:e + w] = g5
        st = gp.strides
        # view[j, a, b, r, q] = gp[j, a, b, e + r - a, e + q - b] = g5[j, a, b, r - a, q - b] (0 outside)
        view = _as_strided(xp, gp[:, :, :, e:, e:], (c, s, s, nr + e, w + e),
                           (st[0], st[1] - st[3], st[2] - st[4], st[3], st[4]))
        zpad[n0:n1, r0:r1 + e, :] += xp.sum(view, axis=(1, 2))
        return
    for a in range(s):
        dst = zpad[n0:n1, r0 + a:r1 + a, :]
        for b in range(s):
            dst[:, :, b:b + w] += g5[:, a, b]


def block_view(a4, block):
    """The ``(c, K, m)`` view of a block of a channel stack ``(N, K, H, W)``."""
    n0, n1, r0, r1 = block
    v = a4[n0:n1, :, r0:r1, :]
    return v.reshape(n1 - n0, a4.shape[1], (r1 - r0) * a4.shape[3])


def work_array(flat, shape):
    """A view of the first ``prod(shape)`` entries of the flat work buffer ``flat`` as ``shape``."""
    count = 1
    for d in shape:
        count *= int(d)
    return flat[:count].reshape(shape)


def matmul_into(xp, a, b, out):
    """``out[...] = a @ b`` without a temporary where the backend allows it (NumPy: any strides)."""
    if xp_name(xp) == "numpy" or out.flags.c_contiguous:
        return xp.matmul(a, b, out=out)
    out[...] = xp.matmul(a, b)
    return out


def check_out(out, shape, dtype, name="out"):
    """Require ``out`` to be a C-contiguous array of ``shape`` and ``dtype`` (it is written through views)."""
    if out is None:
        return None
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(f"{name} must be a C-contiguous {np.dtype(dtype).name} array of shape {tuple(shape)}, "
                         f"got {'a non-contiguous ' if not out.flags.c_contiguous else ''}{out.dtype} array "
                         f"of shape {tuple(out.shape)}")
    return out


def check_float_array(a, name):
    """Require a NumPy or CuPy floating array (messages name the argument)."""
    if not (isinstance(a, np.ndarray) or type(a).__module__.split(".")[0] == "cupy"):
        raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(a).__name__}")
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating array, got dtype {a.dtype}")
    return a
