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
    AORTA, BONE_CORTEX, BONE_MARROW, BOWEL, BOWEL_GAS, CARTILAGE, CSF, DISC, FAT, GALLBLADDER, HEART,
    HEPATIC_VESSEL, IVC, KIDNEY_CORTEX, KIDNEY_MEDULLA, LIVER, LUNG, MAX_TUMOURS, MUSCLE, NUM_TISSUES,
    RENAL_SINUS, RIB, SPLEEN, STOMACH_CONTENT, STOMACH_GAS, STOMACH_WALL, TABLE, TUMOUR, TUMOUR_CORE,
    VISCERAL_FAT,
)

# What the liver may grow over (the stomach and bowel yield to it).
_LIVER_MAY_REPLACE = np.zeros(NUM_TISSUES, bool)
_LIVER_MAY_REPLACE[[VISCERAL_FAT, BOWEL, BOWEL_GAS, STOMACH_WALL, STOMACH_CONTENT, STOMACH_GAS]] = True
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
        pad = max(c.r0, c.r1)
        lo = np.minimum(c.p0, c.p1) - pad
        hi = np.maximum(c.p0, c.p1) + pad
        w = grid.window(lo, hi)
        if w is not None:
            _paint(tissue, w, _capsule_mask(c, w), HEPATIC_VESSEL, only_liver)


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
    w = grid.window((ax - ar, ay - ar, -1e4), (ax + ar, ay + ar, 1e4))
    if w is not None:
        m = (w.X - np.float32(ax)) ** 2 + (w.Y - np.float32(ay)) ** 2 < ar * ar
        _paint(tissue, w, _along_z(m, w), AORTA)
    ix, iy, hw, hd = anat.ivc
    w = grid.window((ix - hw, iy - hd, -1e4), (ix + hw, iy + hd, anat.dome_z + 10.0))
    if w is not None:
        m = ((w.X - np.float32(ix)) / hw) ** 2 + ((w.Y - np.float32(iy)) / hd) ** 2 < 1.0
        _paint(tissue, w, _along_z(m, w), IVC)


# -- skeleton --------------------------------------------------------------------------------------

def _spine(anat, grid, tissue):
    rx, ry = anat.r_vb
    yc = anat.y_vb + ry + anat.canal_r + 1.0  # canal centre
    w = grid.window((-50.0, anat.y_vb - ry - 1.0, -1e4), (50.0, anat.y_spinous_tip + 1.0, 1e4))
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
    _spine(anat, grid, tissue)
    _ribs(anat, grid, tissue)
    if calibration:
        return tissue, liver
    _tumours(anat, grid, tissue)
    return tissue
