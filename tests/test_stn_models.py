"""varlearn.stn.models: gradients (float64 Taylor tests), the ungated base nets, configs and states."""
import json

import numpy as np
import pytest

from varlearn.operators import FilterBank
from varlearn.potentials import SmoothedL1
from varlearn.stn import MODELS, DnCNNSTN, LinearSTN, VariationalSTN, model_from_config
from varlearn.stn.layers import conv2d
from varlearn.testing import check_grad

RATES = np.array([0.0, 0.3, 0.6])


def _small(kind, dtype=np.float64, rng=0):
    if kind == "dncnn":
        return DnCNNSTN(2, depth=3, channels=4, dtype=dtype, rng=rng)
    if kind == "vn":
        return VariationalSTN(2, n_stages=2, n_filters=3, size=3, dtype=dtype, rng=rng)
    return LinearSTN(5, 4, 2, bias=True, dtype=dtype, rng=rng)


def _inputs(kind, seed=1):
    rng = np.random.default_rng(seed)
    y = rng.standard_normal((3, 5) if kind == "linear" else (3, 6, 5))
    return y, rng.standard_normal((3, 2)), rng.standard_normal(y.shape)


def _gate(model, seed=2):
    """Switch the gating on (the maps start at zero, where the gains' effect is invisible)."""
    rng = np.random.default_rng(seed)
    for k, v in model.params.items():
        if k.endswith(".A"):
            v[...] = 0.5 * rng.standard_normal(v.shape)


def _run(model, y, h, dropout):
    """Forward with masks drawn from a fixed seed (so every call uses the same masks)."""
    return model.forward(y, h, dropout=dropout, rng=np.random.default_rng(9) if dropout is not None else None)


@pytest.mark.parametrize("dropout", [None, RATES], ids=["eval", "dropout"])
@pytest.mark.parametrize("kind", ["dncnn", "vn", "linear"])
def test_gradients_in_weights_and_hypernet_input(kind, dropout):
    model = _small(kind)
    _gate(model)
    y, h, w = _inputs(kind)

    def loss(name):
        def fun(v):
            old = model.params[name].copy()
            model.params[name][...] = v
            out = _run(model, y, h, dropout)[0]
            model.params[name][...] = old
            return float(np.vdot(w, out))

        def grad(v):
            old = model.params[name].copy()
            model.params[name][...] = v
            grads, _ = model.backward(_run(model, y, h, dropout)[1], w)
            model.params[name][...] = old
            return grads[name]

        return fun, grad

    grads, _ = model.backward(_run(model, y, h, dropout)[1], w)
    assert set(grads) == set(model.params)
    for name in model.params:
        fun, grad = loss(name)
        check_grad(fun, grad, model.params[name].copy(), rng=3, n_dirs=1, name=name, raise_error=True)
    check_grad(lambda v: float(np.vdot(w, _run(model, y, v, dropout)[0])),
               lambda v: model.backward(_run(model, y, v, dropout)[1], w)[1], h.copy(), rng=4, n_dirs=2,
               name="h", raise_error=True)


def test_dropout_masks_change_the_output_and_rate_zero_is_eval():
    model = _small("dncnn")
    y, h, _ = _inputs("dncnn")
    ev = model.forward(y, h)[0]
    np.testing.assert_array_equal(model.forward(y, h, dropout=0.0, rng=np.random.default_rng(0))[0], ev)
    dr = model.forward(y, h, dropout=np.array([0.0, 0.5, 0.5]), rng=np.random.default_rng(0))[0]
    np.testing.assert_array_equal(dr[0], ev[0])
    assert np.abs(dr[1:] - ev[1:]).max() > 1e-3


def test_dncnn_with_zero_maps_is_the_plain_residual_cnn():
    model = DnCNNSTN(3, depth=4, channels=5, dtype=np.float64, rng=4)
    rng = np.random.default_rng(0)
    y = rng.standard_normal((2, 7, 6))
    a = y[:, None]
    for i in range(4):
        a = conv2d(a, model.params[f"conv{i}.K_e"], model.params[f"conv{i}.b_e"])
        if i < 3:
            a = np.maximum(a, 0)
    for h in (np.zeros((2, 3)), rng.standard_normal((2, 3))):
        np.testing.assert_allclose(model.forward(y, h)[0], y - a[:, 0], rtol=1e-12, atol=1e-12)


def test_vn_with_zero_maps_is_the_plain_unrolled_foe():
    model = VariationalSTN(2, n_stages=3, n_filters=4, size=3, dtype=np.float64, rng=5)
    rng = np.random.default_rng(1)
    y = rng.standard_normal((2, 8, 7))
    x = y
    pot = SmoothedL1()
    for t in range(3):
        p = {k.split(".")[1]: v for k, v in model.params.items() if k.startswith(f"stage{t}.")}
        bank = FilterBank(p["k_e"])
        infl = p["w_e"][:, None, None] * pot.d1(bank.apply(x), np.exp(p["log_nu"])[:, None, None])
        x = x - bank.adjoint(infl) - p["alpha"][0] * (x - y)
    for h in (np.zeros((2, 2)), rng.standard_normal((2, 2))):
        np.testing.assert_allclose(model.forward(y, h)[0], x, rtol=1e-12, atol=1e-12)


def test_linear_is_the_gated_matrix_product():
    model = LinearSTN(4, 3, 1, bias=False, rng=0)
    _gate(model)
    rng = np.random.default_rng(2)
    y, h = rng.standard_normal((5, 4)), rng.standard_normal((5, 1))
    p = model.params
    for b in range(5):
        d = p["layer2.W"] @ (p["layer1.W_e"] + (p["layer1.A"] @ h[b])[:, None] * p["layer1.W_h"])
        np.testing.assert_allclose(model.forward(y, h)[0][b], d @ y[b], rtol=1e-12)
    assert set(p) == {"layer1.W_e", "layer1.W_h", "layer1.A", "layer2.W"}


@pytest.mark.parametrize("kind", ["dncnn", "vn", "linear"])
def test_decay_value_and_gradient(kind):
    model = _small(kind)
    value, grads = model.decay()
    assert set(grads) == set(model.decay_keys) and set(grads) <= set(model.params)
    assert not any(k.endswith((".A", ".b_e", ".b_h")) for k in grads)
    np.testing.assert_allclose(value, 0.5 * sum(float((model.params[k] ** 2).sum()) for k in model.decay_keys))
    for name in model.decay_keys:
        def fun(v, name=name):
            old = model.params[name].copy()
            model.params[name][...] = v
            val = model.decay()[0]
            model.params[name][...] = old
            return val

        check_grad(fun, lambda v: v.copy(), model.params[name].copy(), rng=0, n_dirs=1, raise_error=True)


@pytest.mark.parametrize("kind", ["dncnn", "vn", "linear"])
def test_config_and_state_round_trip(kind):
    model = _small(kind, rng=0)
    _gate(model)
    config = json.loads(json.dumps(model.get_config()))
    assert config["model"] == kind and MODELS[kind] is type(model)
    fresh = model_from_config(config, rng=123)
    assert type(fresh) is type(model) and fresh.n_weights == model.n_weights > 0
    assert fresh.dtype == model.dtype
    y, h, _ = _inputs(kind)
    assert np.abs(fresh.forward(y, h)[0] - model.forward(y, h)[0]).max() > 0
    fresh.load_state({k: np.array(v) for k, v in model.state().items()})
    np.testing.assert_array_equal(fresh.forward(y, h)[0], model.forward(y, h)[0])
    f32 = model_from_config(config, dtype=np.float32)
    assert all(v.dtype == np.float32 for v in f32.params.values())
    with pytest.raises(ValueError, match="has dtype float64"):
        f32.load_state(model.state())


def test_load_state_refuses_mismatches_by_name():
    model = _small("dncnn")
    st = {k: v.copy() for k, v in model.state().items()}
    bad = dict(st)
    del bad["conv1.K_h"]
    with pytest.raises(ValueError, match="missing.*conv1.K_h"):
        model.load_state(bad)
    with pytest.raises(ValueError, match="unexpected.*extra"):
        model.load_state({**st, "extra": np.zeros(1)})
    with pytest.raises(ValueError, match=r"state\['conv0.A'\] has shape"):
        model.load_state({**st, "conv0.A": np.zeros((1, 1))})


def test_float32_model_matches_float64():
    y, h, w = _inputs("dncnn")
    m64, m32 = _small("dncnn"), _small("dncnn", dtype=np.float32)
    _gate(m64)
    _gate(m32)
    o64, c64 = m64.forward(y, h)
    o32, c32 = m32.forward(y.astype(np.float32), h.astype(np.float32))
    assert o32.dtype == np.float32
    np.testing.assert_allclose(o32, o64, rtol=1e-4, atol=1e-5)
    g64, gh64 = m64.backward(c64, w)
    g32, gh32 = m32.backward(c32, w.astype(np.float32))
    for k in g64:
        assert g32[k].dtype == np.float32
        np.testing.assert_allclose(g32[k], g64[k], rtol=1e-3, atol=1e-4 * np.abs(g64[k]).max())
    np.testing.assert_allclose(gh32, gh64, rtol=1e-3, atol=1e-4 * np.abs(gh64).max())


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(ValueError, match="n_hyper"):
        DnCNNSTN(0)
    with pytest.raises(ValueError, match="depth"):
        DnCNNSTN(1, depth=1)
    with pytest.raises(TypeError, match="channels"):
        DnCNNSTN(1, channels=2.5)
    with pytest.raises(ValueError, match="kernel_size"):
        DnCNNSTN(1, kernel_size=4)
    with pytest.raises(ValueError, match="dtype"):
        DnCNNSTN(1, dtype=np.float16)
    with pytest.raises(ValueError, match="xp"):
        DnCNNSTN(1, xp=json)
    with pytest.raises(TypeError, match="rng"):
        DnCNNSTN(1, rng="seed")
    with pytest.raises(ValueError, match="potential"):
        VariationalSTN(1, potential="gauss")
    with pytest.raises(ValueError, match="size"):
        VariationalSTN(1, size=4)
    with pytest.raises(ValueError, match="nu"):
        VariationalSTN(1, nu=0.0)
    with pytest.raises(ValueError, match="hidden"):
        LinearSTN(3, 0, 1)
    with pytest.raises(ValueError, match="config\\['model'\\]"):
        model_from_config({"model": "resnet"})
    with pytest.raises(ValueError, match="config does not fit"):
        model_from_config({"model": "dncnn", "n_hyper": 1, "width": 3})
    model = _small("dncnn")
    y, h, _ = _inputs("dncnn")
    with pytest.raises(ValueError, match="y must have shape"):
        model.forward(y[0], h)
    with pytest.raises(ValueError, match="y has dtype float32"):
        model.forward(y.astype(np.float32), h)
    with pytest.raises(TypeError, match="y must be a NumPy or CuPy array"):
        model.forward(y.tolist(), h)
    with pytest.raises(ValueError, match=r"h must have shape \(3, 2\)"):
        model.forward(y, h[:, :1])
    with pytest.raises(ValueError, match="rng must be given"):
        model.forward(y, h, dropout=RATES)
    with pytest.raises(ValueError, match=r"dropout must have shape \(3,\)"):
        model.forward(y, h, dropout=RATES[:2], rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="dropout rates"):
        model.forward(y, h, dropout=np.array([0.0, 1.0, 0.1]), rng=np.random.default_rng(0))
    lin = _small("linear")
    with pytest.raises(ValueError, match=r"y must have shape \(B, 5\)"):
        lin.forward(np.zeros((3, 4)), h)


def test_benchmark_script_smoke_and_no_memory_growth():
    """scripts/benchmark_stn.py at a tiny size: the live allocations do not grow with the number of steps."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "benchmark_stn.py"
    spec = importlib.util.spec_from_file_location("benchmark_stn", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows, mem = mod.main(["--no-torch", "--batch", "2", "--size", "12", "--channels", "4", "--depth", "3",
                          "--repeat", "1", "--steps", "12"])
    assert set(rows) == {"conv fwd+bwd, varlearn NCHW", "conv fwd+bwd, varlearn padded", "STN step, varlearn"}
    assert all(t > 0 for t in rows.values())
    assert mem["peak_kib"] > 0
    assert mem["live_kib_after_12"] - mem["live_kib_after_5"] < 0.05 * mem["peak_kib"], mem


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["dncnn", "vn", "linear"])
def test_models_agree_on_cupy(kind):
    """Forward and backward on CuPy equal the NumPy results (GPU only)."""
    from varlearn.backend import cupy_unusable_reason, cupy_usable

    if not cupy_usable():
        pytest.skip(f"CuPy backend not usable: {cupy_unusable_reason()}")
    import cupy

    ref = _small(kind)
    _gate(ref)
    dev = model_from_config(ref.get_config(), xp=cupy)
    dev.load_state(ref.state())
    y, h, w = _inputs(kind)
    out, cache = ref.forward(y, h)
    grads, gh = ref.backward(cache, w)
    out_d, cache_d = dev.forward(cupy.asarray(y), cupy.asarray(h))
    grads_d, gh_d = dev.backward(cache_d, cupy.asarray(w))
    np.testing.assert_allclose(out_d.get(), out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gh_d.get(), gh, rtol=1e-9, atol=1e-12)
    for k in grads:
        np.testing.assert_allclose(grads_d[k].get(), grads[k], rtol=1e-9, atol=1e-12)
    dropped = dev.forward(cupy.asarray(y), cupy.asarray(h), dropout=cupy.asarray(RATES),
                        rng=cupy.random.default_rng(0))[0]
    assert float(cupy.abs(dropped - out_d).max()) > 0  # masks drawn on the device change the output
    with pytest.raises(TypeError, match="rng is a numpy generator"):
        dev.forward(cupy.asarray(y), cupy.asarray(h), dropout=cupy.asarray(RATES), rng=np.random.default_rng(0))
