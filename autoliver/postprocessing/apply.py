"""The post-processing recipe (a small JSON-able dataclass) and the function that applies it.

``find_best_configuration`` decides each field on cross-validation (a step is kept only when it
raises the Dice of the label it acts on and loses no reference lesion; CRF settings among a small
grid) and stores the recipe in its choice file; ``predict`` applies it to every case.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autoliver.ops.crf import CRFParams
from autoliver.postprocessing import steps


@dataclass(frozen=True)
class Postprocessing:
    """Which steps to run after the network (all off = plain argmax).

    crf: refine probabilities with the 3D dense CRF (needs the image).
    crf_params: the CRF settings ``find_best_configuration`` chose (None: ``CRFParams()``, Christ et al.'s).
    otsu: labels from Otsu thresholds of the probabilities instead of argmax.
    keep_largest_liver: keep only the largest connected component of liver ∪ tumour.
    tumour_in_liver: drop tumour components farther than ``tumour_margin_mm`` from the liver.
    min_lesion_ml: tumour components below this volume (ml) become liver/background (0 = off).
    """

    crf: bool = False
    otsu: bool = False
    keep_largest_liver: bool = False
    tumour_in_liver: bool = False
    tumour_margin_mm: float = 5.0
    min_lesion_ml: float = 0.0
    crf_params: CRFParams | None = None

    @property
    def needs_probabilities(self) -> bool:
        return self.crf or self.otsu

    def describe(self) -> str:
        parts = [name for name in ("crf", "otsu", "keep_largest_liver") if getattr(self, name)]
        if self.crf and self.crf_params is not None:
            parts[0] = f"crf({describe_crf(self.crf_params)})"
        if self.tumour_in_liver:
            parts.append(f"tumour_in_liver({self.tumour_margin_mm:g} mm)")
        if self.min_lesion_ml > 0:
            parts.append(f"min_lesion({self.min_lesion_ml:g} ml)")
        return ", ".join(parts) if parts else "none"


NONE = Postprocessing()


def describe_crf(params: CRFParams) -> str:
    """The settings that differ from ``CRFParams()``, e.g. 'appearance_intensity_sigma=0.05'."""
    default = CRFParams()
    changed = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in vars(params).items()
               if getattr(default, k) != v]
    return ", ".join(changed) or "defaults"


def labels_from_probabilities(probabilities: np.ndarray, recipe: Postprocessing, labels: dict[str, int],
                              image: np.ndarray | None = None, spacing_zyx_mm=None, crf_params=None) -> np.ndarray:
    """(K, z, y, x) probabilities → (z, y, x) uint8 labels, with the probability steps of ``recipe``."""
    liver, tumour = steps.liver_and_tumour_labels(labels)
    p = probabilities
    if recipe.crf:
        if image is None or spacing_zyx_mm is None:
            raise ValueError("labels_from_probabilities: the CRF step needs the image and its spacing")
        p = steps.dense_crf(p, image, spacing_zyx_mm, crf_params or recipe.crf_params)
    if recipe.otsu:
        return steps.labels_by_otsu(p, liver, tumour)
    return steps.argmax_labels(p)


def postprocess_labels(seg: np.ndarray, spacing_zyx_mm, recipe: Postprocessing, labels: dict[str, int]) -> np.ndarray:
    """The label-map steps of ``recipe`` (largest liver, tumour in liver, small lesions)."""
    liver, tumour = steps.liver_and_tumour_labels(labels)
    if recipe.keep_largest_liver:
        seg = steps.keep_largest_liver(seg, liver, tumour)
    if recipe.tumour_in_liver:
        seg = steps.constrain_tumour_to_liver(seg, spacing_zyx_mm, liver, tumour, recipe.tumour_margin_mm)
    if recipe.min_lesion_ml > 0:
        seg = steps.remove_small_lesions(seg, spacing_zyx_mm, liver, tumour, recipe.min_lesion_ml)
    return seg


def postprocess(seg_or_probabilities: np.ndarray, spacing_zyx_mm, recipe: Postprocessing, labels: dict[str, int],
                image: np.ndarray | None = None, crf_params=None) -> np.ndarray:
    """Labels (z, y, x) or probabilities (K, z, y, x) → post-processed uint8 labels (z, y, x)."""
    a = seg_or_probabilities
    if a.ndim == 4:
        a = labels_from_probabilities(a, recipe, labels, image, spacing_zyx_mm, crf_params)
    elif recipe.needs_probabilities:
        raise ValueError("postprocess: this recipe (crf/otsu) needs probabilities, got a label map")
    return postprocess_labels(np.asarray(a, dtype=np.uint8), spacing_zyx_mm, recipe, labels)
