"""Where datasets, preprocessed data and results live, and how dataset names are resolved.

Three folders, as in nnU-Net: raw datasets, preprocessed data, trained results. Each comes from a
flag if given, else from ``AUTOLIVER_RAW`` / ``AUTOLIVER_PREPROCESSED`` / ``AUTOLIVER_RESULTS``,
else — for raw datasets only — from nnU-Net's ``nnUNet_raw`` (the raw layout is nnU-Net v2's, so an
nnU-Net user's datasets are found where they already are; nnU-Net's preprocessed data and results
are formats of its own and are never read as autoliver's), else from
``~/autoliver_data/{raw,preprocessed,results}``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from autoliver.errors import UserError

ENV = {"raw": "AUTOLIVER_RAW", "preprocessed": "AUTOLIVER_PREPROCESSED", "results": "AUTOLIVER_RESULTS"}
# nnU-Net's variables that autoliver falls back to: only where the folder's format is the same.
NNUNET_ENV = {"raw": "nnUNet_raw"}
DATASET_RE = re.compile(r"^Dataset(\d{3})_(\w+)$")


def default_root(kind: str) -> Path:
    return Path.home() / "autoliver_data" / kind


def root(kind: str, override: str | os.PathLike | None = None) -> Path:
    """The folder for ``kind`` ('raw', 'preprocessed' or 'results'): flag > AUTOLIVER_* > nnUNet_raw
    (raw only) > default."""
    if override:
        return Path(override).expanduser()
    for var in (ENV[kind], NNUNET_ENV.get(kind)):
        if var and os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    return default_root(kind)


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not 0 <= dataset_id <= 999:
        raise UserError(f"dataset id must be between 0 and 999, got {dataset_id}")
    if not re.fullmatch(r"\w+", name):
        raise UserError(f"dataset name must be letters, digits and underscores, got {name!r}")
    return f"Dataset{dataset_id:03d}_{name}"


def list_datasets(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and DATASET_RE.match(p.name))


def resolve_dataset(spec: str | None, *folders: Path) -> str:
    """Map ``3``, ``003``, ``Dataset003_LiTS`` or ``LiTS`` to the one matching folder name.

    ``folders`` are searched in order (typically raw, then preprocessed, then results); with
    ``spec=None`` the only dataset present is chosen. No match or several matches raise a
    UserError that lists what exists.
    """
    existing = sorted({n for f in folders for n in list_datasets(f)})
    where = " or ".join(str(f) for f in folders)
    listing = ", ".join(existing) if existing else "none"
    if spec is None:
        if len(existing) == 1:
            return existing[0]
        raise UserError(
            f"-d: no dataset given and {'none' if not existing else 'several'} found in {where} "
            f"(found: {listing}). Pass -d NAME_OR_ID."
        )
    spec = str(spec).strip()
    if DATASET_RE.match(spec):
        matches = [n for n in existing if n == spec]
        if not matches:
            # An exact full name is acceptable even before the folder exists (e.g. for writing).
            return spec
    elif spec.isdigit():
        matches = [n for n in existing if int(DATASET_RE.match(n).group(1)) == int(spec)]
    else:
        matches = [n for n in existing if DATASET_RE.match(n).group(2).lower() == spec.lower()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UserError(f"-d {spec}: no dataset matches in {where} (found: {listing}).")
    raise UserError(f"-d {spec}: several datasets match ({', '.join(matches)}); pass the full name.")
