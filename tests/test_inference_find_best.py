"""find_best_configuration on hand-made cross-validation outputs; ensemble of saved probabilities."""
from __future__ import annotations

import json

import numpy as np
import pytest

from autoliver.cli import main
from autoliver.errors import UserError
from autoliver.inference.ensemble import ensemble_folders
from autoliver.inference.find_best import (Candidate, collect_cross_validation, find_best_configuration, regions_of,
                                           score_case)
from autoliver.inference.model import read_choice, write_choice
from autoliver.io.images import Geometry, Image, read_image, write_image
from autoliver.inference.predictor import save_probabilities
from autoliver.postprocessing import Postprocessing

LABELS = {"background": 0, "liver": 1, "tumour": 2}
SHAPE = (16, 32, 32)
GEOM = Geometry(spacing=(1.5, 1.5, 2.0), origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), shape_zyx=SHAPE)


def reference(i: int) -> np.ndarray:
    seg = np.zeros(SHAPE, np.uint8)
    seg[3:13, 6:26, 6:24 - i] = 1
    seg[6:9, 10:14, 10:14] = 2
    return seg


def one_hot(seg: np.ndarray, confidence: float = 0.8) -> np.ndarray:
    p = np.full((3, *SHAPE), (1 - confidence) / 2, np.float32)
    for k in range(3):
        p[k][seg == k] = confidence
    return p


def prediction_a(ref: np.ndarray) -> np.ndarray:
    """Good liver, but a liver island and a tumour far away (post-processing should remove them)."""
    seg = ref.copy()
    seg[1:3, 28:31, 28:31] = 1
    seg[13:15, 1:3, 28:31] = 2
    return seg


def prediction_b(ref: np.ndarray) -> np.ndarray:
    """Misses a slab of liver."""
    seg = ref.copy()
    seg[3:6][seg[3:6] == 1] = 0
    return seg


@pytest.fixture
def cv_layout(tmp_path):
    labels_dir = tmp_path / "cv" / "labelsTr"
    model_dir = tmp_path / "cv" / "Dataset001_Tiny"
    cases = [f"case{i}" for i in range(4)]
    for i, case in enumerate(cases):
        ref = reference(i)
        write_image(labels_dir / f"{case}.nii.gz", ref, GEOM)
        fold = i % 2
        for config, fn, probs in (("3d_fullres", prediction_a, True), ("2d", prediction_b, True),
                                  ("3d_lowres", prediction_b, False)):
            val = model_dir / config / f"fold_{fold}" / "validation"
            seg = fn(ref)
            write_image(val / f"{case}.nii.gz", seg, GEOM)
            if probs:
                np.savez_compressed(val / f"{case}.npz", probabilities=one_hot(seg).astype(np.float16))
    return model_dir, labels_dir


def test_regions_follow_lits():
    assert regions_of(LABELS) == {"liver": (1, 2), "tumour": (2,)}
    ref = reference(0)
    s = score_case(ref, ref, regions_of(LABELS))
    assert s == {"liver": 1.0, "tumour": 1.0}
    empty = np.zeros_like(ref)
    assert score_case(empty, empty, regions_of(LABELS)) == {"liver": 1.0, "tumour": 1.0}


def test_chooses_best_configuration_and_useful_postprocessing(cv_layout):
    model_dir, labels_dir = cv_layout
    cv = collect_cross_validation(model_dir, labels_dir, ".nii.gz", LABELS, None, ("0", "1"))
    assert sorted(cv.folders) == ["2d", "3d_fullres", "3d_lowres"] and cv.cases == [f"case{i}" for i in range(4)]
    log = []
    choice = find_best_configuration(cv, "Dataset001_Tiny", log=log.append)
    # ensembles need probabilities: 3d_lowres has none, so only 2d+3d_fullres is a pair
    assert set(choice.candidates) == {"2d", "3d_fullres", "3d_lowres", "2d+3d_fullres"}
    assert choice.configurations == ("3d_fullres",)
    pp = choice.postprocessing
    assert pp.keep_largest_liver  # removes the island and the far tumour: liver and tumour both gain
    assert choice.cv_dice["liver"] == pytest.approx(1.0) and choice.cv_dice["tumour"] == pytest.approx(1.0)
    assert choice.candidates["3d_fullres"]["tumour"] < 1.0
    assert "autoliver predict -d Dataset001_Tiny" in choice.predict_command
    assert any("kept" in line for line in log)
    path = write_choice(model_dir, choice)
    assert read_choice(model_dir) == choice and path.name == "inference_choice.json"


def test_postprocessing_not_kept_when_it_does_not_help(cv_layout):
    model_dir, labels_dir = cv_layout
    cv = collect_cross_validation(model_dir, labels_dir, ".nii.gz", LABELS, ["2d"], ("0", "1"))
    choice = find_best_configuration(cv, "Dataset001_Tiny", log=lambda *_: None)
    assert choice.configurations == ("2d",)
    assert choice.postprocessing == Postprocessing()  # prediction_b has nothing to clean


def test_missing_folds_are_reported(cv_layout):
    model_dir, labels_dir = cv_layout
    with pytest.raises(UserError, match="fold"):
        collect_cross_validation(model_dir, labels_dir, ".nii.gz", LABELS, None, ("0", "1", "2"))


def test_find_best_cli_writes_choice_and_prints_command(cv_layout, autoliver_dirs, capsys):
    model_dir, labels_dir = cv_layout
    raw = autoliver_dirs["raw"] / "Dataset001_Tiny"
    (raw / "labelsTr").mkdir(parents=True)
    for p in labels_dir.iterdir():
        (raw / "labelsTr" / p.name).write_bytes(p.read_bytes())
    (raw / "dataset.json").write_text('{"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, '
                                      '"tumour": 2}, "numTraining": 4, "file_ending": ".nii.gz"}')
    import shutil

    shutil.copytree(model_dir, autoliver_dirs["results"] / "Dataset001_Tiny")
    assert main(["find_best_configuration", "-d", "Tiny", "-f", "0", "1", "--no-ensembles"]) == 0
    out = capsys.readouterr().out
    assert "chosen: 3d_fullres" in out and "autoliver predict -d Dataset001_Tiny" in out
    assert read_choice(autoliver_dirs["results"] / "Dataset001_Tiny").configurations == ("3d_fullres",)


def test_ensemble_averages_probabilities(tmp_path):
    like = Image(np.empty(0), GEOM, "scan.nii.gz")
    ref = reference(0)
    p1, p2 = one_hot(ref, 0.5), one_hot(prediction_b(ref), 0.9)
    for d, p in (("a", p1), ("b", p2)):
        (tmp_path / d).mkdir()
        save_probabilities(tmp_path / d / "x.npz", p, like, LABELS)
        write_image(tmp_path / d / "x.nrrd", np.argmax(p, 0).astype(np.uint8), GEOM)
    written = ensemble_folders([tmp_path / "a", tmp_path / "b"], tmp_path / "out", save_probabilities=True)
    assert [p.name for p in written] == ["x.nrrd"]  # the inputs' file type
    out = read_image(tmp_path / "out" / "x.nrrd")
    expected = np.argmax(p1.astype(np.float16).astype(np.float32) + p2.astype(np.float16).astype(np.float32), 0)
    np.testing.assert_array_equal(out.array, expected)
    assert out.geometry.matches(GEOM)
    with np.load(tmp_path / "out" / "x.npz") as z:
        assert z["probabilities"].shape == (3, *SHAPE)
    with pytest.raises(UserError, match="at least two"):
        ensemble_folders([tmp_path / "a"], tmp_path / "o2")
    assert main(["ensemble", "-i", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "cli")]) == 0
    np.testing.assert_array_equal(read_image(tmp_path / "cli" / "x.nrrd").array, expected)
    assert main(["ensemble", "-i", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "a")]) == 2


def test_candidate_names():
    assert Candidate(("2d", "3d_fullres")).name == "2d+3d_fullres"


# --- post-processing must not trade lesion recall for Dice ------------------------------------


def _liver_with_lesion() -> np.ndarray:
    seg = np.zeros(SHAPE, np.uint8)
    seg[3:13, 6:26, 6:24] = 1
    seg[6:9, 10:15, 10:15] = 2  # 75 voxels of 4.5 mm³ = 0.34 ml: kept by every minimum volume but 0.5 ml
    return seg


def _small_lesion_cv(tmp_path, real_small_lesion: bool, mirroring=False):
    """Four cases in two folds, one configuration without probabilities. The prediction has the
    large lesion exactly and an 8-voxel (0.036 ml) blob; the reference has, where the blob is, a
    2-voxel lesion (real_small_lesion: the blob detects it at Dice 2·2/10 = 0.4) or nothing."""
    labels_dir, model_dir = tmp_path / "labelsTr", tmp_path / "Dataset001_Tiny"
    for i in range(4):
        ref = _liver_with_lesion()
        pred = ref.copy()
        pred[10:12, 20:22, 18:20] = 2
        if real_small_lesion:
            ref[10, 20, 18:20] = 2
        write_image(labels_dir / f"case{i}.nii.gz", ref, GEOM)
        val = model_dir / "3d_fullres" / f"fold_{i % 2}" / "validation"
        write_image(val / f"case{i}.nii.gz", pred, GEOM)
        if mirroring is not None:
            (val / "summary.json").write_text(json.dumps({"mirroring": mirroring, "step_size": 0.5}))
    return collect_cross_validation(model_dir, labels_dir, ".nii.gz", LABELS, None, ("0", "1"))


def test_removing_small_lesions_is_rejected_when_it_loses_a_reference_lesion(tmp_path):
    cv = _small_lesion_cv(tmp_path, real_small_lesion=True)
    log = []
    choice = find_best_configuration(cv, "Dataset001_Tiny", log=log.append)
    assert choice.postprocessing == Postprocessing()  # Dice would rise 0.9625 → 0.9868 at the cost of 4 lesions
    assert "  lesions detected (Dice > 0.2) without post-processing: 8/8" in log
    assert ("  minimum lesion volume: tumour 0.9625 → 0.9868, lesions detected 8/8 → 4/8 (best of 3: "
            "min_lesion_ml 0.05): not kept (it loses reference lesions)") in log
    assert choice.cv_dice["tumour"] == pytest.approx(154 / 160)


def test_removing_small_false_positives_is_kept(tmp_path):
    cv = _small_lesion_cv(tmp_path, real_small_lesion=False)
    log = []
    choice = find_best_configuration(cv, "Dataset001_Tiny", log=log.append)
    assert choice.postprocessing == Postprocessing(min_lesion_ml=0.05)
    assert ("  minimum lesion volume: tumour 0.9494 → 1.0000, lesions detected 4/4 → 4/4 (best of 3: "
            "min_lesion_ml 0.05): kept") in log
    assert choice.cv_dice["tumour"] == 1.0


# --- how the judged cross-validation predictions were made -------------------------------------


@pytest.mark.parametrize("mirroring, said", [
    (False, "judged on cross-validation predictions made without mirroring, step 0.5; predict mirrors and uses "
            "step 0.5 by default (--disable-tta predicts without mirroring)"),
    (True, "judged on cross-validation predictions made as predict runs by default (with mirroring, step 0.5)"),
    (None, "judged on cross-validation predictions made in an unknown way (no validation/summary.json says whether "
           "they were mirrored); predict mirrors and uses step 0.5 by default"),
])
def test_the_choice_says_how_its_cross_validation_predictions_were_made(tmp_path, mirroring, said):
    cv = _small_lesion_cv(tmp_path, real_small_lesion=False, mirroring=mirroring)
    log = []
    choice = find_best_configuration(cv, "Dataset001_Tiny", log=log.append)
    assert choice.cv_predictions == said
    assert f"best: 3d_fullres; deciding post-processing on its cross-validation predictions ({said})" in log
    write_choice(tmp_path, choice)
    assert read_choice(tmp_path).cv_predictions == said


# --- CRF settings chosen by cross-validation ---------------------------------------------------


def test_crf_settings_are_chosen_by_cross_validation_and_used_by_predict(cv_layout, monkeypatch):
    """A stand-in CRF that repairs the prediction only with the narrow intensity sigma: the choice
    must be that setting, stored in the recipe, and postprocess must run the CRF with it."""
    from autoliver.ops.crf import CRFParams
    from autoliver.postprocessing import postprocess, steps

    model_dir, labels_dir = cv_layout
    images = labels_dir.parent / "imagesTr"
    for p in labels_dir.iterdir():
        write_image(images / f"{p.name[:-len('.nii.gz')]}_0000.nii.gz", np.zeros(SHAPE, np.int16), GEOM)
    seen = []

    def fake_crf(probabilities, image, spacing, params=None):
        seen.append(params)
        if params.appearance_intensity_sigma == 0.05 and params.appearance_sigma_mm == 60.0:
            return one_hot(reference(int(round(image.flat[0]))))  # the case's reference: a perfect repair
        return probabilities

    monkeypatch.setattr(steps, "dense_crf", fake_crf)
    for i in range(4):  # the stand-in finds its case's reference through the image's first voxel
        write_image(images / f"case{i}_0000.nii.gz", np.full(SHAPE, i, np.int16), GEOM)
    cv = collect_cross_validation(model_dir, labels_dir, ".nii.gz", LABELS, ["2d"], ("0", "1"), images_dir=images)
    log = []
    choice = find_best_configuration(cv, "Dataset001_Tiny", try_crf=True, log=log.append)
    chosen = CRFParams(appearance_intensity_sigma=0.05)
    assert choice.postprocessing == Postprocessing(crf=True, crf_params=chosen)
    assert choice.postprocessing.describe() == "crf(appearance_intensity_sigma=0.05)"
    assert any(line.startswith("  dense CRF: ") and "(best of 3: appearance_intensity_sigma=0.05): kept" in line
               for line in log), log
    assert set(seen) == {CRFParams(), chosen, CRFParams(appearance_sigma_mm=20.0, appearance_intensity_sigma=0.05)}
    seen.clear()
    postprocess(one_hot(reference(0)), (2.0, 1.5, 1.5), choice.postprocessing, LABELS, image=np.zeros(SHAPE))
    assert seen == [chosen]
