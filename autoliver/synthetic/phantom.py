"""One synthetic case: anatomy → calibrated liver → vessels and tumours → field of view → voxels.

Pure computation (no files): :func:`make_case` returns the channel arrays, the label map and the
geometry; :func:`render_case` also returns the facts of the case (volumes, tumours, noise).

Field of view rule (anatomy is in mm; the voxel grid follows from it). Like a radiographer, the
generator frames the body: the in-plane field of view is the body's width times a margin drawn
from [1.04, 1.20], kept within 307-461 mm (and never less than the body's depth plus the table),
and the in-plane spacing is that field divided by the matrix size: 0.6-0.9 mm on a 512 matrix,
1.2-1.8 mm on the default 256, 4.8-7.2 mm on 64. Slice spacing is drawn from [1, 5] mm, raised
when needed so that the slices cover the whole liver plus about 20 mm above and below:
spacing_z >= (liver height + ~40 mm) / n_z, so with 100 slices it is about 2-5 mm. A small
``shape`` therefore still shows a complete abdomen and a complete liver, only coarser.

Orientation: the volume is stored as LPS, RAS or LAS (one drawn per case; as in LiTS), by
flipping axes of the canonical array and setting the direction matrix and origin to match.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from autoliver.errors import UserError, choose
from autoliver.io.images import Geometry
from autoliver.synthetic import appearance
from autoliver.synthetic import paint
from autoliver.synthetic import randomize as randomize_
from autoliver.synthetic import tissues as T
from autoliver.synthetic.anatomy import Anatomy, Capsule, Tumour, draw_anatomy, rotation
from autoliver.synthetic.fields import correlate_noise, random_field, smooth3

MODALITIES = ("ct", "dce_mri")
ORIENTATIONS = {"LPS": (1, 1), "RAS": (-1, -1), "LAS": (1, -1)}  # signs of the x and y axes
DEFAULT_SHAPE_ZYX = (100, 256, 256)
CALIBRATION_MM = 4.0
MAX_TUMOURS = T.MAX_TUMOURS
TUMOUR_DIAMETER_MM = (5.0, 80.0)
CT_NOISE_SIGMA_HU = (10.0, 25.0)
Z_MARGIN_MM = 15.0
FOV_XY_MM = (0.6 * 512, 0.9 * 512)  # a 512 matrix at 0.6-0.9 mm
SLICE_SPACING_MM = (1.0, 5.0)
MAX_VOXELS = 160 * 10**6


@dataclass
class Phantom:
    """A rendered case: ``images`` one (z, y, x) int16 array per channel, ``label`` uint8, and
    ``tissue`` the tissue ids of ``paint.py`` (uint8, same grid) for checks and debugging."""

    images: list[np.ndarray]
    label: np.ndarray
    geometry: Geometry
    info: dict
    tissue: np.ndarray


def make_case(rng_or_seed, shape_zyx=DEFAULT_SHAPE_ZYX, modality: str = "ct", randomize=False):
    """``(channels, label, geometry)`` of one random case; see :func:`render_case`."""
    p = render_case(rng_or_seed, shape_zyx, modality, randomize)
    return p.images, p.label, p.geometry


def render_case(rng_or_seed, shape_zyx=DEFAULT_SHAPE_ZYX, modality: str = "ct", randomize=False) -> Phantom:
    """Draw and render one case. ``rng_or_seed``: a ``numpy.random.Generator`` or an int seed.

    The anatomy, liver, tumours and framing are drawn before anything modality-specific, so one
    seed gives the same patient (and the same label) in CT and in DCE-MRI, and the same anatomy
    in millimetres at any ``shape_zyx``. ``randomize``: a generator version 2 or 3 (True: the
    latest; CT only; see :mod:`autoliver.synthetic.randomize`), False: version 1.
    """
    modality = choose("modality", modality, MODALITIES)
    version = randomize_.version_of(randomize)
    if version > 1 and modality != "ct":
        raise UserError("--randomize: only for --modality ct (the DCE-MRI phantoms have no version 2 yet).")
    rng, anat, grid, geometry, orientation, scan = _draw(rng_or_seed, shape_zyx, version)
    tissue = paint.paint(anat, grid, anat.liver_level)
    label = T.label_lut()[tissue]
    if modality == "ct":
        images, facts = _render_ct(rng, anat, grid, tissue, scan)
    else:
        images, facts = _render_mri(rng, anat, grid, tissue)

    if scan is not None:
        sx, sy, sz = randomize_.ORIENTATIONS[orientation]
    else:
        (sx, sy), sz = ORIENTATIONS[orientation], 1
    flip = (slice(None, None, sz), slice(None, None, sy), slice(None, None, sx))
    images = [np.ascontiguousarray(im[flip]) for im in images]
    label = np.ascontiguousarray(label[flip])
    info = _facts(anat, geometry, label, tissue, orientation, modality) | facts
    return Phantom(images, label, geometry, info, np.ascontiguousarray(tissue[flip]))


def case_geometry(rng_or_seed, shape_zyx=DEFAULT_SHAPE_ZYX, randomize=False) -> Geometry:
    """The geometry :func:`render_case` gives this seed and shape, without rendering voxels."""
    return _draw(rng_or_seed, shape_zyx, randomize_.version_of(randomize))[3]


def _draw(rng_or_seed, shape_zyx, version: int = 1):
    shape = check_shape(shape_zyx)
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
    anat = draw_anatomy(rng, randomized=version > 1)
    scan = None
    if version > 1:
        arms, table = randomize_.draw_arms_and_table(rng, anat.a, 0.5 * (anat.b_post - anat.b_ant))
        anat = dataclasses.replace(anat, arms=arms, table=table)
    anat, coarse, liver_coarse = _calibrate_liver(anat)
    anat = _place_vessels_and_tumours(rng, anat, coarse, liver_coarse)
    if version > 1:
        scan = randomize_.draw_scan(rng, version)
    grid, geometry, orientation = _frame(rng, anat, coarse, liver_coarse, shape, scan)
    if version >= 3:  # drawn last: the liver (calibrated without it) lies above the pelvis; same field as version 2
        anat = dataclasses.replace(anat, pelvis=randomize_.draw_pelvis(rng, anat),
                                   bowel_wall=float(rng.uniform(*randomize_.BOWEL_WALL)))
    return rng, anat, grid, geometry, orientation, scan


def check_shape(shape_zyx) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape_zyx)
    if len(shape) != 3 or any(s < 8 or s > 2048 for s in shape):
        raise UserError(f"--shape: must be three sizes Z Y X, each 8..2048 voxels, got {tuple(shape_zyx)}. "
                        "Example: --shape 100 256 256.")
    if math.prod(shape) > MAX_VOXELS:
        raise UserError(f"--shape: at most {MAX_VOXELS // 10**6} million voxels per case (about 40 bytes of "
                        f"memory each while rendering), got {shape} = {math.prod(shape) // 10**6} million. "
                        "Use fewer voxels, e.g. --shape 200 512 512.")
    return shape


# -- liver size ------------------------------------------------------------------------------------

def _coarse_grid(anat: Anatomy) -> paint.Grid:
    lo, hi = paint.liver_box(anat)
    x, y, z = (np.arange(lo[i], hi[i] + CALIBRATION_MM, CALIBRATION_MM, dtype=np.float32) for i in range(3))
    return paint.Grid(x, y, z)


def _calibrate_liver(anat: Anatomy):
    """Scale the liver, then pick its iso-level so that the liver label (after the kidneys,
    gallbladder, IVC and spine have taken their share) holds the target volume, on a 4 mm grid.

    Returns the calibrated anatomy, the coarse grid and the liver mask on it.
    """
    def available(a):
        grid = _coarse_grid(a)
        tissue, (w, f) = paint.paint(a, grid, np.inf, calibration=True)
        return grid, w, f, tissue[w.slices] == T.LIVER

    vox = CALIBRATION_MM**3
    target = anat.liver_target_ml * 1000.0 / vox
    _, _, f, ok = available(anat)
    n0 = int(np.count_nonzero(ok & (f < 0)))
    scale = float(np.clip((target / max(n0, 1)) ** (1.0 / 3.0), 0.75, 1.35))
    anat = dataclasses.replace(anat, liver_scale=scale)
    grid, w, f, ok = available(anat)
    values = np.sort(f[ok])
    k = int(round(target))
    if k >= len(values):
        level = float(values[-1]) + 1.0
    else:
        level = float(0.5 * (values[k - 1] + values[k])) if k > 0 else float(values[0]) - 1.0
    mask = np.zeros(grid.shape_zyx, bool)
    mask[w.slices] = ok & (f < level)
    return dataclasses.replace(anat, liver_level=level), grid, mask


# -- vessels and tumours ---------------------------------------------------------------------------

def _points(grid: paint.Grid, idx) -> np.ndarray:
    """(n, 3) patient XYZ of voxel indices (z, y, x)."""
    return np.stack([grid.x[idx[2]], grid.y[idx[1]], grid.z[idx[0]]], axis=1).astype(np.float64)


def _nearest(points: np.ndarray, target) -> np.ndarray:
    return points[int(np.argmin(((points - np.asarray(target)) ** 2).sum(axis=1)))]


def _place_vessels_and_tumours(rng, anat: Anatomy, grid: paint.Grid, liver: np.ndarray) -> Anatomy:
    depth = ndimage.distance_transform_edt(liver, sampling=CALIBRATION_MM)
    inner = _points(grid, np.nonzero(depth >= 8.0))
    if len(inner) == 0:  # cannot happen for a 1.2 L liver; keep the draw order anyway
        inner = _points(grid, np.nonzero(liver))
    zmin, zmax = inner[:, 2].min(), inner[:, 2].max()
    ix, iy = anat.ivc[0], anat.ivc[1]

    # Portal tree: from the hilum (infero-medial, in front of the IVC) to random points in the liver.
    vessels = []
    nodes = [(_nearest(inner, (ix - 5.0, iy - 30.0, zmin + 0.35 * (zmax - zmin))), 0)]
    for j in rng.choice(len(inner), size=int(rng.integers(8, 13)), replace=len(inner) < 13):
        target = inner[j]
        parent, gen = min(nodes, key=lambda n: float(((n[0] - target) ** 2).sum()))
        r0 = max(1.5, 6.5 * 0.72**gen)
        vessels.append(Capsule(tuple(parent), tuple(target), r0, max(1.2, 0.6 * r0)))
        nodes += [(0.5 * (parent + target), gen + 1), (target, gen + 1)]
    # Hepatic veins: three trunks converging on the IVC under the diaphragm.
    confluence = np.array([ix, iy, zmax - 10.0])
    for offset in ((-90.0, -20.0, -40.0), (-30.0, -60.0, -30.0), (50.0, -50.0, -10.0)):
        end = _nearest(inner, confluence + np.asarray(offset))
        vessels.append(Capsule(tuple(confluence), tuple(end), rng.uniform(4.5, 6.5), 2.0))

    tumours = []
    kinetics = list(appearance.KINETICS_WEIGHTS)
    weights = np.asarray(list(appearance.KINETICS_WEIGHTS.values()))
    liver_idx = np.nonzero(liver)
    depth_in = depth[liver_idx]
    for _ in range(int(rng.integers(0, MAX_TUMOURS + 1))):
        lo, hi = (math.log(v) for v in TUMOUR_DIAMETER_MM)
        diameter = math.exp(rng.uniform(lo, hi))
        radius = diameter / 2.0
        need = min(0.5 * radius, 0.9 * float(depth_in.max()))
        candidates = np.nonzero(depth_in >= need)[0]
        j = candidates[int(rng.integers(len(candidates)))]
        centre = _points(grid, tuple(a[j:j + 1] for a in liver_idx))[0] + rng.uniform(-2.0, 2.0, 3)
        axes = rng.uniform(0.8, 1.2, 3)
        axes /= np.prod(axes) ** (1.0 / 3.0)
        rot = rotation(*rng.uniform(-90.0, 90.0, 3))
        irregularity = rng.uniform(0.05, 0.25)
        step = max(0.6 * radius, 2.5)
        shape_field = random_field(rng, centre - 1.5 * radius, centre + 1.5 * radius, step)
        necrotic = bool(rng.uniform() < 0.5) and diameter > 30.0
        kind = kinetics[int(rng.choice(len(kinetics), p=weights / weights.sum()))]
        ct_contrast = float(rng.uniform(*appearance.CT_CONTRAST_HU))
        mri_contrast = float(rng.uniform(*appearance.MRI_CONTRAST))
        tumours.append(Tumour(tuple(float(v) for v in centre), float(diameter), tuple(float(v) for v in axes), rot,
                              float(irregularity), shape_field, necrotic, kind, ct_contrast, mri_contrast))
    return dataclasses.replace(anat, vessels=tuple(vessels), tumours=tuple(tumours))


# -- field of view ---------------------------------------------------------------------------------

def _ceil_to(v: float, step: float) -> float:
    return math.ceil(v / step) * step


def _round_to(v: float, step: float) -> float:
    return round(v / step) * step


def _frame(rng, anat: Anatomy, coarse: paint.Grid, liver: np.ndarray, shape, scan=None):
    """Choose spacing, position and orientation (see the module docstring for the rule; version 2's
    ``scan`` sets the margin, the orientation and a field cut through the liver)."""
    nz, ny, nx = shape
    orientation = list(ORIENTATIONS)[int(rng.integers(len(ORIENTATIONS)))]
    u_margin, u_x, u_y, u_dz, u_z = rng.uniform(size=5)
    world_offset = rng.uniform((-30.0, -30.0, -400.0), (30.0, 30.0, 100.0))

    width = 2.0 * anat.a * 1.04
    if anat.arms:
        width = 2.0 * max(abs(arm.x) + arm.rx for arm in anat.arms)
    y_lo, y_hi = -anat.b_ant * 1.05, anat.b_post + anat.table_gap + 14.0
    margin = (1.04 + 0.16 * u_margin) if scan is None else scan.fov_margin
    fov_x = float(np.clip(width * margin, *FOV_XY_MM))
    # spacings are multiples of 1/1024 mm and origins of 1/64 mm: exact in NIfTI's float32 header
    s_xy = _ceil_to(max(fov_x / nx, 1.04 * (y_hi - y_lo) / ny), 1.0 / 1024)
    x_centre = (2.0 * u_x - 1.0) * 0.4 * max(nx * s_xy - width, 0.0) / 2.0
    y_centre = 0.5 * (y_lo + y_hi) + (2.0 * u_y - 1.0) * 0.4 * max(ny * s_xy - (y_hi - y_lo), 0.0) / 2.0
    if scan is not None and scan.tight:  # a field narrower than the body, drawn towards the liver
        s_xy = _ceil_to(max(2.0 * anat.a * scan.tight, randomize_.FRAMING["tight_min_mm"]) / nx, 1.0 / 1024)
        zi, yi, xi = np.nonzero(liver)
        x_centre = scan.tight_pull * float(coarse.x[xi].mean())
        y_centre = (1.0 - scan.tight_pull) * y_centre + scan.tight_pull * float(coarse.y[yi].mean())

    zs = coarse.z[np.nonzero(liver.any(axis=(1, 2)))[0]]
    need_lo = float(zs.min()) - CALIBRATION_MM - Z_MARGIN_MM
    need_hi = float(zs.max()) + CALIBRATION_MM + Z_MARGIN_MM
    if scan is not None:
        need_lo, need_hi = need_lo - scan.below_mm, need_hi + scan.above_mm
    if scan is not None and scan.liver_cut:  # the field ends inside the liver
        height = float(zs.max() - zs.min())
        if scan.liver_cut > 0:
            need_hi = float(zs.max()) - scan.liver_cut * height
        else:
            need_lo = float(zs.min()) - scan.liver_cut * height
        u_z = 1.0 if scan.liver_cut > 0 else 0.0  # the field's edge on the cut side
    extent = need_hi - need_lo
    s_lo = max(SLICE_SPACING_MM[0], extent / nz)
    s_z = _ceil_to(s_lo + u_dz * (max(SLICE_SPACING_MM[1], s_lo) - s_lo), 1.0 / 1024)
    z_first = need_lo - u_z * (nz * s_z - extent) + 0.5 * s_z

    def axis(centre_or_first, n, s, is_centre=True):
        first = centre_or_first - 0.5 * (n - 1) * s if is_centre else centre_or_first
        first = _round_to(first, 1.0 / 64)
        return first + s * np.arange(n)

    x = axis(x_centre, nx, s_xy)
    y = axis(y_centre, ny, s_xy)
    z = axis(z_first, nz, s_z, is_centre=False)
    grid = paint.Grid(x.astype(np.float32), y.astype(np.float32), z.astype(np.float32))

    if scan is not None:
        orientation = scan.orientation
        sx, sy, sz = randomize_.ORIENTATIONS[orientation]
    else:
        (sx, sy), sz = ORIENTATIONS[orientation], 1
    offset = [_round_to(v, 1.0 / 64) for v in world_offset]
    origin = (
        float((x[0] if sx > 0 else x[-1]) + offset[0]),
        float((y[0] if sy > 0 else y[-1]) + offset[1]),
        float((z[0] if sz > 0 else z[-1]) + offset[2]),
    )
    direction = (float(sx), 0.0, 0.0, 0.0, float(sy), 0.0, 0.0, 0.0, float(sz))
    geometry = Geometry(spacing=(s_xy, s_xy, s_z), origin=origin, direction=direction, shape_zyx=(nz, ny, nx))
    return grid, geometry, orientation


# -- intensities -----------------------------------------------------------------------------------

def _blur(volume: np.ndarray) -> np.ndarray:
    """Partial volume: a slight blur (sigma 0.5 voxel in-plane, 0.35 along z) before noise."""
    for axis, sigma in ((0, 0.35), (1, 0.5), (2, 0.5)):
        smooth3(volume, axis, sigma)
    return volume


def _liver_texture(rng, anat: Anatomy, grid: paint.Grid, tissue: np.ndarray):
    """(window, texture, in_liver): a smooth unit-variance pattern on the liver and its tumours,
    at two scales (about 15 mm and 6 mm)."""
    w = paint.liver_window(anat, grid)
    lo, hi = paint.liver_box(anat)
    fields = [random_field(rng, lo, hi, step) for step in (15.0, 6.0)]
    if w is None:
        return None
    xs, ys, zs = w.X[0, 0], w.Y[0, :, 0], w.Z[:, 0, 0]
    texture = (fields[0].sample(xs, ys, zs) + fields[1].sample(xs, ys, zs)) * np.float32(1.0 / math.sqrt(2.0))
    in_liver = T.label_lut()[tissue[w.slices]] > 0
    return w, texture, in_liver


def _render_ct(rng, anat, grid, tissue, scan=None):
    if scan is None:
        lut = appearance.draw_ct_lut(rng, anat.tumours)
        texture_hu = rng.uniform(2.0, 5.0)
        sigma = rng.uniform(*CT_NOISE_SIGMA_HU)
        white_fraction = rng.uniform(0.3, 0.7)
        corr_sigma_vox = rng.uniform(0.7, 1.4)
    else:
        v = scan.values
        lut = randomize_.ct_lut(rng, scan, anat.tumours)
        texture_hu, sigma = v["liver_texture_hu"], v["noise_sigma_hu"]
        white_fraction, corr_sigma_vox = v["noise_white_fraction"], v["noise_correlation_vox"]
    image = lut[tissue]
    tex = _liver_texture(rng, anat, grid, tissue)
    if tex is not None:
        w, texture, in_liver = tex
        image[w.slices] += np.where(in_liver, np.float32(texture_hu) * texture, np.float32(0))
    if scan is None:
        _blur(image)
    else:
        _scanner(rng, scan, grid, tissue, image)
    # Noise = white part + its blurred copy (one draw; the mix has CT's mid-frequency texture),
    # rescaled to standard deviation sigma.
    white = rng.standard_normal(image.shape, dtype=np.float32)
    noise = correlate_noise(white, corr_sigma_vox)
    noise *= np.float32(math.sqrt(1.0 - white_fraction))
    white *= np.float32(math.sqrt(white_fraction))
    noise += white
    noise *= np.float32(sigma / float(noise.std(dtype=np.float64)))
    image += noise
    if scan is not None:
        image *= np.float32(scan.values["hu_gain"])
        image += np.float32(scan.values["hu_offset"])
    out = np.clip(np.rint(image), -1024, 3071).astype(np.int16)
    facts = {"liver_hu": float(lut[T.LIVER]), "spleen_hu": float(lut[T.SPLEEN]), "noise_sigma_hu": float(sigma)}
    if scan is not None:
        facts |= {"generator_version": scan.version, "phase": scan.phase, "unrealistic_contrast": scan.wild,
                  "fatty_liver_hu": round(scan.steatosis_hu, 2), "oral_contrast": scan.oral_contrast,
                  "liver_cut": round(scan.liver_cut, 3), "arms": len(anat.arms) > 0, "table": anat.table,
                  "sharpen": round(scan.sharpen, 3),
                  "scanner": {k: round(float(val), 3) for k, val in scan.values.items()},
                  "tissue_hu": {T.NAMES[t]: round(float(lut[t]), 2) for t in range(len(T.NAMES))
                                if scan.version >= 3 or t not in T.VERSION3_TISSUES}}
    return [out], facts


def _scanner(rng, scan, grid: paint.Grid, tissue: np.ndarray, image: np.ndarray) -> None:
    """Version 2's scanner, before noise: cupping, streaks through bone, partial-volume blur and
    the reconstruction kernel (in place)."""
    v = scan.values
    if v["cupping_hu"]:
        r2 = (grid.x[None, None, :] / 200.0) ** 2 + (grid.y[None, :, None] / 200.0) ** 2  # centre of the field
        image += np.float32(v["cupping_hu"]) * np.exp(-r2).astype(np.float32)
    bone = np.isin(tissue, (T.BONE_CORTEX, T.RIB))
    points = np.argwhere(bone[:, ::4, ::4]) if v["streaks"] else np.zeros((0, 3), int)
    for _ in range(v["streaks"] if len(points) else 0):
        zi, yi, xi = points[int(rng.integers(len(points)))]
        y0, x0 = grid.y[4 * yi], grid.x[4 * xi]
        angle = rng.uniform(0.0, np.pi)
        amp = np.float32(rng.uniform(*randomize_.SCANNER["streak_hu"]) * rng.choice((-1.0, 1.0)))
        width = rng.uniform(*randomize_.SCANNER["streak_width_mm"])
        half = int(rng.integers(2, 12))  # slices either side of the bone's slice
        dist = (grid.x[None, :] - x0) * np.sin(angle) - (grid.y[:, None] - y0) * np.cos(angle)
        streak = amp * np.exp(-0.5 * (dist / width) ** 2).astype(np.float32)
        image[max(0, zi - half):zi + half + 1] += streak[None]
    for axis, sigma in ((0, v["blur_z_vox"]), (1, v["blur_xy_vox"]), (2, v["blur_xy_vox"])):
        image[...] = ndimage.gaussian_filter1d(image, sigma, axis=axis, mode="nearest")
    if scan.sharpen:  # a sharp kernel: unsharp masking (overshoot at edges)
        soft = ndimage.gaussian_filter(image, (0.0, 1.0, 1.0), mode="nearest")
        image += np.float32(scan.sharpen) * (image - soft)


def _render_mri(rng, anat, grid, tissue):
    luts = appearance.draw_mri_luts(rng, anat.tumours)
    scale = rng.uniform(300.0, 600.0)  # arbitrary units of the liver before contrast
    gains = rng.uniform(0.9, 1.1, len(appearance.MRI_PHASES))
    texture_amp = rng.uniform(0.07, 0.11)
    bias_amp = rng.uniform(0.1, 0.25)
    noise_rel = rng.uniform(0.015, 0.03)
    # Multiplicative, identical in every phase: coil sensitivity (bias) and liver texture.
    bias = random_field(rng, (-250.0, -250.0, -450.0), (250.0, 250.0, 350.0), 120.0).sample(grid.x, grid.y, grid.z)
    common = np.float32(scale) * (1.0 + np.float32(bias_amp) * np.tanh(bias))
    tex = _liver_texture(rng, anat, grid, tissue)
    if tex is not None:
        w, texture, in_liver = tex
        common[w.slices] *= np.where(in_liver, 1.0 + np.float32(texture_amp) * texture, np.float32(1))
    sigma = np.float32(noise_rel * scale)
    images = []
    for p in range(len(appearance.MRI_PHASES)):
        s = luts[p][tissue] * common * np.float32(gains[p])
        _blur(s)
        # Rician magnitude noise: |signal + complex Gaussian|
        re = s + sigma * rng.standard_normal(s.shape, dtype=np.float32)
        im = sigma * rng.standard_normal(s.shape, dtype=np.float32)
        images.append(np.clip(np.rint(np.sqrt(re * re + im * im)), 0, 32767).astype(np.int16))
    facts = {"mri_scale": float(scale), "mri_noise_sigma": float(sigma)}
    return images, facts


# -- facts -----------------------------------------------------------------------------------------

def _facts(anat, geometry, label, tissue, orientation, modality) -> dict:
    vox_ml = float(np.prod(geometry.spacing)) / 1000.0
    counts = np.bincount(tissue.ravel(), minlength=T.NUM_TISSUES)
    tumours = []
    for i, t in enumerate(anat.tumours):
        n = int(counts[T.TUMOUR + i] + counts[T.TUMOUR_CORE + i])
        tumours.append({"diameter_mm": round(t.diameter_mm, 2), "volume_ml": round(n * vox_ml, 3),
                        "kinetics": t.kinetics, "ct_contrast_hu": round(t.ct_contrast_hu, 2),
                        "mri_contrast": round(t.mri_contrast, 4), "necrotic": t.necrotic})
    return {
        "modality": modality,
        "orientation": orientation,
        "shape_zyx": list(geometry.shape_zyx),
        "spacing_zyx_mm": list(geometry.spacing_zyx_mm),
        "liver_target_ml": round(anat.liver_target_ml, 1),
        "liver_ml": round(float(np.count_nonzero(label)) * vox_ml, 1),
        "tumour_ml": round(float(np.count_nonzero(label == 2)) * vox_ml, 2),
        "spleen_ml": round(float(counts[T.SPLEEN]) * vox_ml, 1),
        "tumours": tumours,
    }
