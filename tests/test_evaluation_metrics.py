"""Overlap and surface metrics: hand-computed values on tiny masks (anisotropic spacing, empty masks),
agreement with medpy (same definitions, 1e-6 relative) and with DeepMind's surface-distance
package (Dice identical; surface metrics within the documented discretisation differences)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_data_path
from scipy import ndimage

from autoliver.evaluation import metrics as M


def _box(shape, *slices):
    m = np.zeros(shape, dtype=bool)
    m[slices] = True
    return m


def test_overlap_metrics_by_hand():
    # reference 2×2×2 = 8 voxels, prediction 2×2×3 = 12 voxels sharing 8, in a 4×4×4 = 64 grid
    ref = _box((4, 4, 4), slice(0, 2), slice(0, 2), slice(0, 2))
    pred = _box((4, 4, 4), slice(0, 2), slice(0, 2), slice(0, 3))
    m = M.region_metrics(ref, pred, (2.0, 1.0, 0.5))
    assert (m.tp, m.fp, m.fn, m.tn) == (8, 4, 0, 52)
    assert m.dice == pytest.approx(16 / 20)
    assert m.iou == pytest.approx(8 / 12) and m.voe == pytest.approx(4 / 12)
    assert m.precision == pytest.approx(8 / 12) and m.recall == 1.0
    assert m.specificity == pytest.approx(52 / 56)
    assert m.rvd == pytest.approx(0.5)
    assert m.reference_ml == pytest.approx(8 * 1.0 / 1000) and m.prediction_ml == pytest.approx(12 / 1000)


def test_surface_distances_by_hand_anisotropic():
    # A row of 3 voxels along x against its first voxel; spacing (z, y, x) = (3, 1, 0.5) mm.
    ref = _box((3, 3, 5), 1, 1, slice(1, 4))
    pred = _box((3, 3, 5), 1, 1, 1)
    d = M.surface_distances(ref, pred, (3.0, 1.0, 0.5))
    assert sorted(d.reference_to_prediction) == [0.0, 0.5, 1.0]
    assert list(d.prediction_to_reference) == [0.0]
    assert M.assd(d) == pytest.approx(1.5 / 4)
    assert M.maximum_surface_distance(d) == 1.0
    # 95th percentile of [0, 0, 0.5, 1] with linear interpolation: 0.5 + 0.85 * 0.5
    assert M.hd95(d) == pytest.approx(0.925)
    assert M.normalised_surface_dice(d, 0.6) == pytest.approx(3 / 4)
    assert M.normalised_surface_dice(d, 1.0) == 1.0


def test_shift_by_one_slice_uses_the_slice_spacing():
    ref = _box((8, 8, 8), slice(2, 4), slice(2, 6), slice(2, 6))
    pred = np.roll(ref, 1, axis=0)
    m = M.region_metrics(ref, pred, (5.0, 0.7, 0.7), nsd_tolerance_mm=4.0)
    # Every surface voxel of a 2-slice slab is on the surface; the shifted copy shares one slice.
    # 16 of each 32 surface voxels are 0 mm away, 16 are one slice (5 mm) away.
    assert m.msd_mm == pytest.approx(5.0)
    assert m.assd_mm == pytest.approx(2.5)
    assert m.hd95_mm == pytest.approx(5.0)
    assert m.nsd == pytest.approx(0.5)
    m_iso = M.region_metrics(ref, pred, (1.0, 0.7, 0.7))
    assert m_iso.msd_mm == pytest.approx(1.0)


def test_concentric_spheres_match_the_continuous_distance():
    # Two concentric spheres 20 and 23 mm: every surface point is 3 mm from the other surface.
    spacing = (1.0, 0.5, 0.5)
    shape = (60, 120, 120)
    zz, yy, xx = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)], indexing="ij")
    r = np.sqrt(zz ** 2 + yy ** 2 + xx ** 2)
    m = M.region_metrics(r <= 20, r <= 23, spacing, nsd_tolerance_mm=1.0)
    assert abs(m.assd_mm - 3.0) < 0.5 and abs(m.hd95_mm - 3.0) < 1.0 and abs(m.msd_mm - 3.0) < 1.0
    assert m.nsd == 0.0


@pytest.mark.parametrize("case, expected", [
    ("both empty", dict(dice=1.0, iou=1.0, voe=0.0, precision=1.0, recall=1.0, rvd=0.0, assd_mm=0.0, msd_mm=0.0,
                        hd95_mm=0.0, nsd=1.0)),
    ("reference empty", dict(dice=0.0, iou=0.0, voe=1.0, precision=0.0, recall=0.0, rvd=None, assd_mm=None,
                             msd_mm=None, hd95_mm=None, nsd=0.0)),
    ("prediction empty", dict(dice=0.0, iou=0.0, voe=1.0, precision=0.0, recall=0.0, rvd=-1.0, assd_mm=None,
                              msd_mm=None, hd95_mm=None, nsd=0.0)),
])
def test_empty_masks_follow_the_stated_conventions(case, expected):
    full = _box((4, 5, 6), slice(1, 3), slice(1, 3), slice(1, 3))
    empty = np.zeros((4, 5, 6), dtype=bool)
    ref, pred = {"both empty": (empty, empty), "reference empty": (empty, full),
                 "prediction empty": (full, empty)}[case]
    m = M.region_metrics(ref, pred, (2.0, 1.0, 1.0))
    for key, value in expected.items():
        assert getattr(m, key) == value, key
    assert m.specificity == (1.0 if case != "reference empty" else pytest.approx(112 / 120))


def test_global_dice_pools_voxels_over_cases():
    # case 1: a big perfect liver; case 2: a tiny structure completely missed.
    c1 = M.Counts(tp=1000, fp=0, fn=0, tn=0)
    c2 = M.Counts(tp=0, fp=0, fn=10, tn=0)
    assert M.dice_from_counts(c1) == 1.0 and M.dice_from_counts(c2) == 0.0
    assert M.global_dice([c1, c2]) == pytest.approx(2000 / 2010)


def test_tumour_burden():
    seg = np.zeros((2, 5, 5), np.uint8)
    seg[0, :4, :] = 1
    seg[0, 0, :2] = 2
    assert M.tumour_burden(seg) == pytest.approx(2 / 20)
    assert M.tumour_burden(np.zeros_like(seg)) is None


def test_cropping_changes_nothing_also_at_the_array_edge(rng):
    spacing = (2.0, 0.8, 1.3)
    for offset in ((0, 0, 0), (5, 7, 3), (18, 16, 20)):  # touching the low edge, inside, the high edge
        ref, pred = np.zeros((30, 30, 30), bool), np.zeros((30, 30, 30), bool)
        box = tuple(slice(o, o + 10) for o in offset)
        ref[box], pred[box] = _blob(rng, (10, 10, 10), 0.0), _blob(rng, (10, 10, 10), 0.0)
        d = M.surface_distances(ref, pred, spacing)
        r2p, p2r = _uncropped_distances(ref, pred, spacing)
        np.testing.assert_allclose(np.sort(d.reference_to_prediction), np.sort(r2p))
        np.testing.assert_allclose(np.sort(d.prediction_to_reference), np.sort(p2r))


def _uncropped_distances(ref, pred, spacing):
    """The plain definition on the whole array (outside the array = background)."""
    st = ndimage.generate_binary_structure(3, 2)
    sr = ref & ~ndimage.binary_erosion(ref, st)
    sp = pred & ~ndimage.binary_erosion(pred, st)
    return (ndimage.distance_transform_edt(~sp, sampling=spacing)[sr],
            ndimage.distance_transform_edt(~sr, sampling=spacing)[sp])


def _blob(rng, shape, threshold, sigma=2.0):
    return ndimage.gaussian_filter(rng.standard_normal(shape), sigma) > threshold


def _pairs(rng):
    """Random smooth masks and the two real livers against perturbed copies of themselves."""
    yield "random", _blob(rng, (24, 30, 36), 0.05), _blob(rng, (24, 30, 36), 0.05), (2.5, 0.8, 1.1)
    yield "random-small", _blob(rng, (16, 16, 16), 0.25, 1.5), _blob(rng, (16, 16, 16), 0.25, 1.5), (1.0, 3.0, 0.7)


def _real_pairs():
    from autoliver.io.images import read_image

    for case in ("ts_example_ct", "ts_s0009"):
        img = read_image(shared_data_path("real_ct_liver", "labelsTr", f"{case}.nii.gz"))
        ref = img.array > 0
        pred = ndimage.binary_dilation(np.roll(ref, 2, axis=1))
        third = ref.shape[2] // 3
        pred[:, :, :third] &= ndimage.binary_erosion(ref, iterations=2)[:, :, :third]
        yield case, ref, pred, img.spacing_zyx_mm


def _agree_with_medpy(ref, pred, spacing):
    medpy = pytest.importorskip("medpy.metric.binary")
    for conn in (1, 2):
        m = M.region_metrics(ref, pred, spacing, surface_connectivity=conn)
        expect = {
            "dice": medpy.dc(pred, ref), "iou": medpy.jc(pred, ref), "precision": medpy.precision(pred, ref),
            "recall": medpy.recall(pred, ref), "specificity": medpy.specificity(pred, ref),
            "rvd": medpy.ravd(pred, ref), "assd_mm": medpy.assd(pred, ref, spacing, conn),
            "msd_mm": medpy.hd(pred, ref, spacing, conn), "hd95_mm": medpy.hd95(pred, ref, spacing, conn),
        }
        for key, value in expect.items():
            assert getattr(m, key) == pytest.approx(value, rel=1e-6, abs=1e-12), (key, conn)


def test_agrees_with_medpy_on_random_masks(rng):
    for _, ref, pred, spacing in _pairs(rng):
        _agree_with_medpy(ref, pred, spacing)


def test_agrees_with_medpy_on_real_livers():
    pytest.importorskip("medpy")
    for _, ref, pred, spacing in _real_pairs():
        # medpy works on the whole array; crop to the liver's box to keep this test fast — the
        # crop keeps a margin, so the numbers are those of the full scan (checked above).
        box = M._crop_box(ref | pred)
        box = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in box)
        _agree_with_medpy(ref[box], pred[box], spacing)


def _deepmind(ref, pred, spacing, tolerance_mm=2.0):
    """DeepMind's numbers: Dice, MSD, pooled area-weighted ASSD and NSD."""
    sd = pytest.importorskip("surface_distance")
    s = sd.compute_surface_distances(ref, pred, spacing)
    dist = np.concatenate([s["distances_gt_to_pred"], s["distances_pred_to_gt"]])
    area = np.concatenate([s["surfel_areas_gt"], s["surfel_areas_pred"]])
    return dict(dice=sd.compute_dice_coefficient(ref, pred), msd_mm=sd.compute_robust_hausdorff(s, 100),
                assd_mm=(dist * area).sum() / area.sum(), nsd=sd.compute_surface_dice_at_tolerance(s, tolerance_mm))


# DeepMind's package measures between surface elements on a grid shifted by half a voxel and weights
# them by area, so beyond Dice (identical) the numbers differ by discretisation. Documented bounds:
# on any mask MSD within one voxel; on smooth organ-like masks also ASSD within half a voxel and NSD
# within 0.1. (On noisy random masks ASSD and NSD differ more: 0.7 mm and 0.17 for the first pair.)


def test_agrees_with_deepmind_within_documented_differences(rng):
    for _, ref, pred, spacing in _pairs(rng):
        m, dm = M.region_metrics(ref, pred, spacing), _deepmind(ref, pred, spacing)
        assert m.dice == pytest.approx(dm["dice"], rel=1e-12)
        assert abs(m.msd_mm - dm["msd_mm"]) <= max(spacing) + 1e-9


def test_agrees_with_deepmind_on_smooth_and_real_masks():
    pytest.importorskip("surface_distance")
    spacing = (2.0, 0.8, 0.8)
    zz, yy, xx = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip((30, 64, 64), spacing)],
                             indexing="ij")
    r = np.sqrt(zz ** 2 + yy ** 2 + xx ** 2)
    pairs = [("spheres", r <= 16, r <= 19, spacing), *_real_pairs()]
    for name, ref, pred, spacing in pairs:
        m, dm = M.region_metrics(ref, pred, spacing, nsd_tolerance_mm=2.0), _deepmind(ref, pred, spacing)
        voxel = max(spacing)
        assert m.dice == pytest.approx(dm["dice"], rel=1e-12), name
        assert abs(m.msd_mm - dm["msd_mm"]) <= voxel + 1e-9, name
        assert abs(m.assd_mm - dm["assd_mm"]) <= 0.5 * voxel, name
        assert abs(m.nsd - dm["nsd"]) <= 0.1, name


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        M.region_metrics(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), (1, 1, 1))
