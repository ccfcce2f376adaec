"""The dataset fingerprint: what the planner knows about a dataset (``fingerprint.json``).

A typed, versioned document. Per case: geometry (spacing, orientation, shape before and after
cropping to the body), label statistics and a noise estimate; per channel: foreground intensity
statistics pooled over the dataset. Axes are (z, y, x) throughout, in the canonical voxel order the
pipeline works in (:mod:`autoliver.io.orientation`; ``orientation`` records the file's own);
channels are the network's input channels (for a 4D DCE-MRI file: one per phase).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from autoliver.schema import read_document, write_json

SCHEMA_VERSION = 1
CROP_RULES = ("body_ct", "nonzero")


@dataclass(frozen=True)
class IntensityStats:
    """Statistics of intensities sampled from labelled (foreground) voxels, raw units (HU for CT)."""

    mean: float
    median: float
    std: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float
    num_samples: int


@dataclass(frozen=True)
class LabelStats:
    """Per case: voxels and volume per label name; liver volume; tumour components."""

    voxels: dict[str, int]  # label name → voxel count (background excluded)
    volume_ml: dict[str, float]
    liver_ml: float  # liver including tumour (LiTS convention: the organ as a whole)
    tumour_count: int  # connected components (26-connectivity) of the tumour label
    tumour_diameters_mm: tuple[float, ...]  # equivalent-sphere diameter per tumour, largest first


@dataclass(frozen=True)
class CaseFingerprint:
    case: str
    shape_zyx: tuple[int, int, int]
    spacing_zyx_mm: tuple[float, float, float]
    orientation: str  # e.g. "LPS", "RAS", "LAS"
    crop_bbox_zyx: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # [start, stop) per axis
    shape_after_crop_zyx: tuple[int, int, int]
    labels: LabelStats
    intensity: tuple[IntensityStats, ...]  # per channel, this case's foreground
    noise_sigma: tuple[float, ...]  # per channel, raw units; 0 when it could not be estimated
    liver_mean: tuple[float, ...]  # per channel, mean intensity inside the liver label
    # bounding box [start, stop) of every labelled voxel (the liver with its tumours); None: no label
    # (or a fingerprint from before this field)
    liver_bbox_zyx: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None = None


@dataclass(frozen=True)
class Fingerprint:
    schema_version: int
    dataset_name: str
    modality: str  # "CT" | "MRI"
    channel_names: tuple[str, ...]  # network input channels
    labels: dict[str, int]
    num_phases: int
    crop_rule: str  # "body_ct" (CT: body > −500 HU) | "nonzero" (nnU-Net's rule, MRI)
    foreground_intensity: tuple[IntensityStats, ...]  # per channel, pooled over all cases' samples
    noise_sigma: tuple[float, ...]  # per channel, median over cases
    cases: tuple[CaseFingerprint, ...]
    phases_in_file: int = 0  # dataset.json "phases_in_file": >0 = each case is one 4D file of this many phases

    @property
    def num_cases(self) -> int:
        return len(self.cases)


def write_fingerprint(path: str | os.PathLike, fingerprint: Fingerprint) -> None:
    write_json(path, fingerprint)


def read_fingerprint(path: str | os.PathLike) -> Fingerprint:
    return read_document(Fingerprint, path, schema_version=SCHEMA_VERSION)


def empty_label_stats() -> LabelStats:
    return LabelStats(voxels={}, volume_ml={}, liver_ml=0.0, tumour_count=0, tumour_diameters_mm=())


def fingerprint_from_geometry(
    dataset_name: str,
    shapes_zyx: list[tuple[int, int, int]],
    spacings_zyx_mm: list[tuple[float, float, float]],
    *,
    modality: str = "CT",
    channel_names: tuple[str, ...] = ("CT",),
    labels: dict[str, int] | None = None,
    num_phases: int = 1,
    intensity: IntensityStats | None = None,
    noise_sigma: float = 10.0,
    orientations: list[str] | None = None,
    liver_voxels: list[int] | None = None,
    shapes_after_crop_zyx: list[tuple[int, int, int]] | None = None,
    liver_boxes_zyx: list | None = None,
    tumour_diameters_mm: list[tuple[float, ...]] | None = None,
) -> Fingerprint:
    """A fingerprint from geometry alone (no images): for planning what-ifs and tests, e.g. from
    the LiTS headers. Every channel gets the same ``intensity`` statistics."""
    labels = labels or {"background": 0, "liver": 1, "tumour": 2}
    intensity = intensity or IntensityStats(mean=99.4, median=101.0, std=39.4, min=-1000.0, max=1500.0,
                                            percentile_00_5=-17.0, percentile_99_5=201.0, num_samples=0)
    crops = shapes_after_crop_zyx or shapes_zyx
    cases = []
    for i, (shape, spacing, crop) in enumerate(zip(shapes_zyx, spacings_zyx_mm, crops)):
        voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
        liver = int(liver_voxels[i]) if liver_voxels else 0
        diameters = tuple(tumour_diameters_mm[i]) if tumour_diameters_mm else ()
        tumour = int(round(sum(math.pi / 6 * d ** 3 for d in diameters) / (voxel_ml * 1000.0)))
        voxels = {**({"liver": liver - tumour} if liver else {}), **({"tumour": tumour} if tumour else {})}
        label_stats = LabelStats(voxels=voxels, volume_ml={k: v * voxel_ml for k, v in voxels.items()},
                                 liver_ml=liver * voxel_ml, tumour_count=len(diameters), tumour_diameters_mm=diameters)
        cases.append(CaseFingerprint(
            case=f"case_{i:04d}", shape_zyx=tuple(int(s) for s in shape),
            spacing_zyx_mm=tuple(float(s) for s in spacing),
            orientation=orientations[i] if orientations else "LPS",
            crop_bbox_zyx=tuple((0, int(c)) for c in crop), shape_after_crop_zyx=tuple(int(c) for c in crop),
            labels=label_stats, intensity=tuple(intensity for _ in channel_names),
            noise_sigma=tuple(noise_sigma for _ in channel_names),
            liver_mean=tuple(intensity.mean for _ in channel_names),
            liver_bbox_zyx=tuple(tuple(int(v) for v in b) for b in liver_boxes_zyx[i]) if liver_boxes_zyx else None))
    return Fingerprint(schema_version=SCHEMA_VERSION, dataset_name=dataset_name, modality=modality,
                       channel_names=tuple(channel_names), labels=dict(labels), num_phases=num_phases,
                       crop_rule="body_ct" if modality == "CT" else "nonzero",
                       foreground_intensity=tuple(intensity for _ in channel_names),
                       noise_sigma=tuple(noise_sigma for _ in channel_names), cases=tuple(cases))
