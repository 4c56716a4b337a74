r"""Fused numba kernels: forward differences with the smoothed-ℓ1 potentials (NumPy arrays).

The pair ``(FiniteDifference, SmoothedL1)`` is anisotropic total variation,
:math:`\lambda \sum_{d,p} \sqrt{(D_d x)_p^2 + \nu^2}` over the differences that
exist; ``(FiniteDifference, GroupSmoothedL1)`` is isotropic total variation,
:math:`\lambda \sum_p \sqrt{|(Dx)_p|^2 + \nu^2}` over every pixel.  Forward
differences are zero across the last column / row
(:class:`varlearn.operators.FiniteDifference`).  The kernel sets
:data:`ANISOTROPIC` and :data:`ISOTROPIC` follow the interface of
:mod:`varlearn.regularizers._kernels`.

Two kernels do all the work: ``_value_chunks`` (the energy) and
``_pass_chunks``, one pass that computes either the gradient at the point
``z = x + beta (x - x_prev)`` (extrapolated on the fly, or ``x`` itself) with the
data term and an optional gradient step, or the Hessian-vector product.  The
potentials' formulas are written once, in the ``_r_*`` / ``_d2_*`` helpers and the
flux rows below.

Memory and threads.  The work is split into chunks of rows: each image into
``H // 32`` blocks of consecutive rows (at least one), a split that depends on
the image height only.  A chunk streams its rows, keeping one or two rows of
intermediate values (``z``, the horizontal and vertical fluxes) in a small
scratch buffer allocated once per call and thread.  The inner loops run over one
row with no branches so that LLVM vectorises them; sums of squares are
accumulated per column (in float64), added up per chunk, and the per-chunk
partial sums are added exactly rounded, so every result is bit-identical whatever
the number of threads.  Arithmetic is done in the dtype of the arrays (float32
stays float32, as in the NumPy reference).  The kernels are serial numba
functions that release the GIL (``nogil=True``);
:func:`varlearn._accel.run_chunks` spreads the chunks over the kernel threads of
the package's thread policy (Python threads that sleep between calls).  Small
stacks run on the calling thread only (``_SERIAL_BELOW``).  Each kernel is
compiled on its first call, for the dtype of that call only, and cached on disk
(``cache=True``).

``error_model="numpy"``: the divisions (by ``sqrt(t^2 + nu^2) > 0`` and by the
block count) need no Python zero-division check.  With the default Python error
model that check sits in every inner loop and stops LLVM vectorising it (the
kernels were 2-3.5x slower).

Rounding.  The anisotropic fluxes of a pixel share one division
(``q = 1 / (r_a r_b)``, ``phi'(a) = a r_b q``), the isotropic ones one division
(``q = 1 / r``, ``phi'(a, b) = (a q, b q)``); both change the fluxes by a few units in the last place against
``t / sqrt(t^2 + nu^2)``.  A gradient written without a step is stored as
``0 * z - (-1) g`` (exactly ``g``), so one kernel serves both forms.

References
----------
.. [1] A. Chambolle and T. Pock, "An introduction to continuous optimization for
   imaging", Acta Numerica 25 (2016), 161-319.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from ... import _accel
from . import KernelSet

__all__ = ["ANISOTROPIC", "ISOTROPIC"]

# Rows per chunk (an image of height h is split into h // 32 blocks of rows).
_ROWS_PER_CHUNK = 32
# Stacks with fewer pixels run on the calling thread only: waking the other
# threads would cost more than the work (and much more on a loaded machine).
_SERIAL_BELOW = 16384


def _n_blocks(h):
    """Row blocks per image: about one per ``_ROWS_PER_CHUNK`` rows (at least one).

    The split depends on the image height only, never on the thread count, so the
    partial sums -- and hence every result -- are the same for any number of threads.
    """
    return max(1, h // _ROWS_PER_CHUNK)


def _run(kernel, x, args):
    """Run ``kernel(*args, acc, nb, c0, c1)`` over all chunks of ``x``; returns the sum of the partial sums ``acc``.

    The partial sums are added exactly rounded (``math.fsum``), so the total does not
    depend on their order either.
    """
    n_img, h, w = x.shape
    nb = _n_blocks(h)
    n_chunks = n_img * nb
    acc = np.empty(n_chunks)
    if n_img * h * w < _SERIAL_BELOW:
        kernel(*args, acc, nb, 0, n_chunks)
    else:
        _accel.run_chunks(kernel, n_chunks, (*args, acc, nb))
    return math.fsum(acc.tolist())


# ---------------------------------------------------------------------- the potentials, once
# phi(t) = sqrt(t^2 + nu^2) on each difference (SmoothedL1) or sqrt(a^2 + b^2 + nu^2) on the pair
# (a, b) of horizontal and vertical differences of a pixel (GroupSmoothedL1).  The helpers return
# scalars (tuple-returning helpers kept LLVM from vectorising the row loops).
@njit(cache=True, inline="always", error_model="numpy")
def _r_scalar(t, nu2):
    """sqrt(t^2 + nu^2): the scalar potential; its derivative is t / r."""
    return np.sqrt(t * t + nu2)


@njit(cache=True, inline="always", error_model="numpy")
def _r_group(a, b, nu2):
    """sqrt(a^2 + b^2 + nu^2): the group potential; its gradient is (a, b) / r."""
    return np.sqrt(a * a + b * b + nu2)


@njit(cache=True, inline="always", error_model="numpy")
def _d2_scalar(t, c, nu2):
    """phi''(t) c = nu^2 c / (t^2 + nu^2)^(3/2)."""
    s = t * t + nu2
    return nu2 * c / (s * np.sqrt(s))


# ---------------------------------------------------------------------- row helpers
@njit(cache=True, inline="always", error_model="numpy")
def _z_row(xr, pr, beta, zr):
    """zr = xr + beta (xr - pr)."""
    for j in range(zr.shape[0]):
        zr[j] = xr[j] + beta * (xr[j] - pr[j])


@njit(cache=True, inline="always", error_model="numpy")
def _flux_row(zc, zn, nu2, iso, ph, pv):
    """phi'(D z) on one row: ``ph`` horizontal, ``pv`` vertical (zero where D z does not exist).

    ``zn`` is the next row; on the last row it is ``zc`` itself, so that the vertical
    differences are zero.  The last column has no horizontal difference.  The two
    anisotropic fluxes of a pixel share one division (``q = 1 / (r_a r_b)``).
    """
    m = zc.shape[0] - 1
    one = zc.dtype.type(1)  # keeps float32 arithmetic in float32
    if iso:
        for j in range(m):
            a = zc[j + 1] - zc[j]
            b = zn[j] - zc[j]
            q = one / _r_group(a, b, nu2)
            ph[j] = a * q
            pv[j] = b * q
    else:
        for j in range(m):
            a = zc[j + 1] - zc[j]
            b = zn[j] - zc[j]
            ra = _r_scalar(a, nu2)
            rb = _r_scalar(b, nu2)
            q = one / (ra * rb)
            ph[j] = a * (rb * q)
            pv[j] = b * (ra * q)
    b = zn[m] - zc[m]
    pv[m] = b / _r_scalar(b, nu2)  # both potentials: the group (0, b)
    ph[m] = 0


@njit(cache=True, inline="always", error_model="numpy")
def _hflux_row(xc, xn, vc, vn, nu2, iso, ph, pv):
    """[phi''(D x)] D v on one row (rows ``xn``, ``vn`` next, or ``xc``, ``vc`` on the last row)."""
    m = xc.shape[0] - 1
    if iso:
        for j in range(m):
            a = xc[j + 1] - xc[j]
            b = xn[j] - xc[j]
            c = vc[j + 1] - vc[j]
            e = vn[j] - vc[j]
            r = _r_group(a, b, nu2)
            k = (a * c + b * e) / (r * r * r)
            ph[j] = c / r - a * k   # the group Hessian: I / r - (a, b) (a, b)^T / r^3
            pv[j] = e / r - b * k
    else:
        for j in range(m):
            ph[j] = _d2_scalar(xc[j + 1] - xc[j], vc[j + 1] - vc[j], nu2)
            pv[j] = _d2_scalar(xn[j] - xc[j], vn[j] - vc[j], nu2)
    pv[m] = _d2_scalar(xn[m] - xc[m], vn[m] - vc[m], nu2)  # both potentials: the group (0, b)
    ph[m] = 0


@njit(cache=True, inline="always", error_model="numpy")
def _grad_store(zr, yr, ph, pvp, pv, data_w, lam, keep, step, orow, sqc):
    """g = data_w (z - y) + lam D^T p on one row; orow = keep z - step g; sqc += g^2 (float64).

    ``pvp`` is the vertical flux of the row above (zero above the first row).
    """
    g = data_w * (zr[0] - yr[0]) + lam * (pvp[0] - pv[0] - ph[0])
    orow[0] = keep * zr[0] - step * g
    sqc[0] += np.float64(g) * np.float64(g)
    for j in range(1, zr.shape[0]):
        g = data_w * (zr[j] - yr[j]) + lam * (ph[j - 1] - ph[j] + pvp[j] - pv[j])
        orow[j] = keep * zr[j] - step * g
        sqc[j] += np.float64(g) * np.float64(g)


@njit(cache=True, inline="always", error_model="numpy")
def _hvp_store(vr, ph, pvp, pv, data_w, lam, orow):
    """orow = data_w v + lam D^T p on one row."""
    orow[0] = data_w * vr[0] + lam * (pvp[0] - pv[0] - ph[0])
    for j in range(1, vr.shape[0]):
        orow[j] = data_w * vr[j] + lam * (ph[j - 1] - ph[j] + pvp[j] - pv[j])


@njit(cache=True, inline="always", error_model="numpy")
def _chunk_rows(c, nb, h):
    n = c // nb
    b = c - n * nb
    return n, (b * h) // nb, ((b + 1) * h) // nb


# ---------------------------------------------------------------------- kernels (serial, nogil)
# Each kernel runs the chunks c0 <= c < c1 on the calling thread and stores each
# chunk's partial sum in acc[c]; _run spreads the chunks over the kernel threads.
@njit(cache=True, nogil=True, error_model="numpy")
def _pass_chunks(x, xprev, v, y, data_w, beta, keep, step, lam, nu2, iso, hess, out, acc, nb, c0, c1):
    """The fused gradient or the Hessian-vector product over chunks ``c0 <= c < c1``.

    Gradient (``hess`` False): z = x + beta (x - xprev) (beta = 0: z = x), g = data_w (z - y) +
    lam D^T phi'(D z), out = keep z - step g, acc[c] = sum of g^2 over chunk c.
    Hessian-vector product (``hess`` True): out = data_w v + lam D^T [phi''(D x)] D v, acc[c] = 0.
    """
    h, w = x.shape[1], x.shape[2]
    zbuf = np.empty((2, w), x.dtype)   # z of two consecutive rows
    pbuf = np.empty((2, w), x.dtype)   # vertical fluxes of the row above and of this row
    ph = np.empty(w, x.dtype)          # horizontal fluxes of this row
    sqc = np.empty(w)
    for c in range(c0, c1):
        n, r0, r1 = _chunk_rows(c, nb, h)
        sqc[:] = 0.0
        if not hess:
            _z_row(x[n, r0], xprev[n, r0], beta, zbuf[0])
        if r0 > 0:
            # the vertical flux of the row above the chunk
            if hess:
                _hflux_row(x[n, r0 - 1], x[n, r0], v[n, r0 - 1], v[n, r0], nu2, iso, ph, pbuf[0])
            else:
                _z_row(x[n, r0 - 1], xprev[n, r0 - 1], beta, zbuf[1])
                _flux_row(zbuf[1], zbuf[0], nu2, iso, ph, pbuf[0])
        else:
            pbuf[0][:] = 0
        for i in range(r0, r1):
            k = (i - r0) % 2  # rows alternate between the two halves of the buffers
            pvp = pbuf[k]
            pv = pbuf[1 - k]
            nxt = i + 1 if i + 1 < h else i  # the last row is its own next row: no vertical differences
            if hess:
                _hflux_row(x[n, i], x[n, nxt], v[n, i], v[n, nxt], nu2, iso, ph, pv)
                _hvp_store(v[n, i], ph, pvp, pv, data_w, lam, out[n, i])
            else:
                zc = zbuf[k]
                zn = zbuf[1 - k]
                if nxt == i:
                    zn = zc
                else:
                    _z_row(x[n, nxt], xprev[n, nxt], beta, zn)
                _flux_row(zc, zn, nu2, iso, ph, pv)
                _grad_store(zc, y[n, i], ph, pvp, pv, data_w, lam, keep, step, out[n, i], sqc)
        acc[c] = sqc.sum()


@njit(cache=True, nogil=True, error_model="numpy")
def _value_chunks(x, nu2, iso, acc, nb, c0, c1):
    """acc[c] = sum of phi over the differences (scalar) or the pixels (group) of chunk c."""
    h, w = x.shape[1], x.shape[2]
    s = np.empty(w)
    m = w - 1
    for c in range(c0, c1):
        n, r0, r1 = _chunk_rows(c, nb, h)
        s[:] = 0.0
        for i in range(r0, r1):
            xc = x[n, i]
            last = i == h - 1
            xn = xc if last else x[n, i + 1]
            if iso:
                for j in range(m):
                    a = xc[j + 1] - xc[j]
                    b = xn[j] - xc[j]
                    s[j] += np.float64(_r_group(a, b, nu2))
                s[m] += np.float64(_r_scalar(xn[m] - xc[m], nu2))
            else:
                for j in range(m):
                    s[j] += np.float64(_r_scalar(xc[j + 1] - xc[j], nu2))
                if not last:
                    for j in range(w):
                        s[j] += np.float64(_r_scalar(xn[j] - xc[j], nu2))
        acc[c] = s.sum()


# ---------------------------------------------------------------------- the kernel sets
def _check(x3, arrays, names):
    """x3 and the ``arrays`` that must match it: C-contiguous (N, H, W) NumPy arrays of one float dtype."""
    if not isinstance(x3, np.ndarray) or x3.ndim != 3:
        raise TypeError(f"x3 must be a NumPy array of shape (N, H, W), got {type(x3).__name__} "
                        f"of shape {getattr(x3, 'shape', None)}")
    shape, dtype = x3.shape, x3.dtype
    if dtype != np.float64 and dtype != np.float32:
        raise TypeError(f"x3 must be float32 or float64, got {dtype}")
    for name, a in zip(("x3", *names), (x3, *arrays)):
        if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype != dtype:
            raise ValueError(f"{name} must be a NumPy array with the shape and dtype of x3 {shape} "
                             f"{dtype}, got {getattr(a, 'shape', None)} {getattr(a, 'dtype', None)}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
    return dtype.type


_GRAD_ARGS = ("y3", "xprev3", "out3")
_HVP_ARGS = ("v3", "out3")


def _kernel_set(iso):
    def value(x3, lam, nu):
        t = _check(x3, (), ())
        return float(lam) * _run(_value_chunks, x3, (x3, t(nu * nu), iso))

    def fused_grad(x3, y3, data_w, lam, nu, xprev3, beta, step, out3):
        if xprev3 is None or beta == 0:
            xprev3, beta = x3, 0.0  # z = x + 0 (x - x) = x
        if y3 is None or data_w == 0:
            y3 = x3
        t = _check(x3, (y3, xprev3, out3), _GRAD_ARGS)
        keep, step = (0.0, -1.0) if step is None else (1.0, step)  # out = 0 z + g = g exactly
        return _run(_pass_chunks, x3, (x3, xprev3, x3, y3, t(data_w), t(beta), t(keep), t(step), t(lam),
                                       t(nu * nu), iso, False, out3))

    def fused_hvp(x3, v3, data_w, lam, nu, out3):
        t = _check(x3, (v3, out3), _HVP_ARGS)
        zero = t(0)
        _run(_pass_chunks, x3, (x3, x3, v3, x3, t(data_w), zero, zero, t(-1), t(lam), t(nu * nu), iso, True, out3))

    pot = "GroupSmoothedL1" if iso else "SmoothedL1"
    return KernelSet(f"FiniteDifference+{pot} (numba)", value, fused_grad, fused_hvp)


#: Anisotropic TV: (FiniteDifference, SmoothedL1).
ANISOTROPIC = _kernel_set(False)
#: Isotropic TV: (FiniteDifference, GroupSmoothedL1).
ISOTROPIC = _kernel_set(True)
