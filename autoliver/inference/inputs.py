"""Which scans a ``predict -i IN`` names, and where their segmentations go.

IN may be

* one image file (``scan.nii.gz``, ``scan.nrrd``, …, or ``case_0000.nii.gz`` with its sibling
  channels ``case_0001…`` next to it),
* one DICOM series folder,
* a folder of image files — nnU-Net style ``{case}_{channel:04d}{ending}`` or, for single-channel
  models, any image file — and/or of DICOM series sub-folders.

A model trained on one 4D file of phases per case (dataset.json ``phases_in_file``) takes one file
per case here too (``num_channels`` is 1); that the file holds the right volumes is checked when it
is read (:func:`autoliver.preprocessing.pipeline.check_input_layout`).

Each case's segmentation is ``OUT/{case}{ending}``: the input's own file type, NIfTI for DICOM.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from autoliver.errors import UserError, UserErrors
from autoliver.io.images import SUPPORTED_ENDINGS

CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")
DICOM_OUTPUT_ENDING = ".nii.gz"


@dataclass(frozen=True)
class InputCase:
    """One case to predict: its name, one source per channel (file or DICOM folder), output type."""

    name: str
    sources: tuple[Path, ...]
    ending: str  # of the segmentation written for it

    def output_path(self, folder: Path) -> Path:
        return folder / f"{self.name}{self.ending}"


def image_ending(name: str) -> str:
    """The supported image ending of a file name ('.nii.gz', …) or '' if it has none."""
    low = name.lower()
    return next((e for e in SUPPORTED_ENDINGS if low.endswith(e)), "")


def is_dicom_file(path: Path) -> bool:
    """A '.dcm' file, or any file with the DICOM 'DICM' marker at byte 128."""
    if path.name.lower().endswith(".dcm"):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def is_dicom_folder(folder: Path) -> bool:
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    return any(is_dicom_file(p) for p in files[:50]) and not any(image_ending(p.name) for p in files)


def _stem(name: str, ending: str) -> str:
    return name[: -len(ending)] if ending else name


def _group_files(files: list[Path], num_channels: int) -> tuple[list[InputCase], list[str]]:
    """Group image files into cases by the ``_0000`` channel suffix."""
    by_case: dict[tuple[str, str], dict[int, Path]] = {}
    plain: list[Path] = []
    for p in files:
        ending = image_ending(p.name)
        m = CHANNEL_RE.match(_stem(p.name, ending))
        if m:
            by_case.setdefault((m.group("case"), ending), {})[int(m.group("ch"))] = p
        else:
            plain.append(p)
    cases, problems = [], []
    for (case, ending), channels in sorted(by_case.items()):
        missing = [c for c in range(num_channels) if c not in channels]
        extra = sorted(c for c in channels if c >= num_channels)
        if missing:
            problems.append(f"{case}: channel file(s) {', '.join(f'{case}_{c:04d}{ending}' for c in missing)} "
                            f"missing (the model takes {num_channels} channel(s))")
            continue
        if extra:
            problems.append(f"{case}: unexpected channel file(s) {', '.join(f'_{c:04d}' for c in extra)}; "
                            f"the model takes {num_channels} channel(s) (_0000 … _{num_channels - 1:04d})")
            continue
        cases.append(InputCase(case, tuple(channels[c] for c in range(num_channels)), ending))
    for p in plain:
        ending = image_ending(p.name)
        if num_channels != 1:
            problems.append(f"{p.name}: the model takes {num_channels} channels; name the files "
                            f"{_stem(p.name, ending)}_0000{ending} … _{num_channels - 1:04d}{ending}")
            continue
        cases.append(InputCase(_stem(p.name, ending), (p,), ending))
    return cases, problems


def find_cases(input_path: str | os.PathLike, num_channels: int = 1) -> list[InputCase]:
    """All cases under ``input_path`` (see the module docstring), sorted by name.

    Raises a UserError listing every problem (missing channels, duplicate names, nothing found).
    """
    src = Path(input_path).expanduser()
    if not src.exists():
        raise UserError(f"-i {src}: does not exist. Give an image file, a folder of images or a DICOM series folder.")
    if src.is_file():
        ending = image_ending(src.name)
        if not ending:
            if is_dicom_file(src):
                return [InputCase(src.parent.name, (src.parent,), DICOM_OUTPUT_ENDING)]
            raise UserError(f"-i {src}: unsupported file type; give {', '.join(SUPPORTED_ENDINGS)} files "
                            "or a DICOM series folder.")
        stem = _stem(src.name, ending)
        m = CHANNEL_RE.match(stem)
        if m and num_channels > 1:
            siblings = [src.parent / f"{m.group('case')}_{c:04d}{ending}" for c in range(num_channels)]
            cases, problems = _group_files([p for p in siblings if p.exists()], num_channels)
        else:
            cases, problems = _group_files([src], num_channels) if num_channels > 1 else (
                [InputCase(m.group("case") if m else stem, (src,), ending)], [])
        if problems:
            raise UserErrors(problems, headline=f"-i {src}: cannot form a case")
        return cases
    if is_dicom_folder(src):
        if num_channels != 1:
            raise UserError(f"-i {src}: a DICOM series is one channel but the model takes {num_channels}.")
        return [InputCase(src.name, (src,), DICOM_OUTPUT_ENDING)]
    entries = sorted(p for p in src.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file() and image_ending(p.name)]
    cases, problems = _group_files(files, num_channels)
    if any(is_dicom_file(p) for p in entries[:200] if p.is_file() and not image_ending(p.name)):
        # DICOM slices next to image files: the series is a case of its own, named after the folder.
        cases.append(InputCase(src.name, (src,), DICOM_OUTPUT_ENDING))
    for d in (p for p in entries if p.is_dir()):
        if is_dicom_folder(d):
            if num_channels != 1:
                problems.append(f"{d.name}/: a DICOM series is one channel but the model takes {num_channels}")
            else:
                cases.append(InputCase(d.name, (d,), DICOM_OUTPUT_ENDING))
    seen: dict[str, InputCase] = {}
    for c in cases:
        if c.name in seen:
            problems.append(f"{c.name}: two inputs give the same output name "
                            f"({seen[c.name].sources[0].name} and {c.sources[0].name}); rename one")
        seen[c.name] = c
    if problems:
        raise UserErrors(problems, headline=f"-i {src}: problems with the input files")
    if not cases:
        raise UserError(f"-i {src}: no images found (looked for {', '.join(SUPPORTED_ENDINGS)} files and "
                        "DICOM series sub-folders).")
    return sorted(cases, key=lambda c: c.name)


def check_output_folder(output: str | os.PathLike, input_path: str | os.PathLike) -> Path:
    """The output folder, resolved; refuses the input folder itself and folders inside it.

    Writing next to the inputs could overwrite a scan whose name equals its segmentation's, and an
    output folder inside the input folder would be read as input on the next run.
    """
    out = Path(output).expanduser().resolve()
    src = Path(input_path).expanduser().resolve()
    in_folder = src if src.is_dir() else src.parent
    if out == in_folder or in_folder in out.parents:
        suggestion = in_folder.parent / f"{in_folder.name}_seg"
        raise UserError(f"-o {output}: must not be the input folder or inside it ({in_folder}); "
                        f"choose a separate output folder, e.g. -o {suggestion}")
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {output}: exists and is a file; give a folder (it is created when missing).")
    return out
