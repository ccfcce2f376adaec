"""Generator versions 2 and 3 (``make_synthetic --randomize``): patients and scans that vary as real
ones do, and appearance pushed beyond what CT shows, so that a network learns the liver's shape and
context instead of one phantom's grey values (the idea of SynthSeg, Billot et al. 2023).

Version 1 draws one portal-venous CT look (liver 50-70 HU, mild noise) and one body type: a model
trained on it marks muscle and bowel as liver on real scans, whose livers lie anywhere from 40 to
160 HU. Version 2 draws, per case:

* a **contrast phase** (native, arterial, portal venous, delayed) and each tissue's HU within that
  phase's range (``CT_PHASE_HU``, over the version 1 table ``appearance.CT_HU``), fatty livers,
  positive oral contrast in the bowel and stomach, and tumours darker (or, in the arterial phase,
  brighter) than the liver;
* with probability ``WILD_P``, **unrealistic contrast**: every soft tissue's HU drawn
  independently from ``WILD_HU`` (the liver may be darker than muscle, or brighter than bone);
* the **scanner** (``SCANNER``): noise level and texture, partial-volume blur of thick slices,
  soft or sharp reconstruction kernels, a calibration offset and gain, cupping (a smooth bias),
  and streaks through bone;
* the **framing** (``FRAMING``): a tighter or looser field of view (some narrower than the body,
  zoomed on the liver), fields that go on into the pelvis or the chest, fields cut through the liver at the top or bottom (as in many real
  upper-abdomen scans), head-to-feet slice order;
* the **anatomy** (``anatomy.RANDOMIZED_ANATOMY`` and ``ANATOMY``): body habitus and fat, liver size
  and lobe shapes, arms beside the body, no table.

Version 3 adds what a model trained on version 2 mistook for liver on real abdomen-and-pelvis
scans: a **pelvis** below the liver (``PELVIS``: iliac wings and sacrum, hips and pubic bones,
gluteal and iliac muscles filling what was abdominal cavity, a bladder, with contrast in the
delayed phase, a prostate or uterus, the rectum, the iliac arteries and veins), and **bowel loops
with a wall** around fluid, faeces or oral contrast instead of solid soft-tissue blobs
(``VERSION3_HU``).

Every range is data (the tables below; the README shows them), and the tests check that each
tissue lands in its range. Same seed and version → byte-identical files; versions 1 and 2 are
unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from autoliver.synthetic import appearance
from autoliver.synthetic import tissues as T
from autoliver.errors import UserError
from autoliver.synthetic import LATEST, VERSIONS
from autoliver.synthetic.anatomy import RANDOMIZED_ANATOMY, Ellipsoid, rotation



def version_of(randomize) -> int:
    """The generator version a ``randomize`` argument asks for: False/0/None → 1, True → the latest,
    or a version number (2, 3)."""
    if randomize is None or randomize is False or randomize == 0:
        return 1
    if randomize is True:
        return LATEST
    if isinstance(randomize, (int, np.integer)) and int(randomize) in (1, *VERSIONS):
        return int(randomize)
    raise UserError(f"--randomize {randomize}: generator versions are 1 (without --randomize), "
                    f"{', '.join(map(str, VERSIONS))}; the latest is {LATEST}.")

PHASE_WEIGHTS = {"native": 0.15, "arterial": 0.2, "portal": 0.5, "delayed": 0.15}
# tissue → (low, high) HU per phase; tissues not named keep appearance.CT_HU (version 1's table)
CT_PHASE_HU = {
    "native": {T.LIVER: (40, 75), T.SPLEEN: (35, 55), T.HEPATIC_VESSEL: (25, 50), T.AORTA: (30, 55),
               T.IVC: (30, 55), T.HEART: (30, 55), T.KIDNEY_CORTEX: (25, 45), T.KIDNEY_MEDULLA: (20, 40),
               T.BOWEL: (15, 45), T.STOMACH_WALL: (25, 50), T.MUSCLE: (35, 60)},
    "arterial": {T.LIVER: (55, 95), T.SPLEEN: (80, 170), T.HEPATIC_VESSEL: (60, 140), T.AORTA: (200, 450),
                 T.IVC: (50, 130), T.HEART: (150, 400), T.KIDNEY_CORTEX: (150, 300), T.KIDNEY_MEDULLA: (60, 130),
                 T.BOWEL: (40, 100), T.STOMACH_WALL: (60, 130), T.MUSCLE: (40, 65)},
    "portal": {T.LIVER: (80, 165), T.SPLEEN: (85, 175), T.HEPATIC_VESSEL: (130, 240), T.AORTA: (120, 230),
               T.IVC: (100, 200), T.HEART: (110, 210), T.KIDNEY_CORTEX: (140, 240), T.KIDNEY_MEDULLA: (120, 230),
               T.BOWEL: (45, 110), T.STOMACH_WALL: (55, 125), T.MUSCLE: (45, 70)},
    "delayed": {T.LIVER: (60, 115), T.SPLEEN: (60, 115), T.HEPATIC_VESSEL: (85, 160), T.AORTA: (85, 160),
                T.IVC: (85, 160), T.HEART: (85, 160), T.KIDNEY_CORTEX: (100, 210), T.KIDNEY_MEDULLA: (140, 320),
                T.BOWEL: (40, 95), T.STOMACH_WALL: (50, 105), T.MUSCLE: (45, 70)},
}
TUMOUR_CONTRAST_HU = (10.0, 60.0)  # |tumour − liver|
ARTERIAL_HYPERDENSE_P = 0.5  # arterial phase: the tumour is brighter than the liver (HCC-like)
STEATOSIS_P, STEATOSIS_DROP_HU = 0.15, (20.0, 70.0)  # fatty liver: that much darker
ORAL_CONTRAST_P, ORAL_CONTRAST_HU = 0.25, (150.0, 450.0)  # bowel and stomach content
WILD_P, WILD_HU = 0.2, (-100.0, 300.0)
WILD_TISSUES = (T.FAT, T.VISCERAL_FAT, T.MUSCLE, T.BOWEL, T.HEART, T.STOMACH_WALL, T.STOMACH_CONTENT, T.LIVER,
                T.HEPATIC_VESSEL, T.SPLEEN, T.KIDNEY_CORTEX, T.KIDNEY_MEDULLA, T.RENAL_SINUS, T.GALLBLADDER, T.IVC,
                T.AORTA, T.DISC, T.CSF, T.CARTILAGE)

# Version 3: the tissues it adds (tissue → (low, high) HU per phase), and the wall of bowel loops.
VERSION3_HU = {
    "native": {T.BLADDER: (0, 20), T.PELVIC_ORGAN: (30, 50), T.BOWEL_CONTENT: (-30, 40)},
    "arterial": {T.BLADDER: (0, 20), T.PELVIC_ORGAN: (45, 110), T.BOWEL_CONTENT: (-30, 40)},
    "portal": {T.BLADDER: (0, 25), T.PELVIC_ORGAN: (60, 120), T.BOWEL_CONTENT: (-30, 40)},
    "delayed": {T.BLADDER: (0, 25), T.PELVIC_ORGAN: (55, 100), T.BOWEL_CONTENT: (-30, 40)},
}
BLADDER_CONTRAST_P, BLADDER_CONTRAST_HU = 0.6, (150.0, 700.0)  # delayed phase: excreted contrast
BOWEL_WALL = (0.12, 0.45)  # of the bowel field's units: thicker walls, smaller lumens (version 3)
WILD_TISSUES_V3 = WILD_TISSUES + (T.BLADDER, T.PELVIC_ORGAN, T.BOWEL_CONTENT)

SCANNER = {
    "noise_sigma_hu": (3.0, 40.0),
    "noise_correlation_vox": (0.5, 2.0),  # sigma of the blur that gives noise its texture
    "noise_white_fraction": (0.1, 0.8),
    "blur_xy_vox": (0.3, 1.2),  # reconstruction kernel / in-plane partial volume
    "blur_z_vox": (0.3, 1.2),  # slice thickness
    "sharpen": (0.0, 1.5),  # unsharp masking of a sharp kernel, with probability SHARPEN_P
    "hu_offset": (-15.0, 15.0),
    "hu_gain": (0.95, 1.05),
    "cupping_hu": (0.0, 30.0),  # a smooth bias across the field, either sign
    "streaks": (0, 8),  # number of streaks through bone (integers)
    "streak_hu": (20.0, 150.0),  # their peak amplitude, either sign
    "streak_width_mm": (0.7, 3.0),
    "liver_texture_hu": (1.0, 12.0),
}
SHARPEN_P = 0.3
FRAMING = {
    "fov_margin": (0.95, 1.35),  # field of view / body width (version 1: 1.04-1.20)
    "liver_cut_p": 0.3,  # the field ends inside the liver (top or bottom)
    "liver_cut_fraction": (0.1, 0.7),  # of the liver's height left out
    "tight_p": 0.15,  # a field narrower than the body (a reconstruction zoomed on the liver) …
    "tight_margin": (0.55, 0.95),  # … this share of the body's width …
    "tight_min_mm": 150.0,  # … but at least this wide,
    "tight_pull": (0.3, 1.0),  # centred this far from the body's centre towards the liver's
    "below_p": 0.5,  # the field goes on below the liver (abdomen and pelvis scans) …
    "below_liver_mm": (20.0, 250.0),  # … this far
    "above_p": 0.3,  # and above it, into the chest …
    "above_liver_mm": (20.0, 80.0),  # … this far
}
# Version 3's framing, where it differs: more fields into the pelvis, and more fields narrower than
# the body, some centred on the body (a spine-centred reconstruction: the liver at the field's edge)
FRAMING_V3 = {"below_p": 0.6, "tight_p": 0.25, "tight_margin": (0.45, 0.95), "tight_pull": (0.0, 1.0)}
# voxel orders (signs of the x, y, z axes): version 1's three, and head-to-feet slice orders
ORIENTATIONS = {"LPS": (1, 1, 1), "RAS": (-1, -1, 1), "LAS": (1, -1, 1), "LPI": (1, 1, -1), "RAI": (-1, -1, -1)}
ANATOMY = {
    "arms_p": 0.35,  # arms down beside the body, inside the field of view
    "arm_gap_mm": (3.0, 40.0),
    "arm_radii_mm": ((38.0, 55.0), (35.0, 50.0)),  # half-width, half-depth of the arm
    "humerus_radius_mm": (10.0, 14.0),
    "arm_fat_mm": (3.0, 15.0),
    "table_p": 0.85,
}
# Version 3's pelvis (mm; Z relative to the anatomy's origin at the liver's centre, see anatomy.py)
PELVIS = {
    "crest_below_kidney_mm": (80.0, 115.0),  # iliac crest below the lower kidney's centre
    "sacrum_below_crest_mm": (15.0, 35.0),
    "hip_below_crest_mm": (115.0, 150.0),  # centre of the femoral heads
    "pubis_below_hip_mm": (15.0, 30.0),
    "wing_half_width_mm": (105.0, 140.0),  # half the distance between the iliac crests
    "wing_mm": (5.0, 10.0),  # thickness of the iliac wing
    "floor_share": (0.45, 0.6),  # the pelvic cavity's width at the pubis, as a share of the crests'
    "muscle_mm": (35.0, 90.0),  # muscles around the basin (iliacus, gluteal); fat beyond them
    "femoral_head_radius_mm": (20.0, 26.0),
    "bladder_p": 0.85,  # a bladder with urine in it (else empty)
    "bladder_half_axes_mm": ((25.0, 60.0), (20.0, 45.0), (20.0, 50.0)),
    "pelvic_organ_half_axes_mm": ((15.0, 32.0), (12.0, 25.0), (18.0, 40.0)),  # prostate or uterus
    "rectum_radius_mm": (10.0, 18.0),
    "bifurcation_above_crest_mm": (0.0, 30.0),  # of the aorta (the IVC's 10-20 mm lower)
    "iliac_artery_radius_mm": (4.5, 7.0),
    "iliac_vein_radius_mm": (6.0, 9.0),
}


@dataclass(frozen=True)
class Arm:
    x: float  # centre X (mm; negative: the patient's right)
    y: float
    rx: float
    ry: float
    fat_mm: float
    humerus_r: float


@dataclass(frozen=True, eq=False)
class Pelvis:
    """Version 3's pelvis (mm; see ``PELVIS``)."""

    crest_z: float
    sacrum_z: float
    hip_z: float
    pubis_z: float
    wing_x: float
    wing_mm: float
    floor_share: float
    muscle_mm: float
    hip_x: float
    hip_y: float
    head_r: float
    bladder: Ellipsoid | None
    pelvic_organ: Ellipsoid
    rectum_r: float
    bifurcation_z: float
    iliac_artery_r: float
    iliac_vein_r: float


def draw_pelvis(rng: np.random.Generator, anat) -> Pelvis:
    """A pelvis for the body ``anat`` (an :class:`~autoliver.synthetic.anatomy.Anatomy`)."""
    P = PELVIS

    def u(name, k=None):
        lo, hi = P[name] if k is None else P[name][k]
        return float(rng.uniform(lo, hi))

    a2 = anat.a - anat.t_fat - anat.t_muscle  # the cavity's half-width
    b2 = anat.b_ant - anat.t_fat - anat.t_muscle  # and its anterior half-depth
    crest = min(k.centre[2] for k in anat.kidneys) - u("crest_below_kidney_mm")
    sacrum = crest - u("sacrum_below_crest_mm")
    hip = crest - u("hip_below_crest_mm")
    pubis = hip - u("pubis_below_hip_mm")
    wing_x = min(a2 - 6.0, u("wing_half_width_mm"))
    floor_share = u("floor_share")
    head_r = u("femoral_head_radius_mm")
    hip_x = max(wing_x * float(rng.uniform(0.68, 0.8)), wing_x * floor_share + head_r + 6.0)
    hip_y = anat.y_vb - float(rng.uniform(35.0, 55.0))
    front = -b2 * float(rng.uniform(0.75, 0.9))  # the bladder lies just behind the pubic bones
    bl = tuple(u("bladder_half_axes_mm", k) for k in range(3))
    bladder = Ellipsoid((float(rng.uniform(-10.0, 10.0)), front + bl[1], pubis + 0.8 * bl[2]), bl,
                        rotation(float(rng.uniform(-15, 15)), 0.0, float(rng.uniform(-15, 15))))
    has_bladder = rng.uniform() < P["bladder_p"]
    po = tuple(u("pelvic_organ_half_axes_mm", k) for k in range(3))
    # below and behind the bladder (a prostate) or above and behind it (a uterus)
    organ_y = (front + 1.5 * bl[1] if has_bladder else front + 15.0) + 0.6 * po[1] + float(rng.uniform(0.0, 10.0))
    organ = Ellipsoid((float(rng.uniform(-8.0, 8.0)), organ_y, pubis + float(rng.uniform(-5.0, 45.0))), po,
                      rotation(float(rng.uniform(-30, 10)), 0.0, 0.0))
    return Pelvis(crest_z=crest, sacrum_z=sacrum, hip_z=hip, pubis_z=pubis, wing_x=wing_x, wing_mm=u("wing_mm"),
                  floor_share=floor_share, muscle_mm=u("muscle_mm"), hip_x=hip_x, hip_y=hip_y, head_r=head_r,
                  bladder=bladder if has_bladder else None, pelvic_organ=organ, rectum_r=u("rectum_radius_mm"),
                  bifurcation_z=crest + u("bifurcation_above_crest_mm"), iliac_artery_r=u("iliac_artery_radius_mm"),
                  iliac_vein_r=u("iliac_vein_radius_mm"))


@dataclass(frozen=True)
class Scan:
    """One case's scanner, contrast and framing (version 2)."""

    phase: str
    wild: bool
    steatosis_hu: float
    oral_contrast: bool
    values: dict = field(default_factory=dict)  # SCANNER's entries, drawn
    sharpen: float = 0.0
    fov_margin: float = 1.1
    liver_cut: float = 0.0  # > 0: that fraction of the liver's height cut off at the top; < 0: at the bottom
    orientation: str = "LPS"
    below_mm: float = 0.0  # field beyond the liver (besides version 1's 15 mm margin), below and above
    above_mm: float = 0.0
    tight: float = 0.0  # > 0: the field's width as a share of the body's (narrower than the body)
    tight_pull: float = 0.0  # and how far its centre moves towards the liver's (0 … 1)
    version: int = 2


def draw_arms_and_table(rng: np.random.Generator, a: float, y_centre: float) -> tuple[tuple[Arm, ...], bool]:
    """Arms beside a body of half-width ``a`` (mm) at height ``y_centre``, and whether there is a table."""
    arms: tuple[Arm, ...] = ()
    if rng.uniform() < ANATOMY["arms_p"]:
        out = []
        for side in (-1.0, 1.0):
            rx = rng.uniform(*ANATOMY["arm_radii_mm"][0])
            ry = rng.uniform(*ANATOMY["arm_radii_mm"][1])
            gap = rng.uniform(*ANATOMY["arm_gap_mm"])
            out.append(Arm(side * (a + gap + rx), y_centre + rng.uniform(-20.0, 20.0), rx, ry,
                           rng.uniform(*ANATOMY["arm_fat_mm"]), rng.uniform(*ANATOMY["humerus_radius_mm"])))
        arms = tuple(out)
    return arms, bool(rng.uniform() < ANATOMY["table_p"])


def draw_scan(rng: np.random.Generator, version: int = 2) -> Scan:
    F = FRAMING | FRAMING_V3 if version >= 3 else FRAMING
    phases = list(PHASE_WEIGHTS)
    p = np.asarray(list(PHASE_WEIGHTS.values()), np.float64)
    phase = phases[int(rng.choice(len(phases), p=p / p.sum()))]
    wild = bool(rng.uniform() < WILD_P)
    steatosis = float(rng.uniform(*STEATOSIS_DROP_HU)) if rng.uniform() < STEATOSIS_P else 0.0
    oral = bool(rng.uniform() < ORAL_CONTRAST_P)
    values = {}
    for name, (lo, hi) in SCANNER.items():
        values[name] = int(rng.integers(lo, hi + 1)) if isinstance(lo, int) else float(rng.uniform(lo, hi))
    sharpen = values["sharpen"] if rng.uniform() < SHARPEN_P else 0.0
    values["cupping_hu"] *= float(rng.choice((-1.0, 1.0)))
    cut = 0.0
    if rng.uniform() < F["liver_cut_p"]:
        cut = float(rng.uniform(*F["liver_cut_fraction"])) * float(rng.choice((-1.0, 1.0)))
    below = float(rng.uniform(*F["below_liver_mm"])) if rng.uniform() < F["below_p"] else 0.0
    above = float(rng.uniform(*F["above_liver_mm"])) if rng.uniform() < F["above_p"] else 0.0
    tight = pull = 0.0
    if rng.uniform() < F["tight_p"]:
        tight, pull = float(rng.uniform(*F["tight_margin"])), float(rng.uniform(*F["tight_pull"]))
    names = list(ORIENTATIONS)
    return Scan(phase=phase, wild=wild, steatosis_hu=steatosis, oral_contrast=oral, values=values, sharpen=sharpen,
                fov_margin=float(rng.uniform(*F["fov_margin"])), liver_cut=cut,
                orientation=names[int(rng.integers(len(names)))], below_mm=below, above_mm=above, tight=tight,
                tight_pull=pull, version=version)


def tissue_ranges(scan: Scan) -> dict[int, tuple[float, float]]:
    """tissue → (low, high) HU this case's values were drawn from (before steatosis and oral
    contrast, which move the liver and the bowel as ``ct_lut`` says)."""
    ranges = {t: tuple(map(float, r)) for t, r in appearance.CT_HU.items()}
    ranges[T.LIVER] = tuple(map(float, appearance.LIVER_HU))
    ranges[T.SPLEEN] = (ranges[T.LIVER][0] + appearance.SPLEEN_MINUS_LIVER_HU[0],
                        ranges[T.LIVER][1] + appearance.SPLEEN_MINUS_LIVER_HU[1])
    ranges.update({t: tuple(map(float, r)) for t, r in CT_PHASE_HU[scan.phase].items()})
    if scan.version >= 3:
        ranges.update({t: tuple(map(float, r)) for t, r in VERSION3_HU[scan.phase].items()})
    if scan.wild:
        ranges.update({t: WILD_HU for t in (WILD_TISSUES_V3 if scan.version >= 3 else WILD_TISSUES)})
    return ranges


def ct_lut(rng: np.random.Generator, scan: Scan, tumours) -> np.ndarray:
    """One case's tissue → HU table (float32), versions 2 and 3."""
    lut = np.zeros(T.NUM_TISSUES, np.float32)
    for tissue, (lo, hi) in sorted(tissue_ranges(scan).items()):
        lut[tissue] = rng.uniform(lo, hi)
    lut[T.LIVER] -= np.float32(scan.steatosis_hu)
    if scan.oral_contrast:  # version 3: in the bowel's content (its wall keeps its own value)
        for tissue in (T.BOWEL_CONTENT if scan.version >= 3 else T.BOWEL, T.STOMACH_CONTENT):
            lut[tissue] = rng.uniform(*ORAL_CONTRAST_HU)
    if scan.version >= 3 and scan.phase == "delayed" and not scan.wild and rng.uniform() < BLADDER_CONTRAST_P:
        lut[T.BLADDER] = rng.uniform(*BLADDER_CONTRAST_HU)
    liver = float(lut[T.LIVER])
    for i, tum in enumerate(tumours):
        delta = float(rng.uniform(*TUMOUR_CONTRAST_HU))
        if scan.phase == "arterial" and rng.uniform() < ARTERIAL_HYPERDENSE_P:
            delta = -delta
        lut[T.TUMOUR + i] = liver - delta
        lut[T.TUMOUR_CORE + i] = liver - abs(delta) - rng.uniform(*appearance.NECROSIS_BELOW_TUMOUR_HU)
    return lut


def table_rows() -> list[tuple[str, str]]:
    """(what, range) rows for the README's table of versions 2 and 3's randomisation."""
    names = T.NAMES
    rows = [("contrast phase", ", ".join(f"{k} {v:.0%}" for k, v in PHASE_WEIGHTS.items()))]
    for phase, table in CT_PHASE_HU.items():
        rows.append((f"{phase} HU", "; ".join(f"{names[t]} {lo} to {hi}" for t, (lo, hi) in table.items())))
    rows += [
        ("tumour vs liver", f"{TUMOUR_CONTRAST_HU[0]:g} to {TUMOUR_CONTRAST_HU[1]:g} HU darker (arterial: brighter "
                            f"with p {ARTERIAL_HYPERDENSE_P})"),
        ("fatty liver", f"p {STEATOSIS_P}, {STEATOSIS_DROP_HU[0]:g} to {STEATOSIS_DROP_HU[1]:g} HU darker"),
        ("oral contrast", f"p {ORAL_CONTRAST_P}, bowel and stomach {ORAL_CONTRAST_HU[0]:g} to {ORAL_CONTRAST_HU[1]:g} HU"),
        ("unrealistic contrast", f"p {WILD_P}: {', '.join(names[t] for t in WILD_TISSUES)} each "
                                 f"{WILD_HU[0]:g} to {WILD_HU[1]:g} HU"),
    ]
    plain = {"hu_offset": "calibration offset (HU)", "hu_gain": "calibration gain", "streaks": "streaks through bone",
             "sharpen": "sharpening (unsharp mask weight)"}
    rows += [(plain.get(k) or k.replace("_", " ").replace(" hu", " (HU)").replace(" vox", " (voxels)")
              .replace(" mm", " (mm)"), f"{lo:g} to {hi:g}") for k, (lo, hi) in SCANNER.items()]
    rows += [("sharp kernel", f"p {SHARPEN_P}"), ("field of view / body width", "{} to {}".format(*FRAMING["fov_margin"])),
             ("field cut through the liver", f"p {FRAMING['liver_cut_p']}, "
                                             "{} to {} of its height".format(*FRAMING["liver_cut_fraction"])),
             ("field narrower than the body", f"p {FRAMING['tight_p']}, " +
              "{} to {} of its width (at least {:g} mm), centred towards the liver".format(
                  *FRAMING["tight_margin"], FRAMING["tight_min_mm"])),
             ("field below the liver", f"p {FRAMING['below_p']}, " + "{:g} to {:g} mm".format(*FRAMING["below_liver_mm"])),
             ("field above the liver", f"p {FRAMING['above_p']}, " + "{:g} to {:g} mm".format(*FRAMING["above_liver_mm"])),
             ("voxel orders", ", ".join(ORIENTATIONS)),
             ("arms in the field", f"p {ANATOMY['arms_p']}"), ("table", f"p {ANATOMY['table_p']}")]
    a = RANDOMIZED_ANATOMY
    rows += [("body half-width", "{:g} to {:g} mm (version 1: 145 to 185)".format(*a["a"])),
             ("subcutaneous fat beyond the habitus", "{:g} to {:g} mm (version 1: 0 to 14)".format(*a["fat_extra"])),
             ("liver volume", "{:g} to {:g} L (version 1: 1.3 to 1.9)".format(*a["liver_litres"])),
             ("right / left lobe half-axes", " / ".join("×".join("{:g}-{:g}".format(*r) for r in a[k])
                                                        for k in ("right_lobe", "left_lobe")) + " mm"),
             ("liver warp", "{:g} to {:g} mm (version 1: 6 to 12)".format(*a["liver_warp"]))]
    for phase, table in VERSION3_HU.items():
        rows.append((f"version 3: {phase} HU", "; ".join(f"{names[t]} {lo} to {hi}" for t, (lo, hi) in table.items())))
    rows += [("version 3: bladder in the delayed phase", f"p {BLADDER_CONTRAST_P}: contrast, "
                                                          "{:g} to {:g} HU".format(*BLADDER_CONTRAST_HU)),
             ("version 3: bowel", "a wall around the content ({:g} to {:g} of the field's units); oral contrast in "
                                  "the content".format(*BOWEL_WALL)),
             ("version 3: bladder", f"p {PELVIS['bladder_p']}, half-axes " +
              "×".join("{:g}-{:g}".format(*r) for r in PELVIS["bladder_half_axes_mm"]) + " mm")]
    plain = {"crest_below_kidney_mm": "iliac crest below the lower kidney's centre",
             "sacrum_below_crest_mm": "top of the sacrum below the crest",
             "hip_below_crest_mm": "femoral heads below the crest",
             "pubis_below_hip_mm": "pubis below the femoral heads",
             "wing_half_width_mm": "half the distance between the iliac crests", "wing_mm": "iliac wing thickness",
             "floor_share": "pelvic basin's width at the pubis / at the crests",
             "muscle_mm": "muscles around the basin (then fat)", "femoral_head_radius_mm": "femoral head radius",
             "rectum_radius_mm": "rectum radius", "bifurcation_above_crest_mm": "aortic bifurcation above the crest",
             "iliac_artery_radius_mm": "iliac artery radius", "iliac_vein_radius_mm": "iliac vein radius"}
    for k, what in plain.items():
        unit = " mm" if k.endswith("_mm") else ""
        rows.append((f"version 3: {what}", "{:g} to {:g}".format(*PELVIS[k]) + unit))
    rows += [("version 3: field below the liver", f"p {FRAMING_V3['below_p']}"),
             ("version 3: field narrower than the body", f"p {FRAMING_V3['tight_p']}, " +
              "{} to {} of its width, centred {} to {} of the way from the body's centre to the liver's".format(
                  *FRAMING_V3["tight_margin"], *FRAMING_V3["tight_pull"]))]
    rows.append(("version 3: prostate or uterus", "half-axes " + "×".join(
        "{:g}-{:g}".format(*r) for r in PELVIS["pelvic_organ_half_axes_mm"]) + " mm"))
    return rows
