"""Fused NumPy-backend kernels for smoothed total variation (optional, needs numba).

One pass over memory per call.  The work is split into chunks of rows: each
image into ``H // 32`` blocks of consecutive rows (at least one), a split that
depends on the image height only.  A chunk streams its rows, keeping one or two
rows of intermediate values (the extrapolated point ``z``, the horizontal and
vertical fluxes) in a small scratch buffer allocated once per call and thread.
The inner loops run over one row with no branches so that LLVM vectorises
them; sums of squares are accumulated per column (in float64), added up per
chunk, and the per-chunk partial sums are added in chunk order, so every
result is the same whatever the number of threads.  Arithmetic is done in the
dtype of the arrays (float32 stays float32, as in the NumPy reference).  The
fluxes ``u / r`` of the gradient are computed as ``u * (1 / r)`` (one division
per pixel instead of two), which changes them by at most a few units in the
last place.

Threads.  The kernels are serial numba functions that release the GIL
(``nogil=True``); :func:`varlearn._accel.run_chunks` spreads the chunks over
the kernel threads of the package's thread policy (a pool of Python threads
that sleep between calls, so nothing spins on a core another job needs).
Compared with ``parallel=True`` kernels this also cuts the first-run compile
time (numba's parallel transformation was most of it) and leaves no OpenMP
runtime to compete with the BLAS threads.  Each kernel is compiled on its first
call, for the dtype of that call only, and cached on disk (``cache=True``).

``error_model="numpy"``: the divisions (by ``r = sqrt(t^2 + nu^2) > 0`` and by the
block count) need no Python zero-division check.  With the default Python error
model that check sits in every inner loop and stops LLVM vectorising it: the
serial kernels were 2-3.5x slower than the former ``parallel=True`` ones
(numba compiles a ``prange`` body as a separate function whose array arguments
are marked non-aliasing, which also lets LLVM vectorise); with it they are on par
(fused FISTA step on 24x96^2 float64, one thread, the other core busy, three
alternated runs each: 0.61-0.76 ms against 0.57-0.98 ms for the former kernels).

The NumPy code in :mod:`varlearn.regularizers.tv` is the reference; the test
suite checks these kernels against it (the results agree up to rounding: the
kernels add the same terms in a slightly different order).  Small stacks run on
the calling thread only (see ``_SERIAL_BELOW``).

Conventions: ``x`` has shape ``(N, H, W)`` and is C-contiguous; ``lam`` is the
TV weight, ``nu2`` the squared smoothing, ``iso`` selects the isotropic form.
Forward differences are zero across the last column / row (see
:class:`varlearn.operators.FiniteDifference`).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from . import _accel

# Rows per chunk (an image of height h is split into h // 32 blocks of rows).
_ROWS_PER_CHUNK = 32
# Stacks with fewer pixels run on the calling thread only: waking the other
# threads would cost more than the work (and much more on a loaded machine).
_SERIAL_BELOW = 16384


def _n_blocks(h):
    """Row blocks per image: about one per ``_ROWS_PER_CHUNK`` rows (at least one).

    The split depends on the image height only, never on the thread count, so
    the partial sums -- and hence every result -- are the same for any number of
    threads.
    """
    return max(1, h // _ROWS_PER_CHUNK)


def _run(kernel, x, args, partial_sums=True):
    """Run ``kernel`` over all chunks of ``x``; returns the per-chunk partial sums (or ``None``).

    Stacks of fewer than ``_SERIAL_BELOW`` pixels run on the calling thread,
    larger ones on the kernel threads of the thread policy
    (:func:`varlearn._accel.get_threads`).
    """
    n_img, h, w = x.shape
    nb = _n_blocks(h)
    n_chunks = n_img * nb
    acc = np.empty(n_chunks) if partial_sums else None
    full = (*args, acc, nb) if partial_sums else (*args, nb)
    _accel.run_chunks(kernel, n_chunks, full, 1 if n_img * h * w < _SERIAL_BELOW else None)
    return acc


# ---------------------------------------------------------------------- row helpers
@njit(cache=True, inline="always", error_model="numpy")
def _z_row(xr, pr, beta, zr):
    """zr = xr + beta (xr - pr)."""
    for j in range(zr.shape[0]):
        zr[j] = xr[j] + beta * (xr[j] - pr[j])


@njit(cache=True, inline="always", error_model="numpy")
def _flux_row(zc, zn, nu2, iso, last, ph, pv):
    """phi'(D z) on one row: ``ph`` horizontal, ``pv`` vertical (zero where D z does not exist).

    ``zc`` is the row, ``zn`` the next row (ignored when ``last``).
    """
    w = zc.shape[0]
    m = w - 1
    one = zc.dtype.type(1)  # keeps float32 arithmetic in float32
    if last:
        # b = 0: both forms reduce to the scalar one for the horizontal flux
        for j in range(m):
            a = zc[j + 1] - zc[j]
            ph[j] = a / np.sqrt(a * a + nu2)
        for j in range(w):
            pv[j] = 0
    elif iso:
        for j in range(m):
            a = zc[j + 1] - zc[j]
            b = zn[j] - zc[j]
            q = one / np.sqrt(a * a + b * b + nu2)
            ph[j] = a * q
            pv[j] = b * q
        b = zn[m] - zc[m]
        pv[m] = b / np.sqrt(b * b + nu2)
    else:
        for j in range(m):
            a = zc[j + 1] - zc[j]
            b = zn[j] - zc[j]
            ra = np.sqrt(a * a + nu2)
            rb = np.sqrt(b * b + nu2)
            q = one / (ra * rb)
            ph[j] = a * (rb * q)
            pv[j] = b * (ra * q)
        b = zn[m] - zc[m]
        pv[m] = b / np.sqrt(b * b + nu2)
    ph[m] = 0


@njit(cache=True, inline="always", error_model="numpy")
def _hflux_row(xc, xn, vc, vn, nu2, iso, last, ph, pv):
    """[d^2 phi(D x)] D v on one row (zero where D does not exist)."""
    w = xc.shape[0]
    m = w - 1
    if last:
        for j in range(m):
            a = xc[j + 1] - xc[j]
            c = vc[j + 1] - vc[j]
            sa = a * a + nu2
            ph[j] = nu2 * c / (sa * np.sqrt(sa))
        for j in range(w):
            pv[j] = 0
    elif iso:
        for j in range(m):
            a = xc[j + 1] - xc[j]
            b = xn[j] - xc[j]
            c = vc[j + 1] - vc[j]
            e = vn[j] - vc[j]
            s = a * a + b * b + nu2
            r = np.sqrt(s)
            k = (a * c + b * e) / (s * r)
            ph[j] = c / r - a * k
            pv[j] = e / r - b * k
        b = xn[m] - xc[m]
        e = vn[m] - vc[m]
        sb = b * b + nu2
        pv[m] = nu2 * e / (sb * np.sqrt(sb))
    else:
        for j in range(m):
            a = xc[j + 1] - xc[j]
            b = xn[j] - xc[j]
            c = vc[j + 1] - vc[j]
            e = vn[j] - vc[j]
            sa = a * a + nu2
            sb = b * b + nu2
            ph[j] = nu2 * c / (sa * np.sqrt(sa))
            pv[j] = nu2 * e / (sb * np.sqrt(sb))
        b = xn[m] - xc[m]
        e = vn[m] - vc[m]
        sb = b * b + nu2
        pv[m] = nu2 * e / (sb * np.sqrt(sb))
    ph[m] = 0


@njit(cache=True, inline="always", error_model="numpy")
def _chunk_rows(c, nb, h):
    n = c // nb
    b = c - n * nb
    return n, (b * h) // nb, ((b + 1) * h) // nb


# ---------------------------------------------------------------------- kernels (serial, nogil)
# Each kernel runs the chunks c0 <= c < c1 on the calling thread and stores each
# chunk's partial sum in acc[c]; _run spreads the chunks over the kernel threads.
@njit(cache=True, nogil=True, error_model="numpy")
def _fista_chunks(x, xprev, y, beta, tau, lam, nu2, iso, out, acc, nb, c0, c1):
    h, w = x.shape[1], x.shape[2]
    buf = np.empty((5, w), x.dtype)
    sqc = np.empty(w)
    for c in range(c0, c1):
        n, r0, r1 = _chunk_rows(c, nb, h)
        sqc[:] = 0.0
        za = buf[0]
        zb = buf[1]
        ph = buf[2]
        pa = buf[3]
        pb = buf[4]
        if r0 > 0:
            # the vertical flux of the row above the chunk
            _z_row(x[n, r0 - 1], xprev[n, r0 - 1], beta, zb)
            _z_row(x[n, r0], xprev[n, r0], beta, za)
            _flux_row(zb, za, nu2, iso, False, ph, pa)
        else:
            _z_row(x[n, 0], xprev[n, 0], beta, za)
            for j in range(w):
                pa[j] = 0
        for i in range(r0, r1):
            # rows alternate between the two buffers: za / pa hold row i's z and
            # the previous row's vertical flux on even steps, zb / pb on odd ones
            if (i - r0) % 2 == 0:
                zc, zn, pvp, pv = za, zb, pa, pb
            else:
                zc, zn, pvp, pv = zb, za, pb, pa
            last = i == h - 1
            if not last:
                _z_row(x[n, i + 1], xprev[n, i + 1], beta, zn)
            _flux_row(zc, zn, nu2, iso, last, ph, pv)
            yr = y[n, i]
            orow = out[n, i]
            g = zc[0] - yr[0] + lam * (pvp[0] - pv[0] - ph[0])
            orow[0] = zc[0] - tau * g
            sqc[0] += np.float64(g) * np.float64(g)
            for j in range(1, w):
                g = zc[j] - yr[j] + lam * (ph[j - 1] - ph[j] + pvp[j] - pv[j])
                orow[j] = zc[j] - tau * g
                sqc[j] += np.float64(g) * np.float64(g)
        acc[c] = sqc.sum()


@njit(cache=True, nogil=True, error_model="numpy")
def _grad_chunks(x, y, data_w, lam, nu2, iso, out, acc, nb, c0, c1):
    h, w = x.shape[1], x.shape[2]
    buf = np.empty((3, w), x.dtype)
    sqc = np.empty(w)
    for c in range(c0, c1):
        n, r0, r1 = _chunk_rows(c, nb, h)
        sqc[:] = 0.0
        ph = buf[0]
        pa = buf[1]
        pb = buf[2]
        if r0 > 0:
            _flux_row(x[n, r0 - 1], x[n, r0], nu2, iso, False, ph, pa)
        else:
            for j in range(w):
                pa[j] = 0
        for i in range(r0, r1):
            if (i - r0) % 2 == 0:
                pvp, pv = pa, pb
            else:
                pvp, pv = pb, pa
            last = i == h - 1
            xr = x[n, i]
            _flux_row(xr, x[n, i + 1] if not last else xr, nu2, iso, last, ph, pv)
            yr = y[n, i]
            orow = out[n, i]
            g = data_w * (xr[0] - yr[0]) + lam * (pvp[0] - pv[0] - ph[0])
            orow[0] = g
            sqc[0] += np.float64(g) * np.float64(g)
            for j in range(1, w):
                g = data_w * (xr[j] - yr[j]) + lam * (ph[j - 1] - ph[j] + pvp[j] - pv[j])
                orow[j] = g
                sqc[j] += np.float64(g) * np.float64(g)
        acc[c] = sqc.sum()


@njit(cache=True, nogil=True, error_model="numpy")
def _hvp_chunks(x, v, data_w, lam, nu2, iso, out, nb, c0, c1):
    h, w = x.shape[1], x.shape[2]
    buf = np.empty((3, w), x.dtype)
    for c in range(c0, c1):
        n, r0, r1 = _chunk_rows(c, nb, h)
        ph = buf[0]
        pa = buf[1]
        pb = buf[2]
        if r0 > 0:
            _hflux_row(x[n, r0 - 1], x[n, r0], v[n, r0 - 1], v[n, r0], nu2, iso, False, ph, pa)
        else:
            for j in range(w):
                pa[j] = 0
        for i in range(r0, r1):
            if (i - r0) % 2 == 0:
                pvp, pv = pa, pb
            else:
                pvp, pv = pb, pa
            last = i == h - 1
            xr = x[n, i]
            vr = v[n, i]
            if last:
                _hflux_row(xr, xr, vr, vr, nu2, iso, True, ph, pv)
            else:
                _hflux_row(xr, x[n, i + 1], vr, v[n, i + 1], nu2, iso, False, ph, pv)
            orow = out[n, i]
            orow[0] = data_w * vr[0] + lam * (pvp[0] - pv[0] - ph[0])
            for j in range(1, w):
                orow[j] = data_w * vr[j] + lam * (ph[j - 1] - ph[j] + pvp[j] - pv[j])


@njit(cache=True, nogil=True, error_model="numpy")
def _value_chunks(x, nu2, iso, acc, nb, c0, c1):
    h, w = x.shape[1], x.shape[2]
    s = np.empty(w)
    for c in range(c0, c1):
        n, r0, r1 = _chunk_rows(c, nb, h)
        s[:] = 0.0
        m = w - 1
        for i in range(r0, r1):
            xc = x[n, i]
            if i == h - 1:
                # vertical differences do not exist on the last row
                for j in range(m):
                    a = xc[j + 1] - xc[j]
                    s[j] += np.float64(np.sqrt(a * a + nu2))
                if iso:
                    s[m] += np.float64(np.sqrt(nu2))
            else:
                xn = x[n, i + 1]
                if iso:
                    for j in range(m):
                        a = xc[j + 1] - xc[j]
                        b = xn[j] - xc[j]
                        s[j] += np.float64(np.sqrt(a * a + b * b + nu2))
                else:
                    for j in range(m):
                        a = xc[j + 1] - xc[j]
                        b = xn[j] - xc[j]
                        s[j] += np.float64(np.sqrt(a * a + nu2)) + np.float64(np.sqrt(b * b + nu2))
                b = xn[m] - xc[m]
                s[m] += np.float64(np.sqrt(b * b + nu2))
        acc[c] = s.sum()


# ---------------------------------------------------------------------- public API
def fista_step(x, xprev, y, beta, tau, lam, nu2, iso, out):
    """z = x + beta (x - xprev); g = (z - y) + lam D^T phi'(D z); out = z - tau g.

    Returns ``sum(g**2)`` (accumulated in float64) as a Python float.  ``out``
    must not alias ``x``, ``xprev`` or ``y``.
    """
    t = x.dtype.type
    args = (x, xprev, y, t(beta), t(tau), t(lam), t(nu2), bool(iso), out)
    return float(_run(_fista_chunks, x, args).sum())


def grad(x, y, data_w, lam, nu2, iso, out):
    """out = data_w (x - y) + lam D^T phi'(D x); returns ``sum(out**2)`` as a Python float.

    ``out`` must not alias ``x`` or ``y``.
    """
    t = x.dtype.type
    return float(_run(_grad_chunks, x, (x, y, t(data_w), t(lam), t(nu2), bool(iso), out)).sum())


def hvp(x, v, data_w, lam, nu2, iso, out):
    """out = data_w v + lam D^T [d^2 phi(D x)] D v; returns ``out``.

    ``out`` must not alias ``x`` or ``v``.
    """
    t = x.dtype.type
    _run(_hvp_chunks, x, (x, v, t(data_w), t(lam), t(nu2), bool(iso), out), partial_sums=False)
    return out


def value(x, lam, nu2, iso):
    """lam * sum of the smoothed TV terms that exist (see the module docstring), a Python float."""
    return float(lam) * float(_run(_value_chunks, x, (x, x.dtype.type(nu2), bool(iso))).sum())
