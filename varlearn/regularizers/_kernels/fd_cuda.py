r"""Fused CUDA kernels: forward differences with the smoothed-ℓ1 potentials (CuPy arrays).

The same kernel sets as :mod:`varlearn.regularizers._kernels.fd_numba`
(:data:`ANISOTROPIC`: ``(FiniteDifference, SmoothedL1)``, :data:`ISOTROPIC`:
``(FiniteDifference, GroupSmoothedL1)``; the interface of
:mod:`varlearn.regularizers._kernels`), each call one kernel launch.  Every
thread handles pixels of the flat ``(N, H, W)`` stack (grid-stride loop) and
computes, from ``x`` (and ``xprev``), the values it needs at the neighbouring
pixels, the fluxes at the pixel, its left and its upper neighbour, and the
divergence.  Nothing but the output is written to global memory.

One CUDA source holds the three kernels; the potentials' formulas are written
once in it (``vl_d1_h``, ``vl_d2``, ``vl_phi``), and ``VL_ISO`` selects the
scalar (0) or the group (1) potential when the source is compiled.  The fused
gradient evaluates ``z = x + beta (x - xprev)`` on the fly (``beta = 0`` and
``xprev = x`` give ``x`` itself) and stores ``keep z - step g``: ``keep = 0``,
``step = -1`` store the gradient ``g`` exactly.

Sums of squares (the fused gradient) and the energy are accumulated in
float64: each block reduces its threads' partial sums and writes one number;
the last block to finish adds the block sums up in a fixed order
(deterministic, no floating-point atomics) and writes the total, which is
copied to the host (one synchronisation per call).

Arithmetic is in the arrays' dtype ``T`` (float32 stays float32).  The fluxes
use ``rsqrt`` (at most 1 ulp in double, 2 ulp in single precision) instead of a
square root and a division; the results agree with the composition up to
rounding.  Forward differences are zero across the last column / row (see
:class:`varlearn.operators.FiniteDifference`).

CuPy is imported lazily and the kernels are compiled on first use (per dtype,
potential and index width), so importing this module on a machine without a
GPU does not fail.  Calls on different CUDA streams at the same time are
supported (the reduction workspace is kept per device and stream).  Inputs of
another dtype or layout are converted on the device; host arrays are refused
(data never moves between devices here).

References
----------
.. [1] A. Chambolle and T. Pock, "An introduction to continuous optimization for
   imaging", Acta Numerica 25 (2016), 161-319.
"""
from __future__ import annotations

import numpy as np

from . import KernelSet

__all__ = ["ANISOTROPIC", "ISOTROPIC"]

_THREADS = 256          # threads per block (a multiple of 32, at most 1024)
_MAX_BLOCKS = 4096      # grid-stride loop beyond this many blocks

_SOURCE = r"""
__device__ __forceinline__ float vl_rsqrt(float v) { return rsqrtf(v); }
__device__ __forceinline__ double vl_rsqrt(double v) { return rsqrt(v); }
__device__ __forceinline__ float vl_sqrt(float v) { return sqrtf(v); }
__device__ __forceinline__ double vl_sqrt(double v) { return sqrt(v); }

/* Sum of v over the block; the result is valid in thread 0.  Safe to call
   several times in a row (the shared scratch is protected by a barrier). */
__device__ __forceinline__ double vl_block_sum(double v) {
    __shared__ double warp_sums[32];
    const unsigned lane = threadIdx.x & 31u;
    const unsigned wid = threadIdx.x >> 5;
    __syncthreads();
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (lane == 0) warp_sums[wid] = v;
    __syncthreads();
    const unsigned n_warps = (blockDim.x + 31u) >> 5;
    if (wid == 0) {
        v = (lane < n_warps) ? warp_sums[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    }
    return v;
}

/* Block sums into partials[blockIdx.x]; the last block to finish adds them in a
   fixed order, writes result[0] and resets the counter for the next launch. */
__device__ __forceinline__ void vl_grid_sum(double v, double* partials, unsigned int* counter,
                                            double* result) {
    __shared__ bool is_last;
    const double s = vl_block_sum(v);
    if (threadIdx.x == 0) {
        partials[blockIdx.x] = s;
        __threadfence();
        const unsigned int done = atomicAdd(counter, 1u);
        is_last = (done == gridDim.x - 1u);
    }
    __syncthreads();
    if (is_last) {
        __threadfence();
        const volatile double* vp = partials;
        double acc = 0.0;
        for (unsigned int k = threadIdx.x; k < gridDim.x; k += blockDim.x) acc += vp[k];
        acc = vl_block_sum(acc);
        if (threadIdx.x == 0) {
            result[0] = acc;
            *counter = 0u;
        }
    }
}

/* ------------------------------------------------------------ the potentials, once
   u = (a, b): the horizontal and vertical differences at a pixel (zero where they do not exist).
   VL_ISO 0: phi(t) = sqrt(t^2 + nu^2) on each difference (SmoothedL1);
   VL_ISO 1: phi(u) = sqrt(a^2 + b^2 + nu^2) on the pair (GroupSmoothedL1). */

/* The horizontal component of phi'(u); the vertical one is vl_d1_h(b, a, nu2). */
__device__ __forceinline__ T vl_d1_h(T a, T b, T nu2) {
#if VL_ISO
    return a * vl_rsqrt(a * a + b * b + nu2);
#else
    (void)b;
    return a * vl_rsqrt(a * a + nu2);
#endif
}

/* [phi''(u)] w for w = (c, e): the two components. */
__device__ __forceinline__ void vl_d2(T a, T b, T c, T e, T nu2, T& hc, T& he) {
#if VL_ISO
    const T s = a * a + b * b + nu2;
    const T q = vl_rsqrt(s);
    const T k = (a * c + b * e) * (q / s);
    hc = c * q - a * k;
    he = e * q - b * k;
#else
    const T sa = a * a + nu2;
    const T sb = b * b + nu2;
    hc = nu2 * c * (vl_rsqrt(sa) / sa);
    he = nu2 * e * (vl_rsqrt(sb) / sb);
#endif
}

/* phi(u) over the terms that exist at the pixel (the group: every pixel). */
__device__ __forceinline__ double vl_phi(T a, T b, bool has_r, bool has_d, T nu2) {
#if VL_ISO
    (void)has_r; (void)has_d;
    return (double)vl_sqrt(a * a + b * b + nu2);
#else
    return (has_r ? (double)vl_sqrt(a * a + nu2) : 0.0) + (has_d ? (double)vl_sqrt(b * b + nu2) : 0.0);
#endif
}

/* ------------------------------------------------------------ kernels */
/* Pixel p of the (N, H, W) stack: its row i and column j, and whether the horizontal / vertical
   forward difference exists there (not in the last column / row). */
struct VlPixel {
    I i, j;
    bool has_r, has_d;
};
__device__ __forceinline__ VlPixel vl_pixel(I p, I H, I W) {
    VlPixel q;
    const I r = p / W;
    q.j = p - r * W;
    q.i = r % H;
    q.has_r = q.j + 1 < W;
    q.has_d = q.i + 1 < H;
    return q;
}

/* This thread's pixels (grid-stride loop over the `total` pixels). */
#define VL_PIXELS(p) \
    for (I p = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; p < total; p += (I)blockDim.x * (I)gridDim.x)

/* The point z = x + beta (x - xprev) (beta = 0, xprev = x: z = x). */
struct VlPoint {
    const T* x;
    const T* xp;
    T beta;
    __device__ __forceinline__ T operator()(I k) const { const T v = x[k]; return v + beta * (v - xp[k]); }
};

/* out = keep z - step g, g = data_w (z - y) + lam D^T phi'(D z); result = sum g^2 (float64). */
extern "C" __global__ void fd_fused_grad(const T* __restrict__ x, const T* __restrict__ xprev,
                                         const T* __restrict__ y, T data_w, T beta, T keep, T step,
                                         T lam, T nu2, I H, I W, I total, T* __restrict__ out,
                                         double* partials, unsigned int* counter, double* result) {
    VlPoint z;
    z.x = x; z.xp = xprev; z.beta = beta;
    const T zero = 0;
    double acc = 0.0;
    VL_PIXELS(p) {
        const VlPixel q = vl_pixel(p, H, W);
        const T zc = z(p);
        const T a = q.has_r ? z(p + 1) - zc : zero;
        const T b = q.has_d ? z(p + W) - zc : zero;
        T d = -vl_d1_h(a, b, nu2) - vl_d1_h(b, a, nu2);
        if (q.j > 0) {  /* horizontal flux of the left neighbour (i, j-1) */
            const T zl = z(p - 1);
            d += vl_d1_h(zc - zl, q.has_d ? z(p + W - 1) - zl : zero, nu2);
        }
        if (q.i > 0) {  /* vertical flux of the upper neighbour (i-1, j) */
            const T zu = z(p - W);
            d += vl_d1_h(zc - zu, q.has_r ? z(p - W + 1) - zu : zero, nu2);
        }
        const T g = data_w * (zc - y[p]) + lam * d;
        out[p] = keep * zc - step * g;
        acc += (double)g * (double)g;
    }
    vl_grid_sum(acc, partials, counter, result);
}

/* out = data_w v + lam D^T [phi''(D x)] D v. */
extern "C" __global__ void fd_fused_hvp(const T* __restrict__ x, const T* __restrict__ v, T data_w,
                                        T lam, T nu2, I H, I W, I total, T* __restrict__ out) {
    const T zero = 0;
    VL_PIXELS(p) {
        const VlPixel q = vl_pixel(p, H, W);
        const T xc = x[p];
        const T vc = v[p];
        T hc, he;
        vl_d2(q.has_r ? x[p + 1] - xc : zero, q.has_d ? x[p + W] - xc : zero,
              q.has_r ? v[p + 1] - vc : zero, q.has_d ? v[p + W] - vc : zero, nu2, hc, he);
        T d = -hc - he;
        if (q.j > 0) {
            const T xl = x[p - 1];
            const T vl = v[p - 1];
            vl_d2(xc - xl, q.has_d ? x[p + W - 1] - xl : zero,
                  vc - vl, q.has_d ? v[p + W - 1] - vl : zero, nu2, hc, he);
            d += hc;
        }
        if (q.i > 0) {
            const T xu = x[p - W];
            const T vu = v[p - W];
            vl_d2(q.has_r ? x[p - W + 1] - xu : zero, xc - xu,
                  q.has_r ? v[p - W + 1] - vu : zero, vc - vu, nu2, hc, he);
            d += he;
        }
        out[p] = data_w * vc + lam * d;
    }
}

/* result = sum of phi(D x) over the terms that exist (float64). */
extern "C" __global__ void fd_value(const T* __restrict__ x, T nu2, I H, I W, I total,
                                    double* partials, unsigned int* counter, double* result) {
    const T zero = 0;
    double acc = 0.0;
    VL_PIXELS(p) {
        const VlPixel q = vl_pixel(p, H, W);
        const T xc = x[p];
        acc += vl_phi(q.has_r ? x[p + 1] - xc : zero, q.has_d ? x[p + W] - xc : zero, q.has_r, q.has_d, nu2);
    }
    vl_grid_sum(acc, partials, counter, result);
}
"""

_modules: dict = {}
_kernels: dict = {}
_workspaces: dict = {}


def _cupy():
    import cupy  # noqa: PLC0415

    return cupy


def _kernel(dtype, iso, wide, name):
    """The kernel ``name`` for (dtype, potential, 64-bit indices), compiled once and cached."""
    key = (np.dtype(dtype).char, bool(iso), bool(wide))
    mod = _modules.get(key)
    if mod is None:
        ctype = "double" if np.dtype(dtype) == np.float64 else "float"
        itype = "unsigned long long" if wide else "unsigned int"
        prologue = f"typedef {ctype} T;\ntypedef {itype} I;\n#define VL_ISO {1 if iso else 0}\n"
        mod = _cupy().RawModule(code=prologue + _SOURCE)
        _modules[key] = mod
    kern = _kernels.get(key + (name,))
    if kern is None:
        kern = mod.get_function(name)
        _kernels[key + (name,)] = kern
    return kern


class _Workspace:
    """Per device and stream: block partial sums, the completion counter and the result."""

    def __init__(self, cp):
        self.partials = cp.empty(_MAX_BLOCKS, dtype=cp.float64)
        self.counter = cp.zeros(1, dtype=cp.uint32)
        self.result = cp.zeros(1, dtype=cp.float64)


def _workspace(cp):
    key = (cp.cuda.Device().id, cp.cuda.get_current_stream().ptr)
    ws = _workspaces.get(key)
    if ws is None:
        ws = _Workspace(cp)
        _workspaces[key] = ws
    return ws


def _check_x(x3):
    cp = _cupy()
    if not isinstance(x3, cp.ndarray) or x3.ndim != 3:
        raise TypeError(f"x3 must be a CuPy array of shape (N, H, W), got {type(x3).__name__} "
                        f"of shape {getattr(x3, 'shape', None)}")
    if x3.dtype not in (np.float32, np.float64):
        raise TypeError(f"x3 must be float32 or float64, got {x3.dtype}")
    if not x3.flags.c_contiguous:
        raise ValueError("x3 must be C-contiguous")
    return cp


def _match(cp, x3, name, a, convert=True):
    """``a`` as a C-contiguous CuPy array of x3's shape and dtype (converted on the device if needed)."""
    if not isinstance(a, cp.ndarray) or a.shape != x3.shape:
        raise ValueError(f"{name} must be a CuPy array of the shape of x3 {tuple(x3.shape)}, got "
                         f"{type(a).__name__} of shape {getattr(a, 'shape', None)}")
    if a.dtype != x3.dtype or not a.flags.c_contiguous:
        if not convert:
            raise ValueError(f"{name} must be C-contiguous with the dtype of x3 ({x3.dtype}), got {a.dtype}")
        a = cp.ascontiguousarray(a, dtype=x3.dtype)
    return a


def _launch(x3, iso, name, head, out3, reduce):
    """Launch kernel ``name`` with arguments ``head``, the sizes, ``out3`` (unless None) and the workspace.

    Python floats in ``head`` are passed in x3's dtype.  Returns the float64 sum when ``reduce``
    (one host synchronisation), else ``None``.
    """
    cp = _cupy()
    n_img, h, w = x3.shape
    total = n_img * h * w
    if total == 0:
        return 0.0 if reduce else None
    blocks = max(1, min(-(-total // _THREADS), _MAX_BLOCKS))
    wide = total + 2 * _THREADS * _MAX_BLOCKS >= 2 ** 32  # p + W and the grid stride must fit
    index = np.uint64 if wide else np.uint32
    t = x3.dtype.type
    args = [t(a) if isinstance(a, float) else a for a in head] + [index(h), index(w), index(total)]
    if out3 is not None:
        args.append(out3)
    if reduce:
        ws = _workspace(cp)
        args += [ws.partials, ws.counter, ws.result]
    _kernel(x3.dtype, iso, wide, name)((blocks,), (_THREADS,), tuple(args))
    return float(ws.result.get()[0]) if reduce else None


def _kernel_set(iso):
    def value(x3, lam, nu):
        _check_x(x3)
        return float(lam) * _launch(x3, iso, "fd_value", (x3, float(nu) ** 2), None, True)

    def fused_grad(x3, y3, data_w, lam, nu, xprev3, beta, step, out3):
        cp = _check_x(x3)
        if xprev3 is None or beta == 0:
            xprev3, beta = x3, 0.0  # z = x + 0 (x - x) = x
        if y3 is None or data_w == 0:
            y3 = x3
        xprev3 = _match(cp, x3, "xprev3", xprev3)
        y3 = _match(cp, x3, "y3", y3)
        out3 = _match(cp, x3, "out3", out3, convert=False)
        keep, step = (0.0, -1.0) if step is None else (1.0, float(step))  # out = 0 z + g = g exactly
        head = (x3, xprev3, y3, float(data_w), float(beta), keep, step, float(lam), float(nu) ** 2)
        return _launch(x3, iso, "fd_fused_grad", head, out3, True)

    def fused_hvp(x3, v3, data_w, lam, nu, out3):
        cp = _check_x(x3)
        v3 = _match(cp, x3, "v3", v3)
        out3 = _match(cp, x3, "out3", out3, convert=False)
        _launch(x3, iso, "fd_fused_hvp", (x3, v3, float(data_w), float(lam), float(nu) ** 2), out3, False)

    pot = "GroupSmoothedL1" if iso else "SmoothedL1"
    return KernelSet(f"FiniteDifference+{pot} (CUDA)", value, fused_grad, fused_hvp)


#: Anisotropic TV: (FiniteDifference, SmoothedL1).
ANISOTROPIC = _kernel_set(False)
#: Isotropic TV: (FiniteDifference, GroupSmoothedL1).
ISOTROPIC = _kernel_set(True)
