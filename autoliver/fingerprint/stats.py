"""Per-case measurements for the fingerprint: pure functions of arrays (z, y, x) / (C, z, y, x).

Body crop. nnU-Net crops every case to the bounding box of its non-zero voxels. In CT that rule
does nothing: air is −1000 HU, not 0, so the box is the whole field of view and the median shape
the planner sees is the scanner's 512 × 512, not the patient. autoliver crops CT to the body
instead — voxels above −500 HU (soft tissue and bone; not air, nor reconstruction padding of
−1024 / −3024 HU) — and keeps nnU-Net's non-zero rule for MRI, whose background is zero. The box
always contains every labelled voxel. The rule is the preprocessing stage's own
(:func:`autoliver.preprocessing.cropping.body_box`), so the shapes the planner plans for are
exactly the shapes training sees.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from autoliver.fingerprint.fingerprint import IntensityStats, LabelStats

LIVER_NAMES = ("liver",)
TUMOUR_NAMES = ("tumour", "tumor", "lesion", "liver_tumour", "liver_tumor", "cancer")
NOISE_MIN_VOXELS = 200


def crop_bbox(channels: np.ndarray, modality: str, seg: np.ndarray | None = None
              ) -> tuple[tuple[tuple[int, int], ...], str]:
    """The [start, stop) box per axis (z, y, x) a case is cropped to, and the rule's name.

    ``channels`` is (C, z, y, x) in raw units; ``seg`` (z, y, x) or None. The box always contains
    every voxel with a label > 0; with no body found it is the whole image.
    """
    from autoliver.preprocessing.cropping import body_box

    box = body_box(list(channels), modality, seg)
    return tuple((int(a), int(b)) for a, b in box), ("body_ct" if modality.upper() == "CT" else "nonzero")


def find_label(labels: dict[str, int], names: tuple[str, ...]) -> int | None:
    lowered = {k.lower(): v for k, v in labels.items()}
    for name in names:
        if name in lowered:
            return int(lowered[name])
    return None


def label_stats(seg: np.ndarray, spacing_zyx_mm, labels: dict[str, int]) -> LabelStats:
    """Voxels and mL per label; liver volume (liver + tumour, the organ as a whole); tumour
    components (26-connectivity) and their equivalent-sphere diameters d = (6V/π)^(1/3)."""
    voxel_ml = float(np.prod(spacing_zyx_mm)) / 1000.0
    counts = np.bincount(seg.ravel().astype(np.int64, copy=False), minlength=max(labels.values()) + 1)
    voxels = {name: int(counts[v]) for name, v in labels.items() if v > 0}
    volume_ml = {name: n * voxel_ml for name, n in voxels.items()}
    liver = find_label(labels, LIVER_NAMES)
    tumour = find_label(labels, TUMOUR_NAMES)
    liver_voxels = (counts[liver] if liver is not None else 0) + (counts[tumour] if tumour is not None else 0)
    diameters: list[float] = []
    if tumour is not None and counts[tumour] > 0:
        comp, n = _components(seg == tumour)
        sizes = np.bincount(comp.ravel())[1:]
        diameters = sorted((2.0 * (3.0 * s * voxel_ml * 1000.0 / (4.0 * math.pi)) ** (1 / 3) for s in sizes), reverse=True)
    return LabelStats(voxels=voxels, volume_ml=volume_ml, liver_ml=float(liver_voxels * voxel_ml),
                      tumour_count=len(diameters), tumour_diameters_mm=tuple(round(d, 3) for d in diameters))


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components; the compiled kernel when it is available."""
    try:
        from autoliver.ops.components import label

        return label(mask, connectivity=26)
    except ImportError:
        return ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))


def sample_foreground(channels: np.ndarray, seg: np.ndarray, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """(C, n) intensities at up to ``num_samples`` random labelled voxels (all of them if fewer)."""
    idx = np.flatnonzero(seg.ravel() > 0)
    if idx.size > num_samples:
        idx = rng.choice(idx, size=num_samples, replace=False)
    flat = channels.reshape(channels.shape[0], -1)
    return flat[:, np.sort(idx)].astype(np.float32)


def intensity_stats(samples: np.ndarray) -> IntensityStats:
    """Statistics of 1D ``samples`` (zeros when there are none: e.g. an unlabelled case)."""
    if samples.size == 0:
        return IntensityStats(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)
    s = samples.astype(np.float64)
    p005, p50, p995 = np.percentile(s, [0.5, 50.0, 99.5])
    return IntensityStats(mean=float(s.mean()), median=float(p50), std=float(s.std()), min=float(s.min()),
                          max=float(s.max()), percentile_00_5=float(p005), percentile_99_5=float(p995),
                          num_samples=int(s.size))


def estimate_noise_sigma(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, max_voxels: int = 200_000
                         ) -> float:
    """Standard deviation of the noise of ``image`` (z, y, x) inside ``mask``, raw units.

    Inside a homogeneous organ the residual r = x − mean of its 4 in-plane neighbours is mostly
    noise: for white noise of σ, std(r) = σ·√(1 + 4/16). A robust spread (1.4826 · MAD) ignores
    the few residuals at edges and vessels. Only voxels whose 3×3 in-plane neighbourhood lies
    inside the (eroded) mask count. Returns 0.0 when fewer than NOISE_MIN_VOXELS qualify.
    """
    inner = ndimage.binary_erosion(mask, structure=np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], dtype=bool))
    z, y, x = np.nonzero(inner)
    if z.size < NOISE_MIN_VOXELS:
        return 0.0
    if z.size > max_voxels:
        pick = rng.choice(z.size, size=max_voxels, replace=False)
        z, y, x = z[pick], y[pick], x[pick]
    img = image.astype(np.float32, copy=False)
    r = img[z, y, x] - 0.25 * (img[z, y - 1, x] + img[z, y + 1, x] + img[z, y, x - 1] + img[z, y, x + 1])
    mad = float(np.median(np.abs(r - np.median(r))))
    return 1.4826 * mad / math.sqrt(1.25)
