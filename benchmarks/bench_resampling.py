"""What anti-aliased resampling costs: ``autoliver.preprocessing.resampling.resample_image`` with and
without ``anti_aliasing`` beside scikit-image's ``resize(anti_aliasing=True)``, the library call a
user would otherwise pick for a smoothed downsampling (nnU-Net does not smooth).

    python -m pytest benchmarks/bench_resampling.py --benchmark-only

The benchmarks' synthetic CT (200 × 512 × 512 at 2.5 × 0.78 × 0.78 mm, int16, noise σ 20 HU) to
1.5 mm in-plane (200 × 266 × 266), cubic, on the CPU threads torch and SciPy are given. Each test
also checks what it computes: autoliver's anti-aliased result equals SciPy's Gaussian of the whole
volume followed by the same cubic sampling, and every smoothed result keeps far less of the noise
than plain cubic sampling does.
"""
from __future__ import annotations

import numpy as np
import pytest

from _synthetic_ct import LIVER_HU, NOISE_SIGMA_HU, SPACING_ZYX_MM, synthetic_ct
from autoliver.preprocessing import resampling

TARGET_MM = 1.5
ROUNDS = 3  # scikit-image takes tens of seconds per call


@pytest.fixture(scope="module")
def case():
    ct, liver = synthetic_ct()
    new = resampling.shape_for_spacing(ct.shape, SPACING_ZYX_MM, (SPACING_ZYX_MM[0], TARGET_MM, TARGET_MM))
    # A box inside the liver away from its tumours, where the only texture is the noise: the first
    # one on a grid over the liver whose voxels are all liver at the liver's mean (± 2 HU).
    zz, yy, xx = np.nonzero(liver)
    for z in range(zz.min() + 8, zz.max() - 8, 4):
        for y in range(yy.min() + 32, yy.max() - 32, 8):
            for x in range(xx.min() + 32, xx.max() - 32, 8):
                box = (slice(z - 4, z + 5), slice(y - 24, y + 24), slice(x - 24, x + 24))
                if liver[box].all() and abs(ct[box].mean() - LIVER_HU) < 2:
                    return ct, new, (z, y, x)
    raise AssertionError("no tumour-free liver box in the synthetic CT")


def _liver_noise(benchmark, out, shape, centre) -> float:
    """σ in HU of a 5 × 16 × 16 box of the result inside the liver (recorded with the timing)."""
    z, y, x = (int(c * n / m) for c, n, m in zip(centre, out.shape, shape))
    sigma = float(out[z - 2:z + 3, y - 8:y + 8, x - 8:x + 8].std())
    benchmark.extra_info["liver_noise_hu"] = round(sigma, 1)
    print(f"\n{benchmark.name}: liver noise {sigma:.1f} HU (input {NOISE_SIGMA_HU:.0f} HU)")
    return sigma


def test_autoliver_cubic(benchmark, case):
    ct, new, centre = case
    out = benchmark.pedantic(resampling.resample_image, (ct, new, (3, 3, 3)), rounds=ROUNDS)
    assert _liver_noise(benchmark, out, ct.shape, centre) > 0.8 * NOISE_SIGMA_HU  # cubic sampling keeps the noise


def test_autoliver_cubic_anti_aliased(benchmark, case):
    ct, new, centre = case
    out = benchmark.pedantic(resampling.resample_image, (ct, new, (3, 3, 3)), {"anti_aliasing": True}, rounds=ROUNDS)
    assert _liver_noise(benchmark, out, ct.shape, centre) < 0.7 * NOISE_SIGMA_HU
    # Spot-check against the plain reference on one slab: SciPy's Gaussian, then dense matrices.
    from scipy import ndimage

    sigmas = resampling.anti_aliasing_sigmas(ct.shape, new)
    slab = ndimage.gaussian_filter(ct[100:101].astype(np.float64), sigmas, mode="nearest")
    ref = resampling.resample_reference(slab, (1, *new[1:]), (3, 3, 3))
    np.testing.assert_allclose(out[100:101], ref, rtol=1e-4, atol=0.05)  # HU, float32


def test_skimage_resize_anti_aliased(benchmark, case):
    transform = pytest.importorskip("skimage.transform")
    ct, new, centre = case
    out = benchmark.pedantic(transform.resize, (ct, new), dict(order=3, mode="edge", anti_aliasing=True,
                                                               preserve_range=True), rounds=ROUNDS)
    assert _liver_noise(benchmark, out, ct.shape, centre) < 0.7 * NOISE_SIGMA_HU
