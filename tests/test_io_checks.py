"""The input checks one by one (autoliver.io.checks), reading files whole, and writing .mhd/.nhdr
with their data file atomically. The same inputs through the command line: test_hostile_inputs."""
from __future__ import annotations

import gzip
import os

import numpy as np
import pytest
import SimpleITK as sitk

from autoliver.cli import main
from autoliver.errors import UserError, UserErrors
from autoliver.inference.api import remove_stale_temporaries
from autoliver.io.checks import (check_image, direction_problems, hu_evidence, size_problems, slice_spacing_problem,
                                 spacing_problems)
from autoliver.io.images import Geometry, Image, read_image, write_image
from conftest import shared_data_path
from inference_helpers import tiny_configuration

GEO = Geometry(spacing=(0.8, 0.8, 2.5), origin=(0.0, 0.0, 0.0), direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0),
               shape_zyx=(4, 5, 6))


def test_spacing_rules():
    assert spacing_problems((0.7, 0.7, 5.0), "a") == []
    assert spacing_problems((20.0, 20.0, 50.0), "a") == []  # the limits themselves are allowed
    assert spacing_problems((0.7, 0.0, 5.0), "a") == [
        "a: voxel size must be positive and finite, got (x, y, z) (0.7, 0.0, 5.0) mm. Fix the file's header."]
    assert spacing_problems((0.7, 0.7, -1.0), "a")[0].startswith("a: voxel size must be positive and finite")
    assert spacing_problems((0.7, 0.7, float("inf")), "a")[0].startswith("a: voxel size must be positive and finite")
    assert spacing_problems((0.7, 0.7, 60.0), "a") == [
        "a: voxel size must be at most 20 mm in-plane and 50 mm between slices, got (x, y, z) (0.7, 0.7, 60.0) mm. "
        "Fix the file's header."]
    assert spacing_problems((21.0, 1.0, 1.0), "a")[0].startswith("a: voxel size must be at most 20 mm in-plane")


def test_direction_rules():
    flip = np.diag([-1.0, 1.0, -1.0])
    assert direction_problems(flip.ravel(), "a") == []
    assert direction_problems(np.eye(3)[[1, 0, 2]].ravel(), "a") == []  # axes permuted: fine
    singular = np.array([[1.0, 0, 0], [0, 1, 1], [0, 0, 0]])
    assert direction_problems(singular.ravel(), "a") == [
        "a: the direction matrix is singular (two voxel axes point the same way; singular values 1.41, 1, 0), so the "
        "scan has no valid orientation. Fix the header (sform/qform)."]
    assert direction_problems([np.nan] * 9, "a")[0].startswith("a: the direction matrix has NaN/Inf entries")


@pytest.mark.parametrize("parts", [
    ("real_ct_liver", "imagesTr", "ts_example_ct_0000.nii.gz"),
    ("real_ct_liver", "imagesTr", "ts_s0009_0000.nii.gz"),
    ("real_ct_manual", "chaos_ct_03_0000.nii.gz"),
    ("real_dicom", "ts_ct_dicom_20slices"),
    ("robustness", "ts_s0002_headneck_nonorthonormal_ct.nii.gz"),
], ids=lambda p: p[-1])
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_real_cts_look_like_hu(parts):
    assert hu_evidence(read_image(shared_data_path(*parts)).array) is None


def test_hu_evidence_names_each_rule():
    rng = np.random.default_rng(0)
    ct = np.concatenate([np.full(1000, -1000.0), rng.normal(40, 30, 99000)])
    assert hu_evidence(ct) is None
    assert hu_evidence(ct + 1024) == ("robust range (0.5-99.5th percentile) [24, 1141], no air near -1000 HU "
                                      "(0.00% of voxels in [-1100, -900]), 100.0% of voxels in [-1100, 3100]")
    padded = np.concatenate([ct, np.full(200000, -3024.0)])  # two thirds outside the scanner's field of view
    assert hu_evidence(padded).endswith("air near -1000 HU (0.33% of voxels in [-1100, -900]), 33.3% of voxels in "
                                        "[-1100, 3100]")


def test_ct_check_only_for_ct_and_nonfinite_rules():
    unit = np.linspace(-1, 1, 120, dtype=np.float32).reshape(4, 5, 6)
    image = Image(unit, GEO, "u.nii.gz")
    assert check_image(image, modality="MRI").warnings == ()
    (w,) = check_image(image, modality="CT").warnings
    assert w.startswith("u.nii.gz: the intensities do not look like CT Hounsfield units: robust range")
    bad = unit.copy()
    bad[0, 0, :2] = np.nan
    bad[1, 1, 1] = -np.inf
    with pytest.raises(UserError, match=r"^u.nii.gz: 3 NaN/Inf voxels. Replace them"):
        check_image(Image(bad, GEO, "u.nii.gz"), training=True)
    with pytest.raises(UserError, match=r"^u.nii.gz: 3 NaN/Inf voxels; the model cannot use them"):
        check_image(Image(bad, GEO, "u.nii.gz"))
    fixed = check_image(Image(bad, GEO, "u.nii.gz"), replace_nonfinite=-1.0)
    assert fixed.warnings == ("u.nii.gz: replaced 3 NaN/Inf voxels with -1 (--replace-nonfinite).",)
    assert np.isfinite(fixed.image.array).all() and (fixed.image.array == -1.0).sum() == 3  # [0, 0, 0] was -1 and NaN
    assert np.isnan(bad).sum() == 2  # the caller's array is left alone


def test_several_problems_are_reported_together():
    bad = np.full((4, 5, 6), np.nan, dtype=np.float32)
    geo = Geometry((0.8, 0.8, 0.0), GEO.origin, GEO.direction, GEO.shape_zyx)
    with pytest.raises(UserErrors) as e:
        check_image(Image(bad, geo, "x.nii"), training=True)
    assert [p.split(":")[1].strip()[:16] for p in e.value.problems] == ["voxel size must ", "120 NaN/Inf voxe"]


def test_size_rules_for_3d_and_2d():
    c3 = tiny_configuration(spacing=(6.0, 6.0, 6.0), patch=(16, 32, 32))
    c2 = tiny_configuration(name="2d", spacing=(6.0, 6.0, 6.0), patch=(32, 32), dims=2)
    assert size_problems((40, 100, 100), (3.0, 3.0, 3.0), c3.patch_size, (6.0, 6.0, 6.0), "a") == ([], [])
    errors, warns = size_problems((1, 100, 100), (3.0, 3.0, 3.0), c3.patch_size, (6.0, 6.0, 6.0), "a")
    assert errors == ["a: a 3D model needs more than one voxel along z, got 1. Give the whole series or use a 2d "
                      "configuration (-c 2d)."] and warns == []
    assert size_problems((1, 100, 100), (3.0, 3.0, 3.0), c2.patch_size, (6.0, 6.0), "a") == ([], [])  # 2D: fine
    errors, warns = size_problems((40, 100, 10), (3.0, 3.0, 3.0), c2.patch_size, (6.0, 6.0), "a")
    assert errors == [] and warns == ["a: only 10 voxels (30.0 mm) along x, where the network's patch spans 32 "
                                      "voxels (192 mm); the scan was padded to the patch and the result is "
                                      "unreliable. Give a scan that covers the whole liver."]


def test_slice_spacing_rules():
    axial = (1, 0, 0, 0, 1, 0)
    z = [[0, 0, 2.0 * i] for i in range(6)]
    assert slice_spacing_problem(z, axial, "s") is None
    assert slice_spacing_problem(z[::-1], axial, "s") is None  # order of the files does not matter
    tilted_normal = [[0, 1.0 * i, 2.0 * i] for i in range(6)]  # positions off the normal still project evenly
    assert slice_spacing_problem(tilted_normal, axial, "s") is None
    assert slice_spacing_problem(z[:2] + z[3:], axial, "s").startswith(
        "s: slices are not evenly spaced (2 mm apart, but about 1 slice(s) missing between 2.00 and 6.00 mm")
    assert slice_spacing_problem(z + [[0, 0, 4.0]], axial, "s") == (
        "s: slices are not evenly spaced (2 mm apart, but a gap of 0.00 mm between 4.00 and 4.00 mm; 1 uneven "
        "gap(s)). Stacking them as uniform would distort the anatomy; export the complete series or resample it to "
        "even spacing first.")
    dup = slice_spacing_problem([[0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 2]], axial, "s")
    assert dup == ("s: 2 slice(s) share a position with another; the series holds duplicates or several volumes. "
                   "Export one series with one slice per position.")


# --- reading files whole -----------------------------------------------------------------------


def test_nan_in_nifti_is_read_as_nan_not_zero(tmp_path):
    a = np.zeros((4, 5, 6), dtype=np.float32)
    a[1, 2, 3] = np.nan
    a[0, 0, 0] = np.inf
    write_image(tmp_path / "n.nii.gz", a, GEO)
    assert np.isnan(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "n.nii.gz")))).sum() == 0  # ITK: 0
    back = read_image(tmp_path / "n.nii.gz").array
    assert np.isnan(back[1, 2, 3]) and np.isposinf(back[0, 0, 0]) and np.count_nonzero(np.isfinite(back)) == 118


def test_multi_member_and_uncompressed_nii_gz_are_whole_files(tmp_path):
    src = shared_data_path("real_ct_liver", "imagesTr", "ts_example_ct_0000.nii.gz")
    raw = gzip.decompress(src.read_bytes())
    half = len(raw) // 2
    (tmp_path / "members.nii.gz").write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:]))
    (tmp_path / "plain.nii.gz").write_bytes(raw)  # not compressed despite its name: ITK reads it
    expected = read_image(src).array
    for name in ("members.nii.gz", "plain.nii.gz"):
        np.testing.assert_array_equal(read_image(tmp_path / name).array, expected)
    (tmp_path / "cut_member.nii.gz").write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:])[:-20])
    with pytest.raises(UserError, match="the compressed data ends early"):
        read_image(tmp_path / "cut_member.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"\x1f\x8b this is not an image")
    with pytest.raises(UserError, match=r"junk.nii.gz: cannot read this image \(invalid gzip data\)"):
        read_image(tmp_path / "junk.nii.gz")


def test_preprocessing_and_fingerprint_refuse_a_nan_training_image(autoliver_dirs, capsys):
    from autoliver.fingerprint.api import load_case_arrays
    from autoliver.planning.plan import write_plan
    from test_preprocessing_run import NAME, shared_plan, write_dataset

    info = write_dataset(autoliver_dirs["raw"], 2)
    img = read_image(info.images_dir / "case_001_0000.nii.gz")
    f = img.array.astype(np.float32)
    f[3, 4, 5:8] = np.nan
    write_image(info.images_dir / "case_001_0000.nii.gz", f, img.geometry)
    write_plan(autoliver_dirs["preprocessed"] / NAME / "plans.json", shared_plan())
    rc = main(["preprocess", "-d", "Phantom", "-c", "3d_fullres", "-np", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert (f"case_001 failed: {info.images_dir / 'case_001_0000.nii.gz'}: 3 NaN/Inf voxels. Replace them (e.g. "
            "with the minimum intensity).") in err
    with pytest.raises(UserError) as e:
        load_case_arrays(info, "case_001")
    assert str(e.value) == (f"{info.images_dir / 'case_001_0000.nii.gz'}: 3 NaN/Inf voxels. Replace them (e.g. with "
                            "the minimum intensity).")
    assert load_case_arrays(info, "case_000")[0].shape == (1, 20, 48, 48)


# --- .mhd / .nhdr: header and data file, atomically ---------------------------------------------


@pytest.mark.parametrize("ending, data_name", [(".mhd", "seg.zraw"), (".nhdr", "seg.raw.gz")])
def test_detached_header_and_data_are_written_atomically(tmp_path, ending, data_name, monkeypatch):
    a = np.arange(120, dtype=np.uint8).reshape(4, 5, 6)
    path = tmp_path / f"seg{ending}"
    write_image(path, a, GEO)
    assert sorted(os.listdir(tmp_path)) == sorted([path.name, data_name])  # final names, nothing hidden left
    assert data_name in path.read_text(errors="replace")  # the header names the final data file
    np.testing.assert_array_equal(read_image(path).array, a)

    # a write that fails half-way leaves the previous header and data exactly as they were
    def broken(image, name, *args, **kwargs):
        real_write(image, name, *args, **kwargs)
        raise RuntimeError("disk full")

    real_write = sitk.WriteImage
    monkeypatch.setattr(sitk, "WriteImage", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_image(path, a[::-1].copy(), GEO)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == sorted([path.name, data_name])
    np.testing.assert_array_equal(read_image(path).array, a)


def test_stale_temporary_folders_are_removed(tmp_path):
    stale = tmp_path / ".seg.mhd.tmp123.abcdef.dir"
    stale.mkdir()
    (stale / "seg.zraw").write_bytes(b"x")
    keep = tmp_path / ".hidden_user_folder"
    keep.mkdir()
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert sorted(os.listdir(tmp_path)) == [".hidden_user_folder"]



REAL_NIFTI = [("real_ct_liver", "imagesTr", "ts_example_ct_0000.nii.gz"),
              ("real_ct_liver", "labelsTr", "ts_s0009.nii.gz"),
              ("real_ct_manual", "chaos_ct_03_0000.nii.gz"), ("real_mr_liver", "imagesTr", "ts_example_mr_0000.nii.gz"),
              ("real_dicom", "ts_ct_dicom_20slices_seg_total.nii.gz")]


@pytest.mark.parametrize("parts", REAL_NIFTI, ids=lambda p: p[-1])
def test_nifti_voxels_are_itks_on_real_files(parts):
    """The file is decompressed once (by the completeness check) and its voxels used as stored:
    the same array, dtype and grid as ITK's own read."""
    path = shared_data_path(*parts)
    img, ref = read_image(path), sitk.ReadImage(str(path))
    np.testing.assert_array_equal(img.array, sitk.GetArrayFromImage(ref))
    assert img.array.dtype == sitk.GetArrayFromImage(ref).dtype and img.array.flags.writeable
    assert img.geometry.spacing == ref.GetSpacing() and img.geometry.origin == ref.GetOrigin()


@pytest.mark.parametrize("dtype, slope, inter", [
    (">i2", 1.0, 0.0), ("<f8", 1.0, 0.0), ("<u2", 1.0, 0.0), ("<i2", 2.0, -1024.0), ("<u2", 1.0, -1024.0),
    (">i2", 0.37, -1024.5), ("<i4", 1.7e-3, 3.1), ("<f4", 2.0, 0.0), ("<f8", 1.5, -2.0)],
    ids=["big-endian", "float64", "uint16", "scaled", "uint16-intercept", "fractional-big-endian", "int32-fractional",
         "float32-scaled", "float64-scaled"])
def test_nifti_voxels_are_itks_for_other_types(tmp_path, dtype, slope, inter):
    """Scaled voxels are computed from the stored bytes (float64, cast to ITK's output type), not
    read a second time by ITK: ITK's values to the bit."""
    import nibabel as nib

    a = np.random.default_rng(1).integers(0, 3000, size=(7, 6, 5)).astype(dtype)
    header = nib.Nifti1Header(endianness=dtype[0])
    nii = nib.Nifti1Image(a, np.diag([0.8, 0.9, 2.5, 1.0]), header)
    nii.header.set_slope_inter(slope, inter)
    nib.save(nii, str(tmp_path / "a.nii.gz"))
    assert nib.load(str(tmp_path / "a.nii.gz")).header.endianness == dtype[0]
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a.nii.gz")))
    back = read_image(tmp_path / "a.nii.gz").array
    np.testing.assert_array_equal(back, expected)
    assert back.dtype == expected.dtype and back.dtype.isnative


def test_nan_in_a_scaled_float_file_is_kept(tmp_path):
    import nibabel as nib

    a = np.random.default_rng(2).normal(size=(7, 6, 5)).astype("<f4")
    a[3, 2, 1] = np.nan
    nii = nib.Nifti1Image(a, np.eye(4))
    nii.header.set_slope_inter(2.0, 1.0)
    nib.save(nii, str(tmp_path / "a.nii.gz"))
    back = read_image(tmp_path / "a.nii.gz").array
    assert np.isnan(back[1, 2, 3]) and np.isnan(back).sum() == 1  # ITK would read it as 0
    np.testing.assert_allclose(back[~np.isnan(back)], (a.T * 2 + 1)[~np.isnan(a.T)], rtol=1e-6)
