"""``autoliver evaluate``: score predicted label maps against reference ones, LiTS style.

The pure part (:func:`evaluate_case`, :func:`summarise`) turns arrays into per-case metrics and
dataset-wide summaries; :func:`evaluate` is the edge: it pairs files (two files, or two folders
matched by case name, any format :func:`autoliver.io.read_image` reads), checks that each
prediction lies on its reference's grid (a label map holding the same voxels with its axes stored
in another order or direction is reoriented; any other difference is an error naming it), scores
cases in worker processes, writes the summary JSON atomically and, if asked, a per-case overview
PNG and a one-page HTML summary.

Regions are sets of labels scored as one mask: by default ``liver`` = {1, 2} (the liver with its
tumours, as LiTS) and ``tumour`` = {2}. Lesion detection and tumour burden use those two names.
Metric definitions and the empty-mask conventions are in :mod:`autoliver.evaluation.metrics`
and :mod:`autoliver.evaluation.lesions`; the summary JSON repeats them under ``conventions``.
"""
from __future__ import annotations

import dataclasses
import math
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from autoliver.errors import UserError, UserErrors
from autoliver.evaluation import metrics as M
from autoliver.evaluation.lesions import (LITS_CONNECTIVITY, RULES, SMALL_LESION_MM, DetectionCounts,
                                          LesionEvaluation, evaluate_lesions)

SCHEMA_VERSION = 1
DEFAULT_REGIONS = {"liver": (1, 2), "tumour": (2,)}
AVERAGED = ("dice", "iou", "voe", "precision", "recall", "specificity", "rvd", "assd_mm", "msd_mm", "hd95_mm",
            "nsd", "reference_ml", "prediction_ml")
CONVENTIONS = (
    "Regions are label sets scored as one mask (liver = liver + tumour labels, as LiTS). "
    "Surfaces: voxels removed by one 18-neighbourhood erosion (LiTS); distances between voxel centres in mm. "
    "ASSD = mean, MSD = max, HD95 = 95th percentile (linear) of the pooled distances of both surfaces; "
    "NSD counts surface voxels within the tolerance. RVD = (pred - ref) / ref. "
    "Both masks empty: Dice/IoU/precision/recall/NSD 1, distances 0, RVD 0 (LiTS: tumour-free case without "
    "predicted tumour scores Dice 1). One mask empty: Dice/IoU/NSD 0, ratios with zero denominator 0, "
    "distances null (undefined; counted in undefined_cases, left out of means), RVD -1 (empty prediction) or null "
    "(empty reference). Means are per-case means over defined values; dice_global pools voxels over cases. "
    "Lesions: 6-connected tumour components, matched one-to-one per rule (Hungarian: most pairs passing the "
    "rule, then the largest summed score); detected if IoU > 0.5 (LiTS) or Dice > 0.2; small = longest axial "
    "diameter < 20 mm. Tumour burden = tumour / liver voxels; error = reference - prediction."
)


@dataclass(frozen=True)
class Settings:
    regions: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=lambda: dict(DEFAULT_REGIONS))
    nsd_tolerance_mm: float = M.DEFAULT_NSD_TOLERANCE_MM
    surface_connectivity: int = M.LITS_SURFACE_CONNECTIVITY
    lesion_connectivity: int = LITS_CONNECTIVITY
    small_lesion_mm: float = SMALL_LESION_MM


@dataclass(frozen=True)
class CaseResult:
    case: str
    reference: str
    prediction: str
    spacing_zyx_mm: tuple[float, float, float]
    regions: dict[str, M.RegionMetrics]
    tumour_burden_reference: float | None
    tumour_burden_prediction: float | None
    tumour_burden_error: float | None  # reference - prediction
    lesions: LesionEvaluation | None


@dataclass(frozen=True)
class RegionSummary:
    num_cases: int
    mean: dict[str, float | None]  # per-case mean of each metric over the cases where it is defined
    undefined_cases: dict[str, int]  # cases where a metric is undefined (one mask empty)
    dice_per_case: float
    dice_global: float  # pooled over cases (LiTS)
    iou_global: float


@dataclass(frozen=True)
class DetectionSummary:
    rule: str
    all: DetectionCounts
    small: DetectionCounts
    large: DetectionCounts
    mean_dice_detected: float | None  # segmentation quality of the detected lesions
    split_errors: int
    merge_errors: int


@dataclass(frozen=True)
class TumourBurdenSummary:
    rmse: float | None
    max_abs_error: float | None
    num_cases: int  # cases where both burdens are defined


@dataclass(frozen=True)
class Summary:
    schema_version: int
    conventions: str
    settings: Settings
    num_cases: int
    regions: dict[str, RegionSummary]
    lesion_detection: dict[str, DetectionSummary]
    tumour_burden: TumourBurdenSummary | None
    cases: list[CaseResult]


def evaluate_case(reference: np.ndarray, prediction: np.ndarray, spacing_zyx_mm, settings: Settings = Settings(), *,
                  case: str = "", reference_path: str = "", prediction_path: str = "",
                  axial: int = 0) -> CaseResult:
    """Every metric of one case: label maps (z, y, x) on the same grid, spacing in mm."""
    if reference.shape != prediction.shape:
        raise ValueError(f"evaluate_case: shapes differ, {reference.shape} and {prediction.shape}")
    regions, tumour_masks = {}, None
    for name, labels in settings.regions.items():
        ref_mask, pred_mask = _mask(reference, labels), _mask(prediction, labels)
        regions[name] = M.region_metrics(ref_mask, pred_mask, spacing_zyx_mm,
                                         nsd_tolerance_mm=settings.nsd_tolerance_mm,
                                         surface_connectivity=settings.surface_connectivity)
        if name == "tumour":
            tumour_masks = ref_mask, pred_mask
    burden_ref = burden_pred = burden_err = lesions = None
    if tumour_masks is not None:
        if "liver" in regions:  # tumour voxels / liver voxels, from the counts already made
            t, li = regions["tumour"], regions["liver"]
            burden_ref = (t.tp + t.fn) / (li.tp + li.fn) if li.tp + li.fn else None
            burden_pred = (t.tp + t.fp) / (li.tp + li.fp) if li.tp + li.fp else None
            if burden_ref is not None and burden_pred is not None:
                burden_err = burden_ref - burden_pred
        lesions = evaluate_lesions(*tumour_masks, spacing_zyx_mm, axial=axial,
                                   connectivity=settings.lesion_connectivity, small_mm=settings.small_lesion_mm)
    return CaseResult(case=case, reference=reference_path, prediction=prediction_path,
                      spacing_zyx_mm=tuple(float(s) for s in spacing_zyx_mm), regions=regions,
                      tumour_burden_reference=burden_ref, tumour_burden_prediction=burden_pred,
                      tumour_burden_error=burden_err, lesions=lesions)


def _mask(labels: np.ndarray, values: tuple[int, ...]) -> np.ndarray:
    return labels == values[0] if len(values) == 1 else np.isin(labels, values)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarise(cases: list[CaseResult], settings: Settings = Settings()) -> Summary:
    """Per-case means, global (pooled) Dice, pooled lesion detection and tumour burden errors."""
    regions = {}
    for name in settings.regions:
        per_case = [c.regions[name] for c in cases]
        total = M.Counts(0, 0, 0, 0)
        for m in per_case:
            total = total + m.counts
        regions[name] = RegionSummary(
            num_cases=len(per_case),
            mean={k: _mean(getattr(m, k) for m in per_case) for k in AVERAGED},
            undefined_cases={k: sum(getattr(m, k) is None for m in per_case) for k in AVERAGED},
            dice_per_case=float(np.mean([m.dice for m in per_case])) if per_case else 0.0,
            dice_global=M.dice_from_counts(total), iou_global=M.iou_from_counts(total),
        )
    detection = {}
    lesion_results = [c.lesions for c in cases if c.lesions is not None]
    if lesion_results:
        for rule in RULES:
            sums = {size: DetectionCounts.from_counts(0, 0, 0) for size in ("all", "small", "large")}
            dices = []
            for le in lesion_results:
                r = le.rules[rule]
                sums = {size: sums[size] + getattr(r, size) for size in sums}
                dices += list(r.detected_dice)
            detection[rule] = DetectionSummary(
                rule=rule, **sums, mean_dice_detected=_mean(dices),
                split_errors=sum(le.split_errors for le in lesion_results),
                merge_errors=sum(le.merge_errors for le in lesion_results))
    burden = None
    if "tumour" in settings.regions and "liver" in settings.regions:
        errors = [c.tumour_burden_error for c in cases if c.tumour_burden_error is not None]
        burden = TumourBurdenSummary(
            rmse=float(math.sqrt(np.mean(np.square(errors)))) if errors else None,
            max_abs_error=float(np.max(np.abs(errors))) if errors else None, num_cases=len(errors))
    return Summary(schema_version=SCHEMA_VERSION, conventions=CONVENTIONS, settings=settings, num_cases=len(cases),
                   regions=regions, lesion_detection=detection, tumour_burden=burden, cases=list(cases))


# ---------------------------------------------------------------------------------------- the edge


def case_name(path: Path) -> str:
    from autoliver.io.images import file_ending

    return path.name[: len(path.name) - len(file_ending(path))]


def _image_files(folder: Path) -> dict[str, Path]:
    from autoliver.io.images import SUPPORTED_ENDINGS

    found = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(SUPPORTED_ENDINGS):
            found.setdefault(case_name(p), p)
    return found


def pair_files(reference: Path, prediction: Path) -> list[tuple[str, Path, Path]]:
    """(case, reference file, prediction file) for two files or two folders (matched by case name)."""
    reference, prediction = Path(reference), Path(prediction)
    for where, p in (("-ref", reference), ("-pred", prediction)):
        if not p.exists():
            raise UserError(f"{where} {p}: not found. Give a label file or a folder of label files.")
    if reference.is_file() and prediction.is_file():
        return [(case_name(reference), reference, prediction)]
    if reference.is_dir() and prediction.is_dir():
        refs, preds = _image_files(reference), _image_files(prediction)
        if not refs:
            raise UserError(f"-ref {reference}: no label files found (.nii.gz, .nii, .nrrd, .mha, ...).")
        missing = [f"{prediction}: no prediction for case {c!r} (reference {refs[c].name})"
                   for c in refs if c not in preds]
        if missing:
            raise UserErrors(missing, headline="predictions are missing")
        extra = sorted(set(preds) - set(refs))
        if extra:
            warnings.warn(f"{prediction}: {len(extra)} prediction(s) without a reference are ignored "
                          f"({', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''})", stacklevel=2)
        return [(c, refs[c], preds[c]) for c in refs]
    raise UserError(f"-ref {reference} and -pred {prediction}: must both be files or both be folders.")


def read_labels(path: Path):
    """A label map as an integer array plus its Image; raises UserError for non-integer values."""
    from autoliver.io.images import read_image

    img = read_image(path)
    arr = img.array
    if arr.ndim != 3:
        raise UserError(f"{path}: a label map must be 3D, got an array of shape {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise UserError(f"{path}: label values must be whole numbers, got {arr.dtype} values such as "
                            f"{arr[arr != np.round(arr)][:3].tolist()}. Pass label maps, not probabilities.")
        arr = arr.astype(np.int32)
    return arr, img


def geometry_problem(ref_img, pred_img) -> str | None:
    """One line saying how the prediction's grid differs from the reference's, or None."""
    r, p = ref_img.geometry, pred_img.geometry
    if r.matches(p):
        return None
    if r.shape_zyx != p.shape_zyx:
        what = f"shape (z, y, x) {p.shape_zyx} vs {r.shape_zyx}"
    elif not np.allclose(r.spacing, p.spacing, rtol=1e-3, atol=1e-3):
        what = (f"spacing (x, y, z) {tuple(round(s, 4) for s in p.spacing)} vs "
                f"{tuple(round(s, 4) for s in r.spacing)} mm")
    elif not np.allclose(r.direction, p.direction, atol=1e-3):
        what = f"direction {p.orientation()} vs {r.orientation()}"
    else:
        what = f"origin {tuple(round(s, 3) for s in p.origin)} vs {tuple(round(s, 3) for s in r.origin)} mm"
    return (f"{pred_img.path}: geometry must match the reference {ref_img.path}, got {what}. "
            "Write predictions on the reference's grid (autoliver predict does).")


def reorient_like(array: np.ndarray, geometry, target) -> np.ndarray | None:
    """``array`` (z, y, x) laid out like ``target`` when both grids hold the same voxels and differ
    only in axis order or direction (e.g. a label map written RAS for an LPS scan); else None."""
    from autoliver.io.images import Geometry

    p = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    r = np.asarray(target.direction, dtype=np.float64).reshape(3, 3)
    m = r.T @ p  # column i: the source's ITK axis i in the target's axes; a signed permutation if aligned
    perm = np.argmax(np.abs(m), axis=0)
    if sorted(perm.tolist()) != [0, 1, 2] or not np.allclose(np.abs(m), np.round(np.abs(m)), atol=1e-3):
        return None  # oblique to each other: not the same voxels
    signs = np.sign(m[perm, np.arange(3)])
    size_xyz = np.array(geometry.shape_zyx[::-1])
    out = array
    for i in range(3):  # ITK axis i is array axis 2 - i
        if signs[i] < 0:
            out = np.flip(out, axis=2 - i)
    first = np.where(signs < 0, size_xyz - 1, 0) * np.asarray(geometry.spacing)
    origin = np.asarray(geometry.origin) + p @ first
    axes = [0, 0, 0]
    for i in range(3):
        axes[2 - perm[i]] = 2 - i
    out = np.transpose(out, axes)
    spacing = [0.0, 0.0, 0.0]
    for i in range(3):
        spacing[perm[i]] = geometry.spacing[i]
    moved = Geometry(spacing=tuple(spacing), origin=tuple(float(v) for v in origin), direction=target.direction,
                     shape_zyx=tuple(out.shape))
    return np.ascontiguousarray(out) if moved.matches(target) else None


def labels_on_grid(labels: np.ndarray, labels_img, ref_img) -> tuple[np.ndarray | None, str | None]:
    """The label array on the reference's grid (reoriented if it only differs in axis order or
    direction), or (None, one line saying how the grids differ)."""
    if ref_img.geometry.matches(labels_img.geometry):
        return labels, None
    moved = reorient_like(labels, labels_img.geometry, ref_img.geometry)
    if moved is not None:
        return moved, None
    return None, geometry_problem(ref_img, labels_img)


@dataclass(frozen=True)
class _Job:
    case: str
    reference: str
    prediction: str
    image: str | None
    settings: Settings
    overview: bool


def _run_case(job: _Job):
    """Worker: read, check, score, draw. Returns (CaseResult | None, problem | None, png | None)."""
    ref, ref_img = read_labels(Path(job.reference))
    pred, pred_img = read_labels(Path(job.prediction))
    pred, problem = labels_on_grid(pred, pred_img, ref_img)
    if problem:
        return None, problem, None
    from autoliver.evaluation.measurements import axial_axis

    result = evaluate_case(ref, pred, ref_img.geometry.spacing_zyx_mm, job.settings, case=job.case,
                           reference_path=job.reference, prediction_path=job.prediction,
                           axial=axial_axis(ref_img.geometry.direction))
    png = None
    if job.overview:
        from autoliver.evaluation.overview import case_overview_png

        image = None
        if job.image:
            from autoliver.io.images import read_image

            img = read_image(job.image)
            image = img.array if img.array.ndim == 3 else img.array[0]
            if image.shape != ref.shape:
                warnings.warn(f"{job.image}: shape {image.shape} differs from the labels' {ref.shape}; "
                              "drawing the outlines without the scan.", stacklevel=2)
                image = None
        png = case_overview_png(ref, pred, ref_img.geometry, job.settings, result, image=image)
    return result, None, png


def find_image(images: Path | None, case: str) -> str | None:
    """The scan of ``case`` in an images folder: ``{case}_0000.*`` (nnU-Net naming) or ``{case}.*``."""
    if images is None:
        return None
    files = _image_files(Path(images))
    for name in (f"{case}_0000", case):
        if name in files:
            return str(files[name])
    return None


def evaluate(reference: str | os.PathLike, prediction: str | os.PathLike, output_json: str | os.PathLike | None = None,
             *, settings: Settings = Settings(), num_processes: int = 2, overview_dir: str | os.PathLike | None = None,
             html: str | os.PathLike | None = None, images: str | os.PathLike | None = None,
             progress: bool = True) -> Summary:
    """Score every prediction against its reference; write the summary (and pictures) if asked."""
    from autoliver import progress as bars
    from autoliver.schema import write_json

    pairs = pair_files(Path(reference), Path(prediction))
    want_pictures = overview_dir is not None or html is not None
    jobs = [_Job(case, str(r), str(p), find_image(Path(images) if images else None, case), settings, want_pictures)
            for case, r, p in pairs]

    def track(iterable):
        if not progress:
            return iterable
        return bars.bar(iterable, total=len(jobs), desc="evaluate", unit="case")

    if num_processes > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(num_processes, len(jobs)), mp_context=get_context("spawn")) as pool:
            outputs = list(track(pool.map(_run_case, jobs)))
    else:
        outputs = [_run_case(j) for j in track(jobs)]
    problems = [problem for _, problem, _ in outputs if problem]
    if problems:
        raise UserErrors(problems, headline="predictions do not lie on their references' grids")
    results = [r for r, _, _ in outputs]
    settings = _drop_absent_regions(results, settings)
    results = [_keep_regions(r, settings) for r in results]
    summary = summarise(results, settings)
    if output_json is not None:
        write_json(output_json, summary)
    pngs = {job.case: png for job, (_, _, png) in zip(jobs, outputs) if png is not None}
    if overview_dir is not None:
        from autoliver.schema import atomic_write_bytes

        for case, png in pngs.items():
            atomic_write_bytes(Path(overview_dir) / f"{case}.png", png)
    if html is not None:
        from autoliver.evaluation.html_summary import summary_html
        from autoliver.schema import atomic_write_text

        atomic_write_text(html, summary_html(summary, pngs, title=f"autoliver evaluation: {Path(prediction).name}"))
    return summary


def _keep_regions(result: CaseResult, settings: Settings) -> CaseResult:
    regions = {k: v for k, v in result.regions.items() if k in settings.regions}
    if "tumour" in settings.regions:
        return dataclasses.replace(result, regions=regions)
    return dataclasses.replace(result, regions=regions, lesions=None, tumour_burden_reference=None,
                               tumour_burden_prediction=None, tumour_burden_error=None)


def read_summary(path: str | os.PathLike) -> Summary:
    """Read a summary JSON written by :func:`evaluate` (strict; errors name the key path)."""
    from autoliver.schema import read_document

    return read_document(Summary, path, schema_version=SCHEMA_VERSION)


def _drop_absent_regions(results: list[CaseResult], settings: Settings) -> Settings:
    """Leave out a region no reference and no prediction contains (e.g. tumour in a liver-only
    dataset): scoring it would report a perfect, meaningless 1.0."""
    absent = [name for name in settings.regions
              if results and all(r.regions[name].tp + r.regions[name].fp + r.regions[name].fn == 0 for r in results)]
    if not absent:
        return settings
    warnings.warn(f"evaluate: no reference or prediction contains {', '.join(absent)}; "
                  f"{'it is' if len(absent) == 1 else 'they are'} left out of the summary.", stacklevel=3)
    return dataclasses.replace(settings, regions={k: v for k, v in settings.regions.items() if k not in absent})
