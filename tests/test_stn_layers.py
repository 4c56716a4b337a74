"""varlearn.stn.layers: convolution, gated layers, ReLU and dropout, checked in float64."""
import numpy as np
import pytest

from varlearn.backend import cupy_unusable_reason, cupy_usable
from varlearn.stn.layers import (
    Geometry,
    STNConv2d,
    STNLinear,
    channel_dropout_mask,
    conv2d,
    conv2d_backward,
    conv_padded,
    conv_padded_backward,
    conv_padded_input_grad,
    conv_padded_weight_grad,
    from_padded,
    relu,
    to_padded,
    zero_border,
)
from varlearn.testing import check_adjoint, check_grad


def _direct_conv(x, w, b=None):
    """Reference: y[n, o, i, j] = sum_{c,a,b} w[o, c, a, b] x[n, c, i + a - p, j + b - p] (zeros outside)."""
    k = w.shape[2]
    p = k // 2
    h, wd = x.shape[2:]
    xp_ = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    y = np.zeros((x.shape[0], w.shape[0], h, wd))
    for a in range(k):
        for bb in range(k):
            y += np.einsum("oc,nchw->nohw", w[:, :, a, bb], xp_[:, :, a:a + h, bb:bb + wd])
    if b is not None:
        y += b[None, :, None, None]
    return y


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_conv2d_matches_direct_sum(k, dtype):
    rng = np.random.default_rng(k)
    x = rng.standard_normal((3, 4, 7, 6))
    w = rng.standard_normal((5, 4, k, k))
    b = rng.standard_normal(5)
    y = conv2d(x.astype(dtype), w.astype(dtype), b.astype(dtype))
    assert y.dtype == dtype
    tol = 1e-12 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(y, _direct_conv(x, w, b), rtol=tol, atol=tol * 10)


def test_conv2d_blocks_cover_every_position(monkeypatch):
    """Tiny blocks (many im2col blocks and a ragged last one) give the same result."""
    from varlearn.stn import _conv as layers

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 30, 11))
    w = rng.standard_normal((4, 3, 3, 3))
    ref = conv2d(x, w)
    ref_back = conv2d_backward(x, w, ref)
    monkeypatch.setitem(layers._BLOCK_BYTES, "numpy", 1)
    assert len(Geometry(2, 30, 11, 3).blocks(27, 8, np)) > 2
    np.testing.assert_allclose(conv2d(x, w), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ref, _direct_conv(x, w), rtol=1e-12, atol=1e-12)
    for got, want in zip(conv2d_backward(x, w, ref), ref_back):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def _padded_case(seed, h, w):
    """5 examples, 3 -> 4 channels: geometry, padded input and output gradient, shared and per-example kernels."""
    rng = np.random.default_rng(seed)
    geom = Geometry(5, h, w, 3)
    x = to_padded(rng.standard_normal((5, 3, h, w)), geom)
    g = to_padded(rng.standard_normal((5, 4, h, w)), geom)
    return rng, geom, x, g, rng.standard_normal((4, 3, 3, 3)), rng.standard_normal((5, 4, 3, 3, 3))


def test_multi_image_blocks_give_the_same_result(monkeypatch):
    """The batched-GEMM path (blocks of several images, used on CuPy) agrees with the per-image path."""
    rng, geom, x, g, w_shared, w_per = _padded_case(5, 6, 7)
    bias = rng.standard_normal((4, 5))

    def run():
        return [zero_border(conv_padded(x, w_shared, geom, bias=bias[:, 0]), geom),
                zero_border(conv_padded(x, w_per, geom, bias=bias), geom),
                conv_padded_input_grad(g, w_per, geom), conv_padded_weight_grad(x, g, geom),
                conv_padded_weight_grad(x, g, geom, per_example=True),
                *conv_padded_backward(x, g, w_per, geom, per_example=True),
                *conv_padded_backward(x, g, w_shared, geom)]

    ref = run()
    # the fused backward equals the separate input and kernel gradients
    np.testing.assert_allclose(ref[5], ref[2], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ref[6], ref[4], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ref[7], conv_padded_input_grad(g, w_shared, geom), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ref[8], ref[3], rtol=1e-12, atol=1e-12)
    sz, lo = geom.hp * geom.wp, geom.lo
    mid = (lo + sz - lo) // 2
    blocks = [(b0, min(5, b0 + 2), s, e) for b0 in range(0, 5, 2) for s, e in ((lo, mid), (mid, sz - lo))]
    monkeypatch.setattr(Geometry, "blocks", lambda self, *a, **kw: blocks)
    for got, want in zip(run(), ref):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # and per-example kernels are what they claim: example b convolved with w_per[b]
    xb = from_padded(x, geom)
    for b in range(5):
        np.testing.assert_allclose(from_padded(ref[1], geom)[b], _direct_conv(xb[b:b + 1], w_per[b], bias[:, b])[0],
                                   rtol=1e-12, atol=1e-12)


def test_threaded_blocks_equal_the_serial_result(monkeypatch):
    """With two varlearn threads (blocks shared out by image, some images split) the results are identical."""
    import varlearn
    from varlearn.stn import _conv as layers

    _, geom, x, g, w_shared, w_per = _padded_case(8, 30, 9)

    def run():
        return [conv_padded(x, w_per, geom, bias=np.ones((4, 5))), conv_padded_weight_grad(x, g, geom),
                *conv_padded_backward(x, g, w_per, geom, per_example=True),
                *conv_padded_backward(x, g, w_shared, geom)]

    monkeypatch.setitem(layers._BLOCK_BYTES, "numpy", 1)  # 256-position blocks: images split in two
    assert len(geom.blocks(27, 8, np)) == 10
    with varlearn.threads(1):
        serial = run()
    with varlearn.threads(2):
        assert layers._accel.thread_info()["threads"] == 2
        threaded = run()
    for a, b in zip(serial, threaded):
        np.testing.assert_array_equal(zero_border(a.copy(), geom) if a.shape[-1] == geom.n else a,
                                      zero_border(b.copy(), geom) if b.shape[-1] == geom.n else b)


@pytest.mark.parametrize("k", [1, 3])
def test_conv2d_backward(k):
    rng = np.random.default_rng(10 + k)
    x = rng.standard_normal((2, 3, 5, 6))
    w = rng.standard_normal((4, 3, k, k))
    b = rng.standard_normal(4)
    g = rng.standard_normal((2, 4, 5, 6))
    dx, dw, db = conv2d_backward(x, w, g)
    check_grad(lambda v: np.vdot(g, conv2d(v, w, b)), lambda v: conv2d_backward(v, w, g)[0], x, rng=1,
               raise_error=True)
    check_grad(lambda v: np.vdot(g, conv2d(x, v, b)), lambda v: conv2d_backward(x, v, g)[1], w, rng=2,
               raise_error=True)
    check_grad(lambda v: np.vdot(g, conv2d(x, w, v)), lambda v: conv2d_backward(x, w, g)[2], b, rng=3,
               raise_error=True)
    # the input gradient is the exact adjoint of the (linear) convolution
    check_adjoint(lambda v: conv2d(v, w), lambda u: conv2d_backward(x, w, u)[0], x.shape, rng=4,
                  raise_error=True)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape


def test_padded_layout_round_trip_and_border():
    rng = np.random.default_rng(0)
    geom = Geometry(2, 4, 3, 5)
    x = rng.standard_normal((2, 3, 4, 3))
    buf = to_padded(x, geom)
    assert buf.shape == (3, geom.n)
    np.testing.assert_array_equal(from_padded(buf, geom), x)
    junk = buf + 1.0
    zero_border(junk, geom)
    np.testing.assert_array_equal(junk, to_padded(x + 1.0, geom))


def test_geometry_and_conv_refuse_bad_arguments():
    with pytest.raises(ValueError, match="kernel_size"):
        Geometry(1, 4, 4, 2)
    with pytest.raises(ValueError, match="height"):
        Geometry(1, 0, 4, 3)
    x = np.zeros((1, 2, 4, 4))
    with pytest.raises(ValueError, match="w must have shape"):
        conv2d(x, np.zeros((3, 1, 3, 3)))
    with pytest.raises(ValueError, match="odd"):
        conv2d(x, np.zeros((3, 2, 2, 2)))
    with pytest.raises(ValueError, match="x must have shape"):
        conv2d(np.zeros((2, 4, 4)), np.zeros((3, 2, 3, 3)))
    with pytest.raises(ValueError, match="grad_y"):
        conv2d_backward(x, np.zeros((3, 2, 3, 3)), np.zeros((1, 2, 4, 4)))


# ---------------------------------------------------------------------------- gated convolution
def _gated_setup(seed=0, c_in=3, c_out=4, n=2, k=3):
    rng = np.random.default_rng(seed)
    layer = STNConv2d(c_in, c_out, n, k)
    p = layer.init_params(rng, np.float64, np)
    p["A"] = rng.standard_normal(p["A"].shape)  # gating on
    p["b_e"] = rng.standard_normal(c_out)
    geom = Geometry(3, 5, 4, k)
    x = rng.standard_normal((3, c_in, 5, 4))
    lam = rng.standard_normal((3, n))
    g = rng.standard_normal((3, c_out, 5, 4))
    return layer, p, geom, x, lam, g


def _gated_loss(layer, p, geom, x, lam, g):
    y, _ = layer.forward(p, to_padded(x, geom), lam, geom)
    return float(np.vdot(g, from_padded(y, geom)))


def _gated_grads(layer, p, geom, x, lam, g):
    _, cache = layer.forward(p, to_padded(x, geom), lam, geom)
    grads, dx, dlam = layer.backward(p, cache, to_padded(g, geom))
    return grads, from_padded(dx, geom), dlam


def test_stn_conv_forward_is_the_gated_formula():
    layer, p, geom, x, lam, _ = _gated_setup()
    y, _ = layer.forward(p, to_padded(x, geom), lam, geom)
    gains = lam @ p["A"].T
    gw, gb = gains[:, :4], gains[:, 4:]
    ref = (_direct_conv(x, p["K_e"], p["b_e"]) + gw[:, :, None, None] * _direct_conv(x, p["K_h"])
           + (gb * p["b_h"])[:, :, None, None])
    np.testing.assert_allclose(from_padded(y, geom), ref, rtol=1e-12, atol=1e-12)
    # borders of the output are zero (the next layer reads them as padding)
    np.testing.assert_array_equal(y, to_padded(from_padded(y, geom), geom))


def test_stn_conv_with_zero_map_is_the_base_conv():
    rng = np.random.default_rng(3)
    layer = STNConv2d(2, 3, 4)
    p = layer.init_params(rng, np.float64, np)
    assert not p["A"].any()
    geom = Geometry(2, 6, 6, 3)
    x = rng.standard_normal((2, 2, 6, 6))
    for lam in (np.zeros((2, 4)), rng.standard_normal((2, 4))):
        y, _ = layer.forward(p, to_padded(x, geom), lam, geom)
        np.testing.assert_allclose(from_padded(y, geom), conv2d(x, p["K_e"], p["b_e"]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(STNConv2d.names) + ["x", "lam"])
def test_stn_conv_backward(name):
    layer, p, geom, x, lam, g = _gated_setup(seed=7)
    args = {"x": x, "lam": lam}

    def split(v):
        pp, a = dict(p), dict(args)
        if name in a:
            a[name] = v
        else:
            pp[name] = v
        return pp, a

    def fun(v):
        pp, a = split(v)
        return _gated_loss(layer, pp, geom, a["x"], a["lam"], g)

    def grad(v):
        pp, a = split(v)
        grads, dx, dlam = _gated_grads(layer, pp, geom, a["x"], a["lam"], g)
        return {"x": dx, "lam": dlam}.get(name, grads.get(name))

    start = args[name] if name in args else p[name]
    check_grad(fun, grad, start.copy(), rng=5, n_dirs=2, name=name, raise_error=True)


def test_stn_conv_skips_the_input_gradient_on_request():
    layer, p, geom, x, lam, g = _gated_setup()
    _, cache = layer.forward(p, to_padded(x, geom), lam, geom)
    assert layer.backward(p, cache, to_padded(g, geom), need_input_grad=False)[1] is None


# ---------------------------------------------------------------------------- gated linear
@pytest.mark.parametrize("bias", [True, False])
def test_stn_linear(bias):
    rng = np.random.default_rng(11)
    layer = STNLinear(5, 3, 2, bias=bias)
    p = layer.init_params(rng, np.float64, np)
    p["A"] = rng.standard_normal(p["A"].shape)
    x, lam, g = rng.standard_normal((4, 5)), rng.standard_normal((4, 2)), rng.standard_normal((4, 3))
    gains = lam @ p["A"].T
    y, _ = layer.forward(p, x, lam)
    ref = x @ p["W_e"].T + gains[:, :3] * (x @ p["W_h"].T)
    if bias:
        ref += p["b_e"] + gains[:, 3:] * p["b_h"]
    np.testing.assert_allclose(y, ref, rtol=1e-13)
    for name in list(layer.names) + ["x", "lam"]:
        def fun(v, name=name):
            pp = dict(p)
            xx, ll = (v if name == "x" else x), (v if name == "lam" else lam)
            if name in pp:
                pp[name] = v
            return float(np.vdot(g, layer.forward(pp, xx, ll)[0]))

        def grad(v, name=name):
            pp = dict(p)
            xx, ll = (v if name == "x" else x), (v if name == "lam" else lam)
            if name in pp:
                pp[name] = v
            grads, dx, dlam = layer.backward(pp, layer.forward(pp, xx, ll)[1], g)
            return {"x": dx, "lam": dlam}.get(name, grads.get(name))

        start = {"x": x, "lam": lam}.get(name, p.get(name))
        check_grad(fun, grad, start.copy(), rng=1, n_dirs=2, name=name, raise_error=True)


# ---------------------------------------------------------------------------- relu and dropout
def test_relu_in_place():
    a = np.array([-1.0, 0.0, 2.0])
    out = relu(a, out=a)
    assert out is a
    np.testing.assert_array_equal(a, [0.0, 0.0, 2.0])


def test_channel_dropout_mask_statistics():
    rng = np.random.default_rng(0)
    rates = np.array([0.0, 0.25, 0.5, 0.9])
    m = channel_dropout_mask(rates, 20000, rng, np.float64)
    assert m.shape == (4, 20000)
    np.testing.assert_array_equal(m[0], 1.0)
    for b, r in enumerate(rates):
        dropped = np.mean(m[b] == 0)
        assert abs(dropped - r) < 0.015, (b, dropped)
        np.testing.assert_allclose(m[b][m[b] > 0], 1.0 / (1.0 - r))
        assert abs(m[b].mean() - 1.0) < 0.06
    m32 = channel_dropout_mask(rates.astype(np.float32), 5, rng, np.float32)
    assert m32.dtype == np.float32
    # the same generator state draws the same mask
    np.testing.assert_array_equal(channel_dropout_mask(rates, 7, np.random.default_rng(3), np.float64),
                                  channel_dropout_mask(rates, 7, np.random.default_rng(3), np.float64))


def test_channel_dropout_refuses_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"dropout rates must lie in \[0, 1\)"):
        channel_dropout_mask(np.array([0.1, 1.0]), 3, rng, np.float64)
    with pytest.raises(ValueError, match=r"dropout rates must lie in \[0, 1\)"):
        channel_dropout_mask(np.array([-0.1]), 3, rng, np.float64)
    with pytest.raises(ValueError, match="dropout must be a"):
        channel_dropout_mask(np.zeros((2, 2)), 3, rng, np.float64)
    with pytest.raises(TypeError, match="rng must be"):
        channel_dropout_mask(np.zeros(2), 3, object(), np.float64)


@pytest.mark.gpu
def test_layers_agree_on_cupy():
    """Forward and backward of the gated conv agree between the array backends (GPU only)."""
    if not cupy_usable():
        pytest.skip(f"CuPy backend not usable: {cupy_unusable_reason()}")
    import cupy as xp

    layer, p, geom, x, lam, g = _gated_setup()
    ref = _gated_grads(layer, p, geom, x, lam, g)
    pd = {k: xp.asarray(v) for k, v in p.items()}
    got = _gated_grads(layer, pd, geom, xp.asarray(x), xp.asarray(lam), xp.asarray(g))
    for k in p:
        np.testing.assert_allclose(got[0][k].get(), ref[0][k], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got[1].get(), ref[1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got[2].get(), ref[2], rtol=1e-10, atol=1e-12)
