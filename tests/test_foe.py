"""Filter banks (correlation with reflect padding) and the Field-of-Experts regularizer."""
import math

import numpy as np
import pytest
from registry import REGULARIZERS, power_norm

import varlearn as vl
import varlearn._filterbank as fbmod
from varlearn.backend import to_numpy
from varlearn.operators import FilterBank
from varlearn.potentials import Huber, LogStudentT, SmoothedL1
from varlearn.testing import check_adjoint, check_grad, check_mixed, check_regularizer


@pytest.fixture(params=["default", "bands", "col2im_other"])
def blocks(request, monkeypatch):
    """Run with the default work blocks, with one-row bands (the band code path), and
    with the other col2im strategy (scatter-add on CuPy, gather on NumPy)."""
    if request.param == "bands":
        monkeypatch.setitem(fbmod._BLOCK_BYTES, "numpy", 1)
        monkeypatch.setitem(fbmod._BLOCK_BYTES, "cupy", 1)
    elif request.param == "col2im_other":
        for name in ("numpy", "cupy"):
            monkeypatch.setitem(fbmod._COL2IM_GATHER, name, not fbmod._COL2IM_GATHER[name])
    return request.param


def _reference_apply(filters, x):
    """Slow reference: explicit loops over the taps on the np.pad(mode="reflect") image."""
    k, s, _ = filters.shape
    p = s // 2
    x3 = x.reshape((-1,) + x.shape[-2:])
    h, w = x3.shape[-2:]
    xpad = np.pad(x3, ((0, 0), (p, p), (p, p)), mode="reflect")
    out = np.zeros((x3.shape[0], k, h, w))
    for i in range(k):
        for a in range(s):
            for b in range(s):
                out[:, i] += filters[i, a, b] * xpad[:, a:a + h, b:b + w]
    return out.reshape(x.shape[:-2] + (k, h, w))


def _dense(op_apply, shape):
    """Dense matrix of a linear map on arrays of ``shape`` (tiny cases only)."""
    n = int(np.prod(shape))
    cols = []
    for j in range(n):
        e = np.zeros(n)
        e[j] = 1.0
        cols.append(np.asarray(op_apply(e.reshape(shape))).ravel())
    return np.stack(cols, axis=1)


def _theta(reg, rng, scale=0.1):
    return reg.init_params() + scale * rng.standard_normal(reg.n_params)


# ---------------------------------------------------------------------------- FilterBank
@pytest.mark.parametrize("s", [3, 5, 7])
@pytest.mark.parametrize("shape", [(9, 8), (2, 8, 11), (3, 12, 9)])
def test_filterbank_adjoint(xp, rng, blocks, s, shape):
    bank = FilterBank(xp.asarray(rng.standard_normal((4, s, s))))
    check_adjoint(bank.apply, bank.adjoint, shape, like=xp.zeros(1), rng=rng, rtol=1e-12, raise_error=True)


def test_filterbank_adjoint_batch_axes(xp, rng, blocks):
    bank = FilterBank(xp.asarray(rng.standard_normal((3, 5, 5))))
    check_adjoint(bank.apply, bank.adjoint, (2, 2, 7, 6), like=xp.zeros(1), rng=rng, rtol=1e-12, raise_error=True)


@pytest.mark.parametrize("s", [1, 3, 7])
def test_filterbank_apply_matches_reference(xp, rng, blocks, s):
    filters = rng.standard_normal((3, s, s))
    x = rng.standard_normal((2, s + 2, s + 4))
    got = to_numpy(FilterBank(xp.asarray(filters)).apply(xp.asarray(x)))
    np.testing.assert_allclose(got, _reference_apply(filters, x), rtol=1e-12, atol=1e-12)
    # a single image (H, W) gives (K, H, W)
    got2 = to_numpy(FilterBank(xp.asarray(filters)).apply(xp.asarray(x[1])))
    np.testing.assert_allclose(got2, got[1], rtol=1e-12, atol=1e-12)


def test_filterbank_correlation_convention():
    # a single tap at (a, b) reads x[p + (a - c, b - c)]: correlation, not convolution
    f = np.zeros((1, 3, 3))
    f[0, 2, 1] = 1.0  # row offset +1
    x = np.arange(36.0).reshape(6, 6)
    y = FilterBank(f).apply(x)[0]
    np.testing.assert_array_equal(y[:-1], x[1:])
    np.testing.assert_array_equal(y[-1], x[-2])  # reflect: row H -> row H-2


def test_filterbank_out_and_dtype(xp, rng):
    bank = FilterBank(xp.asarray(rng.standard_normal((2, 3, 3))))
    x = xp.asarray(rng.standard_normal((2, 6, 7)).astype(np.float32))
    u = bank.apply(x)
    assert u.dtype == np.float32 and u.shape == (2, 2, 6, 7)
    out = xp.empty_like(u)
    assert bank.apply(x, out=out) is out
    np.testing.assert_allclose(to_numpy(out), to_numpy(u))
    a = bank.adjoint(u)
    assert a.dtype == np.float32 and a.shape == x.shape
    out2 = xp.empty_like(x)
    assert bank.adjoint(u, out=out2) is out2
    np.testing.assert_allclose(to_numpy(out2), to_numpy(a))
    assert bank.tap_vjp(x, u).dtype == np.float32
    with pytest.raises(ValueError, match="out must be a C-contiguous"):
        bank.apply(x, out=xp.empty((2, 2, 6, 7)))
    with pytest.raises(ValueError, match="out must be a C-contiguous"):
        bank.adjoint(u, out=xp.empty((2, 7, 6), dtype=np.float32).transpose(0, 2, 1))


def test_filterbank_tap_vjp(xp, rng, blocks):
    s, k = 5, 3
    x = xp.asarray(rng.standard_normal((2, 7, 9)))
    u = xp.asarray(rng.standard_normal((2, k, 7, 9)))
    taps0 = xp.asarray(rng.standard_normal((k, s, s)))

    def fun(taps):
        return float(xp.vdot(u.ravel(), FilterBank(taps).apply(x).ravel()))

    def grad(taps):
        return FilterBank(taps).tap_vjp(x, u)

    check_grad(fun, grad, taps0, rng=rng, raise_error=True)
    # linear in the taps: the directional derivative is exact
    d = xp.asarray(rng.standard_normal((k, s, s)))
    lhs = fun(d)
    rhs = float(xp.vdot(grad(taps0).ravel(), d.ravel()))
    assert abs(lhs - rhs) <= 1e-12 * (abs(lhs) + 1.0)


@pytest.mark.parametrize("s", [1, 3, 5, 7])
@pytest.mark.parametrize("hw", [(0, 1), (2, 5), (5, 6)], ids=["smallest", "small", "medium"])
def test_reflect_pad_and_fold(rng, s, hw):
    p = s // 2
    shape = (2, p + 1 + hw[0], p + 1 + hw[1])
    x = rng.standard_normal(shape)
    xpad = fbmod.reflect_pad(x, p)
    np.testing.assert_array_equal(xpad, np.pad(x, ((0, 0), (p, p), (p, p)), mode="reflect"))
    z = rng.standard_normal(xpad.shape)
    lhs = np.vdot(xpad, z)
    rhs = np.vdot(x, fbmod.fold_pad(z.copy(), p))
    assert abs(lhs - rhs) <= 1e-12 * np.linalg.norm(z) * np.linalg.norm(xpad)


@pytest.mark.parametrize("s", [1, 3, 5, 7])
@pytest.mark.parametrize("hw", [(0, 1), (2, 3), (8, 9)], ids=["smallest", "small", "large"])
def test_filterbank_norm_bound(rng, s, hw):
    p = s // 2
    shape = (p + 1 + hw[0], p + 1 + hw[1])
    filters = rng.standard_normal((3, s, s))
    filters[2] -= filters[2].mean()
    bank = FilterBank(filters)
    per = to_numpy(bank.filter_norm_bounds())
    assert per.shape == (3,)
    mats = [_dense(lambda z, i=i: FilterBank(filters[i:i + 1]).apply(z), shape) for i in range(3)]
    for i in range(3):
        assert np.linalg.norm(mats[i], 2) <= per[i] * (1 + 1e-12)
        assert per[i] <= 2 * np.abs(filters[i]).sum() * (1 + 1e-12)
    assert np.linalg.norm(_dense(bank.apply, shape), 2) <= bank.norm_bound() * (1 + 1e-12)
    w = rng.rand(3)
    gram = sum(wi * a.T @ a for wi, a in zip(w, mats))
    assert np.linalg.norm(gram, 2) <= fbmod.weighted_gram_bound(filters, w) * (1 + 1e-12)
    assert fbmod.weighted_gram_bound(filters, w) <= np.sum(w * per ** 2) * (1 + 1e-12)


def test_filterbank_norm_bound_is_close_for_random_filters(rng):
    # zero-mean random 7x7 filters: the true norm is about sup|k^|; the bound is within 2.2x
    f = rng.standard_normal((1, 7, 7))
    f -= f.mean()
    bank = FilterBank(f)
    v = rng.standard_normal((40, 40))
    for _ in range(100):
        v = bank.adjoint(bank.apply(v))
        v /= np.linalg.norm(v)
    true = math.sqrt(np.linalg.norm(bank.adjoint(bank.apply(v))))
    assert true <= bank.norm_bound() <= 2.2 * true
    assert bank.norm_bound() < 0.5 * (2 * np.abs(f).sum())


def test_filterbank_norm_bound_is_tight_for_a_corner_tap():
    # a corner tap is a shift whose mirrored border reaches one pixel twice per axis: ||K|| = 2
    f = np.zeros((1, 5, 5))
    f[0, 4, 4] = 1.0
    a = _dense(FilterBank(f).apply, (8, 9))
    assert np.linalg.norm(a, 2) == pytest.approx(2.0, rel=1e-12)
    assert FilterBank(f).norm_bound() == pytest.approx(2.0, rel=1e-12)


@pytest.mark.parametrize("with_v", [False, True], ids=["x", "x_v"])
def test_filterbank_pullback_equals_the_generic_default(xp, rng, blocks, with_v):
    """The blocked pullback (bands, several images per block, weights in the adjoint GEMM, fused
    parameter gradient) equals the one-block default of LinearOperator, through the same fn."""
    from varlearn.operators import LinearOperator

    k, s = 3, 5
    bank = FilterBank(xp.asarray(rng.standard_normal((k, s, s))))
    x = xp.asarray(rng.standard_normal((3, 8, 11)))
    v = xp.asarray(rng.standard_normal((3, 8, 11))) if with_v else None
    wts = xp.asarray(rng.rand(k) + 0.5)

    def fn(u, kv, ch):
        assert u.ndim == 3 and u.shape[1] == k and ch == slice(0, k)
        y = xp.tanh(u) if kv is None else xp.tanh(u) * kv
        return y, xp.stack([xp.sum(y * y, axis=(0, 2)), xp.sum(u, axis=(0, 2))], axis=1).astype(np.float64)

    def fn_param(u, kv, ch):
        y, st = fn(u, kv, ch)
        return y, (None if kv is None else xp.cos(u)), st

    for f, kw in [(fn, {}), (fn, {"weights": wts}), (fn_param, {"param_grad": True}),
                  (fn_param, {"param_grad": True, "weights": wts})]:
        got, st = bank.pullback(x, f, v, n_stats=2, **kw)
        ref, st_ref = LinearOperator.pullback(bank, x, f, v, n_stats=2, **kw)
        np.testing.assert_allclose(to_numpy(got), to_numpy(ref), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(to_numpy(st), to_numpy(st_ref), rtol=1e-12)
    out = xp.empty_like(x)
    assert bank.pullback(x, fn, v, weights=wts, out=out)[0] is out
    np.testing.assert_allclose(to_numpy(out), to_numpy(LinearOperator.pullback(bank, x, fn, v, weights=wts)[0]),
                               rtol=1e-12, atol=1e-12)
    assert bank.pullback(x, lambda u, kv, ch: (None, None), v) == (None, None)
    with pytest.raises(ValueError, match="weights must have shape"):
        bank.pullback(x, fn, v, weights=xp.ones(k + 1))
    u = bank.apply(x)
    pv = bank.param_vjp(x, u)
    assert pv.shape == (bank.n_params,)
    np.testing.assert_array_equal(to_numpy(pv), to_numpy(bank.tap_vjp(x, u)).ravel())  # tap_vjp: check_grad above


@pytest.mark.parametrize("s", [1, 3, 5, 7])
def test_filterbank_row_norm_bounds(rng, s):
    """max_p ||row p of K_i||_2 <= row_norm_bounds()[i] for every accepted image size (tiny ones included,
    where a window passes both mirrors); attained by a single tap; below ||k_i||_1 for random 7x7 filters."""
    c = s // 2
    worst = 0.0
    one_tap = np.zeros((2, s, s))
    one_tap[:, 0, -1] = [1.5, -0.5]
    for h in range(c + 1, c + 4):
        for w in (c + 1, c + 3):
            for f in (rng.standard_normal((2, s, s)), np.ones((2, s, s)), one_tap):
                bank = FilterBank(f)
                rows = np.stack([bank.apply(e.reshape(h, w)).reshape(2, -1) for e in np.eye(h * w)], axis=2)
                norms = np.sqrt((rows ** 2).sum(axis=2)).max(axis=1)
                bound = bank.row_norm_bounds()
                assert np.all(norms <= bound * (1 + 1e-12))
                worst = max(worst, float(np.max(norms / bound)))
    assert worst == pytest.approx(1.0, rel=1e-12)
    if s == 7:
        f = rng.standard_normal((8, 7, 7))
        assert np.all(FilterBank(f).row_norm_bounds() < 0.7 * np.abs(f).sum(axis=(1, 2)))


def test_filterbank_bad_input():
    with pytest.raises(ValueError, match="filters"):
        FilterBank(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="filters"):
        FilterBank(np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match="filters"):
        FilterBank(np.zeros((0, 3, 3)))
    bank = FilterBank(np.ones((2, 5, 5)))
    with pytest.raises(ValueError, match="at least 3x3"):
        bank.apply(np.zeros((2, 8)))
    with pytest.raises(ValueError, match="u must have shape"):
        bank.adjoint(np.zeros((3, 8, 8)))
    with pytest.raises(TypeError, match="x must be"):
        bank.apply([[1.0]])


# ---------------------------------------------------------------------------- FieldOfExperts
def test_foe_layout_and_counts():
    reg = vl.FieldOfExperts(n_filters=48, size=7, rng=0)
    assert reg.n_params == 2449
    layout = reg.param_layout()
    assert [name for name, _ in layout] == ["log_global_weight", "log_weights", "log_smoothings", "filters"]
    covered = np.zeros(reg.n_params, dtype=int)
    start = 0
    for _, sl in layout:
        assert sl.start == start
        covered[sl] += 1
        start = sl.stop
    assert start == reg.n_params and np.all(covered == 1)
    fixed = vl.FieldOfExperts(n_filters=48, size=7, learn_filters=False, rng=0)
    assert fixed.n_params == 97
    assert fixed.param_layout()[-1] == ("log_smoothings", slice(49, 97))


def test_foe_init_params():
    reg = vl.FieldOfExperts(n_filters=48, size=7, rng=3)
    th = reg.init_params()
    assert th.dtype == np.float64 and th.shape == (2449,)
    np.testing.assert_array_equal(th[:97], -3.0)
    f = th[97:].reshape(48, 7, 7)
    np.testing.assert_allclose(f.mean(axis=(1, 2)), 0.0, atol=1e-14)
    assert 0.8 * math.sqrt(1 / 7) < f.std() < 1.2 * math.sqrt(1 / 7)  # Xavier std sqrt(2/14)
    # reproducible: the same instance, and the same seed, give the same θ
    np.testing.assert_array_equal(reg.init_params(), th)
    np.testing.assert_array_equal(vl.FieldOfExperts(n_filters=48, size=7, rng=3).init_params(), th)
    np.testing.assert_array_equal(vl.FieldOfExperts(n_filters=4, size=3).init_params(),
                                  vl.FieldOfExperts(n_filters=4, size=3).init_params())
    # an explicit rng draws fresh filters
    a = reg.init_params(np.random.RandomState(1))
    b = reg.init_params(np.random.default_rng(1))
    assert not np.array_equal(a[97:], th[97:]) and not np.array_equal(a[97:], b[97:])
    np.testing.assert_array_equal(a, reg.init_params(np.random.RandomState(1)))


@pytest.mark.parametrize("n_filters,size", [(3, 3), (2, 7)])
def test_foe_derivatives(xp, rng, blocks, accel, n_filters, size):
    reg = vl.FieldOfExperts(n_filters=n_filters, size=size, rng=rng)
    theta = xp.asarray(_theta(reg, rng))
    x = xp.asarray(rng.rand(2, size + 2, size + 4))
    check_regularizer(reg, x, theta, rng=rng, raise_error=True)


@pytest.mark.parametrize("potential", [LogStudentT(), Huber()], ids=["student_t", "huber"])
def test_foe_generic_potential_matches(rng, potential):
    # the generic potential path: checked derivatives where they are smooth, and the same
    # numbers as the smoothed-l1 fast path when the potential is smoothed l1 in disguise
    reg = vl.FieldOfExperts(n_filters=2, size=3, rng=rng, potential=potential)
    theta = _theta(reg, rng)
    x = rng.rand(2, 5, 6)
    if isinstance(potential, Huber):  # phi'' jumps: no Hessian Taylor test
        check_grad(lambda y: reg.value(y, theta), lambda y: reg.grad(y, theta), x, rng=rng, raise_error=True)
        check_mixed(reg.grad, reg.mixed_vjp, x, theta, rng=rng, blocks=reg.param_layout(), raise_error=True)
    else:
        check_regularizer(reg, x, theta, rng=rng, raise_error=True)


@pytest.mark.parametrize("base", [SmoothedL1, Huber, LogStudentT])
def test_foe_folded_path_matches_plain_path(rng, base):
    class Plain(base):  # the same potential without its homogeneity: smoothings not folded into the filters
        homogeneity = None

    fast = vl.FieldOfExperts(n_filters=3, size=5, rng=7, potential=base())
    slow = vl.FieldOfExperts(n_filters=3, size=5, rng=7, potential=Plain())
    assert fast._fold and not slow._fold
    theta = _theta(fast, rng)
    x, v = rng.rand(2, 8, 9), rng.standard_normal((2, 8, 9))
    for name, args in [("value", (x, theta)), ("grad", (x, theta)), ("hvp", (x, theta, v)),
                       ("mixed_vjp", (x, theta, v))]:
        np.testing.assert_allclose(getattr(fast, name)(*args), getattr(slow, name)(*args), rtol=1e-10, atol=1e-12)


def test_foe_matches_potential_regularizer(rng):
    # one filter: R = e^{θ0+θ1} Σ φ(k ⋆ x; e^{θ2}) = PotentialRegularizer(FilterBank(k), SmoothedL1)
    reg = vl.FieldOfExperts(n_filters=1, size=5, rng=2)
    theta = _theta(reg, rng)
    ref = vl.PotentialRegularizer(FilterBank(theta[3:].reshape(1, 5, 5)), SmoothedL1())
    t2 = np.array([theta[0] + theta[1], theta[2]])
    x, v = rng.rand(3, 9, 8), rng.standard_normal((3, 9, 8))
    np.testing.assert_allclose(reg.value(x, theta), ref.value(x, t2), rtol=1e-12)
    np.testing.assert_allclose(reg.grad(x, theta), ref.grad(x, t2), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(reg.hvp(x, theta, v), ref.hvp(x, t2, v), rtol=1e-10, atol=1e-14)
    m, mref = reg.mixed_vjp(x, theta, v), ref.mixed_vjp(x, t2, v)
    np.testing.assert_allclose(m[0], mref[0], rtol=1e-10)
    np.testing.assert_allclose(m[2], mref[1], rtol=1e-10)


def test_foe_fixed_filters(xp, rng):
    reg = vl.FieldOfExperts(n_filters=3, size=3, learn_filters=False, rng=rng)
    assert reg.n_params == 7 and reg.filters.shape == (3, 3, 3)
    theta = xp.asarray(_theta(reg, rng))
    x = xp.asarray(rng.rand(2, 6, 5))
    check_regularizer(reg, x, theta, rng=rng, raise_error=True)
    learned = vl.FieldOfExperts(n_filters=3, size=3, filters=reg.filters)
    full = xp.concatenate([theta, xp.asarray(reg.filters.ravel())])
    np.testing.assert_allclose(to_numpy(reg.grad(x, theta)), to_numpy(learned.grad(x, full)), rtol=1e-12)
    np.testing.assert_allclose(to_numpy(reg.mixed_vjp(x, theta, x)), to_numpy(learned.mixed_vjp(x, full, x))[:7],
                               rtol=1e-12)


def test_foe_float32(xp, rng):
    reg = vl.FieldOfExperts(n_filters=4, size=5, rng=rng)
    theta = _theta(reg, rng)
    x64 = rng.rand(2, 9, 10)
    v64 = rng.standard_normal((2, 9, 10))
    x32, v32 = xp.asarray(x64.astype(np.float32)), xp.asarray(v64.astype(np.float32))
    th = xp.asarray(theta)
    for name, a32, a64, out_dtype in [
        ("value", (x32, th), (x64, theta), np.float32),
        ("grad", (x32, th), (x64, theta), np.float32),
        ("hvp", (x32, th, v32), (x64, theta, v64), np.float32),
        ("mixed_vjp", (x32, th, v32), (x64, theta, v64), np.float64),  # shaped and typed like θ
    ]:
        r32 = getattr(reg, name)(*a32)
        r64 = getattr(reg, name)(*a64)
        assert r32.dtype == out_dtype, name
        scale = np.abs(r64).max()
        # float32 round-off through two GEMMs and the potential: about 1e-6 relative
        np.testing.assert_allclose(to_numpy(r32), r64, rtol=1e-3, atol=1e-4 * scale, err_msg=name)
    assert reg.mixed_vjp(x32, th.astype(np.float32), v32).dtype == np.float32


def test_foe_grad_data(xp, rng):
    reg = vl.FieldOfExperts(n_filters=3, size=3, rng=rng)
    theta = xp.asarray(_theta(reg, rng))
    x, y = xp.asarray(rng.rand(2, 6, 7)), xp.asarray(rng.rand(2, 6, 7))
    ref = to_numpy(reg.grad(x, theta)) + 0.5 * to_numpy(x - y)
    np.testing.assert_allclose(to_numpy(reg.grad_data(x, theta, y, 0.5)), ref, rtol=1e-12)
    out = xp.empty_like(x)
    assert reg.grad_data(x, theta, y, 0.5, out=out) is out
    np.testing.assert_allclose(to_numpy(out), ref, rtol=1e-12)
    v = xp.asarray(rng.standard_normal((2, 6, 7)))
    np.testing.assert_allclose(to_numpy(reg.hvp_data(x, theta, v, 2.0)),
                               to_numpy(reg.hvp(x, theta, v)) + 2.0 * to_numpy(v), rtol=1e-12)


def test_foe_single_image(rng):
    reg = vl.FieldOfExperts(n_filters=2, size=3, rng=rng)
    theta = _theta(reg, rng)
    x = rng.rand(2, 6, 7)
    g = reg.grad(x, theta)
    assert reg.grad(x[0], theta).shape == (6, 7)
    np.testing.assert_allclose(reg.grad(x[0], theta), g[0], rtol=1e-12)
    np.testing.assert_allclose(reg.value(x[0], theta) + reg.value(x[1], theta), reg.value(x, theta), rtol=1e-12)


@pytest.mark.parametrize("size", [3, 7])
def test_foe_lipschitz_bounds_hessian(rng, size):
    reg = vl.FieldOfExperts(n_filters=3, size=size, rng=rng)
    theta = _theta(reg, rng, scale=0.5)
    shape = (2, size // 2 + 2, size + 2)
    bound = reg.lipschitz(theta)
    for x in (rng.rand(*shape), 1e-3 * rng.rand(*shape)):  # tiny x: near the curvature maximum
        est = power_norm(lambda v, x=x: reg.hvp(x, theta, v), shape, rng, n_iter=200)
        assert 0 < est <= bound
    # the bound is the weighted Gram bound with weights e^{θ0+θi} / nu_i
    lam, nu = np.exp(theta[0] + theta[1:4]), np.exp(theta[4:7])
    assert bound == pytest.approx(fbmod.weighted_gram_bound(theta[7:].reshape(3, size, size), lam / nu), rel=1e-12)
    assert reg.convexity(theta) == 0.0
    assert reg.lipschitz_is_loose(theta) is True


def test_foe_hessian_and_mixed_lipschitz(rng):
    reg = vl.FieldOfExperts(n_filters=2, size=3, rng=rng)
    theta = _theta(reg, rng)
    assert reg.mixed_lipschitz(theta) is None  # learned filters: only on a ball (mixed_lipschitz_at)
    lh = reg.hessian_lipschitz(theta)
    fixed = vl.FieldOfExperts(n_filters=2, size=3, learn_filters=False, filters=reg.filters)
    tf = theta[:5]
    lm = fixed.mixed_lipschitz(tf)
    assert math.isfinite(lh) and math.isfinite(lm)
    shape = (1, 5, 6)
    for _ in range(20):
        x = 0.05 * rng.standard_normal(shape)
        d = 0.02 * rng.standard_normal(shape)
        v = rng.standard_normal(shape)
        dh = np.linalg.norm(reg.hvp(x + d, theta, v) - reg.hvp(x, theta, v))
        assert dh <= lh * np.linalg.norm(d) * np.linalg.norm(v)
        dm = np.linalg.norm(fixed.mixed_vjp(x + d, tf, v) - fixed.mixed_vjp(x, tf, v))
        assert dm <= lm * np.linalg.norm(d) * np.linalg.norm(v)
    assert reg.convexity(theta) == 0.0
    student = vl.FieldOfExperts(n_filters=2, size=3, rng=rng, potential=LogStudentT())
    assert student.convexity(theta) < 0.0


def _jacobian(prob, x, theta):
    """J = ∂θ∇ₓh as an explicit (n, p) matrix, one mixed_vjp per pixel."""
    n = x.size
    return np.stack([prob.mixed_vjp(x, theta, e.reshape(x.shape)) for e in np.eye(n)])


@pytest.mark.parametrize("learn,size", [(True, 3), (True, 7), (False, 5)])
def test_foe_mixed_constants_are_bounds(learn, size, rng):
    """Issue 12 (item 2): analytic ‖J‖ and L_J of FoE (learned filters too) bound the true values."""
    clean = rng.random((1, 9, 9))
    reg = vl.FieldOfExperts(n_filters=2, size=size, rng=1, learn_filters=learn)
    prob = vl.DenoisingProblem(clean + 0.1 * rng.standard_normal(clean.shape), reg)
    theta = reg.init_params() + 0.3 * rng.standard_normal(reg.n_params)
    x = vl.solve_lower(prob, theta, 1e-8).x
    J = _jacobian(prob, x, theta)
    true_norm = np.linalg.norm(J, 2)
    bound = prob.mixed_norm_bound(x, theta)
    assert true_norm <= bound <= 10 * true_norm
    radius = 0.05
    L_J = prob.mixed_lipschitz_at(x, theta, radius)
    if not learn:
        assert L_J == prob.mixed_lipschitz(theta)
    for _ in range(4):
        for center in (x, x + radius * 0.5 * rng.standard_normal(x.shape) / 9):
            d = rng.standard_normal(x.shape)
            d *= radius * rng.uniform(0.1, 1.0) / np.linalg.norm(d)
            far = center + d
            if np.linalg.norm(far - x) > radius or np.linalg.norm(center - x) > radius:
                continue
            diff = np.linalg.norm(_jacobian(prob, far, theta) - _jacobian(prob, center, theta), 2)
            assert diff <= L_J * np.linalg.norm(d)


def test_foe_error_bound_is_exact_by_default_and_never_below_the_error(rng):
    """FoE's ω uses exact constants (bound_exact True); it is never below the true error, and the
    estimator stays available (constants="estimate", flagged not exact)."""
    from varlearn.hypergradient import hypergradient

    for size, learn in ((3, True), (5, True), (3, False)):
        clean = rng.random((1, 10, 10))
        reg = vl.FieldOfExperts(n_filters=2, size=size, rng=2, learn_filters=learn)
        prob = vl.DenoisingProblem(clean + 0.1 * rng.standard_normal(clean.shape), reg)
        U = vl.SquaredError(clean)
        theta = reg.init_params() + 0.3 * rng.standard_normal(reg.n_params)
        ref = hypergradient(prob, U, theta, 1e-11, 1e-12, lower_maxiter=100000)
        for eps in (1e-1, 1e-3, 1e-5):
            for x0 in (None, ref.x + 1e-3 * rng.standard_normal(ref.x.shape)):
                hg = hypergradient(prob, U, theta, eps, eps, x0=x0)
                assert hg.bound_exact is True and hg.success
                assert np.linalg.norm(hg.grad - ref.grad) <= hg.error_bound - ref.error_bound
        est = hypergradient(prob, U, theta, 1e-3, 1e-3, constants="estimate")
        assert est.bound_exact is False and math.isfinite(est.error_bound)


def test_foe_describe(rng):
    reg = vl.FieldOfExperts(n_filters=2, size=3, rng=rng)
    theta = _theta(reg, rng)
    d = reg.describe(theta)
    assert d["global_weight"] == pytest.approx(math.exp(theta[0]))
    assert d["weights"] == pytest.approx(np.exp(theta[1:3]).tolist())
    assert d["smoothings"] == pytest.approx(np.exp(theta[3:5]).tolist())
    assert np.array(d["filters"]).shape == (2, 3, 3)
    np.testing.assert_allclose(np.array(d["filters"]), theta[5:].reshape(2, 3, 3))
    import json
    json.dumps(d)
    split = reg.split(theta)
    assert split["filters"].shape == (2, 3, 3)


def test_foe_bad_input():
    with pytest.raises(ValueError, match=r"n_filters must be >= 1, got 0"):
        vl.FieldOfExperts(n_filters=0)
    with pytest.raises(ValueError, match=r"n_filters must be >= 1, got -2"):
        vl.FieldOfExperts(n_filters=-2)
    with pytest.raises(ValueError, match=r"size must be odd, got 4"):
        vl.FieldOfExperts(size=4)
    with pytest.raises(ValueError, match=r"size must be >= 1, got 0"):
        vl.FieldOfExperts(size=0)
    with pytest.raises(TypeError, match="n_filters"):
        vl.FieldOfExperts(n_filters=2.5)
    with pytest.raises(ValueError, match="filters must have shape"):
        vl.FieldOfExperts(n_filters=2, size=3, filters=np.zeros((2, 5, 5)))
    with pytest.raises(ValueError, match="potential"):
        vl.FieldOfExperts(potential=vl.potentials.Quadratic())
    reg = vl.FieldOfExperts(n_filters=2, size=3)
    x = np.random.RandomState(0).rand(1, 6, 6)
    with pytest.raises(ValueError, match=r"theta must be a 1-D array of length 23, got shape \(22,\)"):
        reg.grad(x, np.zeros(22))
    with pytest.raises(ValueError, match="theta"):
        reg.value(x, np.zeros((23, 1)))
    with pytest.raises(ValueError, match="theta"):
        reg.lipschitz(np.zeros(24))
    with pytest.raises(ValueError, match="x must have shape"):
        reg.grad(np.zeros((1, 5)), reg.init_params())


@pytest.mark.parametrize("name", ["foe", "foe_7x7"])
def test_registry_entries(rng, name):
    reg, theta = REGULARIZERS[name](rng)
    assert theta is None
    theta = _theta(reg, rng)
    x = rng.rand(1, 9, 10)
    assert reg.grad(x, theta).shape == x.shape
    assert reg.mixed_vjp(x, theta, x).shape == theta.shape
