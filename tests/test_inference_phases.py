"""Input layouts at prediction: a DCE dataset stored as one 4D file per case ("phases_in_file")
trains and predicts from the same files, and a 4D file given to a 3D model is one clear line."""
from __future__ import annotations

import json

import numpy as np
import pytest

from autoliver.cli import main
from autoliver.io.images import Geometry, read_image, write_image
from autoliver.planning.plan import read_plan

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread is faster

SHAPE = (8, 32, 32)
PHASES = 3
# Flipped x and y, an offset origin: the segmentation must come back on exactly this grid.
GEOMETRY = Geometry(spacing=(1.5, 1.5, 3.0), origin=(12.0, -30.0, 4.5),
                    direction=(-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0), shape_zyx=SHAPE)


def dce_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(t, z, y, x) phases in which the liver takes up contrast, and its label (1 liver, 2 tumour)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(SHAPE)
    body = ((y - 16) / 14.0) ** 2 + ((x - 16) / 13.0) ** 2 <= 1
    liver = body & (((y - 14) / 7.0) ** 2 + ((x - 13) / 6.0) ** 2 <= 1) & (z >= 1) & (z < 7)
    seg = liver.astype(np.uint8)
    seg[liver & (((z - 4) / 1.5) ** 2 + ((y - 14) / 2.0) ** 2 + ((x - 13) / 2.0) ** 2 <= 1)] = 2
    phases = [np.where(body, 100.0 + 60.0 * t * (seg == 1), 0.0) + rng.normal(0, 4, SHAPE) * body
              for t in range(PHASES)]
    return np.stack(phases).astype(np.float32), seg


def write_dce_dataset(raw, name="Dataset005_Dce", cases=2):
    folder = raw / name
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for i in range(cases):
        img, seg = dce_case(i)
        write_image(folder / "imagesTr" / f"dce_{i:03d}_0000.nii.gz", img, GEOMETRY)
        write_image(folder / "labelsTr" / f"dce_{i:03d}.nii.gz", seg, GEOMETRY)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "DCE"}, "labels": {"background": 0, "liver": 1, "tumour": 2},
        "numTraining": cases, "file_ending": ".nii.gz", "phases_in_file": PHASES}))
    return folder


def test_a_phases_in_file_dataset_trains_and_predicts_from_its_4d_files(autoliver_dirs, tmp_path, capsys):
    raw = write_dce_dataset(autoliver_dirs["raw"])
    assert main(["plan_and_preprocess", "-d", "5", "-c", "3d_fullres", "--gpu-memory-gb", "8", "-np", "1",
                 "--skip-verify", "--no-progress"]) == 0
    plan = read_plan(autoliver_dirs["preprocessed"] / "Dataset005_Dce" / "plans.json")
    # the plan (which every checkpoint carries) knows how a case is stored
    assert (plan.phases_in_file, plan.channel_names) == (PHASES, ("DCE_t0", "DCE_t1", "DCE_t2"))
    assert main(["train", "3d_fullres", "all", "--device", "cpu", "--epochs", "1", "--iters", "1",
                 "--no-validation", "-np", "0"]) == 0
    capsys.readouterr()

    scan = raw / "imagesTr" / "dce_001_0000.nii.gz"  # one 4D file, as in training: no _0001, _0002 asked for
    out = tmp_path / "out"
    assert main(["predict", "-i", str(scan), "-o", str(out), "-d", "5", "--disable-tta", "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["dce_001.nii.gz"]
    seg = read_image(out / "dce_001.nii.gz")
    assert seg.array.shape == SHAPE and seg.array.dtype == np.uint8  # 3D, on the scan's spatial grid
    assert seg.geometry.matches(GEOMETRY, tol=1e-6)
    assert set(np.unique(seg.array)) <= {0, 1, 2}

    # the same model given a 3D file: one line saying what it takes
    three_d = tmp_path / "in" / "one_0000.nii.gz"
    write_image(three_d, dce_case(0)[0][0], GEOMETRY)
    assert main(["predict", "-i", str(three_d), "-o", str(tmp_path / "o3"), "-d", "5", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert ("failed: one: case one: the model takes one 4D file of 3 phases per case (one_0000.nii.gz, "
            "(t, z, y, x)); got a 3D image (one_0000.nii.gz). Give each case as one 4D file of its 3 phases, "
            "as in training.") in err
    assert "Traceback" not in err


def test_a_fingerprint_from_before_phases_in_file_was_recorded_is_redone_for_the_plan(autoliver_dirs):
    """Fingerprints written before they carried phases_in_file would plan a model that asks for
    _0001 … files; the planner's edge re-reads dataset.json and measures again."""
    from autoliver.datasets.dataset import parse_dataset_json
    from autoliver.fingerprint.api import FINGERPRINT_FILE, extract_fingerprint
    from autoliver.planning.api import plan_dataset

    raw = write_dce_dataset(autoliver_dirs["raw"])
    extract_fingerprint(parse_dataset_json(raw), autoliver_dirs["preprocessed"], num_processes=1)
    path = autoliver_dirs["preprocessed"] / "Dataset005_Dce" / FINGERPRINT_FILE
    old = json.loads(path.read_text())
    assert old.pop("phases_in_file") == PHASES
    path.write_text(json.dumps(old))
    plan = plan_dataset("Dataset005_Dce", autoliver_dirs["preprocessed"], gpu_memory_gb=8, num_processes=1)
    assert plan.phases_in_file == PHASES and json.loads(path.read_text())["phases_in_file"] == PHASES
