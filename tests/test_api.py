"""The Python API (autoliver.Predictor and friends) against the CLI, DICOM output through both, and
logging that a hosting program controls."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

import autoliver
from autoliver.cli import main
from autoliver.errors import UserError
from autoliver.inference.predictor import PredictOptions, predict_case
from autoliver.io.images import read_image, write_image
from conftest import shared_data_path
from inference_helpers import save_model, tiny_configuration, tiny_plan

hd = pytest.importorskip("highdicom")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """An untrained 3d_fullres on a 4 mm grid whose random weights (seed 2) give background, liver
    and tumour in comparable amounts on the real CTs: a non-trivial label map to compare."""
    d = tmp_path_factory.mktemp("api_model")
    save_model(d, tiny_plan([tiny_configuration(spacing=(4.0, 4.0, 4.0), patch=(8, 32, 32))]), "3d_fullres", seed=2)
    return d


@pytest.fixture(scope="module")
def coarse_model(tmp_path_factory):
    """The same on a 12 mm grid: blocky label maps with few components (RTSTRUCT contours cost
    about a millisecond each in rt-utils), still with all three labels on the DICOM series."""
    d = tmp_path_factory.mktemp("api_coarse_model")
    save_model(d, tiny_plan([tiny_configuration(spacing=(12.0, 12.0, 12.0), patch=(4, 16, 16))]), "3d_fullres",
               seed=2)
    return d


def cli(*args: str) -> int:
    return main(["predict", *args, "--no-progress"])


def test_predict_on_an_array_equals_the_cli_on_the_file(model, tmp_path):
    src = shared_data_path("real_ct_liver", "imagesTr", "ts_example_ct_0000.nii.gz")
    assert cli("-i", str(src), "-o", str(tmp_path / "out"), "-m", str(model), "--disable-tta") == 0
    from_cli = read_image(tmp_path / "out" / "ts_example_ct.nii.gz").array
    image = read_image(src)
    with autoliver.Predictor(model, tta=False, device="cpu") as predictor:
        result = predictor.predict(image.array, image.spacing_zyx_mm, origin_xyz_mm=image.geometry.origin,
                                   direction=image.geometry.direction, return_probabilities=True)
    assert result.labels.dtype == np.uint8 and result.labels.shape == image.array.shape
    np.testing.assert_array_equal(result.labels, from_cli)
    counts = np.bincount(result.labels.ravel(), minlength=3)
    assert (counts > 1000).all(), counts  # a real label map, not one constant
    assert result.probabilities.shape == (3, *image.array.shape)
    # probabilities are stored as float16: their argmax may break a near-tie the other way, rarely
    assert np.mean(result.probabilities.astype(np.float32).argmax(0) == result.labels) > 0.999
    assert result.label_values == {"background": 0, "liver": 1, "tumour": 2}


def test_predict_file_and_folder_write_what_the_cli_writes(model, tmp_path):
    src = shared_data_path("real_ct_manual", "chaos_ct_03_0000.nii.gz")
    assert cli("-i", str(src), "-o", str(tmp_path / "cli"), "-m", str(model), "--fast") == 0
    with autoliver.Predictor(model, fast=True) as predictor:
        written = predictor.predict_file(src, tmp_path / "api" / "chaos.nrrd")
        assert written == tmp_path / "api" / "chaos.nrrd"
        failures = predictor.predict_folder(src, tmp_path / "folder")
    assert failures == {}
    expected = read_image(tmp_path / "cli" / "chaos_ct_03.nii.gz")
    for path in (written, tmp_path / "folder" / "chaos_ct_03.nii.gz"):
        got = read_image(path)
        np.testing.assert_array_equal(got.array, expected.array)
        assert got.geometry.matches(read_image(src).geometry)


def test_api_errors_are_user_errors(model, tmp_path):
    with pytest.raises(UserError, match=r"--step-size: must be in \(0, 1\]"):
        autoliver.Predictor(model, step_size=1.5)
    with autoliver.Predictor(model) as predictor:
        with pytest.raises(UserError, match=r"image must be \(z, y, x\) .* got shape \(2, 3\)"):
            predictor.predict(np.zeros((2, 3)), (1, 1, 1))
        with pytest.raises(UserError, match="name the output file with an image ending"):
            predictor.predict_file(shared_data_path("real_ct_manual", "chaos_ct_03_0000.nii.gz"), tmp_path / "x")
        bad = np.zeros((20, 40, 40), np.float32)
        bad[3, 4, 5] = np.nan
        with pytest.raises(UserError, match="1 NaN/Inf voxels"):
            predictor.predict(bad, (3, 3, 3))


def test_the_device_is_given_once(model):
    """Networks live where the Predictor put them; options without a device follow them."""
    with autoliver.Predictor(model, device="cpu", tta=False) as predictor:
        assert PredictOptions().device is None
        image = read_image(shared_data_path("real_ct_liver", "imagesTr", "ts_example_ct_0000.nii.gz"))
        plain = predict_case(predictor.model, [image], PredictOptions(mirror=False))
        np.testing.assert_array_equal(plain.segmentation, predictor.predict(
            image.array, image.spacing_zyx_mm, origin_xyz_mm=image.geometry.origin,
            direction=image.geometry.direction).labels)


@pytest.mark.parametrize("output_type", ["dicom_seg", "rtstruct"])
def test_dicom_output_matches_the_nifti_result(coarse_model, tmp_path, output_type):
    model = coarse_model
    series = shared_data_path("real_dicom", "ts_ct_dicom_20slices")
    assert cli("-i", str(series), "-o", str(tmp_path / "nifti"), "-m", str(model), "--disable-tta") == 0
    labels = read_image(tmp_path / "nifti" / "ts_ct_dicom_20slices.nii.gz")
    assert set(np.unique(labels.array)) == {0, 1, 2}
    out = tmp_path / output_type
    assert cli("-i", str(series), "-o", str(out), "-m", str(model), "--disable-tta", "--output-type", output_type) == 0
    from autoliver.io import dicom_out

    sources = {d.SOPInstanceUID: d for d in (dicom_out.read_instance(p) for p in sorted(series.iterdir()))}
    ref = sitk.Image(*reversed(labels.geometry.shape_zyx), sitk.sitkUInt8)
    labels.geometry.to_sitk(ref)

    def z_of(uid):
        return int(round(ref.TransformPhysicalPointToContinuousIndex(
            [float(v) for v in sources[uid].ImagePositionPatient])[2]))

    if output_type == "dicom_seg":
        assert [p.name for p in out.iterdir()] == ["ts_ct_dicom_20slices_seg.dcm"]
        seg = hd.seg.segread(out / "ts_ct_dicom_20slices_seg.dcm")
        rebuilt = np.zeros_like(labels.array)
        for i, fg in enumerate(seg.PerFrameFunctionalGroupsSequence):
            z = z_of(fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
            rebuilt[z][seg.pixel_array[i] > 0] = int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        np.testing.assert_array_equal(rebuilt, labels.array)  # voxel for voxel
    else:
        rt_utils = pytest.importorskip("rt_utils")
        import pydicom

        path = out / "ts_ct_dicom_20slices_rtstruct.dcm"
        ordered = sorted(sources.values(), key=rt_utils.image_helper.get_slice_position)
        rt = rt_utils.RTStruct(ordered, pydicom.dcmread(path))
        zs = [z_of(d.SOPInstanceUID) for d in ordered]
        for name, value in (("Liver", 1), ("Liver tumour", 2)):
            back = np.moveaxis(rt.get_roi_mask_by_name(name), -1, 0)
            ours = labels.array[zs] == value
            assert 2 * (back & ours).sum() / (back.sum() + ours.sum()) > 0.95, name


def test_dicom_output_for_a_nifti_input_is_refused(model, tmp_path, capsys):
    src = shared_data_path("real_ct_manual", "chaos_ct_03_0000.nii.gz")
    assert cli("-i", str(src), "-o", str(tmp_path / "o"), "-m", str(model), "--output-type", "dicom_seg") == 2
    assert "--output-type dicom_seg: needs DICOM series as input" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize("nnunet,autoliver_flags", [
    (["--save_probabilities", "-step_size", "0.7", "--disable_tta", "-device", "cpu", "--continue_prediction"],
     ["--save-probabilities", "--step-size", "0.7", "--disable-tta", "--device", "cpu", "--continue"]),
    (["-num_parts", "3", "-part_id", "2", "-chk", "checkpoint_best.pth", "-tr", "nnUNetTrainer", "-p", "nnUNetPlans"],
     ["--num-parts", "3", "--part-id", "2", "--checkpoint", "best"]),
])
def test_predict_accepts_nnunet_spellings(nnunet, autoliver_flags):
    from autoliver.cli import build_parser
    from autoliver.inference.cli import resolve_predict_habits

    def parsed(flags):
        args = build_parser().parse_args(["predict", "-i", "in", "-o", "out", *flags])
        resolve_predict_habits(args)
        return {k: v for k, v in vars(args).items() if k not in ("func", "nnunet_checkpoint", "nnunet_trainer",
                                                                 "nnunet_plans")}

    assert parsed(nnunet) == parsed(autoliver_flags)


@pytest.mark.parametrize("flags,message", [
    (["-chk", "model.pt"], "-chk model.pt: must be one of checkpoint_final.pth, checkpoint_best.pth"),
    (["-tr", "nnUNetTrainerDA5"], "-tr nnUNetTrainerDA5: autoliver maps nnUNetTrainer"),
    (["-p", "nnUNetResEncUNetMPlans"], "-p nnUNetResEncUNetMPlans: autoliver keeps one plan"),
])
def test_nnunet_spellings_that_do_not_map_say_so(flags, message, capsys):
    assert main(["predict", "-i", "in", "-o", "out", *flags]) == 2
    assert message in capsys.readouterr().err


def test_library_logs_instead_of_printing(model, tmp_path):
    """Imported as a library, autoliver prints nothing; a program that configures logging gets the
    status lines through its own handler."""
    src = shared_data_path("real_ct_manual", "chaos_ct_03_0000.nii.gz")
    code = f"""
import json, logging, sys
import autoliver
with autoliver.Predictor({str(model)!r}, fast=True) as p:
    p.predict_folder({str(src)!r}, {str(tmp_path / 'quiet')!r})
lines = []
class Keep(logging.Handler):
    def emit(self, record):
        lines.append(record.getMessage())
logging.getLogger("autoliver").addHandler(Keep())
logging.getLogger("autoliver").setLevel(logging.INFO)
with autoliver.Predictor({str(model)!r}, fast=True) as p:
    p.predict_folder({str(src)!r}, {str(tmp_path / 'loud')!r})
print(json.dumps(lines))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"AUTOLIVER_NO_PROGRESS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # not one line on stderr, from either run
    lines = json.loads(r.stdout)
    assert lines[0].startswith("predict: 1 case(s) → ") and lines[-1].startswith("predict: 1 case(s) written to")
    assert (tmp_path / "quiet" / "chaos_ct_03.nii.gz").is_file() and (tmp_path / "loud" / "chaos_ct_03.nii.gz").is_file()


def test_top_level_names_are_the_api():
    assert set(autoliver.__all__) >= {"Predictor", "Prediction", "evaluate", "evaluate_case", "report", "track"}
    with pytest.raises(AttributeError, match="has no attribute 'Predicter'"):
        autoliver.Predicter  # noqa: B018


def test_evaluate_is_a_plain_call(tmp_path):
    src = shared_data_path("real_ct_manual", "chaos_ct_03.nii.gz")
    ref = read_image(src)
    shifted = np.roll(ref.array, 2, axis=2)
    write_image(tmp_path / "chaos_ct_03.nii.gz", shifted, ref.geometry)
    with pytest.warns(UserWarning, match="no reference or prediction contains tumour"):
        summary = autoliver.evaluate(src, tmp_path / "chaos_ct_03.nii.gz", progress=False)
    a, b = ref.array > 0, shifted > 0
    expected = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert summary.cases[0].regions["liver"].dice == pytest.approx(expected, abs=1e-9)
