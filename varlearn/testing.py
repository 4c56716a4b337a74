"""Derivative checkers, shipped to users (``varlearn.testing``).

Every check works in float64, along random directions drawn from ``rng``
(on the host, then copied to the device of the inputs, so that a check on
NumPy and on CuPy sees the same directions: the one documented exception to
drawing random arrays on the data's device, ``docs/developer.md`` §2),
never modifies its inputs, and returns a :class:`CheckReport` (truthy when the
check passed).  With ``raise_error=True`` a failed check raises
``AssertionError`` with the numbers.

The gradient checks are *Taylor tests*: along a direction ``v`` the remainder
``r(h) = |f(x + h v) - f(x) - h <grad f(x), v>|`` of a correct gradient shrinks
like ``h**2``; a wrong one leaves an ``O(h)`` term.  The check fits the order
over the smallest steps whose remainder is still above rounding noise and
requires it to be at least ``min_order`` (1.8 by default); a remainder that drops
to rounding level for the last five or more steps (a piecewise-quadratic
function once the steps stop crossing its kinks) also passes.  It also requires
the best central difference ``(f(x+hv) - f(x-hv)) / 2h`` over the same steps
to agree with ``<grad f(x), v>`` to ``fd_rtol``.
"""
from __future__ import annotations

import math

import numpy as np

from .backend import get_namespace, to_numpy

__all__ = [
    "CheckReport",
    "observed_constants",
    "check_adjoint",
    "check_grad",
    "check_hvp",
    "check_mixed",
    "check_regularizer",
    "check_problem",
    "check_upper",
    "check_hypergradient",
]

_EPS = np.finfo(np.float64).eps


class CheckReport:
    """Outcome of a derivative check.

    Attributes
    ----------
    ok : bool
    name : str
    errors : dict
        The measured quantities that decided the outcome (name -> float).
    details : dict
        Sub-reports or raw data (e.g. remainders per step).
    """

    def __init__(self, name, ok, errors=None, details=None):
        self.name = name
        self.ok = bool(ok)
        self.errors = dict(errors or {})
        self.details = dict(details or {})

    def __bool__(self):
        return self.ok

    def failures(self):
        """Names of the failed sub-checks (recursively)."""
        out = [] if self.ok else [self.name]
        for v in self.details.values():
            if isinstance(v, CheckReport):
                out.extend(f"{self.name}/{f}" for f in v.failures())
        return out

    def __repr__(self):
        errs = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.errors.items())
        return f"CheckReport({self.name!r}, ok={self.ok}{', ' + errs if errs else ''})"

    def raise_if_failed(self):
        if not self.ok:
            lines = [repr(self)]
            for k, v in self.details.items():
                if isinstance(v, CheckReport) and not v.ok:
                    lines.append(f"  {k}: {v!r}")
            raise AssertionError("derivative check failed:\n" + "\n".join(lines))
        return self


def _rng(rng):
    if isinstance(rng, np.random.RandomState):
        return rng
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.RandomState(1234 if rng is None else rng)


def _randn(rng, shape, like):
    """Standard normal array of ``shape`` (float64) in the namespace of ``like``."""
    xp = get_namespace(like)
    a = rng.standard_normal(size=shape) if shape else np.asarray(rng.standard_normal())
    return xp.asarray(np.asarray(a, dtype=np.float64))


def _dot(a, b):
    xp = get_namespace(a, b)
    return float(xp.vdot(a.ravel(), b.ravel()))


def _f64(a, name):
    if a.dtype != np.float64:
        raise ValueError(f"derivative checks run in float64; {name} has dtype {a.dtype}")
    return a


def _finish(report, raise_error):
    if raise_error:
        report.raise_if_failed()
    return report


def check_adjoint(apply, adjoint, in_shape, *, like=None, rng=None, rtol=1e-10, n_trials=3, raise_error=False):
    r"""Adjoint test: :math:`|\langle Au, v\rangle - \langle u, A^Tv\rangle| \le rtol\,\|Au\|\|v\|`.

    ``like`` is an array of the namespace to test in (default NumPy).
    """
    rng = _rng(rng)
    like = np.zeros(1) if like is None else like
    worst = 0.0
    for _ in range(n_trials):
        u = _randn(rng, tuple(in_shape), like)
        au = apply(u)
        v = _randn(rng, tuple(au.shape), like)
        atv = adjoint(v)
        if tuple(atv.shape) != tuple(u.shape):
            return _finish(CheckReport("adjoint", False, {"shape_mismatch": 1.0},
                                       {"adjoint_shape": tuple(atv.shape), "input_shape": tuple(u.shape)}),
                           raise_error)
        lhs, rhs = _dot(au, v), _dot(u, atv)
        scale = math.sqrt(_dot(au, au) * _dot(v, v)) + 1e-300
        worst = max(worst, abs(lhs - rhs) / scale)
    return _finish(CheckReport("adjoint", worst <= rtol, {"relative_error": worst}), raise_error)


def _taylor_one(fun, x, d_exact, v, h0, n_steps):
    f0 = float(fun(x))
    rows = []
    for k in range(n_steps):
        h = h0 * 0.5 ** k
        fp = float(fun(x + h * v))
        fm = float(fun(x - h * v))
        r = abs(fp - f0 - h * d_exact)
        floor = 1e3 * _EPS * (abs(f0) + abs(fp) + abs(h * d_exact)) + 1e-300
        central = (fp - fm) / (2 * h)
        rows.append((h, r, floor, central))
    return f0, rows


def check_grad(fun, grad, x, *, rng=None, n_dirs=3, h0=1.0, n_steps=30, min_order=1.8, fd_rtol=1e-6,
               directions=None, name="gradient", raise_error=False):
    """Taylor test of ``grad`` against ``fun`` at ``x`` (see the module docstring).

    Parameters
    ----------
    fun : callable
        ``x -> scalar`` (a float or 0-d array).
    grad : callable
        ``x -> array`` shaped like ``x``.
    x : float64 array
    n_dirs : int
        Number of random directions (unit RMS entries).
    h0, n_steps : float, int
        Steps ``h0 * 2**-k`` for ``k < n_steps``.
    directions : list of arrays, optional
        Use these directions instead of random ones.
    """
    rng = _rng(rng)
    x = _f64(x, "x")
    g = grad(x)
    if tuple(g.shape) != tuple(x.shape):
        return _finish(CheckReport(name, False, {"shape_mismatch": 1.0}), raise_error)
    dirs = list(directions) if directions is not None else [_randn(rng, tuple(x.shape), x) for _ in range(n_dirs)]
    worst_order, worst_fd = math.inf, 0.0
    info = []
    for v in dirs:
        v = v / math.sqrt(max(_dot(v, v) / max(v.size, 1), 1e-300))
        d = _dot(g, v)
        f0, rows = _taylor_one(fun, x, d, v, h0, n_steps)
        valid = [i for i, (h, r, fl, c) in enumerate(rows) if r > fl]
        # consecutive valid pairs, smallest steps last
        pairs = [i for i in valid if i + 1 in valid]
        if not pairs:
            order = math.inf if all(r <= fl for (_, r, fl, _) in rows) else 0.0
        else:
            slopes = [math.log2(rows[i][1] / rows[i + 1][1]) for i in pairs]
            order = float(np.median(slopes[-3:]))
        scale = max(abs(d), math.sqrt(_dot(g, g) * _dot(v, v)) * 1e-8, 1e-300)
        fd_err = min(abs(c - d) for (_, _, _, c) in rows) / scale
        # piecewise-smooth functions (e.g. Huber): once the steps stop crossing kinks the
        # remainder of a correct gradient is pure rounding; accept a tail of >= 5 such steps
        tail = 0
        for (_, r, fl, _) in reversed(rows):
            if r > fl:
                break
            tail += 1
        if order < min_order and tail >= 5 and fd_err <= fd_rtol:
            order = math.inf
        worst_order = min(worst_order, order)
        worst_fd = max(worst_fd, fd_err)
        info.append({"directional_derivative": d, "order": order, "fd_relative_error": fd_err,
                     "remainders": [(h, r) for (h, r, _, _) in rows]})
    ok = worst_order >= min_order and worst_fd <= fd_rtol
    return _finish(CheckReport(name, ok, {"order": worst_order, "fd_relative_error": worst_fd},
                               {"directions": info}), raise_error)


def check_hvp(grad, hvp, x, *, rng=None, n_dirs=2, sym_rtol=1e-10, raise_error=False, name="hvp", **kw):
    r"""Hessian-vector product: a Taylor test of ``x -> <w, grad(x)>`` with gradient ``hvp(x, w)``
    (valid because the Hessian is symmetric), and the symmetry test
    :math:`|\langle u, Hv\rangle - \langle Hu, v\rangle| \le sym\_rtol\,\|u\|\|Hv\|`.
    """
    rng = _rng(rng)
    x = _f64(x, "x")
    subs = {}
    for i in range(n_dirs):
        w = _randn(rng, tuple(x.shape), x)
        subs[f"taylor{i}"] = check_grad(lambda y, w=w: _dot(w, grad(y)), lambda y, w=w: hvp(y, w), x,
                                        rng=rng, n_dirs=1, name=f"{name}-taylor", **kw)
    u = _randn(rng, tuple(x.shape), x)
    v = _randn(rng, tuple(x.shape), x)
    hu, hv = hvp(x, u), hvp(x, v)
    scale = math.sqrt(_dot(u, u) * max(_dot(hv, hv), _dot(hu, hu))) + 1e-300
    sym = abs(_dot(u, hv) - _dot(hu, v)) / scale
    subs["symmetry"] = CheckReport("symmetry", sym <= sym_rtol, {"relative_asymmetry": sym})
    ok = all(s.ok for s in subs.values())
    order = min(s.errors.get("order", math.inf) for k, s in subs.items() if k != "symmetry")
    errors = {"symmetry": sym, "order": order}
    return _finish(CheckReport(name, ok, errors, subs), raise_error)


def check_mixed(grad, mixed_vjp, x, theta, *, rng=None, blocks=None, n_dirs=1, raise_error=False, name="mixed", **kw):
    r"""Mixed derivative: a Taylor test in θ of :math:`\theta \mapsto \langle w, \nabla_x h(x,\theta)\rangle`
    whose gradient is ``mixed_vjp(x, theta, w)``.

    ``blocks`` is a list of ``(name, slice)``: each block of θ is tested with
    directions supported on that block only (default: θ as one block).
    """
    rng = _rng(rng)
    x = _f64(x, "x")
    theta = _f64(theta, "theta")
    if blocks is None:
        blocks = [("theta", slice(0, theta.shape[0]))]
    xp = get_namespace(theta)
    subs = {}
    for bname, sl in blocks:
        for i in range(n_dirs):
            w = _randn(rng, tuple(x.shape), x)
            dv = np.zeros(theta.shape[0])
            dv[sl] = rng.standard_normal(size=sl.stop - sl.start)
            d = xp.asarray(dv)
            subs[f"{bname}{i}"] = check_grad(
                lambda th, w=w: _dot(w, grad(x, th)), lambda th, w=w: mixed_vjp(x, th, w), theta,
                rng=rng, directions=[d], name=f"{name}[{bname}]", **kw)
    ok = all(s.ok for s in subs.values())
    errors = {"order": min(s.errors["order"] for s in subs.values()),
              "fd_relative_error": max(s.errors["fd_relative_error"] for s in subs.values())}
    return _finish(CheckReport(name, ok, errors, subs), raise_error)


def _derivative_suite(obj, x, theta, rng, name, raise_error, **kw):
    subs = {
        "grad": check_grad(lambda y: obj.value(y, theta), lambda y: obj.grad(y, theta), x, rng=rng, **kw),
        "hvp": check_hvp(lambda y: obj.grad(y, theta), lambda y, w: obj.hvp(y, theta, w), x, rng=rng, **kw),
        "mixed": check_mixed(obj.grad, obj.mixed_vjp, x, theta, rng=rng,
                             blocks=obj.param_layout() if hasattr(obj, "param_layout") else None, **kw),
    }
    mixed_shape = tuple(obj.mixed_vjp(x, theta, x).shape)
    subs["mixed_shape"] = CheckReport("mixed_shape", mixed_shape == tuple(theta.shape), {})
    ok = all(s.ok for s in subs.values())
    return _finish(CheckReport(name, ok, {}, subs), raise_error)


def check_regularizer(reg, x, theta=None, *, rng=None, raise_error=False, **kw):
    """Run the gradient, Hessian-vector (Taylor and symmetry) and mixed-derivative
    (per θ block, see ``reg.param_layout()``) checks on a regularizer at ``(x, theta)``."""
    rng = _rng(rng)
    xp = get_namespace(x)
    if theta is None:
        theta = xp.asarray(reg.init_params(rng))
    return _derivative_suite(reg, x, theta, rng, f"check_regularizer({reg!r})", raise_error, **kw)


def check_problem(problem, theta=None, x=None, *, rng=None, raise_error=False, **kw):
    """The same checks as :func:`check_regularizer` on a lower-level problem's objective ``h``.

    ``x`` defaults to a random perturbation of ``problem.initial_x()``.
    """
    rng = _rng(rng)
    if problem.dtype != np.float64:
        raise ValueError(f"derivative checks run in float64; the problem's dtype is {problem.dtype}")
    if theta is None:
        theta = problem.init_params(rng)
    if x is None:
        x0 = problem.initial_x()
        x = x0 + 0.1 * _randn(rng, tuple(x0.shape), x0)

    class _View:
        value = staticmethod(problem.value)
        grad = staticmethod(problem.grad)
        hvp = staticmethod(problem.hvp)
        mixed_vjp = staticmethod(problem.mixed_vjp)

        @staticmethod
        def param_layout():
            if hasattr(problem, "param_layout"):
                return problem.param_layout()
            reg = getattr(problem, "regularizer", None)
            return reg.param_layout() if reg is not None else [("theta", slice(0, problem.n_params))]

    return _derivative_suite(_View, x, theta, rng, f"check_problem({problem!r})", raise_error, **kw)


def check_upper(upper, x, *, rng=None, raise_error=False, **kw):
    """Taylor test of an upper loss's gradient at ``x``."""
    return check_grad(upper.value, upper.grad, x, rng=_rng(rng), name=f"check_upper({upper!r})",
                      raise_error=raise_error, **kw)


def check_hypergradient(problem, upper, theta, *, rng=None, n_dirs=2, h=1e-4, tol=1e-10, cg_tol=1e-10,
                        rtol=1e-4, raise_error=False):
    r"""Compare the hypergradient with central differences of :math:`f(\theta) = U(\hat x(\theta))`.

    Both use tight solves (``tol``, ``cg_tol``); along random directions ``d``
    the check requires ``|<grad f, d> - (f(θ+hd) - f(θ-hd))/2h| <= rtol *
    max(|<grad f, d>|, ||grad f|| ||d|| 1e-3)``.  The central difference has an
    ``O(h^2)`` truncation error and an ``O(tol/h)`` solve error, so ``rtol`` is
    looser than in the Taylor tests.
    """
    from .hypergradient import hypergradient  # noqa: PLC0415
    from .solvers import solve_lower  # noqa: PLC0415

    rng = _rng(rng)
    theta = _f64(theta, "theta")
    xp = get_namespace(theta)
    res = hypergradient(problem, upper, theta, lower_tol=tol, cg_tol=cg_tol, bound=False)
    g = res.grad
    x_ref = res.x

    def f(th):
        sol = solve_lower(problem, th, tol, x0=x_ref)
        return float(upper.value(sol.x))

    worst = 0.0
    rows = []
    for _ in range(n_dirs):
        d = xp.asarray(rng.standard_normal(size=theta.shape[0]))
        d = d / float(xp.linalg.norm(d))
        fd = (f(theta + h * d) - f(theta - h * d)) / (2 * h)
        an = _dot(g, d)
        scale = max(abs(an), float(xp.linalg.norm(g)) * 1e-3, 1e-300)
        err = abs(fd - an) / scale
        worst = max(worst, err)
        rows.append((an, fd))
    return _finish(CheckReport("hypergradient", worst <= rtol, {"relative_error": worst},
                               {"pairs": rows, "grad": to_numpy(g)}), raise_error)


def observed_constants(problem, theta, x, radius, *, n_pairs=4, n_power=8, rng=None):
    r"""Observed lower estimates of the constants of the hypergradient bound near ``x``, to compare with
    the claimed ones (``hessian_lipschitz_at``, ``mixed_lipschitz_at``, ``mixed_norm_bound``).

    For ``n_pairs`` random pairs :math:`x_1, x_2` in the ball of ``radius`` around ``x``:
    :math:`\|H(x_1) - H(x_2)\|/\|x_1 - x_2\|` by ``n_power`` power iterations on
    :math:`(H(x_1) - H(x_2))^2`, and :math:`\|(J(x_1) - J(x_2))^Tw\|/(\|w\|\|x_1 - x_2\|)` for the
    left singular direction found by power iteration on :math:`JJ^T` at ``x``; :math:`\|J(x)\|` by
    ``n_power`` power iterations on :math:`JJ^T` with :math:`Jd` a central difference of the
    gradient in θ (step ``1e-5``).  Every value is attained by some pair or vector, so it is a
    lower bound on the true constant: a claimed constant below it is wrong.

    Returns a dict with ``L_H``, ``L_J``, ``J_norm`` (observed) and ``claimed_L_H``,
    ``claimed_L_J``, ``claimed_J_norm`` (what the problem reports, ``None`` when unknown).
    """
    rng = _rng(rng)
    xp = problem.xp

    def unit(shape):
        v = _randn(rng, shape, x)
        return v / math.sqrt(_dot(v, v))

    h = 1e-5 * max(1.0, float(xp.abs(theta).max()))
    w = unit(x.shape)
    sigma = 0.0
    for _ in range(n_power):
        d = problem.mixed_vjp(x, theta, w)
        d = d / math.sqrt(max(_dot(d, d), 1e-300))
        jd = (problem.grad(x, theta + h * d) - problem.grad(x, theta - h * d)) / (2 * h)
        sigma = math.sqrt(_dot(jd, jd))
        if sigma == 0:
            break
        w = jd / sigma
    L_H = L_J = 0.0
    for _ in range(n_pairs):
        x1 = x + rng.uniform() * radius * unit(x.shape)
        x2 = x + rng.uniform() * radius * unit(x.shape)
        dist = math.sqrt(_dot(x1 - x2, x1 - x2))
        v = unit(x.shape)
        lam = 0.0
        for _ in range(n_power):
            dv = problem.hvp(x1, theta, v) - problem.hvp(x2, theta, v)
            lam = math.sqrt(_dot(dv, dv))
            if lam == 0:
                break
            v = dv / lam
        L_H = max(L_H, lam / dist)
        dj = problem.mixed_vjp(x1, theta, w) - problem.mixed_vjp(x2, theta, w)
        L_J = max(L_J, math.sqrt(_dot(dj, dj)) / dist)
    return {"L_H": L_H, "L_J": L_J, "J_norm": sigma,
            "claimed_L_H": problem.hessian_lipschitz_at(x, theta, radius),
            "claimed_L_J": problem.mixed_lipschitz_at(x, theta, radius),
            "claimed_J_norm": problem.mixed_norm_bound(x, theta)}
