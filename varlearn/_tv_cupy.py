"""Fused CUDA kernels for smoothed total variation on CuPy arrays.

The same four functions as :mod:`varlearn._tv_numba` (same signatures, same
semantics), each one kernel launch: every thread handles pixels of the flat
``(N, H, W)`` stack (grid-stride loop) and computes, from ``x`` (and
``xprev``), the values it needs at the neighbouring pixels, the fluxes
``phi'(D z)`` at the pixel, its left and its upper neighbour, and the
divergence.  Nothing but the output is written to global memory.

Sums of squares (``fista_step``, ``grad``) and the energy (``value``) are
accumulated in float64: each block reduces its threads' partial sums and
writes one number; the last block to finish adds the block sums up in a fixed
order (deterministic, no floating-point atomics) and writes the total, which
is copied to the host (one synchronisation per call).

Arithmetic is in the arrays' dtype ``T`` (float32 stays float32).  The fluxes
use ``rsqrt`` (at most 1 ulp in double, 2 ulp in single precision) instead of a
square root and a division; the results agree with the NumPy reference up to
rounding.  Forward differences are zero across the last column / row (see
:class:`varlearn.operators.FiniteDifference`).

CuPy is imported lazily and the kernels are compiled on first use, so importing
this module on a machine without a GPU does not fail.  ``out`` must not alias
the inputs.  Calls on different CUDA streams at the same time are supported
(the reduction workspace is kept per device and stream).
"""
from __future__ import annotations

import numpy as np

__all__ = ["fista_step", "grad", "hvp", "value"]

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

/* The point z: x itself, or the FISTA extrapolation x + beta (x - xprev). */
struct VlPlain {
    const T* x;
    __device__ __forceinline__ T operator()(I k) const { return x[k]; }
};
struct VlExtrap {
    const T* x;
    const T* xp;
    T beta;
    __device__ __forceinline__ T operator()(I k) const { const T v = x[k]; return v + beta * (v - xp[k]); }
};

/* (D^T phi'(D z))(p) for pixel p = (n, i, j); zc = z(p) on return. */
template <class Z>
__device__ __forceinline__ T vl_div_flux(const Z& z, I p, I i, I j, I H, I W, T nu2, T& zc) {
    const T zero = 0;
    const bool has_r = j + 1 < W;
    const bool has_d = i + 1 < H;
    zc = z(p);
    /* fluxes at the pixel itself */
    const T a = has_r ? z(p + 1) - zc : zero;
    const T b = has_d ? z(p + W) - zc : zero;
#if VL_ISO
    const T q = vl_rsqrt(a * a + b * b + nu2);
    T d = -(a * q) - b * q;
#else
    T d = -(a * vl_rsqrt(a * a + nu2)) - b * vl_rsqrt(b * b + nu2);
#endif
    /* horizontal flux of the left neighbour (i, j-1) */
    if (j > 0) {
        const T zl = z(p - 1);
        const T al = zc - zl;
#if VL_ISO
        const T bl = has_d ? z(p + W - 1) - zl : zero;
        d += al * vl_rsqrt(al * al + bl * bl + nu2);
#else
        d += al * vl_rsqrt(al * al + nu2);
#endif
    }
    /* vertical flux of the upper neighbour (i-1, j) */
    if (i > 0) {
        const T zu = z(p - W);
        const T bu = zc - zu;
#if VL_ISO
        const T au = has_r ? z(p - W + 1) - zu : zero;
        d += bu * vl_rsqrt(au * au + bu * bu + nu2);
#else
        d += bu * vl_rsqrt(bu * bu + nu2);
#endif
    }
    return d;
}

/* [d^2 phi(u)] w for u = (a, b), w = (c, e): the two components. */
__device__ __forceinline__ void vl_hess_flux(T a, T b, T c, T e, T nu2, T& hc, T& he) {
#if VL_ISO
    const T s = a * a + b * b + nu2;
    const T q = vl_rsqrt(s);
    const T k = (a * c + b * e) * (q / s);
    hc = c * q - a * k;
    he = e * q - b * k;
#else
    const T sa = a * a + nu2;
    const T sb = b * b + nu2;
    const T qa = vl_rsqrt(sa);
    const T qb = vl_rsqrt(sb);
    hc = nu2 * c * (qa / sa);
    he = nu2 * e * (qb / sb);
#endif
}

extern "C" __global__ void tv_fista(const T* __restrict__ x, const T* __restrict__ xprev,
                                    const T* __restrict__ y, T beta, T tau, T lam, T nu2,
                                    I H, I W, I total, T* __restrict__ out,
                                    double* partials, unsigned int* counter, double* result) {
    VlExtrap z;
    z.x = x; z.xp = xprev; z.beta = beta;
    double acc = 0.0;
    const I stride = (I)blockDim.x * (I)gridDim.x;
    for (I p = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; p < total; p += stride) {
        const I r = p / W;
        const I j = p - r * W;
        const I i = r % H;
        T zc;
        const T d = vl_div_flux(z, p, i, j, H, W, nu2, zc);
        const T g = (zc - y[p]) + lam * d;
        out[p] = zc - tau * g;
        acc += (double)g * (double)g;
    }
    vl_grid_sum(acc, partials, counter, result);
}

extern "C" __global__ void tv_grad(const T* __restrict__ x, const T* __restrict__ y, T data_w,
                                   T lam, T nu2, I H, I W, I total, T* __restrict__ out,
                                   double* partials, unsigned int* counter, double* result) {
    VlPlain z;
    z.x = x;
    double acc = 0.0;
    const I stride = (I)blockDim.x * (I)gridDim.x;
    for (I p = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; p < total; p += stride) {
        const I r = p / W;
        const I j = p - r * W;
        const I i = r % H;
        T zc;
        const T d = vl_div_flux(z, p, i, j, H, W, nu2, zc);
        const T g = data_w * (zc - y[p]) + lam * d;
        out[p] = g;
        acc += (double)g * (double)g;
    }
    vl_grid_sum(acc, partials, counter, result);
}

extern "C" __global__ void tv_hvp(const T* __restrict__ x, const T* __restrict__ v, T data_w,
                                  T lam, T nu2, I H, I W, I total, T* __restrict__ out) {
    const T zero = 0;
    const I stride = (I)blockDim.x * (I)gridDim.x;
    for (I p = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; p < total; p += stride) {
        const I r = p / W;
        const I j = p - r * W;
        const I i = r % H;
        const bool has_r = j + 1 < W;
        const bool has_d = i + 1 < H;
        const T xc = x[p];
        const T vc = v[p];
        T hc, he;
        vl_hess_flux(has_r ? x[p + 1] - xc : zero, has_d ? x[p + W] - xc : zero,
                     has_r ? v[p + 1] - vc : zero, has_d ? v[p + W] - vc : zero, nu2, hc, he);
        T d = -hc - he;
        if (j > 0) {
            const T xl = x[p - 1];
            const T vl = v[p - 1];
            vl_hess_flux(xc - xl, has_d ? x[p + W - 1] - xl : zero,
                         vc - vl, has_d ? v[p + W - 1] - vl : zero, nu2, hc, he);
            d += hc;
        }
        if (i > 0) {
            const T xu = x[p - W];
            const T vu = v[p - W];
            vl_hess_flux(has_r ? x[p - W + 1] - xu : zero, xc - xu,
                         has_r ? v[p - W + 1] - vu : zero, vc - vu, nu2, hc, he);
            d += he;
        }
        out[p] = data_w * vc + lam * d;
    }
}

extern "C" __global__ void tv_value(const T* __restrict__ x, T nu2, I H, I W, I total,
                                    double* partials, unsigned int* counter, double* result) {
    double acc = 0.0;
    const I stride = (I)blockDim.x * (I)gridDim.x;
    for (I p = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; p < total; p += stride) {
        const I r = p / W;
        const I j = p - r * W;
        const I i = r % H;
        const bool has_r = j + 1 < W;
        const bool has_d = i + 1 < H;
        const T xc = x[p];
        const T a = has_r ? x[p + 1] - xc : (T)0;
        const T b = has_d ? x[p + W] - xc : (T)0;
#if VL_ISO
        acc += (double)vl_sqrt(a * a + b * b + nu2);
#else
        if (has_r) acc += (double)vl_sqrt(a * a + nu2);
        if (has_d) acc += (double)vl_sqrt(b * b + nu2);
#endif
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


def _module(dtype, iso, wide):
    """The compiled module for (dtype, iso, 64-bit indices), compiled once and cached."""
    key = (np.dtype(dtype).char, bool(iso), bool(wide))
    mod = _modules.get(key)
    if mod is None:
        ctype = "double" if np.dtype(dtype) == np.float64 else "float"
        itype = "unsigned long long" if wide else "unsigned int"
        prologue = f"typedef {ctype} T;\ntypedef {itype} I;\n#define VL_ISO {1 if iso else 0}\n"
        mod = _cupy().RawModule(code=prologue + _SOURCE)
        _modules[key] = mod
    return mod


def _kernel(dtype, iso, wide, name):
    """The kernel ``name`` of :func:`_module`, looked up once and cached."""
    key = (np.dtype(dtype).char, bool(iso), bool(wide), name)
    kern = _kernels.get(key)
    if kern is None:
        kern = _module(dtype, iso, wide).get_function(name)
        _kernels[key] = kern
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


def _check(x, *others, names=()):
    """Validate the stack ``x`` and the arrays that must match it; returns (cupy, dtype type)."""
    cp = _cupy()
    if not isinstance(x, cp.ndarray) or x.ndim != 3:
        raise TypeError(f"x must be a CuPy array of shape (N, H, W), got {type(x).__name__}")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"x must be float32 or float64, got {x.dtype}")
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous")
    for a, name in zip(others, names):
        if not isinstance(a, cp.ndarray) or a.shape != x.shape or a.dtype != x.dtype:
            raise ValueError(f"{name} must be a CuPy array with the shape and dtype of x "
                             f"{tuple(x.shape)} {x.dtype}, got {getattr(a, 'shape', None)} "
                             f"{getattr(a, 'dtype', None)}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
    return cp, x.dtype.type


def _match(cp, a, x):
    """``a`` as a C-contiguous array of x's dtype (an on-device copy only if needed).

    Host arrays are left alone (and rejected by :func:`_check`): data never moves
    between devices here.
    """
    if isinstance(a, cp.ndarray) and (a.dtype != x.dtype or not a.flags.c_contiguous):
        a = cp.ascontiguousarray(a, dtype=x.dtype)
    return a


def _launch_shape(total):
    """Number of blocks, and whether indices need 64 bits (``p + W`` and the grid stride must fit)."""
    blocks = min(-(-total // _THREADS), _MAX_BLOCKS)
    return max(blocks, 1), total + 2 * _THREADS * _MAX_BLOCKS >= 2 ** 32


def _index(wide, v):
    return np.uint64(v) if wide else np.uint32(v)


def fista_step(x, xprev, y, beta, tau, lam, nu2, iso, out):
    """z = x + beta (x - xprev); g = (z - y) + lam D^T phi'(D z); out = z - tau g.

    Returns ``sum(g**2)`` (accumulated in float64) as a Python float (one host
    synchronisation).  ``out`` must not alias ``x``, ``xprev`` or ``y``.
    """
    cp = _cupy()
    xprev = _match(cp, xprev, x)
    y = _match(cp, y, x)
    cp, t = _check(x, xprev, y, out, names=("xprev", "y", "out"))
    n_img, h, w = x.shape
    total = n_img * h * w
    if total == 0:
        return 0.0
    blocks, wide = _launch_shape(total)
    ws = _workspace(cp)
    kern = _kernel(x.dtype, iso, wide, "tv_fista")
    kern((blocks,), (_THREADS,),
         (x, xprev, y, t(beta), t(tau), t(lam), t(nu2), _index(wide, h), _index(wide, w),
          _index(wide, total), out, ws.partials, ws.counter, ws.result))
    return float(ws.result.get()[0])


def grad(x, y, data_w, lam, nu2, iso, out):
    """out = data_w (x - y) + lam D^T phi'(D x); returns ``sum(out**2)`` as a Python float.

    ``out`` must not alias ``x`` or ``y``.
    """
    cp = _cupy()
    y = _match(cp, y, x)
    cp, t = _check(x, y, out, names=("y", "out"))
    n_img, h, w = x.shape
    total = n_img * h * w
    if total == 0:
        return 0.0
    blocks, wide = _launch_shape(total)
    ws = _workspace(cp)
    kern = _kernel(x.dtype, iso, wide, "tv_grad")
    kern((blocks,), (_THREADS,),
         (x, y, t(data_w), t(lam), t(nu2), _index(wide, h), _index(wide, w), _index(wide, total),
          out, ws.partials, ws.counter, ws.result))
    return float(ws.result.get()[0])


def hvp(x, v, data_w, lam, nu2, iso, out):
    """out = data_w v + lam D^T [d^2 phi(D x)] D v; returns ``out`` (no synchronisation).

    ``out`` must not alias ``x`` or ``v``.
    """
    cp = _cupy()
    v = _match(cp, v, x)
    cp, t = _check(x, v, out, names=("v", "out"))
    n_img, h, w = x.shape
    total = n_img * h * w
    if total == 0:
        return out
    blocks, wide = _launch_shape(total)
    kern = _kernel(x.dtype, iso, wide, "tv_hvp")
    kern((blocks,), (_THREADS,),
         (x, v, t(data_w), t(lam), t(nu2), _index(wide, h), _index(wide, w), _index(wide, total), out))
    return out


def value(x, lam, nu2, iso):
    """lam * sum of the smoothed TV terms that exist, as a Python float (one synchronisation)."""
    cp, t = _check(x)
    n_img, h, w = x.shape
    total = n_img * h * w
    if total == 0:
        return 0.0
    blocks, wide = _launch_shape(total)
    ws = _workspace(cp)
    kern = _kernel(x.dtype, iso, wide, "tv_value")
    kern((blocks,), (_THREADS,),
         (x, t(nu2), _index(wide, h), _index(wide, w), _index(wide, total),
          ws.partials, ws.counter, ws.result))
    return float(lam) * float(ws.result.get()[0])
