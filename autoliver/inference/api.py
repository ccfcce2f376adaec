"""The Python face of prediction, for notebooks and pipelines; ``autoliver predict`` is a thin layer
over it.

    from autoliver import Predictor

    with Predictor("liver_model.zip", device="cpu", fast=True) as predictor:
        result = predictor.predict(ct_hu, spacing_zyx_mm=(2.5, 0.78, 0.78))   # NumPy (z, y, x) in memory
        result.labels                                                          # uint8 (z, y, x): 0, 1 liver, 2 tumour
        predictor.predict_file("scan.nii.gz", "scan_seg.nii.gz")               # a file (or DICOM folder) to a file
        predictor.predict_folder("scans/", "segmentations/", resume=True)      # what the CLI does

The device is given once, here; every option has the CLI's meaning and default. Status lines go
to the ``autoliver`` logger (see :mod:`autoliver.progress`); input problems raise
:class:`autoliver.errors.UserError`, and warnings about an input (not Hounsfield units, padded to
the patch, no liver found) come back with the result.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoliver import paths, progress
from autoliver.errors import UserError
from autoliver.inference.inputs import InputCase, check_output_folder, find_cases, image_ending
from autoliver.inference.predictor import PROBABILITIES_SUFFIX
from autoliver.io.images import Geometry, Image

FAST_STEP_SIZE = 0.9  # --fast: barely overlapping tiles (about 1.4x fewer tiles per axis than 0.5)
OUTPUT_TYPES = ("nifti", "dicom_seg", "rtstruct")
# Temporary names of atomic writes (autoliver.io.images, the .npz writer, schema.atomic_write for
# DICOM outputs) left by a killed run.
STALE_TEMP_RE = re.compile(r"^\.(.+\.[A-Za-z0-9_]{6,}\.(nii\.gz|nii|nrrd|mha|mhd|nhdr|tmp)|.+\.tmp\d+\.npz)$")
# ... and the hidden folders in which a .mhd/.nhdr header and its data file are written together.
STALE_TEMP_DIR_RE = re.compile(r"^\..+\.(mhd|nhdr)\.tmp\d+\.[A-Za-z0-9_]{6,}\.dir$")


@dataclass(frozen=True)
class Prediction:
    """One case's result on the input's grid."""

    labels: np.ndarray  # uint8 (z, y, x)
    probabilities: np.ndarray | None  # float16 (K, z, y, x), when asked for
    label_values: dict[str, int]  # name → value, e.g. {"background": 0, "liver": 1, "tumour": 2}
    warnings: tuple[str, ...] = ()


def select_part(cases: list[InputCase], num_parts: int, part_id: int) -> list[InputCase]:
    """Every ``num_parts``-th case starting at ``part_id`` (cases sorted by name)."""
    if num_parts < 1:
        raise UserError(f"--num-parts: must be >= 1, got {num_parts}")
    if not 0 <= part_id < num_parts:
        raise UserError(f"--part-id: must be in 0..{num_parts - 1} (--num-parts {num_parts}), got {part_id}")
    return sorted(cases, key=lambda c: c.name)[part_id::num_parts]


def is_finished(case: InputCase, output: Path, save_probabilities: bool) -> bool:
    """The segmentation is written last (atomically), so its presence means the case is complete."""
    if not case.output_path(output).is_file():
        return False
    return not save_probabilities or (output / f"{case.name}{PROBABILITIES_SUFFIX}").is_file()


def remove_stale_temporaries(output: Path) -> list[Path]:
    """Delete half-written files a killed run left under temporary names (never final names)."""
    removed = []
    if output.is_dir():
        for p in output.iterdir():
            if p.is_file() and STALE_TEMP_RE.match(p.name):
                p.unlink(missing_ok=True)
                removed.append(p)
            elif p.is_dir() and STALE_TEMP_DIR_RE.match(p.name):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available; use --device cpu.")
    return device


def model_folder(model: str | os.PathLike | None, dataset: str | None, results_dir: str | None, stack) -> Path:
    """The folder to load networks from: a model folder or .zip (unpacked for the life of ``stack``),
    or the results folder of ``dataset``."""
    if model is not None:
        from autoliver.inference.export import open_model

        return open_model(Path(model), stack)
    results = paths.root("results", results_dir)
    name = paths.resolve_dataset(dataset, results)
    folder = results / name
    if not folder.is_dir():
        raise UserError(f"-d {dataset}: no trained models in {folder}. Train first (autoliver train), "
                        "or pass -m model.zip.")
    return folder


class Predictor:
    """A loaded model and how to run it.

    model: a model folder or ``.zip`` (``autoliver export``); None: the results of ``dataset``.
    configurations, folds, checkpoint: which networks (default: ``find_best_configuration``'s choice).
    device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``. fast: one fold, low resolution where trained,
    no mirroring, step 0.9. tta: mirroring test-time augmentation. step_size: tile step as a
    fraction of the patch (default 0.5). postprocessing: ``auto`` (the chosen recipe) or ``none``.
    num_threads: CPU threads for the network (None: torch's default). replace_nonfinite: the value
    NaN/Inf voxels become (None: they are an error). first_stage: the trained configuration that
    finds the liver for a liver-ROI lesion stage (default: the one its plan names).
    """

    def __init__(self, model: str | os.PathLike | None = None, *, dataset: str | None = None,
                 results_dir: str | None = None, configurations=(), folds=(), checkpoint: str | None = None,
                 device: str = "auto", fast: bool = False, tta: bool = True, step_size: float | None = None,
                 postprocessing: str = "auto", num_threads: int | None = None,
                 replace_nonfinite: float | None = None, first_stage: str | None = None):
        import torch

        from autoliver.inference.model import load_model
        from autoliver.inference.predictor import PredictOptions
        from autoliver.postprocessing import NONE

        if step_size is not None and not 0 < step_size <= 1:
            raise UserError(f"--step-size: must be in (0, 1] (a fraction of the patch), got {step_size}")
        if replace_nonfinite is not None and not math.isfinite(replace_nonfinite):
            raise UserError(f"--replace-nonfinite: must be a finite number, got {replace_nonfinite}")
        if num_threads is not None and num_threads < 0:
            raise UserError(f"--num-threads: must be >= 0, got {num_threads}")
        if postprocessing not in ("auto", "none"):
            raise UserError(f"--postprocessing: must be auto or none, got {postprocessing!r}")
        if num_threads:
            torch.set_num_threads(num_threads)
        self.device = resolve_device(device)
        self.fast = fast
        self._stack = contextlib.ExitStack()
        try:
            folder = model_folder(model, dataset, results_dir, self._stack)
            self.model = load_model(folder, list(configurations) or None, list(folds) or None, checkpoint,
                                    device=self.device, postprocessing=NONE if postprocessing == "none" else None,
                                    fast=fast, first_stage=first_stage)
        except BaseException:
            self._stack.close()
            raise
        step = step_size if step_size is not None else (FAST_STEP_SIZE if fast else 0.5)
        self.options = PredictOptions(step_size=step, mirror=tta and not fast, device=self.device,
                                      replace_nonfinite=replace_nonfinite)

    # --- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Remove what opening the model unpacked (a .zip's folder)."""
        self._stack.close()

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- what it is -------------------------------------------------------------------------

    @property
    def labels(self) -> dict[str, int]:
        return dict(self.model.labels)

    @property
    def num_channels(self) -> int:
        return self.model.num_channels

    def describe(self) -> str:
        return (f"{self.model.describe()}; step {self.options.step_size:g}, TTA "
                f"{'on' if self.options.mirror else 'off'}, device {self.device}")

    # --- predicting -------------------------------------------------------------------------

    def predict(self, image: np.ndarray, spacing_zyx_mm, *, origin_xyz_mm=(0.0, 0.0, 0.0),
                direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
                return_probabilities: bool = False) -> Prediction:
        """Segment a scan held in memory.

        image: (z, y, x) for a one-channel model, (C, z, y, x) for C channels (or phases); CT in HU.
        spacing_zyx_mm: voxel size in mm, (z, y, x). origin_xyz_mm, direction: where the voxels lie
        (ITK/LPS convention, as :class:`autoliver.io.Geometry`); they matter only for orientation-
        aware models and are carried through unchanged. Returns labels on the same grid.
        """
        from autoliver.inference.predictor import check_case, no_liver_warning, predict_case

        array = np.asarray(image)
        channels = self.model.num_channels
        if array.ndim == 3 and channels == 1:
            volumes = [array]
        elif array.ndim == 4 and (array.shape[0] == channels or self.model.plan.phases_in_file):
            volumes = [array] if self.model.plan.phases_in_file else list(array)
        else:
            raise UserError(f"Predictor.predict: image must be (z, y, x) for this one-channel model or "
                            f"(C, z, y, x) with C = {channels}, got shape {array.shape}")
        spacing = tuple(float(s) for s in spacing_zyx_mm)
        if len(spacing) != 3:
            raise UserError(f"Predictor.predict: spacing_zyx_mm must have 3 entries, got {spacing_zyx_mm}")
        geometry = Geometry(spacing=tuple(reversed(spacing)), origin=tuple(float(v) for v in origin_xyz_mm),
                            direction=tuple(float(v) for v in direction), shape_zyx=tuple(array.shape[-3:]))
        images = [Image(v, geometry, path="array") for v in volumes]
        images, warns = check_case(self.model, images, self.options)
        options = self.options if not return_probabilities else _with(self.options, save_probabilities=True)
        result = predict_case(self.model, images, options)
        note = no_liver_warning("array", result.segmentation, self.model.labels)
        return Prediction(result.segmentation, result.probabilities, self.labels,
                          tuple(warns) + ((note,) if note else ()))

    def predict_file(self, path: str | os.PathLike, output: str | os.PathLike, *, dicom_series: str | None = None,
                     output_type: str = "nifti", save_probabilities: bool = False) -> Path:
        """Segment one scan (a file, ``case_0000`` with its sibling channels, or a DICOM series
        folder) into the file ``output`` (its ending sets the format; a DICOM series gives NIfTI,
        or DICOM with ``output_type``). Returns the path written."""
        output = Path(output)
        check_output_folder(output.parent, path)
        cases = find_cases(path, self.model.num_channels)
        if len(cases) != 1:
            raise UserError(f"{path}: holds {len(cases)} cases; use predict_folder for several.")
        case = cases[0]
        ending = image_ending(output.name) if output_type == "nifti" else ""  # DICOM: the writer is chosen by type
        if output_type == "nifti" and not ending:
            raise UserError(f"{output}: name the output file with an image ending (.nii.gz, .nii, .nrrd, .mha)")
        name = output.name[: len(output.name) - len(ending)]
        failures = self._run([InputCase(name, case.sources, ending)], output.parent, dicom_series=dicom_series,
                             output_type=output_type, save_probabilities=save_probabilities, source=Path(path))
        if failures:
            raise UserError(next(iter(failures.values())))
        return output.parent / f"{name}{ending}"

    def predict_folder(self, input: str | os.PathLike, output: str | os.PathLike, *, resume: bool = False,
                       num_parts: int = 1, part_id: int = 0, save_probabilities: bool = False,
                       dicom_series: str | None = None, output_type: str = "nifti") -> dict[str, str]:
        """Segment every case under ``input`` (a file, a folder of files, DICOM series folders) into
        the folder ``output``; returns {case: error} for the cases that failed (the others are
        written). ``resume`` skips finished cases; ``num_parts``/``part_id`` take every
        ``num_parts``-th case, so a scheduler can fan a cohort out."""
        out = check_output_folder(output, input)
        cases = select_part(find_cases(input, self.model.num_channels), num_parts, part_id)
        if output_type != "nifti":
            cases = [InputCase(c.name, c.sources, _output_ending(c, output_type)) for c in cases]
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        todo = [c for c in cases if not (resume and is_finished(c, out, save_probabilities))]
        skipped = len(cases) - len(todo)
        part = f" (part {part_id + 1} of {num_parts})" if num_parts > 1 else ""
        progress.say(f"predict: {len(todo)} case(s){part} → {out}" + (f"; {skipped} already done (--continue)"
                                                                      if skipped else ""))
        return self._run(todo, out, dicom_series=dicom_series, output_type=output_type,
                         save_probabilities=save_probabilities, source=Path(input))

    def _run(self, cases: list[InputCase], out: Path, *, dicom_series, output_type, save_probabilities,
             source: Path) -> dict[str, str]:
        from autoliver.inference.predictor import network_passes, predict_cases

        if output_type not in OUTPUT_TYPES:
            raise UserError(f"--output-type: must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
        if output_type != "nifti":
            _require_dicom(cases, output_type)
        options = _with(self.options, save_probabilities=save_probabilities, tile_progress=progress.enabled(),
                        dicom_series=dicom_series, output_type=output_type)
        progress.say(f"model: {self.describe()}")
        if self.device == "cpu" and not self.fast and cases:
            passes = network_passes(self.model, options)
            if passes > 1:
                progress.say(f"predict: on a CPU every tile runs {passes} times (folds × mirrorings"
                             f"{' × cascade stages' if any(s.previous for s in self.model.stages) else ''}); "
                             "--fast runs it once, at low resolution where a 3d_lowres model is trained "
                             "(seconds per CT instead of hours for a 3D ensemble)")
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        failures = predict_cases(self.model, cases, out, options)
        elapsed = time.perf_counter() - t0
        done = len(cases) - len(failures)
        progress.say(f"predict: {done} case(s) written to {out} in {elapsed:.1f} s"
                     + (f" ({elapsed / max(done, 1):.1f} s per case)" if done else ""))
        return failures


def _with(options, **changes):
    import dataclasses

    return dataclasses.replace(options, **changes)


def _output_ending(case: InputCase, output_type: str) -> str:
    from autoliver.io.dicom_out import RTSTRUCT_SUFFIX, SEG_SUFFIX

    return SEG_SUFFIX if output_type == "dicom_seg" else RTSTRUCT_SUFFIX


def _require_dicom(cases: list[InputCase], output_type: str) -> None:
    """DICOM output references the source series: only DICOM input has one."""
    not_dicom = [c.name for c in cases if not all(Path(s).is_dir() for s in c.sources)]
    if not_dicom:
        raise UserError(f"--output-type {output_type}: needs DICOM series as input (a DICOM-SEG or RTSTRUCT "
                        f"references its source slices), but {', '.join(not_dicom[:5])} "
                        f"{'is' if len(not_dicom) == 1 else 'are'} not; use --output-type nifti for them.")
