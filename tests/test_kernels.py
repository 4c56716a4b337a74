"""Every registered fused kernel against the composition it accelerates.

The reference is :class:`varlearn.regularizers.composite.Composite` of the same
(operator, potential) pair with the accelerators disabled (the array code built
from the parts).  One registry-driven test runs every registered kernel on every
backend (CuPy cases are marked ``gpu`` and skip cleanly without a usable device)
and dtype, over degenerate shapes too: one image, H or W = 1 or 2, heights that are
not multiples of the 32-row chunks, large stacks split over threads, non-contiguous
input.  Agreement: 1e-12 relative in float64, 1e-5 in float32.

The other tests check which path runs (a user's composition gets the kernel, a
subclass of the potential does not), that the numba results do not depend on the
number of threads or on the split into row blocks, the registry's API, and the
CUDA module's argument handling.
"""
import contextlib
import math
import subprocess
import sys

import numpy as np
import pytest

import varlearn as vl
from varlearn import _accel
from varlearn.backend import cupy_unusable_reason, cupy_usable, to_numpy
from varlearn.operators import FiniteDifference, Identity
from varlearn.potentials import GroupSmoothedL1, Quadratic, SmoothedL1
from varlearn.regularizers import _kernels
from varlearn.regularizers.composite import Composite

SHAPES = [
    (3, 17, 13),
    (2, 2, 2),
    (1, 2, 7),     # one image, H = 2
    (2, 7, 2),     # W = 2
    (1, 64, 40),   # one image in two blocks of rows
    (2, 70, 33),   # a height that is not a multiple of the 32-row blocks
    (4, 70, 64),   # above the serial threshold: the chunks run on the kernel threads
    (2, 1, 5),     # a single row: no vertical differences
    (2, 5, 1),     # a single column: no horizontal differences
    (1, 1, 1),
]
DTYPES = [np.float64, np.float32]
RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}
LAM, NU = 0.3, 0.05


def _registrations():
    params = []
    for op_t, pot_t, backend, _target in _kernels.registered_kernels():
        marks = [pytest.mark.gpu] if backend == "cupy" else []
        params.append(pytest.param((op_t, pot_t, backend), id=f"{op_t.__name__}-{pot_t.__name__}-{backend}",
                                   marks=marks))
    return params


@contextlib.contextmanager
def accelerated(flag):
    old = _accel.set_accelerated(flag)
    try:
        yield
    finally:
        _accel.set_accelerated(old)


def _namespace(backend):
    if backend == "cupy":
        if not cupy_usable():
            pytest.skip(f"CuPy backend not usable: {cupy_unusable_reason()}")
        import cupy

        return cupy
    pytest.importorskip("numba")
    return np


def rel_err(a, b):
    a = np.asarray(to_numpy(a), dtype=np.float64)
    b = np.asarray(to_numpy(b), dtype=np.float64)
    scale = max(float(np.max(np.abs(b), initial=0.0)), 1e-300)
    return float(np.max(np.abs(a - b), initial=0.0)) / scale


def close(a, b, tol):
    return abs(float(a) - float(b)) <= tol * max(abs(float(b)), 1e-300)


def data(rng, shape, dtype):
    return tuple(rng.rand(*shape).astype(dtype) for _ in range(4))  # x, y, v, x_prev


# ---------------------------------------------------------------------- the registry-driven test
# (x_prev, beta, step): plain gradient, extrapolated, a step, both
FUSED = [(False, 0.0, None), (True, 0.62, None), (False, 0.0, 0.11), (True, 0.62, 0.11), (True, 0.0, 0.11)]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("reg", _registrations())
def test_every_kernel_matches_the_composition(rng, reg, shape, dtype):
    op_t, pot_t, backend = reg
    xp = _namespace(backend)
    op, pot = op_t(), pot_t()
    comp = Composite(op, pot)
    tol = RTOL[np.dtype(dtype)]
    x, y, v, x_prev = data(rng, shape, dtype)
    xd, yd, vd, pd = (xp.asarray(a) for a in (x, y, v, x_prev))
    with accelerated(False):
        assert _kernels.find_kernel(op, pot, xd) is None
        r_ref = float(comp.value(x, LAM, NU))
        h_ref = comp.fused_hvp(x, LAM, NU, v, 0.7)
        refs = {}
        for i, (prev, beta, step) in enumerate(FUSED):
            for data_w in (0.0, 0.7):
                refs[i, data_w] = comp.fused_grad(x, LAM, NU, y if data_w else None, data_w,
                                                  x_prev=x_prev if prev else None, beta=beta, step=step)
        g_plain = comp.fused_grad(x + 0.62 * (x - x_prev), LAM, NU, y, 0.7)[0]  # the g behind a step
    with accelerated(True):
        k = _kernels.find_kernel(op, pot, xd)
        assert isinstance(k, _kernels.KernelSet) and k.supports(dtype)
        # the kernel set itself ...
        val = k.value(xd, LAM, NU)
        assert isinstance(val, float) and close(val, r_ref, tol)
        out = xp.full_like(xd, np.nan)
        assert k.fused_hvp(xd, vd, 0.7, LAM, NU, out) is None
        assert rel_err(out, h_ref) <= tol
        for (i, data_w), (o_ref, n_ref) in refs.items():
            prev, beta, step = FUSED[i]
            out = xp.full_like(xd, np.nan)
            s = k.fused_grad(xd, yd if data_w else None, data_w, LAM, NU, pd if prev else None, beta, step, out)
            assert isinstance(s, float)
            assert rel_err(out, o_ref) <= tol, (i, data_w)
            assert close(math.sqrt(s), n_ref, tol), (i, data_w)
        # ... and through the composite, which finds it (same numbers, same namespace and dtype)
        r = comp.value(xd, LAM, NU)
        assert close(r, r_ref, tol) and r.dtype == dtype
        h = comp.fused_hvp(xd, LAM, NU, vd, 0.7)
        assert rel_err(h, h_ref) <= tol and h.dtype == dtype and type(h) is type(xd)
        o, n = comp.fused_grad(xd, LAM, NU, yd, 0.7, x_prev=pd, beta=0.62, step=0.11)
        assert rel_err(o, refs[3, 0.7][0]) <= tol and close(n, refs[3, 0.7][1], tol)
    assert rel_err(refs[3, 0.7][0], x + 0.62 * (x - x_prev) - 0.11 * g_plain) <= tol  # the reference's own step
    for a, ad in ((x, xd), (y, yd), (v, vd), (x_prev, pd)):
        np.testing.assert_array_equal(to_numpy(ad), a)  # inputs untouched


@pytest.mark.parametrize("reg", _registrations())
def test_kernels_take_batched_and_non_contiguous_input(rng, reg):
    """2-D, 3-D, 4-D, strided and transposed input through the composite, against the reference."""
    op_t, pot_t, backend = reg
    xp = _namespace(backend)
    comp = Composite(op_t(), pot_t())
    base = rng.rand(2, 3, 9, 11)
    base_d = xp.asarray(base)
    views = [lambda b: b[0, 0], lambda b: b[0], lambda b: b, lambda b: b[:, :, :, ::2],
             lambda b: b[0].transpose(0, 2, 1)]
    for view in views:
        x, xd = view(base), view(base_d)  # strided views: the composite makes the stack contiguous
        v = rng.randn(*x.shape)
        with accelerated(False):
            g_ref, n_ref = comp.fused_grad(x, LAM, NU)
            h_ref, r_ref = comp.fused_hvp(x, LAM, NU, v), float(comp.value(x, LAM, NU))
        with accelerated(True):
            assert _kernels.find_kernel(comp.operator, comp.potential, xd) is not None
            g, n = comp.fused_grad(xd, LAM, NU)
            h, r = comp.fused_hvp(xd, LAM, NU, xp.asarray(v)), float(comp.value(xd, LAM, NU))
        assert g.shape == h.shape == x.shape
        assert rel_err(g, g_ref) <= 1e-12 and close(n, n_ref, 1e-12)
        assert rel_err(h, h_ref) <= 1e-12
        assert close(r, r_ref, 1e-12)


# ---------------------------------------------------------------------- which path runs
@pytest.fixture
def counted(monkeypatch):
    """Count the calls of each numba kernel set's functions (``counts[(set name, function)]``)."""
    fd_numba = pytest.importorskip("varlearn.regularizers._kernels.fd_numba")
    counts = {}
    for kset in (fd_numba.ANISOTROPIC, fd_numba.ISOTROPIC):
        for name in ("value", "fused_grad", "fused_hvp"):
            inner = getattr(kset, name)

            def wrapper(*args, _inner=inner, _key=(kset.name, name)):
                counts[_key] = counts.get(_key, 0) + 1
                return _inner(*args)

            monkeypatch.setattr(kset, name, wrapper)
    return fd_numba, counts


def _run_all(reg, x, y, v, x_prev):
    theta = reg.init_params()
    reg.value(x, theta)
    reg.grad(x, theta)
    reg.hvp(x, theta, v)
    reg.fused_grad(x, theta, y, 1.0, x_prev=x_prev, beta=0.5, step=0.1)
    reg.fused_hvp(x, theta, v, 1.0)


def test_a_users_composition_runs_the_kernel(rng, counted):
    fd_numba, counts = counted
    x, y, v, x_prev = data(rng, (2, 12, 10), np.float64)
    user = vl.PotentialRegularizer(FiniteDifference(), SmoothedL1())
    with accelerated(True):
        _run_all(user, x, y, v, x_prev)
    name = fd_numba.ANISOTROPIC.name
    assert counts == {(name, "value"): 1, (name, "fused_grad"): 2, (name, "fused_hvp"): 2}
    # the built-in models run the same kernel sets
    counts.clear()
    with accelerated(True):
        _run_all(vl.TotalVariation(isotropic=False), x, y, v, x_prev)
        _run_all(vl.TotalVariation(), x, y, v, x_prev)
    assert sum(c for (n, _), c in counts.items() if n == name) == 5
    assert sum(c for (n, _), c in counts.items() if n == fd_numba.ISOTROPIC.name) == 5
    # and none with the accelerators off
    counts.clear()
    with accelerated(False):
        _run_all(user, x, y, v, x_prev)
    assert counts == {}


def test_a_subclass_of_the_potential_does_not_run_the_kernel(rng, counted):
    fd_numba, counts = counted

    class MySmoothedL1(SmoothedL1):
        """Could change the mathematics: no kernel is matched for it."""

    x, y, v, x_prev = data(rng, (2, 12, 10), np.float64)
    mine = vl.PotentialRegularizer(FiniteDifference(), MySmoothedL1())
    with accelerated(True):
        assert _kernels.find_kernel(FiniteDifference(), MySmoothedL1(), x) is None
        _run_all(mine, x, y, v, x_prev)
        theta = mine.init_params()
        g_sub = mine.grad(x, theta)
    assert counts == {}  # no kernel call at all
    with accelerated(True):
        g_ker = vl.PotentialRegularizer(FiniteDifference(), SmoothedL1()).grad(x, theta)
    assert counts == {(fd_numba.ANISOTROPIC.name, "fused_grad"): 1}
    assert rel_err(g_sub, g_ker) <= 1e-12  # the composition computes the same mathematics


# ---------------------------------------------------------------------- registry API
def test_find_kernel_returns_none_where_no_kernel_applies(rng):
    pytest.importorskip("numba")
    x = rng.rand(2, 6, 7)
    op, pot = FiniteDifference(), SmoothedL1()
    with accelerated(True):
        assert _kernels.find_kernel(op, pot, x) is not None
        assert _kernels.find_kernel(op, GroupSmoothedL1(), x) is not None
        assert _kernels.find_kernel(Identity(), pot, x) is None                 # no kernel for the pair
        assert _kernels.find_kernel(op, pot, x.astype(np.float16)) is None      # dtype not supported
        assert _kernels.find_kernel(op, pot, (x * 100).astype(np.int64)) is None
        assert _kernels.find_kernel(op, pot, x[0, 0]) is None                   # fewer than two axes
    with accelerated(False):
        assert _kernels.find_kernel(op, pot, x) is None


def test_register_kernel_validates_and_registers(rng, monkeypatch):
    pytest.importorskip("numba")
    monkeypatch.setattr(_kernels, "_registry", dict(_kernels._registry))
    monkeypatch.setattr(_kernels, "_found", {})  # the look-up cache: no entry of this test survives it
    with pytest.raises(TypeError, match="operator_type must be a class, got 3"):
        _kernels.register_kernel(3, Quadratic, "numpy", "m:K")
    with pytest.raises(ValueError, match=r"backend must be one of \('numpy', 'cupy'\), got 'tpu'"):
        _kernels.register_kernel(Identity, Quadratic, "tpu", "m:K")
    with pytest.raises(ValueError, match="module_name must be"):
        _kernels.register_kernel(Identity, Quadratic, "numpy", "")
    target = "varlearn.regularizers._kernels.fd_numba:ANISOTROPIC"
    _kernels.register_kernel(Identity, Quadratic, "numpy", target)
    assert (Identity, Quadratic, "numpy", target) in _kernels.registered_kernels()
    with accelerated(True):
        assert _kernels.find_kernel(Identity(), Quadratic(), rng.rand(3, 4)).name.startswith("FiniteDifference")
    _kernels.register_kernel(Identity, SmoothedL1, "numpy", "varlearn.regularizers._kernels:BACKENDS")
    with accelerated(True), pytest.raises(TypeError, match="is a tuple, not a KernelSet"):
        _kernels.find_kernel(Identity(), SmoothedL1(), rng.rand(3, 4))


def test_numba_kernels_reject_bad_arguments(rng):
    fd_numba = pytest.importorskip("varlearn.regularizers._kernels.fd_numba")
    k = fd_numba.ISOTROPIC
    x = rng.rand(2, 5, 6)
    with pytest.raises(ValueError, match=r"out3 must be a NumPy array with the shape and dtype of x3"):
        k.fused_grad(x, None, 0.0, LAM, NU, None, 0.0, None, np.empty((2, 5, 6), np.float32))
    with pytest.raises(ValueError, match="y3 must be C-contiguous"):
        k.fused_grad(x, np.asfortranarray(x), 1.0, LAM, NU, None, 0.0, None, np.empty_like(x))
    with pytest.raises(TypeError, match="x3 must be a NumPy array of shape"):
        k.value(x[0], LAM, NU)


# ---------------------------------------------------------------------- numba: threads and row blocks
def _pass(fd, x, v, y, x_prev, iso, hess, nb, n_threads):
    t = np.float64
    out = np.full_like(x, np.nan)
    acc = np.full(x.shape[0] * nb, np.nan)
    args = (x, x_prev, v, y, t(1.0), t(0.5), t(1.0), t(0.2), t(0.3), t(0.05 ** 2), iso, hess, out, acc, nb)
    _accel.run_chunks(fd._pass_chunks, acc.size, args, n_threads)
    vacc = np.full(x.shape[0] * nb, np.nan)
    _accel.run_chunks(fd._value_chunks, vacc.size, (x, t(0.05 ** 2), iso, vacc, nb), n_threads)
    return out, acc, vacc


@pytest.mark.parametrize("iso", [True, False], ids=["iso", "aniso"])
@pytest.mark.parametrize("n_blocks", [2, 3, 5, 40])
def test_row_blocks_do_not_change_results(rng, iso, n_blocks):
    """Splitting images into blocks of rows (any number of them) gives the same numbers."""
    fd = pytest.importorskip("varlearn.regularizers._kernels.fd_numba")
    x, y, v, x_prev = data(rng, (2, 40, 23), np.float64)
    for hess in (False, True):
        ref = _pass(fd, x, v, y, x_prev, iso, hess, 1, 1)
        got = _pass(fd, x, v, y, x_prev, iso, hess, n_blocks, 1)
        np.testing.assert_array_equal(got[0], ref[0])  # per-pixel work does not depend on the split
        for a, b in zip(got[1:], ref[1:]):
            assert a.shape == (2 * n_blocks,) and b.shape == (2,)
            assert float(a.sum()) == pytest.approx(float(b.sum()), rel=1e-13)


@pytest.mark.parametrize("n_threads", [2, 3, 7])
def test_results_do_not_depend_on_the_thread_count(rng, n_threads):
    """Every output and partial sum is bit-identical on 1 and on n threads."""
    fd = pytest.importorskip("varlearn.regularizers._kernels.fd_numba")
    x, y, v, x_prev = data(rng, (4, 70, 64), np.float64)  # above _SERIAL_BELOW: threads are used
    nb = fd._n_blocks(70)
    assert nb == 2
    for hess in (False, True):
        ref = _pass(fd, x, v, y, x_prev, True, hess, nb, 1)
        got = _pass(fd, x, v, y, x_prev, True, hess, nb, n_threads)
        for a, b in zip(got, ref):
            assert np.isfinite(a).all()  # every chunk was written
            np.testing.assert_array_equal(a, b)
    # and through the kernel set, with the policy's thread count
    runs = []
    for n in (1, n_threads):
        with vl.threads(n):
            out, hout = np.empty_like(x), np.empty_like(x)
            s = fd.ISOTROPIC.fused_grad(x, y, 1.0, 0.3, 0.05, x_prev, 0.5, 0.2, out)
            fd.ISOTROPIC.fused_hvp(x, v, 1.0, 0.3, 0.05, hout)
            runs.append((s, fd.ANISOTROPIC.value(x, 0.3, 0.05), out, hout))
    assert runs[0][:2] == runs[1][:2]
    np.testing.assert_array_equal(runs[0][2], runs[1][2])
    np.testing.assert_array_equal(runs[0][3], runs[1][3])


# ---------------------------------------------------------------------- lower-level problems
def test_denoising_rejects_images_below_2x2(rng):
    for shape in ((2, 1, 5), (2, 5, 1), (1, 1, 1)):
        with pytest.raises(ValueError, match="at least 2x2"):
            vl.DenoisingProblem(rng.rand(*shape), vl.TotalVariation())


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("iso", [True, False], ids=["iso", "aniso"])
def test_problem_fused_grad_matches_reference(xp, rng, iso, dtype):
    x, y, _, x_prev = data(rng, (3, 20, 17), dtype)
    tol = RTOL[np.dtype(dtype)]
    beta, tau = 0.62, 0.11
    theta = np.array([math.log(LAM), math.log(NU)])
    with accelerated(False):
        p_ref = vl.DenoisingProblem(y, vl.TotalVariation(isotropic=iso))
        out_ref, gn_ref = p_ref.fused_grad(x, theta, x_prev=x_prev, beta=beta, step=tau)
    problem = vl.DenoisingProblem(xp.asarray(y), vl.TotalVariation(isotropic=iso))
    with accelerated(True):
        out, gn = problem.fused_grad(xp.asarray(x), xp.asarray(theta), x_prev=xp.asarray(x_prev), beta=beta,
                                     step=tau, out=xp.full_like(xp.asarray(x), np.nan))
    assert isinstance(gn, float)
    assert rel_err(out, out_ref) <= tol
    assert close(gn, gn_ref, tol)


@pytest.mark.parametrize("iso", [True, False], ids=["iso", "aniso"])
def test_solve_lower_same_with_and_without_kernels(xp, rng, iso):
    y = rng.rand(2, 16, 12)
    tv = vl.TotalVariation(isotropic=iso)
    theta = np.array([math.log(0.1), math.log(0.1)])
    tol = 1e-11
    with accelerated(False):
        ref = vl.solve_lower(vl.DenoisingProblem(y, tv), theta, tol)
    problem = vl.DenoisingProblem(xp.asarray(y), tv)
    with accelerated(True):
        res = vl.solve_lower(problem, xp.asarray(theta), tol)
    assert ref.success and res.success
    assert type(res.x) is type(problem.noisy)
    assert res.distance_bound <= tol
    assert float(np.linalg.norm(to_numpy(res.x) - ref.x)) <= 1e-10
    # the certificate also holds for the reference gradient at the returned point
    with accelerated(False):
        g = vl.DenoisingProblem(y, tv).grad(to_numpy(res.x), theta)
    assert float(np.linalg.norm(g)) / res.mu <= 1.01 * tol


# ---------------------------------------------------------------------- the CUDA module
def test_cuda_kernel_module_imports_without_a_gpu():
    """Importing the CUDA kernel module never imports CuPy (it is imported lazily, on first use)."""
    code = ("import sys; from varlearn.regularizers._kernels import fd_cuda as m; "
            "print(sorted(n for n in ('value', 'fused_grad', 'fused_hvp') if callable(getattr(m.ISOTROPIC, n))), "
            "'cupy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["['fused_grad',", "'fused_hvp',", "'value']", "False"]


# The CUDA source compiled for the host (needs a C++ compiler, no GPU): one block of one thread
# runs the grid-stride loop over every pixel, so the kernels compute the whole result serially.
_HOST_PRELUDE = r"""
#include <math.h>
#define __device__
#define __forceinline__ inline
#define __global__
#define __restrict__
#define __shared__ static
struct VlDim { unsigned x; };
static VlDim threadIdx{0}, blockIdx{0}, blockDim{1}, gridDim{1};
inline float rsqrtf(float v) { return 1.0f / sqrtf(v); }
inline double rsqrt(double v) { return 1.0 / sqrt(v); }
inline double __shfl_down_sync(unsigned, double, int) { return 0.0; }  /* no other lane */
inline unsigned atomicAdd(unsigned* c, unsigned v) { const unsigned o = *c; *c += v; return o; }
inline void __threadfence() {}
inline void __syncthreads() {}
"""


@pytest.fixture(scope="module")
def cuda_on_host(tmp_path_factory):
    import ctypes
    import shutil

    from varlearn.regularizers._kernels import fd_cuda

    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler to build the CUDA source for the host")
    libs = {}

    def get(iso, dtype):
        key = (iso, np.dtype(dtype))
        if key not in libs:
            ctype = "double" if key[1] == np.float64 else "float"
            src = tmp_path_factory.mktemp("cuda") / "k.cpp"
            src.write_text(f"{_HOST_PRELUDE}\ntypedef {ctype} T;\ntypedef unsigned int I;\n"
                           f"#define VL_ISO {int(iso)}\n{fd_cuda._SOURCE}")
            lib = src.with_suffix(".so")
            subprocess.run([cxx, "-O1", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True,
                           capture_output=True, timeout=120)
            libs[key] = ctypes.CDLL(str(lib))
        return libs[key]

    return get


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("pot_t", [SmoothedL1, GroupSmoothedL1])
def test_cuda_source_matches_the_composition_on_the_host(rng, cuda_on_host, pot_t, dtype):
    import ctypes

    lib = cuda_on_host(pot_t is GroupSmoothedL1, dtype)
    t = ctypes.c_double if dtype == np.float64 else ctypes.c_float
    comp = Composite(FiniteDifference(), pot_t())
    tol = RTOL[np.dtype(dtype)]

    def ptr(a):
        return a.ctypes.data_as(ctypes.c_void_p)

    for shape in [(3, 17, 13), (2, 2, 2), (2, 1, 5), (2, 5, 1), (1, 1, 1), (2, 33, 65)]:
        x, y, v, x_prev = data(rng, shape, dtype)
        sizes = [ctypes.c_uint(n) for n in (shape[1], shape[2], x.size)]
        ws = [np.zeros(4), np.zeros(1, np.uint32), np.zeros(1)]  # partials, counter, result
        out = np.full_like(x, np.nan)
        with accelerated(False):
            o_ref, n_ref = comp.fused_grad(x, LAM, NU, y, 0.7, x_prev=x_prev, beta=0.62, step=0.11)
            h_ref = comp.fused_hvp(x, LAM, NU, v, 0.7)
            r_ref = float(comp.value(x, LAM, NU))
        lib.fd_fused_grad(ptr(x), ptr(x_prev), ptr(y), t(0.7), t(0.62), t(1.0), t(0.11), t(LAM), t(NU * NU),
                          *sizes, ptr(out), *map(ptr, ws))
        assert rel_err(out, o_ref) <= tol and close(math.sqrt(ws[2][0]), n_ref, tol)
        lib.fd_fused_grad(ptr(x), ptr(x), ptr(x), t(0.0), t(0.0), t(0.0), t(-1.0), t(LAM), t(NU * NU),
                          *sizes, ptr(out), *map(ptr, ws))  # the plain gradient: keep 0, step -1
        with accelerated(False):
            assert rel_err(out, comp.grad(x, LAM, NU)) <= tol
        lib.fd_fused_hvp(ptr(x), ptr(v), t(0.7), t(LAM), t(NU * NU), *sizes, ptr(out))
        assert rel_err(out, h_ref) <= tol
        lib.fd_value(ptr(x), t(NU * NU), *sizes, *map(ptr, ws))
        assert close(LAM * ws[2][0], r_ref, tol)
        assert ws[1][0] == 0  # the last block reset the completion counter


@pytest.mark.gpu
def test_cuda_kernels_handle_arguments_and_large_stacks(rng):
    if not cupy_usable():
        pytest.skip(f"CuPy backend not usable: {cupy_unusable_reason()}")
    import cupy as cp

    from varlearn.regularizers._kernels import fd_cuda

    k = fd_cuda.ISOTROPIC
    x = cp.asarray(rng.rand(2, 5, 6))
    with pytest.raises(ValueError, match="out3 must be C-contiguous with the dtype of x3"):
        k.fused_grad(x, x, 1.0, 0.1, 0.1, None, 0.0, None, cp.empty((2, 5, 6), dtype=cp.float32))
    with pytest.raises(ValueError, match="y3 must be a CuPy array"):
        k.fused_grad(x, rng.rand(2, 5, 6), 1.0, 0.1, 0.1, None, 0.0, None, cp.empty_like(x))  # never moved
    with pytest.raises(TypeError, match="x3 must be a CuPy array"):
        k.value(rng.rand(2, 5, 6), 0.1, 0.1)
    with pytest.raises(ValueError, match="x3 must be C-contiguous"):
        k.value(cp.asarray(rng.rand(2, 6, 5)).transpose(0, 2, 1), 0.1, 0.1)
    assert math.isfinite(k.fused_grad(x, x.astype(cp.float32), 1.0, 0.1, 0.1, None, 0.0, None, cp.empty_like(x)))
    # more pixels than one launch has threads: the grid-stride loop and the block sums
    for dtype in DTYPES:
        xs, ys, _, ps = data(rng, (5, 512, 512), dtype)
        comp = Composite(FiniteDifference(), GroupSmoothedL1())
        with accelerated(False):
            o_ref, n_ref = comp.fused_grad(xs, 0.2, 0.1, ys, 1.0, x_prev=ps, beta=0.5, step=0.1)
        xd, yd, pd = cp.asarray(xs), cp.asarray(ys), cp.asarray(ps)
        out = cp.empty_like(xd)
        s1 = k.fused_grad(xd, yd, 1.0, 0.2, 0.1, pd, 0.5, 0.1, out)
        assert rel_err(out, o_ref) <= RTOL[np.dtype(dtype)] and close(math.sqrt(s1), n_ref, RTOL[np.dtype(dtype)])
        assert k.fused_grad(xd, yd, 1.0, 0.2, 0.1, pd, 0.5, 0.1, out) == s1  # deterministic reduction


@pytest.mark.gpu
@pytest.mark.parametrize("iso", [True, False], ids=["iso", "aniso"])
def test_regularizer_on_cupy(rng, iso):
    """check_regularizer on CuPy; the reference path runs on CuPy too and agrees with NumPy."""
    if not cupy_usable():
        pytest.skip(f"CuPy backend not usable: {cupy_unusable_reason()}")
    import cupy as cp

    tv = vl.TotalVariation(isotropic=iso)
    x, y, v, _ = data(rng, (2, 11, 9), np.float64)
    theta = np.array([-1.0, -2.0])
    with accelerated(True):
        vl.testing.check_regularizer(tv, cp.asarray(x), cp.asarray(theta), rng=rng, raise_error=True)
    with accelerated(False):
        g_cp = tv.fused_grad(cp.asarray(x), cp.asarray(theta), cp.asarray(y), 1.0)[0]
        h_cp = tv.hvp(cp.asarray(x), cp.asarray(theta), cp.asarray(v))
        g_np = tv.fused_grad(x, theta, y, 1.0)[0]
        h_np = tv.hvp(x, theta, v)
    assert rel_err(g_cp, g_np) <= 1e-12 and rel_err(h_cp, h_np) <= 1e-12


@pytest.mark.gpu
def test_solve_lower_cupy_float32_is_accurate(rng):
    if not cupy_usable():
        pytest.skip(f"CuPy backend not usable: {cupy_unusable_reason()}")
    import warnings

    import cupy as cp

    y32 = rng.rand(2, 24, 20).astype(np.float32)
    theta = np.array([math.log(0.1), math.log(0.1)])
    tv = vl.TotalVariation(isotropic=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = vl.solve_lower(vl.DenoisingProblem(cp.asarray(y32), tv), cp.asarray(theta), 1e-4)
    assert res.success and res.x.dtype == cp.float32 and res.distance_bound <= 1e-4
    # against a tight float64 solution on the CPU: within the bound, plus float32 rounding
    with accelerated(False):
        ref = vl.solve_lower(vl.DenoisingProblem(y32.astype(np.float64), tv), theta, 1e-10)
    err = float(np.linalg.norm(to_numpy(res.x).astype(np.float64) - ref.x))
    assert err <= res.distance_bound + 1e-10 + 1e-5 * math.sqrt(y32.size)
