"""Volumes and lesion measurements of one segmentation, as JSON and CSV (``predict --statistics``,
``report``).

The liver volume counts every liver label (tumours included, as LiTS's liver); lesions are the
6-connected components of the tumour label, each with its volume, its RECIST 1.1 longest axial
diameter and its centroid in world coordinates (ITK's LPS, mm).
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass

import numpy as np

from autoliver.evaluation.lesions import LITS_CONNECTIVITY, _label
from autoliver.evaluation.measurements import axial_axis, measure_components, volume_ml
from autoliver.io.images import Geometry
from autoliver.schema import atomic_write_text, write_json

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class LesionStatistics:
    id: int
    voxels: int
    volume_ml: float
    longest_axial_diameter_mm: float
    centroid_lps_mm: tuple[float, float, float]


@dataclass(frozen=True)
class SegmentationStatistics:
    schema_version: int
    liver_ml: float  # liver including its tumours
    tumour_ml: float
    tumour_burden: float | None  # tumour / liver volume; None without liver
    num_lesions: int
    lesions: list[LesionStatistics]  # largest first
    spacing_zyx_mm: tuple[float, float, float]
    liver_labels: tuple[int, ...]
    tumour_labels: tuple[int, ...]


def index_to_world(geometry: Geometry, index_zyx) -> tuple[float, float, float]:
    """Continuous (z, y, x) voxel index → world (x, y, z) mm in ITK's LPS frame."""
    ijk = np.asarray(index_zyx, dtype=np.float64)[::-1] * np.asarray(geometry.spacing)
    world = np.asarray(geometry.origin) + np.asarray(geometry.direction).reshape(3, 3) @ ijk
    return tuple(float(v) for v in world)


def segmentation_statistics(seg: np.ndarray, geometry: Geometry, *, liver_labels=(1, 2), tumour_labels=(2,),
                            connectivity: int = LITS_CONNECTIVITY) -> SegmentationStatistics:
    """Measure a label map (z, y, x) on its grid."""
    seg = np.asarray(seg)
    if seg.shape != tuple(geometry.shape_zyx):
        raise ValueError(f"segmentation_statistics: seg shape {seg.shape} does not match geometry {geometry.shape_zyx}")
    spacing = geometry.spacing_zyx_mm
    liver = np.isin(seg, liver_labels)
    tumour = np.isin(seg, tumour_labels)
    labels, n = _label(tumour, connectivity)
    lesions = [
        LesionStatistics(id=m.id, voxels=m.voxels, volume_ml=m.volume_ml,
                         longest_axial_diameter_mm=m.longest_axial_diameter_mm,
                         centroid_lps_mm=index_to_world(geometry, m.centroid_zyx))
        for m in measure_components(labels, n, spacing, axial_axis(geometry.direction))
    ]
    lesions.sort(key=lambda s: (-s.voxels, s.id))
    liver_ml, tumour_ml = volume_ml(liver, spacing), volume_ml(tumour, spacing)
    return SegmentationStatistics(
        schema_version=SCHEMA_VERSION, liver_ml=liver_ml, tumour_ml=tumour_ml,
        tumour_burden=tumour_ml / liver_ml if liver_ml > 0 else None, num_lesions=n, lesions=lesions,
        spacing_zyx_mm=tuple(float(s) for s in spacing), liver_labels=tuple(int(v) for v in liver_labels),
        tumour_labels=tuple(int(v) for v in tumour_labels),
    )


def statistics_csv(stats: SegmentationStatistics) -> str:
    """One row for the liver, then one per lesion (largest first)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["structure", "id", "volume_ml", "longest_axial_diameter_mm", "centroid_x_mm", "centroid_y_mm",
                "centroid_z_mm"])
    w.writerow(["liver", "", f"{stats.liver_ml:.3f}", "", "", "", ""])
    for s in stats.lesions:
        w.writerow(["lesion", s.id, f"{s.volume_ml:.4f}", f"{s.longest_axial_diameter_mm:.2f}",
                    *(f"{c:.2f}" for c in s.centroid_lps_mm)])
    return out.getvalue()


def write_statistics(seg: np.ndarray, geometry: Geometry, path_json: str | os.PathLike | None,
                     path_csv: str | os.PathLike | None = None, **kwargs) -> SegmentationStatistics:
    """Measure ``seg`` and write the JSON and/or CSV (each atomically); returns the statistics."""
    stats = segmentation_statistics(seg, geometry, **kwargs)
    if path_json is not None:
        write_json(path_json, stats)
    if path_csv is not None:
        atomic_write_text(path_csv, statistics_csv(stats))
    return stats
