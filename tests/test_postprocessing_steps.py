"""Post-processing removes what it should, keeps what it should, in mm where it says mm."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from autoliver.ops import crf
from autoliver.postprocessing import NONE, Postprocessing, postprocess
from autoliver.postprocessing import components as comps
from autoliver.postprocessing import steps


def ball(shape, centre, radius_vox):
    zz, yy, xx = np.indices(shape)
    return ((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2) <= radius_vox ** 2


@pytest.fixture
def liver_case():
    """A big liver with an inner tumour, a liver island, and a tumour in the 'spleen'."""
    shape = (30, 40, 40)
    seg = np.zeros(shape, np.uint8)
    seg[ball(shape, (15, 15, 15), 10)] = 1
    seg[ball(shape, (15, 15, 15), 4)] = 2  # inside the liver
    seg[ball(shape, (15, 34, 34), 2)] = 1  # a separate liver island (false positive)
    seg[ball(shape, (4, 34, 5), 2)] = 2  # tumour far from the liver
    return seg


def test_label_values_from_names():
    assert steps.liver_and_tumour_labels({"background": 0, "liver": 1, "tumour": 2}) == (1, 2)
    assert steps.liver_and_tumour_labels({"background": 0, "liver": 1, "tumor": 2}) == (1, 2)
    assert steps.liver_and_tumour_labels({"background": 0, "liver": 1}) == (1, None)
    assert steps.liver_and_tumour_labels({"background": 0, "Liver": 2, "lesion": 1}) == (2, 1)


def test_keep_largest_liver_removes_islands_and_keeps_inner_tumour(liver_case):
    out = steps.keep_largest_liver(liver_case, 1, 2)
    assert out[15, 34, 34] == 0 and out[4, 34, 5] == 0  # island and lone tumour gone
    assert out[15, 15, 15] == 2  # the tumour inside the kept liver stays tumour
    main = ndimage.label(liver_case > 0)[0]
    keep = main == main[15, 15, 15]
    np.testing.assert_array_equal(out[keep], liver_case[keep])
    assert np.count_nonzero(out[~keep]) == 0
    assert liver_case[15, 34, 34] == 1  # the input is not modified


def test_keep_largest_liver_on_empty_and_liver_only():
    empty = np.zeros((5, 6, 7), np.uint8)
    np.testing.assert_array_equal(steps.keep_largest_liver(empty), empty)
    seg = np.zeros((5, 20, 20), np.uint8)
    seg[1:4, 1:10, 1:10] = 1
    seg[2, 15:18, 15:18] = 1
    out = steps.keep_largest_liver(seg, 1, None)
    assert out[2, 16, 16] == 0 and out[2, 5, 5] == 1


def test_tumour_outside_dilated_liver_is_dropped_in_mm():
    seg = np.zeros((20, 40, 40), np.uint8)
    seg[5:15, 5:20, 5:20] = 1
    seg[8:11, 8:12, 8:12] = 2  # inside
    seg[8:11, 8:12, 22:25] = 2  # 2 voxels of gap (x) beyond the liver edge at x=19
    seg[8:11, 8:12, 35:38] = 2  # far away
    spacing = (2.0, 1.0, 1.0)
    out = steps.constrain_tumour_to_liver(seg, spacing, 1, 2, margin_mm=5.0)
    assert out[9, 9, 9] == 2 and out[9, 9, 23] == 2 and out[9, 9, 36] == 0
    # the margin is in mm: with 1 mm no voxel of the second tumour is within reach (gap of 3 mm)
    out = steps.constrain_tumour_to_liver(seg, spacing, 1, 2, margin_mm=1.0)
    assert out[9, 9, 23] == 0 and out[9, 9, 9] == 2
    # anisotropic: the same gap along z (2 mm voxels) is 6 mm
    seg2 = np.zeros((30, 20, 20), np.uint8)
    seg2[5:10] = 1
    seg2[12:14, 5:8, 5:8] = 2  # starts 3 slices (6 mm) after the liver ends at slice 9
    assert steps.constrain_tumour_to_liver(seg2, spacing, 1, 2, margin_mm=5.0)[12, 6, 6] == 0
    assert steps.constrain_tumour_to_liver(seg2, spacing, 1, 2, margin_mm=6.0)[12, 6, 6] == 2


def test_tumour_without_liver_is_dropped():
    seg = np.zeros((5, 5, 5), np.uint8)
    seg[1:3, 1:3, 1:3] = 2
    assert steps.constrain_tumour_to_liver(seg, (1, 1, 1)).max() == 0


def test_remove_small_lesions_by_volume():
    seg = np.zeros((20, 30, 30), np.uint8)
    seg[2:18, 2:28, 2:28] = 1
    seg[5:7, 5:7, 5:7] = 2  # 8 voxels × 2 mm³ = 0.016 ml, inside the liver
    seg[8:14, 10:20, 10:20] = 2  # 600 voxels = 1.2 ml
    lone = np.zeros_like(seg)
    out = steps.remove_small_lesions(seg, (2.0, 1.0, 1.0), 1, 2, min_ml=0.1)
    assert out[6, 6, 6] == 1  # too small: becomes liver
    assert out[10, 15, 15] == 2
    lone[3:5, 3:5, 3:5] = 2  # a small lesion with no liver around: background
    assert steps.remove_small_lesions(lone, (1, 1, 1), 1, 2, min_ml=1.0).max() == 0
    np.testing.assert_array_equal(steps.remove_small_lesions(seg, (1, 1, 1), 1, 2, min_ml=0.0), seg)


def test_otsu_threshold_separates_two_modes():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.1, 0.03, 5000), rng.normal(0.7, 0.05, 3000)]).clip(0, 1)
    t = steps.otsu_threshold(values)
    assert (values[:5000] < t).mean() > 0.99 and (values[5000:] > t).all()
    skimage_filters = pytest.importorskip("skimage.filters")
    assert t == pytest.approx(skimage_filters.threshold_otsu(values, nbins=256), abs=0.01)


def test_labels_by_otsu_on_probabilities():
    shape = (10, 20, 20)
    p = np.zeros((3, *shape), np.float32)
    organ = ball(shape, (5, 10, 10), 6)
    tumour = ball(shape, (5, 10, 10), 2)
    fg = np.where(organ, 0.45, 0.02)  # an under-confident network: argmax would miss the organ
    p[2] = np.where(tumour, 0.35, 0.0) * fg / 0.45
    p[1] = fg - p[2]
    p[0] = 1 - fg
    argmax = np.argmax(p, 0)
    assert (argmax[organ] == 0).all()
    seg = steps.labels_by_otsu(p, 1, 2)
    assert (seg[organ] > 0).all() and (seg[~organ] == 0).all()
    assert (seg[tumour] == 2).all() and (seg[organ & ~tumour] == 1).all()


def test_labels_by_otsu_does_not_invent_tumour():
    p = np.zeros((3, 8, 8, 8), np.float32)
    p[0], p[1] = 0.05, 0.94
    p[2] = 0.01 + np.random.default_rng(0).random((8, 8, 8)) * 1e-3
    assert steps.labels_by_otsu(p, 1, 2).max() == 1


def test_postprocess_recipe_composes_and_none_is_argmax(liver_case):
    labels = {"background": 0, "liver": 1, "tumour": 2}
    p = np.stack([(liver_case == k).astype(np.float32) for k in range(3)]) * 0.9 + 0.1 / 3
    np.testing.assert_array_equal(postprocess(p, (1, 1, 1), NONE, labels), liver_case)
    recipe = Postprocessing(keep_largest_liver=True, tumour_in_liver=True)
    out = postprocess(liver_case, (1, 1, 1), recipe, labels)
    assert out[15, 34, 34] == 0 and out[4, 34, 5] == 0 and out[15, 15, 15] == 2
    with pytest.raises(ValueError, match="probabilities"):
        postprocess(liver_case, (1, 1, 1), Postprocessing(otsu=True), labels)
    assert "keep_largest_liver" in recipe.describe() and NONE.describe() == "none"


def test_crf_step_runs_and_cleans_noise():
    params = crf.CRFParams(appearance_intensity_sigma=0.1, appearance_sigma_mm=10.0, appearance_weight=3.0)
    shape = (12, 24, 24)
    organ = ball(shape, (6, 12, 12), 7)
    image = np.where(organ, 60.0, -100.0).astype(np.float32)
    rng = np.random.default_rng(0)
    p1 = np.clip(np.where(organ, 0.7, 0.3) + rng.normal(0, 0.25, shape), 0.01, 0.99).astype(np.float32)
    p = np.stack([1 - p1, p1])
    noisy = np.argmax(p, 0)
    refined = postprocess(p, (2.0, 1.0, 1.0), Postprocessing(crf=True), {"background": 0, "liver": 1}, image=image,
                          crf_params=params)
    err = lambda s: np.count_nonzero((s > 0) != organ)  # noqa: E731
    assert err(refined) < err(noisy) / 10


def test_component_fallback_agrees_with_scipy(rng):
    mask = rng.random((12, 13, 14)) > 0.7
    labels, n = comps.label(mask)
    ref, n_ref = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    assert n == n_ref
    assert len(np.unique(labels[mask])) == n and (labels[~mask] == 0).all()
    sizes = np.bincount(ref.ravel())
    sizes[0] = 0
    np.testing.assert_array_equal(comps.largest_component(mask), ref == np.argmax(sizes))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_argmax_labels_equals_numpy_including_ties(dtype, rng):
    p = rng.random((4, 37, 11, 13)).astype(dtype)
    p[:, :5] = 0.25  # all equal: the first class wins, as in np.argmax
    p[1:3, 5:9] = 0.9  # a tie between classes 1 and 2
    out = steps.argmax_labels(p, slab=7)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.argmax(p, axis=0))
