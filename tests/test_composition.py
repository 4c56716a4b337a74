"""The composition is the reference: TV equals (FiniteDifference, [Group]SmoothedL1), derivatives and bounds.

An independent reference of smoothed TV (the explicit formulas that tv.py used to hold) is
written below; TotalVariation and its composition are both checked against it on every
backend, with the fused kernels on and off.
"""
import math

import numpy as np
import pytest
from registry import power_norm

import varlearn as vl
from varlearn.backend import to_numpy
from varlearn.operators import FiniteDifference, Identity, LinearOperator
from varlearn.potentials import GroupSmoothedL1, SmoothedL1
from varlearn.regularizers import Composite
from varlearn.regularizers import composite as composite_mod
from varlearn.testing import check_grad, check_hvp, check_regularizer, observed_constants

THETA = np.array([-1.2, -2.3])
C_HESS = 1.5 / 1.25 ** 2.5  # sup |phi'''| nu^2 of the smoothed l1


# ------------------------------------------------------------------ independent reference
def _d(x):
    u = np.zeros(x.shape[:-2] + (2,) + x.shape[-2:])
    u[..., 0, :, :-1] = np.diff(x, axis=-1)
    u[..., 1, :-1, :] = np.diff(x, axis=-2)
    return u


def _dt(p):
    out = np.zeros(p.shape[:-3] + p.shape[-2:])
    out[..., :, :-1] -= p[..., 0, :, :-1]
    out[..., :, 1:] += p[..., 0, :, :-1]
    out[..., :-1, :] -= p[..., 1, :-1, :]
    out[..., 1:, :] += p[..., 1, :-1, :]
    return out


def reference(x, v, w, theta, iso):
    """Value, gradient, Hessian-vector product, mixed vjp and mixed-column norm of smoothed TV (float64)."""
    lam, nu = math.exp(theta[0]), math.exp(theta[1])
    u, dv, dw = _d(x), _d(v), _d(w)
    if iso:
        s = (u ** 2).sum(axis=-3, keepdims=True) + nu * nu
        r = np.sqrt(s)
        value = lam * r.sum()
        hv = dv / r - u * ((u * dv).sum(axis=-3, keepdims=True) / (s * r))
    else:
        s = u * u + nu * nu
        r = np.sqrt(s)
        mask = np.ones_like(u)
        mask[..., 0, :, -1] = 0
        mask[..., 1, -1, :] = 0
        value = lam * (r * mask).sum()
        hv = nu * nu * dv / (s * r)
    flux, flux_nu = u / r, -nu * u / (s * r)
    c0, c1 = lam * _dt(flux), lam * nu * _dt(flux_nu)
    return {"value": value, "grad": c0, "hvp": lam * _dt(hv),
            "mixed": np.array([lam * (flux * dw).sum(), lam * nu * (flux_nu * dw).sum()]),
            "mixed_norm": math.sqrt((c0 ** 2).sum() + (c1 ** 2).sum())}


def _pair(iso):
    pot = GroupSmoothedL1() if iso else SmoothedL1()
    return [vl.TotalVariation(isotropic=iso), vl.PotentialRegularizer(FiniteDifference(), pot)]


def _rel(a, b):
    a, b = np.asarray(to_numpy(a), dtype=float), np.asarray(b, dtype=float)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


SHAPES = [(2, 9, 7), (1, 2, 2), (5, 4), (1, 1, 3)]


@pytest.mark.parametrize("iso", [True, False], ids=["iso", "aniso"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_tv_equals_composition_and_reference(xp, accel, rng, iso, shape):
    x, v, w = (rng.randn(*shape) for _ in range(3))
    ref = reference(x, v, w, THETA, iso)
    X, V, W, T = (xp.asarray(a) for a in (x, v, w, THETA))
    for reg in _pair(iso):
        assert _rel(reg.value(X, T), ref["value"]) <= 1e-13
        assert _rel(reg.grad(X, T), ref["grad"]) <= 1e-12
        assert _rel(reg.hvp(X, T, V), ref["hvp"]) <= 1e-12
        assert _rel(reg.mixed_vjp(X, T, W), ref["mixed"]) <= 1e-12
        assert _rel(reg.mixed_norm_bound(X, T), ref["mixed_norm"]) <= 1e-12
        assert _rel(reg.fused_hvp(X, T, V, 0.7), ref["hvp"] + 0.7 * v) <= 1e-12
        out = xp.empty_like(X)
        assert reg.fused_hvp(X, T, V, 0.7, out=out) is out and _rel(out, ref["hvp"] + 0.7 * v) <= 1e-12


@pytest.mark.parametrize("iso", [True, False], ids=["iso", "aniso"])
@pytest.mark.parametrize("step", [None, 0.15])
@pytest.mark.parametrize("beta", [None, 0.0, 0.6], ids=["no-prev", "beta0", "beta0.6"])
@pytest.mark.parametrize("data_w", [0.0, 1.0])
@pytest.mark.parametrize("out_kind", ["none", "given", "strided"])
def test_fused_grad_variants(xp, accel, rng, iso, step, beta, data_w, out_kind):
    shape = (3, 11, 8)
    x, y, xprev = (rng.randn(*shape) for _ in range(3))
    z = x if beta is None else x + beta * (x - xprev)
    g = reference(z, z, z, THETA, iso)["grad"] + data_w * (z - y)
    want = g if step is None else z - step * g
    X, Y, P, T = (xp.asarray(a) for a in (x, y, xprev, THETA))
    for reg in _pair(iso):
        out = None
        if out_kind == "given":
            out = xp.empty_like(X)
        elif out_kind == "strided":
            out = xp.empty((3, 11, 16))[:, :, ::2]
        res, gnorm = reg.fused_grad(X, T, Y, data_w, x_prev=None if beta is None else P, beta=beta or 0.0,
                                    step=step, out=out)
        assert out is None or res is out
        assert isinstance(gnorm, float)
        assert _rel(res, want) <= 1e-12
        assert abs(gnorm - np.linalg.norm(g)) <= 1e-12 * np.linalg.norm(g)
        assert reg.grad_data(X, T, Y, data_w).shape == X.shape
        assert _rel(reg.grad_data(X, T, Y, data_w), reference(x, x, x, THETA, iso)["grad"] + data_w * (x - y)) \
            <= 1e-12


@pytest.mark.parametrize("iso", [True, False], ids=["iso", "aniso"])
def test_tv_bounds_are_the_former_constants_and_the_compositions(iso, rng):
    lam, nu = math.exp(THETA[0]), math.exp(THETA[1])
    x = rng.rand(2, 13, 10)
    tv, comp = _pair(iso)
    expected = {"lipschitz": 8 * lam / nu, "convexity": 0.0, "hessian_lipschitz": 8 ** 1.5 * C_HESS * lam / nu ** 2,
                "mixed_lipschitz": math.hypot(8 * lam / nu, 8 * lam / nu)}
    for name, val in expected.items():
        assert getattr(tv, name)(THETA) == pytest.approx(val, rel=1e-14, abs=0), name
        assert getattr(comp, name)(THETA) == getattr(tv, name)(THETA), name
    for dtype in (np.float64, np.float32):
        xd = x.astype(dtype)
        u = float(np.finfo(dtype).eps) / 2
        b = tv.grad_error_bound(xd, THETA)
        assert b == comp.grad_error_bound(xd, THETA)
        assert 40 * u * lam * math.sqrt(x.size) < b <= 64 * u * lam * math.sqrt(x.size)  # never looser than before


@pytest.mark.parametrize("iso", [True, False], ids=["iso", "aniso"])
def test_tv_bounds_hold(iso, rng):
    theta = np.array([-1.0, -1.5])
    lam, nu = math.exp(theta[0]), math.exp(theta[1])
    tv = vl.TotalVariation(isotropic=iso)
    # a flat image puts every difference at t = 0, where phi'' = 1/nu: the Lipschitz bound is nearly attained
    x0 = np.zeros((1, 24, 24))
    h_norm = power_norm(lambda v: tv.hvp(x0, theta, v), x0.shape, rng)
    assert h_norm <= tv.lipschitz(theta) and h_norm >= 0.9 * 8 * lam / nu
    # Hessian- and mixed-Lipschitz constants and the mixed norm: observed lower estimates stay below the claims
    x = 0.3 * rng.rand(2, 12, 12)
    prob = vl.DenoisingProblem(x, tv)
    obs = observed_constants(prob, theta, x, radius=nu, n_pairs=4, n_power=10, rng=rng)
    assert 0 < obs["L_H"] <= obs["claimed_L_H"]
    assert 0 < obs["L_J"] <= obs["claimed_L_J"]
    assert 0 < obs["J_norm"] <= obs["claimed_J_norm"] * (1 + 1e-12)
    # convexity 0: the largest eigenvalue of L I - H is L - min eig(H) <= L
    big = tv.lipschitz(theta)
    assert tv.convexity(theta) == 0.0
    assert power_norm(lambda v: big * v - tv.hvp(x, theta, v), x.shape, rng) <= big * (1 + 1e-12)


@pytest.mark.parametrize("iso", [True, False], ids=["iso", "aniso"])
def test_tv_grad_error_bound_holds_in_float32(accel, iso, rng):
    tv = vl.TotalVariation(isotropic=iso)
    theta = np.array([0.5, -4.0])  # large weight, sharp smoothing: the largest rounding errors
    x = rng.rand(3, 40, 33).astype(np.float32)
    exact = reference(x.astype(np.float64), x, x, theta, iso)["grad"]
    err = np.linalg.norm(tv.grad(x, theta).astype(np.float64) - exact)
    bound = tv.grad_error_bound(x, theta)
    assert 0 < err <= bound
    assert err >= bound / 1e3  # and the bound is not vacuous


# ------------------------------------------------------------------ the group potential
def _group_hessian(t, nu):
    s = t @ t + nu * nu
    return (np.eye(t.size) - np.outer(t, t) / s) / math.sqrt(s)


@pytest.mark.parametrize("nu", [0.05, 1.3])
def test_group_smoothed_l1_derivatives(nu, rng):
    p = GroupSmoothedL1()
    t = nu * rng.randn(3, 2, 4, 5)
    check_grad(lambda a: p.value(a, nu).sum(), lambda a: p.d1(a, nu), t, rng=rng, raise_error=True)
    check_hvp(lambda a: p.d1(a, nu), lambda a, v: p.hess_apply(a, nu, v), t, rng=rng, raise_error=True)
    # nu-derivatives as Taylor tests in nu (a 1-element array)
    w = rng.randn(*t.shape)
    for f, df in [(lambda n: p.value(t, n[0]).sum(), lambda n: np.array([p.value_dnu(t, n[0]).sum()])),
                  (lambda n: (w * p.d1(t, n[0])).sum(), lambda n: np.array([(w * p.d1_dnu(t, n[0])).sum()])),
                  (lambda n: (w * p.d2(t, n[0])).sum(), lambda n: np.array([(w * p.d2_dnu(t, n[0])).sum()]))]:
        check_grad(f, df, np.array([nu]), rng=rng, raise_error=True, h0=0.1 * nu)
    # d2 is the diagonal of the group Hessian
    a = t[1, :, 2, 3]
    assert np.allclose(p.d2(t, nu)[1, :, 2, 3], np.diag(_group_hessian(a, nu)), rtol=1e-13)
    # value reduces the group axis
    assert p.value(t, nu).shape == (3, 4, 5)


@pytest.mark.parametrize("nu", [0.05, 1.3])
@pytest.mark.parametrize("dim", [2, 3])
def test_group_smoothed_l1_bound_constants(nu, dim, rng):
    p = GroupSmoothedL1()
    ts = nu * rng.randn(400, dim) * rng.uniform(0, 3, size=(400, 1))
    ts[0] = 0.0
    grads = [np.linalg.norm(p.d1(a[:, None, None], nu)[:, 0, 0]) for a in ts]
    eigs = np.array([np.linalg.eigvalsh(_group_hessian(a, nu)) for a in ts])
    assert max(grads) <= p.d1_max(nu) and eigs.min() >= p.d2_min(nu) - 1e-15
    assert eigs.max() <= p.d2_max(nu) * (1 + 1e-12) and eigs.max() >= 0.999 * p.d2_max(nu)  # tight at t = 0
    cond = max(np.linalg.norm(a) * np.linalg.eigvalsh(_group_hessian(a, nu)).max() for a in ts)
    assert cond <= p.d1_rel_cond(nu)

    def dhess(a, d, h=1e-6 * nu):
        return (_group_hessian(a + h * d, nu) - _group_hessian(a - h * d, nu)) / (2 * h)

    def djac_dnu(a, d, h=1e-6 * nu):
        f = lambda b: p.d1_dnu(b[:, None, None], nu)[:, 0, 0]  # noqa: E731
        return (f(a + h * d) - f(a - h * d)) / (2 * h)

    l3 = l2nu = 0.0
    for a in ts[:100]:
        for _ in range(4):
            d = rng.randn(dim)
            d /= np.linalg.norm(d)
            l3 = max(l3, np.abs(np.linalg.eigvalsh(dhess(a, d))).max())
            l2nu = max(l2nu, np.linalg.norm(djac_dnu(a, d)))
    e1 = np.eye(dim)[0]
    l3 = max(l3, np.abs(np.linalg.eigvalsh(dhess(0.5 * nu * e1, e1))).max())
    l2nu = max(l2nu, np.linalg.norm(djac_dnu(0 * e1, e1)))
    assert l3 <= p.d3_max(nu) * (1 + 1e-6) and l3 >= 0.999 * p.d3_max(nu)
    assert l2nu <= p.d2_dnu_max(nu) * (1 + 1e-6) and l2nu >= 0.999 * p.d2_dnu_max(nu)


def test_potentials_out_may_alias_their_input(rng):
    t, v = rng.randn(2, 2, 3, 4), rng.randn(2, 2, 3, 4)
    for p in (SmoothedL1(), GroupSmoothedL1(), vl.potentials.Huber(), vl.potentials.LogStudentT()):
        for name in ("d1", "d2", "d1_dnu"):
            ref = getattr(p, name)(t, 0.3)
            a = t.copy()
            assert getattr(p, name)(a, 0.3, out=a) is a and np.allclose(a, ref, rtol=1e-14, atol=0)
        ref = p.hess_apply(t, 0.3, v)
        for alias in ("t", "v"):
            a, b = t.copy(), v.copy()
            res = p.hess_apply(a, 0.3, b, out=a if alias == "t" else b)
            assert np.allclose(res, ref, rtol=1e-14, atol=0)


_ALL_POTENTIALS = {**vl.potentials.POTENTIALS, **vl.potentials.GROUP_POTENTIALS}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", sorted(_ALL_POTENTIALS))
def test_d1_hess_apply_equals_d1_and_hess_apply(xp, rng, name, dtype):
    """The fused (phi', Hessian product) of every potential equals the two methods; t and v untouched."""
    p = _ALL_POTENTIALS[name]()
    t = xp.asarray(rng.randn(2, 3, 4, 5).astype(dtype))
    v = xp.asarray(rng.randn(2, 3, 4, 5).astype(dtype))
    t0, v0 = t.copy(), v.copy()
    tol = 1e-14 if dtype == np.float64 else 2e-6
    per_channel = xp.asarray(np.array([0.2, 0.5, 0.9], dtype=dtype)[:, None, None])
    nus = [1.0, 0.3] + ([] if p.group_axis is not None else [per_channel])  # a group takes scalars
    for nu in nus:
        want_d1, want_hv = p.d1(t, nu), p.hess_apply(t, nu, v)
        for given in (False, True):
            o1, o2 = (xp.empty_like(t), xp.empty_like(t)) if given else (None, None)
            d1, hv = p.d1_hess_apply(t, nu, v, out_d1=o1, out_hv=o2)
            assert d1.dtype == dtype and hv.dtype == dtype
            assert _rel(d1, to_numpy(want_d1)) <= tol and _rel(hv, to_numpy(want_hv)) <= tol, (nu, given)
            if given:
                assert d1 is o1 and hv is o2
            assert bool((t == t0).all()) and bool((v == v0).all())


# ------------------------------------------------------------------ the composite in general
class _ScaledDifferences(LinearOperator):
    """K x = (a_0 D_h x, a_1 D_v x): an operator with parameters, for the d_op derivative."""

    n_channels = 2
    n_params = 2

    def __init__(self, a):
        self.a = np.asarray(a, dtype=float)

    def apply(self, x):
        return _d(x) * self.a[:, None, None]

    def adjoint(self, u):
        return _dt(u * self.a[:, None, None])

    def norm_bound(self):
        return 2.0 * float(np.abs(self.a).max())

    def param_vjp(self, x, u):
        return (u * _d(x)).sum(axis=tuple(i for i in range(u.ndim) if i != u.ndim - 3))


class _NotHomogeneous(SmoothedL1):
    homogeneity = None  # forces the mixed derivative through d1_dnu


@pytest.mark.parametrize("pot", [SmoothedL1(), vl.potentials.LogStudentT(), _NotHomogeneous()],
                         ids=["l1-a1", "student-a0", "l1-no-a"])
def test_composite_per_channel_derivatives(rng, pot):
    x, w = rng.randn(2, 7, 6), rng.randn(2, 7, 6)
    lam, nu = np.array([0.3, 0.7]), np.array([0.2, 0.5])
    if not pot.convex:
        lam = 0.1 * lam
    comp = Composite(_ScaledDifferences([1.3, 0.6]), pot)
    check_grad(lambda y: comp.value(y, lam, nu), lambda y: comp.grad(y, lam, nu), x, rng=rng, raise_error=True)
    check_hvp(lambda y: comp.grad(y, lam, nu), lambda y, v: comp.hvp(y, lam, nu, v), x, rng=rng, raise_error=True)
    d_lam, d_nu, d_op = comp.mixed(x, lam, nu, w, op_params=True)
    d_lam2, d_nu2, none = comp.mixed(x, lam, nu, w)
    assert none is None and _rel(d_lam2, d_lam) <= 1e-13 and _rel(d_nu2, d_nu) <= 1e-13
    check_grad(lambda p: np.vdot(w, comp.grad(x, p, nu)), lambda p: np.asarray(d_lam), lam, rng=rng, raise_error=True)
    check_grad(lambda p: np.vdot(w, comp.grad(x, lam, p)), lambda p: np.asarray(d_nu), nu, rng=rng, raise_error=True,
               h0=0.05)

    def with_a(a):
        return Composite(_ScaledDifferences(a), pot)

    a0 = np.array([1.3, 0.6])
    check_grad(lambda a: np.vdot(w, with_a(a).grad(x, lam, nu)), lambda a: np.asarray(d_op), a0, rng=rng,
               raise_error=True)


def test_composite_per_channel_bounds_hold(rng):
    lam, nu = np.array([0.3, 0.7]), np.array([0.2, 0.5])
    comp = Composite(FiniteDifference(), SmoothedL1())
    x0 = np.zeros((1, 20, 20))
    h_norm = power_norm(lambda v: comp.hvp(x0, lam, nu, v), x0.shape, rng)
    # w_c = lam_c / nu_c = (1.5, 1.4): min(8 max w, 4 sum w) = 11.6
    assert comp.lipschitz(lam, nu) == pytest.approx(11.6, rel=1e-14) and h_norm <= comp.lipschitz(lam, nu)
    x = rng.rand(1, 10, 10)
    cols = []
    for c in range(2):
        e = np.zeros(2)
        e[c] = 1.0
        cols.append(comp.grad(x, lam + 1e-6 * e * lam, nu) - comp.grad(x, lam - 1e-6 * e * lam, nu))
        cols.append(comp.grad(x, lam, nu + 1e-6 * e * nu) - comp.grad(x, lam, nu - 1e-6 * e * nu))
    fro = math.sqrt(sum(float(((col / 2e-6) ** 2).sum()) for col in cols))
    bound = comp.mixed_norm_bound(x, lam, nu)
    assert fro <= bound * (1 + 1e-6)
    # the per-channel columns are bounded by |s_c| ||K_c|| ||phi'(K_c x)|| with ||K_c||^2 <= 4 (FD)
    u = _d(x)
    s = np.sqrt(u * u + nu[:, None, None] ** 2)
    f1 = [np.sum((u / s)[:, c] ** 2) for c in range(2)]
    f2 = [np.sum((-nu[c] * u / s ** 3)[:, c] ** 2) for c in range(2)]
    want = math.sqrt(sum(4 * lam[c] ** 2 * (f1[c] + nu[c] ** 2 * f2[c]) for c in range(2)))
    assert bound == pytest.approx(want, rel=1e-12)
    assert comp.mixed_lipschitz(lam, nu) is not None and comp.hessian_lipschitz(lam, nu) > 0


def test_composite_value_masks_and_groups():
    x = np.arange(12.0).reshape(1, 3, 4) ** 1.5
    nu = 0.1
    # a 1 x 1 image has no differences: the anisotropic value is 0, the isotropic one counts the pixel
    one = np.array([[[2.0]]])
    assert float(Composite(FiniteDifference(), SmoothedL1()).value(one, 1.0, nu)) == 0.0
    assert float(Composite(FiniteDifference(), GroupSmoothedL1()).value(one, 1.0, nu)) == pytest.approx(nu)
    u = _d(x)
    want = np.sqrt(u[0, 0, :, :-1] ** 2 + nu ** 2).sum() + np.sqrt(u[0, 1, :-1, :] ** 2 + nu ** 2).sum()
    assert float(Composite(FiniteDifference(), SmoothedL1()).value(x, 1.0, nu)) == pytest.approx(want, rel=1e-14)


def test_composite_rejects_bad_parameters():
    comp = Composite(FiniteDifference(), GroupSmoothedL1())
    x = np.zeros((4, 4))
    with pytest.raises(ValueError, match="lam"):
        comp.grad(x, np.array([0.1, 0.2]), 0.1)
    with pytest.raises(ValueError, match=r"lam must be a scalar or of shape \(2,\)"):
        Composite(FiniteDifference(), SmoothedL1()).grad(x, np.ones(3), 0.1)
    with pytest.raises(ValueError, match="nu is required"):
        Composite(FiniteDifference(), SmoothedL1()).grad(x, 0.1, None)
    with pytest.raises(ValueError, match="channel axis"):
        Composite(Identity(), GroupSmoothedL1())
    with pytest.raises(TypeError, match="potential must be a Potential"):
        Composite(FiniteDifference(), "l1")
    with pytest.raises(ValueError, match="y is required"):
        Composite(FiniteDifference(), SmoothedL1()).fused_grad(x, 0.1, 0.1, None, 1.0)


def test_composite_derivative_suite(rng):
    for reg, theta in [(vl.PotentialRegularizer(FiniteDifference(), GroupSmoothedL1()), np.array([-1.0, -1.0])),
                       (vl.PotentialRegularizer(Identity(), SmoothedL1()), np.array([-0.5, -1.0]))]:
        check_regularizer(reg, rng.randn(2, 6, 5), theta, rng=rng, raise_error=True)


def test_user_composition_runs_the_registered_kernel(monkeypatch, rng):
    """A user's PotentialRegularizer(FiniteDifference(), SmoothedL1()) gets the fused kernel (one call per step)."""
    reg = vl.PotentialRegularizer(FiniteDifference(), SmoothedL1())
    x = rng.rand(2, 16, 16)
    kset = composite_mod._find_kernel(reg.operator, reg.potential, x)
    if kset is None:
        pytest.skip("no registered numba kernel in this environment (numba missing or accelerators off)")
    calls = []
    real = kset.fused_grad

    def spy(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(kset, "fused_grad", spy)
    out, _ = reg.fused_grad(x, THETA, x, 1.0, x_prev=x, beta=0.5, step=0.1)
    assert len(calls) == 1
    from varlearn import _accel

    old = _accel.set_accelerated(False)
    try:
        reg.fused_grad(x, THETA, x, 1.0, x_prev=x, beta=0.5, step=0.1)
    finally:
        _accel.set_accelerated(old)
    assert len(calls) == 1  # accelerators off: the composition from the parts


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_smoothed_l1_fast_paths_match_the_formulas(xp, dtype, rng):
    """SmoothedL1 on CuPy runs fused elementwise kernels (accelerators on): same values as the formulas."""
    from varlearn import _accel

    t = xp.asarray(rng.randn(3, 4, 5).astype(dtype))
    v = xp.asarray(rng.randn(3, 4, 5).astype(dtype))
    p = SmoothedL1()
    tol = 1e-14 if dtype == np.float64 else 1e-6
    for nu in (0.3, xp.asarray(np.array([0.2, 0.5, 0.9])[:, None, None])):
        nn = to_numpy(nu) if not isinstance(nu, float) else nu
        tn, vn = to_numpy(t).astype(np.float64), to_numpy(v).astype(np.float64)
        s = tn * tn + nn * nn
        want = {"value": np.sqrt(s), "d1": tn / np.sqrt(s), "d2": nn * nn / s ** 1.5}
        for accel in (True, False):
            old = _accel.set_accelerated(accel)
            try:
                for name, ref in want.items():
                    got = getattr(p, name)(t, nu)
                    assert got.dtype == dtype and _rel(got, ref) <= tol, (name, accel)
                    buf = t.copy()
                    assert getattr(p, name)(buf, nu, out=buf) is buf and _rel(buf, ref) <= tol
                h = p.hess_apply(t, nu, v)
                assert h.dtype == dtype and _rel(h, want["d2"] * vn) <= tol
                buf = v.copy()
                assert p.hess_apply(t, nu, buf, out=buf) is buf and _rel(buf, want["d2"] * vn) <= tol
            finally:
                _accel.set_accelerated(old)


class _PlainRidge(vl.Regularizer):
    """A user regularizer with only the abstract methods: the fused passes come from the base class."""

    n_params = 1

    def init_params(self, rng=None):
        return np.array([-1.0])

    def value(self, x, theta):
        return 0.5 * math.exp(theta[0]) * np.vdot(x, x)

    def grad(self, x, theta):
        return math.exp(theta[0]) * x

    def hvp(self, x, theta, v):
        return math.exp(theta[0]) * v

    def mixed_vjp(self, x, theta, w):
        return np.array([math.exp(theta[0]) * np.vdot(x, w)])


@pytest.mark.parametrize("step", [None, 0.2])
@pytest.mark.parametrize("beta", [None, 0.5])
def test_default_and_sum_fused_passes(accel, rng, step, beta):
    x, y, xprev, v = (rng.randn(2, 6, 7) for _ in range(4))
    z = x if beta is None else x + beta * (x - xprev)
    tv = vl.TotalVariation()
    th_tv, th_r = np.array([-1.0, -2.0]), np.array([-0.7])
    ridge = _PlainRidge()
    total = tv + ridge
    theta = np.concatenate([th_tv, th_r])
    kw = dict(x_prev=None if beta is None else xprev, beta=beta or 0.0, step=step)
    for reg, th, g in [(ridge, th_r, math.exp(-0.7) * z + 0.8 * (z - y)),
                       (total, theta, reference(z, z, z, th_tv, True)["grad"] + math.exp(-0.7) * z + 0.8 * (z - y))]:
        want = g if step is None else z - step * g
        out = np.empty_like(x)
        res, gnorm = reg.fused_grad(x, th, y, 0.8, out=out, **kw)
        assert res is out and _rel(res, want) <= 1e-12 and gnorm == pytest.approx(np.linalg.norm(g), rel=1e-12)
        hv = reg.hvp(x, th, v) + 0.8 * v
        assert _rel(reg.fused_hvp(x, th, v, 0.8), hv) <= 1e-14 and _rel(reg.hvp_data(x, th, v, 0.8), hv) <= 1e-14
        assert _rel(reg.grad_data(x, th, y, 0.8), reg.grad(x, th) + 0.8 * (x - y)) <= 1e-14


def test_filter_bank_composition_derivatives_and_bounds(rng):
    """A user composition with a filter bank: derivatives checked, and every bound holds."""
    from varlearn.operators import FilterBank

    reg = vl.PotentialRegularizer(FilterBank(0.3 * rng.randn(3, 3, 3)), SmoothedL1())
    theta = np.array([-1.0, -1.0])
    x = rng.rand(2, 9, 8)
    check_regularizer(reg, x, theta, rng=rng, raise_error=True)
    prob = vl.DenoisingProblem(x, reg)
    h_norm = power_norm(lambda v: reg.hvp(x, theta, v), x.shape, rng)
    assert 0 < h_norm <= reg.lipschitz(theta) and reg.convexity(theta) == 0.0
    obs = observed_constants(prob, theta, x, radius=0.3, n_pairs=3, n_power=8, rng=rng)
    assert 0 < obs["L_H"] <= obs["claimed_L_H"] and 0 < obs["L_J"] <= obs["claimed_L_J"]
    assert 0 < obs["J_norm"] <= obs["claimed_J_norm"] * (1 + 1e-12)
    x32 = x.astype(np.float32)
    err = np.linalg.norm(reg.grad(x32, theta).astype(np.float64) - reg.grad(x32.astype(np.float64), theta))
    assert 0 < err <= reg.grad_error_bound(x32, theta)
