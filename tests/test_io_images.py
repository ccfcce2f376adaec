"""Image I/O: every real file round-trips with identical voxels and geometry."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from autoliver.errors import UserError
from autoliver.io import Geometry, read_image, write_image, write_like
from conftest import shared_data_path

REAL_FILES = [
    ("real_ct_liver", "imagesTr", "ts_example_ct_0000.nii.gz"),
    ("real_ct_liver", "labelsTr", "ts_example_ct.nii.gz"),
    ("real_ct_liver", "imagesTr", "ts_s0009_0000.nii.gz"),
    ("real_ct_liver", "labelsTr", "ts_s0009.nii.gz"),
    ("real_mr_liver", "imagesTr", "ts_example_mr_0000.nii.gz"),
    ("real_mr_liver", "labelsTr", "ts_example_mr.nii.gz"),
    ("real_dicom", "ts_ct_dicom_20slices_seg_total.nii.gz"),
    ("real_dicom", "dcmqi_ct_3slices", "liver_seg.nrrd"),
    ("robustness", "ts_s0002_headneck_nonorthonormal_ct.nii.gz"),
]


def _read_quiet(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_image(path)


@pytest.mark.parametrize("parts", REAL_FILES, ids=lambda p: p[-1])
def test_real_file_round_trips_exactly(parts, tmp_path):
    path = shared_data_path(*parts)
    img = _read_quiet(path)
    out = tmp_path / f"copy{img.ending}"
    write_like(out, img.array, img)
    back = _read_quiet(out)
    assert back.array.dtype == img.array.dtype
    np.testing.assert_array_equal(back.array, img.array)
    np.testing.assert_allclose(back.geometry.spacing, img.geometry.spacing, rtol=1e-6)
    np.testing.assert_allclose(back.geometry.origin, img.geometry.origin, atol=1e-4)
    np.testing.assert_allclose(back.geometry.direction, img.geometry.direction, atol=1e-6)
    if img.nifti_affine is not None:  # the non-orthonormal file keeps its own affine exactly
        np.testing.assert_array_equal(back.nifti_affine, img.nifti_affine)


def test_orientations_of_real_files_are_read_as_documented():
    assert _read_quiet(shared_data_path("real_ct_liver", "imagesTr", "ts_s0009_0000.nii.gz")).geometry.orientation() == "RAS"
    assert _read_quiet(shared_data_path("real_mr_liver", "imagesTr", "ts_example_mr_0000.nii.gz")).geometry.orientation() == "LPS"
    seg = _read_quiet(shared_data_path("real_dicom", "ts_ct_dicom_20slices_seg_total.nii.gz"))
    assert seg.geometry.orientation() == "LAS"


def test_nonorthonormal_file_is_read_with_a_warning():
    path = shared_data_path("robustness", "ts_s0002_headneck_nonorthonormal_ct.nii.gz")
    with pytest.warns(UserWarning, match="not orthonormal"):
        img = read_image(path)
    assert img.array.shape == (101, 128, 185)
    d = np.asarray(img.geometry.direction).reshape(3, 3)
    np.testing.assert_allclose(d @ d.T, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(img.geometry.spacing, (1.5, 1.5, 1.5), atol=1e-6)


def test_dicom_series_folder_matches_its_label_grid():
    img = _read_quiet(shared_data_path("real_dicom", "ts_ct_dicom_20slices"))
    seg = _read_quiet(shared_data_path("real_dicom", "ts_ct_dicom_20slices_seg_total.nii.gz"))
    assert img.array.shape == seg.array.shape == (20, 512, 512)
    np.testing.assert_allclose(img.geometry.spacing, (0.9765625, 0.9765625, 2.0), rtol=1e-6)
    # the label file is LAS, the DICOM series LPS: the same grid up to a y flip
    assert img.geometry.orientation() == "LPS"
    assert -1100 <= img.array.min() < -900 and img.array.max() > 500  # HU (rescaled), not raw stored values


def test_dicom_folder_with_a_seg_object_reads_the_ct_series():
    with pytest.warns(UserWarning, match="DICOM series"):
        img = read_image(shared_data_path("real_dicom", "dcmqi_ct_3slices"))
    assert img.array.shape == (3, 512, 512)


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_formats_round_trip_synthetic_geometry(tmp_path, ending, rng):
    arr = rng.integers(-1000, 1000, size=(5, 7, 9)).astype(np.int16)
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    geo = Geometry(spacing=(0.7, 0.8, 2.5), origin=(-10.0, 20.5, 33.0), direction=direction, shape_zyx=(5, 7, 9))
    write_image(tmp_path / f"a{ending}", arr, geo)
    back = read_image(tmp_path / f"a{ending}")
    np.testing.assert_array_equal(back.array, arr)
    assert back.geometry.matches(geo, 1e-6)
    assert back.geometry.spacing_zyx_mm == pytest.approx((2.5, 0.8, 0.7))
    assert not list(tmp_path.glob(".*")), "temporary files must not be left behind"


def test_unreadable_and_unsupported_files_name_the_file(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(UserError, match="broken.nii.gz"):
        read_image(bad)
    with pytest.raises(UserError, match="unsupported file type"):
        read_image(tmp_path.joinpath("x.png").write_bytes(b"") or tmp_path / "x.png")
    with pytest.raises(UserError, match="not found"):
        read_image(tmp_path / "missing.nii.gz")
