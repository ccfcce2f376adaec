"""Predicting real scans end to end with tiny untrained networks and hand-made plans: geometry and
orientation are exact, outputs are written atomically, resuming and splitting work."""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from autoliver.errors import UserError
from autoliver.inference.inputs import find_cases
from autoliver.inference.model import Model, StageModel, load_model
from autoliver.inference.predictor import PredictOptions, predict_cases
from autoliver.inference.run import PredictRequest, predict
from autoliver.io.images import Geometry, read_image, write_image
from conftest import shared_data_path
from inference_helpers import LABELS, save_model, tiny_configuration, tiny_plan

REAL_FILES = [
    ("real_ct_liver", "imagesTr", "ts_example_ct_0000.nii.gz"),  # RAS, 3 mm
    ("real_ct_liver", "imagesTr", "ts_s0009_0000.nii.gz"),  # RAS, 1.5 mm
    ("real_mr_liver", "imagesTr", "ts_example_mr_0000.nii.gz"),  # LPS
    ("real_dicom", "ts_ct_dicom_20slices_seg_total.nii.gz"),  # LAS, 512 × 512
    ("real_dicom", "dcmqi_ct_3slices", "liver_seg.nrrd"),  # NRRD
    ("real_dicom", "ts_ct_dicom_20slices"),  # DICOM series → NIfTI
    ("real_dicom", "dcmqi_ct_3slices"),  # DICOM, 3 slices, a SEG object beside it
    ("robustness", "ts_s0002_headneck_nonorthonormal_ct.nii.gz"),  # ITK refuses it; header must survive
]


class Threshold(torch.nn.Module):
    """'Liver' wherever the normalised intensity is above 0 (50 HU with the helper's CT norm), so
    the expected segmentation is known voxel for voxel; any flip or transposition would show."""

    def forward(self, x):
        liver = 20.0 * x[:, :1]
        return torch.cat([torch.zeros_like(liver), liver, torch.full_like(liver, -50.0)], 1)


def threshold_model(spacing, patch=(16, 128, 128)) -> Model:
    config = tiny_configuration(spacing=spacing, patch=patch)
    return Model([StageModel(tiny_plan([config]), config, [Threshold()], ["0"])])


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread is faster


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A results-style folder with an untrained 3d_fullres (2 folds) on a coarse 6 mm grid."""
    d = tmp_path_factory.mktemp("model")
    plan = tiny_plan([tiny_configuration(spacing=(6.0, 6.0, 6.0), patch=(16, 32, 32))])
    save_model(d, plan, "3d_fullres", folds=("0", "1"))
    return d


def small_scan(path: Path, seed: int = 0, shape=(12, 40, 36)) -> Path:
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 30, shape).astype(np.int16)
    a[:, 10:30, 8:28] += 120
    g = Geometry(spacing=(2.0, 2.5, 4.0), origin=(-10.0, 20.0, 30.0),
                 direction=(0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0), shape_zyx=shape)
    write_image(path, a, g)
    return path


def assert_same_grid(out_path: Path, src: Path):
    inp, out = read_image(src), read_image(out_path)
    assert out.geometry.shape_zyx == inp.geometry.shape_zyx
    assert out.geometry.matches(inp.geometry, tol=1e-5), (out.geometry, inp.geometry)
    assert out.array.dtype == np.uint8 and set(np.unique(out.array)) <= {0, 1, 2}
    if str(src).endswith((".nii", ".nii.gz")):  # the NIfTI header itself: affine and orientation codes
        a, b = nib.load(str(src)), nib.load(str(out_path))
        np.testing.assert_allclose(b.affine, a.affine, atol=1e-4)
        assert nib.aff2axcodes(b.affine) == nib.aff2axcodes(a.affine)
    return inp, out


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("parts", REAL_FILES, ids=lambda p: p[-1])
def test_every_real_file_comes_back_on_its_own_grid(parts, model_dir, tmp_path):
    src = shared_data_path(*parts)
    out = tmp_path / "out"
    assert predict(PredictRequest(input=src, output=out, model_dir=model_dir, tta=False)) == 0
    cases = find_cases(src, 1)
    assert sorted(p.name for p in out.iterdir()) == sorted(c.name + c.ending for c in cases)
    for case in cases:
        source = case.sources[0]
        if source.is_file():
            assert case.ending == (".nrrd" if source.name.endswith(".nrrd") else ".nii.gz")
            assert_same_grid(case.output_path(out), source)
        else:  # DICOM series, written as NIfTI: compare with the series as read
            assert case.ending == ".nii.gz"
            inp, seg = read_image(source), read_image(case.output_path(out))
            assert seg.geometry.matches(inp.geometry, tol=1e-5) and seg.array.shape == inp.array.shape


@pytest.mark.parametrize("parts", [REAL_FILES[0], REAL_FILES[2], REAL_FILES[3], REAL_FILES[5]], ids=lambda p: p[-1])
def test_orientation_is_kept_voxel_for_voxel(parts, tmp_path):
    """On the scan's own spacing the pipeline is an identity: the thresholded scan must come back
    exactly; on a coarser grid it must still overlap (a flipped axis would not)."""
    src = shared_data_path(*parts)
    image = read_image(src)
    spacing = image.geometry.spacing_zyx_mm
    (case,) = find_cases(src, 1)
    predict_cases(threshold_model(spacing), [case], tmp_path / "same", PredictOptions(mirror=False))
    seg = read_image(case.output_path(tmp_path / "same")).array
    expected = (image.array > 50).astype(np.uint8)
    np.testing.assert_array_equal(seg, expected)
    coarse = tuple(s * 1.7 for s in spacing)
    predict_cases(threshold_model(coarse), [case], tmp_path / "coarse", PredictOptions(mirror=False))
    seg = read_image(case.output_path(tmp_path / "coarse")).array
    def dice(a, b):
        return 2 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))

    assert dice(seg, expected) > 0.7
    for axis in range(3):  # the unflipped reference fits far better than any mirrored one
        if expected.shape[axis] > 1:
            assert dice(seg, np.flip(expected, axis)) < dice(seg, expected) - 0.05


def test_folds_are_averaged_and_probabilities_match_labels(model_dir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    small_scan(src / "a_0000.nii.gz")
    out = tmp_path / "out"
    assert predict(PredictRequest(input=src, output=out, model_dir=model_dir, save_probabilities=True)) == 0
    seg = read_image(out / "a.nii.gz").array
    with np.load(out / "a.npz") as z:
        p = z["probabilities"]
        assert p.dtype == np.float16 and p.shape == (3, *seg.shape)
        np.testing.assert_allclose(p.astype(np.float32).sum(0), 1.0, atol=5e-3)
        assert (np.argmax(p, 0) == seg).mean() > 0.999
    # one fold alone gives another answer than the average of two
    single = tmp_path / "single"
    predict(PredictRequest(input=src, output=single, model_dir=model_dir, folds=("0",), save_probabilities=True))
    with np.load(single / "a.npz") as z1, np.load(out / "a.npz") as z2:
        assert np.abs(z1["probabilities"].astype(np.float32) - z2["probabilities"].astype(np.float32)).max() > 1e-3


def test_refuses_to_write_into_the_input_folder(model_dir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    small_scan(src / "a_0000.nii.gz")
    before = sorted(os.listdir(src))
    for out in (src, src / "predictions"):
        with pytest.raises(UserError, match="must not be the input folder"):
            predict(PredictRequest(input=src, output=out, model_dir=model_dir))
    with pytest.raises(UserError, match="must not be the input folder"):
        predict(PredictRequest(input=src / "a_0000.nii.gz", output=src, model_dir=model_dir))
    assert sorted(os.listdir(src)) == before


def test_continue_skips_finished_cases_only(model_dir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        small_scan(src / f"c{i}_0000.nii.gz", seed=i)
    out = tmp_path / "out"
    req = PredictRequest(input=src, output=out, model_dir=model_dir, tta=False, folds=("0",))
    assert predict(dataclasses.replace(req, input=src / "c0_0000.nii.gz")) == 0
    stamp = (out / "c0.nii.gz").stat().st_mtime_ns
    time.sleep(0.01)
    assert predict(dataclasses.replace(req, resume=True)) == 0
    assert (out / "c0.nii.gz").stat().st_mtime_ns == stamp  # skipped
    assert sorted(p.name for p in out.iterdir()) == ["c0.nii.gz", "c1.nii.gz", "c2.nii.gz"]
    assert predict(req) == 0  # without --continue everything is redone
    assert (out / "c0.nii.gz").stat().st_mtime_ns != stamp
    # with --save-probabilities a case without its .npz is not finished
    assert predict(dataclasses.replace(req, resume=True, save_probabilities=True)) == 0
    assert sorted(p.name for p in out.glob("*.npz")) == ["c0.npz", "c1.npz", "c2.npz"]


def test_parts_predict_disjoint_halves(model_dir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        small_scan(src / f"c{i}_0000.nii.gz", seed=i)
    out = tmp_path / "out"
    req = PredictRequest(input=src, output=out, model_dir=model_dir, tta=False, folds=("0",), num_parts=2)
    predict(req)
    assert sorted(p.name for p in out.iterdir()) == ["c0.nii.gz", "c2.nii.gz"]
    predict(dataclasses.replace(req, part_id=1))
    assert sorted(p.name for p in out.iterdir()) == ["c0.nii.gz", "c1.nii.gz", "c2.nii.gz"]


def test_sigkill_mid_run_leaves_no_partial_output_and_continue_finishes(model_dir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(8):
        small_scan(src / f"c{i}_0000.nii.gz", seed=i, shape=(20, 60, 50))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "autoliver", "predict", "-i", str(src), "-o", str(out), "-m", str(model_dir),
           "--no-progress", "--num-threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    def final_names():  # a temporary name is hidden (".c2.nii.gz.tmp….nii.gz") but also ends in .nii.gz
        return sorted(p for p in out.glob("*.nii.gz") if not p.name.startswith(".")) if out.is_dir() else []

    while time.time() < deadline and not final_names():
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = final_names()
    visible = [p for p in out.iterdir() if not p.name.startswith(".")]
    assert 1 <= len(finished) < 8, "the run was not killed mid-way; make the cases slower"
    assert sorted(visible) == finished  # only complete segmentations carry final names
    for p in finished:
        assert read_image(p).array.shape == (20, 60, 50)
    done = {p.name: p.stat().st_mtime_ns for p in finished}
    subprocess.run(cmd + ["--continue"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert sorted(p.name for p in out.iterdir()) == [f"c{i}.nii.gz" for i in range(8)]  # temporaries gone
    for name, stamp in done.items():
        assert (out / name).stat().st_mtime_ns == stamp


def test_tta_on_a_real_file_runs_and_keeps_geometry(model_dir, tmp_path):
    src = shared_data_path("real_mr_liver", "imagesTr", "ts_example_mr_0000.nii.gz")
    assert predict(PredictRequest(input=src, output=tmp_path, model_dir=model_dir, tta=True, folds=("0",))) == 0
    assert_same_grid(tmp_path / "ts_example_mr.nii.gz", src)


def test_unreadable_case_is_reported_and_others_are_written(model_dir, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    small_scan(src / "good_0000.nii.gz")
    (src / "broken_0000.nii.gz").write_bytes(b"not a nifti")
    out = tmp_path / "out"
    assert predict(PredictRequest(input=src, output=out, model_dir=model_dir, tta=False, folds=("0",))) == 1
    assert sorted(p.name for p in out.iterdir()) == ["good.nii.gz"]
    assert "broken" in capsys.readouterr().err


def test_a_defect_while_predicting_names_the_case(model_dir, tmp_path, monkeypatch):
    """An internal error (not the input's fault) stops the run, but the message says which case met
    it, and nothing half-written is left for that case."""
    from autoliver.inference import predictor

    def broken(*args, **kwargs):
        raise ValueError("zero-size array to reduction operation minimum")

    monkeypatch.setattr(predictor, "predict_stage", broken)
    src = tmp_path / "in"
    src.mkdir()
    small_scan(src / "scan7_0000.nii.gz")
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match=r"^scan7: prediction failed: zero-size array"):
        predict(PredictRequest(input=src, output=out, model_dir=model_dir, tta=False, folds=("0",)))
    assert not out.exists() or not any(p.name.startswith("scan7") for p in out.iterdir())


def test_an_input_error_met_while_predicting_fails_that_case_only(model_dir, tmp_path, monkeypatch, capsys):
    from autoliver.inference import predictor

    real, calls = predictor.predict_stage, []

    def picky(*args):
        calls.append(1)
        if len(calls) == 2:  # the second scan (cases go in name order)
            raise UserError("scanB: something about this scan is wrong")
        return real(*args)

    monkeypatch.setattr(predictor, "predict_stage", picky)
    src = tmp_path / "in"
    src.mkdir()
    small_scan(src / "scanA_0000.nii.gz")
    small_scan(src / "scanB_0000.nii.gz", seed=1)
    small_scan(src / "scanC_0000.nii.gz", seed=2)  # the run goes on past the failed case
    out = tmp_path / "out"
    assert predict(PredictRequest(input=src, output=out, model_dir=model_dir, tta=False, folds=("0",))) == 1
    assert sorted(p.name for p in out.iterdir()) == ["scanA.nii.gz", "scanC.nii.gz"]
    assert "something about this scan is wrong" in capsys.readouterr().err


def test_model_choice_errors(model_dir, tmp_path):
    with pytest.raises(UserError, match="not trained"):
        load_model(model_dir, folds=["3"])
    with pytest.raises(UserError, match="no trained folds"):
        load_model(model_dir, configurations=["2d"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no trained configurations"):
        load_model(empty)
    m = load_model(model_dir)
    assert m.stages[0].folds == ["0", "1"] and m.labels == LABELS


def test_shutil_copy_of_model_folder_is_enough(model_dir, tmp_path):
    """A model folder is self-describing: a plain copy elsewhere predicts the same."""
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    m1, m2 = load_model(model_dir), load_model(copy)
    x = torch.randn(1, 1, 16, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m1.stages[0].networks[0](x), m2.stages[0].networks[0](x))


def test_a_4d_file_for_a_3d_model_is_one_line_not_a_traceback(model_dir, tmp_path, capsys):
    """Four volumes stacked in one file reach a 1-channel model: the case fails with a line that says
    what the model takes; the other cases are still written."""
    from autoliver.cli import main

    src = tmp_path / "in"
    src.mkdir()
    small_scan(src / "good_0000.nii.gz")
    three_d = read_image(small_scan(tmp_path / "x.nii.gz", shape=(6, 20, 18)))
    write_image(src / "dyn_0000.nii.gz", np.stack([three_d.array] * 4), three_d.geometry)
    out = tmp_path / "out"
    assert main(["predict", "-i", str(src), "-o", str(out), "-m", str(model_dir), "-f", "0", "--disable-tta",
                 "--no-progress"]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["good.nii.gz"]
    err = capsys.readouterr().err
    assert ("failed: dyn: case dyn: the model takes 1 channel (dyn_0000.nii.gz, 3D); got a 4D image with 4 "
            "volumes (dyn_0000.nii.gz). Give one 3D file per channel.") in err
    assert "Traceback" not in err
