"""Shared fixtures: the array backends, the accelerator switch, a seeded generator, the shared data.

- ``xp``: NumPy always, CuPy when usable (the CuPy case is marked ``gpu`` and
  skips cleanly, with the reason, without a usable GPU);
- ``accel``: run a test with the fused kernels enabled and with the reference code;
- ``rng``: a seeded ``numpy.random.RandomState``;
- ``shared_data``: ``shared_data("kodak")`` is the local copy of a data set found
  by :func:`varlearn.datasets.shared_data_dir` (``$VARLEARN_SHARED_DATA``, then
  ``shared/data`` in or beside the source tree and the current folder); the test
  skips, naming the variable to set, when there is none.

With ``VARLEARN_EXPECT_INSTALLED=1`` (set by ``.ci/run``) the session fails at
once unless varlearn is imported from an installed copy (``site-packages``),
so that CI cannot silently test a source tree.
"""
import os

import numpy as np
import pytest

import varlearn
from varlearn import _accel
from varlearn.backend import cupy_unusable_reason, cupy_usable
from varlearn.datasets import shared_data_dir


def pytest_configure(config):
    if os.environ.get("VARLEARN_EXPECT_INSTALLED") == "1" and "site-packages" not in varlearn.__file__:
        raise pytest.UsageError(f"VARLEARN_EXPECT_INSTALLED=1 but varlearn was imported from {varlearn.__file__}")


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


@pytest.fixture(scope="session")
def shared_data():
    """``shared_data(name)``: the folder of a shared data set, or skip the test saying how to provide it."""

    def find(name):
        path = shared_data_dir(name)
        if path is None:
            pytest.skip(f"shared data set {name!r} not found: set VARLEARN_SHARED_DATA to a folder "
                        f"holding {name}/ (see varlearn.datasets.shared_data_dir)")
        return path

    return find
