"""Cross-validation splits, made once and saved (``{preprocessed}/{dataset}/splits_final.json``).

nnU-Net's format — a list of ``{"train": [...], "val": [...]}``, one per fold — so a splits file
can be shared between the two tools. The split is seeded: the same cases always give the same
folds, and once the file exists it is the truth (edit it by hand to impose your own folds).
Fold ``"all"`` trains on every case (its "validation" then re-predicts training cases).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from autoliver.errors import UserError
from autoliver.schema import read_json, write_json

SPLITS_FILE = "splits_final.json"
NUM_FOLDS = 5
SEED = 12345


def make_splits(cases: list[str], num_folds: int = NUM_FOLDS, seed: int = SEED) -> list[dict[str, list[str]]]:
    """Shuffle the sorted cases with ``seed`` and cut them into ``min(num_folds, n)`` folds."""
    cases = sorted(cases)
    if len(cases) < 2:
        raise UserError(f"cross-validation needs at least 2 training cases, got {len(cases)}. Use fold 'all'.")
    k = min(num_folds, len(cases))
    order = np.random.default_rng(seed).permutation(len(cases))
    folds = np.array_split(order, k)
    return [{"train": sorted(cases[i] for f in folds[:j] + folds[j + 1:] for i in f),
             "val": sorted(cases[i] for i in folds[j])} for j in range(k)]


def load_or_create_splits(dataset_dir: str | os.PathLike, cases: list[str]) -> list[dict[str, list[str]]]:
    """The saved splits, or new ones written (atomically) when there are none yet."""
    path = Path(dataset_dir) / SPLITS_FILE
    if not path.is_file():
        splits = make_splits(cases)
        write_json(path, splits)
        return splits
    splits = read_json(path)
    if not isinstance(splits, list) or not all(isinstance(s, dict) and {"train", "val"} <= set(s) for s in splits):
        raise UserError(f"{path}: must be a list of {{'train': [...], 'val': [...]}} objects. Fix or delete it.")
    known = set(cases)
    missing = sorted({c for s in splits for c in s["train"] + s["val"]} - known)
    if missing:
        raise UserError(f"{path}: cases {missing[:5]} are not preprocessed ({len(missing)} in all). "
                        "Preprocess them, or delete the splits file to make new splits.")
    return splits


def fold_cases(dataset_dir: str | os.PathLike, cases: list[str], fold: str | int) -> tuple[list[str], list[str]]:
    """(training cases, validation cases) of ``fold`` (0 … 4 or "all")."""
    if str(fold) == "all":
        return sorted(cases), sorted(cases)
    splits = load_or_create_splits(dataset_dir, cases)
    try:
        k = int(fold)
    except ValueError:
        raise UserError(f"FOLD must be 0 … {len(splits) - 1} or 'all', got {fold!r}") from None
    if not 0 <= k < len(splits):
        raise UserError(f"FOLD must be 0 … {len(splits) - 1} or 'all' ({len(splits)} folds in "
                        f"{Path(dataset_dir) / SPLITS_FILE}), got {fold!r}")
    return list(splits[k]["train"]), list(splits[k]["val"])
