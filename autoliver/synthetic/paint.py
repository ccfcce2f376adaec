"""Rasterise an :class:`~autoliver.synthetic.anatomy.Anatomy` into a map of tissue ids.

The grid is separable (one coordinate vector per axis, patient mm), so every implicit shape is
evaluated by broadcasting 1D coordinates, and each organ only inside its own bounding window.
Tissues are painted in a fixed order; a later tissue replaces an earlier one only where the
order below says it may (organs indent each other, nothing overlaps). Intensities come later,
from a lookup table per modality (``appearance.py``), so CT and DCE-MRI share one anatomy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autoliver.synthetic.anatomy import Anatomy, Capsule
from autoliver.synthetic.tissues import (
    AORTA, BLADDER, BONE_CORTEX, BONE_MARROW, BOWEL, BOWEL_CONTENT, BOWEL_GAS, CARTILAGE, CSF, DISC, FAT, GALLBLADDER,
    HEART, HEPATIC_VESSEL, IVC, KIDNEY_CORTEX, KIDNEY_MEDULLA, LIVER, LUNG, MAX_TUMOURS, MUSCLE, NUM_TISSUES,
    PELVIC_ORGAN, RENAL_SINUS, RIB, SPLEEN, STOMACH_CONTENT, STOMACH_GAS, STOMACH_WALL, TABLE, TUMOUR, TUMOUR_CORE,
    VISCERAL_FAT,
)

# What the liver may grow over (the stomach and bowel yield to it).
_LIVER_MAY_REPLACE = np.zeros(NUM_TISSUES, bool)
_LIVER_MAY_REPLACE[[VISCERAL_FAT, BOWEL, BOWEL_CONTENT, BOWEL_GAS, STOMACH_WALL, STOMACH_CONTENT, STOMACH_GAS]] = True
_IN_LIVER = np.zeros(NUM_TISSUES, bool)
_IN_LIVER[[LIVER, HEPATIC_VESSEL]] = True


@dataclass(frozen=True)
class Window:
    """A box of the grid: ``slices`` into the (z, y, x) volume and broadcastable X, Y, Z (mm)."""

    slices: tuple[slice, slice, slice]
    X: np.ndarray  # (1, 1, nx)
    Y: np.ndarray  # (1, ny, 1)
    Z: np.ndarray  # (nz, 1, 1)


@dataclass(frozen=True, eq=False)
class Grid:
    """Voxel centres in patient mm along each axis (increasing); arrays are (z, y, x)."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return len(self.z), len(self.y), len(self.x)

    def window(self, lo_xyz=None, hi_xyz=None) -> Window | None:
        """The part of the grid inside [lo, hi] (mm); the whole grid by default; None if empty."""
        sl = []
        for axis, c in ((2, self.z), (1, self.y), (0, self.x)):
            i0 = 0 if lo_xyz is None else int(np.searchsorted(c, lo_xyz[axis], "left"))
            i1 = len(c) if hi_xyz is None else int(np.searchsorted(c, hi_xyz[axis], "right"))
            if i1 <= i0:
                return None
            sl.append(slice(i0, i1))
        return Window(tuple(sl), self.x[sl[2]][None, None, :], self.y[sl[1]][None, :, None],
                      self.z[sl[0]][:, None, None])


def _paint(tissue: np.ndarray, w: Window, mask: np.ndarray, value: int, may_replace: np.ndarray | None = None):
    view = tissue[w.slices]
    if may_replace is not None:
        mask = mask & may_replace[view]
    np.copyto(view, np.uint8(value), where=mask)


def _along_z(mask: np.ndarray, w: Window) -> np.ndarray:
    """A mask that does not depend on Z, repeated (as a view) along the window's Z."""
    mask = mask.reshape(mask.shape[-2:])
    return np.broadcast_to(mask[None], (len(w.Z), *mask.shape))


# -- body wall -------------------------------------------------------------------------------------

def _inside_shell(anat: Anatomy, w: Window, inset_mm: float, b_post: float) -> np.ndarray:
    """Inside the body outline shrunk by ``inset_mm`` (anterior/lateral) with the back at ``b_post``."""
    z = w.Z[:, 0, 0]
    a = (anat.width(z) - inset_mm).astype(np.float32)[:, None, None]
    b = (anat.depth_ant(z) - inset_mm).astype(np.float32)[:, None, None]
    y = w.Y[0, :, 0]
    back = (np.maximum(y, 0) / np.float32(b_post)) ** np.float32(anat.q_back)
    py = np.where(w.Y < 0, (w.Y / b) ** 2, back[None, :, None])
    return (w.X / a) ** 2 + py <= 1.0


def inside_cavity(anat: Anatomy, w: Window, shrink_mm: float = 0.0) -> np.ndarray:
    """The abdominal/thoracic cavity: inside the muscle wall, minus what bulges into it from the
    back — the vertebral body with the diaphragm's crura, and the paraspinal muscles behind the
    transverse processes (the kidneys sit in the gutters on either side)."""
    shell = _inside_shell(anat, w, anat.t_fat + anat.t_muscle + shrink_mm, anat.cavity_b_post - shrink_mm)
    rx, ry = anat.r_vb[0] + 12.0 + shrink_mm, anat.r_vb[1] + 6.0 + shrink_mm
    spine = (w.X / np.float32(rx)) ** 2 + ((w.Y - np.float32(anat.y_vb)) / np.float32(ry)) ** 2 < 1.0
    px, py = anat.paraspinal_w + shrink_mm, anat.y_spinous_tip - anat.y_vb - 5.0 + shrink_mm
    muscles = (w.X / np.float32(px)) ** 2 + ((w.Y - np.float32(anat.y_spinous_tip)) / np.float32(py)) ** 2 < 1.0
    return shell & ~spine & ~muscles


def _body(anat: Anatomy, grid: Grid, tissue: np.ndarray) -> None:
    w = grid.window()
    table_y = np.float32(anat.b_post + anat.table_gap) - w.X**2 / np.float32(3000.0)  # a cradle
    table = (w.Y >= table_y) & (w.Y < table_y + 8.0) & (np.abs(w.X) < 210.0)
    if anat.table:
        _paint(tissue, w, _along_z(table, w), TABLE)
    for arm in anat.arms:  # version 2: arms down beside the body (fat, muscle, humerus)
        r2 = ((w.X - np.float32(arm.x)) / np.float32(arm.rx)) ** 2 + ((w.Y - np.float32(arm.y)) / np.float32(arm.ry)) ** 2
        inner = ((w.X - np.float32(arm.x)) / np.float32(arm.rx - arm.fat_mm)) ** 2 + \
            ((w.Y - np.float32(arm.y)) / np.float32(arm.ry - arm.fat_mm)) ** 2
        bone2 = ((w.X - np.float32(arm.x)) ** 2 + (w.Y - np.float32(arm.y)) ** 2) / np.float32(arm.humerus_r ** 2)
        _paint(tissue, w, _along_z(r2 < 1.0, w), FAT)
        _paint(tissue, w, _along_z(inner < 1.0, w), MUSCLE)
        _paint(tissue, w, _along_z(bone2 < 1.0, w), BONE_CORTEX)
        _paint(tissue, w, _along_z(bone2 < 0.55, w), BONE_MARROW)
    _paint(tissue, w, _inside_shell(anat, w, 0.0, anat.b_post), FAT)
    _paint(tissue, w, _inside_shell(anat, w, anat.t_fat, anat.b_post - anat.t_back), MUSCLE)
    cavity = inside_cavity(anat, w)
    dome = anat.dome(w.X, w.Y)
    abdomen = cavity & (w.Z < dome)
    _paint(tissue, w, abdomen, VISCERAL_FAT)
    _paint(tissue, w, cavity & (w.Z >= dome + np.float32(anat.diaphragm_mm)), LUNG)
    # Bowel loops: a smooth random field above a threshold that rises towards the liver's height.
    g = anat.bowel_field.sample(grid.x, grid.y, grid.z)
    thr = anat.bowel_threshold + np.clip((w.Z - anat.bowel_top_z) / 25.0, 0.0, 4.0)
    _paint(tissue, w, abdomen & (g > thr), BOWEL)
    if anat.bowel_wall:  # version 3: a wall around fluid, faeces or oral contrast
        _paint(tissue, w, abdomen & (g > thr + np.float32(anat.bowel_wall)), BOWEL_CONTENT)
    _paint(tissue, w, abdomen & (g > thr + np.float32(anat.bowel_gas_offset)), BOWEL_GAS)


# -- organs ----------------------------------------------------------------------------------------

def _ellipsoid_organ(anat, grid, tissue, ell, value, *, region: str, may_replace=None, pad=0.0):
    w = grid.window(*ell.box(pad))
    if w is None:
        return None, None
    r2 = ell.radius2(w.X, w.Y, w.Z)
    mask = (r2 < 1.0) & inside_cavity(anat, w)
    dome = anat.dome(w.X, w.Y)
    mask &= (w.Z < dome) if region == "abdomen" else (w.Z >= dome + np.float32(anat.diaphragm_mm))
    _paint(tissue, w, mask, value, may_replace)
    return w, (r2, mask)


def _psoas(anat, grid, tissue):
    for side in (-1.0, 1.0):
        cx = side * (anat.r_vb[0] + 24.0)
        w = grid.window((cx - 40.0, anat.y_vb - 40.0, -1e4), (cx + 40.0, anat.y_vb + 40.0, anat.psoas_top_z))
        if w is None:
            continue
        r = np.clip(5.0 + 0.14 * (anat.psoas_top_z - w.Z), 0.0, 24.0)
        xc = side * (anat.r_vb[0] + 0.8 * r + 1.0)
        _paint(tissue, w, (w.X - xc) ** 2 + (w.Y - np.float32(anat.y_vb + 2.0)) ** 2 < r**2, MUSCLE)


def _stomach(anat, grid, tissue):
    ell = anat.stomach
    w, res = _ellipsoid_organ(anat, grid, tissue, ell, STOMACH_CONTENT, region="abdomen")
    if w is None:
        return
    r2, mask = res
    inner = (1.0 - 4.0 / min(ell.axes)) ** 2
    _paint(tissue, w, mask & (r2 >= inner), STOMACH_WALL)
    gas = mask & (r2 < inner) & ((w.Y - np.float32(ell.centre[1])) / np.float32(ell.axes[1]) < -anat.stomach_gas_level)
    _paint(tissue, w, gas, STOMACH_GAS)


def liver_shape(anat: Anatomy, w: Window) -> tuple[np.ndarray, np.ndarray]:
    """(f, allowed) on a window: f < level inside the liver shape (≈ signed distance, mm); allowed =
    inside the abdominal cavity (0.5 mm from its wall) and below the diaphragm."""
    fx, fy, fz = (f.sample(w.X[0, 0], w.Y[0, :, 0], w.Z[:, 0, 0]) for f in anat.liver_warp)
    amp = np.float32(anat.liver_warp_mm)
    X, Y, Z = w.X + amp * fx, w.Y + amp * fy, w.Z + amp * fz
    dists = []
    for lobe in anat.liver_lobes:
        lobe = lobe.scaled(anat.liver_scale, anat.liver_hinge)
        scale = np.float32(3.0 / sum(1.0 / a for a in lobe.axes))
        dists.append((np.sqrt(lobe.radius2(X, Y, Z)) - 1.0) * scale)
    k = np.float32(anat.liver_blend_mm)
    m = np.minimum.reduce(dists)
    acc = np.zeros_like(m)
    for d in dists:
        acc += np.exp((m - d) / k)
    f = m - k * np.log(acc)
    allowed = inside_cavity(anat, w, 0.5) & (w.Z < anat.dome(w.X, w.Y))
    return f, allowed


def liver_box(anat: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """(lo_xyz, hi_xyz) mm: where the liver can be, whatever its iso-level."""
    lo, hi = zip(*(lobe.scaled(anat.liver_scale, anat.liver_hinge).box(anat.liver_blend_mm + 2 * anat.liver_warp_mm)
                   for lobe in anat.liver_lobes))
    return np.min(lo, axis=0), np.max(hi, axis=0)


def liver_window(anat: Anatomy, grid: Grid) -> Window | None:
    return grid.window(*liver_box(anat))


def _liver(anat, grid, tissue, level):
    w = liver_window(anat, grid)
    if w is None:
        return None
    f, allowed = liver_shape(anat, w)
    _paint(tissue, w, allowed & (f < level), LIVER, _LIVER_MAY_REPLACE)
    return w, f


def _capsule_mask(c: Capsule, w: Window) -> np.ndarray:
    p0, d = np.asarray(c.p0, np.float32), np.asarray(c.p1, np.float32) - np.asarray(c.p0, np.float32)
    dx, dy, dz = w.X - p0[0], w.Y - p0[1], w.Z - p0[2]
    t = np.clip((dx * d[0] + dy * d[1] + dz * d[2]) / np.float32(max(float(d @ d), 1e-6)), 0.0, 1.0)
    r = np.float32(c.r0) + t * np.float32(c.r1 - c.r0)
    return (dx - t * d[0]) ** 2 + (dy - t * d[1]) ** 2 + (dz - t * d[2]) ** 2 < r * r


def _hepatic_vessels(anat, grid, tissue):
    only_liver = np.zeros(NUM_TISSUES, bool)
    only_liver[LIVER] = True
    for c in anat.vessels:
        _capsule_soft(grid, tissue, c, HEPATIC_VESSEL, only_liver)


def _spleen(anat, grid, tissue):
    ell = anat.spleen
    w = grid.window(*ell.box(12.0))
    if w is None:
        return
    u, v, t = ell.local(w.X, w.Y, w.Z)
    bent = u + np.float32(anat.spleen_bend) * v * v  # crescent: the tips curve towards the midline
    mask = (bent * bent + v * v + t * t < 1.0) & inside_cavity(anat, w) & (w.Z < anat.dome(w.X, w.Y))
    _paint(tissue, w, mask, SPLEEN)


def _kidneys(anat, grid, tissue):
    for side, ell in zip((-1.0, 1.0), anat.kidneys):
        w = grid.window(*ell.box())
        if w is None:
            continue
        u, v, t = ell.local(w.X, w.Y, w.Z)
        r2 = u * u + v * v + t * t
        mask = (r2 < 1.0) & inside_cavity(anat, w)
        _paint(tissue, w, mask, KIDNEY_CORTEX)
        _paint(tissue, w, mask & (r2 < 0.72), KIDNEY_MEDULLA)
        # renal sinus: an oval of fat at the hilum, open towards the spine (the local x axis points
        # medially for the right kidney, laterally for the left one)
        medial = -side * u
        sinus = ((medial - 0.6) / 0.5) ** 2 + (v / 0.38) ** 2 + (t / 0.5) ** 2 < 1.0
        _paint(tissue, w, mask & sinus, RENAL_SINUS)


def _great_vessels(anat, grid, tissue):
    ax, ay, ar = anat.aorta
    bottom = -1e4 if anat.pelvis is None else anat.pelvis.bifurcation_z  # version 3: the iliac vessels go on
    w = grid.window((ax - ar, ay - ar, bottom), (ax + ar, ay + ar, 1e4))
    if w is not None:
        m = (w.X - np.float32(ax)) ** 2 + (w.Y - np.float32(ay)) ** 2 < ar * ar
        _paint(tissue, w, _along_z(m, w), AORTA)
    ix, iy, hw, hd = anat.ivc
    bottom = -1e4 if anat.pelvis is None else anat.pelvis.bifurcation_z - 15.0
    w = grid.window((ix - hw, iy - hd, bottom), (ix + hw, iy + hd, anat.dome_z + 10.0))
    if w is not None:
        m = ((w.X - np.float32(ix)) / hw) ** 2 + ((w.Y - np.float32(iy)) / hd) ** 2 < 1.0
        _paint(tissue, w, _along_z(m, w), IVC)


# -- pelvis (generator version 3) -----------------------------------------------------------------

_SOFT_CONTENTS = np.zeros(NUM_TISSUES, bool)  # what the pelvis's muscles and organs may take over
_SOFT_CONTENTS[[VISCERAL_FAT, BOWEL, BOWEL_CONTENT, BOWEL_GAS]] = True
_FAT = np.arange(NUM_TISSUES) == FAT
_PELVIC_MAY_REPLACE = _SOFT_CONTENTS.copy()
_PELVIC_MAY_REPLACE[[MUSCLE, FAT]] = True


def _sacrum(pv, y_vb: float, r_vb, z):
    """Centre Y, half-width and half-depth (mm) of the sacrum at heights ``z`` (it tilts backwards
    and narrows towards the coccyx); half-width 0 outside it."""
    span = max(pv.sacrum_z - pv.pubis_z - 30.0, 1.0)
    s = np.clip((pv.sacrum_z - z) / span, 0.0, None)
    centre = y_vb + 0.35 * (pv.sacrum_z - np.minimum(z, pv.sacrum_z))
    half_w = np.where(s <= 1.0, (r_vb[0] + 25.0) * (1.0 - 0.65 * np.minimum(s, 1.0)), 0.0)
    return centre.astype(np.float32), half_w.astype(np.float32), np.float32(r_vb[1])


def _bone(tissue, w, inside: np.ndarray, marrow: np.ndarray | None, keep: np.ndarray) -> None:
    """Cortex where ``inside`` (and ``keep``), marrow where ``marrow``."""
    _paint(tissue, w, inside & keep, BONE_CORTEX)
    if marrow is not None:
        _paint(tissue, w, marrow & keep, BONE_MARROW)


def _capsule_window(grid: Grid, c: Capsule) -> Window | None:
    pad = max(c.r0, c.r1)
    return grid.window(np.minimum(c.p0, c.p1) - pad, np.maximum(c.p0, c.p1) + pad)


def _capsule_soft(grid, tissue, c: Capsule, value: int, may_replace: np.ndarray) -> None:
    w = _capsule_window(grid, c)
    if w is not None:
        _paint(tissue, w, _capsule_mask(c, w), value, may_replace)


def _capsule_bone(anat, grid, tissue, c: Capsule, cortex_mm: float = 3.0) -> None:
    w = _capsule_window(grid, c)
    if w is None:
        return
    body = _inside_shell(anat, w, 2.0, anat.b_post - 2.0)
    inner = Capsule(c.p0, c.p1, max(c.r0 - cortex_mm, 0.5), max(c.r1 - cortex_mm, 0.5))
    _bone(tissue, w, _capsule_mask(c, w), _capsule_mask(inner, w), body)


def _basin(anat, w: Window):
    """(basin, yc, half_w, half_d, sacrum) on a window below the iliac crests: the pelvic basin between
    the iliac wings (an ellipse from the front wall to the sacrum, narrowing to the pubis; nothing
    below the pelvic floor), its centre Y and half-axes, and the sacrum's (centre Y, half-width,
    half-depth) per slice."""
    pv = anat.pelvis
    z = w.Z[:, 0, 0]
    t = np.clip((pv.crest_z - z) / (pv.crest_z - pv.pubis_z), 0.0, 1.0).astype(np.float32)[:, None, None]
    half_w = np.float32(pv.wing_x) * (1.0 - np.float32(1.0 - pv.floor_share) * t)
    front = -(anat.depth_ant(z) - anat.t_fat - anat.t_muscle).astype(np.float32)[:, None, None]
    sacrum = _sacrum(pv, anat.y_vb, anat.r_vb, z)
    sac_y, sac_w, sac_d = sacrum
    back = np.where(sac_w > 0, sac_y - sac_d, np.float32(anat.y_vb - anat.r_vb[1] - 6.0))[:, None, None]
    yc, half_d = 0.5 * (front + back), 0.5 * (back - front)
    basin = ((w.X / half_w) ** 2 + ((w.Y - yc) / half_d) ** 2 < 1.0) & (w.Z > np.float32(pv.pubis_z - 35.0))
    return basin & (w.Z <= np.float32(pv.crest_z)), yc, half_w, half_d, sacrum


def _pelvis(anat, grid, tissue):
    """The pelvis below the iliac crests: the cavity narrows to the pelvic basin between the iliac
    wings, the rest becomes muscle (iliacus, gluteal muscles); bones, bladder, prostate or uterus,
    rectum and iliac vessels in it."""
    pv = anat.pelvis
    w = grid.window((-1e4, -1e4, -1e4), (1e4, 1e4, pv.crest_z))
    if w is None:
        return
    z = w.Z[:, 0, 0]
    basin, yc, half_w, half_d, (sac_y, sac_w, sac_d) = _basin(anat, w)
    # muscles around the basin (iliacus, gluteal muscles) and fat between them and the body wall
    g = np.float32(pv.muscle_mm)
    muscles = (w.X / (half_w + g)) ** 2 + ((w.Y - yc) / (half_d + g)) ** 2 < 1.0
    cavity = inside_cavity(anat, w) & ~basin
    _paint(tissue, w, cavity & ~muscles, FAT, _SOFT_CONTENTS)
    _paint(tissue, w, cavity & (muscles | (w.Z < np.float32(pv.pubis_z - 35.0))), MUSCLE, _SOFT_CONTENTS | _FAT)
    back = (yc + half_d)[:, 0, 0]
    front = (yc - half_d)[:, 0, 0]

    # soft organs of the basin (before the bones, which they never replace)
    def y_at(zz):  # the back of the basin at height zz
        return float(np.interp(zz, z, back))

    top, bottom = pv.sacrum_z - 30.0, pv.pubis_z - 30.0
    r = pv.rectum_r
    rectum = Capsule((0.0, y_at(top) - r - 2.0, top), (0.0, y_at(bottom) - r - 2.0, bottom), r, r)
    _capsule_soft(grid, tissue, rectum, BOWEL, _PELVIC_MAY_REPLACE)
    _capsule_soft(grid, tissue, Capsule(rectum.p0, rectum.p1, r - 3.0, r - 3.0), BOWEL_CONTENT, _PELVIC_MAY_REPLACE)
    organs = np.zeros(NUM_TISSUES, bool)
    organs[[VISCERAL_FAT, BOWEL, BOWEL_CONTENT, BOWEL_GAS, MUSCLE]] = True
    if pv.bladder is not None:
        ell = pv.bladder
        wb = grid.window(*ell.box())
        if wb is not None:
            rb = ell.radius2(wb.X, wb.Y, wb.Z)
            mask = (rb < 1.0) & _basin(anat, wb)[0]
            _paint(tissue, wb, mask, MUSCLE, organs)  # the wall …
            _paint(tissue, wb, mask & (rb < (1.0 - 3.0 / min(ell.axes)) ** 2), BLADDER, organs)  # … and urine
    ell = pv.pelvic_organ
    wo = grid.window(*ell.box())
    if wo is not None:
        organs[MUSCLE] = False  # not over the bladder's wall
        _paint(tissue, wo, (ell.radius2(wo.X, wo.Y, wo.Z) < 1.0) & _basin(anat, wo)[0], PELVIC_ORGAN, organs)

    # iliac arteries and veins, from the aortic and caval bifurcations to the groins
    ax, ay, ar = anat.aorta
    ix, iy = anat.ivc[0], anat.ivc[1]
    for side in (-1.0, 1.0):
        for (x0, y0, z0), rad, value, dy in (((ax, ay, pv.bifurcation_z), pv.iliac_artery_r, AORTA, 0.0),
                                             ((ix, iy, pv.bifurcation_z - 15.0), pv.iliac_vein_r, IVC, 8.0)):
            split = (side * (pv.hip_x * 0.55 - dy), pv.hip_y + 10.0 + dy, pv.crest_z - 45.0)
            groin = (side * (pv.hip_x - 5.0 - dy), pv.hip_y - pv.head_r - 8.0 + dy, pv.hip_z + 5.0)
            deep = (side * (pv.hip_x * 0.5 - dy), y_at(pv.hip_z + 30.0) - 15.0 + dy, pv.hip_z + 30.0)
            for c in (Capsule((x0, y0, z0), split, rad, rad), Capsule(split, groin, rad * 0.85, rad * 0.8),
                      Capsule(split, deep, rad * 0.7, rad * 0.6)):
                _capsule_soft(grid, tissue, c, value, _PELVIC_MAY_REPLACE)

    # bones: iliac wings (a band just outside the basin, behind its widest point, above the hips) …
    body = _inside_shell(anat, w, anat.t_fat, anat.b_post - anat.t_back)
    wing = np.float32(pv.wing_mm)
    outer = (w.X / (half_w + wing)) ** 2 + ((w.Y - yc) / (half_d + wing)) ** 2 < 1.0
    mid = (w.X / (half_w + 0.5 * wing)) ** 2 + ((w.Y - yc) / (half_d + 0.5 * wing)) ** 2
    medial = np.maximum(sac_w - 4.0, np.float32(anat.r_vb[0] + 12.0))[:, None, None]
    band = outer & ~basin & (w.Y > yc - 0.15 * half_d) & (np.abs(w.X) > medial) & \
        (w.Z > np.float32(pv.hip_z + 0.6 * pv.head_r))
    marrow = band & (np.abs(np.sqrt(mid) - 1.0) < np.float32(0.25 * pv.wing_mm) / half_w) if pv.wing_mm > 6.0 else None
    _bone(tissue, w, band, marrow, body)
    # … the sacrum …
    sac = (w.X / np.maximum(sac_w[:, None, None], 1e-3)) ** 2 + ((w.Y - sac_y[:, None, None]) / sac_d) ** 2
    _bone(tissue, w, (sac < 1.0) & (sac_w[:, None, None] > 0), (sac < 0.6) & (sac_w[:, None, None] > 0), body)
    # … hips (femoral heads, necks, shafts), acetabula, pubic bones and ischia
    for side in (-1.0, 1.0):
        head = (side * pv.hip_x, pv.hip_y, pv.hip_z)
        hr = pv.head_r
        wh = grid.window(np.asarray(head) - hr - 12.0, np.asarray(head) + hr + 12.0)
        if wh is not None:
            d2 = ((wh.X - np.float32(head[0])) ** 2 + (wh.Y - np.float32(head[1])) ** 2
                  + (wh.Z - np.float32(head[2])) ** 2)
            medial = side * wh.X < side * np.float32(head[0]) + np.float32(0.3 * hr)
            cup = (d2 > (hr + 2.0) ** 2) & (d2 < (hr + 11.0) ** 2) & medial
            _bone(tissue, wh, cup, cup & (d2 > (hr + 5.0) ** 2) & (d2 < (hr + 8.0) ** 2), np.ones_like(cup))
            _bone(tissue, wh, d2 < hr * hr, d2 < (hr - 3.0) ** 2, np.ones_like(d2, dtype=bool))
        trochanter = (side * (pv.hip_x + 45.0), pv.hip_y + 5.0, pv.hip_z - 15.0)
        symphysis = (side * 4.0, float(np.interp(pv.pubis_z, z, front)) + 12.0, pv.pubis_z)
        for c in (Capsule(head, trochanter, 15.0, 17.0),
                  Capsule(trochanter, (side * (pv.hip_x + 30.0), pv.hip_y, pv.hip_z - 400.0), 15.0, 13.0),
                  Capsule((side * (pv.hip_x - 10.0), pv.hip_y - 12.0, pv.hip_z - 5.0), symphysis, 10.0, 9.0),
                  Capsule((side * pv.hip_x * 0.95, pv.hip_y + 15.0, pv.hip_z - 10.0),
                          (side * pv.hip_x * 0.75, pv.hip_y + 40.0, pv.hip_z - 60.0), 13.0, 11.0)):
            _capsule_bone(anat, grid, tissue, c)


# -- skeleton --------------------------------------------------------------------------------------

def _spine(anat, grid, tissue):
    rx, ry = anat.r_vb
    yc = anat.y_vb + ry + anat.canal_r + 1.0  # canal centre
    bottom = -1e4 if anat.pelvis is None else anat.pelvis.sacrum_z  # version 3: the sacrum below
    w = grid.window((-50.0, anat.y_vb - ry - 1.0, bottom), (50.0, anat.y_spinous_tip + 1.0, 1e4))
    if w is None:
        return
    X, Y = w.X[0], w.Y[0]  # (1, nx), (ny, 1): 2D masks, repeated along Z by broadcasting
    vb = (X / rx) ** 2 + ((Y - anat.y_vb) / ry) ** 2
    canal = X**2 + (Y - yc) ** 2
    arch = (canal < (anat.canal_r + 5.0) ** 2) & (canal >= anat.canal_r**2) & (Y > yc - 0.3 * anat.canal_r)
    pedicles = (np.abs(X) >= anat.canal_r - 1) & (np.abs(X) < anat.canal_r + 5) & (Y > anat.y_vb) & (Y < yc)
    spinous = (np.abs(X) < 4.0) & (Y > yc) & (Y < anat.y_spinous_tip)
    transverse = (np.abs(Y - yc + 3.0) < 5.0) & (np.abs(X) < 42.0)
    phase = np.mod(w.Z[:, 0, 0] - anat.vert_phase, anat.vert_period)
    disc = (phase < anat.disc_mm)[:, None, None]
    mid = (np.abs(phase - 0.5 * (anat.vert_period + anat.disc_mm)) < 0.18 * anat.vert_period)[:, None, None]
    _paint(tissue, w, (vb <= 1.0) & ~disc, BONE_CORTEX)
    _paint(tissue, w, (vb <= 0.72) & ~disc, BONE_MARROW)
    _paint(tissue, w, (vb <= 1.0) & disc, DISC)
    _paint(tissue, w, _along_z(arch | pedicles | spinous, w), BONE_CORTEX)
    _paint(tissue, w, transverse & mid & ~(canal < anat.canal_r**2), BONE_CORTEX)
    _paint(tissue, w, _along_z(canal < anat.canal_r**2, w), CSF)


def _ribs(anat, grid, tissue):
    """Ribs: flat bands just outside the cavity wall that descend towards the front; the lower ones
    are short (floating ribs), the upper ones end in costal cartilage."""
    w = grid.window((-1e4, -1e4, anat.lowest_rib_z - 4 * anat.rib_slope), None)
    if w is None:
        return
    inner = _inside_shell(anat, w, anat.t_fat + anat.t_muscle, anat.cavity_b_post)
    outer = _inside_shell(anat, w, anat.t_fat + anat.t_muscle - anat.rib_depth, anat.cavity_b_post + anat.rib_depth)
    band = np.nonzero(outer & ~inner)
    X, Y, Z = w.X[0, 0, band[2]], w.Y[0, band[1], 0], w.Z[band[0], 0, 0]
    theta = np.arctan2(np.abs(X), Y)  # 0 at the spine, pi at the front
    s = Z + np.float32(anat.rib_slope) * theta - np.float32(anat.rib_phase)
    k = np.floor(s / anat.rib_period)
    k_low = np.floor((anat.lowest_rib_z - anat.rib_phase) / anat.rib_period)
    within = np.abs(s - (k + 0.5) * anat.rib_period) < 0.5 * anat.rib_height
    # end of the bony rib (radians from the back): 0.55 pi for the lowest, 0.8 pi from 4 ribs up
    end = np.pi * (0.55 + 0.25 * np.clip((k - k_low) / 4.0, 0.0, 1.0))
    rib = within & (k >= k_low) & (theta > 0.45) & (theta < end)
    cart = within & (k >= k_low + 2) & (theta >= end) & (theta < end + 0.5)
    view = tissue[w.slices]
    view[band[0][rib], band[1][rib], band[2][rib]] = RIB
    view[band[0][cart], band[1][cart], band[2][cart]] = CARTILAGE


# -- tumours ---------------------------------------------------------------------------------------

def _tumours(anat, grid, tissue):
    for i, tum in enumerate(anat.tumours[:MAX_TUMOURS]):
        ell = tum.ellipsoid()
        w = grid.window(*ell.box(0.3 * tum.diameter_mm))
        if w is None:
            continue
        r2 = ell.radius2(w.X, w.Y, w.Z)
        bump = 1.0 + np.float32(tum.irregularity) * tum.shape_field.sample(w.X[0, 0], w.Y[0, :, 0], w.Z[:, 0, 0])
        bump = np.maximum(bump, 0.3) ** 2
        _paint(tissue, w, r2 < bump, TUMOUR + i, _IN_LIVER)
        if tum.necrotic:
            core = np.zeros(NUM_TISSUES, bool)
            core[TUMOUR + i] = True
            _paint(tissue, w, r2 < 0.2 * bump, TUMOUR_CORE + i, core)


def paint(anat: Anatomy, grid: Grid, liver_level: float, *, calibration: bool = False):
    """Tissue ids (uint8, (z, y, x)) of ``anat`` on ``grid``.

    With ``calibration=True`` hepatic vessels and tumours are skipped and the liver's implicit
    function on its window is returned as well — ``(tissue, (window, f))`` — so that the caller
    can choose the iso-level that gives the liver its target volume.
    """
    tissue = np.zeros(grid.shape_zyx, np.uint8)
    _body(anat, grid, tissue)
    _ellipsoid_organ(anat, grid, tissue, anat.heart, HEART, region="thorax")
    _psoas(anat, grid, tissue)
    _stomach(anat, grid, tissue)
    liver = _liver(anat, grid, tissue, liver_level)
    if not calibration:
        _hepatic_vessels(anat, grid, tissue)
    _spleen(anat, grid, tissue)
    _kidneys(anat, grid, tissue)
    if anat.gallbladder is not None:
        _ellipsoid_organ(anat, grid, tissue, anat.gallbladder, GALLBLADDER, region="abdomen")
    _great_vessels(anat, grid, tissue)
    if anat.pelvis is not None:
        _pelvis(anat, grid, tissue)
    _spine(anat, grid, tissue)
    _ribs(anat, grid, tissue)
    if calibration:
        return tissue, liver
    _tumours(anat, grid, tissue)
    return tissue
