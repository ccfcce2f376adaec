"""One voxel order inside the pipeline: the same scan stored RAS, LPS, head-to-feet, sagittal or
coronal gives the same preprocessed data, the same fingerprint geometry and, through the real
predictor, a segmentation in each file's own voxel order, exactly.

The reference for "the same scan in another order" is SimpleITK's ``DICOMOrient`` (ITK's
orientation filter), not our own code.
"""
from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
import SimpleITK as sitk

from autoliver.datasets.dataset import parse_dataset_json
from autoliver.fingerprint.api import extract_fingerprint
from autoliver.inference.predictor import PredictOptions, predict_case
from autoliver.io.images import Geometry, Image, write_image
from autoliver.io.orientation import canonical_axes, canonical_box, canonical_zyx, from_canonical, to_canonical
from autoliver.planning.budget import Budget
from autoliver.planning.memory import CpuSpeed
from autoliver.planning.plan import read_plan, write_plan
from autoliver.planning.planner import plan_experiment
from autoliver.planning.presets import load_preset
from autoliver.preprocessing.pipeline import preprocess_case, preprocessing_hash, revert_to_original
from inference_helpers import abdomen, cascade, tiny_configuration, tiny_plan

SPACING = (5.0, 3.0, 3.0)  # (z, y, x) mm: anisotropic, so a permuted spacing would show
# every voxel order an axis-aligned scan can have: 3 axes × 2 directions, in any order
ALL_CODES = ["".join(c) for p in itertools.permutations((("L", "R"), ("P", "A"), ("S", "I")))
             for c in itertools.product(*p)]
STORED = ("LPS", "RAS", "LPI", "PIR", "SLP")  # ITK's identity, NIfTI's usual, head-to-feet, sagittal, coronal


def reoriented(array: np.ndarray, geometry: Geometry, code: str) -> tuple[np.ndarray, Geometry]:
    """The same voxels in the voxel order ``code`` (ITK's DICOMOrient), with the matching geometry."""
    img = sitk.DICOMOrient(geometry.to_sitk(sitk.GetImageFromArray(array)), code)
    out = sitk.GetArrayFromImage(img)
    return out, Geometry(spacing=img.GetSpacing(), origin=img.GetOrigin(), direction=img.GetDirection(),
                         shape_zyx=out.shape)


def stored_as(code: str) -> tuple[Image, np.ndarray]:
    """The abdomen phantom (a lesion on the liver's edge) as a file in voxel order ``code``."""
    image, label = abdomen(shape=(24, 64, 64), spacing=SPACING)
    ct, geometry = reoriented(image.array, image.geometry, code)
    seg, _ = reoriented(label, image.geometry, code)
    return Image(ct, geometry, path=f"abdomen_{code}.nii.gz"), seg


def test_all_48_voxel_orders_come_to_the_order_of_the_identity_direction():
    rng = np.random.default_rng(0)
    canonical = rng.integers(0, 1000, (5, 6, 7)).astype(np.int16)
    geometry = Geometry(spacing=(0.7, 0.8, 2.5), origin=(1.0, 2.0, 3.0), direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0),
                        shape_zyx=canonical.shape)
    for code in ALL_CODES:
        array, g = reoriented(canonical, geometry, code)
        orient = canonical_axes(g.direction)
        np.testing.assert_array_equal(to_canonical(array, orient), canonical, err_msg=code)
        np.testing.assert_array_equal(from_canonical(canonical, orient), array, err_msg=code)
        assert canonical_zyx(g.spacing_zyx_mm, orient) == pytest.approx((2.5, 0.8, 0.7)), code
        # leading axes (channels, classes) ride along
        stack = np.stack([array, array + 1])
        np.testing.assert_array_equal(from_canonical(to_canonical(stack, orient), orient), stack)
    assert canonical_axes(geometry.direction) == {"axes": [0, 1, 2], "flip": [False, False, False]}


def test_a_box_follows_its_voxels():
    canonical = np.zeros((6, 7, 8), np.uint8)
    canonical[1:3, 2:6, 3:4] = 1
    geometry = Geometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0),
                        shape_zyx=canonical.shape)
    for code in ("RAS", "PIR", "IRA"):
        array, g = reoriented(canonical, geometry, code)
        box = [(int(np.flatnonzero(array.any(axis=tuple(j for j in range(3) if j != i))).min()),
                int(np.flatnonzero(array.any(axis=tuple(j for j in range(3) if j != i))).max()) + 1) for i in range(3)]
        assert canonical_box(box, array.shape, canonical_axes(g.direction)) == ((1, 3), (2, 6), (3, 4)), code


@pytest.mark.parametrize("dims", [3, 2])
def test_every_voxel_order_preprocesses_to_the_same_data_and_goes_back_exactly(dims):
    config = tiny_configuration("3d_fullres" if dims == 3 else "2d", spacing=SPACING,
                                patch=(16, 32, 32) if dims == 3 else (32, 32), dims=dims)
    plan = dataclasses.replace(tiny_plan([config]), orientation="canonical")
    ref_data = ref_seg = None
    for code in STORED:
        image, label = stored_as(code)
        data, seg, props = preprocess_case([image], plan, config, seg=label, case=code)
        if ref_data is None:
            ref_data, ref_seg = data, seg
            # axial slices first: a 2D configuration slices the axial plane whatever the file's order
            assert data.shape[1] == 24
        np.testing.assert_array_equal(data, ref_data, err_msg=code)
        np.testing.assert_array_equal(seg, ref_seg, err_msg=code)
        assert props["spacing_before_zyx_mm"] == list(SPACING)
        # back to the file's voxel order, labels and probabilities alike
        np.testing.assert_array_equal(revert_to_original(seg, props, config, is_label=True), label, err_msg=code)
        one_hot = np.stack([seg[0] == k for k in range(3)]).astype(np.float32)
        probs = revert_to_original(one_hot, props, config, is_label=False)
        np.testing.assert_array_equal(probs.argmax(0), label, err_msg=code)


@pytest.mark.parametrize("code", ["LPS", "RAS", "PIR", "SLP"])
def test_the_lesion_cascade_segments_each_file_in_its_own_voxel_order(code):
    image, label = stored_as(code)
    model = cascade(spacing=SPACING, first_spacing=SPACING, orientation="canonical")
    seg = predict_case(model, [image], PredictOptions(mirror=False)).segmentation
    assert seg.shape == image.array.shape
    np.testing.assert_array_equal(seg, label)


def test_plans_written_before_the_field_keep_each_files_order(tmp_path):
    config = tiny_configuration(spacing=SPACING)
    plan = tiny_plan([config])
    path = tmp_path / "plans.json"
    write_plan(path, plan)
    doc = json.loads(path.read_text())
    doc.pop("orientation")
    path.write_text(json.dumps(doc))
    old = read_plan(path)
    assert old.orientation == "as_stored"
    canonical = dataclasses.replace(old, orientation="canonical")
    assert preprocessing_hash(old, config) != preprocessing_hash(canonical, config)  # data is redone

    image, label = stored_as("RAS")
    data, seg, props = preprocess_case([image], old, config, seg=label)
    assert "orientation" not in props
    lps_data, _, _ = preprocess_case([stored_as("LPS")[0]], old, config)
    assert not np.array_equal(data, lps_data)  # the file's own order (x and y reversed), as before
    np.testing.assert_array_equal(revert_to_original(seg, props, config, is_label=True), label)


def test_fingerprint_and_plan_see_one_geometry_whatever_the_files_order(tmp_path):
    folder = tmp_path / "raw" / "Dataset001_Tiny"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    codes = ("LPS", "PIR", "RAS")
    for i, code in enumerate(codes):
        image, label = stored_as(code)
        write_image(folder / "imagesTr" / f"case_{i:03d}_0000.nii.gz", image.array, image.geometry)
        write_image(folder / "labelsTr" / f"case_{i:03d}.nii.gz", label, image.geometry)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2},
        "numTraining": len(codes), "file_ending": ".nii.gz"}))
    fp = extract_fingerprint(parse_dataset_json(folder), tmp_path / "pre", num_processes=1)

    assert [c.orientation for c in fp.cases] == list(codes)
    first = fp.cases[0]
    assert first.shape_zyx == (24, 64, 64) and first.spacing_zyx_mm == pytest.approx(SPACING)
    for c in fp.cases[1:]:
        assert c.shape_zyx == first.shape_zyx, c.case
        assert c.spacing_zyx_mm == pytest.approx(first.spacing_zyx_mm), c.case
        assert c.crop_bbox_zyx == first.crop_bbox_zyx, c.case
        assert c.liver_bbox_zyx == first.liver_bbox_zyx, c.case
        assert c.labels.tumour_diameters_mm == pytest.approx(first.labels.tumour_diameters_mm), c.case

    speed = CpuSpeed(conv_flops_per_s=1.5e11, elementwise_bytes_per_s=5e9)
    plan = plan_experiment(fp, load_preset("cpu"), Budget("cpu", 16 * 2**30, speed))
    assert plan.orientation == "canonical"
    assert "1 LPS, 1 PIR, 1 RAS" in plan.reasons["orientation"]
