"""Synthetic lesions painted into training patches: inside the liver only, labels that match the
painted image, one ellipsoid across the slices of a 2.5D sample, seeded, and the rate the recipe asks."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from autoliver.errors import UserError
from autoliver.preprocessing import storage
from autoliver.training.data import PatchBatches
from autoliver.training.recipes import Augmentation, RECIPES, check_recipe, get_recipe
from autoliver.training.synthetic_lesions import hu_scales, paint_lesions
from test_training_data import CT_NORMALIZATION, phantom

CT = [CT_NORMALIZATION]  # 1 HU = 0.02 units
QUIET = dict(p_rotation=0, p_scale=0, p_elastic=0, p_noise=0, p_blur=0, p_brightness=0, p_contrast=0,
             p_low_resolution=0, p_gamma=0, p_gamma_inverted=0, mirror=False)


def _liver_volume(shape=(20, 48, 48)):
    """A liver ellipsoid (label 1) of semi-axes 0.4·shape holding a tumour (2) at one side."""
    g = np.indices(shape, dtype=float)
    centre = (np.array(shape) - 1) / 2
    seg = (sum(((gi - c) / (0.4 * n)) ** 2 for gi, c, n in zip(g, centre, shape)) <= 1).astype(np.int16)
    seg[(np.abs(g[0] - centre[0]) < 2) & (np.abs(g[1] - centre[1] - 12) < 3) & (np.abs(g[2] - centre[2]) < 3)] = 2
    return seg


def _paint3d(seed, count=(1, 3), diameter=(4.0, 20.0), hu=(-50.0, -10.0), shape=(20, 48, 48), spacing=(2.0, 1.0, 1.0)):
    seg = _liver_volume(shape)
    image = np.random.default_rng(99).normal(0, 0.3, (2, *shape)).astype(np.float32)
    before_image, before_seg = image.copy(), seg.copy()
    scales = np.array([0.02, 0.04], np.float32)
    n = paint_lesions(image, seg, z_mm=np.arange(shape[0]) * spacing[0], labelled=np.arange(shape[0]),
                      spacing_yx=spacing[1:], scales=scales, rng=np.random.default_rng(seed), liver_label=1,
                      tumour_label=2, count=count, diameter_mm=diameter, contrast_hu=hu)
    return n, before_image, before_seg, image, seg


@pytest.mark.parametrize("seed", range(6))
def test_lesions_are_painted_inside_the_liver_only_and_darker_by_the_drawn_hu(seed):
    n, image0, seg0, image, seg = _paint3d(seed)
    assert 1 <= n <= 3
    diff = image - image0
    changed = np.abs(diff).max(0) > 0
    assert changed.any()
    assert not changed[seg0 != 1].any()  # background and the existing tumour untouched
    assert (diff <= 1e-7).all()  # darker, never brighter
    assert np.allclose(diff[1], 2 * diff[0], atol=1e-6)  # each channel by its own scale (0.04 vs 0.02 per HU)
    assert diff[0].min() >= 0.02 * -50 * 3 - 1e-5  # at most three overlapping lesions of at most 50 HU
    new = (seg == 2) & (seg0 != 2)
    assert new.any() and not (new & (seg0 != 1)).any()  # new tumour only where the liver was
    assert (seg[seg0 != 1] == seg0[seg0 != 1]).all()
    assert set(np.unique(seg)) <= {0, 1, 2}


def test_the_label_is_the_voxels_at_least_half_inside_a_lesion():
    """One lesion at a fixed contrast: tumour exactly where the image went at least half as dark."""
    for seed in range(5):
        _, image0, seg0, image, seg = _paint3d(seed, count=(1, 1), hu=(-30.0, -30.0))
        darker = (image - image0)[0] <= 0.5 * 0.02 * -30 + 1e-6
        assert np.array_equal((seg == 2) & (seg0 == 1), darker & (seg0 == 1))


def test_lesion_size_follows_the_drawn_diameter():
    """A 10 mm lesion on a 1 mm grid: about 4/3·π·5³ = 524 voxels (semi-axes ×0.75–1.25, bent
    surface and the liver's edge give the spread); a 4 mm one under a tenth of that."""
    big = [(s[4] == 2).sum() - (s[2] == 2).sum() for s in (_paint3d(k, (1, 1), (10.0, 10.0), shape=(32, 40, 40),
                                                                    spacing=(1.0, 1.0, 1.0)) for k in range(8))]
    small = [(s[4] == 2).sum() - (s[2] == 2).sum() for s in (_paint3d(k, (1, 1), (4.0, 4.0), shape=(32, 40, 40),
                                                                      spacing=(1.0, 1.0, 1.0)) for k in range(8))]
    assert 150 < np.median(big) < 1100
    assert 5 < np.median(small) < 60


def test_a_2d_sample_gets_one_ellipsoid_across_its_neighbour_slices():
    """2.5D: five slices 3 mm apart, the centre one labelled; repeated end slices (the same height)
    get the same paint, the painted area shrinks away from the lesion's centre, and the centre's
    label matches its own image."""
    liver = np.zeros((1, 40, 40), np.int16)
    liver[0, 4:36, 4:36] = 1
    hits = 0
    for seed in range(10):
        image = np.zeros((1, 5, 40, 40), np.float32)
        seg = liver.copy()
        z_mm = np.array([-3.0, 0.0, 0.0, 3.0, 6.0])  # slice z of a case's first slice: the one below repeated
        paint_lesions(image, seg, z_mm=z_mm, labelled=np.array([2]), spacing_yx=(1.0, 1.0), scales=np.ones(1),
                      rng=np.random.default_rng(seed), liver_label=1, tumour_label=2, count=(1, 1),
                      diameter_mm=(8.0, 16.0), contrast_hu=(-20.0, -20.0))
        assert np.array_equal(image[0, 1], image[0, 2])
        area = (image[0] < 0).sum((1, 2))[[0, 2, 3, 4]]  # by height: -3, 0, 3, 6 mm
        peak = int(area.argmax())
        assert (np.diff(area[:peak + 1]) >= 0).all() and (np.diff(area[peak:]) <= 0).all()
        assert np.array_equal(seg[0] == 2, image[0, 2] <= -10 + 1e-6)
        assert not (image[0][:, liver[0] == 0] < 0).any()
        hits += area[1] > 0
    assert hits >= 8  # the lesion's centre lies within half a semi-axis of the labelled slice


def test_painting_is_seeded():
    a, b = _paint3d(3), _paint3d(3)
    assert np.array_equal(a[3], b[3]) and np.array_equal(a[4], b[4])
    assert not np.array_equal(a[3], _paint3d(4)[3])


def test_hu_scales_per_scheme_and_clear_errors():
    assert hu_scales(CT, "x").tolist() == pytest.approx([0.02])
    assert hu_scales([{"scheme": "hu_window", "lower": -100, "upper": 300}], "x").tolist() == pytest.approx([1 / 400])
    with pytest.raises(UserError, match="case_007.*'zscore'"):
        hu_scales([{"scheme": "zscore", "mean": 0, "std": 1}], "case_007")
    with pytest.raises(UserError, match="case_007.*no normalisation"):
        hu_scales([], "case_007")


def _liver_only_cases(folder, n=3, shape=(16, 40, 40), normalization=CT):
    cases = []
    for i in range(n):
        image, seg, props = phantom(shape, seed=i)
        seg[seg == 2] = 1  # no real tumours: every tumour voxel of a batch is painted
        props["class_locations"] = {"1": np.argwhere(seg[0] == 1)[::11].tolist()}
        case = f"case_{i:03d}"
        storage.write_case(folder, case, image, seg, {"case": case, "normalization": normalization, **props})
        cases.append(case)
    return cases


@pytest.mark.parametrize("patch, context", [((8, 24, 24), 0), ((24, 24), 2)])
def test_patch_batches_paint_at_the_configured_rate_and_stay_reproducible(tmp_path, patch, context):
    cases = _liver_only_cases(tmp_path)
    aug = Augmentation(**QUIET, p_synthetic_lesion=0.5, synthetic_lesion_diameter_mm=(4.0, 8.0))
    kw = dict(augmentation=aug, seed=1, oversample_foreground=1.0, liver_label=1, tumour_label=2,
              spacing_zyx=(2.0, 1.0, 1.0), context_slices=context)
    ds = PatchBatches(tmp_path, cases, patch, 10, 3, **kw)
    painted = [bool((t == 2).any()) for i in range(20) for t in ds[i]["target"].numpy()]
    assert 0.35 <= np.mean(painted) <= 0.65  # 200 samples at p = 0.5
    assert ds[7]["digest"] == PatchBatches(tmp_path, cases, patch, 10, 3, **kw)[7]["digest"]
    off = PatchBatches(tmp_path, cases, patch, 10, 3, **{**kw, "augmentation": dataclasses.replace(aug, p_synthetic_lesion=0)})
    assert not any((off[i]["target"].numpy() == 2).any() for i in range(5))
    val = PatchBatches(tmp_path, cases, patch, 10, 3, **{**kw, "augmentation": None})  # validation: never painted
    assert not any((val[i]["target"].numpy() == 2).any() for i in range(5))


def test_patch_batches_refuse_what_synthetic_lesions_cannot_serve(tmp_path):
    aug = Augmentation(**QUIET, p_synthetic_lesion=0.5)
    cases = _liver_only_cases(tmp_path / "mr", n=1, normalization=[{"scheme": "zscore", "mean": 0.0, "std": 1.0}])
    with pytest.raises(UserError, match="case_000.*zscore"):
        PatchBatches(tmp_path / "mr", cases, (8, 24, 24), 2, 3, augmentation=aug, liver_label=1, tumour_label=2)
    cases = _liver_only_cases(tmp_path / "ct", n=1)
    with pytest.raises(UserError, match="liver and a tumour label"):
        PatchBatches(tmp_path / "ct", cases, (8, 24, 24), 2, 3, augmentation=aug, liver_label=1, tumour_label=None)


def test_the_recipe_and_its_checks():
    r = get_recipe("lesion_synthetic")
    assert r.augmentation.p_synthetic_lesion == 0.3 and r.oversample_lesions == RECIPES["lesion"].oversample_lesions
    for bad in (dict(p_synthetic_lesion=1.5), dict(synthetic_lesion_diameter_mm=(20.0, 4.0)),
                dict(synthetic_lesion_count=(-1, 2))):
        with pytest.raises(UserError, match="recipe lesion_synthetic"):
            check_recipe(dataclasses.replace(r, augmentation=dataclasses.replace(r.augmentation, **bad)))


@pytest.mark.parametrize("patch, context", [((8, 24, 24), 0), ((24, 24), 2)])
def test_the_batch_image_is_darker_exactly_where_painted(tmp_path, patch, context):
    """The first sample of a batch is read before anything is painted: with p = 1 its image is the
    p = 0 image made darker over the painted tumour (the painting reaches the batch, not a copy)."""
    cases = _liver_only_cases(tmp_path)
    kw = dict(seed=5, oversample_foreground=1.0, liver_label=1, tumour_label=2, spacing_zyx=(2.0, 1.0, 1.0),
              context_slices=context)
    painted = PatchBatches(tmp_path, cases, patch, 1, 3, augmentation=Augmentation(**QUIET, p_synthetic_lesion=1.0,
                                                                                  synthetic_lesion_diameter_mm=(4.0, 8.0)), **kw)
    plain = PatchBatches(tmp_path, cases, patch, 1, 3, augmentation=Augmentation(**QUIET), **kw)
    checked = 0
    for i in range(6):
        a, b = painted[i], plain[i]
        tumour = a["target"][0, 0].numpy() == 2
        if not tumour.any():
            continue
        diff = (a["data"] - b["data"])[0].numpy()  # (channels, *patch)
        centre = diff[context] if context else diff[0]  # the labelled slice
        assert (diff <= 1e-6).all() and (centre[tumour] < 0).all()
        checked += 1
    assert checked >= 3
