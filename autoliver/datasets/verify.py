"""Check a raw dataset before anything is computed from it, and report every problem at once.

Each problem is one line that names the file, says what is wrong and how to fix it. Checks:
dataset.json keys; missing, stray and duplicate case ids; every image and label readable; the
channel count; image/label geometry agreement (shape exactly, spacing/origin/direction within a
tolerance); 4D files where 3D is expected (and the reverse for 4D phase datasets); NaN/Inf; label
values not declared in dataset.json; declared labels not numbered 0, 1, …, n-1; non-integer labels;
empty labels.
"""
from __future__ import annotations

import re
import warnings
from collections import Counter

import numpy as np

from autoliver.datasets.dataset import DatasetInfo
from autoliver.errors import UserError, UserErrors
from autoliver.io import read_image
from autoliver.io.checks import training_image_problems
from autoliver.progress import bar

GEOMETRY_TOLERANCE = 1e-3  # relative (spacing) / absolute (mm origin, direction cosines)


def _check_case(info: DatasetInfo, case: str) -> list[str]:
    problems: list[str] = []
    allowed = set(info.labels.values())
    images = []
    for path in info.image_files(case):
        if not path.is_file():
            problems.append(f"{path}: missing (channel {path.name[-len(info.file_ending) - 4:-len(info.file_ending)]} "
                            f"of case {case}). Add the file or remove the case's other files.")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = read_image(path)
        except UserError as e:
            problems.append(f"{e} Replace or remove case {case}.")
            continue
        expect_4d = info.phases_in_file > 0
        if img.array.ndim == 4 and not expect_4d:
            problems.append(f"{path}: 4D image (shape {img.array.shape}) where 3D is expected. Split the phases into "
                            "channels (_0000, _0001, …) or declare \"phases_in_file\" in dataset.json.")
        elif expect_4d and (img.array.ndim != 4 or img.array.shape[0] != info.phases_in_file):
            problems.append(f"{path}: expected a 4D image with {info.phases_in_file} phases, got shape "
                            f"{img.array.shape}. Fix the file or \"phases_in_file\" in dataset.json.")
        problems.extend(training_image_problems(img, info.modality))  # NaN/Inf, voxel size, orientation
        images.append((path, img))
    label_path = info.label_file(case)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            label = read_image(label_path)
    except UserError as e:
        problems.append(f"{e} Replace or remove case {case}.")
        return problems
    seg = label.array
    if seg.ndim != 3:
        problems.append(f"{label_path}: label maps must be 3D, got shape {seg.shape}.")
        return problems
    if np.issubdtype(seg.dtype, np.floating):
        if not np.isfinite(seg).all() or not np.array_equal(seg, np.round(seg)):
            problems.append(f"{label_path}: label values must be integers, found fractional or NaN values. "
                            "Re-export the labels with an integer type.")
            return problems
    values = set(np.unique(seg).astype(np.int64).tolist())
    extra = sorted(values - allowed)
    if extra:
        # An undeclared value would index past the network's outputs (the loss fails, or a clamp
        # silently turns it into another class), so it must stop here.
        problems.append(f"{label_path}: label values must be among those declared in dataset.json "
                        f"{sorted(allowed)}, got {sorted(values)}; {extra} not declared. Declare them in "
                        "dataset.json labels or relabel the file.")
    if values <= {0}:
        problems.append(f"{label_path}: the label map is empty (only background). Label the liver or drop the case.")
    for path, img in images:
        if not img.geometry.matches(label.geometry, GEOMETRY_TOLERANCE):
            g, lg = img.geometry, label.geometry
            what = []
            if g.shape_zyx != lg.shape_zyx:
                what.append(f"shape (z,y,x) {g.shape_zyx} vs label {lg.shape_zyx}")
            if not np.allclose(g.spacing, lg.spacing, rtol=GEOMETRY_TOLERANCE, atol=GEOMETRY_TOLERANCE):
                what.append(f"spacing {tuple(round(s, 4) for s in g.spacing)} vs label {tuple(round(s, 4) for s in lg.spacing)}")
            if not np.allclose(g.origin, lg.origin, atol=max(GEOMETRY_TOLERANCE, 1e-2)):
                what.append(f"origin {tuple(round(o, 2) for o in g.origin)} vs label {tuple(round(o, 2) for o in lg.origin)}")
            if not np.allclose(g.direction, lg.direction, atol=GEOMETRY_TOLERANCE):
                what.append("direction differs")
            problems.append(f"{path}: geometry does not match its label {label_path.name}: {'; '.join(what)}. "
                            "Resample the label onto the image grid (or fix the header).")
    return problems


def label_numbering_problems(info: DatasetInfo) -> list[str]:
    """dataset.json labels must be numbered 0, 1, …, n-1, each value once: value k is the network's
    output channel k, so a gap leaves a class that is never trained and a repeat merges two names."""
    values = sorted(info.labels.values())
    if values == list(range(len(values))):
        return []
    declared = ", ".join(f"{name} {v}" for name, v in sorted(info.labels.items(), key=lambda kv: kv[1]))
    return [f"{info.folder / 'dataset.json'}: labels must be numbered 0, 1, …, {len(values) - 1} without gaps "
            f"or repeats, got {declared}. Renumber them (and the label files to match)."]


def verify_dataset(info: DatasetInfo, progress: bool = True) -> list[str]:
    """All problems of a raw dataset, one line each (empty list: the dataset is fine)."""
    problems: list[str] = []
    images_dir, labels_dir = info.images_dir, info.labels_dir
    for d in (images_dir, labels_dir):
        if not d.is_dir():
            problems.append(f"{d}: missing folder. A raw dataset has imagesTr/ and labelsTr/ (see README).")
    if problems:
        return problems
    problems.extend(label_numbering_problems(info))
    label_cases = info.training_cases()
    pattern = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})" + re.escape(info.file_ending) + "$")
    image_cases: Counter = Counter()
    for p in sorted(images_dir.iterdir()):
        if p.name.startswith("."):
            continue
        m = pattern.match(p.name)
        if not m:
            problems.append(f"{p}: file name must be {{case}}_{{channel:04d}}{info.file_ending}. Rename it or move it out.")
            continue
        ch = int(m.group("ch"))
        if ch >= len(info.channel_names):
            problems.append(f"{p}: channel {ch} but dataset.json declares {len(info.channel_names)} channel(s). "
                            "Remove the file or add the channel to channel_names.")
        image_cases[m.group("case")] += 1
    for case in sorted(set(image_cases) - set(label_cases)):
        problems.append(f"{images_dir}/{case}_*: case {case} has images but no label {info.label_file(case).name}. "
                        "Add the label or move the images to imagesTs/.")
    for p in sorted(labels_dir.iterdir()):
        if not p.name.startswith(".") and not p.name.endswith(info.file_ending):
            problems.append(f"{p}: unexpected file (labels end with {info.file_ending}). Rename or remove it.")
    lower = Counter(c.lower() for c in label_cases)
    for case in label_cases:
        if lower[case.lower()] > 1:
            problems.append(f"{info.label_file(case)}: duplicate case id {case!r} (differs only in case). Rename one.")
    if len(label_cases) != info.num_training:
        problems.append(f"{info.folder / 'dataset.json'}: numTraining is {info.num_training} but labelsTr has "
                        f"{len(label_cases)} case(s). Set numTraining to {len(label_cases)}.")
    if not label_cases:
        problems.append(f"{labels_dir}: no label files ending in {info.file_ending}. Check file_ending in dataset.json.")
    for case in bar(label_cases, desc="verify", unit="case", disable=not progress):
        problems.extend(_check_case(info, case))
    return problems


def check_dataset(info: DatasetInfo, progress: bool = True) -> None:
    """Raise one UserErrors listing every problem, or return quietly."""
    problems = verify_dataset(info, progress)
    if problems:
        raise UserErrors(problems, headline=f"{info.folder}: the dataset has problems; fix them and re-run")
