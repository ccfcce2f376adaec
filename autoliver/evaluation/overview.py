"""One overview picture per evaluated case: reference (solid) and prediction (dashed) outlines in
three orthogonal views through the largest reference lesion (else the liver), plus the axial slice
where reference and prediction disagree most."""
from __future__ import annotations

import numpy as np

from autoliver.evaluation import pictures as P

REFERENCE_COLOURS = ("#2ecc40", "#ff4136", "#0074d9", "#ffdc00")
PREDICTION_COLOURS = ("#7fdbff", "#f012be", "#b10dc9", "#ff851b")


def _centre(mask: np.ndarray, largest_component: bool = False):
    if not mask.any():
        return None
    if largest_component:
        from autoliver.evaluation.lesions import _label

        labels, n = _label(mask, 6)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    return np.argwhere(mask).mean(axis=0)


def focus_point(masks: dict[str, np.ndarray]) -> np.ndarray:
    """Largest reference tumour if there is one, else the centre of the liver, else of the volume."""
    for name, largest in (("tumour", True), ("liver", False)):
        if name in masks:
            c = _centre(masks[name], largest)
            if c is not None:
                return c
    any_mask = next(iter(masks.values()))
    return (np.array(any_mask.shape) - 1) / 2.0


def case_overview_png(reference: np.ndarray, prediction: np.ndarray, geometry, settings, result, *,
                      image: np.ndarray | None = None) -> bytes:
    """PNG bytes: 3 orthogonal views + the worst axial slice, outlines of every region."""
    spacing, direction = geometry.spacing_zyx_mm, geometry.direction
    ref = P.to_display(reference, spacing, direction)
    pred = P.to_display(prediction, spacing, direction)
    shown = P.to_display(image, spacing, direction).array if image is not None else None
    display_spacing = ref.spacing_zyx_mm
    ref_masks = {name: np.isin(ref.array, labels) for name, labels in settings.regions.items()}
    pred_masks = {name: np.isin(pred.array, labels) for name, labels in settings.regions.items()}
    outlines = []
    for k, name in enumerate(settings.regions):
        outlines.append(P.Outline(ref_masks[name], REFERENCE_COLOURS[k % 4], f"reference {name}"))
        outlines.append(P.Outline(pred_masks[name], PREDICTION_COLOURS[k % 4], f"prediction {name}", "dashed"))
    point = focus_point(ref_masks)
    disagreement = np.zeros(ref.array.shape, dtype=bool)
    for name in settings.regions:
        disagreement |= ref_masks[name] != pred_masks[name]
    per_slice = disagreement.reshape(disagreement.shape[0], -1).sum(axis=1)
    worst = np.array(point, dtype=float)
    worst[0] = int(np.argmax(per_slice)) if per_slice.any() else point[0]

    fig, axes = P.new_figure(1, 4)
    handles = []
    for ax, name in zip(axes[0][:3], P.VIEWS):
        handles += P.draw_view(ax, name, point, display_spacing, image=shown, outlines=outlines)
    worst_voxels = int(per_slice.max()) if per_slice.size else 0
    P.draw_view(axes[0][3], "axial", worst, display_spacing, image=shown, outlines=outlines,
                title=f"axial {int(worst[0])}: most disagreement ({worst_voxels} voxels)")
    scores = " · ".join(f"{name} Dice {m.dice:.3f}" for name, m in result.regions.items())
    if result.lesions is not None:
        d = result.lesions.rules["iou>0.5"].all
        scores += f" · lesions (IoU>0.5) TP {d.tp} FP {d.fp} FN {d.fn}"
    return P.png_bytes(fig, handles, f"{result.case}: {scores}")
