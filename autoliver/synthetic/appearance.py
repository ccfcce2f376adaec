"""What each tissue looks like: CT Hounsfield units (portal venous phase) and DCE-MRI signal per
phase. Tables are data; ``draw_*`` turn them into one case's lookup table (tissue id → value).

CT: liver 50-70 HU, spleen within -5..+15 HU of the liver (a classic false positive), tumours
10-40 HU below the liver, enhanced vessels and kidneys brighter, bone ~700 HU.

DCE-MRI: four phases (pre-contrast, arterial, portal, delayed) of a fat-suppressed T1 sequence in
arbitrary units (no HU). Values are relative to the liver's pre-contrast signal. Tumours follow
the liver's curve times (1 + m × pattern), m 20-35 %, with the patterns of the common lesions:
hypervascular (HCC-like) tumours light up in the arterial phase and wash out in the delayed phase,
fibrous ones enhance late; both are iso-intense with the liver before contrast and in the portal
phase, so a single portal-phase scan does not show them, only the series does. Metastasis-like
hypo-enhancing tumours are darker than the liver in every post-contrast phase. The liver's own
texture (7-11 %, identical in every phase) cancels in the ratio between phases.
"""
from __future__ import annotations

import numpy as np

from autoliver.synthetic import tissues as T

# tissue → (low, high) HU, drawn once per case
CT_HU = {
    T.AIR: (-1000, -1000), T.FAT: (-115, -85), T.VISCERAL_FAT: (-110, -80), T.MUSCLE: (35, 55),
    T.BOWEL: (15, 50), T.BOWEL_GAS: (-950, -700), T.LUNG: (-880, -800), T.HEART: (110, 170),
    T.TABLE: (100, 400), T.STOMACH_WALL: (45, 80), T.STOMACH_CONTENT: (5, 40), T.STOMACH_GAS: (-1000, -950),
    T.HEPATIC_VESSEL: (130, 190), T.KIDNEY_CORTEX: (150, 210), T.KIDNEY_MEDULLA: (110, 170),
    T.RENAL_SINUS: (-100, -70), T.GALLBLADDER: (0, 20), T.IVC: (100, 160), T.AORTA: (130, 190),
    T.BONE_CORTEX: (600, 800), T.BONE_MARROW: (180, 300), T.DISC: (70, 100), T.CSF: (0, 15),
    T.RIB: (350, 600), T.CARTILAGE: (100, 160),
}
LIVER_HU = (50.0, 70.0)
SPLEEN_MINUS_LIVER_HU = (-5.0, 15.0)
NECROSIS_BELOW_TUMOUR_HU = (10.0, 25.0)

MRI_PHASES = ("pre", "arterial", "portal", "delayed")
# tissue → signal per phase, relative to the liver before contrast (fat suppressed)
MRI_SIGNAL = {
    T.AIR: (0, 0, 0, 0), T.FAT: (0.22, 0.23, 0.25, 0.25), T.VISCERAL_FAT: (0.22, 0.23, 0.25, 0.25),
    T.MUSCLE: (0.6, 0.7, 0.8, 0.8), T.BOWEL: (0.5, 0.8, 0.9, 0.85), T.BOWEL_GAS: (0.02, 0.02, 0.02, 0.02),
    T.LUNG: (0.05, 0.06, 0.06, 0.06), T.HEART: (0.4, 3.0, 1.8, 1.4), T.TABLE: (0, 0, 0, 0),
    T.STOMACH_WALL: (0.6, 1.0, 1.1, 1.0), T.STOMACH_CONTENT: (0.3, 0.3, 0.3, 0.3), T.STOMACH_GAS: (0.02,) * 4,
    T.LIVER: (1.0, 1.2, 1.65, 1.5), T.HEPATIC_VESSEL: (0.45, 0.8, 2.2, 1.6), T.SPLEEN: (0.75, 1.5, 1.6, 1.35),
    T.KIDNEY_CORTEX: (0.7, 2.6, 2.1, 1.7), T.KIDNEY_MEDULLA: (0.5, 1.0, 2.2, 2.0), T.RENAL_SINUS: (0.22,) * 4,
    T.GALLBLADDER: (0.3, 0.3, 0.3, 0.3), T.IVC: (0.45, 0.7, 1.9, 1.5), T.AORTA: (0.45, 3.2, 1.9, 1.5),
    T.BONE_CORTEX: (0.05,) * 4, T.BONE_MARROW: (0.45, 0.5, 0.55, 0.55), T.DISC: (0.4,) * 4, T.CSF: (0.25,) * 4,
    T.RIB: (0.2,) * 4, T.CARTILAGE: (0.4,) * 4,
}
# Tumour signal = liver signal × (1 + m × pattern[phase]); m is the tumour's ``mri_contrast``.
TUMOUR_KINETICS = {
    "washout": (0.0, 1.0, 0.0, -0.5),  # hypervascular (HCC-like): arterial wash-in, delayed wash-out
    "progressive": (0.0, -0.5, 0.0, 0.5),  # fibrous (cholangiocarcinoma-like): slow, late enhancement
    "hypoenhancing": (0.0, -0.5, -1.0, -1.0),  # metastasis-like: enhances less than the liver
}
KINETICS_WEIGHTS = {"washout": 0.5, "progressive": 0.25, "hypoenhancing": 0.25}
MRI_CONTRAST = (0.20, 0.35)
CT_CONTRAST_HU = (10.0, 40.0)


def draw_ct_lut(rng: np.random.Generator, tumours) -> np.ndarray:
    """One case's tissue → HU table (float32)."""
    lut = np.zeros(T.NUM_TISSUES, np.float32)
    for tissue, (lo, hi) in CT_HU.items():
        lut[tissue] = rng.uniform(lo, hi)
    liver = rng.uniform(*LIVER_HU)
    lut[T.LIVER] = liver
    lut[T.SPLEEN] = liver + rng.uniform(*SPLEEN_MINUS_LIVER_HU)
    for i, tum in enumerate(tumours):
        lut[T.TUMOUR + i] = liver - tum.ct_contrast_hu
        lut[T.TUMOUR_CORE + i] = liver - tum.ct_contrast_hu - rng.uniform(*NECROSIS_BELOW_TUMOUR_HU)
    return lut


def draw_mri_luts(rng: np.random.Generator, tumours) -> np.ndarray:
    """(4, NUM_TISSUES) signal per phase, relative to the liver before contrast."""
    luts = np.zeros((len(MRI_PHASES), T.NUM_TISSUES), np.float32)
    for tissue, values in MRI_SIGNAL.items():
        v = np.asarray(values, np.float64)
        if tissue == T.LIVER:
            enhancement = rng.uniform(0.8, 1.2)  # contrast dose and timing
            v = 1.0 + enhancement * (v - 1.0)
        else:
            v = v * rng.uniform(0.9, 1.1)
        luts[:, tissue] = v
    for i, tum in enumerate(tumours):
        rel = 1.0 + tum.mri_contrast * np.asarray(TUMOUR_KINETICS[tum.kinetics])
        luts[:, T.TUMOUR + i] = luts[:, T.LIVER] * rel
        luts[:, T.TUMOUR_CORE + i] = luts[:, T.TUMOUR + i]  # no necrosis signal in the MRI phases
    return luts
