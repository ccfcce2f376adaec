"""Connected components for post-processing: the compiled ``autoliver.ops.components`` kernels
when they are available, else scipy.ndimage with the same meaning (26-connectivity in 3D)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

try:  # the compiled kernels (with their own reference fallback) live in autoliver.ops
    from autoliver.ops import components as _ops
except ImportError:  # pragma: no cover - depends on which stages a build ships
    _ops = None


def _structure(ndim: int, connectivity: int) -> np.ndarray:
    rank = {6: 1, 18: 2, 26: 3, 4: 1, 8: 2}.get(connectivity)
    if rank is None:
        raise ValueError(f"connectivity must be 6, 18 or 26 (3D) or 4, 8 (2D), got {connectivity}")
    return ndimage.generate_binary_structure(ndim, min(rank, ndim))


def label(mask: np.ndarray, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Components of a binary mask: (labels uint32, count), numbered from 1 in scan order."""
    mask = np.asarray(mask, dtype=bool)
    if _ops is not None:
        labels, n = _ops.label(mask, connectivity=connectivity)
        return labels, int(n)
    labels, n = ndimage.label(mask, structure=_structure(mask.ndim, connectivity))
    return labels.astype(np.uint32, copy=False), int(n)


def largest_component(mask: np.ndarray, connectivity: int = 26) -> np.ndarray:
    """The largest connected component of ``mask`` (all False for an empty mask)."""
    mask = np.asarray(mask, dtype=bool)
    if _ops is not None:
        return np.asarray(_ops.largest_component(mask, connectivity=connectivity), dtype=bool)
    labels, n = label(mask, connectivity)
    if n <= 1:
        return mask.copy()
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def component_sizes(labels: np.ndarray, n: int) -> np.ndarray:
    """Voxel count per component label 0..n (index 0: background)."""
    return np.bincount(labels.ravel(), minlength=n + 1)
