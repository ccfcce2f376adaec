"""Preprocessing, the pure steps: resampling against its dense reference, normalisation schemes,
cropping, and preprocess → revert round trips on phantoms and on the real CTs."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autoliver.errors import UserError
from autoliver.io.images import Geometry, Image, read_image
from autoliver.planning.plan import (ChannelNormalization, Configuration, Denoise, NetworkSpec, Plan,
                                     Resampling)
from autoliver.preprocessing import cropping, normalization, resampling
from autoliver.preprocessing.pipeline import (effective_configuration, preprocess_case, preprocessing_hash,
                                              revert_to_original)
from autoliver.schema import from_jsonable, to_jsonable
from conftest import shared_data_path

LABELS = {"background": 0, "liver": 1, "tumour": 2}


# ----------------------------------------------------------------------------------------------
# Phantoms and hand-made plans
# ----------------------------------------------------------------------------------------------

def phantom_ct(shape=(40, 96, 96), spacing_zyx=(2.5, 0.8, 0.8), seed=0, tumour_mm=12.0):
    """Air, an elliptic body (40 HU), a liver ellipsoid (60 HU) holding a spherical tumour (20 HU),
    Gaussian noise; labels 1 liver, 2 tumour. Flipped x/y directions and an offset origin."""
    rng = np.random.default_rng(seed)
    z, y, x = [(np.arange(n) - n / 2 + 0.5) * s for n, s in zip(shape, spacing_zyx)]
    Z, Y, X = np.meshgrid(z, y, x, indexing="ij")
    img = np.full(shape, -1000.0)
    img[(Y / 30) ** 2 + (X / 34) ** 2 < 1] = 40
    liver = ((Z - 3) / 38) ** 2 + ((Y - 2) / 20) ** 2 + ((X + 6) / 22) ** 2 < 1
    tumour = liver & ((Z - 5) ** 2 + (Y - 4) ** 2 + (X + 8) ** 2 < tumour_mm ** 2)
    img[liver] = 60
    img[tumour] = 20
    img += rng.normal(0, 10, shape)
    seg = np.zeros(shape, np.uint8)
    seg[liver] = 1
    seg[tumour] = 2
    geometry = Geometry(spacing=tuple(reversed(spacing_zyx)), origin=(10.0, -20.0, 5.0),
                        direction=(-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0), shape_zyx=shape)
    return Image(img.astype(np.int16), geometry), seg


def network(dims=3):
    k = (3,) * dims
    return NetworkSpec("unet", dims, 1, 3, (8, 16), (k, k), ((1,) * dims, (2,) * dims))


def configuration(name="3d_fullres", spacing=(2.0, 1.0, 1.0), norm=None, separate_z=False, order_label=1,
                  identifier=None, dims=3, denoise=False):
    norm = norm or ChannelNormalization("ct", -100.0, 400.0, 60.0, 50.0)
    return Configuration(name=name, data_identifier=identifier or f"autoliverPlans_{name}", spacing_zyx_mm=spacing,
                         median_shape_zyx=(32, 64, 64), patch_size=(32, 64, 64) if dims == 3 else (64, 64),
                         batch_size=2, normalization=(norm,), resampling=Resampling(3, order_label, separate_z, 0, 0),
                         denoise=Denoise(enabled=denoise, domain_sigma_mm=1.0, range_sigma=50.0), network=network(dims))


def make_plan(*configs, modality="CT", channels=("CT",)):
    configs = configs or (configuration(),)
    return Plan(schema_version=1, dataset_name="Dataset900_Phantom", preset="default", modality=modality,
                channel_names=tuple(channels), labels=dict(LABELS), num_phases=1, device="cpu",
                memory_budget_bytes=2**30, configurations={c.name: c for c in configs})


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum())


# ----------------------------------------------------------------------------------------------
# Resampling
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("orders,axis", [((3, 3, 3), 0), ((0, 3, 3), 0), ((1, 1, 1), 0), ((3, 1, 3), 1),
                                         ((0, 0, 0), 0), ((3, 3, 0), 2)])
@pytest.mark.parametrize("shapes", [((7, 9, 11), (13, 5, 11)), ((20, 16, 16), (9, 31, 12)), ((6, 6, 6), (6, 6, 6))])
def test_image_resampling_matches_dense_reference(rng, orders, axis, shapes):
    shape, new = shapes
    v = rng.standard_normal(shape).astype(np.float32)
    fast = resampling.resample_image(v, new, orders, through_axis=axis)
    ref = resampling.resample_reference(v, new, orders)
    assert fast.dtype == np.float32 and fast.shape == new
    np.testing.assert_allclose(fast, ref, atol=2e-5)


def test_reference_matrices_follow_torch_convention(rng):
    v = torch.from_numpy(rng.standard_normal((1, 1, 17, 23)).astype(np.float32))
    for order, mode in ((0, "nearest-exact"), (1, "bilinear"), (3, "bicubic")):
        for size in ((9, 31), (40, 11)):
            kw = {} if order == 0 else {"align_corners": False}
            t = F.interpolate(v, size=size, mode=mode, **kw)[0, 0].numpy()
            m_y = resampling.interpolation_matrix(17, size[0], order)
            m_x = resampling.interpolation_matrix(23, size[1], order)
            np.testing.assert_allclose(m_y @ v[0, 0].numpy().astype(np.float64) @ m_x.T, t, atol=2e-5)
    # Rows of every kind of matrix sum to one (a constant stays constant).
    for order in (0, 1, 3):
        np.testing.assert_allclose(resampling.interpolation_matrix(13, 29, order).sum(1), 1.0, atol=1e-12)


def test_image_resampling_accepts_views_int16_and_transform(rng):
    big = rng.integers(-1000, 1000, (30, 40, 50)).astype(np.int16)
    view = big[3:27, 5:35, ::2]  # non-contiguous
    out = resampling.resample_image(view, (12, 20, 40), (3, 3, 3), transform=lambda x: x.mul_(2))
    ref = resampling.resample_reference(view.astype(np.float64) * 2, (12, 20, 40), (3, 3, 3))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-2)


def test_anti_aliasing_smooths_each_axis_made_coarser_first(rng):
    """σ = (f − 1) / 2 input voxels along an axis made f times coarser (scikit-image's rule), none
    along the others; the result is the same cubic resampling of the smoothed, transformed volume,
    the caller's array is untouched, and white noise keeps far less of its σ than without. The
    kernel streams (in-plane per chunk, through-plane in the interpolation matrix); the reference
    smooths the whole volume with SciPy and resamples it by dense matrices."""
    from scipy import ndimage

    assert resampling.anti_aliasing_sigmas((20, 96, 90), (40, 48, 30)) == (0.0, 0.5, 1.0)
    noise = rng.normal(50, 20, (16, 90, 90)).astype(np.float32)
    keep = noise.copy()
    # in-plane only, through-plane only (linear), both in either pass order, the through axis last
    for new, orders, axis in (((16, 40, 40), (3, 3, 3), 0), ((6, 90, 90), (1, 3, 3), 0), ((6, 40, 40), (1, 3, 3), 0),
                              ((6, 80, 30), (1, 3, 3), 0), ((24, 30, 40), (3, 3, 0), 2)):
        out = resampling.resample_image(noise, new, orders, through_axis=axis, transform=lambda x: x - 50,
                                        anti_aliasing=True)
        smooth = ndimage.gaussian_filter((noise - 50).astype(np.float64), resampling.anti_aliasing_sigmas(noise.shape, new),
                                         mode="nearest")
        np.testing.assert_allclose(out, resampling.resample_reference(smooth, new, orders), rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(noise, keep)
    out = resampling.resample_image(noise, (16, 40, 40), (3, 3, 3), transform=lambda x: x - 50, anti_aliasing=True)
    plain = resampling.resample_image(noise, (16, 40, 40), (3, 3, 3))
    assert out.std() < 0.75 * plain.std() and abs(out.mean()) < 0.5
    # Nothing made coarser: nothing smoothed.
    up = resampling.resample_image(noise, (16, 120, 120), (3, 3, 3))
    np.testing.assert_array_equal(up, resampling.resample_image(noise, (16, 120, 120), (3, 3, 3), anti_aliasing=True))


def test_anti_aliasing_reaches_the_preprocessed_data_and_only_then_changes_the_hash():
    img, seg = phantom_ct(shape=(20, 96, 96))  # 0.8 mm in-plane → 1.6 mm
    cfg = configuration(spacing=(2.5, 1.6, 1.6))
    aa = dataclasses.replace(cfg, resampling=dataclasses.replace(cfg.resampling, anti_aliasing=True))
    plain, smooth = (preprocess_case([img], make_plan(c), c, seg, case="c") for c in (cfg, aa))
    liver = plain[1][0] == 1
    assert smooth[0][0][liver].std() < 0.8 * plain[0][0][liver].std()
    np.testing.assert_array_equal(plain[1], smooth[1])  # labels are not smoothed
    assert preprocessing_hash(make_plan(aa), aa) != preprocessing_hash(make_plan(cfg), cfg)
    legacy = {k: v for k, v in to_jsonable(cfg.resampling).items() if k != "anti_aliasing"}
    assert from_jsonable(Resampling, legacy, "resampling") == cfg.resampling  # plans before the key read as off


def test_label_resampling_drops_a_class_that_no_output_voxel_reads():
    """Linear downsampling by 4 reads input columns 1, 2, 5, 6, …: a tumour voxel only in column 0
    (here a stray voxel of a first stage's prediction) reaches no output voxel and vanishes, while
    the liver is resampled as before (this once stopped a whole prediction run)."""
    seg = np.zeros((8, 40, 40), np.uint8)
    seg[2:6, 8:32, 8:32] = 1
    seg[3, 20, 0] = 2  # x column 0: never read (its box is that one column)
    out = resampling.resample_labels(seg, (8, 10, 10), (1, 1, 1))
    liver = seg.copy()
    liver[liver == 2] = 0
    np.testing.assert_array_equal(out, resampling.resample_labels(liver, (8, 10, 10), (1, 1, 1)))
    assert not (out == 2).any() and (out == 1).sum() == 4 * 6 * 6


def test_label_resampling_is_onehot_argmax(rng):
    seg = np.zeros((30, 40, 40), np.uint8)
    zz, yy, xx = np.mgrid[:30, :40, :40]
    seg[(zz - 15) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 < 100] = 1
    seg[(zz - 15) ** 2 + (yy - 22) ** 2 + (xx - 20) ** 2 < 16] = 2
    seg[2:4, 2:4, 30:36] = 1  # a second, distant component of label 1
    for orders in ((1, 1, 1), (0, 1, 1), (3, 3, 3)):
        out = resampling.resample_labels(seg, (45, 30, 50), orders)
        probs = np.stack([resampling.resample_reference((seg == k).astype(float), (45, 30, 50), orders)
                          for k in range(3)])
        ref = probs.argmax(0)
        top2 = np.sort(probs, axis=0)[-2:]
        differ = out != ref
        # Only exact ties may be broken differently (float32 vs float64 arithmetic).
        assert np.all(np.abs(top2[1] - top2[0])[differ] < 1e-5), orders
        assert differ.sum() <= 20
    # Order 0 everywhere: nearest neighbour, values preserved.
    nn = resampling.resample_labels(seg, (60, 80, 80), (0, 0, 0))
    np.testing.assert_array_equal(nn[::2, ::2, ::2], seg)
    # Empty and identity cases.
    assert not resampling.resample_labels(np.zeros((5, 6, 7), np.uint8), (9, 9, 9), (1, 1, 1)).any()
    np.testing.assert_array_equal(resampling.resample_labels(seg, seg.shape, (1, 1, 1)), seg)


def test_resampling_rejects_unsupported_order():
    with pytest.raises(UserError, match="order must be one of"):
        resampling.resample_image(np.zeros((4, 4, 4), np.float32), (5, 5, 5), (2, 2, 2))


def test_shapes_and_through_plane_axis():
    assert resampling.shape_for_spacing((100, 512, 512), (2.5, 0.7, 0.7), (1.0, 0.77, 0.77)) == (250, 465, 465)
    assert resampling.through_plane_axis((5.0, 0.8, 0.8), (3.0, 0.8, 0.8)) == 0
    assert resampling.through_plane_axis((0.8, 0.8, 4.0), (1, 1, 1)) == 2
    assert resampling.through_plane_axis((1, 1, 1), (1, 1, 1)) == 0


# ----------------------------------------------------------------------------------------------
# Normalisation and cropping
# ----------------------------------------------------------------------------------------------

def test_normalization_schemes_give_expected_numbers():
    img, _ = phantom_ct()
    vol = img.array
    body = cropping.body_mask([vol], "CT")

    def run(norm):
        p = normalization.resolve_normalization(vol, norm, body=body)
        return normalization.normalize(vol, p), p

    out, p = run(ChannelNormalization("ct", -100, 400, 60, 50))
    assert p.source == "plan" and out.min() == pytest.approx((-100 - 60) / 50)
    np.testing.assert_allclose(out, (np.clip(vol, -100, 400) - 60) / 50, rtol=1e-6)

    out, _ = run(ChannelNormalization("hu_window", -100, 400))
    assert out.min() == 0.0 and out.max() <= 1.0
    np.testing.assert_allclose(out, (np.clip(vol, -100, 400) + 100) / 500, rtol=1e-6, atol=1e-7)

    out, p = run(ChannelNormalization("zscore"))
    assert p.source == "case"
    assert out[body].mean() == pytest.approx(0, abs=1e-4) and out[body].std() == pytest.approx(1, abs=1e-3)

    # liver_zscore: fixed statistics when the plan gives them ...
    out, p = run(ChannelNormalization("liver_zscore", -100, 400, 55.0, 12.0))
    assert (p.source, p.mean, p.std) == ("plan", 55.0, 12.0)
    np.testing.assert_allclose(out, (np.clip(vol, -100, 400) - 55) / 12, rtol=1e-6, atol=1e-6)
    # ... else a label-free estimate from the body voxels inside the window (body 40 HU, liver
    # 60 HU): their median and IQR / 1.349, to one histogram bin (500 HU / 2048).
    out, p = run(ChannelNormalization("liver_zscore", -100, 400))
    inside = vol[body & (vol > -100) & (vol < 400)].astype(np.float64)
    q25, q50, q75 = np.percentile(inside, [25, 50, 75])
    bin_hu = 500 / normalization.HISTOGRAM_BINS
    assert p.source == "case_estimate"
    assert p.mean == pytest.approx(q50, abs=bin_hu) and p.std == pytest.approx((q75 - q25) / 1.349, abs=2 * bin_hu)
    np.testing.assert_allclose(out, (np.clip(vol, -100, 400) - p.mean) / p.std, rtol=1e-5, atol=1e-5)

    out, _ = run(ChannelNormalization("histeq", -100, 400))
    assert 0 <= out.min() and out.max() <= 1
    v = out[body]  # equalised: body intensities spread over [0, 1]
    assert np.median(v) == pytest.approx(0.5, abs=0.1)
    order = np.argsort(vol[body][:5000], kind="stable")  # monotone in the input
    assert np.all(np.diff(v[:5000][order]) >= -1e-6)

    out, _ = run(ChannelNormalization("none"))
    np.testing.assert_array_equal(out, vol.astype(np.float32))


def test_normalization_errors_name_the_problem():
    with pytest.raises(UserError, match="Did you mean 'zscore'"):
        normalization.check_normalization(ChannelNormalization("zscor"), "plan.normalization[0]")
    with pytest.raises(UserError, match="lower < upper"):
        normalization.check_normalization(ChannelNormalization("hu_window", 400, -100), "n")


def test_body_box_excludes_air_and_keeps_every_label():
    img, seg = phantom_ct()
    box = cropping.body_box([img.array], "CT")
    inside = np.zeros(img.array.shape, bool)
    inside[tuple(slice(a, b) for a, b in box)] = True
    assert (img.array[~inside] < -500).all()  # only air cut away
    assert np.prod([b - a for a, b in box]) < 0.8 * img.array.size
    seg2 = seg.copy()
    seg2[0, 0, 0] = 1  # a labelled voxel in the air still ends up inside the crop
    box2 = cropping.body_box([img.array], "CT", seg2)
    assert box2[1][0] == 0 and box2[2][0] == 0
    # MRI: non-zero in any channel; nothing non-zero → no crop at all.
    mr = np.zeros((4, 10, 10), np.float32)
    mr[1:3, 2:5, 6:9] = 3
    assert cropping.body_box([np.zeros_like(mr), mr], "MRI") == ((1, 3), (2, 5), (6, 9))
    assert cropping.body_box([np.zeros_like(mr)], "MRI") == ((0, 4), (0, 10), (0, 10))


# ----------------------------------------------------------------------------------------------
# Round trips
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("separate_z,spacing", [(False, (2.0, 1.0, 1.0)), (True, (1.25, 0.9, 0.9))])
def test_preprocess_then_revert_reproduces_labels(separate_z, spacing):
    img, seg = phantom_ct()
    cfg = configuration(spacing=spacing, separate_z=separate_z)
    plan = make_plan(cfg)
    data, seg_out, props = preprocess_case([img], plan, cfg, seg, case="phantom_001")

    crop_shape = tuple(b - a for a, b in props["crop_bbox_zyx"])
    expected = resampling.shape_for_spacing(crop_shape, (2.5, 0.8, 0.8), spacing)
    assert data.shape == (1, *expected) and data.dtype == np.float32
    assert seg_out.shape == (1, *expected) and seg_out.dtype == np.int8
    assert props["spacing_after_zyx_mm"] == list(spacing)
    assert props["shape_before_crop_zyx"] == [40, 96, 96]
    assert Geometry(**{k: tuple(v) for k, v in props["original_geometry"].items()}).matches(img.geometry)
    assert props["resampling"]["through_plane_axis"] == (0 if separate_z else None)
    # CT normalisation: the liver at 60 HU lands near (60 - 60) / 50 = 0.
    assert abs(float(np.median(data[0][seg_out[0] == 1]))) < 0.2

    # Class locations: every foreground label, at most 10k, all on voxels of that label.
    locs = props["class_locations"]
    assert set(locs) == {"1", "2"}
    for label, points in locs.items():
        p = np.asarray(points)
        assert 0 < len(p) <= 10_000
        assert (seg_out[0][tuple(p.T)] == int(label)).all()

    back = revert_to_original(seg_out, props, cfg, is_label=True)
    assert back.shape == seg.shape and back.dtype == np.uint8
    for label in (1, 2):
        assert dice(back == label, seg == label) >= 0.98, label

    # Probabilities: one-hot of the stored labels, reverted, agree with the reverted labels.
    onehot = np.stack([(seg_out[0] == k) for k in range(3)]).astype(np.float32)
    probs = revert_to_original(onehot, props, cfg, is_label=False)
    assert probs.shape == (3, *seg.shape) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
    z0 = props["crop_bbox_zyx"][1][0]
    assert z0 > 0 and (probs[0, :, :z0] == 1).all() and (probs[1:, :, :z0] == 0).all()
    assert dice(probs.argmax(0) == 1, back == 1) > 0.99


def test_cropping_and_resampling_are_reproducible_and_hash_tracks_settings():
    img, seg = phantom_ct(shape=(20, 48, 48))
    cfg = configuration()
    plan = make_plan(cfg)
    a = preprocess_case([img], plan, cfg, seg, case="c")
    b = preprocess_case([img], plan, cfg, seg, case="c")
    np.testing.assert_array_equal(a[0], b[0])
    assert a[2] == b[2]
    other = dataclasses.replace(cfg, normalization=(ChannelNormalization("hu_window", -100, 300),))
    assert preprocessing_hash(plan, cfg) != preprocessing_hash(make_plan(other), other)
    # Without a label (prediction): data only, and no class locations.
    data, seg_none, props = preprocess_case([img], plan, cfg, None, case="c")
    assert seg_none is None and "class_locations" not in props
    assert props["crop_bbox_zyx"] == a[2]["crop_bbox_zyx"]  # the labels lie inside the body
    np.testing.assert_array_equal(data, a[0])


def test_2d_configuration_shares_data_or_keeps_slice_spacing():
    img, seg = phantom_ct(shape=(20, 48, 48))
    full = configuration("3d_fullres", spacing=(2.0, 1.0, 1.0))
    shared_2d = configuration("2d", spacing=(2.0, 1.0, 1.0), identifier=full.data_identifier, dims=2)
    plan = make_plan(full, shared_2d)
    assert effective_configuration(plan, shared_2d) is full
    assert preprocessing_hash(plan, shared_2d) == preprocessing_hash(plan, full)
    _, _, props = preprocess_case([img], plan, shared_2d, seg, case="c")
    assert props["spacing_after_zyx_mm"] == [2.0, 1.0, 1.0]

    own_2d = configuration("2d", spacing=(2.0, 1.0, 1.0), dims=2)
    plan2 = make_plan(full, own_2d)
    data, _, props = preprocess_case([img], plan2, own_2d, seg, case="c")
    assert props["spacing_after_zyx_mm"] == [2.5, 1.0, 1.0]  # the case's own slice spacing
    assert data.shape[1] == props["shape_after_crop_zyx"][0]

    clash = configuration("2d", spacing=(2.0, 1.5, 1.5), identifier=full.data_identifier, dims=2)
    with pytest.raises(UserError, match="share data_identifier"):
        preprocess_case([img], make_plan(full, clash), clash, seg, case="c")


def test_phases_in_one_4d_file_become_channels():
    img, seg = phantom_ct(shape=(16, 40, 40))
    vol = img.array.astype(np.float32)
    four_d = Image(np.stack([vol, vol * 0.5 + 7, vol * 0.25]), img.geometry)
    cfg = configuration(norm=ChannelNormalization("zscore"))
    plan = dataclasses.replace(make_plan(cfg, modality="MRI", channels=("DCE_t0", "DCE_t1", "DCE_t2")),
                               phases_in_file=3)
    data, seg_out, props = preprocess_case([four_d], plan, cfg, seg, case="dce")
    assert data.shape[0] == 3 and props["channels"] == 3 and len(props["normalization"]) == 3
    # Per-channel z-score: the same anatomy scaled differently normalises to nearly the same values.
    np.testing.assert_allclose(data[0], data[1], atol=1e-4)
    np.testing.assert_allclose(data[0], data[2], atol=1e-4)


def test_volumes_that_are_not_the_plans_channels_are_one_line_errors():
    """A 4D file for a 3D single-channel model, or the wrong number of phases, is a user error
    that says what the model takes (before: a traceback from the network's first convolution)."""
    img, _ = phantom_ct(shape=(8, 24, 24))
    vol = img.array
    four_d = Image(np.stack([vol] * 4), img.geometry, path="/x/scan_0000.nii.gz", ending=".nii.gz")
    cfg = configuration()
    with pytest.raises(UserError) as e:
        preprocess_case([four_d], make_plan(cfg), cfg, case="scan")
    assert str(e.value) == ("case scan: the model takes 1 channel (scan_0000.nii.gz, 3D); got a 4D image with "
                            "4 volumes (scan_0000.nii.gz). Give one 3D file per channel.")
    dce = dataclasses.replace(make_plan(cfg, modality="MRI", channels=("DCE_t0", "DCE_t1", "DCE_t2")),
                              phases_in_file=3)
    with pytest.raises(UserError) as e:
        preprocess_case([four_d], dce, cfg, case="scan")
    assert str(e.value) == ("case scan: the model takes one 4D file of 3 phases per case (scan_0000.nii.gz, "
                            "(t, z, y, x)); got a 4D image with 4 volumes (scan_0000.nii.gz). Give each case as "
                            "one 4D file of its 3 phases, as in training.")
    with pytest.raises(UserError, match=r"got a 3D image \(image\)"):
        preprocess_case([img], dce, cfg, case="scan")
    two = make_plan(cfg, channels=("CT", "CT2"))
    with pytest.raises(UserError, match=r"takes 2 channels \(scan_0000.nii.gz … scan_0001.nii.gz, 3D each\); "
                                        r"got 2 files \(4D, 3D\)"):
        preprocess_case([four_d, img], two, cfg, case="scan")


def test_bad_inputs_are_user_errors():
    img, seg = phantom_ct(shape=(10, 32, 32))
    cfg = configuration()
    plan = make_plan(cfg)
    bad = seg.copy()
    bad[0, 0, 0] = 5
    with pytest.raises(UserError, match=r"label values \[5\] are not declared"):
        preprocess_case([img], plan, cfg, bad, case="c")
    with pytest.raises(UserError, match="same grid"):
        preprocess_case([img], plan, cfg, seg[:, :, :20], case="c")
    other = Image(img.array[:, :20], img.geometry)
    with pytest.raises(UserError, match="all channels must be on one grid"):
        preprocess_case([img, other], make_plan(cfg, channels=("CT", "CT2")), cfg, seg, case="c")


def test_bilateral_denoising_smooths_flat_regions():
    img, seg = phantom_ct(shape=(12, 40, 40), spacing_zyx=(2.0, 1.0, 1.0))
    cfg = configuration(spacing=(2.0, 1.0, 1.0), norm=ChannelNormalization("none"), denoise=True)
    plain = dataclasses.replace(cfg, denoise=Denoise())
    noisy, _, _ = preprocess_case([img], make_plan(plain), plain, seg, case="c")
    smooth, seg_out, props = preprocess_case([img], make_plan(cfg), cfg, seg, case="c")
    liver = seg_out[0] == 1
    assert props["denoised"] is True
    assert smooth[0][liver].std() < 0.7 * noisy[0][liver].std()
    assert abs(smooth[0][liver].mean() - 60) < 3


def test_real_ct_preprocesses_and_reverts_to_original_geometry():
    folder = shared_data_path("real_ct_liver")
    cfg = configuration(spacing=(2.5, 2.0, 2.0))
    plan = make_plan(cfg, channels=("CT",))
    for case in ("ts_example_ct", "ts_s0009"):
        img = read_image(folder / "imagesTr" / f"{case}_0000.nii.gz")
        label = read_image(folder / "labelsTr" / f"{case}.nii.gz")
        data, seg_out, props = preprocess_case([img], plan, cfg, label.array, case=case)
        assert np.isfinite(data).all() and data.shape[1:] == seg_out.shape[1:]
        back = revert_to_original(seg_out, props, cfg, is_label=True)
        geometry = Geometry(**{k: tuple(v) for k, v in props["original_geometry"].items()})
        assert geometry.matches(label.geometry) and back.shape == label.array.shape
        assert dice(back == 1, label.array == 1) > 0.95, case
        probs = revert_to_original(np.stack([seg_out[0] == 0, seg_out[0] == 1]).astype(np.float32), props, cfg,
                                   is_label=False)
        assert probs.shape == (2, *label.array.shape)


def test_liver_zscore_is_the_same_in_training_and_in_prediction():
    """Training has the reference label, prediction has not: both must normalise a case the same
    way, or the network sees other intensities than it learnt (the label must not change the data)."""
    img, seg = phantom_ct(shape=(20, 48, 48))
    cfg = configuration(norm=ChannelNormalization("liver_zscore", -100.0, 400.0))
    plan = make_plan(cfg)
    trained, _, p_train = preprocess_case([img], plan, cfg, seg, case="c")
    predicted, _, p_pred = preprocess_case([img], plan, cfg, None, case="c")
    assert p_train["normalization"] == p_pred["normalization"]
    assert p_pred["normalization"][0]["source"] == "case_estimate"
    np.testing.assert_array_equal(trained, predicted)
