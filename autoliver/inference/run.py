"""The edge of ``autoliver predict``: which model, which cases, which output folder, resuming.

Everything here reads arguments and the file system, then hands arrays and dataclasses to
:mod:`autoliver.inference.predictor`.
"""
from __future__ import annotations

import contextlib
import math
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from autoliver import paths, progress
from autoliver.errors import UserError
from autoliver.inference.inputs import InputCase, check_output_folder, find_cases
from autoliver.inference.predictor import PROBABILITIES_SUFFIX, PredictOptions

FAST_STEP_SIZE = 0.9  # --fast: barely overlapping tiles (about 1.4x fewer tiles per axis than 0.5)
# Temporary names of atomic writes (autoliver.io.images and the .npz writer) left by a killed run.
STALE_TEMP_RE = re.compile(r"^\.(.+\.[A-Za-z0-9_]{6,}\.(nii\.gz|nii|nrrd|mha|mhd|nhdr)|.+\.tmp\d+\.npz)$")
# ... and the hidden folders in which a .mhd/.nhdr header and its data file are written together.
STALE_TEMP_DIR_RE = re.compile(r"^\..+\.(mhd|nhdr)\.tmp\d+\.[A-Za-z0-9_]{6,}\.dir$")


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


def model_folder(req: PredictRequest, stack) -> Path:
    """The folder to load networks from: -m (folder or unpacked zip) or the dataset's results."""
    if req.model_dir is not None:
        from autoliver.inference.export import open_model

        return open_model(req.model_dir, stack)
    results = paths.root("results", req.results_dir)
    name = paths.resolve_dataset(req.dataset, results)
    folder = results / name
    if not folder.is_dir():
        raise UserError(f"-d {req.dataset}: no trained models in {folder}. Train first (autoliver train), "
                        "or pass -m model.zip.")
    return folder


@contextlib.contextmanager
def warnings_as_lines(command: str):
    """Python warnings (from reading, from the checks) as one plain line each, like the rest of
    the command's output, instead of 'file:line: UserWarning: …'."""
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *args, **kwargs: progress.say(f"{command}: warning: {message}")
        yield


def predict(req: PredictRequest) -> int:
    """Run a prediction request; returns the exit code (0, or 1 when some cases failed)."""
    import torch

    from autoliver.inference.model import load_model
    from autoliver.inference.predictor import network_passes, predict_cases
    from autoliver.postprocessing import NONE

    if req.step_size is not None and not 0 < req.step_size <= 1:
        raise UserError(f"--step-size: must be in (0, 1] (a fraction of the patch), got {req.step_size}")
    if req.replace_nonfinite is not None and not math.isfinite(req.replace_nonfinite):
        raise UserError(f"--replace-nonfinite: must be a finite number, got {req.replace_nonfinite}")
    if req.num_threads is not None and req.num_threads < 0:
        raise UserError(f"--num-threads: must be >= 0, got {req.num_threads}")
    output = check_output_folder(req.output, req.input)
    if req.num_threads:
        torch.set_num_threads(req.num_threads)
    device = resolve_device(req.device)
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings_as_lines("predict"))
        folder = model_folder(req, stack)
        model = load_model(folder, list(req.configurations) or None, list(req.folds) or None, req.checkpoint,
                           device=device, postprocessing=NONE if req.postprocessing == "none" else None,
                           fast=req.fast)
        all_cases = find_cases(req.input, model.num_channels)
        cases = select_part(all_cases, req.num_parts, req.part_id)
        output.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(output)
        todo = [c for c in cases if not (req.resume and is_finished(c, output, req.save_probabilities))]
        skipped = len(cases) - len(todo)
        step = req.step_size if req.step_size is not None else (FAST_STEP_SIZE if req.fast else 0.5)
        options = PredictOptions(step_size=step, mirror=req.tta and not req.fast, device=device,
                                 save_probabilities=req.save_probabilities, tile_progress=progress.enabled(),
                                 replace_nonfinite=req.replace_nonfinite, dicom_series=req.dicom_series)
        part = f" (part {req.part_id + 1} of {req.num_parts})" if req.num_parts > 1 else ""
        progress.say(f"predict: {len(todo)} case(s){part} → {output}"
                     + (f"; {skipped} already done (--continue)" if skipped else ""))
        progress.say(f"model: {model.describe()}; step {step:g}, TTA {'on' if options.mirror else 'off'}, "
                     f"device {device}")
        if device == "cpu" and not req.fast and todo:
            passes = network_passes(model, options)
            if passes > 1:
                progress.say(f"predict: on a CPU every tile runs {passes} times (folds × mirrorings"
                             f"{' × cascade stages' if any(s.previous for s in model.stages) else ''}); "
                             "--fast runs it once, at low resolution where a 3d_lowres model is trained "
                             "(seconds per CT instead of hours for a 3D ensemble)")
        t0 = time.perf_counter()
        failures = predict_cases(model, todo, output, options)
        elapsed = time.perf_counter() - t0
    done = len(todo) - len(failures)
    progress.say(f"predict: {done} case(s) written to {output} in {elapsed:.1f} s"
                 + (f" ({elapsed / max(done, 1):.1f} s per case)" if done else ""))
    if failures:
        for name, msg in failures.items():
            progress.say(f"  failed: {name}: {msg}")
        return 1
    return 0


def request_from_args(args) -> PredictRequest:
    return PredictRequest(
        input=Path(args.input), output=Path(args.output),
        model_dir=Path(args.model) if args.model else None, dataset=args.dataset, results_dir=args.results_dir,
        configurations=tuple(args.configuration or ()), folds=tuple(args.folds or ()), checkpoint=args.checkpoint,
        step_size=args.step_size, tta=not args.disable_tta, fast=args.fast,
        save_probabilities=args.save_probabilities, resume=args.resume, num_parts=args.num_parts,
        part_id=args.part_id, device=args.device, postprocessing=args.postprocessing,
        num_threads=args.num_threads or None, replace_nonfinite=args.replace_nonfinite,
        dicom_series=args.dicom_series)

