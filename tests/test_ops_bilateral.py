"""Bilateral filter: compiled kernel vs the NumPy reference, edge cases, SimpleITK parity, fallback."""
from __future__ import annotations

import numpy as np
import pytest

from autoliver.errors import UserError
from autoliver.ops import _ext
from autoliver.ops.bilateral import bilateral_filter, bilateral_reference, window_radius

CT_SPACING = (2.5, 0.78, 0.78)


@pytest.fixture(autouse=True)
def _restore_threads():
    yield
    _ext.set_num_threads(None)


@pytest.fixture
def kernel():
    mod = _ext.load("bilateral")
    if mod is None:
        pytest.skip("compiled bilateral kernel not built (the reference path is tested separately)")
    return mod


def _ct_phantom(shape=(10, 36, 40), seed=0, dtype=np.int16):
    """Air border, body, liver disc, tumour, bone, noise sigma 20 HU."""
    rng = np.random.default_rng(seed)
    _, y, x = np.indices(shape)
    v = np.full(shape, 40.0)
    cy, cx = shape[1] // 2, shape[2] // 2
    v[(y - cy) ** 2 + (x - cx) ** 2 < (min(shape[1:]) // 3) ** 2] = 60
    v[(y - cy + 4) ** 2 + (x - cx - 3) ** 2 < 12] = 20
    v[(y - shape[1] + 6) ** 2 + (x - cx) ** 2 < 15] = 700
    v[:, :, :4] = -1000
    return (v + rng.normal(0, 20, shape)).astype(dtype)


def _tolerance(volume):
    # The kernel sums float32 weights (relative error ~1e-6, polynomial exp2 < 3e-7) of
    # differences to the centre; the reference is float64. 1e-5 of the intensity span is far
    # below any meaningful HU difference and far above float32 rounding of these sums.
    span = float(np.ptp(volume.astype(np.float64))) if volume.size else 0.0
    return 1e-4 + 1e-5 * span


@pytest.mark.parametrize("dtype", ["int16", "float32", "uint8", "int8", "uint16", "int32", "float64"])
def test_matches_reference_all_dtypes(kernel, dtype):
    rng = np.random.default_rng(1)
    lo, hi = (0, 250) if dtype in ("uint8", "uint16") else (-120, 120)
    v = rng.uniform(lo, hi, (6, 19, 23)).astype(dtype)
    out = bilateral_filter(v, (1.0, 1.0, 1.0), 1.2, 30.0)
    assert out.dtype == np.float32 and out.shape == v.shape
    np.testing.assert_allclose(out, bilateral_reference(v, (1.0, 1.0, 1.0), 1.2, 30.0), rtol=0, atol=_tolerance(v))


@pytest.mark.parametrize("seed,shape,spacing,sigma,range_sigma", [
    (0, (10, 36, 40), CT_SPACING, 1.0, 50.0),              # the 9x9x3 CT window
    (1, (7, 25, 31), (1.0, 1.0, 1.0), 1.3, 50.0),          # isotropic, 7x7x7
    (2, (9, 11, 13), (0.5, 3.0, 1.0), (1.0, 2.0, 0.7), 80.0),  # per-axis sigma, strongly anisotropic
    (3, (40, 12, 9), (1.0, 1.0, 1.0), 0.8, 25.0),           # many z-slabs (threads split z)
    (4, (3, 4, 5), (1.0, 1.0, 1.0), 3.0, 100.0),           # window larger than the volume
])
def test_matches_reference_random(kernel, seed, shape, spacing, sigma, range_sigma):
    v = _ct_phantom(shape, seed)
    out = bilateral_filter(v, spacing, sigma, range_sigma)
    np.testing.assert_allclose(out, bilateral_reference(v, spacing, sigma, range_sigma), rtol=0, atol=_tolerance(v))


@pytest.mark.parametrize("shape", [(1, 30, 33), (12, 1, 20), (10, 15, 1), (1, 1, 1), (1, 1, 17)])
def test_one_voxel_thick(kernel, shape):
    v = _ct_phantom(shape, 5)
    out = bilateral_filter(v, CT_SPACING, 1.0, 50.0)
    np.testing.assert_allclose(out, bilateral_reference(v, CT_SPACING, 1.0, 50.0), rtol=0, atol=_tolerance(v))


def test_2d_matches_reference(kernel):
    v = _ct_phantom((1, 40, 37), 6)[0].astype(np.float32)
    out = bilateral_filter(v, (0.7, 0.7), 1.5, 40.0)
    assert out.shape == v.shape
    np.testing.assert_allclose(out, bilateral_reference(v, (0.7, 0.7), 1.5, 40.0), rtol=0, atol=_tolerance(v))


def test_constant_single_voxel_and_empty():
    np.testing.assert_array_equal(bilateral_filter(np.full((4, 5, 6), 37, np.int16), (1, 1, 1), 2.0, 10.0), 37.0)
    np.testing.assert_array_equal(bilateral_filter(np.array([[[-5.5]]], np.float32), (1, 1, 1), 1.0, 1.0), [[[-5.5]]])
    out = bilateral_filter(np.zeros((0, 5, 5), np.int16), (1, 1, 1), 1.0, 1.0)
    assert out.shape == (0, 5, 5) and out.dtype == np.float32


def test_edges_survive_and_noise_drops(kernel):
    # a 500 HU step with 10 HU noise: range sigma 50 keeps the step, smooths the noise
    rng = np.random.default_rng(7)
    v = np.where(np.arange(40)[None, None, :] < 20, 0.0, 500.0) + rng.normal(0, 10, (8, 30, 40))
    out = bilateral_filter(v.astype(np.float32), (1, 1, 1), 1.5, 50.0)
    assert abs(out[:, :, :18].mean() - 0) < 1 and abs(out[:, :, 22:].mean() - 500) < 1
    assert out[:, :, 19].max() < 60 and out[:, :, 20].min() > 440
    assert out[:, :, :18].std() < 0.5 * v[:, :, :18].std()


def test_threads_give_identical_results(kernel):
    v = _ct_phantom((41, 20, 24), 8)
    _ext.set_num_threads(1)
    one = bilateral_filter(v, CT_SPACING, 1.0, 50.0)
    _ext.set_num_threads(3)
    three = bilateral_filter(v, CT_SPACING, 1.0, 50.0)
    np.testing.assert_array_equal(one, three)


def test_non_contiguous_and_big_endian_inputs_are_not_modified(kernel):
    base = _ct_phantom((8, 30, 40), 9)
    expected = bilateral_filter(np.ascontiguousarray(base[:, ::2, ::-1]), CT_SPACING, 1.0, 50.0)
    view = base[:, ::2, ::-1]
    before = view.copy()
    np.testing.assert_array_equal(bilateral_filter(view, CT_SPACING, 1.0, 50.0), expected)
    np.testing.assert_array_equal(view, before)
    big = np.ascontiguousarray(base[:, ::2, ::-1]).astype(">i2")
    big_before = big.copy()
    np.testing.assert_array_equal(bilateral_filter(big, CT_SPACING, 1.0, 50.0), expected)
    np.testing.assert_array_equal(big, big_before)
    fortran = np.asfortranarray(base[:, ::2, ::-1])
    np.testing.assert_array_equal(bilateral_filter(fortran, CT_SPACING, 1.0, 50.0), expected)


def test_window_radius_follows_itk():
    assert window_radius(CT_SPACING, (1.0, 1.0, 1.0)) == (1, 4, 4)  # 2.5/2.5 = 1 exactly, 2.5/0.78 -> 4
    assert window_radius((1.0, 0.5), (2.0, 0.1)) == (5, 1)


def test_simpleitk_parity():
    """Same function as SimpleITK's BilateralImageFilter, apart from ITK's range table.

    ITK evaluates the range Gaussian from a 100-entry table over [0, 4 sigma): |d| is floored to a
    multiple of 4 sigma / 100 (2 HU here), so a weight is too large by up to e^(|d| 2HU / sigma^2)
    (4% at |d| = sigma, 17% at 4 sigma), and pairs with |d| >= 4 sigma (weight < e^-8) are dropped.
    1. The reference with that table reproduces SimpleITK to float32 rounding (1e-3 HU): window,
       spatial weights and borders are ITK's.
    2. The kernel minus SimpleITK equals the exact-minus-table reference difference to 1e-3 HU:
       the table is the only difference.
    3. That difference is small on CT-like data (20 HU noise): below 0.25 HU on average, 1.5 HU at
       most.
    """
    sitk = pytest.importorskip("SimpleITK")
    v = _ct_phantom((12, 40, 40), 3, np.float32)
    img = sitk.GetImageFromArray(v)
    img.SetSpacing(CT_SPACING[::-1])
    f = sitk.BilateralImageFilter()
    f.SetDomainSigma(1.0)
    f.SetRangeSigma(50.0)
    f.SetNumberOfRangeGaussianSamples(100)
    itk_out = sitk.GetArrayFromImage(f.Execute(img)).astype(np.float64)
    ref_table = bilateral_reference(v, CT_SPACING, 1.0, 50.0, range_samples=100)
    ref_exact = bilateral_reference(v, CT_SPACING, 1.0, 50.0)
    np.testing.assert_allclose(ref_table, itk_out, rtol=0, atol=1e-3)
    ours = bilateral_filter(v, CT_SPACING, 1.0, 50.0).astype(np.float64)
    np.testing.assert_allclose(ours - itk_out, ref_exact - ref_table, rtol=0, atol=1e-3)
    diff = np.abs(ours - itk_out)
    assert diff.mean() < 0.25 and diff.max() < 1.5


def test_fallback_without_extension(monkeypatch):
    v = _ct_phantom((5, 14, 16), 10)
    monkeypatch.setenv("AUTOLIVER_DISABLE_EXT", "1")
    out = bilateral_filter(v, CT_SPACING, 1.0, 50.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, bilateral_reference(v, CT_SPACING, 1.0, 50.0), rtol=0, atol=1e-3)


def test_torch_cpu_tensor(kernel):
    torch = pytest.importorskip("torch")
    v = _ct_phantom((5, 14, 16), 11)
    out = bilateral_filter(torch.from_numpy(v), CT_SPACING, 1.0, 50.0)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), bilateral_filter(v, CT_SPACING, 1.0, 50.0))


@pytest.mark.parametrize("args,match", [
    ((np.zeros((2, 3, 4, 5), np.int16), (1, 1, 1), 1.0, 1.0), "2D .* or 3D"),
    ((np.zeros((3, 4, 5), bool), (1, 1, 1), 1.0, 1.0), "dtype must be one of"),
    ((np.zeros((3, 4, 5), np.int16), (1, 1), 1.0, 1.0), "spacing_zyx_mm: must have 3 values"),
    ((np.zeros((3, 4, 5), np.int16), (1, -1, 1), 1.0, 1.0), "spacing_zyx_mm: every value"),
    ((np.zeros((3, 4, 5), np.int16), (1, 1, 1), 0.0, 1.0), "domain_sigma_mm: every value"),
    ((np.zeros((3, 4, 5), np.int16), (1, 1, 1), 1.0, 0.0), "range_sigma must be"),
    ((np.full((3, 4, 5), np.nan, np.float32), (1, 1, 1), 1.0, 1.0), "NaN or infinite"),
    (([[1, 2], [3, 4]], (1, 1), 1.0, 1.0), "NumPy array or a torch tensor"),
])
def test_invalid_inputs_are_user_errors(args, match):
    with pytest.raises(UserError, match=match):
        bilateral_filter(*args)


# ---------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)


def _cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["int16", "float32", "uint8"])
def test_cuda_matches_cpu(dtype):
    torch = _cuda()
    v = _ct_phantom((14, 45, 50), 12).clip(0 if dtype == "uint8" else -2000, 255 if dtype == "uint8" else 2000)
    v = v.astype(dtype)
    out = bilateral_filter(torch.from_numpy(v).cuda(), CT_SPACING, 1.0, 50.0)
    assert out.is_cuda and out.dtype == torch.float32
    # GPU exp2 (ex2.approx) has ~2^-22 relative error; the same tolerance as the CPU kernel
    np.testing.assert_allclose(out.cpu().numpy(), bilateral_reference(v, CT_SPACING, 1.0, 50.0), rtol=0,
                               atol=_tolerance(v))


@pytest.mark.gpu
def test_cuda_2d_and_non_contiguous():
    torch = _cuda()
    v = _ct_phantom((1, 40, 44), 13)[0].astype(np.float32)
    t = torch.from_numpy(v).cuda().t()  # non-contiguous view
    out = bilateral_filter(t, (0.8, 0.8), 1.2, 40.0)
    np.testing.assert_allclose(out.cpu().numpy(), bilateral_reference(v.T, (0.8, 0.8), 1.2, 40.0), rtol=0,
                               atol=_tolerance(v))
