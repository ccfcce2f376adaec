"""Write a raw dataset of synthetic phantoms (nnU-Net v2 layout; the edge that touches files).

Case ``i`` is drawn from ``SeedSequence(seed, spawn_key=(i,))``, so it does not depend on how many
cases are made: ``--cases 20`` extends ``--cases 10`` with ten new cases. The dataset is built in a
hidden ``.{name}.partial`` folder (an interrupted run resumes there, skipping finished cases) and
renamed into place when complete; an existing dataset is never replaced without ``overwrite``.
Besides ``dataset.json``, ``imagesTr/`` and ``labelsTr/``, the folder holds ``synthetic_cases.json``:
per case the orientation, spacing, liver and tumour volumes and the tumours' sizes and kinetics.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from autoliver.errors import UserError, choose
from autoliver.io.images import write_image
from autoliver.progress import bar
from autoliver.schema import write_json
from autoliver.synthetic.appearance import MRI_PHASES
from autoliver.synthetic.phantom import DEFAULT_SHAPE_ZYX, MODALITIES, check_shape, render_case
from autoliver.synthetic.randomize import version_of

LABELS = {"background": 0, "liver": 1, "tumour": 2}
FILE_ENDING = ".nii.gz"


def case_name(i: int, num_cases: int) -> str:
    return f"phantom_{i:0{max(3, len(str(num_cases - 1)))}d}"


def dataset_json(name: str, num_cases: int, modality: str, seed: int, shape_zyx, randomize=False) -> dict:
    version = version_of(randomize)
    what = "DCE-MRI" if modality != "ct" else ("CT (randomised contrast phase, scanner and anatomy)" if version > 1
                                               else "CT (portal venous phase)")
    d = {
        "name": name,
        "description": f"Synthetic abdominal {what} phantoms made by autoliver make_synthetic (seed {seed}"
                       f"{f', --randomize {version}' if version > 1 else ''}).",
        "labels": dict(LABELS),
        "numTraining": num_cases,
        "file_ending": FILE_ENDING,
        "synthetic": {"generator_version": version, "seed": seed, "modality": modality,
                      "shape_zyx": list(shape_zyx)},
    }
    if modality == "ct":
        d["channel_names"] = {"0": "CT"}
    else:
        d["channel_names"] = {str(i): f"MRI_{p}" for i, p in enumerate(MRI_PHASES)}
        d["phases"] = list(MRI_PHASES)
    return d


def make_synthetic_dataset(folder: Path, num_cases: int, seed: int = 0, modality: str = "ct",
                           shape_zyx=DEFAULT_SHAPE_ZYX, progress: bool = True, overwrite: bool = False,
                           randomize=False) -> Path:
    """Generate ``num_cases`` phantoms into the raw dataset ``folder`` (``DatasetNNN_Name``); returns it.

    Same arguments → byte-identical files. ``randomize``: a generator version 2 or 3, True for the
    latest (CT only, :mod:`autoliver.synthetic.randomize`). Raises UserError if ``folder`` exists and ``overwrite``
    is False.
    """
    folder = Path(folder)
    modality = choose("--modality", modality, MODALITIES)
    version = version_of(randomize)
    if version > 1 and modality != "ct":
        raise UserError("--randomize: only for --modality ct (the DCE-MRI phantoms have no version 2 yet).")
    shape = check_shape(shape_zyx)
    if isinstance(num_cases, bool) or not isinstance(num_cases, (int, np.integer)) or num_cases < 1:
        raise UserError(f"--cases: must be a whole number >= 1, got {num_cases!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"--seed: must be a whole number >= 0, got {seed!r}.")
    num_cases, seed = int(num_cases), int(seed)
    if folder.exists() and not overwrite:
        raise UserError(f"{folder}: a dataset already exists here. Pass --overwrite to replace it, "
                        "or choose another -d name / --dataset-id.")

    partial = folder.with_name(f".{folder.name}.partial")
    recipe = {"generator_version": version, "seed": seed, "modality": modality, "shape_zyx": list(shape),
              "cases": num_cases}
    recipe_file = partial / ".recipe.json"
    if partial.exists() and (not recipe_file.is_file() or json.loads(recipe_file.read_text()) != recipe):
        shutil.rmtree(partial)  # left by a run with other settings: its cases are not ours
    for sub in ("imagesTr", "labelsTr", ".cases"):
        (partial / sub).mkdir(parents=True, exist_ok=True)
    write_json(recipe_file, recipe)

    names = [case_name(i, num_cases) for i in range(num_cases)]
    channels = 1 if modality == "ct" else len(MRI_PHASES)
    for i in bar(range(num_cases), desc="make_synthetic", unit="case", disable=not progress):
        done = partial / ".cases" / f"{names[i]}.json"
        if done.is_file():
            continue  # finished by an interrupted earlier run (files are written atomically)
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))
        p = render_case(rng, shape, modality, version)
        for c in range(channels):
            write_image(partial / "imagesTr" / f"{names[i]}_{c:04d}{FILE_ENDING}", p.images[c], p.geometry)
        write_image(partial / "labelsTr" / f"{names[i]}{FILE_ENDING}", p.label, p.geometry)
        write_json(done, p.info)

    facts = {n: json.loads((partial / ".cases" / f"{n}.json").read_text()) for n in names}
    write_json(partial / "synthetic_cases.json", facts)
    write_json(partial / "dataset.json", dataset_json(folder.name, num_cases, modality, seed, shape, version))
    shutil.rmtree(partial / ".cases")
    recipe_file.unlink()
    if folder.exists():
        shutil.rmtree(folder)
    partial.rename(folder)
    return folder
