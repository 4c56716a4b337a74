"""Backend selection, explicit transfers and the dtype policy."""
import numpy as np
import pytest

from varlearn.backend import (
    as_float_array,
    cupy_unusable_reason,
    cupy_usable,
    get_namespace,
    to_device,
    to_numpy,
    working_dtype,
)


def test_namespace_from_inputs():
    assert get_namespace(np.zeros(2), None, 3.0) is np
    assert get_namespace() is np


def test_mixed_backends_raise_without_importing_cupy():
    class FakeCupy(np.ndarray):
        pass

    FakeCupy.__module__ = "cupy._core.core"
    with pytest.raises(TypeError, match="mixed array backends"):
        get_namespace(np.zeros(2), np.zeros(2).view(FakeCupy))


@pytest.mark.parametrize("dtype,expected", [
    (np.float32, np.float32), (np.float64, np.float64), (np.float16, np.float32),
    (np.uint8, np.float64), (np.int32, np.float64), (np.bool_, np.float64),
])
def test_working_dtype(dtype, expected):
    assert working_dtype(dtype) == expected


def test_working_dtype_rejects_complex():
    with pytest.raises(ValueError, match="complex"):
        working_dtype(np.complex128)


def test_integer_images_are_scaled_to_unit_interval():
    a = np.array([[0, 255], [128, 51]], dtype=np.uint8)
    f = as_float_array(a, "image")
    assert f.dtype == np.float64 and f.max() == 1.0 and f[1, 1] == pytest.approx(0.2)
    b = np.array([[0, 65535]], dtype=np.uint16)
    assert as_float_array(b, "image")[0, 1] == 1.0
    c = np.array([[0.25]], dtype=np.float32)
    assert as_float_array(c, "image").dtype == np.float32


def test_non_finite_and_non_numeric_input_is_named():
    with pytest.raises(ValueError, match="noisy contains 2 NaN or Inf"):
        as_float_array(np.array([np.nan, np.inf, 0.0]), "noisy")
    with pytest.raises(TypeError, match="labels must hold numbers"):
        as_float_array(np.array(["a", "b"]), "labels")


def test_explicit_transfers():
    a = np.arange(3.0)
    assert to_numpy(a) is a  # NumPy input is returned as is, never copied
    assert to_device(a, "numpy") is a
    lst = [1.0, 2.0]
    assert isinstance(to_numpy(lst), np.ndarray) and to_numpy(lst).tolist() == lst
    with pytest.raises(ValueError, match="backend must be 'numpy' or 'cupy', got 'tpu'"):
        to_device(a, "tpu")


def test_cupy_probe_is_a_clean_boolean():
    ok = cupy_usable()
    assert isinstance(ok, bool)
    assert (cupy_unusable_reason() is None) == ok
    if not ok:
        with pytest.raises(RuntimeError, match="CuPy backend was requested"):
            to_device(np.zeros(2), "cupy")


@pytest.mark.gpu
def test_cupy_round_trip():
    if not cupy_usable():
        pytest.skip(f"CuPy backend not usable: {cupy_unusable_reason()}")
    import cupy

    a = np.arange(5.0)
    d = to_device(a, "cupy")
    assert isinstance(d, cupy.ndarray) and get_namespace(d) is cupy
    assert np.array_equal(to_numpy(d), a)
    with pytest.raises(TypeError, match="mixed array backends"):
        get_namespace(a, d)


def test_random_normal_host_rule():
    from varlearn.backend import random_normal

    a = random_normal(np, (3, 4), np.float32, rng=7)
    assert a.dtype == np.float32 and a.shape == (3, 4)
    assert np.array_equal(a, np.random.default_rng(7).standard_normal((3, 4)).astype(np.float32))
    g1, g2 = np.random.default_rng(5), np.random.default_rng(5)
    b = random_normal(np, 6, np.float64, rng=g1)
    assert np.array_equal(b, g2.standard_normal(6))
    # the generator advanced exactly as the NumPy call did: the next draws agree too
    assert g1.standard_normal() == g2.standard_normal()
    with pytest.raises(ValueError, match="dtype must be a floating dtype, got int64"):
        random_normal(np, 3, np.int64, rng=0)
    with pytest.raises(TypeError, match="rng must be a seed"):
        random_normal(np, 3, np.float64, rng="seed")
    with pytest.raises(ValueError, match="rng must be a non-negative seed, got -1"):
        random_normal(np, 3, np.float64, rng=-1)


@pytest.mark.gpu
def test_random_normal_on_device():
    if not cupy_usable():
        pytest.skip(f"CuPy backend not usable: {cupy_unusable_reason()}")
    import cupy

    from varlearn.backend import random_normal

    for dtype in (np.float32, np.float64):
        g1, g2 = np.random.default_rng(3), np.random.default_rng(3)
        a = random_normal(cupy, (64, 64), dtype, rng=g1)
        b = random_normal(cupy, (64, 64), dtype, rng=g2)
        assert isinstance(a, cupy.ndarray) and a.dtype == dtype
        assert bool((a == b).all())  # same generator state, same device draws
        # the host generator advanced by exactly one integer draw
        g3 = np.random.default_rng(3)
        g3.integers(0, 2**63)
        assert g1.standard_normal() == g3.standard_normal()
        m, s = float(a.mean()), float(a.std())
        assert abs(m) < 0.05 and abs(s - 1.0) < 0.05
