"""``autoliver track``: a patient's follow-up scan against the baseline, lesion by lesion.

1. Registration (SimpleITK): the follow-up is aligned to the baseline on the liver — a rigid
   (optionally then affine) transform, started by matching the centres of the two liver masks and
   refined on the livers' signed distance maps (mean squares inside the baseline liver grown by
   10 mm, three resolutions). Aligning liver surfaces rather than intensities works the same for CT
   and MR and is not pulled off by the lesions that changed between the scans.
2. Lesions (6-connected tumour components) are measured in their own scan (volume, RECIST longest
   axial diameter) and brought into the baseline frame: follow-up labels by nearest-neighbour
   resampling, centroids through the transform.
3. Correspondence (:func:`correspond`): a baseline and a follow-up lesion are related when they
   overlap, or — when neither overlaps anything — when their centroids lie within
   ``max_distance_mm``. One-to-one pairs come from the Hungarian method (overlap first, then
   proximity). A baseline lesion related to none is *disappeared*, a follow-up lesion related to
   none is *new*, a baseline lesion related to several follow-up lesions *split*, several baseline
   lesions related to one follow-up lesion *merged*.
4. Per-lesion diameter and volume change, and the RECIST 1.1 response (:mod:`recist`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoliver.errors import UserError
from autoliver.evaluation.lesions import LITS_CONNECTIVITY, _label, match_one_to_one, overlap_matrix
from autoliver.evaluation.recist import MAX_TARGETS_PER_ORGAN, RecistResult, recist_response
from autoliver.schema import atomic_write_bytes

SCHEMA_VERSION = 1
MAX_DISTANCE_MM = 15.0
NEW_LESION_MIN_MM = 5.0
LIVER_MARGIN_MM = 10.0
DISTANCE_CLAMP_MM = 20.0


@dataclass(frozen=True)
class Lesion:
    """A lesion in its own scan: label id, size, centroid in that scan's world frame (LPS mm)."""

    id: int
    voxels: int
    volume_ml: float
    diameter_mm: float
    centroid_lps_mm: tuple[float, float, float]


@dataclass(frozen=True)
class TrackedLesion:
    status: str  # "matched" | "split" | "merged" | "disappeared" | "new"
    baseline_id: int | None
    followup_ids: tuple[int, ...]  # follow-up lesions counted for this baseline lesion (or the new one)
    related_ids: tuple[int, ...]  # every lesion of the other scan it overlaps or lies near
    target: bool
    baseline_diameter_mm: float | None
    followup_diameter_mm: float | None
    diameter_change_percent: float | None
    baseline_volume_ml: float | None
    followup_volume_ml: float | None
    volume_change_percent: float | None
    distance_mm: float | None  # between centroids after registration (matched pairs)


@dataclass(frozen=True)
class Registration:
    kind: str  # "rigid" | "affine"
    parameters: tuple[float, ...]  # ITK transform parameters (baseline point → follow-up point)
    fixed_parameters: tuple[float, ...]
    translation_mm: tuple[float, float, float]  # of the liver centre, baseline → follow-up (x, y, z)
    liver_dice: float  # baseline liver vs registered follow-up liver
    metric_value: float


@dataclass(frozen=True)
class TrackResult:
    schema_version: int
    baseline: str
    followup: str
    registration: Registration
    baseline_liver_ml: float
    followup_liver_ml: float
    lesions: list[TrackedLesion]
    recist: RecistResult
    new_lesions_below_threshold: int
    settings: dict[str, float]


# ------------------------------------------------------------------------------------------ pure


@dataclass(frozen=True)
class Correspondence:
    related: np.ndarray  # (n_baseline, n_followup) bool
    pairs: list[tuple[int, int]]  # one-to-one, 0-based
    attributed_to: dict[int, int]  # follow-up index → the baseline index it is counted for


def correspond(overlap: np.ndarray, distance_mm: np.ndarray, sizes_b: np.ndarray, sizes_f: np.ndarray,
               max_distance_mm: float = MAX_DISTANCE_MM) -> Correspondence:
    """Relate baseline and follow-up lesions from their overlap (voxels, in one frame) and centroid
    distances (mm); see the module doc for the rules."""
    overlaps = overlap > 0
    lonely_b = ~overlaps.any(axis=1)
    lonely_f = ~overlaps.any(axis=0)
    near = (distance_mm <= max_distance_mm) & lonely_b[:, None] & lonely_f[None, :]
    related = overlaps | near
    total = sizes_b[:, None].astype(np.float64) + sizes_f[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(overlaps, 2.0 * overlap / total, 0.0)
        proximity = np.where(near, 1.0 - distance_mm / (max_distance_mm + 1e-9), 0.0)
    # Overlapping pairs always beat merely close ones: their score starts at 1.
    score = np.where(overlaps, 1.0 + dice, np.where(near, np.maximum(proximity, 1e-6), 0.0))
    pairs = match_one_to_one(score)
    attributed = {f: b for b, f in pairs}
    for f in range(related.shape[1]):
        if f not in attributed and related[:, f].any():
            attributed[f] = int(np.argmax(np.where(related[:, f], score[:, f], -1.0)))
    return Correspondence(related=related, pairs=pairs, attributed_to=attributed)


def _change(after: float, before: float) -> float | None:
    return (after - before) / before * 100.0 if before > 0 else None


def track_lesions(baseline: list[Lesion], followup: list[Lesion], c: Correspondence, distance_mm: np.ndarray, *,
                  max_targets: int = MAX_TARGETS_PER_ORGAN,
                  new_lesion_min_mm: float = NEW_LESION_MIN_MM) -> tuple[list[TrackedLesion], RecistResult, int]:
    """Per-lesion changes and the RECIST response from a correspondence."""
    pair_of = dict(c.pairs)
    rows, follow_diam = [], {}
    for b, lesion in enumerate(baseline):
        fs = sorted(f for f, owner in c.attributed_to.items() if owner == b)
        related = np.flatnonzero(c.related[b])
        if not related.size:
            status = "disappeared"
        elif any(c.related[:, f].sum() > 1 for f in related):
            status = "merged"
        elif len(fs) > 1:
            status = "split"
        else:
            status = "matched"
        d_after = float(sum(followup[f].diameter_mm for f in fs))
        v_after = float(sum(followup[f].volume_ml for f in fs))
        follow_diam[lesion.id] = d_after
        rows.append(TrackedLesion(
            status=status, baseline_id=lesion.id, followup_ids=tuple(followup[f].id for f in fs),
            related_ids=tuple(followup[f].id for f in related), target=False,
            baseline_diameter_mm=lesion.diameter_mm, followup_diameter_mm=d_after,
            diameter_change_percent=_change(d_after, lesion.diameter_mm),
            baseline_volume_ml=lesion.volume_ml, followup_volume_ml=v_after,
            volume_change_percent=_change(v_after, lesion.volume_ml),
            distance_mm=float(distance_mm[b, pair_of[b]]) if b in pair_of else None))
    new = [f for f in range(len(followup)) if not c.related[:, f].any()]
    counted = [f for f in new if followup[f].diameter_mm >= new_lesion_min_mm]
    for f in new:
        rows.append(TrackedLesion(
            status="new", baseline_id=None, followup_ids=(followup[f].id,), related_ids=(), target=False,
            baseline_diameter_mm=None, followup_diameter_mm=followup[f].diameter_mm, diameter_change_percent=None,
            baseline_volume_ml=None, followup_volume_ml=followup[f].volume_ml, volume_change_percent=None,
            distance_mm=None))
    recist = recist_response({le.id: le.diameter_mm for le in baseline}, follow_diam, len(counted),
                             max_targets=max_targets)
    targets = set(recist.target_ids)
    rows = [TrackedLesion(**{**r.__dict__, "target": r.baseline_id in targets}) for r in rows]
    return rows, recist, len(new) - len(counted)


# ------------------------------------------------------------------------------------------ edge


def _sitk_image(array: np.ndarray, geometry, dtype=np.float32):
    import SimpleITK as sitk

    return geometry.to_sitk(sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=dtype)))


def _distance_map(mask):
    """Signed distance to the liver surface in mm (negative inside), clamped to ±DISTANCE_CLAMP_MM:
    smooth, with a capture range of centimetres, and the same for CT and MR."""
    import SimpleITK as sitk

    d = sitk.SignedMaurerDistanceMap(mask, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return sitk.Clamp(d, sitk.sitkFloat32, -DISTANCE_CLAMP_MM, DISTANCE_CLAMP_MM)


def register_followup(baseline_liver, followup_liver, *, kind: str = "rigid", seed: int = 7):
    """The transform mapping baseline points to follow-up points (resampling the follow-up with it
    brings it onto the baseline grid), and the final metric value.

    Both inputs are uint8 sitk liver masks in their own scan's geometry. The liver centres are
    matched first (image moments), then the rigid (and, for ``kind="affine"``, then the affine)
    transform minimises the mean squared difference of the two signed distance maps inside the
    baseline liver grown by 10 mm.
    """
    import SimpleITK as sitk

    fixed, moving = _distance_map(baseline_liver), _distance_map(followup_liver)
    initial = sitk.CenteredTransformInitializer(
        sitk.Cast(baseline_liver, sitk.sitkFloat32), sitk.Cast(followup_liver, sitk.sitkFloat32),
        sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS)
    radius = [max(1, int(round(LIVER_MARGIN_MM / s))) for s in baseline_liver.GetSpacing()]
    region = sitk.BinaryDilate(baseline_liver, radius, sitk.sitkBall)

    def run(transform, learning_rate: float):
        r = sitk.ImageRegistrationMethod()
        r.SetMetricAsMeanSquares()
        r.SetMetricSamplingStrategy(r.RANDOM)
        r.SetMetricSamplingPercentage(0.2, seed)
        r.SetMetricFixedMask(region)
        r.SetInterpolator(sitk.sitkLinear)
        r.SetOptimizerAsRegularStepGradientDescent(learningRate=learning_rate, minStep=1e-3, numberOfIterations=200,
                                                   relaxationFactor=0.6, gradientMagnitudeTolerance=1e-8)
        r.SetOptimizerScalesFromPhysicalShift()
        r.SetShrinkFactorsPerLevel([4, 2, 1])
        r.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
        r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        r.SetInitialTransform(transform, inPlace=True)  # optimised in place: keeps its concrete type
        r.Execute(fixed, moving)
        return r.GetMetricValue()

    rigid = sitk.Euler3DTransform(initial)
    value = run(rigid, 2.0)
    if kind != "affine":
        return rigid, value
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    affine.SetCenter(rigid.GetCenter())
    value = run(affine, 1.0)
    return affine, value


def _lesions(seg: np.ndarray, geometry, tumour_labels) -> tuple[np.ndarray, list[Lesion]]:
    from autoliver.evaluation.measurements import axial_axis, measure_components
    from autoliver.evaluation.statistics import index_to_world

    labels, n = _label(np.isin(seg, tumour_labels), LITS_CONNECTIVITY)
    found = [Lesion(id=m.id, voxels=m.voxels, volume_ml=m.volume_ml, diameter_mm=m.longest_axial_diameter_mm,
                    centroid_lps_mm=index_to_world(geometry, m.centroid_zyx))
             for m in measure_components(labels, n, geometry.spacing_zyx_mm, axial_axis(geometry.direction))]
    return labels, found


def _read_pair(image_path, seg_path, which: str):
    from autoliver.evaluation.evaluate import labels_on_grid, read_labels
    from autoliver.io.images import read_image

    if seg_path is None:
        raise UserError(f"track: --seg-{which} is required: give the {which} scan's liver/tumour segmentation "
                        f"(make one with: autoliver predict -i {image_path} -o OUTPUT_FOLDER).")
    img = read_image(image_path)
    seg, seg_img = read_labels(Path(seg_path))
    seg, problem = labels_on_grid(seg, seg_img, img)
    if problem:
        raise UserError(problem.replace("the reference", f"the {which} scan"))
    array = img.array if img.array.ndim == 3 else img.array[0]
    return array, seg, img


def track(baseline: str | os.PathLike, followup: str | os.PathLike, seg_baseline, seg_followup,
          out_dir: str | os.PathLike | None = None, *, kind: str = "rigid", liver_labels=(1, 2), tumour_labels=(2,),
          max_distance_mm: float = MAX_DISTANCE_MM, new_lesion_min_mm: float = NEW_LESION_MIN_MM,
          max_targets: int = MAX_TARGETS_PER_ORGAN, pictures: bool = True) -> TrackResult:
    """Register, match lesions, measure change, classify the response; write results if ``out_dir``."""
    import SimpleITK as sitk

    from autoliver.errors import choose

    choose("--transform", kind, ("rigid", "affine"))
    base_arr, base_seg, base_img = _read_pair(baseline, seg_baseline, "baseline")
    foll_arr, foll_seg, foll_img = _read_pair(followup, seg_followup, "followup")
    base_liver, foll_liver = np.isin(base_seg, liver_labels), np.isin(foll_seg, liver_labels)
    for which, mask, path in (("baseline", base_liver, seg_baseline), ("followup", foll_liver, seg_followup)):
        if not mask.any():
            raise UserError(f"--seg-{which} {path}: must contain the liver (labels {list(liver_labels)}), "
                            "which the registration aligns; got none.")
    bg, fg = base_img.geometry, foll_img.geometry
    fixed_liver = _sitk_image(base_liver, bg, np.uint8)
    transform, metric = register_followup(fixed_liver, _sitk_image(foll_liver, fg, np.uint8), kind=kind)

    base_labels, base_lesions = _lesions(base_seg, bg, tumour_labels)
    foll_labels, foll_lesions = _lesions(foll_seg, fg, tumour_labels)
    moved = sitk.Resample(_sitk_image(foll_labels, fg, np.int32), fixed_liver, transform, sitk.sitkNearestNeighbor, 0)
    moved_labels = sitk.GetArrayFromImage(moved)
    moved_liver = sitk.GetArrayFromImage(sitk.Resample(_sitk_image(foll_liver, fg, np.uint8), fixed_liver, transform,
                                                       sitk.sitkNearestNeighbor, 0)).astype(bool)
    overlap = overlap_matrix(base_labels, len(base_lesions), moved_labels, len(foll_lesions))
    inverse = transform.GetInverse()
    moved_centroids = np.array([inverse.TransformPoint(le.centroid_lps_mm) for le in foll_lesions]).reshape(-1, 3)
    base_centroids = np.array([le.centroid_lps_mm for le in base_lesions]).reshape(-1, 3)
    distance = np.sqrt(((base_centroids[:, None, :] - moved_centroids[None, :, :]) ** 2).sum(-1))
    c = correspond(overlap, distance, np.array([le.voxels for le in base_lesions]),
                   np.array([le.voxels for le in foll_lesions]), max_distance_mm)
    rows, recist, small_new = track_lesions(base_lesions, foll_lesions, c, distance, max_targets=max_targets,
                                            new_lesion_min_mm=new_lesion_min_mm)

    from autoliver.evaluation.metrics import dice
    from autoliver.evaluation.measurements import volume_ml

    centre = np.array(fixed_liver.TransformContinuousIndexToPhysicalPoint(
        [float(v) for v in np.argwhere(base_liver).mean(axis=0)[::-1]]))
    registration = Registration(
        kind=kind, parameters=tuple(float(p) for p in transform.GetParameters()),
        fixed_parameters=tuple(float(p) for p in transform.GetFixedParameters()),
        translation_mm=tuple(float(v) for v in np.array(transform.TransformPoint(tuple(centre))) - centre),
        liver_dice=dice(base_liver, moved_liver), metric_value=float(metric))
    result = TrackResult(
        schema_version=SCHEMA_VERSION, baseline=str(baseline), followup=str(followup), registration=registration,
        baseline_liver_ml=volume_ml(base_liver, bg.spacing_zyx_mm),
        followup_liver_ml=volume_ml(foll_liver, fg.spacing_zyx_mm),
        lesions=rows, recist=recist, new_lesions_below_threshold=small_new,
        settings={"max_distance_mm": float(max_distance_mm), "new_lesion_min_mm": float(new_lesion_min_mm),
                  "max_targets": float(max_targets)})
    if out_dir is not None:
        _write_outputs(Path(out_dir), result, transform, moved, base_arr, base_seg, bg, foll_arr, fg, fixed_liver,
                       liver_labels, tumour_labels, pictures)
    return result


def tracked_csv(result: TrackResult) -> str:
    import csv
    import io

    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["status", "target", "baseline_id", "followup_ids", "baseline_diameter_mm", "followup_diameter_mm",
                "diameter_change_percent", "baseline_volume_ml", "followup_volume_ml", "volume_change_percent",
                "distance_mm"])

    def f(v, digits=2):
        return "" if v is None else f"{v:.{digits}f}"

    for r in result.lesions:
        w.writerow([r.status, "yes" if r.target else "no", "" if r.baseline_id is None else r.baseline_id,
                    " ".join(map(str, r.followup_ids)), f(r.baseline_diameter_mm), f(r.followup_diameter_mm),
                    f(r.diameter_change_percent, 1), f(r.baseline_volume_ml, 4), f(r.followup_volume_ml, 4),
                    f(r.volume_change_percent, 1), f(r.distance_mm)])
    return out.getvalue()


def _write_outputs(out_dir: Path, result: TrackResult, transform, moved_labels, base_arr, base_seg, bg, foll_arr, fg,
                   fixed_liver, liver_labels, tumour_labels, pictures: bool) -> None:
    import SimpleITK as sitk

    from autoliver.evaluation import pictures as P
    from autoliver.io.images import write_image
    from autoliver.schema import atomic_write_text, write_json

    write_json(out_dir / "track.json", result)
    atomic_write_text(out_dir / "track.csv", tracked_csv(result))
    tmp = out_dir / ".transform.tmp.tfm"  # ITK picks the writer by the suffix
    sitk.WriteTransform(transform, str(tmp))
    os.replace(tmp, out_dir / "transform.tfm")
    moved_image = sitk.GetArrayFromImage(sitk.Resample(_sitk_image(foll_arr, fg), fixed_liver, transform,
                                                       sitk.sitkLinear, float(np.min(foll_arr))))
    moved_seg = sitk.GetArrayFromImage(moved_labels)  # follow-up lesion ids on the baseline grid
    write_image(out_dir / "followup_lesions_in_baseline.nii.gz", moved_seg.astype(np.int32), bg)
    if not pictures:
        return
    spacing, direction = bg.spacing_zyx_mm, bg.direction
    panels = []
    for title, image, labels_tumour in (("baseline", base_arr, np.isin(base_seg, tumour_labels)),
                                        ("follow-up, registered", moved_image, moved_seg > 0)):
        panels.append((title, P.to_display(image, spacing, direction),
                       P.to_display(labels_tumour, spacing, direction).array))
    liver = P.to_display(np.isin(base_seg, liver_labels), spacing, direction).array
    focus = panels[0][2] if panels[0][2].any() else liver
    point = np.argwhere(focus).mean(axis=0) if focus.any() else (np.array(liver.shape) - 1) / 2.0
    fig, axes = P.new_figure(2, 3)
    handles = []
    for row, (title, shown, tumour) in enumerate(panels):
        outlines = [P.Outline(liver, P.STRUCTURE_COLOURS["liver"], "baseline liver"),
                    P.Outline(tumour, P.STRUCTURE_COLOURS["tumour"], "lesions")]
        for col, view in enumerate(P.VIEWS):
            handles += P.draw_view(axes[row][col], view, point, shown.spacing_zyx_mm, image=shown.array,
                                   outlines=outlines, title=f"{title}, {view}")
    atomic_write_bytes(out_dir / "comparison.png",
                       P.png_bytes(fig, handles, f"RECIST 1.1: {result.recist.response} ({result.recist.reason})"))
