"""Lesion-wise detection: lesions as connected components, matched one-to-one (pure).

- Lesions are the 6-connected components of a tumour mask, as in LiTS's scoring.
- Each detection rule — LiTS's (IoU > 0.5) and the seed paper's looser one (Dice > 0.2) — has its
  own one-to-one matching of reference and predicted lesions (Hungarian method,
  ``scipy.optimize.linear_sum_assignment``): first the largest number of pairs that pass the rule,
  then, among those matchings, the largest summed score (IoU or Dice). Maximising the summed score
  alone could pair a lesion with a worse partner to raise the total and so drop a pair that passes
  (a pair at IoU 0.54 given up for two at 0.28). A lesion is matched at most once, so a prediction
  covering two reference lesions detects at most one of them. TP = reference lesions whose partner
  passes the rule, FN = the other reference lesions, FP = predicted lesions not matched by a detection.
- The per-lesion table (``LesionRow.match``, ``iou``, ``dice``, ``assd_mm``) shows the partner in the
  matching of the first rule (LiTS's); ``matches`` gives each rule's partner.
  (LiTS's own code first merges predictions that split one reference lesion and reference lesions
  joined by one prediction, then tests IoU; autoliver keeps the one-to-one pairs and reports split
  and merge errors as separate counts.)
- Small lesions have a longest axial diameter below 20 mm (RECIST-style, see measurements.py).
  Reference lesions fall into a size class by their own diameter (TP, FN), unmatched predicted
  lesions by theirs (FP).
- Zero denominators: precision, recall and F1 are 1 when a case has neither reference nor predicted
  lesions, else a ratio with a zero denominator is 0 (as for the voxel metrics, see metrics.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from autoliver.evaluation.measurements import LesionMeasurement, measure_components
from autoliver.evaluation.metrics import _crop_box, assd, surface_distances

LITS_CONNECTIVITY = 6
SMALL_LESION_MM = 20.0
# Detection rules: name → (pair score, threshold); a matched pair must score strictly above it.
RULES = {"iou>0.5": ("iou", 0.5), "dice>0.2": ("dice", 0.2)}


def _label(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    """Connected components (int32 labels numbered from 1 in scan order, count), through the
    compiled kernel (numbered exactly like scipy.ndimage.label)."""
    from autoliver.ops.components import label

    if connectivity not in (6, 18, 26):
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity}")
    labels, n = label(np.asarray(mask, dtype=bool), connectivity=connectivity)
    return labels.astype(np.int32, copy=False), int(n)


def label_lesions(mask: np.ndarray, connectivity: int = LITS_CONNECTIVITY) -> tuple[np.ndarray, int]:
    return _label(mask, connectivity)


def overlap_matrix(labels_a: np.ndarray, n_a: int, labels_b: np.ndarray, n_b: int) -> np.ndarray:
    """(n_a, n_b) voxel counts of the intersection of component i of a with component j of b."""
    both = (labels_a > 0) & (labels_b > 0)
    pairs = labels_a[both].astype(np.int64) * (n_b + 1) + labels_b[both]
    counts = np.bincount(pairs, minlength=(n_a + 1) * (n_b + 1)).reshape(n_a + 1, n_b + 1)
    return counts[1:, 1:]


def pair_scores(intersection: np.ndarray, voxels_a: np.ndarray, voxels_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and Dice of every (a, b) pair from intersections and component sizes."""
    inter = intersection.astype(np.float64)
    total = voxels_a[:, None].astype(np.float64) + voxels_b[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(inter > 0, inter / (total - inter), 0.0)
        dice = np.where(inter > 0, 2 * inter / total, 0.0)
    return iou, dice


def match_one_to_one(score: np.ndarray, passes: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Pairs (row, col), 0-based, only pairs with a score > 0.

    Without ``passes``: the matching with the largest summed score. With ``passes`` (a boolean
    matrix like ``score``): the matching with the most pairs for which ``passes`` is true, and among
    those the largest summed score. Each passing pair gets a bonus larger than any possible sum of
    scores (scores lie in [0, 1]), so no total can buy back a lost passing pair.
    """
    if score.size == 0:
        return []
    weight = np.asarray(score, dtype=np.float64)
    if passes is not None:
        weight = weight + np.where(passes, min(score.shape) + 1.0, 0.0)
    rows, cols = linear_sum_assignment(weight, maximize=True)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if score[r, c] > 0]


def detected_lesions(reference_mask: np.ndarray, prediction_mask: np.ndarray, rule: str = "dice>0.2",
                     connectivity: int = LITS_CONNECTIVITY) -> tuple[int, int]:
    """(reference lesions detected under ``rule``, reference lesions): the TP and TP + FN of
    :func:`evaluate_lesions` without its measurements, for scoring many post-processing variants."""
    score_name, threshold = RULES[rule]
    reference_mask, prediction_mask = np.asarray(reference_mask, bool), np.asarray(prediction_mask, bool)
    box = _crop_box(reference_mask | prediction_mask)
    if box is None:
        return 0, 0
    labels_r, n_r = _label(reference_mask[box], connectivity)
    labels_p, n_p = _label(prediction_mask[box], connectivity)
    if n_r == 0 or n_p == 0:
        return 0, n_r
    inter = overlap_matrix(labels_r, n_r, labels_p, n_p)
    iou, dice = pair_scores(inter, np.bincount(labels_r.ravel(), minlength=n_r + 1)[1:],
                            np.bincount(labels_p.ravel(), minlength=n_p + 1)[1:])
    score = iou if score_name == "iou" else dice
    pairs = match_one_to_one(score, score > threshold)
    return sum(1 for i, j in pairs if score[i, j] > threshold), n_r


@dataclass(frozen=True)
class DetectionCounts:
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float

    @staticmethod
    def from_counts(tp: int, fp: int, fn: int) -> "DetectionCounts":
        nothing = tp + fp + fn == 0
        precision = tp / (tp + fp) if tp + fp else (1.0 if nothing else 0.0)
        recall = tp / (tp + fn) if tp + fn else (1.0 if nothing else 0.0)
        f1 = 2 * tp / (2 * tp + fp + fn) if not nothing else 1.0
        return DetectionCounts(tp=int(tp), fp=int(fp), fn=int(fn), precision=float(precision),
                               recall=float(recall), f1=float(f1))

    def __add__(self, other: "DetectionCounts") -> "DetectionCounts":
        return DetectionCounts.from_counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)


@dataclass(frozen=True)
class RuleResult:
    """Detection under one rule: all lesions, small (< 20 mm) and large ones."""

    rule: str
    all: DetectionCounts
    small: DetectionCounts
    large: DetectionCounts
    detected_dice: tuple[float, ...] = ()  # Dice of each detected reference lesion with its partner


@dataclass(frozen=True)
class LesionRow:
    """One lesion of the reference or the prediction and what it was matched with."""

    source: str  # "reference" | "prediction"
    id: int  # component label in its own map
    volume_ml: float
    diameter_mm: float  # longest axial diameter
    size: str  # "small" | "large"
    centroid_zyx: tuple[float, float, float]  # voxel index units
    match: int | None  # id of the one-to-one partner in the other map (first rule's matching)
    iou: float
    dice: float
    assd_mm: float | None  # with the partner; None when unmatched
    overlapping: tuple[int, ...]  # ids of every lesion of the other map it touches
    detected: dict[str, bool]  # rule → counted as a detection
    matches: dict[str, int | None] = dataclasses.field(default_factory=dict)  # rule → partner id


@dataclass(frozen=True)
class LesionEvaluation:
    num_reference: int
    num_prediction: int
    split_errors: int  # reference lesions touched by two or more predicted lesions
    merge_errors: int  # predicted lesions touching two or more reference lesions
    rules: dict[str, RuleResult]
    lesions: list[LesionRow]


def _shifted(m: LesionMeasurement, offset: np.ndarray) -> LesionMeasurement:
    return dataclasses.replace(
        m, centroid_zyx=tuple(float(c + o) for c, o in zip(m.centroid_zyx, offset)),
        bbox_zyx=tuple((int(a + o), int(b + o)) for (a, b), o in zip(m.bbox_zyx, offset)))


def _size_class(diameter_mm: float, small_mm: float) -> str:
    return "small" if diameter_mm < small_mm else "large"


def _pair_assd(labels_r, i, box_r, labels_p, j, box_p, spacing_zyx_mm) -> float:
    box = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(box_r, box_p))
    d = surface_distances(labels_r[box] == i, labels_p[box] == j, spacing_zyx_mm)
    return assd(d)


def evaluate_lesions(reference_mask: np.ndarray, prediction_mask: np.ndarray, spacing_zyx_mm, *, axial: int = 0,
                     connectivity: int = LITS_CONNECTIVITY, small_mm: float = SMALL_LESION_MM) -> LesionEvaluation:
    """Lesion-wise detection of a predicted tumour mask against the reference one (z, y, x)."""
    reference_mask, prediction_mask = np.asarray(reference_mask, bool), np.asarray(prediction_mask, bool)
    # Work inside the box of all lesions (a scan is mostly tumour-free); centroids get the offset back.
    box = _crop_box(reference_mask | prediction_mask) or tuple(slice(0, 1) for _ in reference_mask.shape)
    offset = np.array([s.start for s in box], dtype=np.float64)
    labels_r, n_r = _label(reference_mask[box], connectivity)
    labels_p, n_p = _label(prediction_mask[box], connectivity)
    meas_r = [_shifted(m, offset) for m in measure_components(labels_r, n_r, spacing_zyx_mm, axial)]
    meas_p = [_shifted(m, offset) for m in measure_components(labels_p, n_p, spacing_zyx_mm, axial)]
    inter = overlap_matrix(labels_r, n_r, labels_p, n_p)
    size_r = np.array([m.voxels for m in meas_r], dtype=np.int64)
    size_p = np.array([m.voxels for m in meas_p], dtype=np.int64)
    iou, dice = pair_scores(inter, size_r, size_p)
    scores = {"iou": iou, "dice": dice}
    # One matching per rule (see the module doc); the table shows the first rule's.
    pairs = {rule: match_one_to_one(scores[score], scores[score] > threshold)
             for rule, (score, threshold) in RULES.items()}
    detected = {rule: {(i, j) for i, j in pairs[rule] if scores[score][i, j] > threshold}
                for rule, (score, threshold) in RULES.items()}
    shown = next(iter(RULES))
    partner_r = {rule: {i: j for i, j in p} for rule, p in pairs.items()}
    partner_p = {rule: {j: i for i, j in p} for rule, p in pairs.items()}
    boxes_r = ndimage.find_objects(labels_r, max_label=n_r)
    boxes_p = ndimage.find_objects(labels_p, max_label=n_p)

    pair_assd = {(i, j): _pair_assd(labels_r, i + 1, boxes_r[i], labels_p, j + 1, boxes_p[j], spacing_zyx_mm)
                 for i, j in pairs[shown]}

    def row(source: str, k: int, m: LesionMeasurement, overlapping) -> LesionRow:
        partners = partner_r if source == "reference" else partner_p
        found = {rule: partners[rule].get(k) for rule in RULES}

        def pair(partner):
            return (k, partner) if source == "reference" else (partner, k)

        partner = found[shown]
        matched = partner is not None
        return LesionRow(
            source=source, id=m.id, volume_ml=m.volume_ml, diameter_mm=m.longest_axial_diameter_mm,
            size=_size_class(m.longest_axial_diameter_mm, small_mm), centroid_zyx=m.centroid_zyx,
            match=partner + 1 if matched else None,
            iou=float(iou[pair(partner)]) if matched else 0.0, dice=float(dice[pair(partner)]) if matched else 0.0,
            assd_mm=pair_assd[pair(partner)] if matched else None,
            overlapping=tuple(int(x) + 1 for x in np.flatnonzero(overlapping)),
            detected={rule: found[rule] is not None and pair(found[rule]) in detected[rule] for rule in RULES},
            matches={rule: None if p is None else p + 1 for rule, p in found.items()},
        )

    rows = [row("reference", i, m, inter[i]) for i, m in enumerate(meas_r)]
    rows += [row("prediction", j, m, inter[:, j]) for j, m in enumerate(meas_p)]

    rules = {}
    for rule in RULES:
        counts = {}
        for size in ("small", "large", None):
            tp = sum(1 for r in rows if r.source == "reference" and r.detected[rule] and size in (None, r.size))
            fn = sum(1 for r in rows if r.source == "reference" and not r.detected[rule] and size in (None, r.size))
            fp = sum(1 for r in rows if r.source == "prediction" and not r.detected[rule] and size in (None, r.size))
            counts[size or "all"] = DetectionCounts.from_counts(tp, fp, fn)
        rules[rule] = RuleResult(rule=rule, **counts,
                                 detected_dice=tuple(float(dice[i, j]) for i, j in sorted(detected[rule])))
    return LesionEvaluation(
        num_reference=n_r, num_prediction=n_p,
        split_errors=int(np.count_nonzero((inter > 0).sum(axis=1) >= 2)),
        merge_errors=int(np.count_nonzero((inter > 0).sum(axis=0) >= 2)),
        rules=rules, lesions=rows,
    )
