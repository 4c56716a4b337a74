"""Shared fixtures: the array backends (NumPy always, CuPy when usable, marked ``gpu``)."""
import numpy as np
import pytest

from varlearn import _accel
from varlearn.backend import cupy_unusable_reason, cupy_usable


def _backends():
    params = [pytest.param("numpy", id="numpy")]
    params.append(pytest.param("cupy", id="cupy", marks=pytest.mark.gpu))
    return params


@pytest.fixture(params=_backends())
def xp(request):
    """The array namespace under test; CuPy tests skip cleanly without a usable GPU."""
    if request.param == "cupy":
        if not cupy_usable():
            pytest.skip(f"CuPy backend not usable: {cupy_unusable_reason()}")
        import cupy

        return cupy
    return np


@pytest.fixture(params=[True, False], ids=["accel", "reference"])
def accel(request):
    """Run a test with the fused kernels enabled and with the reference array code."""
    old = _accel.set_accelerated(request.param)
    yield request.param
    _accel.set_accelerated(old)


@pytest.fixture
def rng():
    return np.random.RandomState(20261127)
