"""Synthetic lesions painted into training patches (Hu et al. 2023, "Label-Free Liver Tumor
Segmentation"): a lesion stage that sees thousands of small, faint lesions in the minutes it has,
instead of the few dozen a training set holds.

A lesion is a distorted ellipsoid (three semi-axes around a drawn diameter, turned in-plane, its
surface bent by a few smooth waves) placed inside the liver label, darker than the liver by a drawn
number of Hounsfield units. It is *added* to the scan, so the scan's own noise and texture stay in
it, with a one-voxel partial-volume edge, and only over liver voxels; the voxels at least half
inside are labelled tumour. The same ellipsoid is painted on every slice of a 3D patch and on every
neighbouring slice of a 2.5D sample (at each slice's own distance from the centre slice), so the
slices agree as they would in a scan.

Everything here is a pure function of its inputs and the generator it is given.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from autoliver.errors import UserError

# How a difference in HU becomes one in normalised units, per scheme (see preprocessing.normalization):
# the linear CT schemes only; histogram equalisation is not linear and z-scored MRI has no HU.
_LINEAR_HU = {"ct": lambda p: 1.0 / p["std"], "liver_zscore": lambda p: 1.0 / p["std"],
              "hu_window": lambda p: 1.0 / (p["upper"] - p["lower"]), "none": lambda p: 1.0}


def hu_scales(normalization: list[dict], where: str) -> np.ndarray:
    """Normalised units per HU of each image channel, from a case's stored normalisation summaries."""
    if not normalization:
        raise UserError(f"{where}: no normalisation is recorded with the case, so synthetic lesions cannot be drawn "
                        "in HU. Preprocess the dataset again with this version of autoliver.")
    out = []
    for c, p in enumerate(normalization):
        if p.get("scheme") not in _LINEAR_HU:
            raise UserError(f"{where}: channel {c} is normalised with {p.get('scheme')!r}; synthetic lesions are "
                            f"drawn in HU and need one of {', '.join(_LINEAR_HU)} (CT). Train with a recipe "
                            "whose augmentation has p_synthetic_lesion = 0.")
        out.append(float(_LINEAR_HU[p["scheme"]](p)))
    return np.asarray(out, np.float32)


def paint_lesions(image: np.ndarray, seg: np.ndarray, *, z_mm: np.ndarray, labelled: np.ndarray,
                  spacing_yx: tuple[float, float], scales: np.ndarray, rng: np.random.Generator,
                  liver_label: int, tumour_label: int, count: tuple[int, int],
                  diameter_mm: tuple[float, float], contrast_hu: tuple[float, float]) -> int:
    """Paint ``count`` (inclusive range) lesions into ``image`` and ``seg`` in place; returns how many.

    image: (C, S, Y, X) normalised slices at heights ``z_mm`` (S,); seg: (L, Y, X) labels of the
    slices ``labelled`` (L indices into S): a 3D patch has every slice labelled, a 2.5D sample only
    its centre. A slice without labels takes the liver of the labelled slice nearest to it.
    scales: normalised units per HU per channel (:func:`hu_scales`).
    """
    liver = seg == liver_label
    if not liver.any():
        return 0
    sy, sx = (float(s) for s in spacing_yx)
    # in-plane distance to the liver's edge, per labelled slice: a lesion centre lies deep enough
    # that most of it is liver
    depth = np.stack([ndimage.distance_transform_edt(m, sampling=(sy, sx)) if m.any() else np.zeros(m.shape)
                      for m in liver])
    z_mm = np.asarray(z_mm, np.float64)
    labelled = np.asarray(labelled)
    nearest = np.abs(z_mm[:, None] - z_mm[labelled][None, :]).argmin(1)  # image slice → labelled slice
    painted = 0
    for _ in range(int(rng.integers(count[0], count[1] + 1))):
        d = float(rng.uniform(*diameter_mm))
        semi = d / 2 * rng.uniform(0.75, 1.25, size=3)  # (z, u, v) in mm
        theta = float(rng.uniform(0, np.pi))
        waves = rng.normal(size=(3, 3)) * 2.5, rng.uniform(0, 2 * np.pi, 3), rng.uniform(0.05, 0.15, 3)
        contrast = float(rng.uniform(*contrast_hu))
        candidates = np.argwhere(depth >= 0.6 * semi[1:].max())
        if not len(candidates):
            continue
        ls, cy, cx = candidates[int(rng.integers(len(candidates)))]
        cz = z_mm[labelled[ls]] + float(rng.uniform(-0.5, 0.5)) * semi[0]
        reach = 1.4 * semi.max()
        y0, y1 = max(0, int((cy * sy - reach) // sy)), min(image.shape[2], int((cy * sy + reach) // sy) + 2)
        x0, x1 = max(0, int((cx * sx - reach) // sx)), min(image.shape[3], int((cx * sx + reach) // sx) + 2)
        yy, xx = np.meshgrid(np.arange(y0, y1) * sy - cy * sy, np.arange(x0, x1) * sx - cx * sx, indexing="ij")
        u = (yy * np.cos(theta) + xx * np.sin(theta)) / semi[1]
        v = (-yy * np.sin(theta) + xx * np.cos(theta)) / semi[2]
        hit = False
        for s in range(image.shape[1]):
            w = (z_mm[s] - cz) / semi[0]
            if abs(w) > 1.4:
                continue
            p = np.stack([np.full_like(u, w), u, v])  # (3, y, x) in units of the semi-axes
            bend = sum(a * np.cos(np.tensordot(k, p, 1) + phase) for k, phase, a in zip(*waves))
            r = np.sqrt(u * u + v * v + w * w) * (1 + bend)
            soft = np.clip(0.5 + (1 - r) * semi.min() / max(sy, sx), 0, 1)  # one-voxel partial-volume edge
            ref = nearest[s]
            inside = liver[ref, y0:y1, x0:x1]
            soft = soft * inside
            if not soft.any():
                continue
            hit = True
            image[:, s, y0:y1, x0:x1] += (scales * contrast)[:, None, None] * soft[None].astype(image.dtype)
            if labelled[ref] == s:
                seg[ref, y0:y1, x0:x1][soft >= 0.5] = tumour_label
        painted += hit
    return painted
