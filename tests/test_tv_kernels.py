"""The fused numba kernels of total variation against the NumPy reference path.

The reference is :class:`varlearn.TotalVariation` with the accelerators
disabled; the kernels must agree with it to rounding (1e-12 relative in
float64, 1e-5 in float32) for every shape, including the smallest images and
the degenerate ones (a single row or column, where the differences across
that axis do not exist).
"""
import contextlib
import math
import subprocess
import sys

import numpy as np
import pytest

import varlearn as vl
from varlearn import _accel
from varlearn.problems.base import LowerProblem

try:
    import varlearn._tv_numba as nb_kernels
except ImportError as exc:  # numba is optional
    pytest.skip(f"the numba kernels are not available ({exc})", allow_module_level=True)

SHAPES = [
    (3, 17, 13),
    (2, 2, 2),
    (1, 2, 7),
    (2, 7, 2),
    (1, 64, 40),   # few images: split into blocks of rows between threads
    (2, 1, 5),     # a single row: no vertical differences
    (2, 5, 1),     # a single column: no horizontal differences
    (1, 1, 1),
]
DTYPES = [np.float64, np.float32]
RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}
THETA = np.array([math.log(0.3), math.log(0.05)])


@contextlib.contextmanager
def accelerated(flag):
    old = _accel.set_accelerated(flag)
    try:
        yield
    finally:
        _accel.set_accelerated(old)


def rel_err(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = max(float(np.max(np.abs(b), initial=0.0)), 1e-300)
    return float(np.max(np.abs(a - b), initial=0.0)) / scale


def data(rng, shape, dtype):
    x = rng.rand(*shape).astype(dtype)
    y = rng.rand(*shape).astype(dtype)
    v = rng.randn(*shape).astype(dtype)
    x_prev = rng.rand(*shape).astype(dtype)
    return x, y, v, x_prev


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("iso", [True, False], ids=["iso", "aniso"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernels_match_reference(rng, shape, iso, dtype):
    x, y, v, _ = data(rng, shape, dtype)
    tv = vl.TotalVariation(isotropic=iso)
    lam, nu = tv._scalars(THETA)
    tol = RTOL[np.dtype(dtype)]
    with accelerated(False):
        g_ref = tv.grad_data(x, THETA, y, 0.7)
        h_ref = tv.hvp_data(x, THETA, v, 0.7)
        r_ref = float(tv.value(x, THETA))
        gr_ref = tv.grad(x, THETA)
    with accelerated(True):
        assert tv._kernels(x) is nb_kernels
        g = tv.grad_data(x, THETA, y, 0.7)
        h = tv.hvp_data(x, THETA, v, 0.7)
        r = tv.value(x, THETA)
        gr = tv.grad(x, THETA)
    for got, ref in [(g, g_ref), (h, h_ref), (gr, gr_ref)]:
        assert got.dtype == ref.dtype == dtype and got.shape == ref.shape
        assert rel_err(got, ref) <= tol
    assert r.dtype == dtype
    assert abs(float(r) - r_ref) <= tol * max(abs(r_ref), 1e-300)

    # the sums of squares returned by the kernels
    out = np.empty_like(x)
    s = nb_kernels.grad(x, y, 0.7, lam, nu * nu, iso, out)
    assert isinstance(s, float)
    s_ref = float(np.sum(g_ref.astype(np.float64) ** 2))
    assert abs(s - s_ref) <= tol * max(s_ref, 1e-300)
    val = nb_kernels.value(x, lam, nu * nu, iso)
    assert isinstance(val, float)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("iso", [True, False], ids=["iso", "aniso"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fista_step_matches_generic(rng, shape, iso, dtype):
    if shape[1] < 2 or shape[2] < 2:
        with pytest.raises(ValueError, match="at least 2x2"):
            vl.DenoisingProblem(rng.rand(*shape).astype(dtype), vl.TotalVariation(isotropic=iso))
        return
    x, y, _, x_prev = data(rng, shape, dtype)
    problem = vl.DenoisingProblem(y, vl.TotalVariation(isotropic=iso))
    beta, tau = 0.62, 0.11
    tol = RTOL[np.dtype(dtype)]
    with accelerated(False):
        out_ref = np.empty_like(x)
        gn_ref = LowerProblem.fista_step(problem, x, x_prev, beta, tau, THETA, out_ref)
    with accelerated(True):
        out = np.full_like(x, np.nan)
        gn = problem.fista_step(x, x_prev, beta, tau, THETA, out)
        # the generic step on top of the fused gradient agrees too
        out_gen = np.empty_like(x)
        gn_gen = LowerProblem.fista_step(problem, x, x_prev, beta, tau, THETA, out_gen)
    assert isinstance(gn, float)
    assert rel_err(out, out_ref) <= tol
    assert rel_err(out_gen, out_ref) <= tol
    assert abs(gn - gn_ref) <= tol * gn_ref
    assert abs(gn_gen - gn_ref) <= tol * gn_ref


def _kernel_run(kernel, args, n_chunks, nb, n_threads, sums=True):
    """One kernel call over ``n_chunks`` chunks (``nb`` per image) on ``n_threads`` threads."""
    acc = np.full(n_chunks, np.nan)
    full = (*args, acc, nb) if sums else (*args, nb)
    _accel.run_chunks(kernel, n_chunks, full, n_threads)
    return acc


def _all_kernels(x, y, v, x_prev, iso, nb, n_threads):
    lam, nu2 = 0.3, 0.05 ** 2
    t = np.float64
    n_chunks = x.shape[0] * nb
    outs = [np.full_like(x, np.nan) for _ in range(3)]
    sums = [
        _kernel_run(nb_kernels._fista_chunks, (x, x_prev, y, t(0.5), t(0.2), t(lam), t(nu2), iso, outs[0]),
                    n_chunks, nb, n_threads),
        _kernel_run(nb_kernels._grad_chunks, (x, y, t(1.0), t(lam), t(nu2), iso, outs[1]), n_chunks, nb, n_threads),
        _kernel_run(nb_kernels._value_chunks, (x, t(nu2), iso), n_chunks, nb, n_threads),
    ]
    _kernel_run(nb_kernels._hvp_chunks, (x, v, t(1.0), t(lam), t(nu2), iso, outs[2]), n_chunks, nb, n_threads,
                sums=False)
    return outs, sums


@pytest.mark.parametrize("iso", [True, False], ids=["iso", "aniso"])
@pytest.mark.parametrize("n_blocks", [2, 3, 5, 40])
def test_row_blocks_do_not_change_results(rng, iso, n_blocks):
    """Splitting images into blocks of rows (any number of them) gives the same numbers."""
    x, y, v, x_prev = data(rng, (2, 40, 23), np.float64)
    ref, ref_sums = _all_kernels(x, y, v, x_prev, iso, 1, 1)
    got, got_sums = _all_kernels(x, y, v, x_prev, iso, n_blocks, 1)
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a, b)  # per-pixel work does not depend on the split
    for a, b in zip(got_sums, ref_sums):
        assert a.shape == (2 * n_blocks,) and b.shape == (2,)
        assert float(a.sum()) == pytest.approx(float(b.sum()), rel=1e-13)


@pytest.mark.parametrize("n_threads", [2, 3, 7])
def test_results_do_not_depend_on_the_thread_count(rng, n_threads):
    """Every output and partial sum is bit-identical on 1 and on n threads."""
    x, y, v, x_prev = data(rng, (4, 70, 64), np.float64)  # above _SERIAL_BELOW: threads are used
    nb = nb_kernels._n_blocks(70)
    assert nb == 2
    ref, ref_sums = _all_kernels(x, y, v, x_prev, True, nb, 1)
    got, got_sums = _all_kernels(x, y, v, x_prev, True, nb, n_threads)
    for a, b in zip(got + got_sums, ref + ref_sums):
        assert np.isfinite(a).all()  # every chunk was written
        np.testing.assert_array_equal(a, b)
    # and through the public functions, with the policy's thread count
    outs = []
    for n in (1, n_threads):
        with vl.threads(n):
            out = np.empty_like(x)
            outs.append((nb_kernels.fista_step(x, x_prev, y, 0.5, 0.2, 0.3, 0.05 ** 2, True, out), out))
    assert outs[0][0] == outs[1][0]
    np.testing.assert_array_equal(outs[0][1], outs[1][1])


def test_batched_and_single_image_inputs(rng):
    """2-D, 3-D, 4-D and non-contiguous inputs go through the kernels and match the reference."""
    tv = vl.TotalVariation()
    base = rng.rand(2, 3, 9, 11)
    for x in (base[0, 0], base[0], base, base[:, :, :, ::2], base[0].transpose(0, 2, 1)):
        v = rng.randn(*x.shape)
        with accelerated(False):
            g_ref, h_ref, r_ref = tv.grad(x, THETA), tv.hvp(x, THETA, v), float(tv.value(x, THETA))
        with accelerated(True):
            g, h, r = tv.grad(x, THETA), tv.hvp(x, THETA, v), float(tv.value(x, THETA))
        assert g.shape == h.shape == x.shape
        assert rel_err(g, g_ref) <= 1e-12
        assert rel_err(h, h_ref) <= 1e-12
        assert r == pytest.approx(r_ref, rel=1e-12)


def test_kernels_do_not_modify_inputs(rng):
    x, y, v, x_prev = data(rng, (2, 9, 8), np.float64)
    copies = [a.copy() for a in (x, y, v, x_prev)]
    out = np.empty_like(x)
    nb_kernels.fista_step(x, x_prev, y, 0.5, 0.1, 0.2, 1e-3, True, out)
    nb_kernels.grad(x, y, 1.0, 0.2, 1e-3, False, out)
    nb_kernels.hvp(x, v, 1.0, 0.2, 1e-3, True, out)
    nb_kernels.value(x, 0.2, 1e-3, False)
    for a, c in zip((x, y, v, x_prev), copies):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("iso", [True, False], ids=["iso", "aniso"])
def test_solve_lower_same_with_and_without_kernels(rng, iso):
    y = rng.rand(2, 16, 12)
    problem = vl.DenoisingProblem(y, vl.TotalVariation(isotropic=iso))
    theta = np.array([math.log(0.1), math.log(0.1)])
    tol = 1e-11
    with accelerated(False):
        ref = vl.solve_lower(problem, theta, tol)
    with accelerated(True):
        res = vl.solve_lower(problem, theta, tol)
    assert ref.success and res.success
    assert res.distance_bound <= tol
    assert float(np.linalg.norm(res.x - ref.x)) <= 1e-10
    with accelerated(False):
        g = problem.grad(res.x, theta)
    assert float(np.linalg.norm(g)) / res.mu <= 1.01 * tol


def test_cupy_kernel_module_imports_without_a_gpu():
    """Importing the CUDA kernel module never imports CuPy (it is imported lazily, on first use)."""
    code = ("import sys, varlearn._tv_cupy as m; "
            "print(sorted(n for n in ('fista_step', 'grad', 'hvp', 'value') if callable(getattr(m, n, None))), "
            "'cupy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["['fista_step',", "'grad',", "'hvp',", "'value']", "False"]
