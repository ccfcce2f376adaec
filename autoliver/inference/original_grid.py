"""Network-grid probabilities → the scan's original grid, a slab of slices at a time.

Same arithmetic as :func:`autoliver.preprocessing.pipeline.revert_to_original` for probabilities
(separable interpolation with the orders the case was resampled with, torch's sampling
convention, background probability 1 outside the crop box), but streamed: each slab of output
slices reads only the network-grid slices its interpolation weights touch, so a label map of a
512×512×1000 scan never needs K full-resolution float32 volumes. Several configurations (an
ensemble) are averaged slab by slab. Slabs are slices of the canonical voxel order the case was
preprocessed in (:mod:`autoliver.io.orientation`); the finished volume goes back to the file's.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from autoliver.io import orientation
from autoliver.postprocessing.steps import argmax_labels
from autoliver.preprocessing import resampling
from autoliver.preprocessing.pipeline import _orders_from

SLAB_BYTES = 64 << 20  # float32 working set per slab (all classes)
_MODES = {0: "nearest-exact", 1: "bilinear", 3: "bicubic"}


@dataclass
class _Mapping:
    """How one stage's network grid maps onto the original grid."""

    probabilities: torch.Tensor  # (K, z', y', x') float16/float32 on the network grid
    box: tuple[tuple[int, int], ...]  # crop box in the original grid (half-open per axis)
    crop_shape: tuple[int, int, int]
    full_shape: tuple[int, int, int]
    mz: np.ndarray  # (crop z, z') float32 interpolation weights along z
    first: np.ndarray  # per crop row: first network-grid slice it reads
    last: np.ndarray  # … and the last
    orders: tuple[int, int, int]
    logits: bool = False  # values are logits (nnU-Net v2 models): softmax after interpolation


def _mapping(probabilities, properties: dict, config) -> _Mapping:
    p = probabilities if isinstance(probabilities, torch.Tensor) else torch.from_numpy(np.asarray(probabilities))
    if p.ndim != 4:
        raise ValueError(f"original grid: probabilities must be (K, z, y, x), got shape {tuple(p.shape)}")
    orders, _ = _orders_from(properties, config)
    box = tuple(tuple(int(v) for v in b) for b in properties["crop_bbox_zyx"])
    crop_shape = tuple(int(n) for n in properties["shape_after_crop_zyx"])
    full_shape = tuple(int(n) for n in properties["shape_before_crop_zyx"])
    mz = resampling.interpolation_matrix(p.shape[1], crop_shape[0], orders[0])
    nz = mz != 0
    first = nz.argmax(axis=1)
    last = mz.shape[1] - 1 - nz[:, ::-1].argmax(axis=1)
    return _Mapping(p, box, crop_shape, full_shape, mz.astype(np.float32), first, last, tuple(orders),
                    properties.get("values") == "logits")


def _in_plane(x: torch.Tensor, size: tuple[int, int], orders: tuple[int, int]) -> torch.Tensor:
    """(K, r, y', x') → (K, r, Y, X) with the given orders along y and x."""
    if tuple(x.shape[2:]) == size:
        return x
    k, r = x.shape[:2]
    if orders[0] == orders[1]:
        kw = {} if orders[0] == 0 else {"align_corners": False}
        return F.interpolate(x.reshape(1, k * r, *x.shape[2:]), size=size, mode=_MODES[orders[0]], **kw
                             ).reshape(k, r, *size)
    my = torch.from_numpy(resampling.interpolation_matrix(x.shape[2], size[0], orders[0]).astype(np.float32))
    mx = torch.from_numpy(resampling.interpolation_matrix(x.shape[3], size[1], orders[1]).astype(np.float32))
    return torch.matmul(torch.matmul(my, x), mx.T)


def _crop_rows(m: _Mapping, r0: int, r1: int) -> torch.Tensor:
    """Probabilities of rows [r0, r1) of the cropped grid, float32 (K, r1 - r0, crop y, crop x)."""
    i0, i1 = int(m.first[r0:r1].min()), int(m.last[r0:r1].max()) + 1
    block = m.probabilities[:, i0:i1].float()
    w = torch.from_numpy(m.mz[r0:r1, i0:i1])
    rows = torch.einsum("rn,knyx->kryx", w, block)
    rows = _in_plane(rows, m.crop_shape[1:], m.orders[1:])
    # nnU-Net resamples logits and takes the softmax on the scan's grid; its models are exported so.
    return torch.softmax(rows, dim=0) if m.logits else rows


def _stage_rows(m: _Mapping, z0: int, z1: int) -> torch.Tensor:
    """Probabilities of original-grid slices [z0, z1), float32 (K, z1 - z0, Y, X)."""
    k = m.probabilities.shape[0]
    out = torch.zeros((k, z1 - z0, *m.full_shape[1:]), dtype=torch.float32)
    out[0] = 1.0  # background outside the crop box
    (bz0, bz1), (by0, by1), (bx0, bx1) = m.box
    a, b = max(z0, bz0), min(z1, bz1)
    if a < b:
        out[:, a - z0:b - z0, by0:by1, bx0:bx1] = _crop_rows(m, a - bz0, b - bz0)
    return out


def _slab_rows(full_shape: Sequence[int], k: int) -> int:
    return max(1, SLAB_BYTES // max(1, 4 * k * full_shape[1] * full_shape[2]))


def mean_slabs(stages: list[tuple[object, dict, object]]) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(z0, z1, mean probabilities (K, z1 - z0, Y, X) float32) over the original grid.

    stages: (probabilities (K, z', y', x'), properties, configuration) per configuration.
    """
    maps = [_mapping(p, props, cfg) for p, props, cfg in stages]
    full = maps[0].full_shape
    for m in maps[1:]:
        if m.full_shape != full or m.probabilities.shape[0] != maps[0].probabilities.shape[0]:
            raise ValueError(f"original grid: stages disagree on the grid ({m.full_shape} vs {full}) or classes")
    k = maps[0].probabilities.shape[0]
    step = _slab_rows(full, k)
    for z0 in range(0, full[0], step):
        z1 = min(full[0], z0 + step)
        total = _stage_rows(maps[0], z0, z1)
        for m in maps[1:]:
            total += _stage_rows(m, z0, z1)
        if len(maps) > 1:
            total /= len(maps)
        yield z0, z1, total


def _orientation(stages: list[tuple[object, dict, object]]) -> dict:
    """The voxel order all stages' grids share (their properties' "orientation"; none: the file's)."""
    orients = [props.get("orientation") or orientation.IDENTITY for _, props, _ in stages]
    if any(o != orients[0] for o in orients[1:]):
        raise ValueError(f"original grid: stages disagree on the voxel order ({orients}); ensemble models "
                         "planned alike")
    return orients[0]


def labels_on_original_grid(stages: list[tuple[object, dict, object]]) -> np.ndarray:
    """Argmax of the (mean) probabilities on the original grid, uint8 (z, y, x) in the file's order."""
    return np.ascontiguousarray(orientation.from_canonical(_canonical_labels(stages), _orientation(stages)))


def _canonical_labels(stages: list[tuple[object, dict, object]]) -> np.ndarray:
    if len(stages) == 1:  # one configuration: outside its crop box everything is background
        m = _mapping(*stages[0])
        out = np.zeros(m.full_shape, dtype=np.uint8)
        (bz0, bz1), (by0, by1), (bx0, bx1) = m.box
        step = _slab_rows(m.crop_shape, m.probabilities.shape[0])
        for r0 in range(0, bz1 - bz0, step):
            r1 = min(bz1 - bz0, r0 + step)
            out[bz0 + r0:bz0 + r1, by0:by1, bx0:bx1] = argmax_labels(_crop_rows(m, r0, r1))
        return out
    full = _mapping(*stages[0]).full_shape
    out = np.empty(full, dtype=np.uint8)
    for z0, z1, p in mean_slabs(stages):
        out[z0:z1] = argmax_labels(p)
    return out


def probabilities_on_original_grid(stages: list[tuple[object, dict, object]], dtype=np.float16) -> np.ndarray:
    """The (mean) probabilities on the original grid, (K, z, y, x) in ``dtype``, in the file's order."""
    first = _mapping(*stages[0])
    out = np.empty((first.probabilities.shape[0], *first.full_shape), dtype=dtype)
    for z0, z1, p in mean_slabs(stages):
        out[:, z0:z1] = p.numpy()
    return np.ascontiguousarray(orientation.from_canonical(out, _orientation(stages)))
