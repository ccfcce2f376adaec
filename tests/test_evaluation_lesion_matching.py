"""Lesion matching per detection rule: a pair that passes a rule is never given up for a larger
summed score (the counter-example to matching by the largest total IoU)."""
from __future__ import annotations

import numpy as np
import pytest

from autoliver.evaluation.evaluate import evaluate_case, summarise
from autoliver.evaluation.lesions import evaluate_lesions, match_one_to_one

SPACING = (2.5, 0.8, 0.8)


def _counter_example():
    """Along x, in 4 rows of one slice: reference r1 = [0, 20), r0 = [21, 92); prediction
    p0 = [0, 71) covers r1, the gap and r0's first 50 columns; p1 = [72, 92) covers r0's last 20.
    IoU(r0, p0) = 50/92 = 0.543 passes LiTS's rule; IoU(r1, p0) = 20/71 and IoU(r0, p1) = 20/71
    sum to 0.563, so the matching with the largest total IoU gives up the passing pair."""
    ref = np.zeros((3, 6, 96), bool)
    pred = np.zeros_like(ref)
    ref[1, 1:5, 0:20] = True  # r1
    ref[1, 1:5, 21:92] = True  # r0
    pred[1, 1:5, 0:71] = True  # p0
    pred[1, 1:5, 72:92] = True  # p1
    return ref, pred


def test_a_pair_passing_the_rule_is_not_lost_to_a_larger_total():
    ref, pred = _counter_example()
    ev = evaluate_lesions(ref, pred, SPACING)
    assert (ev.num_reference, ev.num_prediction) == (2, 2)
    lits = ev.rules["iou>0.5"].all
    assert (lits.tp, lits.fp, lits.fn) == (1, 1, 1)  # r0 with p0 (the old code counted 0, 2, 2)
    loose = ev.rules["dice>0.2"].all
    assert (loose.tp, loose.fp, loose.fn) == (2, 0, 0)  # Dice 40/91 both: two pairs beat one
    r0 = max((r for r in ev.lesions if r.source == "reference"), key=lambda r: r.volume_ml)
    assert r0.iou == pytest.approx(50 / 92) and r0.dice == pytest.approx(100 / 142)
    assert r0.detected == {"iou>0.5": True, "dice>0.2": True}
    p1, p0 = sorted((r for r in ev.lesions if r.source == "prediction"), key=lambda r: r.volume_ml)
    p0_id, p1_id = p0.id, p1.id
    assert r0.matches == {"iou>0.5": p0_id, "dice>0.2": p1_id}
    assert ev.rules["iou>0.5"].detected_dice == pytest.approx((100 / 142,))
    assert ev.rules["dice>0.2"].detected_dice == pytest.approx((40 / 91, 40 / 91))


def test_summary_counts_and_dice_of_detected_lesions_per_rule():
    ref, pred = _counter_example()
    labels_ref, labels_pred = ref.astype(np.uint8) * 2, pred.astype(np.uint8) * 2
    summary = summarise([evaluate_case(labels_ref, labels_pred, SPACING)])
    lits = summary.lesion_detection["iou>0.5"]
    assert (lits.all.tp, lits.all.fn) == (1, 1) and lits.mean_dice_detected == pytest.approx(100 / 142)
    assert summary.lesion_detection["dice>0.2"].mean_dice_detected == pytest.approx(40 / 91)


def test_matching_with_a_rule_maximises_passing_pairs_then_the_total():
    iou = np.array([[50 / 92, 20 / 71], [20 / 71, 0.0]])
    assert sorted(match_one_to_one(iou)) == [(0, 1), (1, 0)]  # largest total: 0.563 > 0.543
    assert match_one_to_one(iou, iou > 0.5) == [(0, 0)]  # r1 overlaps only p0: left unmatched
    # Two passing matchings: the one with the larger total wins.
    score = np.array([[0.6, 0.55], [0.58, 0.9]])
    assert sorted(match_one_to_one(score, score > 0.5)) == [(0, 0), (1, 1)]
    assert match_one_to_one(np.zeros((0, 3)), np.zeros((0, 3), bool)) == []
