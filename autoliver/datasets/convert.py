"""Converters from the public liver datasets to autoliver's (nnU-Net v2) raw layout.

- LiTS 2017 release: ``volume-N.nii`` + ``segmentation-N.nii`` (labels 0/1/2), optionally
  ``test-volume-N.nii``, in one folder or nested folders (the release ships two training batches).
- MSD ``Task03_Liver``: ``imagesTr/liver_N.nii.gz``, ``labelsTr/liver_N.nii.gz``, ``imagesTs/``;
  macOS ``._*`` resource files are skipped.

Cases become ``liver_N`` in both, so the two sources name the same patient alike. A label must lie
on its volume's grid up to header rounding (:func:`grid_difference`); otherwise the case is an
error that says what differs and by how much, never silently written on the volume's grid. The dataset is
built in a hidden ``.{name}.partial`` folder (one case in memory at a time; an interrupted run
resumes there) and renamed into place when complete, so a half-converted dataset never looks
finished. An existing dataset is never touched unless ``overwrite``.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

from autoliver.errors import UserError
from autoliver.io import read_image, write_image
from autoliver.progress import bar
from autoliver.schema import write_json

LIVER_LABELS = {"background": 0, "liver": 1, "tumour": 2}


def _dataset_json(num_training: int, description: str) -> dict:
    return {
        "name": "LiTS",
        "description": description,
        "channel_names": {"0": "CT"},
        "labels": LIVER_LABELS,
        "numTraining": num_training,
        "file_ending": ".nii.gz",
        "reference": "Bilic et al., The Liver Tumor Segmentation Benchmark (LiTS), Medical Image Analysis 2023",
    }


def _prepare_target(target: Path, overwrite: bool) -> Path:
    if target.exists():
        if not overwrite:
            raise UserError(f"{target}: a dataset already exists here. Pass --overwrite to replace it, "
                            "or choose another --dataset-id/--name.")
    partial = target.with_name(f".{target.name}.partial")
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (partial / sub).mkdir(parents=True, exist_ok=True)
    return partial


def _finish(partial: Path, target: Path, num_training: int, description: str) -> Path:
    if not any((partial / "imagesTs").iterdir()):
        (partial / "imagesTs").rmdir()
    write_json(partial / "dataset.json", _dataset_json(num_training, description))
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)
    return target


# Header values are stored with limited precision (float32 spacings, rounded origins); a label grid
# whose voxel centres lie within this fraction of a voxel of the volume's is the same grid.
ROUNDING_VOXELS = 0.05


def grid_difference(label, image) -> str:
    """'' when two geometries of equal shape place every voxel centre within ROUNDING_VOXELS of the
    smallest spacing of each other; else what differs and by how much (the largest displacement of
    a corner voxel centre, in mm)."""
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=np.float64)
    corners *= np.array(image.shape_zyx[::-1], dtype=np.float64) - 1  # (x, y, z) voxel indices

    def world(g):
        d = np.asarray(g.direction, dtype=np.float64).reshape(3, 3)
        return np.asarray(g.origin) + (corners * np.asarray(g.spacing)) @ d.T

    moved = float(np.max(np.linalg.norm(world(label) - world(image), axis=1)))
    tolerance = ROUNDING_VOXELS * min(image.spacing)
    if moved <= tolerance:
        return ""
    what = []
    if not np.allclose(label.spacing, image.spacing, rtol=1e-6, atol=1e-6):
        what.append(f"spacing (x, y, z) {_rounded(label.spacing, 5)} vs {_rounded(image.spacing, 5)} mm")
    if not np.allclose(label.origin, image.origin, rtol=0, atol=1e-4):
        what.append(f"origin {_rounded(label.origin, 3)} vs {_rounded(image.origin, 3)} mm")
    if not np.allclose(label.direction, image.direction, atol=1e-6):
        what.append(f"direction {label.orientation()} {_rounded(label.direction, 4)} vs "
                    f"{image.orientation()} {_rounded(image.direction, 4)}")
    return f"{'; '.join(what)}: voxel centres move by up to {moved:.3g} mm (tolerance {tolerance:.3g} mm)"


def _rounded(values, digits: int) -> tuple:
    return tuple(round(float(v), digits) for v in values)


def _convert_pair(image_path: Path, label_path: Path | None, out_image: Path, out_label: Path | None) -> None:
    """One case: image as-is (int16 when lossless), label as uint8 on the image's grid."""
    if out_image.exists() and (out_label is None or out_label.exists()):
        return  # done in an earlier, interrupted run
    image = read_image(image_path)
    arr = image.array
    if np.issubdtype(arr.dtype, np.floating) and np.array_equal(arr, np.round(arr)) and \
            arr.min() >= np.iinfo(np.int16).min and arr.max() <= np.iinfo(np.int16).max:
        arr = arr.astype(np.int16)
    if label_path is not None:
        label = read_image(label_path)
        seg = label.array
        if seg.shape != image.array.shape:
            raise UserError(f"{label_path}: shape {seg.shape} differs from its volume {image_path.name} "
                            f"{image.array.shape}. The pair cannot be converted; remove the case.")
        if not np.array_equal(seg, np.round(seg)):
            raise UserError(f"{label_path}: non-integer label values. Re-export the segmentation.")
        values = set(np.unique(seg).astype(int).tolist())
        if not values <= {0, 1, 2}:
            raise UserError(f"{label_path}: label values {sorted(values)}, LiTS allows 0, 1, 2.")
        problem = grid_difference(label.geometry, image.geometry)
        if problem:
            raise UserError(f"{label_path}: its grid must match its volume {image_path.name}'s up to rounding "
                            f"(voxel centres within {ROUNDING_VOXELS:g} voxel), got {problem}. The label would be "
                            "written on the volume's grid and mark other voxels; fix the header or remove the case.")
        # Within rounding: the same voxels, written on the volume's grid.
        write_image(out_label, seg.astype(np.uint8), image.geometry)
    write_image(out_image, arr, image.geometry)


def convert_lits(source: Path, target: Path, overwrite: bool = False, progress: bool = True) -> Path:
    source = Path(source)
    if not source.is_dir():
        raise UserError(f"{source}: not a folder. Point convert_lits at the folder holding volume-N.nii files.")
    pat = re.compile(r"^(volume|segmentation|test-volume)-(\d+)\.nii(\.gz)?$")
    found: dict[str, dict[int, Path]] = {"volume": {}, "segmentation": {}, "test-volume": {}}
    for p in sorted(source.rglob("*.nii*")):
        m = pat.match(p.name)
        if m and not p.name.startswith("._"):
            found[m.group(1)][int(m.group(2))] = p
    volumes, segs = found["volume"], found["segmentation"]
    if not volumes:
        raise UserError(f"{source}: no volume-N.nii files found. Is this the LiTS release folder?")
    unpaired = sorted(set(volumes) ^ set(segs))
    if unpaired:
        raise UserError(f"{source}: volumes and segmentations do not pair up for N in {unpaired[:10]}. "
                        "Both volume-N.nii and segmentation-N.nii are needed for each training case.")
    partial = _prepare_target(target, overwrite)
    for n in bar(sorted(volumes), desc="convert_lits", unit="case", disable=not progress):
        _convert_pair(volumes[n], segs[n], partial / "imagesTr" / f"liver_{n}_0000.nii.gz",
                      partial / "labelsTr" / f"liver_{n}.nii.gz")
    for n in bar(sorted(found["test-volume"]), desc="convert_lits test", unit="case", disable=not progress):
        _convert_pair(found["test-volume"][n], None, partial / "imagesTs" / f"liver_test_{n}_0000.nii.gz", None)
    return _finish(partial, target, len(volumes), "LiTS 2017, converted by autoliver convert_lits")


def convert_msd(source: Path, target: Path, overwrite: bool = False, progress: bool = True) -> Path:
    source = Path(source)
    images, labels = source / "imagesTr", source / "labelsTr"
    if not images.is_dir() or not labels.is_dir():
        raise UserError(f"{source}: expected imagesTr/ and labelsTr/ (MSD Task03_Liver layout).")

    def cases(folder: Path) -> dict[str, Path]:
        return {p.name[: -len(".nii.gz")]: p for p in folder.glob("*.nii.gz") if not p.name.startswith("._")}

    tr_images, tr_labels = cases(images), cases(labels)
    missing = sorted(set(tr_images) ^ set(tr_labels))
    if missing:
        raise UserError(f"{source}: images and labels do not pair up for {missing[:10]}.")
    if not tr_images:
        raise UserError(f"{images}: no .nii.gz files.")
    partial = _prepare_target(target, overwrite)
    for case in bar(sorted(tr_images), desc="convert_msd", unit="case", disable=not progress):
        _convert_pair(tr_images[case], tr_labels[case], partial / "imagesTr" / f"{case}_0000.nii.gz",
                      partial / "labelsTr" / f"{case}.nii.gz")
    test = cases(source / "imagesTs") if (source / "imagesTs").is_dir() else {}
    for case in bar(sorted(test), desc="convert_msd test", unit="case", disable=not progress):
        _convert_pair(test[case], None, partial / "imagesTs" / f"{case}_0000.nii.gz", None)
    return _finish(partial, target, len(tr_images), "MSD Task03_Liver, converted by autoliver convert_msd")
