"""Tests of varlearn.stn.hyperparameters: transforms, refusals, perturbation, gradients through the container."""
import json
import math

import numpy as np
import pytest

from varlearn.stn.hyperparameters import Hyperparameter, HyperParameters, inv_softplus, sigmoid, softplus
from varlearn.stn.models import LinearSTN
from varlearn.testing import check_grad

CASES = [  # (range, transform, values inside)
    ((0.0, 0.5), None, [1e-6, 0.1, 0.25, 0.4999]),
    ((-1.5, 1.5), "identity", [-1.5, -0.3, 0.0, 1.2, 1.5]),
    ((1e-8, 1e-1), "log", [1e-8, 3e-6, 1e-3, 0.1]),
    ((0.0, math.inf), None, [1e-9, 0.3, 5.0, 400.0]),
    ((-math.inf, 2.0), None, [-300.0, -1.0, 1.999]),
    ((None, None), None, [-1e3, 0.0, 7.5]),
]


@pytest.mark.parametrize("rng_, transform, vals", CASES)
def test_transform_round_trip(rng_, transform, vals):
    s = Hyperparameter("h", vals[1], rng_, transform=transform)
    v = np.array(vals)
    back = s.to_constrained(s.to_unconstrained(v))
    np.testing.assert_allclose(back, v, rtol=1e-9, atol=1e-12)
    u = np.linspace(-8, 8, 17)
    if s.transform in ("sigmoid", "softplus", "neg_softplus"):  # bijective: the other way round too
        np.testing.assert_allclose(s.to_unconstrained(s.to_constrained(u)), u, rtol=1e-9, atol=1e-9)
    lo, hi = s.lo, s.hi
    out = s.to_constrained(np.linspace(-50, 50, 101))
    assert np.all(out >= lo) and np.all(out <= hi)


def test_automatic_transform_choice_and_formulas():
    assert Hyperparameter("a", 0.1, (0, 0.5)).transform == "sigmoid"
    assert Hyperparameter("a", 0.1, (0, None)).transform == "softplus"
    assert Hyperparameter("a", 0.1, (None, 1)).transform == "neg_softplus"
    assert Hyperparameter("a", 0.1).transform == "identity"
    s = Hyperparameter("p", 0.1, (0.0, 0.5))
    np.testing.assert_allclose(s.to_constrained(0.3), 0.5 / (1 + math.exp(-0.3)), rtol=1e-14)
    s = Hyperparameter("k", 1e-3, (1e-8, 1e-1), transform="log")
    np.testing.assert_allclose(s.to_constrained(math.log(1e-3)), 1e-3, rtol=1e-14)
    assert s.to_constrained(100.0) == 1e-1 and s.u_bounds() == (math.log(1e-8), math.log(1e-1))
    s = Hyperparameter("c", 2.0, (1.0, None))
    np.testing.assert_allclose(s.to_constrained(0.0), 1.0 + math.log(2.0), rtol=1e-14)
    np.testing.assert_allclose(softplus(np.array([-800.0, 0.0, 800.0])), [0.0, math.log(2), 800.0])
    np.testing.assert_allclose(inv_softplus(softplus(np.array([-5.0, 0.5, 30.0]))), [-5.0, 0.5, 30.0], rtol=1e-9)
    np.testing.assert_allclose(sigmoid(np.array([-800.0, 0.0, 800.0])), [0.0, 0.5, 1.0])


def test_discrete_floor_and_clip():
    s = Hyperparameter("augment", 3.5, (0, 8), discrete=True)
    v = s.to_constrained(np.linspace(-40, 40, 81))
    assert set(np.unique(v)) <= set(range(8)) and v.min() == 0 and v.max() == 7
    assert s.to_constrained(s.to_unconstrained(3.5)) == 3.0
    s = Hyperparameter("augment", 2, (0, 7), transform="identity", discrete=True)
    assert s.to_constrained(7.0) == 6.0 and s.to_constrained(-3.0) == 0.0
    hy = HyperParameters([Hyperparameter("augment", 5.2, (0, 8), discrete=True)])
    assert hy.values() == {"augment": 5} and isinstance(hy.values()["augment"], int)


@pytest.mark.parametrize("kwargs, words", [
    (dict(name="p", init=0.1, range=(0.5, 0.5)), ["'p'", "lo < hi", "(0.5, 0.5)"]),
    (dict(name="p", init=0.1, range=(float("nan"), 1)), ["'p'", "NaN"]),
    (dict(name="p", init=0.7, range=(0, 0.5)), ["'p'", "init=0.7", "outside"]),
    (dict(name="p", init=0.5, range=(0, 0.5)), ["'p'", "init=0.5"]),       # open interval of the sigmoid
    (dict(name="p", init=float("inf")), ["'p'", "init=inf"]),
    (dict(name="p", init="0.1"), ["'p'", "init", "'0.1'"]),
    (dict(name="k", init=1e-3, range=(-1, 1), transform="log"), ["'k'", "'log'", "lo >= 0"]),
    (dict(name="k", init=1e-3, range=(0, 1), transform="tanh"), ["'k'", "'tanh'"]),
    (dict(name="k", init=0.0, range=(0, 1), transform="log"), ["'k'", "init=0.0"]),
    (dict(name="k", init=1.0, range=(0, 1), transform="softplus"), ["'k'", "'softplus'"]),
    (dict(name="a", init=1, range=(0, None), discrete=True), ["'a'", "discrete", "finite"]),
    (dict(name="a", init=0.2, range=(0.1, 0.9), discrete=True), ["'a'", "integer"]),
    (dict(name="p", init=0.1, range=(0, 0.5), sigma0=0.0), ["'p'", "sigma0", "0.0"]),
    (dict(name="p", init=0.1, range=(0, 0.5), box=(0.2, 0.9)), ["'p'", "box", "(0.2, 0.9)"]),
    (dict(name="p", init=0.1, range=(0, 0.5), scale=-1), ["'p'", "scale", "-1"]),
    (dict(name="p", init=0.1, range=5), ["'p'", "range", "5"]),
    (dict(name="1p", init=0.1), ["'1p'", "identifier"]),
])
def test_bad_specs_refused_by_name(kwargs, words):
    with pytest.raises(ValueError) as info:
        Hyperparameter(**kwargs)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_container_refusals():
    with pytest.raises(ValueError, match="duplicates.*'p'"):
        HyperParameters([Hyperparameter("p", 0.1, (0, 1)), Hyperparameter("p", 0.2, (0, 1))])
    with pytest.raises(ValueError, match="at least one"):
        HyperParameters([])
    hy = HyperParameters([Hyperparameter("p", 0.1, (0, 0.5))])
    with pytest.raises(ValueError, match="'p'.*init=0.9"):
        hy.set_values({"p": 0.9})
    with pytest.raises(KeyError, match="'q'"):
        hy.set_values({"q": 0.1})


def _container(centred=False):
    return HyperParameters([
        Hyperparameter("noise", 0.3, (-1.5, 1.5), transform="identity", sigma0=0.4, scale=2.0),
        Hyperparameter("weight_decay", 1e-3, (1e-8, 1e-1), transform="log", per_example=False, sigma0=0.7),
        Hyperparameter("dropout", 0.1, (0, 0.5)),
    ], centred=centred)


def test_perturbation_per_example_and_per_batch():
    hy = _container()
    ut, z = hy.perturb(64, np.random.default_rng(1))
    np.testing.assert_array_equal(ut, hy.u + hy.sigma * z)
    assert np.all(z[:, 1] == z[0, 1])                    # weight decay: one draw per batch
    assert np.unique(z[:, 0]).size == 64 and np.unique(z[:, 2]).size == 64
    assert abs(z[:, 0].std() - 1) < 0.25
    np.testing.assert_allclose(hy.sigma, [0.4, 0.7, 0.5], rtol=1e-12)
    np.testing.assert_array_equal(hy.hnet_input(ut), ut / np.array([2.0, 1.0, 1.0]))
    c = _container(centred=True)
    np.testing.assert_allclose(c.hnet_input(ut), (ut - c.u) / np.array([2.0, 1.0, 1.0]), rtol=1e-15)
    vals = hy.constrained(ut)
    np.testing.assert_allclose(vals[:, 1], np.clip(np.exp(ut[:, 1]), 1e-8, 0.1), rtol=1e-14)
    assert np.all((vals[:, 2] > 0) & (vals[:, 2] < 0.5))


def test_entropy_and_its_gradient():
    hy = _container()
    np.testing.assert_allclose(hy.entropy(), np.sum(np.log(hy.sigma * np.sqrt(2 * np.pi * np.e))), rtol=1e-14)

    def ent(rho):
        hy.rho[:] = rho
        return hy.entropy()

    def grad(rho):
        hy.rho[:] = rho
        return hy.entropy_grad()

    check_grad(ent, grad, hy.rho.copy(), rng=0, raise_error=True)


def test_gradients_through_the_container_finite_differences():
    """∂L/∂u and ∂L/∂rho of L = mean_b L_V(model(y_b, ũ_b)) - tau H, ũ = u + softplus(rho) z (z fixed)."""
    rng = np.random.default_rng(3)
    hy = _container()
    model = LinearSTN(6, 5, hy.n, dtype=np.float64, rng=2)
    model.params["layer1.A"][...] = rng.standard_normal(model.params["layer1.A"].shape)  # a live response
    B, tau = 7, 0.3
    y = rng.standard_normal((B, 6))
    x = rng.standard_normal((B, 6))
    z = hy.draw_z(B, rng)
    n = hy.n

    def loss(theta):
        hy.u[:], hy.rho[:] = theta[:n], theta[n:]
        out, _ = model.forward(y, hy.hnet_input(hy.perturbed(z)))
        return float(np.mean(np.log(np.mean((out - x) ** 2, axis=1)))) - tau * hy.entropy()

    def grad(theta):
        hy.u[:], hy.rho[:] = theta[:n], theta[n:]
        out, cache = model.forward(y, hy.hnet_input(hy.perturbed(z)))
        r = out - x
        m = np.mean(r * r, axis=1)
        _, gh = model.backward(cache, 2 * r / (6 * m[:, None]) / B)
        gu, grho = hy.grads(hy.hnet_input_grad(gh), z)
        return np.concatenate([gu, grho - tau * hy.entropy_grad()])

    theta = np.concatenate([hy.u, hy.rho])
    check_grad(loss, grad, theta, rng=5, n_dirs=4, raise_error=True)


def test_state_round_trip_is_exact_and_json():
    hy = _container(centred=True)
    hy.u += np.array([0.123456789, -1e-7, 2.5])
    hy.rho -= 0.3141592653589793
    state = json.loads(json.dumps(hy.state()))
    back = HyperParameters.from_state(state)
    np.testing.assert_array_equal(back.u, hy.u)
    np.testing.assert_array_equal(back.rho, hy.rho)
    assert back.centred and back.names == hy.names
    assert [s.to_dict() for s in back.specs] == [s.to_dict() for s in hy.specs]
    other = HyperParameters([Hyperparameter("noise", 0.0)])
    with pytest.raises(ValueError, match="noise.*weight_decay"):
        other.load_state(state)


def test_project_keeps_u_in_the_clipping_range():
    hy = _container()
    hy.u[:] = [5.0, 10.0, 40.0]
    hy.project()
    np.testing.assert_allclose(hy.u, [1.5, math.log(0.1), 40.0])  # sigmoid: no projection needed
