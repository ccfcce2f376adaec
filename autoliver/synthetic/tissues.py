"""Tissue ids: the vocabulary between the anatomy painter and the intensity tables.

A phantom is first painted as a map of tissue ids (uint8); each modality then maps ids to
intensities with a lookup table (``appearance.py``), and the segmentation is another lookup.
"""
from __future__ import annotations

import numpy as np

(AIR, FAT, VISCERAL_FAT, MUSCLE, BOWEL, BOWEL_GAS, LUNG, HEART, TABLE, STOMACH_WALL, STOMACH_CONTENT,
 STOMACH_GAS, LIVER, HEPATIC_VESSEL, SPLEEN, KIDNEY_CORTEX, KIDNEY_MEDULLA, RENAL_SINUS, GALLBLADDER,
 IVC, AORTA, BONE_CORTEX, BONE_MARROW, DISC, CSF, RIB, CARTILAGE, BLADDER, PELVIC_ORGAN, BOWEL_CONTENT) = range(30)
NAMES = ("air", "fat", "visceral fat", "muscle", "bowel", "bowel gas", "lung", "heart", "table", "stomach wall",
         "stomach content", "stomach gas", "liver", "hepatic vessel", "spleen", "kidney cortex", "kidney medulla",
         "renal sinus", "gallbladder", "IVC", "aorta", "bone cortex", "bone marrow", "disc", "CSF", "rib", "cartilage",
         "bladder", "pelvic organ", "bowel content")
# Painted by generator version 3 only (the pelvis, and bowel loops with a wall around their content).
VERSION3_TISSUES = (BLADDER, PELVIC_ORGAN, BOWEL_CONTENT)
# Tumour i (0..MAX_TUMOURS-1) is TUMOUR + i, its necrotic core TUMOUR_CORE + i.
MAX_TUMOURS = 6
TUMOUR = 32
TUMOUR_CORE = TUMOUR + MAX_TUMOURS
NUM_TISSUES = TUMOUR_CORE + MAX_TUMOURS


def label_lut() -> np.ndarray:
    """Tissue id → segmentation label (0 background, 1 liver incl. its vessels, 2 tumour)."""
    lut = np.zeros(NUM_TISSUES, np.uint8)
    lut[[LIVER, HEPATIC_VESSEL]] = 1
    lut[TUMOUR:TUMOUR_CORE + MAX_TUMOURS] = 2
    return lut
