"""FieldOfExperts equals its composition: a per-filter weighted (FilterBank, potential) pair.

Two references, both built from public parts only:

* ``_terms``: the sum over filters i of ``PotentialRegularizer(FilterBank(k_i), potential)`` with
  θ_i = (θ0 + θ_i, θ_{K+i}) (no blocking, no folding of the smoothings, whole-stack passes);
* ``_composite``: ``Composite(FilterBank(filters), potential)`` with per-filter natural parameters
  (λ_i, ν_i), the object FieldOfExperts parameterises;

and the tap derivative written with whole-stack ``FilterBank.apply`` / ``tap_vjp`` and the
potential's own methods.  Every comparison is made for learned and fixed filters, smoothed l1 and
two other potentials, on NumPy and (marked ``gpu``) on CuPy.
"""
import math

import numpy as np
import pytest

import varlearn as vl
from varlearn.backend import to_numpy
from varlearn.operators import FilterBank
from varlearn.potentials import Huber, LogStudentT, SmoothedL1
from varlearn.regularizers import Composite
from varlearn.testing import check_grad, check_mixed, check_regularizer

POTENTIALS = {"smoothed_l1": SmoothedL1, "student_t": LogStudentT, "huber": Huber}
RTOL = 1e-11


def _case(rng, potential, learn, size=5, k=3, shape=(2, 9, 10)):
    reg = vl.FieldOfExperts(n_filters=k, size=size, rng=rng, learn_filters=learn, potential=POTENTIALS[potential]())
    theta = reg.init_params() + 0.3 * rng.standard_normal(reg.n_params)
    theta[1:k + 1] += 2.0  # weights of order one: the potential's curvature matters in every term
    x = rng.rand(*shape)
    w = rng.standard_normal(shape)
    return reg, theta, x, w


def _natural(reg, theta):
    k, s = reg.n_filters, reg.size
    lam = np.exp(theta[0] + theta[1:k + 1])
    nu = np.exp(theta[k + 1:2 * k + 1])
    taps = theta[2 * k + 1:].reshape(k, s, s) if reg.learn_filters else reg.filters
    return lam, nu, taps


def _terms(reg, theta):
    """The per-filter sum of PotentialRegularizers and its θ (log weight_i, log shape_i for each filter)."""
    k = reg.n_filters
    _, _, taps = _natural(reg, theta)
    terms = [vl.PotentialRegularizer(FilterBank(taps[i:i + 1]), reg.potential) for i in range(k)]
    th = np.concatenate([[theta[0] + theta[1 + i], theta[k + 1 + i]] for i in range(k)])
    return vl.SumRegularizer(terms), th


def _tap_reference(reg, theta, x, w):
    r"""``λ_i [tap_vjp(x, φ''(u_i) K_i w) + tap_vjp(w, φ'(u_i))]`` on the whole stack (no blocks)."""
    lam, nu, taps = _natural(reg, theta)
    bank = FilterBank(taps)
    u, kw = bank.apply(x), bank.apply(w)
    nu_b = nu[:, None, None]
    y_x = reg.potential.hess_apply(u, nu_b, kw) * lam[:, None, None]
    y_w = reg.potential.d1(u, nu_b) * lam[:, None, None]
    return bank.tap_vjp(x, y_x) + bank.tap_vjp(w, y_w)


@pytest.fixture(params=[(p, learn) for p in sorted(POTENTIALS) for learn in (True, False)],
                ids=lambda p: f"{p[0]}-{'learned' if p[1] else 'fixed'}")
def case(request, rng):
    """``(reg, theta, x, w, learn)`` and the references ``(ref, th_ref)``, ``(lam, nu, taps)``."""
    potential, learn = request.param
    reg, theta, x, w = _case(rng, potential, learn)
    return (reg, theta, x, w, learn), _terms(reg, theta), _natural(reg, theta)


def test_foe_equals_its_composition(xp, rng, case):
    (reg, theta, x, w, learn), (ref, th_ref), (lam, nu, taps) = case
    comp = Composite(FilterBank(xp.asarray(taps)), reg.potential)
    y, x_prev = rng.rand(*x.shape), rng.rand(*x.shape)
    X, W, T, Y, P = (xp.asarray(a) for a in (x, w, theta, y, x_prev))

    def close(got, want, name):
        np.testing.assert_allclose(to_numpy(got), want, rtol=RTOL, atol=RTOL * np.abs(want).max(), err_msg=name)

    close(reg.value(X, T), float(ref.value(x, th_ref)), "value")
    close(reg.grad(X, T), ref.grad(x, th_ref), "grad")
    close(reg.hvp(X, T, W), ref.hvp(x, th_ref, w), "hvp")
    close(comp.value(X, lam, nu), float(ref.value(x, th_ref)), "composite value")
    close(comp.grad(X, lam, nu), ref.grad(x, th_ref), "composite grad")
    # fused passes: data term, extrapolation and step
    z = x + 0.4 * (x - x_prev)
    g_ref = ref.grad(z, th_ref) + 0.7 * (z - y)
    out = xp.empty_like(X)
    got, gnorm = reg.fused_grad(X, T, Y, 0.7, x_prev=P, beta=0.4, step=None, out=out)
    assert got is out
    close(out, g_ref, "fused_grad")
    assert gnorm == pytest.approx(float(np.linalg.norm(g_ref)), rel=1e-10)
    got, _ = reg.fused_grad(X, T, Y, 0.7, x_prev=P, beta=0.4, step=0.05)
    close(got, z - 0.05 * g_ref, "fused_grad step")
    close(reg.fused_hvp(X, T, W, 1.5), ref.hvp(x, th_ref, w) + 1.5 * w, "fused_hvp")
    # mixed derivative: weights and smoothings from the terms, taps from the whole-stack reference
    m_ref = ref.mixed_vjp(x, th_ref, w)
    m = to_numpy(reg.mixed_vjp(X, T, W))
    k = reg.n_filters
    close(m[1:k + 1], m_ref[0::2], "mixed: log weights")
    close(m[0], m_ref[0::2].sum(), "mixed: log global weight")
    close(m[k + 1:2 * k + 1], m_ref[1::2], "mixed: log smoothings")
    if learn:
        close(m[2 * k + 1:], _tap_reference(reg, theta, x, w).ravel(), "mixed: taps")
    else:
        assert m.shape == (2 * k + 1,)
    d_lam, d_nu, d_op = comp.mixed(X, lam, nu, W, op_params=learn)
    close(lam * to_numpy(d_lam), m_ref[0::2], "composite mixed: lam")
    close(nu * to_numpy(d_nu), m_ref[1::2], "composite mixed: nu")


def test_foe_bounds_equal_the_composition(xp, case):
    (reg, theta, x, _, learn), (ref, th_ref), (lam, nu, taps) = case
    bank = FilterBank(taps)
    comp = Composite(bank, reg.potential)
    T, X = xp.asarray(theta), xp.asarray(x)
    assert reg.lipschitz(T) == pytest.approx(comp.lipschitz(lam, nu), rel=1e-13)
    assert reg.lipschitz(T) == pytest.approx(
        bank.weighted_gram_bound(lam * np.array([reg.potential.d2_max(v) for v in nu])), rel=1e-13)
    assert reg.lipschitz(T) <= ref.lipschitz(th_ref) * (1 + 1e-12)  # the bank bound beats the sum of terms
    assert reg.convexity(T) == pytest.approx(comp.convexity(lam, nu), rel=1e-13)
    assert reg.convexity(T) >= ref.convexity(th_ref) * (1 + 1e-12) - 1e-300
    assert reg.grad_error_bound(X, T) == pytest.approx(comp.grad_error_bound(X, lam, nu), rel=1e-13)
    hl, hl_comp = reg.hessian_lipschitz(T), comp.hessian_lipschitz(lam, nu)
    if hl_comp is None:
        assert hl is None and ref.hessian_lipschitz(th_ref) is None
    else:
        d3 = np.array([reg.potential.d3_max(v) for v in nu])
        assert hl == pytest.approx(min(hl_comp, bank.weighted_gram_bound(lam * d3 * bank.row_norm_bounds())), rel=1e-13)
        assert hl <= hl_comp * (1 + 1e-13)
    # mixed Lipschitz constant (fixed filters): the θ0 column (the gradient) and the composite's columns
    cols = comp.mixed_lipschitz(lam, nu)
    if learn:
        assert reg.mixed_lipschitz(T) is None
    elif cols is None:
        assert reg.mixed_lipschitz(T) is None and ref.mixed_lipschitz(th_ref) is None
    else:
        assert reg.mixed_lipschitz(T) == pytest.approx(math.hypot(comp.lipschitz(lam, nu), cols), rel=1e-13)
        assert reg.mixed_lipschitz(T) <= math.hypot(ref.lipschitz(th_ref), ref.mixed_lipschitz(th_ref)) * (1 + 1e-12)
        assert reg.mixed_lipschitz_at(X, T, 0.1) == reg.mixed_lipschitz(T)
    # norm of the mixed derivative: exact θ0 column + the composite's columns (+ the tap columns)
    g0 = float(np.linalg.norm(ref.grad(x, th_ref)))
    base = math.sqrt(g0 ** 2 + comp.mixed_norm_bound(x, lam, nu) ** 2) * (1 + 64 * np.finfo(float).eps / 2)
    got = reg.mixed_norm_bound(X, T)
    if learn:
        assert got > base * (1 + 1e-9)
    else:
        assert got == pytest.approx(base, rel=1e-12)


@pytest.mark.parametrize("learn", [True, False], ids=["learned", "fixed"])
@pytest.mark.parametrize("potential", ["smoothed_l1", "student_t"])
def test_foe_composition_derivatives(rng, potential, learn):
    """The composition's derivatives (what FoE forwards to) pass the Taylor tests of varlearn.testing."""
    reg, theta, x, _ = _case(rng, potential, learn, size=3)
    check_regularizer(reg, x, theta, rng=rng, raise_error=True)
    lam, nu, taps = _natural(reg, theta)
    comp = Composite(FilterBank(taps), reg.potential)
    check_grad(lambda z: comp.value(z, lam, nu), lambda z: comp.grad(z, lam, nu), x, rng=rng, raise_error=True)
    # the mixed derivative in the natural parameters (λ, ν) as one vector
    k = reg.n_filters

    def grad_nat(z, p):
        return comp.grad(z, p[:k], p[k:])

    def mixed_nat(z, p, w):
        d_lam, d_nu, _ = comp.mixed(z, p[:k], p[k:], w)
        return np.concatenate([to_numpy(d_lam), to_numpy(d_nu)])

    check_mixed(grad_nat, mixed_nat, x, np.concatenate([lam, nu]), rng=rng,
                blocks=[("lam", slice(0, k)), ("nu", slice(k, 2 * k))], raise_error=True)


def test_foe_huber_mixed_taylor(rng):
    """Huber (φ'' jumps): gradient and mixed derivative Taylor tests only."""
    reg, theta, x, _ = _case(rng, "huber", True, size=3)
    check_grad(lambda z: reg.value(z, theta), lambda z: reg.grad(z, theta), x, rng=rng, raise_error=True)
    check_mixed(reg.grad, reg.mixed_vjp, x, theta, rng=rng, blocks=reg.param_layout(), raise_error=True)
