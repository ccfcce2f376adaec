"""verify_dataset lists every planted problem; converters build valid datasets from fabricated layouts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autoliver.cli import main
from autoliver.datasets.convert import convert_lits, convert_msd
from autoliver.datasets.dataset import parse_dataset_json
from autoliver.datasets.verify import check_dataset, verify_dataset
from autoliver.errors import UserError, UserErrors
from autoliver.io import Geometry, read_image, write_image
from conftest import shared_data_path

GEO = Geometry(spacing=(0.8, 0.8, 2.0), origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), shape_zyx=(6, 10, 12))


def _case_arrays(rng):
    img = rng.integers(-200, 200, size=GEO.shape_zyx).astype(np.int16)
    seg = np.zeros(GEO.shape_zyx, np.uint8)
    seg[2:5, 3:8, 3:9] = 1
    seg[3, 4:6, 4:6] = 2
    return img, seg


def make_dataset(folder, rng, cases=("a", "b", "c", "d", "e", "f", "g")):
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for c in cases:
        img, seg = _case_arrays(rng)
        write_image(folder / "imagesTr" / f"{c}_0000.nii.gz", img, GEO)
        write_image(folder / "labelsTr" / f"{c}.nii.gz", seg, GEO)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2},
        "numTraining": len(cases), "file_ending": ".nii.gz"}))
    return parse_dataset_json(folder)


def test_clean_dataset_has_no_problems(tmp_path, rng):
    info = make_dataset(tmp_path / "Dataset001_X", rng)
    assert verify_dataset(info, progress=False) == []
    check_dataset(info, progress=False)


def test_every_planted_problem_is_reported(tmp_path, rng):
    root = tmp_path / "Dataset001_X"
    info = make_dataset(root, rng)
    img, seg = _case_arrays(rng)
    # a: label value 5 not in dataset.json
    bad = seg.copy(); bad[0, 0, 0] = 5
    write_image(root / "labelsTr" / "a.nii.gz", bad, GEO)
    # b: label on another grid
    write_image(root / "labelsTr" / "b.nii.gz", seg, Geometry((0.9, 0.8, 2.0), (0, 0, 0), GEO.direction, GEO.shape_zyx))
    # c: NaN in a float image
    f = img.astype(np.float32); f[1, 1, 1] = np.nan
    write_image(root / "imagesTr" / "c_0000.nii.gz", f, GEO)
    # d: 4D image where 3D is expected
    write_image(root / "imagesTr" / "d_0000.nii.gz", np.stack([img, img]), GEO)
    # e: empty label
    write_image(root / "labelsTr" / "e.nii.gz", np.zeros_like(seg), GEO)
    # f: image without label; g: label without image; a stray, badly named file; unreadable h
    (root / "labelsTr" / "f.nii.gz").unlink()
    (root / "imagesTr" / "g_0000.nii.gz").unlink()
    (root / "imagesTr" / "notes.txt").write_text("x")
    (root / "labelsTr" / "h.nii.gz").write_bytes(b"garbage")
    problems = verify_dataset(info, progress=False)
    text = "\n".join(problems)
    expected = {
        "a.nii.gz: label values must be among those declared in dataset.json [0, 1, 2], got [0, 1, 2, 5]; "
        "[5] not declared.",
        "b_0000.nii.gz: geometry does not match its label b.nii.gz: spacing",
        "c_0000.nii.gz: 1 NaN/Inf voxels",
        "d_0000.nii.gz: 4D image",
        "e.nii.gz: the label map is empty",
        "case f has images but no label",
        "g_0000.nii.gz: missing",
        "notes.txt: file name must be",
        "h.nii.gz: cannot read this image",
        "numTraining is 7 but labelsTr has 7",
    }
    for snippet in expected - {"numTraining is 7 but labelsTr has 7"}:
        assert snippet in text, f"not reported: {snippet}\n{text}"
    assert all("\n" not in p for p in problems)
    with pytest.raises(UserErrors) as err:
        check_dataset(info, progress=False)
    assert len(err.value.problems) == len(problems) >= 9


def test_verify_dataset_cli_exit_code(tmp_path, rng, autoliver_dirs, capsys):
    info = make_dataset(autoliver_dirs["raw"] / "Dataset002_Ok", rng)
    assert main(["verify_dataset", "-d", "2"]) == 0
    (info.labels_dir / "a.nii.gz").unlink()
    assert main(["verify_dataset", "-d", "Ok", "--no-progress"]) == 1
    assert "no label" in capsys.readouterr().out


def test_real_ct_dataset_verifies(shared_data):
    info = parse_dataset_json(shared_data_path("real_ct_liver"))
    assert verify_dataset(info, progress=False) == []
    assert info.modality == "CT" and info.training_cases() == ["ts_example_ct", "ts_s0009"]


def _write_nii(path, array, geo=GEO, dtype=None):
    write_image(path, array.astype(dtype or array.dtype), geo)


def test_convert_lits_from_fabricated_release(tmp_path, rng):
    src = tmp_path / "LITS17"
    for batch, ns in (("Training Batch 1", (0, 1)), ("Training Batch 2", (27,))):
        for n in ns:
            img, seg = _case_arrays(rng)
            _write_nii(src / batch / f"volume-{n}.nii", img.astype(np.float32))  # LiTS ships float volumes
            _write_nii(src / batch / f"segmentation-{n}.nii", seg.astype(np.float32))
    _write_nii(src / "test" / "test-volume-5.nii", _case_arrays(rng)[0])
    (src / "Training Batch 1" / "._volume-0.nii").write_bytes(b"junk")
    out = convert_lits(src, tmp_path / "raw" / "Dataset003_LiTS", progress=False)
    info = parse_dataset_json(out)
    assert info.training_cases() == ["liver_0", "liver_1", "liver_27"]
    assert info.test_cases() == ["liver_test_5"]
    assert verify_dataset(info, progress=False) == []
    img = read_image(out / "imagesTr" / "liver_1_0000.nii.gz")
    assert img.array.dtype == np.int16, "integral float volumes are stored losslessly as int16"
    assert read_image(out / "labelsTr" / "liver_1.nii.gz").array.dtype == np.uint8
    with pytest.raises(UserError, match="already exists.*--overwrite"):
        convert_lits(src, out, progress=False)
    convert_lits(src, out, overwrite=True, progress=False)
    assert not list(out.parent.glob(".*partial"))


def test_convert_msd_skips_resource_forks(tmp_path, rng, autoliver_dirs):
    src = tmp_path / "Task03_Liver"
    for n in (0, 4):
        img, seg = _case_arrays(rng)
        _write_nii(src / "imagesTr" / f"liver_{n}.nii.gz", img)
        _write_nii(src / "labelsTr" / f"liver_{n}.nii.gz", seg)
    (src / "imagesTr" / "._liver_0.nii.gz").write_bytes(b"\0\0")
    (src / "labelsTr" / "._liver_0.nii.gz").write_bytes(b"\0\0")
    _write_nii(src / "imagesTs" / "liver_200.nii.gz", _case_arrays(rng)[0])
    assert main(["convert_msd", str(src), "--no-progress"]) == 0
    info = parse_dataset_json(autoliver_dirs["raw"] / "Dataset003_LiTS")
    assert info.training_cases() == ["liver_0", "liver_4"] and info.test_cases() == ["liver_200"]
    assert main(["convert_msd", str(src), "--no-progress"]) == 2  # refuses to overwrite


def test_convert_rejects_bad_labels(tmp_path, rng):
    src = tmp_path / "LITS17"
    img, seg = _case_arrays(rng)
    seg[0, 0, 0] = 7
    _write_nii(src / "volume-0.nii", img)
    _write_nii(src / "segmentation-0.nii", seg)
    with pytest.raises(UserError, match=r"label values \[0, 1, 2, 7\]"):
        convert_lits(src, tmp_path / "out", progress=False)


def test_real_labels_with_an_undeclared_value_are_an_error(tmp_path, autoliver_dirs, capsys):
    import shutil

    root = Path(shutil.copytree(shared_data_path("real_ct_liver"), autoliver_dirs["raw"] / "Dataset009_Real"))
    label = read_image(root / "labelsTr" / "ts_s0009.nii.gz")
    seg = label.array.copy()
    seg[60, 60, 60:70] = 3  # a stray tumour-like value the dataset does not declare
    write_image(root / "labelsTr" / "ts_s0009.nii.gz", seg, label.geometry)
    assert main(["verify_dataset", "-d", "9", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert (f"{root / 'labelsTr' / 'ts_s0009.nii.gz'}: label values must be among those declared in dataset.json "
            "[0, 1], got [0, 1, 3]; [3] not declared. Declare them in dataset.json labels or relabel the file.") in out
    assert "Traceback" not in out


@pytest.mark.parametrize("labels, declared", [
    ({"background": 0, "liver": 2}, "background 0, liver 2"),
    ({"background": 0, "liver": 1, "tumour": 3}, "background 0, liver 1, tumour 3"),
    ({"background": 0, "liver": 1, "lesion": 1}, "background 0, liver 1, lesion 1"),
])
def test_declared_labels_must_be_numbered_from_0_without_gaps(tmp_path, rng, labels, declared):
    root = tmp_path / "Dataset001_X"
    make_dataset(root, rng, cases=("a",))
    d = json.loads((root / "dataset.json").read_text())
    d["labels"] = labels
    (root / "dataset.json").write_text(json.dumps(d))
    problems = verify_dataset(parse_dataset_json(root), progress=False)
    n = len(labels) - 1
    assert problems[0] == (f"{root / 'dataset.json'}: labels must be numbered 0, 1, …, {n} without gaps or repeats, "
                           f"got {declared}. Renumber them (and the label files to match).")


def test_consecutive_labels_pass(tmp_path, rng):
    root = tmp_path / "Dataset001_X"
    info = make_dataset(root, rng, cases=("a",))
    assert verify_dataset(info, progress=False) == []


def _msd_from_real_scan(tmp_path, shift_mm):
    """An MSD-layout source with the real CHAOS CT and its manual liver mask, the mask's origin moved."""
    from autoliver.io import Geometry as G

    img = read_image(shared_data_path("real_ct_manual", "chaos_ct_03_0000.nii.gz"))
    label = read_image(shared_data_path("real_ct_manual", "chaos_ct_03.nii.gz"))
    src = tmp_path / "Task03_Liver"
    (src / "imagesTr").mkdir(parents=True)
    (src / "labelsTr").mkdir()
    (src / "imagesTr" / "liver_3.nii.gz").write_bytes(
        shared_data_path("real_ct_manual", "chaos_ct_03_0000.nii.gz").read_bytes())
    g = label.geometry
    moved = G(spacing=g.spacing, origin=(g.origin[0] + shift_mm, g.origin[1], g.origin[2]), direction=g.direction,
              shape_zyx=g.shape_zyx)
    write_image(src / "labelsTr" / "liver_3.nii.gz", label.array.astype(np.uint8), moved)
    return src, img, label


def test_convert_rejects_a_label_grid_that_differs_beyond_rounding(tmp_path):
    src, img, _ = _msd_from_real_scan(tmp_path, shift_mm=2.0)
    with pytest.raises(UserError) as err:
        convert_msd(src, tmp_path / "out", progress=False)
    o = tuple(round(float(v), 3) for v in img.geometry.origin)
    moved = (round(o[0] + 2.0, 3), o[1], o[2])
    assert str(err.value) == (
        f"{src / 'labelsTr' / 'liver_3.nii.gz'}: its grid must match its volume liver_3.nii.gz's up to rounding "
        f"(voxel centres within 0.05 voxel), got origin {moved} vs {o} mm: voxel centres move by up to 2 mm "
        f"(tolerance 0.0727 mm). The label would be written on the volume's grid and mark other voxels; "
        "fix the header or remove the case.")
    assert not (tmp_path / "out").exists()


def test_convert_accepts_a_label_grid_that_differs_by_rounding(tmp_path):
    src, img, label = _msd_from_real_scan(tmp_path, shift_mm=0.01)
    out = convert_msd(src, tmp_path / "out", progress=False)
    written = read_image(out / "labelsTr" / "liver_3.nii.gz")
    assert written.geometry.matches(img.geometry, 1e-6)
    assert int(np.count_nonzero(written.array)) == int(np.count_nonzero(label.array))
