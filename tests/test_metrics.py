"""Tests of varlearn.metrics: PSNR and SSIM against closed forms and scikit-image."""
from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from varlearn import metrics


@pytest.fixture
def pair():
    rng = np.random.default_rng(11)
    clean = rng.random((3, 16, 18))
    noisy = clean + 0.1 * rng.standard_normal(clean.shape)
    return clean, noisy


def test_psnr_closed_form():
    ref = np.zeros((4, 5))
    x = np.full((4, 5), 0.1)  # MSE 0.01 -> 20 dB on a unit range
    assert metrics.psnr(x, ref) == pytest.approx(20.0, abs=1e-12)
    assert metrics.psnr(x * 255, ref, data_range=255.0) == pytest.approx(20.0, abs=1e-12)
    assert metrics.psnr(ref, ref) == math.inf


def test_psnr_from_mse(pair):
    clean, noisy = pair
    mse = np.mean((noisy - clean) ** 2, axis=(-2, -1))
    np.testing.assert_allclose(metrics.psnr_from_mse(mse), metrics.psnr_per_image(noisy, clean), rtol=1e-12)
    assert metrics.psnr_from_mse(0.01) == pytest.approx(20.0, abs=1e-12)
    assert metrics.psnr_from_mse(0.01 * 255**2, data_range=255) == pytest.approx(20.0, abs=1e-12)
    assert metrics.psnr_from_mse(0.0) == math.inf
    assert metrics.psnr_from_mse(np.array([0.0, 1.0])).tolist() == [math.inf, 0.0]
    with pytest.raises(ValueError, match="mse must be >= 0"):
        metrics.psnr_from_mse(-1e-3)
    with pytest.raises(ValueError, match="mse must be >= 0 everywhere"):
        metrics.psnr_from_mse(np.array([0.1, np.nan]))


def test_psnr_matches_skimage_without_clipping(pair):
    clean, noisy = pair
    assert noisy.min() < 0 and noisy.max() > 1  # out-of-range pixels are charged, not clipped
    want = peak_signal_noise_ratio(clean, noisy, data_range=1.0)
    assert metrics.psnr(noisy, clean) == pytest.approx(want, rel=1e-12)


def test_per_image_and_mean(pair):
    clean, noisy = pair
    noisy = noisy.copy()
    noisy[1] = clean[1] + 0.5 * (noisy[1] - clean[1])  # image 1 has half the error: +6.02 dB
    per = metrics.psnr_per_image(noisy, clean)
    assert per.shape == (3,)
    for i in range(3):
        assert per[i] == pytest.approx(metrics.psnr(noisy[i], clean[i]), rel=1e-12)
    assert per[1] - per[0] > 5.0
    assert metrics.mean_psnr(noisy, clean) == pytest.approx(per.mean(), rel=1e-12)
    # the batch PSNR pools the MSE, which differs from the mean of the per-image PSNRs
    assert abs(metrics.psnr(noisy, clean) - per.mean()) > 0.1
    assert metrics.psnr_per_image(noisy[0], clean[0]).shape == ()


def test_clip_is_explicit(pair):
    clean, noisy = pair
    clipped = np.clip(noisy, 0.0, 1.0)
    assert metrics.psnr(noisy, clean, clip=True) == pytest.approx(metrics.psnr(clipped, clean), rel=1e-12)
    assert metrics.psnr(noisy, clean, clip=True) > metrics.psnr(noisy, clean) + 0.1
    np.testing.assert_array_equal(noisy, pair[1])  # inputs untouched
    with pytest.raises(TypeError, match="clip"):
        metrics.psnr(noisy, clean, clip="yes")
    # clipping a reference outside [0, data_range] would change the ground truth: refused
    with pytest.raises(ValueError, match=r"clip=True.*reference lies in"):
        metrics.psnr(noisy, clean - 0.5, clip=True)
    # without clipping, an offset reference within the range width is fine
    assert metrics.psnr(noisy - 0.5, clean - 0.5) == pytest.approx(metrics.psnr(noisy, clean), rel=1e-9)


def test_data_range_is_checked(pair):
    clean, noisy = pair
    with pytest.raises(ValueError, match=r"reference spans .*wider than data_range=1"):
        metrics.psnr(noisy * 255, clean * 255)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="data_range"):
            metrics.psnr(noisy, clean, data_range=bad)
    with pytest.raises(TypeError, match="data_range"):
        metrics.psnr(noisy, clean, data_range="1")


def test_bad_inputs(pair):
    clean, noisy = pair
    with pytest.raises(ValueError, match=r"same shape.*\(3, 16, 18\).*\(3, 16, 17\)"):
        metrics.psnr(noisy, clean[..., :17])
    bad = noisy.copy()
    bad[0, 1, 2] = np.nan
    with pytest.raises(ValueError, match="x contains NaN"):
        metrics.psnr(bad, clean)
    with pytest.raises(ValueError, match="reference contains NaN"):
        metrics.ssim(clean, bad)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        metrics.psnr(noisy[0, 0], clean[0, 0])
    with pytest.raises(TypeError, match="real numbers"):
        metrics.psnr(noisy.astype(complex), clean)


def test_ssim_matches_skimage(pair):
    clean, noisy = pair
    per = metrics.ssim_per_image(noisy, clean)
    assert per.shape == (3,)
    for i in range(3):
        assert per[i] == pytest.approx(structural_similarity(noisy[i], clean[i], data_range=1.0), rel=1e-12)
    assert metrics.ssim(noisy, clean) == pytest.approx(per.mean(), rel=1e-12)
    assert metrics.ssim(clean[0], clean[0]) == pytest.approx(1.0, abs=1e-12)
    assert metrics.ssim(noisy, clean, clip=True) == pytest.approx(metrics.ssim(np.clip(noisy, 0, 1), clean))
    with pytest.raises(ValueError, match="at least 7x7"):
        metrics.ssim(noisy[:, :6, :6], clean[:, :6, :6])


def test_float32_is_computed_in_float64():
    rng = np.random.default_rng(3)
    ref = rng.random((32, 32))
    x = ref + 1e-4 * rng.standard_normal(ref.shape)
    want = metrics.psnr(x.astype(np.float32).astype(np.float64), ref.astype(np.float32).astype(np.float64))
    assert metrics.psnr(x.astype(np.float32), ref.astype(np.float32)) == pytest.approx(want, rel=1e-12)


@pytest.mark.gpu
def test_cupy_matches_numpy(pair):
    from varlearn.backend import cupy_unusable_reason, cupy_usable, to_device

    if not cupy_usable():
        pytest.skip(f"CuPy backend not usable: {cupy_unusable_reason()}")
    clean, noisy = pair
    cn, cc = to_device(noisy, "cupy"), to_device(clean, "cupy")
    per = metrics.psnr_per_image(cn, cc)
    assert type(per).__module__.startswith("cupy")
    np.testing.assert_allclose(per.get(), metrics.psnr_per_image(noisy, clean), rtol=1e-12)
    assert metrics.ssim(cn, cc) == pytest.approx(metrics.ssim(noisy, clean), rel=1e-12)
    with pytest.raises(TypeError, match="mixed array backends"):
        metrics.psnr(cn, clean)
