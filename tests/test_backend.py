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
