"""Post-processing of liver / tumour predictions: pure functions, arrays in, arrays out.

Label maps are (z, y, x) integer arrays; probabilities are (K, z, y, x) with channel k the
probability of label value k. ``liver`` and ``tumour`` are label values (``tumour`` may be None
for liver-only datasets, then the tumour steps do nothing).

The steps, in the order :func:`autoliver.postprocessing.apply.postprocess` runs them:

1. ``dense_crf`` (probabilities + image → refined probabilities): 3D fully connected CRF.
2. ``labels_by_otsu`` (probabilities → labels) instead of argmax: Otsu thresholds on the organ and
   the tumour probability (the seed method of thresholding a probability map).
3. ``keep_largest_liver``: the liver (with its tumours) is one organ; other islands are noise.
4. ``constrain_tumour_to_liver``: a tumour component that does not touch the liver (dilated by a
   margin in mm) is a false positive elsewhere in the abdomen.
5. ``remove_small_lesions``: tumour components below a volume become liver (inside the liver) or
   background.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from autoliver.postprocessing.components import component_sizes, label, largest_component

TUMOUR_NAMES = ("tumour", "tumor", "lesion", "lesions", "cancer")


def liver_and_tumour_labels(labels: dict[str, int]) -> tuple[int, int | None]:
    """Label values of the liver and the tumour from a dataset's ``labels`` (name → value)."""
    lower = {k.lower(): v for k, v in labels.items()}
    liver = lower.get("liver", 1)
    tumour = next((lower[n] for n in TUMOUR_NAMES if n in lower), None)
    if tumour is None and 2 in labels.values() and liver != 2:
        tumour = 2
    return int(liver), (None if tumour is None else int(tumour))


def argmax_labels(probabilities, slab: int = 16) -> np.ndarray:
    """uint8 index of the largest channel of (K, z, y, x) probabilities (the first on ties, as
    np.argmax), a few slices at a time in float32: several times faster than np.argmax / torch.argmax
    over the leading axis of a large float16 volume, and without a full int64 result."""
    import torch

    t = probabilities if isinstance(probabilities, torch.Tensor) else torch.from_numpy(np.asarray(probabilities))
    out = torch.empty(t.shape[1:], dtype=torch.uint8)
    for a in range(0, t.shape[1], slab):
        p = t[:, a:a + slab].float()
        best = p[0].clone()
        idx = out[a:a + slab]
        idx.zero_()
        for k in range(1, p.shape[0]):
            idx.masked_fill_(p[k] > best, k)
            torch.maximum(best, p[k], out=best)
    return out.numpy()


def _organ(seg: np.ndarray, liver: int, tumour: int | None) -> np.ndarray:
    return (seg == liver) | (seg == tumour) if tumour is not None else seg == liver


def _bbox(mask: np.ndarray, margin: tuple[int, ...]) -> tuple[slice, ...] | None:
    """Bounding box of ``mask`` grown by ``margin`` voxels per axis (clipped), None if empty."""
    out = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        if hit.size == 0:
            return None
        out.append(slice(max(0, hit[0] - margin[axis]), min(mask.shape[axis], hit[-1] + 1 + margin[axis])))
    return tuple(out)


def keep_largest_liver(seg: np.ndarray, liver: int = 1, tumour: int | None = 2, connectivity: int = 26) -> np.ndarray:
    """Keep the largest connected component of liver ∪ tumour; everything else of them → 0."""
    organ = _organ(seg, liver, tumour)
    box = _bbox(organ, (0,) * seg.ndim)
    out = seg.copy()
    if box is None:
        return out
    keep = largest_component(organ[box], connectivity)
    drop = organ[box] & ~keep
    out[box][drop] = 0
    return out


def dilate_mm(mask: np.ndarray, spacing_zyx_mm, margin_mm: float) -> np.ndarray:
    """Voxels within ``margin_mm`` of ``mask`` (Euclidean, in mm; computed in the mask's bounding box)."""
    if margin_mm <= 0:
        return mask.copy()
    spacing = np.asarray(spacing_zyx_mm, dtype=float)
    margin_vox = tuple(int(np.ceil(margin_mm / s)) for s in spacing)
    box = _bbox(mask, margin_vox)
    out = np.zeros(mask.shape, dtype=bool)
    if box is None:
        return out
    dist = ndimage.distance_transform_edt(~mask[box], sampling=spacing)
    out[box] = dist <= margin_mm
    return out


def constrain_tumour_to_liver(seg: np.ndarray, spacing_zyx_mm, liver: int = 1, tumour: int | None = 2,
                              margin_mm: float = 5.0, connectivity: int = 26) -> np.ndarray:
    """Tumour components that do not reach the liver dilated by ``margin_mm`` become background."""
    out = seg.copy()
    if tumour is None:
        return out
    tumour_mask = seg == tumour
    if not tumour_mask.any():
        return out
    near_liver = dilate_mm(seg == liver, spacing_zyx_mm, margin_mm)
    labels, n = label(tumour_mask, connectivity)
    touching = np.unique(labels[near_liver & tumour_mask])
    keep = np.zeros(n + 1, dtype=bool)
    keep[touching] = True
    keep[0] = False
    out[tumour_mask & ~keep[labels]] = 0
    return out


def remove_small_lesions(seg: np.ndarray, spacing_zyx_mm, liver: int = 1, tumour: int | None = 2,
                         min_ml: float = 0.0, connectivity: int = 26) -> np.ndarray:
    """Tumour components smaller than ``min_ml`` millilitres become liver if they touch the liver
    (a lesion inside the organ that is too small to trust), else background."""
    out = seg.copy()
    if tumour is None or min_ml <= 0:
        return out
    tumour_mask = seg == tumour
    if not tumour_mask.any():
        return out
    voxel_ml = float(np.prod(spacing_zyx_mm)) / 1000.0
    labels, n = label(tumour_mask, connectivity)
    small = component_sizes(labels, n) * voxel_ml < min_ml
    small[0] = False
    if not small.any():
        return out
    small_mask = small[labels]
    # Which small components have a liver voxel among their 26 neighbours.
    next_to_liver = ndimage.binary_dilation(seg == liver, structure=np.ones((3,) * seg.ndim, bool)) & small_mask
    to_liver = np.zeros(n + 1, dtype=bool)
    to_liver[np.unique(labels[next_to_liver])] = True
    to_liver[0] = False
    out[small_mask] = 0
    out[small_mask & to_liver[labels]] = liver
    return out


def otsu_threshold(values: np.ndarray, bins: int = 256, value_range: tuple[float, float] = (0.0, 1.0)) -> float:
    """Otsu's threshold of ``values`` (maximises the between-class variance of the histogram)."""
    hist, edges = np.histogram(values, bins=bins, range=value_range)
    hist = hist.astype(np.float64)
    if hist.sum() == 0:
        return 0.5 * (value_range[0] + value_range[1])
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mean1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


# A unimodal histogram (no tumour in the case) makes Otsu split noise; the threshold is kept in
# this range so the method can only move the boundary, not invent a class.
OTSU_CLAMP = (0.2, 0.8)


def labels_by_otsu(probabilities: np.ndarray, liver: int = 1, tumour: int | None = 2) -> np.ndarray:
    """Labels from Otsu thresholds: organ = P(foreground) > t1; inside it, tumour =
    P(tumour | organ) > t2; other foreground classes (if any) by argmax among the foreground."""
    p = probabilities
    organ_p = 1.0 - p[0].astype(np.float32)
    t1 = float(np.clip(otsu_threshold(organ_p), *OTSU_CLAMP))
    organ = organ_p > t1
    fg = argmax_labels(p[1:]) + 1
    seg = np.where(organ, fg, 0).astype(np.uint8)
    if tumour is not None and organ.any():
        frac = p[tumour][organ].astype(np.float32) / np.maximum(organ_p[organ], 1e-6)
        t2 = float(np.clip(otsu_threshold(np.clip(frac, 0, 1)), *OTSU_CLAMP))
        inside = seg[organ]
        inside[(inside == tumour) | (inside == liver)] = liver
        inside[frac > t2] = tumour
        seg[organ] = inside
    return seg


def dense_crf(probabilities: np.ndarray, image: np.ndarray, spacing_zyx_mm, params=None) -> np.ndarray:
    """Refined probabilities from the 3D dense CRF kernel (``autoliver.ops.crf``)."""
    from autoliver.ops.crf import CRFParams
    from autoliver.ops.crf import dense_crf as _dense_crf

    return _dense_crf(np.ascontiguousarray(probabilities, dtype=np.float32), image, tuple(spacing_zyx_mm),
                      params=params or CRFParams())
