"""The pure per-case steps of preprocessing, and their inverse.

    images (+ label) ─ canonical order ─ crop to the body ─ [bilateral denoising] ─ normalise ─ resample ─▶ data, seg, properties
    prediction (labels or probabilities on the preprocessed grid) ─ resample back ─ uncrop ─ file's order ─▶ original grid

Arrays are (z, y, x). A plan with ``orientation == "canonical"`` (every plan since that field)
first turns each case to one voxel order (:mod:`autoliver.io.orientation`: axial slices first,
then front→back, right→left) by permutations and flips, and records them in the properties; an
older plan keeps the file's order. The file's geometry travels in the properties; data is
(C, z, y, x) float32, seg (1, z, y, x) int8.
Nothing here reads or writes files: :mod:`autoliver.preprocessing.run` does that.

Which configuration's settings apply: configurations that share a ``data_identifier`` share
their preprocessed data, and the data follows the 3D one among them (see
:func:`effective_configuration`). A 2D configuration with data of its own keeps each case's
slice spacing (only the in-plane axes are resampled), as nnU-Net's 2d does.
"""
from __future__ import annotations

import hashlib
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from autoliver.errors import UserError
from autoliver.io.images import Image
from autoliver.io import orientation
from autoliver.planning.plan import Configuration, Plan
from autoliver.preprocessing import cropping, normalization, resampling
from autoliver.schema import dumps, to_jsonable

PREPROCESSING_VERSION = 1  # bump when the stored data of an unchanged plan would differ
MAX_LOCATIONS_PER_CLASS = 10_000
MAX_LOCATIONS_PER_LESION = 50
# Normalisation schemes that measure statistics over the body of the case.
_NEEDS_BODY = ("zscore", "histeq", "liver_zscore")


# ----------------------------------------------------------------------------------------------
# Which settings, which grid
# ----------------------------------------------------------------------------------------------

def _preprocessing_settings(config: Configuration, *, with_z: bool = True) -> dict:
    spacing = list(config.spacing_zyx_mm) if with_z else list(config.spacing_zyx_mm[1:])
    resampling = to_jsonable(config.resampling)
    if not resampling["anti_aliasing"]:  # only then: data made before the setting existed keeps its hash
        del resampling["anti_aliasing"]
    settings = {"spacing_zyx_mm": spacing, "normalization": to_jsonable(config.normalization),
                "resampling": resampling, "denoise": to_jsonable(config.denoise),
                "keeps_slice_spacing": config.network.dims == 2}
    if config.roi_margin_mm > 0:  # only then: the data (and hash) of other configurations is unchanged
        settings["roi_margin_mm"] = float(config.roi_margin_mm)
    return settings


def effective_configuration(plan: Plan, config: Configuration) -> Configuration:
    """The configuration whose settings produce the data of ``config.data_identifier``.

    The first 3D configuration of the plan with the same data identifier, else ``config``.
    Raises UserError when configurations that share data disagree on how to make it.
    """
    sharing = [c for c in plan.configurations.values() if c.data_identifier == config.data_identifier]
    chosen = next((c for c in sharing if c.network.dims == 3), config)
    for other in sharing:
        a = _preprocessing_settings(chosen, with_z=other.network.dims == 3)
        b = _preprocessing_settings(other, with_z=other.network.dims == 3)
        a.pop("keeps_slice_spacing"), b.pop("keeps_slice_spacing")
        if a != b:
            diff = sorted(k for k in a if a[k] != b[k])
            raise UserError(f"plan: configurations {chosen.name!r} and {other.name!r} share data_identifier "
                            f"{config.data_identifier!r} but differ in {', '.join(diff)}. Give them different "
                            "data identifiers or the same preprocessing settings (re-run plan).")
    return chosen


def preprocessing_hash(plan: Plan, config: Configuration) -> str:
    """A short digest of everything that determines a case's stored data (stale data is redone)."""
    cfg = effective_configuration(plan, config)
    key = {"version": PREPROCESSING_VERSION, "modality": plan.modality, "labels": plan.labels,
           "channel_names": list(plan.channel_names), **_preprocessing_settings(cfg)}
    if any(n.scheme == "liver_zscore" for n in cfg.normalization):
        # liver_zscore data once used the label's statistics; such data is stale (redone), data of
        # other schemes is unchanged and keeps its hash.
        key["liver_zscore_statistics"] = "label-free case estimate"
    if plan.orientation != "as_stored":  # only then: data of older plans keeps its hash
        key["orientation"] = plan.orientation
    return hashlib.sha256(dumps(key).encode()).hexdigest()[:16]


def target_spacing(config: Configuration, spacing_zyx_mm: Sequence[float]) -> tuple[float, float, float]:
    if config.network.dims == 2:
        return (float(spacing_zyx_mm[0]), *map(float, config.spacing_zyx_mm[1:]))
    return tuple(float(s) for s in config.spacing_zyx_mm)


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------

def expected_input(plan: Plan, case: str = "", ending: str = ".nii.gz") -> str:
    """What files a case of ``plan`` consists of, in words (for error messages)."""
    n, c = len(plan.channel_names), case or "case"
    if plan.phases_in_file:
        return f"one 4D file of {n} phases per case ({c}_0000{ending}, (t, z, y, x))"
    if n == 1:
        return f"1 channel ({c}_0000{ending}, 3D)"
    return f"{n} channels ({c}_0000{ending} … {c}_{n - 1:04d}{ending}, 3D each)"


def check_input_layout(images: Sequence[Image], plan: Plan, case: str = "") -> None:
    """Raise a one-line UserError when the images of a case do not hold the plan's channels.

    The volumes a case gives must be the plan's channels: one 3D file per channel, or one 4D
    file whose volumes are the channels (accepted whatever layout the dataset had: same voxels).
    Anything else would reach the network with the wrong channels, or stop it with a traceback.
    """
    if not images:
        return  # stack_channels says so
    n = len(plan.channel_names)
    volumes = [im.array.shape[0] if im.array.ndim == 4 else 1 for im in images]
    one_4d = len(images) == 1 and images[0].array.ndim == 4
    if sum(volumes) == n and (one_4d or all(im.array.ndim == 3 for im in images)):
        return
    first = images[0]
    ending = first.ending or ".nii.gz"
    name = Path(first.path).name if first.path else "image"
    if len(images) == 1 and first.array.ndim == 4:
        got = f"a 4D image with {volumes[0]} volumes ({name})"
    elif len(images) == 1:
        got = f"a {first.array.ndim}D image ({name})"
    else:
        got = f"{len(images)} files ({', '.join(f'{im.array.ndim}D' for im in images)})"
    how = (f"Give each case as one 4D file of its {n} phases, as in training" if plan.phases_in_file
           else "Give one 3D file per channel")
    where = f"case {case}" if case else "preprocess_case"
    raise UserError(f"{where}: the model takes {expected_input(plan, case, ending)}; got {got}. {how}.")


def stack_channels(images: Sequence[Image], case: str = "") -> tuple[list[np.ndarray], Image]:
    """The channel arrays of a case: one Image per channel, or one 4D Image (phases first)."""
    where = f"case {case}" if case else "preprocess_case"
    if not images:
        raise UserError(f"{where}: no image given.")
    if len(images) == 1 and images[0].array.ndim == 4:
        arrays = list(images[0].array)
    else:
        arrays = []
        for im in images:
            if im.array.ndim != 3:
                raise UserError(f"{where}: {im.path or 'image'} has shape {im.array.shape}; with several channel "
                                "files each must be 3D. A 4D file (phases) must be the only channel file.")
            arrays.append(im.array)
    first = images[0]
    for im, a in zip(images, arrays):
        if a.shape != arrays[0].shape:
            raise UserError(f"{where}: channel {im.path or ''} has shape {a.shape} but the first channel has "
                            f"{arrays[0].shape}; all channels must be on one grid (resample them first).")
    return arrays, first


def _check_seg(seg: np.ndarray, shape: tuple, plan: Plan, case: str) -> np.ndarray:
    where = f"case {case}" if case else "preprocess_case"
    seg = np.asarray(seg)
    if seg.ndim == 4 and seg.shape[0] == 1:
        seg = seg[0]
    if tuple(seg.shape) != tuple(shape):
        raise UserError(f"{where}: label map has shape {seg.shape} but the image has {tuple(shape)}; they must "
                        "be on the same grid (run verify_dataset).")
    allowed = sorted(plan.labels.values())
    lo, hi = (int(seg.min()), int(seg.max())) if seg.size else (0, 0)
    if lo < 0 or hi > 127:
        raise UserError(f"{where}: label values must be among {allowed}, got values from {lo} to {hi}.")
    if seg.dtype.kind == "f" and not np.array_equal(seg, np.round(seg)):
        raise UserError(f"{where}: label map holds non-integer values; labels must be integers {allowed}.")
    seg = seg.astype(np.uint8, copy=False)
    import torch  # bincount over uint8 without numpy's int64 copy

    present = np.flatnonzero(torch.bincount(torch.from_numpy(seg).reshape(-1), minlength=hi + 1).numpy())
    unknown = sorted(set(int(v) for v in present) - set(allowed))
    if unknown:
        raise UserError(f"{where}: label values {unknown} are not declared in dataset.json labels {plan.labels}.")
    return seg


def _norm_per_channel(config: Configuration, channels: int, case: str):
    norms = config.normalization
    if len(norms) == channels:
        return list(norms)
    if len(norms) == 1:  # one scheme for every phase of a 4D file
        return list(norms) * channels
    raise UserError(f"case {case}: the plan's {config.name} normalises {len(norms)} channels but the case has "
                    f"{channels}; the dataset's channels do not match the plan (re-run plan).")


def denoise(volume: np.ndarray, spacing_zyx_mm: Sequence[float], domain_sigma_mm: float,
            range_sigma: float) -> np.ndarray:
    """3D bilateral filter in raw intensity units; the compiled op when present, else SimpleITK's
    exact filter (same definition, slower)."""
    try:
        from autoliver.ops.bilateral import bilateral_filter
    except ImportError:
        bilateral_filter = None
    volume = np.ascontiguousarray(volume, dtype=np.float32)
    if bilateral_filter is not None:
        return np.asarray(bilateral_filter(volume, tuple(spacing_zyx_mm), domain_sigma_mm, range_sigma),
                          dtype=np.float32)
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(volume)
    img.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx_mm)))  # domain sigma is in mm
    f = sitk.BilateralImageFilter()
    f.SetDomainSigma(float(domain_sigma_mm))
    f.SetRangeSigma(float(range_sigma))
    return sitk.GetArrayFromImage(f.Execute(img)).astype(np.float32, copy=False)


def sample_class_locations(seg: np.ndarray, labels: Sequence[int], seed: int,
                           max_per_class: int = MAX_LOCATIONS_PER_CLASS) -> dict[str, list[list[int]]]:
    """Up to ``max_per_class`` voxel positions [z, y, x] per foreground label, drawn uniformly
    (for foreground oversampling in training); every label gets a key, possibly an empty list."""
    rng = np.random.default_rng(seed)
    flat = seg.reshape(-1)
    out = {}
    for v in labels:
        idx = np.flatnonzero(flat == v)
        if idx.size > max_per_class:
            idx = np.sort(rng.choice(idx, max_per_class, replace=False))
        out[str(int(v))] = np.stack(np.unravel_index(idx, seg.shape), axis=1).astype(int).tolist()
    return out


def lesion_locations(seg: np.ndarray, labels: dict[str, int], seed: int,
                     per_lesion: int = MAX_LOCATIONS_PER_LESION) -> list[list[list[int]]] | None:
    """Up to ``per_lesion`` voxel positions [z, y, x] of every tumour (26-connected component of the
    tumour label), so training can centre patches on lesions chosen one by one — a 5 mm metastasis
    as often as a 60 mm one (voxel-uniform sampling of the class would almost never pick it).
    None when the labels have no tumour label."""
    from autoliver.fingerprint.stats import TUMOUR_NAMES, _components, find_label

    tumour = find_label(labels, TUMOUR_NAMES)
    if tumour is None:
        return None
    mask = seg == tumour
    if not mask.any():
        return []
    comp, n = _components(mask)
    comp = np.asarray(comp).reshape(-1)
    rng = np.random.default_rng(seed)
    idx = np.flatnonzero(comp)
    order = np.argsort(comp[idx], kind="stable")
    idx, ids = idx[order], comp[idx][order]
    starts = np.searchsorted(ids, np.arange(1, int(ids.max()) + 1))
    out = []
    for members in np.split(idx, starts[1:]):
        if members.size == 0:
            continue
        if members.size > per_lesion:
            members = np.sort(rng.choice(members, per_lesion, replace=False))
        out.append(np.stack(np.unravel_index(members, seg.shape), axis=1).astype(int).tolist())
    return out


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------

def grid_properties(case: str, geometry, channels: int, box, shape, crop_shape, new_shape, spacing,
                    new_spacing) -> dict:
    """The properties that map a case's network grid back to its scan (autoliver.inference.original_grid):
    the scan's geometry, the crop box and the shapes and spacings (z, y, x) before and after."""
    return {
        "case": case,
        "original_geometry": to_jsonable(geometry),
        "channels": channels,
        "crop_bbox_zyx": [list(b) for b in box],
        "shape_before_crop_zyx": list(shape),
        "shape_after_crop_zyx": list(crop_shape),
        "shape_after_resampling_zyx": list(new_shape),
        "spacing_before_zyx_mm": list(spacing),
        "spacing_after_zyx_mm": list(new_spacing),
    }


def preprocess_case(images: Sequence[Image], plan: Plan, config: Configuration, seg: np.ndarray | None = None,
                    *, case: str = "") -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Crop, (denoise,) normalise and resample one case as the plan says.

    Returns data (C, z, y, x) float32, seg (1, z, y, x) int8 or None, and the properties that
    :func:`revert_to_original` needs (JSON-ready).
    """
    cfg = effective_configuration(plan, config)
    check_input_layout(images, plan, case)
    arrays, first = stack_channels(images, case)
    geometry = first.geometry
    if seg is not None:
        seg = _check_seg(seg, tuple(int(n) for n in arrays[0].shape), plan, case)
    # one voxel order for every case (views: permutations and flips only)
    orient = orientation.canonical_axes(geometry.direction) if plan.orientation == "canonical" else None
    arrays = [orientation.to_canonical(a, orient) for a in arrays]
    seg = orientation.to_canonical(seg, orient) if seg is not None else None
    shape = tuple(int(n) for n in arrays[0].shape)
    spacing = tuple(float(s) for s in orientation.canonical_zyx(geometry.spacing_zyx_mm, orient))
    norms = _norm_per_channel(cfg, len(arrays), case)
    for c, n in enumerate(norms):
        normalization.check_normalization(n, f"plan.configurations.{cfg.name}.normalization[{c}]")
    fg_labels = sorted(v for v in plan.labels.values() if v != 0)

    box = cropping.body_box(arrays, plan.modality, seg)
    roi = None
    if cfg.roi_margin_mm > 0:
        # the liver's box: from the reference labels in training, from the first stage's labels
        # (given as ``seg``) in prediction; an empty liver keeps the body box (nothing is cut)
        roi = cropping.liver_box(seg > 0, spacing, cfg.roi_margin_mm) if seg is not None else None
        if roi is None:
            roi = box
        else:  # within the body box, so the padding beside the body stays out
            roi = tuple((max(a, c), min(b, d)) if min(b, d) > max(a, c) else (c, d)
                        for (a, b), (c, d) in zip(box, roi))
        box = roi
    channels = [cropping.crop(a, box) for a in arrays]
    seg_c = cropping.crop(seg, box) if seg is not None else None
    crop_shape = tuple(b - a for a, b in box)

    if cfg.denoise.enabled:
        channels = [denoise(c, spacing, cfg.denoise.domain_sigma_mm, cfg.denoise.range_sigma) for c in channels]

    # The label never enters normalisation (see normalization.py): training data must be what
    # prediction will make of the same scan.
    body = cropping.body_mask(channels, plan.modality) if any(n.scheme in _NEEDS_BODY for n in norms) else None
    params = [normalization.resolve_normalization(ch, n, body=body) for ch, n in zip(channels, norms)]
    del body

    new_spacing = target_spacing(cfg, spacing)
    new_shape = resampling.shape_for_spacing(crop_shape, spacing, new_spacing)
    r = cfg.resampling
    axis = resampling.through_plane_axis(spacing, new_spacing) if r.separate_z else 0
    orders_image = resampling.axis_orders(r.order_image, r.order_z_image, r.separate_z, axis)
    orders_label = resampling.axis_orders(r.order_label, r.order_z_label, r.separate_z, axis)

    data = resampling.empty((len(channels), *new_shape))
    for c, (ch, p) in enumerate(zip(channels, params)):
        resampling.resample_image(ch, new_shape, orders_image, through_axis=axis,
                                  transform=normalization.make_transform(p), out=data[c],
                                  anti_aliasing=r.anti_aliasing)
    del channels

    seg_out, locations = None, None
    if seg_c is not None:
        seg_out = resampling.resample_labels(seg_c, new_shape, orders_label, labels=fg_labels)
        locations = sample_class_locations(seg_out, fg_labels, seed=zlib.crc32(case.encode()))
        lesions = lesion_locations(seg_out, plan.labels, seed=zlib.crc32(case.encode()))
        seg_out = seg_out.view(np.int8)[None]  # values <= 127: same bits

    properties = {
        **grid_properties(case, geometry, len(arrays), box, shape, crop_shape, new_shape, spacing, new_spacing),
        "resampling": {"orders_image_zyx": list(orders_image), "orders_label_zyx": list(orders_label),
                       "through_plane_axis": axis if r.separate_z else None},
        "normalization": [p.summary() for p in params],
        "denoised": bool(cfg.denoise.enabled),
        "data_identifier": config.data_identifier,
        "preprocessing_hash": preprocessing_hash(plan, config),
    }
    if orient is not None:
        properties["orientation"] = orient
    if locations is not None:
        properties["class_locations"] = locations
        if lesions is not None:
            properties["lesion_locations"] = lesions
    if roi is not None:
        properties["liver_roi"] = True
    return data, seg_out, properties


# ----------------------------------------------------------------------------------------------
# Inverse (what prediction calls)
# ----------------------------------------------------------------------------------------------

def label_orders(properties: dict, config: Configuration | None) -> tuple[tuple[int, int, int], int]:
    """The interpolation order per (z, y, x) axis used for this case's labels (and probabilities),
    and its through-plane axis; from the properties, else from ``config``."""
    info = properties.get("resampling")
    if info:
        axis = info.get("through_plane_axis")
        return tuple(info["orders_label_zyx"]), (0 if axis is None else int(axis))
    r = config.resampling
    axis = 0
    if r.separate_z:
        axis = resampling.through_plane_axis(properties["spacing_before_zyx_mm"], properties["spacing_after_zyx_mm"])
    return resampling.axis_orders(r.order_label, r.order_z_label, r.separate_z, axis), axis


_orders_from = label_orders  # the name inference first used


def revert_to_original(array: np.ndarray, properties: dict, config: Configuration | None, is_label: bool) -> np.ndarray:
    """Bring a prediction on the preprocessed grid back onto the case's original grid.

    Labels (z, y, x) (or (1, z, y, x)) → uint8 (z, y, x), resampled as the plan resamples labels
    (one-hot interpolation, most probable class); probabilities (K, z, y, x) → float32 (K, z, y, x),
    interpolated per class, with background probability 1 outside the crop box. The result lines
    up voxel for voxel with ``properties["original_geometry"]``.
    """
    arr = np.asarray(array)
    box = tuple(tuple(b) for b in properties["crop_bbox_zyx"])
    crop_shape = tuple(properties["shape_after_crop_zyx"])
    full_shape = tuple(properties["shape_before_crop_zyx"])
    orders, axis = label_orders(properties, config)
    if is_label:
        if arr.ndim == 4 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 3:
            raise ValueError(f"revert_to_original: a label map must be (z, y, x), got shape {arr.shape}")
        arr = np.where(arr < 0, 0, arr) if arr.dtype.kind == "i" else arr
        restored = resampling.resample_labels(arr, crop_shape, orders)
        return np.ascontiguousarray(orientation.from_canonical(cropping.uncrop(restored, box, full_shape, 0),
                                                               properties.get("orientation")))
    if arr.ndim != 4:
        raise ValueError(f"revert_to_original: probabilities must be (K, z, y, x), got shape {arr.shape}")
    restored = resampling.resample_probabilities(arr, crop_shape, orders, through_axis=axis)
    fill = [1.0] + [0.0] * (arr.shape[0] - 1)
    return np.ascontiguousarray(orientation.from_canonical(cropping.uncrop(restored, box, full_shape, fill),
                                                           properties.get("orientation")))
