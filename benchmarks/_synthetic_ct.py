"""The fixed synthetic abdominal CT and mask the kernel benchmarks run on.

200 x 512 x 512 voxels at 2.5 x 0.78 x 0.78 mm (z, y, x), int16 HU: air -1000 outside an
elliptic body (40 HU), a liver (60 HU) with six round tumours (20 HU), a spine and a rib cage
(700 HU), and Gaussian noise of sigma 20 HU. The mask is what a segmentation network's raw output
looks like before clean-up: the liver (tumours included) plus everything above 100 HU (bone and
noise specks: about 28,600 components with 26-connectivity). Everything is seeded, so every run
and every machine gets the same arrays; other shapes scale the anatomy with the volume.
"""
from __future__ import annotations

import functools

import numpy as np

SHAPE_ZYX = (200, 512, 512)
SPACING_ZYX_MM = (2.5, 0.78, 0.78)
AIR_HU, BODY_HU, LIVER_HU, TUMOUR_HU, BONE_HU = -1000, 40, 60, 20, 700
NOISE_SIGMA_HU = 20.0
MASK_THRESHOLD_HU = 100


def _axes_mm(shape, box=None):
    """Open (z, y, x) grids in mm for the index box [(lo, hi)] * 3 (whole volume by default)."""
    box = box or [(0, n) for n in shape]
    return [(np.arange(lo, hi, dtype=np.float32) * s).reshape([-1 if i == a else 1 for i in range(3)])
            for a, ((lo, hi), s) in enumerate(zip(box, SPACING_ZYX_MM))]


def _box(shape, centre_mm, radius_mm):
    box = []
    for n, c, r, s in zip(shape, centre_mm, radius_mm, SPACING_ZYX_MM):
        lo = min(n, max(0, int((c - r) / s)))
        box.append((lo, max(lo, min(n, int((c + r) / s) + 2))))
    return box


@functools.lru_cache(maxsize=2)
def synthetic_ct(shape_zyx=SHAPE_ZYX, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ct int16 HU, liver mask bool), both (z, y, x); cached, read-only."""
    shape_zyx = tuple(int(n) for n in shape_zyx)
    rng = np.random.default_rng(seed)
    ext = [n * s for n, s in zip(shape_zyx, SPACING_ZYX_MM)]
    cz, cy, cx = ext[0] / 2, ext[1] / 2, ext[2] / 2
    ct = np.full(shape_zyx, AIR_HU, np.int16)
    _, y, x = _axes_mm(shape_zyx)
    # body: elliptic cylinder along z
    body_yx = ((y - cy) / (0.36 * ext[1])) ** 2 + ((x - cx) / (0.45 * ext[2])) ** 2 <= 1.0
    ct[:, body_yx[0]] = BODY_HU
    # liver: an ellipsoid on the patient's right (image left), cut by an oblique plane
    centre = (cz + 0.05 * ext[0], cy - 0.03 * ext[1], cx - 0.17 * ext[2])
    radii = (75.0, 95.0, 85.0)
    box = _box(shape_zyx, centre, radii)
    bz, by, bx = _axes_mm(shape_zyx, box)
    inside = (((bz - centre[0]) / radii[0]) ** 2 + ((by - centre[1]) / radii[1]) ** 2 +
              ((bx - centre[2]) / radii[2]) ** 2 <= 1.0) & ((bx - centre[2]) + 0.6 * (by - centre[1]) < 60.0)
    liver = np.zeros(shape_zyx, bool)
    sl = tuple(slice(lo, hi) for lo, hi in box)
    liver[sl] = inside
    ct[liver] = LIVER_HU
    # six tumours inside the liver
    for _ in range(6):
        r = rng.uniform(5.0, 20.0)
        c = (centre[0] + rng.uniform(-40, 40), centre[1] + rng.uniform(-50, 50), centre[2] + rng.uniform(-45, 20))
        tbox = _box(shape_zyx, c, (r, r, r))
        tz, ty, tx = _axes_mm(shape_zyx, tbox)
        tsl = tuple(slice(lo, hi) for lo, hi in tbox)
        ball = ((tz - c[0]) ** 2 + (ty - c[1]) ** 2 + (tx - c[2]) ** 2) <= r * r
        ct[tsl][ball & liver[tsl]] = TUMOUR_HU
    # spine (a cylinder behind the centre) and ribs (elliptic shells every 25 mm in z)
    spine_yx = ((y - (cy + 0.26 * ext[1])) ** 2 + (x - cx) ** 2) <= 18.0 ** 2
    ct[:, spine_yx[0]] = BONE_HU
    shell = ((y - cy) / (0.33 * ext[1])) ** 2 + ((x - cx) / (0.42 * ext[2])) ** 2
    rib_yx = ((shell >= 0.90) & (shell <= 0.97))[0]
    z_mm = np.arange(shape_zyx[0]) * SPACING_ZYX_MM[0]
    for zi in np.nonzero((z_mm % 25.0) < 8.0)[0]:
        ct[zi][rib_yx] = BONE_HU
    # noise, one slab at a time (keeps the float32 temporary small)
    for z0 in range(0, shape_zyx[0], 16):
        slab = ct[z0:z0 + 16]
        noise = rng.standard_normal(slab.shape, dtype=np.float32) * NOISE_SIGMA_HU
        slab[...] = np.clip(np.rint(slab + noise), -32768, 32767).astype(np.int16)
    ct.flags.writeable = False
    liver.flags.writeable = False
    return ct, liver


@functools.lru_cache(maxsize=2)
def synthetic_mask(shape_zyx=SHAPE_ZYX, seed: int = 0) -> np.ndarray:
    """Raw-prediction-like mask: liver plus everything above 100 HU (bool, read-only)."""
    ct, liver = synthetic_ct(shape_zyx, seed)
    mask = liver | (ct > MASK_THRESHOLD_HU)
    mask.flags.writeable = False
    return mask
