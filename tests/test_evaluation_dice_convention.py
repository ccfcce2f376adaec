"""One Dice convention for a region absent from both reference and prediction (Dice 1, as LiTS), the
same in the trainer's validation, ``evaluate`` and ``find_best_configuration``."""
from __future__ import annotations

import numpy as np
import pytest

from autoliver.evaluation.evaluate import evaluate_case
from autoliver.inference.find_best import regions_of, score_case
from autoliver.training.validation import case_scores, summarize

LABELS = {"background": 0, "liver": 1, "tumour": 2}


def _tumour_free_case():
    """Reference liver 4×6×6 = 144 voxels; predicted liver one column shorter, 120 voxels; no tumour
    in either: liver Dice = 2·120 / 264."""
    ref = np.zeros((6, 8, 8), np.uint8)
    ref[1:5, 1:7, 1:7] = 1
    pred = ref.copy()
    pred[:, :, 6] = 0
    return ref, pred


def _case_with_tumour():
    """Tumour of 8 voxels, predicted half of it: tumour Dice = 2·4 / 12."""
    ref, pred = _tumour_free_case()
    ref[2:4, 2:4, 2:4] = 2
    pred[2:4, 2:4, 2:4] = 1
    pred[2:4, 2:4, 2] = 2
    return ref, pred


def test_the_three_scorers_agree_on_a_tumour_free_case():
    ref, pred = _tumour_free_case()
    liver = 240 / 264
    validation = case_scores(pred, ref, LABELS)
    assert validation["dice_region"] == {"liver": pytest.approx(liver), "tumour": 1.0}
    assert validation["dice"] == {"liver": pytest.approx(liver), "tumour": 1.0}
    evaluated = evaluate_case(ref, pred, (2.0, 1.0, 1.0)).regions
    assert (evaluated["liver"].dice, evaluated["tumour"].dice) == (pytest.approx(liver), 1.0)
    assert score_case(pred, ref, regions_of(LABELS)) == {"liver": pytest.approx(liver), "tumour": 1.0}


def test_validation_means_count_the_tumour_free_case():
    cases = []
    for name, (ref, pred) in (("free", _tumour_free_case()), ("tumour", _case_with_tumour())):
        cases.append({"case": name, **case_scores(pred, ref, LABELS)})
    summary = summarize(cases, LABELS)
    assert cases[1]["dice_region"]["tumour"] == pytest.approx(8 / 12)
    assert summary["mean"]["tumour"]["dice_region"] == pytest.approx((1.0 + 8 / 12) / 2)
