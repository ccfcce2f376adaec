"""Full-case validation of a trained fold, and the cascade's next-stage predictions.

Every validation case is predicted whole (Gaussian-weighted sliding window,
:func:`autoliver.inference.sliding_window.predict_logits`) on its preprocessed grid and
compared with its reference labels there. ``validation/summary.json`` holds, per case and as
means over cases, two Dice scores per label: ``dice`` (voxels with exactly that label) and
``dice_region`` (voxels with that label or a higher one — for LiTS labels, the liver's region is
liver + tumour, the challenge's "liver Dice"). Dice is :func:`autoliver.evaluation.metrics.dice`,
the one function ``evaluate`` and ``find_best_configuration`` use too: a label that is absent from
both the reference and the prediction scores 1 (LiTS's convention, see there).

Where the preprocessing can map arrays back to the original grid, the predicted labels are
also written as ``validation/{case}.nii.gz`` in the original scan's geometry (and, on request,
the class probabilities as ``{case}.npz``) for ``find_best_configuration`` and ``ensemble``.

A liver-ROI lesion stage (``3d_liver_roi``) is validated on its liver box with, as its liver
channel, the first stage's own validation prediction of the same case when that fold of the first
stage is trained (what prediction will give it), else the reference liver; each entry says which
(``liver_input``). Its Dice is measured on the box, and its exported predictions cover the box only
(background elsewhere).

For a configuration that is some other configuration's previous stage (``3d_lowres`` →
``3d_cascade_fullres``), the predicted labels are also resampled to the next stage's grid and
stored in ``{results}/{dataset}/{configuration}/predicted_next_stage/{next}/{case}.b2nd``. Each
case is a validation case of exactly one fold, so after the five folds every training case has a
prediction made by a model that never saw it — the cascade's extra input.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from autoliver import progress
from autoliver.evaluation.metrics import dice
from autoliver.planning.plan import Configuration, Plan
from autoliver.preprocessing import storage
from autoliver.schema import write_json

SUMMARY_FILE = "summary.json"
STEP_SIZE = 0.5  # as predict's default, so find_best_configuration judges tiles placed as predict places them


def case_scores(pred: np.ndarray, ref: np.ndarray, labels: dict[str, int]) -> dict:
    fg = {name: v for name, v in labels.items() if v > 0}
    return {"dice": {name: dice(ref == v, pred == v) for name, v in fg.items()},
            "dice_region": {name: dice(ref >= v, pred >= v) for name, v in fg.items()}}


def summarize(per_case: list[dict], labels: dict[str, int]) -> dict:
    fg = [name for name, v in labels.items() if v > 0]
    mean = {}
    for name in fg:
        mean[name] = {}
        for kind in ("dice", "dice_region"):
            vals = [c[kind][name] for c in per_case if c[kind][name] is not None]
            mean[name][kind] = float(np.mean(vals)) if vals else None
    dices = [mean[n]["dice"] for n in fg if mean[n]["dice"] is not None]
    return {"mean": mean, "foreground_mean_dice": float(np.mean(dices)) if dices else None,
            "per_case": sorted(per_case, key=lambda c: c["case"])}


def _predict_logits():
    from autoliver.inference.sliding_window import predict_logits

    return predict_logits


def first_stage_liver(first_stage: Path | None, case: str, seg: np.ndarray, props: dict,
                      config: Configuration) -> tuple[np.ndarray, str]:
    """The liver channel of a liver-ROI stage's validation case: the first stage's prediction of it
    (its own validation of the same fold, on the original grid: cropped and resampled as the case
    was), or the reference liver when there is none. (mask (z, y, x) float32, which one)."""
    path = first_stage / f"{case}.nii.gz" if first_stage is not None else None
    if path is not None and path.is_file():
        from autoliver.io.images import read_image
        from autoliver.preprocessing import cropping, resampling
        from autoliver.preprocessing.pipeline import label_orders

        from autoliver.io.orientation import to_canonical

        labels = to_canonical(read_image(path).array, props.get("orientation"))  # the case's voxel order
        if tuple(labels.shape) == tuple(props["shape_before_crop_zyx"]):
            box = tuple(tuple(b) for b in props["crop_bbox_zyx"])
            orders, _ = label_orders(props, config)
            cropped = np.ascontiguousarray(cropping.crop(labels > 0, box)).astype(np.uint8)
            mask = resampling.resample_labels(cropped, tuple(props["shape_after_resampling_zyx"]), orders)
            return cropping.liver_channel(mask), "first stage"
    return (seg[0] > 0).astype(np.float32), "reference"


def network_input(folder: Path, case: str, num_classes: int, previous_stage: Path | None,
                  config: Configuration | None = None, first_stage: Path | None = None):
    """(C, z, y, x) float32 input of a whole case (+ one-hot previous-stage channels, or a liver-ROI
    stage's liver mask), labels, properties."""
    image, seg, props = storage.load_case(folder, case)
    if config is not None and config.roi_margin_mm > 0:
        liver, source = first_stage_liver(first_stage, case, seg, props, config)
        props = {**props, "liver_input": source}
        image = np.concatenate((image, liver[None]))
    if previous_stage is not None:
        import blosc2

        prev = blosc2.open(str(previous_stage / f"{case}{storage.IMAGE_SUFFIX}"), mode="r")[...][0]
        onehot = np.stack([prev == k for k in range(1, num_classes)]).astype(np.float32)
        image = np.concatenate((image, onehot))
    return image, seg, props


def write_next_stage(labels_zyx: np.ndarray, probabilities: torch.Tensor, target_shape, path: Path) -> None:
    """Resample class probabilities to the next stage's grid (trilinear), argmax, store int8."""
    import blosc2

    if tuple(labels_zyx.shape) == tuple(target_shape):
        out = labels_zyx
    else:
        resized = F.interpolate(probabilities[None].float(), size=tuple(target_shape), mode="trilinear", align_corners=False)
        out = resized[0].argmax(0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{storage.IMAGE_SUFFIX}")
    try:
        blosc2.asarray(np.ascontiguousarray(out[None].astype(np.int8)), urlpath=str(tmp), mode="w")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _revert_function():
    """The preprocessing's inverse (preprocessed grid → original scan grid), if this build has it."""
    try:
        from autoliver.preprocessing.pipeline import revert_to_original
    except ImportError:
        return None
    return revert_to_original


def _export_original(out_dir: Path, case: str, probabilities: np.ndarray, props: dict, config: Configuration,
                     save_probabilities: bool, revert) -> str:
    """Labels (and probabilities) on the original scan grid; returns why not, or ''."""
    from autoliver.io.images import Geometry, write_image
    from autoliver.schema import from_jsonable

    if revert is None:
        return "this build has no autoliver.preprocessing.pipeline"
    if "original_geometry" not in props:
        return "the preprocessed properties have no original_geometry"
    geometry = from_jsonable(Geometry, props["original_geometry"], "original_geometry")
    probs = revert(probabilities, props, config, is_label=False)
    write_image(out_dir / f"{case}.nii.gz", probs.argmax(0).astype(np.uint8), geometry)
    if save_probabilities:
        tmp = out_dir / f".{case}.tmp.npz"
        np.savez_compressed(tmp, probabilities=probs.astype(np.float16))
        os.replace(tmp, out_dir / f"{case}.npz")
    return ""


@torch.inference_mode()
def validate(network, plan: Plan, config: Configuration, folder: Path, cases: list[str], out_dir: Path, *,
             device: torch.device, previous_stage: Path | None = None, next_stages: dict[str, tuple[Path, Path]] | None = None,
             first_stage: Path | None = None,
             save_probabilities: bool = False, export: bool = True, show_progress: bool = True,
             mirror: bool | None = None) -> list[dict]:
    """Predict ``cases`` whole and score them; returns the per-case entries (rank-local under DDP).

    next_stages: next configuration name → (its preprocessed folder, where to store the labels).
    mirror: mirroring test-time augmentation over every patch axis, as ``predict`` does by default;
    None: on a GPU only (on a CPU it multiplies the validation's cost by 4 in 2D, 8 in 3D). Each
    entry records ``mirrored`` and ``step_size``, and the summary says how the predictions were made.
    """
    predict_logits = _predict_logits()
    network.eval()
    num_classes = config.network.num_classes
    if mirror is None:
        mirror = device.type == "cuda"
    mirror_axes = tuple(range(len(config.patch_size))) if mirror else None
    out_dir.mkdir(parents=True, exist_ok=True)
    entries, not_exported = [], set()
    revert = _revert_function()
    for case in (progress.bar(cases, desc="validation", unit="case", leave=False) if show_progress else cases):
        image, seg, props = network_input(folder, case, num_classes, previous_stage, config, first_stage)
        logits = predict_logits(network, torch.from_numpy(image), config.patch_size, step_size=STEP_SIZE,
                                mirror_axes=mirror_axes, device=device, context_slices=config.context_slices,
                                context_channels=len(config.normalization))
        probabilities = torch.softmax(logits.float(), dim=0)
        pred = probabilities.argmax(0).numpy()
        ref = np.maximum(seg[0], 0)
        entry = {"case": case, **case_scores(pred, ref, plan.labels), "mirrored": bool(mirror), "step_size": STEP_SIZE}
        if "liver_input" in props:  # a liver-ROI stage: whose liver mask it was given
            entry["liver_input"] = props["liver_input"]
        if export:
            why = _export_original(out_dir, case, probabilities.numpy(), props, config, save_probabilities, revert)
            entry["exported"] = not why
            if why:
                not_exported.add(why)
        entries.append(entry)
        for name, (next_folder, next_out) in (next_stages or {}).items():
            if storage.is_complete(next_folder, case):
                target_shape = storage.open_case(next_folder, case).shape_zyx
                write_next_stage(pred, probabilities, target_shape, next_out / f"{case}{storage.IMAGE_SUFFIX}")
    for why in sorted(not_exported):
        progress.say(f"validation: predictions not written on the original grid: {why} (Dice is on the preprocessed grid)")
    return entries


def write_summary(out_dir: Path, entries: list[dict], labels: dict[str, int], info: dict) -> dict:
    """summary.json: ``info``, the means and per-case scores, and how the cases were predicted
    (``mirroring``, ``step_size``: what ``find_best_configuration`` reports its choice was judged on)."""
    made = {}
    if entries and all("mirrored" in e for e in entries):
        mirrored = {e["mirrored"] for e in entries}
        made = {"mirroring": mirrored.pop() if len(mirrored) == 1 else "mixed",
                "step_size": max(e["step_size"] for e in entries)}
    summary = {**info, **made, **summarize(entries, labels)}
    write_json(out_dir / SUMMARY_FILE, summary)
    return summary
