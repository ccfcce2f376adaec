"""Voxel overlap and surface-distance metrics of one binary region (pure: arrays in, numbers out).

Definitions (reference R, prediction P, voxel counts TP/FP/FN/TN):

- Dice = 2TP / (2TP + FP + FN); IoU (Jaccard) = TP / (TP + FP + FN); VOE = 1 - IoU;
  precision = TP / (TP + FP); recall (sensitivity) = TP / (TP + FN); specificity = TN / (TN + FP);
  RVD = (|P| - |R|) / |R| (signed: negative = under-segmentation).
- Surfaces as in LiTS's scoring code (Heimann et al. 2009): the surface of a mask is the set of its
  voxels removed by one binary erosion with an 18-neighbourhood (``surface_connectivity=2``; 1 = the
  6-neighbourhood that medpy uses by default); space outside the array counts as background.
  Distances join voxel centres, in mm, using the anisotropic spacing (exact Euclidean distance
  transforms with ``sampling``). d(R→P) are the distances of R's surface voxels to P's surface and
  d(P→R) the converse.
- ASSD = mean of d(R→P) ∪ d(P→R) pooled (LiTS, medpy); MSD (maximum surface distance, Hausdorff)
  = max of the pooled distances; HD95 = the 95th percentile (linear interpolation) of the pooled
  distances (medpy's definition; some tools take the larger of the two directed percentiles instead).
- NSD (normalised surface Dice at tolerance τ mm) = (#{d(R→P) ≤ τ} + #{d(P→R) ≤ τ}) / (|∂R| + |∂P|),
  counting surface voxels. DeepMind's ``surface-distance`` weights surface elements by their area on
  a half-voxel-shifted grid instead, so its values differ slightly (tests bound the difference).

Empty masks (LiTS's conventions, final scoring code of the LiTS benchmark):

- both empty: a perfect result. Dice, IoU, precision, recall and NSD are 1, VOE, RVD and all
  distances 0 (LiTS scores a tumour-free case with no predicted tumour as Dice 1).
- exactly one empty: Dice, IoU, NSD 0, VOE 1; a ratio whose denominator is 0 is 0 (precision with
  an empty prediction, recall with an empty reference), as LiTS does for its detection scores.
  Surface distances are undefined and reported as ``None`` (LiTS substitutes a penalty of 9001 mm;
  autoliver counts the undefined cases instead of averaging a made-up number). RVD is -1 for an
  empty prediction and ``None`` for an empty reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
from scipy import ndimage

LITS_SURFACE_CONNECTIVITY = 2  # 18-neighbourhood erosion, as LiTS's scoring code
DEFAULT_NSD_TOLERANCE_MM = 2.0


@dataclass(frozen=True)
class Counts:
    """Voxel confusion counts of one region; sums over cases give the global (pooled) scores."""

    tp: int
    fp: int
    fn: int
    tn: int

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)


@dataclass(frozen=True)
class RegionMetrics:
    """Every metric of one region in one case (JSON-ready; ``None`` = undefined, see module doc)."""

    dice: float
    iou: float
    voe: float
    precision: float
    recall: float
    specificity: float
    rvd: float | None
    assd_mm: float | None
    msd_mm: float | None
    hd95_mm: float | None
    nsd: float | None
    nsd_tolerance_mm: float
    reference_ml: float
    prediction_ml: float
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def counts(self) -> Counts:
        return Counts(self.tp, self.fp, self.fn, self.tn)


@dataclass(frozen=True)
class SurfaceDistances:
    """Distances in mm from each surface voxel of one mask to the other mask's surface."""

    reference_to_prediction: np.ndarray
    prediction_to_reference: np.ndarray

    @property
    def pooled(self) -> np.ndarray:
        return np.concatenate([self.reference_to_prediction, self.prediction_to_reference])


def _ratio(numerator: float, denominator: float, both_empty: bool) -> float:
    if denominator > 0:
        return float(numerator) / float(denominator)
    return 1.0 if both_empty else 0.0


def _as_bool(mask) -> np.ndarray:
    mask = np.asarray(mask)
    return mask if mask.dtype == bool else mask != 0


def _check_pair(reference, prediction) -> tuple[np.ndarray, np.ndarray]:
    reference, prediction = _as_bool(reference), _as_bool(prediction)
    if reference.shape != prediction.shape:
        raise ValueError(f"metrics: reference and prediction must have the same shape, got "
                         f"{reference.shape} and {prediction.shape}")
    return reference, prediction


def confusion_counts(reference, prediction) -> Counts:
    reference, prediction = _check_pair(reference, prediction)
    n_ref, n_pred = int(np.count_nonzero(reference)), int(np.count_nonzero(prediction))
    tp = int(np.count_nonzero(reference & prediction))
    return Counts(tp=tp, fp=n_pred - tp, fn=n_ref - tp, tn=reference.size - n_ref - n_pred + tp)


def dice_from_counts(c: Counts) -> float:
    return _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn, c.tp + c.fp + c.fn == 0)


def iou_from_counts(c: Counts) -> float:
    return _ratio(c.tp, c.tp + c.fp + c.fn, c.tp + c.fp + c.fn == 0)


def dice(reference, prediction) -> float:
    """Dice of two binary masks; 1.0 when both are empty.

    The one Dice of autoliver: the trainer's validation, ``evaluate`` (through
    :func:`dice_from_counts`) and ``find_best_configuration`` all score with it. Both empty counts 1,
    as LiTS scores a tumour-free case without predicted tumour, rather than NaN left out of the
    mean (nnU-Net's evaluation): a correct "no tumour here" is a result a clinician relies on, and
    leaving it out would let the mean ignore every case a model got right by finding nothing while
    still counting each false alarm as 0.
    """
    return dice_from_counts(confusion_counts(reference, prediction))


def global_dice(counts: Iterable[Counts]) -> float:
    """Dice pooled over cases (LiTS's "Dice global"): 2ΣTP / (2ΣTP + ΣFP + ΣFN)."""
    total = Counts(0, 0, 0, 0)
    for c in counts:
        total = total + c
    return dice_from_counts(total)


def _crop_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of ``mask`` grown by one voxel (clipped to the array), or None when empty.

    One voxel of margin keeps erosion and distances exactly as on the full array: outside the
    box there is only background, and every surface voxel lies inside it.
    """
    box = ndimage.find_objects(mask.astype(np.uint8))
    if not box:
        return None
    return tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box[0], mask.shape))


def surface(mask: np.ndarray, connectivity: int = LITS_SURFACE_CONNECTIVITY) -> np.ndarray:
    """Surface voxels of a binary mask: the voxels one erosion removes (outside = background)."""
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(reference, prediction, spacing_zyx_mm, *,
                      connectivity: int = LITS_SURFACE_CONNECTIVITY) -> SurfaceDistances | None:
    """Surface-to-surface distances in mm, or None when either mask is empty.

    Works on the bounding box of both masks, so a liver in a 512×512×500 scan costs two distance
    transforms of the liver's box, not of the scan.
    """
    reference, prediction = _check_pair(reference, prediction)
    if not reference.any() or not prediction.any():
        return None
    spacing = np.asarray(spacing_zyx_mm, dtype=np.float64)
    if spacing.shape != (reference.ndim,) or not np.all(spacing > 0):
        raise ValueError(f"surface_distances: spacing_zyx_mm must be {reference.ndim} positive numbers, "
                         f"got {spacing_zyx_mm!r}")
    box = _crop_box(reference | prediction)
    ref_surface = surface(reference[box], connectivity)
    pred_surface = surface(prediction[box], connectivity)
    to_ref = ndimage.distance_transform_edt(~ref_surface, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
    return SurfaceDistances(reference_to_prediction=to_pred[ref_surface],
                            prediction_to_reference=to_ref[pred_surface])


def assd(d: SurfaceDistances) -> float:
    return float(d.pooled.mean())


def maximum_surface_distance(d: SurfaceDistances) -> float:
    return float(d.pooled.max())


def hd95(d: SurfaceDistances, percentile: float = 95.0) -> float:
    return float(np.percentile(d.pooled, percentile))


def normalised_surface_dice(d: SurfaceDistances, tolerance_mm: float) -> float:
    close = np.count_nonzero(d.reference_to_prediction <= tolerance_mm) + np.count_nonzero(
        d.prediction_to_reference <= tolerance_mm)
    return close / float(d.reference_to_prediction.size + d.prediction_to_reference.size)


def region_metrics(reference, prediction, spacing_zyx_mm, *, nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
                   surface_connectivity: int = LITS_SURFACE_CONNECTIVITY, with_surface: bool = True) -> RegionMetrics:
    """All metrics of one binary region; arrays (z, y, x), spacing in mm in the same order.

    ``with_surface=False`` skips the distance transforms (surface metrics ``None``) for quick
    checks, e.g. during training.
    """
    reference, prediction = _check_pair(reference, prediction)
    c = confusion_counts(reference, prediction)
    n_ref, n_pred = c.tp + c.fn, c.tp + c.fp
    both_empty = n_ref == 0 and n_pred == 0
    voxel_ml = float(np.prod(np.asarray(spacing_zyx_mm, dtype=np.float64))) / 1000.0
    iou = iou_from_counts(c)
    if n_ref > 0:
        rvd = (n_pred - n_ref) / float(n_ref)
    else:
        rvd = 0.0 if both_empty else None
    if both_empty:
        distances = dict(assd_mm=0.0, msd_mm=0.0, hd95_mm=0.0, nsd=1.0)
    elif n_ref == 0 or n_pred == 0:
        distances = dict(assd_mm=None, msd_mm=None, hd95_mm=None, nsd=0.0)
    elif not with_surface:
        distances = dict(assd_mm=None, msd_mm=None, hd95_mm=None, nsd=None)
    else:
        d = surface_distances(reference, prediction, spacing_zyx_mm, connectivity=surface_connectivity)
        distances = dict(assd_mm=assd(d), msd_mm=maximum_surface_distance(d), hd95_mm=hd95(d),
                         nsd=normalised_surface_dice(d, nsd_tolerance_mm))
    return RegionMetrics(
        dice=dice_from_counts(c), iou=iou, voe=1.0 - iou,
        precision=_ratio(c.tp, n_pred, both_empty), recall=_ratio(c.tp, n_ref, both_empty),
        specificity=_ratio(c.tn, c.tn + c.fp, both_empty), rvd=rvd,
        nsd_tolerance_mm=float(nsd_tolerance_mm), reference_ml=n_ref * voxel_ml, prediction_ml=n_pred * voxel_ml,
        tp=c.tp, fp=c.fp, fn=c.fn, tn=c.tn, **distances,
    )


def tumour_burden(labels: np.ndarray, liver_labels=(1, 2), tumour_labels=(2,)) -> float | None:
    """Tumour voxels / liver voxels (liver = every liver label, tumours included, as LiTS);
    None when there is no liver."""
    liver = int(np.count_nonzero(np.isin(labels, liver_labels)))
    if liver == 0:
        return None
    return int(np.count_nonzero(np.isin(labels, tumour_labels))) / float(liver)
