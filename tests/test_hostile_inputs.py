"""Hostile and odd inputs, built from the real scans in ../shared/data, through the command line.

Each input gets a clear error (one line naming the file, the rule and the fix), a warning with a
result, or a correct result; never a traceback, never a silent wrong answer, and nothing is
written next to the input. The model is a tiny network whose output does not depend on the
scan (its last layer is a constant), so every outcome here is decided by the input checks.
"""
from __future__ import annotations

import gzip
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from autoliver.cli import main
from autoliver.io.images import read_image, write_image
from conftest import shared_data_path
from inference_helpers import save_model, tiny_configuration, tiny_plan

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CT = ("real_ct_liver", "imagesTr", "ts_example_ct_0000.nii.gz")  # 122 x 101 x 112 (x, y, z), 3 mm, RAS
DICOM = ("real_dicom", "ts_ct_dicom_20slices")  # 20 slices 2 mm apart, z from -766.5 to -804.5


def constant_network(bias):
    """A network that answers ``bias`` (logits per class) everywhere."""
    def build(spec):
        from autoliver.training.networks import build_network

        net = build_network(spec)
        head = net.decoder.heads[0]
        with torch.no_grad():
            head.weight.zero_()
            head.bias.copy_(torch.tensor(bias, dtype=torch.float32))
        return net
    return build


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """'liver': liver everywhere; 'empty': background everywhere (a scan without liver)."""
    out = {}
    for name, bias in (("liver", [0.0, 10.0, -10.0]), ("empty", [10.0, -10.0, -10.0])):
        d = tmp_path_factory.mktemp(name)
        plan = tiny_plan([tiny_configuration(spacing=(6.0, 6.0, 6.0), patch=(16, 32, 32))])
        save_model(d, plan, "3d_fullres", network_fn=constant_network(bias))
        out[name] = d
    return out


def predict_cli(capsys, src: Path, out: Path, model: Path, *extra: str) -> tuple[int, str]:
    """Run ``autoliver predict`` and return (exit code, everything it printed)."""
    before = sorted(os.listdir(src if src.is_dir() else src.parent))
    code = main(["predict", "-i", str(src), "-o", str(out), "-m", str(model), "--disable-tta", "--no-progress",
                 *extra])
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text
    assert sorted(os.listdir(src if src.is_dir() else src.parent)) == before  # nothing next to the input
    return code, text


def failed(text: str, case: str) -> str:
    """The one-line reason predict gives for a failed case."""
    m = re.search(rf"^  failed: {re.escape(case)}: (.*)$", text, re.M)
    assert m, text
    return m.group(1)


# --- builders: each hostile input from a real scan --------------------------------------------


def real_ct(tmp_path) -> tuple[np.ndarray, object]:
    img = read_image(shared_data_path(*CT))
    return img.array, img.geometry


def raw_nifti_edit(dst: Path, **fields) -> Path:
    """The real CT with NIfTI header fields set byte for byte (nibabel would 'fix' them on save)."""
    raw = gzip.decompress(shared_data_path(*CT).read_bytes())
    header = nib.Nifti1Header(binaryblock=raw[:348], check=False)
    for key, value in fields.items():
        header[key] = value
    dst.write_bytes(gzip.compress(header.binaryblock + raw[348:], compresslevel=1))
    return dst


def dicom_copy(tmp_path, name: str, drop: tuple[int, ...] = ()) -> Path:
    src = shared_data_path(*DICOM)
    dst = tmp_path / name
    dst.mkdir()
    for i, f in enumerate(sorted(src.iterdir())):
        if i not in drop:
            shutil.copy(f, dst / f.name)
    return dst


@pytest.fixture
def inbox(tmp_path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    return d


# --- files that are not whole ------------------------------------------------------------------


def test_truncated_gzip_is_an_error_naming_the_file(inbox, models, capsys):
    data = shared_data_path(*CT).read_bytes()
    (inbox / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    code, text = predict_cli(capsys, inbox / "cut.nii.gz", inbox.parent / "out", models["liver"])
    assert code == 1
    assert failed(text, "cut") == (f"{inbox / 'cut.nii.gz'}: the compressed data ends early (truncated or corrupt "
                                   "gzip); re-export or re-download it.")
    assert not (inbox.parent / "out" / "cut.nii.gz").exists()


def test_corrupt_gzip_and_truncated_nii_are_errors(inbox, models, capsys):
    data = bytearray(shared_data_path(*CT).read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    (inbox / "corrupt.nii.gz").write_bytes(bytes(data))
    raw = gzip.decompress(shared_data_path(*CT).read_bytes())
    (inbox / "short.nii").write_bytes(raw[: len(raw) - 1000])
    code, text = predict_cli(capsys, inbox, inbox.parent / "out", models["liver"])
    assert code == 1
    assert failed(text, "corrupt").endswith("corrupt.nii.gz: the compressed data is corrupt (truncated or corrupt "
                                            "gzip); re-export or re-download it.")
    # 122 * 101 * 112 int16 voxels = 2760128 bytes
    assert failed(text, "short").endswith("short.nii: the image data ends early: it holds 2759128 bytes where the "
                                          "header needs 2760128 (truncated file); re-export or re-download it.")
    assert "predict: 0 case(s) written" in text


# --- voxels ------------------------------------------------------------------------------------


def test_nan_block_is_an_error_unless_a_replacement_is_given(inbox, models, capsys, tmp_path):
    a, g = real_ct(tmp_path)
    f = a.astype(np.float32)
    f[40:50, 40:60, 40:60] = np.nan  # 4000 voxels inside the body
    write_image(inbox / "nan.nii.gz", f, g)
    code, text = predict_cli(capsys, inbox / "nan.nii.gz", tmp_path / "out", models["liver"])
    assert code == 1
    assert failed(text, "nan") == (f"{inbox / 'nan.nii.gz'}: 4000 NaN/Inf voxels; the model cannot use them. "
                                   "Re-export the scan, or pass --replace-nonfinite VALUE to replace them (e.g. "
                                   "-1000, air, for CT).")
    code, text = predict_cli(capsys, inbox / "nan.nii.gz", tmp_path / "out", models["liver"],
                             "--replace-nonfinite", "-1000")
    assert code == 0
    assert (f"predict: warning: {inbox / 'nan.nii.gz'}: replaced 4000 NaN/Inf voxels with -1000 "
            "(--replace-nonfinite).") in text.splitlines()
    assert read_image(tmp_path / "out" / "nan.nii.gz").array.shape == a.shape
    code, text = predict_cli(capsys, inbox / "nan.nii.gz", tmp_path / "out2", models["liver"],
                             "--replace-nonfinite", "nan")
    assert code == 2
    assert text.strip() == "autoliver predict: error: --replace-nonfinite: must be a finite number, got nan"


def test_inf_voxels_are_counted(inbox, models, capsys, tmp_path):
    a, g = real_ct(tmp_path)
    f = a.astype(np.float32)
    f[0, 0, :7] = np.inf
    f[5, 5, :3] = -np.inf
    write_image(inbox / "inf.nii.gz", f, g)
    code, text = predict_cli(capsys, inbox / "inf.nii.gz", tmp_path / "out", models["liver"])
    assert code == 1 and failed(text, "inf").startswith(f"{inbox / 'inf.nii.gz'}: 10 NaN/Inf voxels;")


def test_intensities_that_are_not_hu_warn_with_the_evidence(inbox, models, capsys, tmp_path):
    a, g = real_ct(tmp_path)
    lo, hi = float(a.min()), float(a.max())
    write_image(inbox / "unit.nii.gz", ((a - lo) / (hi - lo) * 2 - 1).astype(np.float32), g)
    write_image(inbox / "wrapped.nii.gz", (a.astype(np.int64) % 256).astype(np.uint8), g)
    code, text = predict_cli(capsys, inbox, tmp_path / "out", models["liver"])
    assert code == 0
    warns = [line for line in text.splitlines() if "do not look like CT Hounsfield units" in line]
    assert len(warns) == 2, text
    tail = ("spans under 300 HU, no air near -1000 HU (0.00% of voxels in [-1100, -900]), 100.0% of voxels in "
            "[-1100, 3100]. The model expects HU; the result may be wrong. Re-export the scan in HU (with the DICOM "
            "RescaleSlope/RescaleIntercept applied).")
    assert warns == [
        f"predict: warning: {inbox / 'unit.nii.gz'}: the intensities do not look like CT Hounsfield units: robust "
        f"range (0.5-99.5th percentile) [-0.9198, -0.2861] {tail}",
        f"predict: warning: {inbox / 'wrapped.nii.gz'}: the intensities do not look like CT Hounsfield units: robust "
        f"range (0.5-99.5th percentile) [0, 254] {tail}"]
    assert sorted(os.listdir(tmp_path / "out")) == ["unit.nii.gz", "wrapped.nii.gz"]


def test_real_scans_give_no_warning(models, capsys, tmp_path):
    """The real CTs (and the DICOM series) are HU, big enough and well oriented: not a word."""
    for parts in (CT, ("real_ct_manual", "chaos_ct_03_0000.nii.gz"), DICOM):
        code, text = predict_cli(capsys, shared_data_path(*parts), tmp_path / parts[-1], models["liver"])
        assert code == 0 and "warning" not in text.lower(), text


# --- geometry ----------------------------------------------------------------------------------


@pytest.mark.parametrize("pixdim, shown", [((3.0, 3.0, 0.0), "(3.0, 3.0, 0.0)"), ((3.0, -3.0, 3.0), "(3.0, -3.0, 3.0)"),
                                           ((3.0, 3.0, float("nan")), "(3.0, 3.0, nan)")],
                         ids=["zero", "negative", "nan"])
def test_impossible_pixdim_is_an_error(pixdim, shown, inbox, models, capsys, tmp_path):
    src = raw_nifti_edit(inbox / "bad.nii.gz", pixdim=[1.0, *pixdim, 0, 0, 0, 0])
    code, text = predict_cli(capsys, src, tmp_path / "out", models["liver"])
    assert code == 1
    assert failed(text, "bad") == (f"{src}: voxel size (NIfTI pixdim) must be positive mm, got {shown} (ITK would "
                                   "silently read 1 mm for 0 and the absolute value of a negative size). Fix the "
                                   "header (e.g. re-export the scan from the scanner's DICOM).")


@pytest.mark.parametrize("zoom, rule", [
    ((30.0, 30.0, 3.0), "must be at most 20 mm in-plane and 50 mm between slices, got (x, y, z) (30.0, 30.0, 3.0) mm"),
    ((0.003, 0.003, 0.003), "must be at least 0.05 mm, got (x, y, z) (0.003, 0.003, 0.003) mm (metres instead of "
                            "millimetres?)"),
], ids=["absurd", "metres"])
def test_absurd_spacing_is_an_error(zoom, rule, inbox, models, capsys, tmp_path):
    n = nib.load(str(shared_data_path(*CT)))
    affine = n.affine.copy()
    affine[:3, :3] = np.diag(zoom)
    src = raw_nifti_edit(inbox / "odd.nii.gz", pixdim=[1.0, *zoom, 0, 0, 0, 0], srow_x=affine[0], srow_y=affine[1],
                         srow_z=affine[2], qform_code=0)
    code, text = predict_cli(capsys, src, tmp_path / "out", models["liver"])
    assert code == 1 and failed(text, "odd") == f"{src}: voxel size {rule}. Fix the file's header."


def test_singular_direction_is_an_error(inbox, models, capsys, tmp_path):
    # the z axis of the voxel grid points the same way as y: no orientation can be made of it
    src = raw_nifti_edit(inbox / "flat.nii.gz", qform_code=0, sform_code=1, srow_x=[3, 0, 0, -178.0],
                         srow_y=[0, 3, 3, 11.3], srow_z=[0, 0, 0, 94.3])
    code, text = predict_cli(capsys, src, tmp_path / "out", models["liver"])
    assert code == 1
    assert failed(text, "flat") == (f"{src}: the direction matrix is singular (two voxel axes point the same way; "
                                    "singular values 1.41, 1, 0), so the scan has no valid orientation. Fix the "
                                    "header (sform/qform).")


def test_missing_orientation_warns_what_was_assumed(inbox, models, capsys, tmp_path):
    src = raw_nifti_edit(inbox / "bare.nii.gz", qform_code=0, sform_code=0)
    code, text = predict_cli(capsys, src, tmp_path / "out", models["liver"])
    assert code == 0
    assert (f"predict: warning: {src}: the NIfTI header has no orientation (qform_code and sform_code are 0); "
            "assumed the voxel axes point to the patient's left, posterior and superior (LPS, ITK's default). "
            "Check left and right in the result, or fix the header.") in text.splitlines()
    assert read_image(tmp_path / "out" / "bare.nii.gz").geometry.orientation() == "LPS"


def test_nonorthonormal_real_file_still_works_and_no_liver_is_said(models, capsys, tmp_path):
    src = shared_data_path("robustness", "ts_s0002_headneck_nonorthonormal_ct.nii.gz")
    code, text = predict_cli(capsys, src, tmp_path / "out", models["empty"])
    assert code == 0
    assert "direction cosines are not orthonormal" in text
    assert ("predict: warning: ts_s0002_headneck_nonorthonormal_ct: no liver found (not one voxel labelled liver); "
            "check that the scan shows the abdomen and is what the model was trained on. The segmentation is "
            "written anyway.") in text.splitlines()
    out = tmp_path / "out" / "ts_s0002_headneck_nonorthonormal_ct.nii.gz"
    np.testing.assert_allclose(nib.load(str(out)).affine, nib.load(str(src)).affine, atol=1e-4)


# --- size --------------------------------------------------------------------------------------


def test_single_slice_is_an_error_and_three_slices_warn(inbox, models, capsys, tmp_path):
    import dataclasses

    a, g = real_ct(tmp_path)
    write_image(inbox / "one.nii.gz", a[50:51], dataclasses.replace(g, shape_zyx=(1, *a.shape[1:])))
    write_image(inbox / "three.nii.gz", a[50:53], dataclasses.replace(g, shape_zyx=(3, *a.shape[1:])))
    code, text = predict_cli(capsys, inbox, tmp_path / "out", models["liver"])
    assert code == 1
    assert failed(text, "one") == (f"{inbox / 'one.nii.gz'} (3d_fullres): a 3D model needs more than one voxel "
                                   "along z, got 1. Give the whole series or use a 2d configuration (-c 2d).")
    assert (f"predict: warning: {inbox / 'three.nii.gz'} (3d_fullres): only 3 voxels (9.0 mm) along z, where the "
            "network's patch spans 16 voxels (96 mm); the scan was padded to the patch and the result is "
            "unreliable. Give a scan that covers the whole liver.") in text.splitlines()
    assert os.listdir(tmp_path / "out") == ["three.nii.gz"]


# --- DICOM -------------------------------------------------------------------------------------


def test_dicom_with_a_missing_slice_is_an_error(models, capsys, tmp_path):
    series = dicom_copy(tmp_path, "gap", drop=(7,))
    code, text = predict_cli(capsys, series, tmp_path / "out", models["liver"])
    assert code == 1
    assert failed(text, "gap") == (f"{series}: slices are not evenly spaced (2 mm apart, but about 1 slice(s) "
                                   "missing between -782.50 and -778.50 mm; 1 uneven gap(s)). Stacking them as "
                                   "uniform would distort the anatomy; export the complete series or resample it "
                                   "to even spacing first.")


def test_dicom_with_uneven_spacing_is_an_error(models, capsys, tmp_path):
    series = dicom_copy(tmp_path, "uneven")
    f = sorted(series.iterdir())[3]  # its slice at z = -772.5 moved to -773.5 (same number of characters)
    data = f.read_bytes()
    assert data.count(b"\\-772.5") == 1
    f.write_bytes(data.replace(b"\\-772.5", b"\\-773.5"))
    code, text = predict_cli(capsys, series, tmp_path / "out", models["liver"])
    assert code == 1
    assert failed(text, "uneven") == (f"{series}: slices are not evenly spaced (2 mm apart, but a gap of 1.00 mm "
                                      "between -774.50 and -773.50 mm; 2 uneven gap(s)). Stacking them as uniform "
                                      "would distort the anatomy; export the complete series or resample it to even "
                                      "spacing first.")


def test_folder_with_two_series_lists_them_and_the_flag_picks_one(models, capsys, tmp_path):
    series = dicom_copy(tmp_path, "two")
    other = shared_data_path("real_dicom", "dcmqi_ct_3slices")
    for name in ("01.dcm", "02.dcm", "03.dcm"):
        shutil.copy(other / name, series / name)
    uid = "1.2.392.200103.20080913.113635.1.2009.6.22.21.43.10.23430.1"
    code, text = predict_cli(capsys, series, tmp_path / "out", models["liver"])
    assert code == 1
    assert failed(text, "two") == (f"{series}: holds 2 DICOM image series ((no UID): CT 'CT Body 3.0', 20 file(s); "
                                   f"{uid}: CT '', 3 file(s)); pick one with --dicom-series UID.")
    code, text = predict_cli(capsys, series, tmp_path / "out", models["liver"], "--dicom-series", uid)
    assert code == 0
    assert read_image(tmp_path / "out" / "two.nii.gz").array.shape == (3, 512, 512)
    code, text = predict_cli(capsys, series, tmp_path / "out2", models["liver"], "--dicom-series", "1.2.3")
    assert code == 1 and failed(text, "two").startswith(f"--dicom-series 1.2.3: not a series of {series}; it holds")


# --- training data -----------------------------------------------------------------------------


def test_verify_dataset_reports_nan_and_truncated_images(autoliver_dirs, capsys):
    root = autoliver_dirs["raw"] / "Dataset009_Hostile"
    shutil.copytree(shared_data_path("real_ct_liver"), root)
    nan_file = root / "imagesTr" / "ts_example_ct_0000.nii.gz"
    img = read_image(nan_file)
    f = img.array.astype(np.float32)
    f[40:50, 40:60, 40:60] = np.nan
    write_image(nan_file, f, img.geometry)
    cut = root / "imagesTr" / "ts_s0009_0000.nii.gz"
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    code = main(["verify_dataset", "-d", "9", "--no-progress"])
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert code == 1 and "Traceback" not in text
    assert f"{nan_file}: 4000 NaN/Inf voxels. Replace them (e.g. with the minimum intensity)." in text
    assert (f"{cut}: the compressed data ends early (truncated or corrupt gzip); re-export or re-download it. "
            "Replace or remove case ts_s0009.") in text
