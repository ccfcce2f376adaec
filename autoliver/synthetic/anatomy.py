"""One patient's anatomy, drawn at random, in millimetres.

Patient frame: X towards the patient's left, Y towards the back, Z towards the head (the LPS
directions of ITK's world), origin on the body axis at the height of the liver's centre. Nothing
here knows about voxels: ``paint.py`` rasterises an :class:`Anatomy` onto any grid, so one draw
renders the same body at any resolution. The numbers are typical adult values (body 290-370 mm
wide, liver 1.3-1.9 L, spleen ~100-250 mL, kidneys ~110 mm long, vertebrae ~30 mm apart).

The liver's size is not drawn here but calibrated by ``phantom.py`` (it depends on what the
other organs leave free); hepatic vessels and tumours are placed inside the calibrated liver.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from autoliver.synthetic.fields import SmoothField, random_curve, random_field

# The box every smooth field of the body covers (mm); wider than any field of view we render.
BODY_BOX_LO = (-230.0, -190.0, -420.0)
BODY_BOX_HI = (230.0, 190.0, 330.0)


def rotation(rx_deg: float = 0.0, ry_deg: float = 0.0, rz_deg: float = 0.0) -> np.ndarray:
    """3×3 rotation (about X, then Y, then Z); columns are the local axes in the patient frame."""
    ax, ay, az = (math.radians(v) for v in (rx_deg, ry_deg, rz_deg))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True, eq=False)
class Ellipsoid:
    centre: tuple[float, float, float]  # X, Y, Z mm
    axes: tuple[float, float, float]  # half-axes (mm) along the local axes
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))

    def local(self, X, Y, Z):
        """Local coordinates scaled by the half-axes (|u| = 1 on the surface); inputs broadcast."""
        d = (X - np.float32(self.centre[0]), Y - np.float32(self.centre[1]), Z - np.float32(self.centre[2]))
        out = []
        for k in range(3):
            acc = None
            for m in range(3):
                r = self.rot[m, k]
                if abs(r) < 1e-9:
                    continue  # axis-aligned terms are skipped: saves whole-volume multiplications
                term = d[m] * np.float32(r / self.axes[k])
                acc = term if acc is None else acc + term
            out.append(acc)
        return out

    def radius2(self, X, Y, Z):
        u, v, w = self.local(X, Y, Z)
        return u * u + v * v + w * w

    def box(self, pad_mm: float = 0.0):
        """Axis-aligned bounding box (lo_xyz, hi_xyz) in mm."""
        half = np.sqrt(((self.rot * np.asarray(self.axes)[None, :]) ** 2).sum(axis=1)) + pad_mm
        c = np.asarray(self.centre)
        return c - half, c + half

    def scaled(self, s: float, about_xyz) -> "Ellipsoid":
        about = np.asarray(about_xyz)
        c = about + s * (np.asarray(self.centre) - about)
        return Ellipsoid(tuple(float(v) for v in c), tuple(float(a * s) for a in self.axes), self.rot)


@dataclass(frozen=True, eq=False)
class Capsule:
    """A tapered tube from ``p0`` (radius r0) to ``p1`` (radius r1), mm; a vessel segment."""

    p0: tuple[float, float, float]
    p1: tuple[float, float, float]
    r0: float
    r1: float


@dataclass(frozen=True, eq=False)
class Tumour:
    centre: tuple[float, float, float]
    diameter_mm: float
    axes_scale: tuple[float, float, float]  # anisotropy of the base ellipsoid
    rot: np.ndarray
    irregularity: float  # relative radius perturbation (std)
    shape_field: SmoothField  # lobulation, in mm
    necrotic: bool  # a darker core (CT) in larger tumours
    kinetics: str  # DCE-MRI enhancement pattern, see appearance.TUMOUR_KINETICS
    ct_contrast_hu: float  # CT: HU below the liver
    mri_contrast: float  # DCE-MRI: relative size of the kinetic pattern

    def ellipsoid(self) -> Ellipsoid:
        r = self.diameter_mm / 2.0
        return Ellipsoid(self.centre, tuple(r * s for s in self.axes_scale), self.rot)


@dataclass(frozen=True, eq=False)
class Anatomy:
    # body outline and wall layers: half-width a(Z), anterior half-depth b_ant(Z), flat back
    a: float
    b_ant: float
    b_post: float
    q_back: float  # exponent of the posterior half (> 2: flatter back)
    width_curve: object
    depth_curve: object
    t_fat: float
    t_back: float
    t_muscle: float
    cavity_b_post: float
    paraspinal_w: float  # half-width of the muscle block around the spine, at the back
    table_gap: float
    # spine (vertebral body centre Y, radii), canal, spinous process
    y_vb: float
    r_vb: tuple[float, float]
    y_spinous_tip: float
    vert_period: float
    vert_phase: float
    disc_mm: float
    canal_r: float
    # diaphragm: z_d(X, Y) = max of two paraboloid domes
    dome_z: float
    dome_right_x: float
    dome_left_x: float
    dome_left_drop: float
    dome_radius: float
    diaphragm_mm: float
    # ribs
    rib_period: float
    rib_phase: float
    rib_slope: float  # mm of descent per radian towards the front
    rib_height: float
    rib_depth: float
    lowest_rib_z: float
    # abdominal contents
    bowel_field: SmoothField
    bowel_threshold: float
    bowel_gas_offset: float
    bowel_top_z: float
    heart: Ellipsoid
    psoas_top_z: float
    stomach: Ellipsoid
    stomach_gas_level: float
    spleen: Ellipsoid
    spleen_bend: float
    kidneys: tuple[Ellipsoid, Ellipsoid]
    gallbladder: Ellipsoid | None
    aorta: tuple[float, float, float]  # X, Y, radius
    ivc: tuple[float, float, float, float]  # X, Y, half-width, half-depth
    # liver (before calibration: level None, no vessels or tumours)
    liver_lobes: tuple[Ellipsoid, ...]
    liver_blend_mm: float
    liver_hinge: tuple[float, float, float]
    liver_warp: tuple[SmoothField, SmoothField, SmoothField]
    liver_warp_mm: float
    liver_target_ml: float
    liver_scale: float = 1.0
    liver_level: float | None = None
    vessels: tuple[Capsule, ...] = ()
    tumours: tuple[Tumour, ...] = ()
    # generator version 2 only (randomize.py): arms beside the body, and whether the table is there
    arms: tuple = ()
    table: bool = True
    # generator version 3 only: the pelvis (randomize.Pelvis) and the wall of bowel loops (0: solid loops)
    pelvis: object = None
    bowel_wall: float = 0.0

    def width(self, z):
        return self.a * (1.0 + 0.04 * np.tanh(self.width_curve(z)))

    def depth_ant(self, z):
        return self.b_ant * (1.0 + 0.05 * np.tanh(self.depth_curve(z)))

    def dome(self, X, Y):
        """Height (Z, mm) of the diaphragm above (X, Y): the liver and spleen lie below it."""
        r2_right = (X - np.float32(self.dome_right_x)) ** 2 + Y**2
        r2_left = (X - np.float32(self.dome_left_x)) ** 2 + Y**2
        k = np.float32(0.5 / self.dome_radius)
        return np.maximum(self.dome_z - k * r2_right, self.dome_z - self.dome_left_drop - k * r2_left)


# Generator version 2 (``randomized``): wider ranges for these draws (name → (low, high)); the order
# of draws is the same, so version 1 is unchanged.
RANDOMIZED_ANATOMY = {
    "a": (125.0, 210.0),  # body half-width: slim to obese
    "fat_extra": (0.0, 30.0),  # subcutaneous fat beyond what the width implies
    "right_lobe": ((55.0, 95.0), (55.0, 95.0), (60.0, 105.0)),
    "left_lobe": ((30.0, 100.0), (16.0, 45.0), (25.0, 65.0)),
    "liver_blend": (8.0, 24.0),
    "liver_warp": (6.0, 20.0),
    "liver_litres": (0.9, 2.2),
}


def draw_anatomy(rng: np.random.Generator, randomized: bool = False) -> Anatomy:
    """Draw one patient. The order of draws is fixed (same seed → same patient). ``randomized``:
    generator version 2's wider ranges (``RANDOMIZED_ANATOMY``)."""
    def u(lo=0.0, hi=1.0, name=None):
        if randomized and name is not None:
            lo, hi = RANDOMIZED_ANATOMY[name]
        return rng.uniform(lo, hi)

    def axes(v1, name):
        return tuple(u(lo, hi) for lo, hi in (RANDOMIZED_ANATOMY[name] if randomized else v1))

    a = u(145.0, 185.0, "a")
    b_ant = a * u(0.62, 0.74)
    b_post = a * u(0.58, 0.66)
    obesity = (a - 125.0) / 85.0 if randomized else (a - 145.0) / 40.0  # 0 slim … 1 obese
    t_fat = 8.0 + 18.0 * obesity + u(0.0, 14.0, "fat_extra")
    t_back = t_fat * u(0.4, 0.7)
    t_muscle = u(8.0, 14.0)
    y_spinous_tip = b_post - t_back - 3.0
    y_vb = y_spinous_tip - u(62.0, 72.0)
    r_vb = (u(19.0, 24.0), u(15.0, 19.0))
    cavity_b_post = b_post - t_back - t_muscle
    paraspinal_w = u(55.0, 70.0)

    a2 = a - t_fat - t_muscle  # cavity half-width
    b2 = b_ant - t_fat - t_muscle  # cavity anterior half-depth
    dome_z = u(70.0, 95.0)
    dome_right_x = -a2 * u(0.4, 0.5)
    dome_left_x = a2 * u(0.4, 0.5)

    heart = Ellipsoid((u(10.0, 30.0), -b2 * u(0.35, 0.5), dome_z + u(35.0, 50.0)),
                      (u(50.0, 62.0), u(38.0, 46.0), u(50.0, 60.0)), rotation(0, u(-10, 10), u(-30, -15)))
    stomach = Ellipsoid((a2 * u(0.35, 0.5), -b2 * u(0.2, 0.4), u(-5.0, 25.0)),
                        (u(35.0, 50.0), u(25.0, 38.0), u(40.0, 60.0)), rotation(0, u(-35, -15), u(-20, 20)))
    # spleen: against the postero-lateral wall on the left, its thickness along the radius
    spleen_angle = u(15.0, 35.0)  # degrees from the left-lateral direction towards the back
    ang = math.radians(spleen_angle)
    wall = 1.0 / math.hypot(math.cos(ang) / a2, math.sin(ang) / cavity_b_post)
    spleen_t = u(17.0, 24.0)
    spleen = Ellipsoid(((wall - spleen_t - 3.0) * math.cos(ang), (wall - spleen_t - 3.0) * math.sin(ang), u(0.0, 30.0)),
                       (spleen_t, u(45.0, 60.0), u(42.0, 58.0)), rotation(u(-10, 10), 0, spleen_angle))
    kidneys = []
    kz_right = -u(35.0, 55.0)
    for side, kz in ((-1.0, kz_right), (1.0, kz_right + u(10.0, 25.0))):
        kidneys.append(Ellipsoid((side * u(62.0, 75.0), y_vb + u(0.0, 14.0), kz),
                                 (u(24.0, 30.0), u(19.0, 24.0), u(48.0, 60.0)),
                                 rotation(0, side * u(10, 20), side * u(20, 35))))
    gb_present = u() < 0.85
    gallbladder = Ellipsoid((-a2 * u(0.15, 0.35), -b2 * u(0.25, 0.5), -u(35.0, 55.0)),
                            (u(12.0, 18.0), u(12.0, 18.0), u(30.0, 45.0)),
                            rotation(u(-40, -20), u(-20, 0), 0))
    aorta = (u(12.0, 22.0), y_vb - r_vb[1] - u(8.0, 14.0), u(10.0, 13.0))
    ivc = (-u(18.0, 28.0), y_vb - r_vb[1] - u(12.0, 20.0), u(11.0, 15.0), u(8.0, 11.0))

    # Liver: right lobe, left lobe (flat, anterior, crosses the midline), caudate lobe by the IVC,
    # blended smoothly, then warped by a smooth displacement field.
    xr = -a2 * u(0.40, 0.50)
    lobes = (
        Ellipsoid((xr, u(-10.0, 10.0), u(-10.0, 5.0)),
                  axes(((70.0, 85.0), (70.0, 88.0), (75.0, 95.0)), "right_lobe"),
                  rotation(u(-20, -5), u(-10, 10), u(-10, 10))),
        Ellipsoid((u(0.0, 30.0), -b2 * u(0.35, 0.5), u(5.0, 25.0)),
                  axes(((55.0, 80.0), (24.0, 36.0), (35.0, 50.0)), "left_lobe"),
                  rotation(u(-15, 5), u(-15, 15), u(-25, 5))),
        Ellipsoid((ivc[0] + u(0.0, 10.0), ivc[1] - u(0.0, 8.0), u(0.0, 20.0)),
                  (u(18.0, 26.0), u(15.0, 22.0), u(30.0, 40.0))),
    )
    liver_box_lo = (-a2 - 30.0, -b2 - 30.0, -200.0)
    liver_box_hi = (a2 * 0.8, cavity_b_post + 30.0, dome_z + 30.0)
    warp_step = u(35.0, 50.0)
    warp = tuple(random_field(rng, liver_box_lo, liver_box_hi, warp_step) for _ in range(3))
    if randomized:
        lo, hi = RANDOMIZED_ANATOMY["liver_litres"]
        target_ml = 1000.0 * (lo + (hi - lo) * (0.7 * u() + 0.3 * obesity))
    else:
        target_ml = 1000.0 * (1.3 + 0.6 * (0.5 * u() + 0.5 * obesity))

    return Anatomy(
        a=a, b_ant=b_ant, b_post=b_post, q_back=u(2.3, 3.2),
        width_curve=random_curve(rng, BODY_BOX_LO[2], BODY_BOX_HI[2], 90.0),
        depth_curve=random_curve(rng, BODY_BOX_LO[2], BODY_BOX_HI[2], 90.0),
        t_fat=t_fat, t_back=t_back, t_muscle=t_muscle, cavity_b_post=cavity_b_post, paraspinal_w=paraspinal_w,
        table_gap=u(0.0, 6.0),
        y_vb=y_vb, r_vb=r_vb, y_spinous_tip=y_spinous_tip, vert_period=u(28.0, 34.0), vert_phase=u(0.0, 34.0),
        disc_mm=u(6.0, 10.0), canal_r=u(7.0, 9.5),
        dome_z=dome_z, dome_right_x=dome_right_x, dome_left_x=dome_left_x, dome_left_drop=u(8.0, 22.0),
        dome_radius=u(100.0, 150.0), diaphragm_mm=u(3.0, 5.0),
        rib_period=u(26.0, 34.0), rib_phase=u(0.0, 34.0), rib_slope=u(35.0, 50.0), rib_height=u(8.0, 12.0),
        rib_depth=u(6.0, 9.0), lowest_rib_z=-u(60.0, 95.0),
        bowel_field=random_field(rng, BODY_BOX_LO, BODY_BOX_HI, u(14.0, 20.0)),
        bowel_threshold=u(-0.3, 0.4), bowel_gas_offset=u(0.9, 1.5), bowel_top_z=-u(20.0, 60.0),
        heart=heart, psoas_top_z=-u(10.0, 40.0), stomach=stomach, stomach_gas_level=u(0.3, 0.75),
        spleen=spleen, spleen_bend=u(0.4, 1.0), kidneys=tuple(kidneys),
        gallbladder=gallbladder if gb_present else None, aorta=aorta, ivc=ivc,
        liver_lobes=lobes, liver_blend_mm=u(10.0, 18.0, "liver_blend"), liver_hinge=(xr * 0.6, 0.0, 0.0),
        liver_warp=warp, liver_warp_mm=u(6.0, 12.0, "liver_warp"), liver_target_ml=target_ml,
    )
