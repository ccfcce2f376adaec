"""One anatomical voxel order for every case: axial slices first, then front→back, then right→left.

Real datasets mix RAS, LPS and head-to-feet slice orders, and a few store sagittal or coronal
slices. Inside the pipeline every array is brought to the order an image with the identity
direction has in ITK's LPS world: array axes (z, y, x) point towards the head, the back and the
patient's left. Only axis permutations and flips are used (never interpolation), so a case goes
back to its file's voxel order exactly. An oblique scan is put in the order of the world axes its
voxel axes are closest to.

``axes``/``flip`` (JSON-ready lists) say, for each canonical axis (z, y, x), which array axis of
the file it comes from and whether it is reversed; they are stored in each preprocessed case's
properties so prediction can turn the network's output back.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IDENTITY = {"axes": [0, 1, 2], "flip": [False, False, False]}


def canonical_axes(direction: Sequence[float]) -> dict:
    """{"axes": file array axis per canonical (z, y, x) axis, "flip": reversed or not}, for an ITK
    row-major 3×3 direction (columns: world direction of ITK index axes x, y, z)."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    axes, flip, used = [0, 0, 0], [False, False, False], set()
    for itk_axis in np.argsort(-np.abs(d).max(axis=0), kind="stable"):  # most clearly aligned first
        col = np.abs(d[:, itk_axis]).copy()
        col[list(used)] = -1.0
        world = int(np.argmax(col))
        used.add(world)
        axes[2 - world] = 2 - int(itk_axis)  # array axes are ITK's reversed: (z, y, x)
        flip[2 - world] = bool(d[world, itk_axis] < 0)
    return {"axes": axes, "flip": flip}


def is_identity(orient: dict | None) -> bool:
    return orient is None or (list(orient["axes"]) == [0, 1, 2] and not any(orient["flip"]))


def to_canonical(array: np.ndarray, orient: dict | None) -> np.ndarray:
    """File voxel order → canonical, on the last three axes (leading axes, e.g. channels, kept).
    Returns a view when possible; the caller copies if it needs contiguous memory."""
    if is_identity(orient):
        return array
    lead = array.ndim - 3
    out = np.transpose(array, [*range(lead), *(lead + a for a in orient["axes"])])
    flips = tuple(lead + i for i, f in enumerate(orient["flip"]) if f)
    return np.flip(out, flips) if flips else out


def from_canonical(array: np.ndarray, orient: dict | None) -> np.ndarray:
    """Canonical → the file's voxel order, on the last three axes (inverse of :func:`to_canonical`)."""
    if is_identity(orient):
        return array
    lead = array.ndim - 3
    flips = tuple(lead + i for i, f in enumerate(orient["flip"]) if f)
    out = np.flip(array, flips) if flips else array
    inverse = np.argsort(orient["axes"])
    return np.transpose(out, [*range(lead), *(lead + int(a) for a in inverse)])


def canonical_zyx(values: Sequence, orient: dict | None) -> tuple:
    """A per-axis (z, y, x) quantity of the file (spacing, shape) in canonical order."""
    if orient is None:
        return tuple(values)
    return tuple(values[a] for a in orient["axes"])


def canonical_box(box: Sequence[Sequence[int]], shape_zyx: Sequence[int], orient: dict | None) -> tuple:
    """A half-open [start, stop) box per file axis → the same voxels' box in canonical order."""
    if orient is None:
        return tuple(tuple(int(v) for v in b) for b in box)
    out = []
    for a, f in zip(orient["axes"], orient["flip"]):
        start, stop = (int(v) for v in box[a])
        n = int(shape_zyx[a])
        out.append((n - stop, n - start) if f else (start, stop))
    return tuple(out)
