"""The fused CUDA kernels of total variation (CuPy) against the NumPy reference path.

Every test here needs a usable CuPy device: they are marked ``gpu`` and skip
cleanly otherwise.  The reference is :class:`varlearn.TotalVariation` with the
accelerators disabled, on NumPy arrays; the kernels must agree with it to
rounding (1e-12 relative in float64, 1e-5 in float32).
"""
import contextlib
import math
import warnings

import numpy as np
import pytest

import varlearn as vl
from varlearn import _accel
from varlearn.backend import cupy_unusable_reason, cupy_usable, to_numpy
from varlearn.problems.base import LowerProblem

pytestmark = pytest.mark.gpu

SHAPES = [
    (3, 17, 13),
    (2, 2, 2),
    (1, 2, 7),
    (2, 7, 2),
    (2, 1, 5),
    (2, 5, 1),
    (4, 33, 65),
]
DTYPES = [np.float64, np.float32]
RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}
THETA = np.array([math.log(0.3), math.log(0.05)])


@pytest.fixture(autouse=True)
def _need_cupy():
    if not cupy_usable():
        pytest.skip(f"CuPy backend not usable: {cupy_unusable_reason()}")


@pytest.fixture
def cp():
    import cupy

    return cupy


@pytest.fixture
def kernels():
    import varlearn._tv_cupy as mod

    return mod


@contextlib.contextmanager
def accelerated(flag):
    old = _accel.set_accelerated(flag)
    try:
        yield
    finally:
        _accel.set_accelerated(old)


def rel_err(a, b):
    a = np.asarray(to_numpy(a), dtype=np.float64)
    b = np.asarray(to_numpy(b), dtype=np.float64)
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
def test_kernels_match_numpy_reference(cp, kernels, rng, shape, iso, dtype):
    x, y, v, x_prev = data(rng, shape, dtype)
    tv = vl.TotalVariation(isotropic=iso)
    lam, nu = tv._scalars(THETA)
    tol = RTOL[np.dtype(dtype)]
    beta, tau = 0.62, 0.11
    with accelerated(False):
        g_ref = tv.grad_data(x, THETA, y, 0.7)
        h_ref = tv.hvp_data(x, THETA, v, 0.7)
        r_ref = float(tv.value(x, THETA))
        z = x + beta * (x - x_prev)
        gz_ref = tv.grad_data(z, THETA, y, 1.0)
        f_ref = z - tau * gz_ref
    xd, yd, vd, pd = (cp.asarray(a) for a in (x, y, v, x_prev))

    out = cp.empty_like(xd)
    s = kernels.grad(xd, yd, 0.7, lam, nu * nu, iso, out)
    assert isinstance(s, float)
    assert rel_err(out, g_ref) <= tol
    s_ref = float(np.sum(g_ref.astype(np.float64) ** 2))
    assert abs(s - s_ref) <= tol * max(s_ref, 1e-300)

    out = cp.empty_like(xd)
    assert kernels.hvp(xd, vd, 0.7, lam, nu * nu, iso, out) is out
    assert rel_err(out, h_ref) <= tol

    r = kernels.value(xd, lam, nu * nu, iso)
    assert isinstance(r, float)
    assert abs(r - r_ref) <= tol * max(abs(r_ref), 1e-300)

    out = cp.full_like(xd, cp.nan)
    s = kernels.fista_step(xd, pd, yd, beta, tau, lam, nu * nu, iso, out)
    assert isinstance(s, float)
    assert rel_err(out, f_ref) <= tol
    s_ref = float(np.sum(gz_ref.astype(np.float64) ** 2))
    assert abs(s - s_ref) <= tol * max(s_ref, 1e-300)

    # inputs untouched
    for a, ad in ((x, xd), (y, yd), (v, vd), (x_prev, pd)):
        np.testing.assert_array_equal(to_numpy(ad), a)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("iso", [True, False], ids=["iso", "aniso"])
def test_regularizer_api_on_cupy_matches_numpy(cp, rng, iso, dtype):
    """TotalVariation dispatches CuPy arrays to the kernels; 2-D/4-D/strided inputs work."""
    tv = vl.TotalVariation(isotropic=iso)
    tol = RTOL[np.dtype(dtype)]
    base = rng.rand(2, 3, 9, 11).astype(dtype)
    theta_d = cp.asarray(THETA)
    for x in (base[0, 0], base[0], base, base[:, :, :, ::2]):
        v = rng.randn(*x.shape).astype(dtype)
        with accelerated(False):
            g_ref, h_ref, r_ref = tv.grad(x, THETA), tv.hvp(x, THETA, v), float(tv.value(x, THETA))
        with accelerated(True):
            assert tv._kernels(cp.asarray(x)) is not None
            g = tv.grad(cp.asarray(x), theta_d)
            h = tv.hvp(cp.asarray(x), theta_d, cp.asarray(v))
            r = tv.value(cp.asarray(x), theta_d)
        assert isinstance(g, cp.ndarray) and g.shape == x.shape and g.dtype == dtype
        assert rel_err(g, g_ref) <= tol
        assert rel_err(h, h_ref) <= tol
        assert abs(float(r) - r_ref) <= tol * abs(r_ref)


@pytest.mark.parametrize("iso", [True, False], ids=["iso", "aniso"])
def test_reference_path_runs_on_cupy(cp, rng, iso):
    """With the accelerators disabled the array-API reference code runs on CuPy too."""
    x, y, v, _ = data(rng, (2, 12, 10), np.float64)
    tv = vl.TotalVariation(isotropic=iso)
    with accelerated(False):
        g_np = tv.grad_data(x, THETA, y, 1.0)
        assert tv._kernels(cp.asarray(x)) is None
        g_cp = tv.grad_data(cp.asarray(x), cp.asarray(THETA), cp.asarray(y), 1.0)
        h_cp = tv.hvp(cp.asarray(x), cp.asarray(THETA), cp.asarray(v))
        h_np = tv.hvp(x, THETA, v)
    assert rel_err(g_cp, g_np) <= 1e-12
    assert rel_err(h_cp, h_np) <= 1e-12


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
def test_large_stack_grid_stride(cp, kernels, rng, dtype):
    """More pixels than one launch has threads: the grid-stride loop and the block sums."""
    shape = (5, 512, 512)
    x, y, _, x_prev = data(rng, shape, dtype)
    lam, nu2 = 0.2, 0.01
    tol = RTOL[np.dtype(dtype)]
    tv = vl.TotalVariation(isotropic=True)
    theta = np.array([math.log(lam), 0.5 * math.log(nu2)])
    with accelerated(False):
        z = x + 0.5 * (x - x_prev)
        gz = tv.grad_data(z, theta, y, 1.0)
        f_ref = z - 0.1 * gz
    xd, yd, pd = cp.asarray(x), cp.asarray(y), cp.asarray(x_prev)
    out = cp.empty_like(xd)
    s1 = kernels.fista_step(xd, pd, yd, 0.5, 0.1, lam, nu2, True, out)
    assert rel_err(out, f_ref) <= tol
    s_ref = float(np.sum(gz.astype(np.float64) ** 2))
    assert abs(s1 - s_ref) <= tol * s_ref
    # the reduction is deterministic: the same bits on every call
    s2 = kernels.fista_step(xd, pd, yd, 0.5, 0.1, lam, nu2, True, out)
    assert s1 == s2


def test_kernels_reject_bad_arguments(cp, kernels, rng):
    x = cp.asarray(rng.rand(2, 5, 6))
    out = cp.empty_like(x)
    with pytest.raises(ValueError, match="out"):
        kernels.grad(x, x, 1.0, 0.1, 0.01, True, cp.empty((2, 5, 6), dtype=cp.float32))
    with pytest.raises(ValueError, match="y"):
        kernels.grad(x, rng.rand(2, 5, 6), 1.0, 0.1, 0.01, True, out)  # host array: never moved silently
    with pytest.raises(TypeError):
        kernels.value(rng.rand(2, 5, 6), 0.1, 0.01, True)
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.value(cp.asarray(rng.rand(2, 6, 5)).transpose(0, 2, 1), 0.1, 0.01, True)
    # a y of another dtype is converted on the device
    s = kernels.grad(x, x.astype(cp.float32), 1.0, 0.1, 0.01, True, out)
    assert math.isfinite(s)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("iso", [True, False], ids=["iso", "aniso"])
def test_denoising_fista_step_cupy_vs_numpy(cp, rng, iso, dtype):
    x, y, _, x_prev = data(rng, (3, 20, 17), dtype)
    tol = RTOL[np.dtype(dtype)]
    beta, tau = 0.62, 0.11
    p_np = vl.DenoisingProblem(y, vl.TotalVariation(isotropic=iso))
    p_cp = vl.DenoisingProblem(cp.asarray(y), vl.TotalVariation(isotropic=iso))
    with accelerated(False):
        out_ref = np.empty_like(x)
        gn_ref = LowerProblem.fista_step(p_np, x, x_prev, beta, tau, THETA, out_ref)
    with accelerated(True):
        out = cp.empty_like(cp.asarray(x))
        gn = p_cp.fista_step(cp.asarray(x), cp.asarray(x_prev), beta, tau, cp.asarray(THETA), out)
    assert isinstance(gn, float)
    assert rel_err(out, out_ref) <= tol
    assert abs(gn - gn_ref) <= tol * gn_ref


@pytest.mark.parametrize("iso", [True, False], ids=["iso", "aniso"])
def test_solve_lower_cupy_matches_numpy(cp, rng, iso):
    y = rng.rand(2, 24, 20)
    tv = vl.TotalVariation(isotropic=iso)
    theta = np.array([math.log(0.1), math.log(0.1)])
    tol = 1e-11
    with accelerated(False):
        ref = vl.solve_lower(vl.DenoisingProblem(y, tv), theta, tol)
    p_cp = vl.DenoisingProblem(cp.asarray(y), tv)
    with accelerated(True):
        res = vl.solve_lower(p_cp, cp.asarray(theta), tol)
        g = p_cp.grad(res.x, cp.asarray(theta))
    assert ref.success and res.success
    assert isinstance(res.x, cp.ndarray)
    assert res.distance_bound <= tol
    assert float(cp.linalg.norm(g.ravel())) / res.mu <= tol
    assert float(np.linalg.norm(to_numpy(res.x) - ref.x)) <= 1e-10
    # the certificate also holds for the reference gradient at the returned point
    with accelerated(False):
        g_ref = vl.DenoisingProblem(y, tv).grad(to_numpy(res.x), theta)
    assert float(np.linalg.norm(g_ref)) / res.mu <= 1.01 * tol


def test_solve_lower_cupy_float32_is_accurate(cp, rng):
    y32 = rng.rand(2, 24, 20).astype(np.float32)
    theta = np.array([math.log(0.1), math.log(0.1)])
    tv = vl.TotalVariation(isotropic=False)
    problem = vl.DenoisingProblem(cp.asarray(y32), tv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = vl.solve_lower(problem, cp.asarray(theta), 1e-4)
    assert res.success and res.x.dtype == cp.float32 and res.distance_bound <= 1e-4
    # against a tight float64 solution on the CPU: within the bound, plus float32 rounding
    with accelerated(False):
        ref = vl.solve_lower(vl.DenoisingProblem(y32.astype(np.float64), tv), theta, 1e-10)
    err = float(np.linalg.norm(to_numpy(res.x).astype(np.float64) - ref.x))
    assert err <= res.distance_bound + 1e-10 + 1e-5 * math.sqrt(y32.size)


@pytest.mark.parametrize("iso", [True, False], ids=["iso", "aniso"])
def test_check_regularizer_on_cupy(cp, rng, iso):
    tv = vl.TotalVariation(isotropic=iso)
    x = cp.asarray(rng.rand(2, 11, 9))
    theta = cp.asarray(np.array([-1.0, -2.0]))
    with accelerated(True):
        vl.testing.check_regularizer(tv, x, theta, rng=rng, raise_error=True)
