"""Volumes and RECIST-style diameters of a segmentation (pure: arrays and spacings in, numbers out).

The longest axial diameter follows RECIST 1.1: the longest straight line across the lesion within
one axial slice, taken over all slices. A lesion is measured edge to edge, as a reader measures it
on screen: the line joins corners of the lesion's pixels (the Feret diameter of the union of its
pixel squares, with the in-plane anisotropic spacing). A single 0.8 × 0.8 mm pixel thus measures
1.13 mm, a 10-pixel row 8 mm long.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull


def voxel_volume_ml(spacing_zyx_mm) -> float:
    return float(np.prod(np.asarray(spacing_zyx_mm, dtype=np.float64))) / 1000.0


def volume_ml(mask: np.ndarray, spacing_zyx_mm) -> float:
    return int(np.count_nonzero(mask)) * voxel_volume_ml(spacing_zyx_mm)


def axial_axis(direction: tuple[float, ...]) -> int:
    """Array axis (0 = z, 1 = y, 2 = x of a (z, y, x) array) that runs closest to the patient's
    head-feet axis, given ITK's row-major 3×3 direction; axial slices are perpendicular to it."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    itk_axis = int(np.argmax(np.abs(d[2, :])))  # column k = world direction of ITK index axis k
    return 2 - itk_axis


@dataclass(frozen=True)
class Diameter:
    """A longest axial diameter: its length, the slice it lies in, and its two ends.

    ``slice_index`` indexes the axial axis; ``ends`` are two (row, col) points in pixel units of
    that slice (pixel corners, so values end in .5), rows and cols being the two remaining axes in
    array order.
    """

    length_mm: float
    slice_index: int
    ends: tuple[tuple[float, float], tuple[float, float]]


def _slice_feret(mask2d: np.ndarray, spacing_rc_mm: np.ndarray):
    """Longest distance between corners of the pixels of one slice: (length_mm, end_a, end_b)."""
    edge = mask2d & ~ndimage.binary_erosion(mask2d, border_value=0)  # hull vertices lie on edge pixels
    rc = np.argwhere(edge).astype(np.float64)
    corners = (rc[:, None, :] + np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])[None]).reshape(-1, 2)
    points = corners * spacing_rc_mm
    hull = points[ConvexHull(points).vertices]  # a pixel's 4 corners are never collinear
    gaps = np.sqrt(((hull[:, None, :] - hull[None, :, :]) ** 2).sum(-1))
    a, b = np.unravel_index(int(np.argmax(gaps)), gaps.shape)
    return float(gaps[a, b]), tuple(hull[a] / spacing_rc_mm), tuple(hull[b] / spacing_rc_mm)


def longest_axial_diameter(mask: np.ndarray, spacing_zyx_mm, axial: int = 0) -> Diameter:
    """RECIST 1.1 longest axial diameter of a binary mask (one lesion); 0 mm for an empty mask."""
    mask = np.asarray(mask, dtype=bool)
    box = ndimage.find_objects(mask.astype(np.uint8))
    if not box:
        return Diameter(0.0, -1, ((0.0, 0.0), (0.0, 0.0)))
    offset = [s.start for s in box[0]]
    crop = np.moveaxis(mask[box[0]], axial, 0)
    in_plane = [a for a in range(3) if a != axial]
    spacing_rc = np.asarray(spacing_zyx_mm, dtype=np.float64)[in_plane]
    best = Diameter(0.0, -1, ((0.0, 0.0), (0.0, 0.0)))
    for k in range(crop.shape[0]):
        if not crop[k].any():
            continue
        length, a, b = _slice_feret(crop[k], spacing_rc)
        if length > best.length_mm:
            shift = np.array([offset[in_plane[0]], offset[in_plane[1]]], dtype=np.float64)
            best = Diameter(length, k + offset[axial], (tuple(map(float, np.add(a, shift))),
                                                        tuple(map(float, np.add(b, shift)))))
    return best


@dataclass(frozen=True)
class LesionMeasurement:
    """One connected lesion: label id in its label map, size and where it lies (index space)."""

    id: int
    voxels: int
    volume_ml: float
    longest_axial_diameter_mm: float
    centroid_zyx: tuple[float, float, float]  # voxel index units
    bbox_zyx: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # [start, stop) per axis


def measure_components(labels: np.ndarray, n: int, spacing_zyx_mm, axial: int = 0) -> list[LesionMeasurement]:
    """Volume, longest axial diameter, centroid and box of components 1..n of a label map."""
    if n == 0:
        return []
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    boxes = ndimage.find_objects(labels, max_label=n)
    voxel_ml = voxel_volume_ml(spacing_zyx_mm)
    out = []
    for i in range(1, n + 1):
        box = boxes[i - 1]
        if box is None:
            continue
        crop = labels[box] == i
        coords = np.argwhere(crop).mean(axis=0) + [s.start for s in box]
        out.append(LesionMeasurement(
            id=i, voxels=int(counts[i]), volume_ml=int(counts[i]) * voxel_ml,
            longest_axial_diameter_mm=longest_axial_diameter(crop, spacing_zyx_mm, axial).length_mm,
            centroid_zyx=tuple(float(c) for c in coords),
            bbox_zyx=tuple((int(s.start), int(s.stop)) for s in box),
        ))
    return out
