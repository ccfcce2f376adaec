"""Lesion-wise detection and RECIST measurements on fabricated masks with hand-computed answers."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from autoliver.evaluation.lesions import evaluate_lesions, label_lesions, match_one_to_one
from autoliver.evaluation.measurements import axial_axis, longest_axial_diameter, measure_components
from autoliver.evaluation.statistics import write_statistics
from autoliver.io.images import Geometry

SPACING = (2.5, 0.8, 0.8)


def _put(mask, z, y, x):
    mask[z[0]:z[1], y[0]:y[1], x[0]:x[1]] = True


def test_lesions_are_6_connected():
    m = np.zeros((3, 4, 4), bool)
    m[1, 1, 1] = m[1, 2, 2] = True  # touch along an edge only: two lesions under 6-connectivity
    assert label_lesions(m)[1] == 2
    m[1, 1, 2] = True  # now joined through a face
    assert label_lesions(m)[1] == 1
    m2 = np.zeros((3, 4, 4), bool)
    m2[0, 0, 0] = m2[1, 1, 1] = True  # corner contact
    assert label_lesions(m2)[1] == 2 and label_lesions(m2, 26)[1] == 1


def _split_new_vanished():
    """Reference: A (large), B (small), C (small). Prediction: A split in two, B, and a new D; C missed."""
    ref = np.zeros((16, 100, 100), bool)
    pred = np.zeros_like(ref)
    _put(ref, (4, 8), (10, 50), (10, 40))  # A: 40 × 30 px = 32 × 24 mm → 40 mm diagonal, 4800 voxels
    _put(pred, (4, 8), (10, 50), (10, 28))  # A's left part, 2880 voxels (IoU 0.6)
    _put(pred, (4, 8), (10, 50), (30, 40))  # A's right part, 1600 voxels (IoU 1/3)
    _put(ref, (4, 8), (60, 70), (60, 70))  # B: 8 × 8 mm → 11.3 mm
    _put(pred, (4, 8), (60, 70), (60, 70))
    _put(ref, (10, 12), (80, 86), (20, 26))  # C: vanished in the prediction
    _put(pred, (12, 14), (80, 90), (70, 80))  # D: new, 11.3 mm
    return ref, pred


def test_split_new_and_vanished_lesions():
    ref, pred = _split_new_vanished()
    ev = evaluate_lesions(ref, pred, SPACING)
    assert (ev.num_reference, ev.num_prediction) == (3, 4)
    assert (ev.split_errors, ev.merge_errors) == (1, 0)
    refs = {r.id: r for r in ev.lesions if r.source == "reference"}
    a = next(r for r in refs.values() if r.volume_ml > 5)
    assert a.diameter_mm == pytest.approx(40.0) and a.size == "large"
    assert a.iou == pytest.approx(0.6) and a.dice == pytest.approx(0.75)
    assert len(a.overlapping) == 2 and a.detected == {"iou>0.5": True, "dice>0.2": True}
    assert a.assd_mm is not None and a.assd_mm > 0
    missed = [r for r in refs.values() if r.match is None]
    assert len(missed) == 1 and missed[0].size == "small" and missed[0].detected["dice>0.2"] is False
    for rule in ("iou>0.5", "dice>0.2"):  # both rules agree here: the split half and D are false positives
        r = ev.rules[rule]
        assert (r.all.tp, r.all.fp, r.all.fn) == (2, 2, 1)
        assert r.all.precision == pytest.approx(0.5) and r.all.recall == pytest.approx(2 / 3)
        assert r.all.f1 == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))
        assert (r.large.tp, r.large.fp, r.large.fn) == (1, 1, 0)  # the 32 × 8 mm half is itself large
        assert (r.small.tp, r.small.fp, r.small.fn) == (1, 1, 1)


def test_dice_rule_is_looser_than_the_lits_rule():
    ref = np.zeros((4, 30, 30), bool)
    pred = np.zeros_like(ref)
    _put(ref, (1, 3), (5, 15), (5, 15))  # 200 voxels
    _put(pred, (1, 3), (5, 15), (11, 21))  # overlaps 80: IoU 0.25, Dice 0.4
    ev = evaluate_lesions(ref, pred, SPACING)
    row = next(r for r in ev.lesions if r.source == "reference")
    assert row.iou == pytest.approx(0.25) and row.dice == pytest.approx(0.4)
    assert (ev.rules["iou>0.5"].all.tp, ev.rules["iou>0.5"].all.fp, ev.rules["iou>0.5"].all.fn) == (0, 1, 1)
    assert (ev.rules["dice>0.2"].all.tp, ev.rules["dice>0.2"].all.fp, ev.rules["dice>0.2"].all.fn) == (1, 0, 0)


def test_one_prediction_covering_two_lesions_detects_one():
    ref = np.zeros((4, 30, 30), bool)
    pred = np.zeros_like(ref)
    _put(ref, (1, 3), (5, 11), (5, 11))
    _put(ref, (1, 3), (13, 19), (5, 11))
    _put(pred, (1, 3), (5, 19), (5, 11))  # covers both and the gap
    ev = evaluate_lesions(ref, pred, SPACING)
    assert ev.merge_errors == 1 and ev.split_errors == 0
    d = ev.rules["dice>0.2"].all
    assert (d.tp, d.fp, d.fn) == (1, 0, 1)  # matched one-to-one: the second lesion is missed


def test_hungarian_matching_maximises_the_total():
    # Greedy (best pair first: 0.9) would leave row 1 unmatched; the optimum pairs both.
    score = np.array([[0.9, 0.8], [0.7, 0.0]])
    assert sorted(match_one_to_one(score)) == [(0, 1), (1, 0)]
    assert match_one_to_one(np.zeros((2, 0))) == []


def test_no_lesions_anywhere_is_perfect_and_missing_all_is_zero():
    empty = np.zeros((4, 10, 10), bool)
    ev = evaluate_lesions(empty, empty, SPACING)
    assert ev.rules["iou>0.5"].all.precision == ev.rules["iou>0.5"].all.recall == 1.0
    ref = empty.copy()
    ref[1, 2:5, 2:5] = True
    ev = evaluate_lesions(ref, empty, SPACING)
    c = ev.rules["iou>0.5"].all
    assert (c.tp, c.fp, c.fn, c.precision, c.recall, c.f1) == (0, 0, 1, 0.0, 0.0, 0.0)


def test_longest_axial_diameter_edge_to_edge():
    m = np.zeros((3, 20, 20), bool)
    m[1, 5, 5] = True
    assert longest_axial_diameter(m, (2.0, 0.8, 0.8)).length_mm == pytest.approx(0.8 * np.sqrt(2))
    m[1, 2:12, 5:9] = True  # 10 rows × 4 columns, rows 0.5 mm, columns 1 mm
    d = longest_axial_diameter(m, (2.0, 0.5, 1.0))
    assert d.length_mm == pytest.approx(np.hypot(5.0, 4.0)) and d.slice_index == 1
    ends = sorted(d.ends)
    assert ends == [(1.5, 4.5), (11.5, 8.5)] or ends == [(1.5, 8.5), (11.5, 4.5)]


def test_diameter_ignores_extent_along_the_slice_axis_and_follows_the_axial_axis():
    m = np.zeros((12, 5, 5), bool)
    m[:, 2, 2] = True  # a column along z: 1 pixel in every axial slice
    assert longest_axial_diameter(m, (3.0, 1.0, 1.0)).length_mm == pytest.approx(np.sqrt(2))
    # in a sagittal acquisition the head-feet axis is the array's x axis
    assert longest_axial_diameter(m, (3.0, 1.0, 1.0), axial=2).length_mm == pytest.approx(np.hypot(36.0, 1.0))
    sagittal = (0, 1, 0, 0, 0, 1, 1, 0, 0)  # ITK index x → world z (column 0 is (0, 0, 1))
    assert axial_axis(sagittal) == 2 and axial_axis((1, 0, 0, 0, 1, 0, 0, 0, 1)) == 0


def test_disc_diameter_close_to_the_true_one():
    spacing = (2.0, 0.5, 0.5)
    yy, xx = np.meshgrid(np.arange(81) * 0.5 - 20, np.arange(81) * 0.5 - 20, indexing="ij")
    m = np.zeros((3, 81, 81), bool)
    m[1] = yy ** 2 + xx ** 2 <= 10.0 ** 2
    d = longest_axial_diameter(m, spacing).length_mm
    assert 20.0 <= d <= 20.0 + 0.5 * np.sqrt(2)


def test_measure_components_volumes_and_centroids():
    m = np.zeros((6, 10, 10), bool)
    _put(m, (0, 2), (0, 3), (0, 4))
    _put(m, (4, 6), (6, 10), (6, 10))
    labels, n = label_lesions(m)
    a, b = measure_components(labels, n, SPACING)
    assert a.voxels == 24 and a.volume_ml == pytest.approx(24 * 2.5 * 0.64 / 1000)
    assert a.centroid_zyx == pytest.approx((0.5, 1.0, 1.5)) and a.bbox_zyx == ((0, 2), (0, 3), (0, 4))
    assert b.longest_axial_diameter_mm == pytest.approx(0.8 * np.hypot(4, 4))


def test_write_statistics_json_and_csv(tmp_path):
    seg = np.zeros((6, 10, 10), np.uint8)
    seg[:, 1:9, 1:9] = 1
    seg[1:3, 2:5, 2:5] = 2
    seg[4, 7, 7] = 2
    g = Geometry(spacing=(0.8, 0.8, 2.5), origin=(10.0, -5.0, 100.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                 shape_zyx=seg.shape)
    stats = write_statistics(seg, g, tmp_path / "s.json", tmp_path / "s.csv")
    voxel_ml = 0.8 * 0.8 * 2.5 / 1000
    assert stats.liver_ml == pytest.approx(6 * 64 * voxel_ml)
    assert stats.tumour_ml == pytest.approx(19 * voxel_ml) and stats.num_lesions == 2
    big = stats.lesions[0]
    assert big.voxels == 18 and big.longest_axial_diameter_mm == pytest.approx(0.8 * np.hypot(3, 3))
    # centroid (z, y, x) = (1.5, 3, 3) → world x = 10 + 3 * 0.8, y = -5 + 3 * 0.8, z = 100 + 1.5 * 2.5
    assert big.centroid_lps_mm == pytest.approx((12.4, -2.6, 103.75))
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["num_lesions"] == 2 and data["schema_version"] == 1
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert [r["structure"] for r in rows] == ["liver", "lesion", "lesion"]
    assert float(rows[1]["volume_ml"]) == pytest.approx(18 * voxel_ml, abs=1e-4)
