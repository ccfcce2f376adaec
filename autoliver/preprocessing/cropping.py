"""Cropping a case to the body, and putting arrays back into the uncropped grid.

The body is what is not air or padding. CT: the first channel above ``CT_BODY_THRESHOLD_HU``
(-500 HU lies between air, about -1000 HU, and fat, about -100 HU; lungs and bowel gas inside
the body do not matter for the box, and reconstruction padding of -1024 / -3024 HU stays out).
MRI: any channel non-zero, as nnU-Net does. The crop box is the bounding box of that mask, grown
to contain every labelled voxel when a label is given, so cropping can never cut a liver.
No hole filling is needed: a bounding box does not change when holes are filled.

Boxes are half-open ``((z0, z1), (y0, y1), (x0, x1))`` in voxels of the uncropped array.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

CT_BODY_THRESHOLD_HU = -500.0
_CHUNK_VOXELS = 1 << 24

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def body_mask(channels: Sequence[np.ndarray], modality: str) -> np.ndarray:
    """Bool (z, y, x) mask of the body for arrays of one case (all the same shape)."""
    if modality.upper() == "CT":
        return np.asarray(channels[0]) > CT_BODY_THRESHOLD_HU
    mask = np.asarray(channels[0]) != 0
    for c in channels[1:]:
        mask |= np.asarray(c) != 0
    return mask


def body_box(channels: Sequence[np.ndarray], modality: str, seg: np.ndarray | None = None) -> Box:
    """The crop box of a case; the whole array when nothing is body (nothing is lost then)."""
    shape = channels[0].shape
    # Projections of the mask, built slab by slab so a large scan never needs a whole mask.
    # (uint8 max along axes: much faster than boolean any.)
    along_z = np.zeros(shape[0], dtype=np.uint8)
    plane = np.zeros(shape[1:], dtype=np.uint8)
    step = max(1, _CHUNK_VOXELS // max(1, shape[1] * shape[2]))
    for z0 in range(0, shape[0], step):
        m = body_mask([c[z0:z0 + step] for c in channels], modality).view(np.uint8)
        along_z[z0:z0 + step] = m.max(axis=2).max(axis=1)
        np.maximum(plane, m.max(axis=0), out=plane)
    if not along_z.any():
        box = [(0, n) for n in shape]
    else:
        zs = np.flatnonzero(along_z)
        ys = np.flatnonzero(plane.max(axis=1))
        xs = np.flatnonzero(plane.max(axis=0))
        box = [(int(zs[0]), int(zs[-1]) + 1), (int(ys[0]), int(ys[-1]) + 1), (int(xs[0]), int(xs[-1]) + 1)]
    if seg is not None:
        from autoliver.preprocessing.resampling import bounding_box

        labelled = bounding_box(seg)
        if labelled is not None:
            box = [(min(a, c), max(b, d)) for (a, b), (c, d) in zip(box, labelled)]
    return tuple(tuple(b) for b in box)


def liver_box(mask: np.ndarray, spacing_zyx_mm: Sequence[float], margin_mm: float,
              min_fraction: float = 0.1) -> Box | None:
    """The box of a liver-ROI lesion stage: the bounding box of the liver mask's components that
    hold at least ``min_fraction`` of the largest one's voxels (a stray speck of a first stage
    does not stretch it over the abdomen; a lobe it cut off stays in), grown by ``margin_mm`` on
    every side and clipped to the array. None when the mask is empty."""
    mask = np.asarray(mask)
    if not mask.any():
        return None
    try:
        from autoliver.ops.components import label
        comp, n = label(mask, connectivity=26)
    except ImportError:
        from scipy import ndimage
        comp, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(np.asarray(comp).reshape(-1))[1:]
    keep = np.flatnonzero(sizes >= min_fraction * sizes.max()) + 1
    from autoliver.preprocessing.resampling import bounding_box

    box = bounding_box(np.isin(comp, keep))
    grow = [int(np.ceil(margin_mm / float(s))) for s in spacing_zyx_mm]
    return tuple((max(0, a - g), min(n, b + g)) for (a, b), g, n in zip(box, grow, mask.shape))


def liver_channel(labels: np.ndarray) -> np.ndarray:
    """A liver-ROI stage's extra input from a first stage's labels (z, y, x): every labelled voxel,
    holes filled (a first stage that labels an inner lesion background leaves a hole there),
    float32 0/1."""
    from scipy import ndimage

    return ndimage.binary_fill_holes(np.asarray(labels) > 0).astype(np.float32)


def crop(array: np.ndarray, box: Box) -> np.ndarray:
    """A view of the last three axes of ``array`` inside ``box``."""
    return array[(..., *[slice(a, b) for a, b in box])]


def uncrop(array: np.ndarray, box: Box, shape_zyx: Sequence[int], fill: float | Sequence[float] = 0) -> np.ndarray:
    """Put a cropped (z, y, x) or (K, z, y, x) array back into a full array of ``shape_zyx``.

    ``fill`` is the value outside the box; for (K, …) arrays it may be one value per channel
    (probabilities: 1 for the background channel, 0 for the others).
    """
    lead = array.shape[:-3]
    out = np.empty((*lead, *[int(n) for n in shape_zyx]), dtype=array.dtype)
    if lead and np.ndim(fill):
        for k, f in enumerate(fill):
            out[k] = f
    else:
        out[...] = fill
    out[(..., *[slice(a, b) for a, b in box])] = array
    return out
