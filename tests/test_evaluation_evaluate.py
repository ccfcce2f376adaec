"""``autoliver evaluate``: file pairing, grid checks, the summary JSON, pictures and the HTML page."""
from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest

from autoliver.cli import main
from autoliver.errors import UserError
from autoliver.evaluation import metrics as M
from autoliver.evaluation.evaluate import Settings, evaluate, evaluate_case, read_summary
from autoliver.io.images import Geometry, write_image

GEOMETRY = Geometry(spacing=(0.8, 0.8, 2.5), origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                    shape_zyx=(20, 48, 48))


def _case(liver_shift=0, lesions=((10, 20, 20, 5),), seed=0):
    """A liver block with cube lesions (z, y, x, half-size in voxels)."""
    seg = np.zeros(GEOMETRY.shape_zyx, np.uint8)
    seg[3:17, 8 + liver_shift:40 + liver_shift, 6:42] = 1
    for z, y, x, h in lesions:
        seg[z - 2:z + 2, y - h:y + h, x - h:x + h] = 2
    return seg


@pytest.fixture
def folders(tmp_path):
    ref, pred, images = tmp_path / "ref", tmp_path / "pred", tmp_path / "images"
    cases = {
        "a": (_case(lesions=((10, 20, 20, 6), (12, 30, 34, 3))), _case(1, lesions=((10, 20, 21, 6),))),
        "b": (_case(lesions=()), _case(0, lesions=())),  # no tumour in either: Dice 1 (LiTS)
    }
    for name, (r, p) in cases.items():
        write_image(ref / f"{name}.nii.gz", r, GEOMETRY)
        write_image(pred / f"{name}.nrrd", p, GEOMETRY)  # any supported format, matched by case name
        ct = np.where(r > 0, 60, -1000).astype(np.int16) + np.where(r == 2, -40, 0).astype(np.int16)
        write_image(images / f"{name}_0000.nii.gz", ct, GEOMETRY)
    return ref, pred, images, cases


def test_summary_numbers(folders, tmp_path):
    ref, pred, _, cases = folders
    out = tmp_path / "out" / "summary.json"
    summary = evaluate(ref, pred, out, num_processes=2, progress=False)  # two worker processes
    data = json.loads(out.read_text())
    assert data["schema_version"] == 1 and data["num_cases"] == 2 and "LiTS" in data["conventions"]
    a_ref, a_pred = cases["a"]
    spacing = GEOMETRY.spacing_zyx_mm
    liver_a = M.region_metrics(a_ref > 0, a_pred > 0, spacing)
    case_a = next(c for c in data["cases"] if c["case"] == "a")
    assert case_a["regions"]["liver"]["dice"] == pytest.approx(liver_a.dice)
    assert case_a["regions"]["liver"]["hd95_mm"] == pytest.approx(liver_a.hd95_mm)
    case_b = next(c for c in data["cases"] if c["case"] == "b")
    assert case_b["regions"]["tumour"]["dice"] == 1.0 and case_b["regions"]["tumour"]["assd_mm"] == 0.0
    tumour = data["regions"]["tumour"]
    dice_a = M.dice(a_ref == 2, a_pred == 2)
    assert tumour["dice_per_case"] == pytest.approx((dice_a + 1.0) / 2)
    assert tumour["dice_global"] == pytest.approx(dice_a)  # case b adds no tumour voxels
    liver_b = M.region_metrics(cases["b"][0] > 0, cases["b"][1] > 0, spacing)
    assert data["regions"]["liver"]["dice_global"] == pytest.approx(M.global_dice([liver_a.counts, liver_b.counts]))
    # lesions: the big one found (IoU 10/12 per slice), the small one missed
    det = data["lesion_detection"]["iou>0.5"]
    assert (det["all"]["tp"], det["all"]["fp"], det["all"]["fn"]) == (1, 0, 1)
    assert det["small"]["fn"] == 1 and det["large"]["tp"] == 0 and det["small"]["tp"] == 1
    assert data["tumour_burden"]["num_cases"] == 2
    assert summary.regions["tumour"].undefined_cases["assd_mm"] == 0
    assert read_summary(out) == summary  # the JSON is a strict, complete document


def test_pictures_and_offline_html(folders, tmp_path):
    ref, pred, images, _ = folders
    html = tmp_path / "report" / "summary.html"
    evaluate(ref, pred, tmp_path / "s.json", num_processes=1, overview_dir=tmp_path / "overview", html=html,
             images=images, progress=False)
    for case in ("a", "b"):
        png = (tmp_path / "overview" / f"{case}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    import matplotlib.image

    picture = matplotlib.image.imread(tmp_path / "overview" / "a.png")
    assert picture.shape[1] > 1000 and picture[..., :3].std() > 0.05  # not a blank canvas
    text = html.read_text()
    assert text.count("data:image/png;base64,") == 2
    assert not re.search(r"(src|href)=['\"](?!data:)", text)  # nothing to fetch: opens offline
    assert "Lesion detection" in text and "<td>a</td>" in text


def test_cli_evaluate(folders, tmp_path, capsys):
    ref, pred, _, _ = folders
    out = tmp_path / "cli.json"
    assert main(["evaluate", "-ref", str(ref), "-pred", str(pred), "-o", str(out), "-np", "1", "--no-progress",
                 "--nsd-tolerance", "1.5"]) == 0
    printed = capsys.readouterr().out
    assert "liver: Dice per case" in printed and "lesions (iou>0.5): TP 1 FP 0 FN 1" in printed
    assert json.loads(out.read_text())["settings"]["nsd_tolerance_mm"] == 1.5


def test_single_files_and_custom_regions(folders, tmp_path):
    ref, pred, _, cases = folders
    s = evaluate(ref / "a.nii.gz", pred / "a.nrrd", None, settings=Settings(regions={"lesion": (2,)}),
                 progress=False)
    assert list(s.regions) == ["lesion"] and s.lesion_detection == {} and s.tumour_burden is None
    assert s.regions["lesion"].dice_global == pytest.approx(M.dice(cases["a"][0] == 2, cases["a"][1] == 2))


def test_grid_mismatch_is_reported_clearly(folders, tmp_path):
    ref, pred, _, cases = folders
    shifted = Geometry(spacing=(0.8, 0.8, 3.0), origin=GEOMETRY.origin, direction=GEOMETRY.direction,
                       shape_zyx=GEOMETRY.shape_zyx)
    write_image(pred / "a.nrrd", cases["a"][1], shifted)
    with pytest.raises(UserError) as e:
        evaluate(ref, pred, None, num_processes=1, progress=False)
    assert "a.nrrd: geometry must match the reference" in str(e.value) and "spacing" in str(e.value)
    small = np.zeros((20, 48, 40), np.uint8)
    write_image(pred / "b.nrrd", small, Geometry(GEOMETRY.spacing, GEOMETRY.origin, GEOMETRY.direction, small.shape))
    with pytest.raises(UserError) as e:
        evaluate(ref, pred, None, num_processes=1, progress=False)
    assert "(2)" in str(e.value) and "shape (z, y, x) (20, 48, 40) vs (20, 48, 48)" in str(e.value)


def test_missing_predictions_and_wrong_inputs(folders, tmp_path):
    ref, pred, _, _ = folders
    (pred / "b.nrrd").unlink()
    with pytest.raises(UserError, match="no prediction for case 'b'"):
        evaluate(ref, pred, None, progress=False)
    with pytest.raises(UserError, match="must both be files or both be folders"):
        evaluate(ref, pred / "a.nrrd", None, progress=False)
    with pytest.raises(UserError, match="not found"):
        evaluate(ref, tmp_path / "nope", None, progress=False)
    probabilities = np.full(GEOMETRY.shape_zyx, 0.3, np.float32)
    write_image(pred / "b.nrrd", probabilities, GEOMETRY)
    with pytest.raises(UserError, match="whole numbers"):
        evaluate(ref, pred, None, num_processes=1, progress=False)


def test_liver_only_data_leaves_tumour_out(tmp_path):
    ref, pred = tmp_path / "r", tmp_path / "p"
    seg = _case(lesions=())
    seg[seg == 2] = 1
    write_image(ref / "x.nii.gz", seg, GEOMETRY)
    write_image(pred / "x.nii.gz", seg, GEOMETRY)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = evaluate(ref, pred, None, progress=False)
    assert list(s.regions) == ["liver"] and s.regions["liver"].dice_global == 1.0
    assert any("tumour" in str(w.message) for w in caught)


def test_evaluate_case_is_pure_and_uses_the_axial_axis():
    ref = _case(lesions=((10, 20, 20, 6),))
    result = evaluate_case(ref, ref, GEOMETRY.spacing_zyx_mm)
    lesion = next(r for r in result.lesions.lesions if r.source == "reference")
    assert lesion.diameter_mm == pytest.approx(0.8 * np.hypot(12, 12))
    sideways = evaluate_case(ref, ref, GEOMETRY.spacing_zyx_mm, axial=2)
    lesion = next(r for r in sideways.lesions.lesions if r.source == "reference")
    assert lesion.diameter_mm == pytest.approx(np.hypot(4 * 2.5, 12 * 0.8))


def test_prediction_written_in_another_orientation_is_reoriented(folders, tmp_path):
    ref, pred, _, cases = folders
    expected = evaluate(ref, pred, None, num_processes=1, progress=False)
    # the same voxels stored RAS-style: x and y reversed, origin at the far corner of those axes
    a_pred = cases["a"][1]
    far = np.array(GEOMETRY.origin) + (np.array(GEOMETRY.shape_zyx[::-1]) - 1) * np.array(GEOMETRY.spacing)
    ras = Geometry(GEOMETRY.spacing, (far[0], far[1], GEOMETRY.origin[2]), (-1, 0, 0, 0, -1, 0, 0, 0, 1),
                   GEOMETRY.shape_zyx)
    write_image(pred / "a.nrrd", np.ascontiguousarray(a_pred[:, ::-1, ::-1]), ras)
    got = evaluate(ref, pred, None, num_processes=1, progress=False)
    assert got.regions == expected.regions
    # a true misalignment (half a voxel off) is still an error
    off = Geometry(GEOMETRY.spacing, (far[0] + 0.4, far[1], GEOMETRY.origin[2]), ras.direction, GEOMETRY.shape_zyx)
    write_image(pred / "a.nrrd", np.ascontiguousarray(a_pred[:, ::-1, ::-1]), off)
    with pytest.raises(UserError, match="direction"):
        evaluate(ref, pred, None, num_processes=1, progress=False)


def test_real_dicom_with_a_label_map_stored_in_another_orientation():
    from conftest import shared_data_path

    from autoliver.evaluation.evaluate import labels_on_grid, read_labels
    from autoliver.io.images import read_image

    scan = read_image(shared_data_path("real_dicom", "ts_ct_dicom_20slices"))
    seg, seg_img = read_labels(shared_data_path("real_dicom", "ts_ct_dicom_20slices_seg_total.nii.gz"))
    assert not scan.geometry.matches(seg_img.geometry)  # stored with y reversed
    aligned, problem = labels_on_grid(seg, seg_img, scan)
    assert problem is None

    def soft_tissue(mask):  # share of the mask between 0 and 250 HU (liver, not air, fat or bone)
        hu = scan.array[mask]
        return np.mean((hu > 0) & (hu < 250))

    assert soft_tissue(aligned == 5) > 0.97  # TotalSegmentator's liver label, where the liver is
    assert soft_tissue(seg == 5) < 0.9  # the raw array, read as if it were on the scan's layout
