"""The edge of ``autoliver predict``: the parsed flags become a :class:`PredictRequest`, which runs
through :class:`autoliver.inference.api.Predictor` (the Python API does the work; this module only
turns its warnings and failures into the command's lines and exit code).
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path

from autoliver import progress
from autoliver.inference.inputs import check_output_folder

@dataclass(frozen=True)
class PredictRequest:
    """What ``predict`` was asked to do (the CLI builds it; tests may too)."""

    input: Path
    output: Path
    model_dir: Path | None = None  # a model folder or .zip; None: results folder of ``dataset``
    dataset: str | None = None
    results_dir: str | None = None
    configurations: tuple[str, ...] = ()
    folds: tuple[str, ...] = ()
    checkpoint: str | None = None
    step_size: float | None = None
    tta: bool = True
    fast: bool = False
    save_probabilities: bool = False
    resume: bool = False  # --continue
    num_parts: int = 1
    part_id: int = 0
    device: str = "auto"
    postprocessing: str = "auto"  # "auto" (the chosen recipe) | "none"
    num_threads: int | None = None
    replace_nonfinite: float | None = None  # --replace-nonfinite: NaN/Inf voxels become this value
    dicom_series: str | None = None  # --dicom-series: the SeriesInstanceUID to read
    output_type: str = "nifti"  # --output-type: nifti | dicom_seg | rtstruct (DICOM input)
    first_stage: str | None = None  # --first-stage: what finds the liver for a liver-ROI lesion stage


@contextlib.contextmanager
def warnings_as_lines(command: str):
    """Python warnings (from reading, from the checks) as one plain line each, like the rest of
    the command's output, instead of 'file:line: UserWarning: …'."""
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *args, **kwargs: progress.say(f"{command}: warning: {message}")
        yield


def predict(req: PredictRequest) -> int:
    """Run a prediction request through :class:`autoliver.inference.api.Predictor`; returns the exit
    code (0, or 1 when some cases failed; the others are written)."""
    from autoliver.inference.api import Predictor

    check_output_folder(req.output, req.input)  # before the model is loaded: a wrong -o fails at once
    with warnings_as_lines("predict"), Predictor(
            req.model_dir, dataset=req.dataset, results_dir=req.results_dir, configurations=req.configurations,
            folds=req.folds, checkpoint=req.checkpoint, device=req.device, fast=req.fast, tta=req.tta,
            step_size=req.step_size, postprocessing=req.postprocessing, num_threads=req.num_threads,
            replace_nonfinite=req.replace_nonfinite, first_stage=req.first_stage) as predictor:
        failures = predictor.predict_folder(req.input, req.output, resume=req.resume, num_parts=req.num_parts,
                                            part_id=req.part_id, save_probabilities=req.save_probabilities,
                                            dicom_series=req.dicom_series, output_type=req.output_type)
    for name, msg in failures.items():
        progress.say(f"  failed: {name}: {msg}")
    return 1 if failures else 0


def request_from_args(args) -> PredictRequest:
    return PredictRequest(
        input=Path(args.input), output=Path(args.output),
        model_dir=Path(args.model) if args.model else None, dataset=args.dataset, results_dir=args.results_dir,
        configurations=tuple(args.configuration or ()), folds=tuple(args.folds or ()), checkpoint=args.checkpoint,
        step_size=args.step_size, tta=not args.disable_tta, fast=args.fast,
        save_probabilities=args.save_probabilities, resume=args.resume, num_parts=args.num_parts,
        part_id=args.part_id, device=args.device, postprocessing=args.postprocessing,
        num_threads=args.num_threads or None, replace_nonfinite=args.replace_nonfinite,
        dicom_series=args.dicom_series, output_type=args.output_type, first_stage=args.first_stage)

