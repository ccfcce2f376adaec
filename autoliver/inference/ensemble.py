"""``autoliver ensemble -i DIR1 DIR2 … -o OUT``: average saved probabilities, write labels.

Each input folder is the output of ``predict --save-probabilities``: ``{case}.npz`` with
``probabilities`` (K, z, y, x) on the scan's grid and the grid itself. The mean of the folders'
probabilities becomes the segmentation (argmax, then an optional post-processing recipe), written
in the same geometry and file type as the first folder's segmentation of that case.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoliver import progress
from autoliver.errors import UserError
from autoliver.inference.inputs import image_ending
from autoliver.inference.predictor import PROBABILITIES_SUFFIX, SLAB
from autoliver.io.images import Geometry, write_image
from autoliver.postprocessing import NONE, Postprocessing, labels_from_probabilities, postprocess_labels


@dataclass
class SavedProbabilities:
    probabilities: np.ndarray  # float16 or float32 (K, z, y, x)
    geometry: Geometry
    labels: dict[str, int]
    source: str


def load_probabilities(path: str | os.PathLike) -> SavedProbabilities:
    with np.load(path) as z:
        p = z["probabilities"]
        geometry = Geometry(spacing=tuple(float(v) for v in z["spacing"]), origin=tuple(float(v) for v in z["origin"]),
                            direction=tuple(float(v) for v in z["direction"]),
                            shape_zyx=tuple(int(s) for s in p.shape[1:]))
        labels = {str(k): int(v) for k, v in zip(z["label_names"], z["label_values"])}
        source = str(z["source"]) if "source" in z else ""
    return SavedProbabilities(p, geometry, labels, source)


def cases_in(folder: Path) -> list[str]:
    return sorted(p.name[: -len(PROBABILITIES_SUFFIX)] for p in folder.glob(f"*{PROBABILITIES_SUFFIX}")
                  if not p.name.startswith("."))


def _segmentation_ending(folder: Path, case: str) -> str:
    for p in folder.glob(f"{case}.*"):
        ending = image_ending(p.name)
        if ending and p.name == f"{case}{ending}":
            return ending
    return ".nii.gz"


def average_probabilities(paths: list[Path]) -> SavedProbabilities:
    """Mean probabilities of the same case from several folders (float32 accumulation per slab)."""
    first = load_probabilities(paths[0])
    mean = first.probabilities.astype(np.float32)
    for p in paths[1:]:
        other = load_probabilities(p)
        if other.probabilities.shape != mean.shape or not other.geometry.matches(first.geometry):
            raise UserError(f"{p}: probabilities of shape {other.probabilities.shape} on another grid than "
                            f"{paths[0]} ({mean.shape}); ensemble predictions of the same scans.")
        if other.labels != first.labels:
            raise UserError(f"{p}: labels {other.labels} differ from {paths[0]}'s {first.labels}.")
        for a in range(0, mean.shape[1], SLAB):
            mean[:, a:a + SLAB] += other.probabilities[:, a:a + SLAB]
    mean /= len(paths)
    return SavedProbabilities(mean, first.geometry, first.labels, first.source)


def ensemble_folders(input_dirs: list[str | os.PathLike], output_dir: str | os.PathLike,
                     postprocessing: Postprocessing = NONE, save_probabilities: bool = False) -> list[Path]:
    """Average the probabilities of the cases present in every input folder; returns written files."""
    from autoliver.inference.predictor import save_probabilities as save

    dirs = [Path(d) for d in input_dirs]
    if len(dirs) < 2:
        raise UserError(f"-i: give at least two folders to ensemble, got {len(dirs)}")
    output_dir = Path(output_dir)
    for d in dirs:
        if not d.is_dir():
            raise UserError(f"-i {d}: not a folder of predictions.")
        if d.resolve() == output_dir.resolve():
            raise UserError(f"-o {output_dir}: is one of the input folders; choose a separate output folder.")
    per_dir = [set(cases_in(d)) for d in dirs]
    common = sorted(set.intersection(*per_dir))
    if not common:
        raise UserError(f"-i: no case has {PROBABILITIES_SUFFIX} probabilities in every folder; predict with "
                        "--save-probabilities first.")
    missing = sorted(set.union(*per_dir) - set(common))
    if missing:
        progress.say(f"ensemble: {len(missing)} case(s) not in every folder are skipped: {', '.join(missing[:5])}"
                     + (" …" if len(missing) > 5 else ""))
    written = []
    for case in progress.bar(common, desc="ensemble", unit="case"):
        avg = average_probabilities([d / f"{case}{PROBABILITIES_SUFFIX}" for d in dirs])
        spacing = avg.geometry.spacing_zyx_mm
        image = None
        if postprocessing.crf:  # the CRF needs the scan: read it back from where predict found it
            from autoliver.io.images import read_image

            if not avg.source or not Path(avg.source).exists():
                raise UserError(f"{case}: the CRF step needs the scan, but {avg.source or 'its source'} is gone.")
            image = read_image(avg.source).array
        seg = labels_from_probabilities(avg.probabilities, postprocessing, avg.labels, image=image,
                                        spacing_zyx_mm=spacing)
        seg = postprocess_labels(seg, spacing, postprocessing, avg.labels)
        if save_probabilities:
            from autoliver.io.images import Image

            like = Image(np.empty(0), avg.geometry, avg.source)
            save(output_dir / f"{case}{PROBABILITIES_SUFFIX}", avg.probabilities, like, avg.labels)
        path = output_dir / f"{case}{_segmentation_ending(dirs[0], case)}"
        write_image(path, seg.astype(np.uint8), avg.geometry)
        written.append(path)
    return written
