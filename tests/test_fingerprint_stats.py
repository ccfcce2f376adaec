"""Per-case fingerprint measurements on tiny synthetic volumes: body crop, label statistics,
foreground sampling, noise estimate."""
from __future__ import annotations

import math

import numpy as np
import pytest

from autoliver.fingerprint import stats

LABELS = {"background": 0, "liver": 1, "tumour": 2}


def ball(shape, centre, radius_vox):
    z, y, x = np.indices(shape)
    return ((z - centre[0]) / radius_vox[0]) ** 2 + ((y - centre[1]) / radius_vox[1]) ** 2 + \
        ((x - centre[2]) / radius_vox[2]) ** 2 <= 1.0


def test_ct_crop_is_the_body_not_the_field_of_view():
    shape = (20, 64, 64)
    ct = np.full(shape, -1000.0, dtype=np.float32)
    ct[2:18, 20:50, 10:40] = 40.0  # body
    ct[:, 0:3, :] = -3024.0  # reconstruction padding outside the scanned circle
    box, rule = stats.crop_bbox(ct[None], "CT")
    assert rule == "body_ct"
    assert box == ((2, 18), (20, 50), (10, 40))
    # nnU-Net's non-zero rule would keep everything: air is −1000, not 0
    box_nz, _ = stats.crop_bbox(ct[None], "MRI")
    assert box_nz == ((0, 20), (0, 64), (0, 64))


def test_crop_always_keeps_labels_and_handles_empty_images():
    ct = np.full((10, 32, 32), -1000.0, dtype=np.float32)
    ct[:, 10:20, 10:20] = 50.0
    seg = np.zeros(ct.shape, np.uint8)
    seg[2:4, 25:28, 1:3] = 1  # a label outside the body (a mislabelled voxel still must not be cut)
    box, _ = stats.crop_bbox(ct[None], "CT", seg)
    assert box[1][1] >= 28 and box[2][0] <= 1
    empty = np.full((6, 16, 16), -1000.0, dtype=np.float32)
    assert stats.crop_bbox(empty[None], "CT")[0] == ((0, 6), (0, 16), (0, 16))
    mri = np.zeros((6, 16, 16), np.float32)
    mri[1:3, 4:9, 5:7] = 3.0
    assert stats.crop_bbox(mri[None], "MRI")[0] == ((1, 3), (4, 9), (5, 7))


def test_label_stats_volumes_and_tumour_diameters():
    spacing = (2.0, 1.0, 1.0)
    shape = (30, 80, 80)
    seg = np.zeros(shape, np.uint8)
    seg[ball(shape, (15, 40, 40), (12, 30, 30))] = 1
    t1 = ball(shape, (15, 30, 30), (3, 6, 6))  # radius 6 mm sphere
    t2 = ball(shape, (15, 52, 52), (2, 4, 4))  # radius 4 mm sphere
    seg[t1] = 2
    seg[t2] = 2
    s = stats.label_stats(seg, spacing, LABELS)
    voxel_ml = 2.0 / 1000
    assert s.voxels == {"liver": int((seg == 1).sum()), "tumour": int(t1.sum() + t2.sum())}
    assert s.liver_ml == pytest.approx(((seg > 0).sum()) * voxel_ml)  # tumour counts as liver
    assert s.volume_ml["tumour"] == pytest.approx((t1.sum() + t2.sum()) * voxel_ml)
    assert s.tumour_count == 2
    assert s.tumour_diameters_mm[0] == pytest.approx(12.0, rel=0.1)
    assert s.tumour_diameters_mm[1] == pytest.approx(8.0, rel=0.15)
    eq = 2 * (3 * t1.sum() * 2.0 / (4 * math.pi)) ** (1 / 3)
    assert s.tumour_diameters_mm[0] == pytest.approx(eq, rel=1e-3)


def test_empty_tumour_class():
    seg = np.zeros((5, 10, 10), np.uint8)
    seg[1:4, 2:8, 2:8] = 1
    s = stats.label_stats(seg, (1.0, 1.0, 1.0), LABELS)
    assert s.tumour_count == 0 and s.tumour_diameters_mm == () and s.voxels["tumour"] == 0
    assert s.liver_ml == pytest.approx(3 * 6 * 6 / 1000)


def test_foreground_samples_and_intensity_stats(rng):
    img = rng.normal(100.0, 10.0, size=(2, 20, 30, 30)).astype(np.float32)
    seg = np.zeros((20, 30, 30), np.uint8)
    seg[5:15, 5:25, 5:25] = 1
    img[:, seg == 0] = -1000.0
    samples = stats.sample_foreground(img, seg, 1000, rng)
    assert samples.shape == (2, 1000) and (samples > -500).all()
    everything = stats.sample_foreground(img, seg, 10**6, rng)
    assert everything.shape[1] == int(seg.sum())
    st = stats.intensity_stats(everything[0])
    ref = img[0][seg > 0].astype(np.float64)
    assert st.mean == pytest.approx(ref.mean()) and st.std == pytest.approx(ref.std())
    assert st.percentile_00_5 == pytest.approx(np.percentile(ref, 0.5)) and st.max == pytest.approx(ref.max())
    assert stats.intensity_stats(np.zeros(0)).num_samples == 0


@pytest.mark.parametrize("sigma", [5.0, 20.0, 60.0])
def test_noise_estimate_recovers_sigma_despite_anatomy(rng, sigma):
    shape = (16, 96, 96)
    z, y, x = np.indices(shape)
    liver = ball(shape, (8, 48, 48), (7, 40, 40))
    clean = np.where(liver, 60.0 + 0.3 * y, -1000.0)  # a smooth enhancement gradient across the organ
    clean[ball(shape, (8, 40, 40), (3, 8, 8))] = 20.0  # a lesion: an edge inside the mask
    noisy = (clean + rng.normal(0, sigma, shape)).astype(np.float32)
    est = stats.estimate_noise_sigma(noisy, liver, rng)
    assert est == pytest.approx(sigma, rel=0.1)
    assert stats.estimate_noise_sigma(noisy, np.zeros(shape, bool), rng) == 0.0
