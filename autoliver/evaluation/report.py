"""``autoliver report``: pictures and measurements of one segmented scan.

Writes, into the output folder:

- ``liver_{axial,coronal,sagittal}.png``: three orthogonal slices through the centre of the liver,
  liver (green) and tumours (red) outlined on the scan;
- ``lesion_{axial,coronal,sagittal}.png``: the same through the largest lesion, the axial one at
  the slice of its longest axial diameter, drawn in yellow (RECIST 1.1);
- ``overview.png``: all of them on one page;
- ``statistics.json`` / ``statistics.csv``: liver volume, and each lesion's volume, longest axial
  diameter and centroid (see :mod:`autoliver.evaluation.statistics`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoliver.errors import UserError
from autoliver.evaluation import pictures as P
from autoliver.evaluation.lesions import LITS_CONNECTIVITY, _label
from autoliver.evaluation.measurements import longest_axial_diameter
from autoliver.evaluation.statistics import SegmentationStatistics, write_statistics
from autoliver.schema import atomic_write_bytes


@dataclass(frozen=True)
class ReportFiles:
    pictures: list[Path]
    statistics_json: Path
    statistics_csv: Path
    statistics: SegmentationStatistics


def _largest_component(mask: np.ndarray) -> np.ndarray | None:
    labels, n = _label(mask, LITS_CONNECTIVITY)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def make_report(image: np.ndarray, seg: np.ndarray, geometry, out_dir: str | os.PathLike, *,
                liver_labels=(1, 2), tumour_labels=(2,), case: str = "") -> ReportFiles:
    """Draw and measure ``seg`` (z, y, x) on ``image`` (same grid); returns what was written."""
    out_dir = Path(out_dir)
    if image.shape != seg.shape:
        raise UserError(f"report: the segmentation's shape {seg.shape} must match the scan's {image.shape}.")
    stats = write_statistics(seg, geometry, out_dir / "statistics.json", out_dir / "statistics.csv",
                             liver_labels=liver_labels, tumour_labels=tumour_labels)
    shown = P.to_display(image, geometry.spacing_zyx_mm, geometry.direction)
    labels = P.to_display(seg, geometry.spacing_zyx_mm, geometry.direction).array
    spacing = shown.spacing_zyx_mm
    liver, tumour = np.isin(labels, liver_labels), np.isin(labels, tumour_labels)
    outlines = [P.Outline(liver, P.STRUCTURE_COLOURS["liver"], f"liver {stats.liver_ml:.0f} mL"),
                P.Outline(tumour, P.STRUCTURE_COLOURS["tumour"], f"tumours ({stats.num_lesions})")]
    panels = []  # (file stem, view, point, title, line)
    liver_point = np.argwhere(liver).mean(axis=0) if liver.any() else (np.array(liver.shape) - 1) / 2.0
    for view in P.VIEWS:
        panels.append((f"liver_{view}", view, liver_point, f"liver, {view}", None))
    lesion = _largest_component(tumour)
    if lesion is not None:
        diameter = longest_axial_diameter(lesion, spacing, axial=0)
        centre = np.argwhere(lesion).mean(axis=0)
        point = np.array([diameter.slice_index, centre[1], centre[2]])
        volume = np.count_nonzero(lesion) * float(np.prod(spacing)) / 1000.0
        for view in P.VIEWS:
            title = f"largest lesion, {view}: {diameter.length_mm:.1f} mm, {volume:.2f} mL"
            panels.append((f"lesion_{view}", view, point, title, diameter.ends))
    written = []
    for stem, view, point, title, line in panels:
        fig, axes = P.new_figure(1, 1, size_per_panel=5.0)
        handles = P.draw_view(axes[0][0], view, point, spacing, image=shown.array, outlines=outlines, title=title,
                              line=line)
        path = out_dir / f"{stem}.png"
        atomic_write_bytes(path, P.png_bytes(fig, handles, case))
        written.append(path)
    fig, axes = P.new_figure(len(panels) // 3, 3, size_per_panel=4.0)
    handles = []
    for k, (_, view, point, title, line) in enumerate(panels):
        handles += P.draw_view(axes[k // 3][k % 3], view, point, spacing, image=shown.array, outlines=outlines,
                               title=title, line=line)
    path = out_dir / "overview.png"
    atomic_write_bytes(path, P.png_bytes(fig, handles, case))
    written.append(path)
    return ReportFiles(pictures=written, statistics_json=out_dir / "statistics.json",
                       statistics_csv=out_dir / "statistics.csv", statistics=stats)


def report(image_path: str | os.PathLike, seg_path: str | os.PathLike, out_dir: str | os.PathLike, *,
           phase: int = 0, liver_labels=(1, 2), tumour_labels=(2,)) -> ReportFiles:
    """The edge of ``autoliver report``: read the scan and its segmentation, check the grids, draw."""
    from autoliver.evaluation.evaluate import case_name, labels_on_grid, read_labels
    from autoliver.io.images import read_image

    img = read_image(image_path)
    array = img.array
    if array.ndim == 4:
        if not 0 <= phase < array.shape[0]:
            raise UserError(f"--phase: must be between 0 and {array.shape[0] - 1} for {image_path}, got {phase}.")
        array = array[phase]
    seg, seg_img = read_labels(Path(seg_path))
    seg, problem = labels_on_grid(seg, seg_img, img)
    if problem:
        raise UserError(problem.replace("reference", "scan"))
    if Path(out_dir).resolve() in (Path(image_path).resolve().parent, Path(seg_path).resolve().parent):
        raise UserError(f"-o {out_dir}: must not be the folder of an input; choose a new folder for the report.")
    case = case_name(Path(seg_path)) if Path(seg_path).is_file() else ""
    return make_report(array, seg, img.geometry, out_dir, liver_labels=liver_labels, tumour_labels=tumour_labels,
                       case=case)
