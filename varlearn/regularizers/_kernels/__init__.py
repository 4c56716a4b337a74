"""Registry of fused kernels for (operator, potential) pairs.

A composed regularizer :math:`R(x) = \\lambda \\sum \\varphi(Kx; \\nu)` (see
:mod:`varlearn.regularizers.composite`) is computed by default from its parts:
``operator.apply``, the potential's derivatives and ``operator.adjoint``, one
array pass each.  For some pairs a *kernel set* computes the value, the fused
gradient step and the fused Hessian-vector product in one pass over memory.
Kernels are registered against the exact types of the pair, not against a
model, so any regularizer composed of a registered pair -- a user's
``PotentialRegularizer(FiniteDifference(), SmoothedL1())`` as much as
:class:`~varlearn.TotalVariation` -- runs them.

Registered here:

====================  ======================  =========  ==================================
operator              potential               backend    module
====================  ======================  =========  ==================================
FiniteDifference      SmoothedL1              numpy      ``fd_numba`` (anisotropic TV)
FiniteDifference      GroupSmoothedL1         numpy      ``fd_numba`` (isotropic TV)
FiniteDifference      SmoothedL1              cupy       ``fd_cuda``
FiniteDifference      GroupSmoothedL1         cupy       ``fd_cuda``
====================  ======================  =========  ==================================

Kernel set interface (:class:`KernelSet`; ``x3``, ``y3``, ``v3``, ``xprev3``,
``out3`` are C-contiguous ``(N, H, W)`` arrays of one floating dtype on the
kernel's backend, ``out3`` aliasing none of the inputs; ``lam`` and ``nu``
are Python floats, the weight and the shape of the potential)::

    value(x3, lam, nu) -> float                     # lam * sum phi(K x; nu)
    fused_grad(x3, y3, data_w, lam, nu, xprev3, beta, step, out3) -> float
        # z = x3 if xprev3 is None or beta == 0 else x3 + beta (x3 - xprev3)
        # g = data_w (z - y3) + lam K^T phi'(K z; nu)     (y3 may be None when data_w == 0)
        # out3 <- g if step is None else z - step g;  returns sum(g**2) accumulated in float64
    fused_hvp(x3, v3, data_w, lam, nu, out3) -> None
        # out3 <- data_w v3 + lam K^T [phi''(K x3; nu)] K v3

The results agree with the composition computed from the parts to rounding (the kernels
add the same terms in another order); ``tests/test_kernels.py`` checks every
registered kernel against it, on every backend and dtype.

References
----------
.. [1] A. Chambolle and T. Pock, "An introduction to continuous optimization for
   imaging", Acta Numerica 25 (2016), 161-319 (the smoothed total variation and its
   discretisation by forward differences).
"""
from __future__ import annotations

import importlib
import logging

import numpy as np

from ... import _accel
from ...backend import cupy_usable, get_namespace, xp_name

logger = logging.getLogger("varlearn")

__all__ = ["KernelSet", "register_kernel", "find_kernel", "registered_kernels", "BACKENDS"]

#: The backends a kernel can be registered for (the array namespace of ``x``).
BACKENDS = ("numpy", "cupy")

_registry: dict = {}   # (operator type, potential type, backend) -> "module:attribute"
_resolved: dict = {}   # "module:attribute" -> KernelSet or None (module unavailable)
_found: dict = {}      # (operator type, potential type, array type, dtype, ndim >= 2) -> KernelSet or None


class KernelSet:
    """The three fused functions of one (operator, potential) pair on one backend.

    Parameters
    ----------
    name : str
        A short description (shown in ``repr`` and in the benchmarks).
    value, fused_grad, fused_hvp : callable
        The functions of the interface in the module docstring.
    dtypes : tuple of dtype
        The floating dtypes the functions accept.
    """

    def __init__(self, name, value, fused_grad, fused_hvp, dtypes=(np.float32, np.float64)):
        self.name = str(name)
        self.value = value
        self.fused_grad = fused_grad
        self.fused_hvp = fused_hvp
        self.dtypes = tuple(np.dtype(d) for d in dtypes)

    def supports(self, dtype) -> bool:
        """Whether arrays of ``dtype`` can be passed to the functions."""
        return np.dtype(dtype) in self.dtypes

    def __repr__(self):
        return f"KernelSet({self.name!r})"


def _check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def register_kernel(operator_type, potential_type, backend, module_name):
    """Register the kernel set of the pair (``operator_type``, ``potential_type``) on ``backend``.

    Parameters
    ----------
    operator_type, potential_type : type
        The exact classes of the pair (subclasses are not matched: they may change
        the mathematics).
    backend : {"numpy", "cupy"}
        The array namespace of the data the kernels take.
    module_name : str
        ``"package.module:attribute"``, the :class:`KernelSet` (``attribute``
        defaults to ``KERNELS``).  The module is imported on the first
        :func:`find_kernel` that needs it (numba or CuPy are imported only then); a
        ``"numpy"`` module that fails to import (numba missing) makes that pair fall
        back to the composition.

    Raises
    ------
    TypeError
        If ``operator_type`` or ``potential_type`` is not a class.
    ValueError
        If ``backend`` is not one of :data:`BACKENDS` or ``module_name`` is empty.
    """
    for arg, name in ((operator_type, "operator_type"), (potential_type, "potential_type")):
        if not isinstance(arg, type):
            raise TypeError(f"{name} must be a class, got {arg!r}")
    _check_backend(backend)
    if not isinstance(module_name, str) or not module_name.strip(":"):
        raise ValueError(f"module_name must be 'package.module[:attribute]', got {module_name!r}")
    key = (operator_type, potential_type, backend)
    _registry[key] = module_name
    _resolved.pop(module_name, None)
    _found.clear()


def registered_kernels():
    """Every registration: a list of ``(operator_type, potential_type, backend, module_name)``."""
    return [(*key, target) for key, target in _registry.items()]


def _resolve(target, backend):
    """The :class:`KernelSet` named by ``target``, or ``None`` when its module cannot be used."""
    if target in _resolved:
        return _resolved[target]
    module_name, _, attr = target.partition(":")
    if backend == "numpy":
        mod = _accel.numba_module(module_name)
    else:
        mod = importlib.import_module(module_name)
    kset = None if mod is None else getattr(mod, attr or "KERNELS")
    if kset is not None and not isinstance(kset, KernelSet):
        raise TypeError(f"{target} is a {type(kset).__name__}, not a KernelSet")
    _resolved[target] = kset
    return kset


def find_kernel(operator, potential, x):
    """The kernel set registered for the pair and the array ``x``, or ``None``.

    Parameters
    ----------
    operator : LinearOperator
    potential : Potential
    x : array
        The point the kernels would be called at: its namespace selects the backend,
        its dtype must be supported; it must have at least two axes ``(..., H, W)``.

    Returns
    -------
    KernelSet or None
        ``None`` when no kernel is registered for ``(type(operator), type(potential))``
        exactly, when the accelerators are disabled
        (:func:`varlearn._accel.set_accelerated`, ``VARLEARN_ACCEL=0``), when the
        backend's kernel library is missing (numba on NumPy, a usable CuPy device), or
        when ``x``'s dtype or number of axes is not supported.
    """
    if not _accel.accelerated():
        return None
    key = (type(operator), type(potential), type(x), getattr(x, "dtype", None), getattr(x, "ndim", 0) >= 2)
    try:
        return _found[key]  # the answer depends on these types only (numba / CuPy do not come and go)
    except KeyError:
        pass
    kset = _lookup(operator, potential, x)
    _found[key] = kset
    return kset


def _lookup(operator, potential, x):
    backend = xp_name(get_namespace(x))
    target = _registry.get((type(operator), type(potential), backend))
    if target is None or getattr(x, "ndim", 0) < 2:
        return None
    if backend == "cupy" and not cupy_usable():
        return None
    kset = _resolve(target, backend)
    if kset is None or not kset.supports(x.dtype):
        return None
    return kset


def _register_builtin():
    from ... import potentials
    from ...operators import FiniteDifference

    group = getattr(potentials, "GroupSmoothedL1", None)  # added to varlearn.potentials by issue 11
    pairs = [(potentials.SmoothedL1, "ANISOTROPIC")]
    if group is not None:
        pairs.append((group, "ISOTROPIC"))
    for pot, attr in pairs:
        register_kernel(FiniteDifference, pot, "numpy", f"{__name__}.fd_numba:{attr}")
        register_kernel(FiniteDifference, pot, "cupy", f"{__name__}.fd_cuda:{attr}")


_register_builtin()
