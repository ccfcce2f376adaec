"""A trained model ready to predict: which configurations, which folds, which post-processing.

A *model folder* has the layout of ``{results}/{dataset}/`` (so a results folder is one, and so is
an unpacked ``autoliver export`` zip)::

    inference_choice.json          written by find_best_configuration (optional)
    {configuration}/plans.json
    {configuration}/fold_{k}/checkpoint_{final,best}.pt

Loading goes through ``autoliver.training.checkpoint.load_trained_model`` (the checkpoint carries
its plan). A cascade configuration pulls in its previous stage from the same folder.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from autoliver.errors import UserError
from autoliver.planning.plan import Configuration, Plan
from autoliver.postprocessing import NONE, Postprocessing
from autoliver.schema import read_document, write_json

CHOICE_FILE = "inference_choice.json"
CHOICE_SCHEMA_VERSION = 1
FOLD_RE = re.compile(r"^fold_(\d+|all)$")


@dataclass(frozen=True)
class InferenceChoice:
    """What ``find_best_configuration`` chose (``inference_choice.json``)."""

    schema_version: int
    dataset_name: str
    configurations: tuple[str, ...]  # one, or several averaged as an ensemble
    folds: tuple[str, ...]
    checkpoint: str  # "final" | "best"
    postprocessing: Postprocessing
    cv_dice: dict[str, float]  # label name → cross-validated Dice of the choice (post-processed)
    candidates: dict[str, dict[str, float]] = field(default_factory=dict)  # "a+b" → label → Dice
    predict_command: str = ""
    cv_predictions: str = ""  # how the cross-validation predictions judged were made (mirroring, step)


def write_choice(folder: str | os.PathLike, choice: InferenceChoice) -> Path:
    path = Path(folder) / CHOICE_FILE
    write_json(path, choice)
    return path


def read_choice(folder: str | os.PathLike) -> InferenceChoice | None:
    """The choice stored in a model folder (or the given choice file), None when there is none."""
    path = Path(folder)
    path = path if path.is_file() else path / CHOICE_FILE
    if not path.is_file():
        return None
    return read_document(InferenceChoice, path, schema_version=CHOICE_SCHEMA_VERSION)


@dataclass
class StageModel:
    """One trained configuration: its plan and one network per fold (cascade: + previous stage)."""

    plan: Plan
    configuration: Configuration
    networks: list
    folds: list[str] = field(default_factory=list)
    previous: "StageModel | None" = None
    mirror_axes: tuple[int, ...] | None = None  # None: every patch axis
    folder: str = ""  # the model folder it came from: ``3d_fullres``, ``3d_fullres__adam`` (a recipe)
    # A model trained elsewhere (nnU-Net v2) brings its own preprocessing: (images, case) → (data,
    # properties); None: autoliver's pipeline. Such a model may also resample its logits back to the
    # scan and take the softmax there, as nnU-Net does (autoliver.inference.nnunet_model).
    preprocess: Callable | None = None
    softmax_after_resampling: bool = False
    tile_weights: Callable | None = None  # patch length → 1D sliding-window weights; None: autoliver's Gaussian

    @property
    def name(self) -> str:
        return self.configuration.name


@dataclass
class Model:
    """Configurations whose probabilities are averaged (one = no ensemble) + post-processing."""

    stages: list[StageModel]
    postprocessing: Postprocessing = NONE

    @property
    def plan(self) -> Plan:
        return self.stages[0].plan

    @property
    def labels(self) -> dict[str, int]:
        return dict(self.plan.labels)

    @property
    def num_channels(self) -> int:
        """Input files per case: one per channel, or one when the model was trained on one 4D file
        of phases per case (dataset.json ``phases_in_file``)."""
        return 1 if self.plan.phases_in_file else len(self.plan.channel_names)

    def describe(self) -> str:
        parts = [f"{s.folder or s.name} (folds {', '.join(s.folds)})" for s in self.stages]
        return " + ".join(parts) + f"; post-processing: {self.postprocessing.describe()}"


def trained_folds(config_dir: Path, checkpoint: str = "final") -> list[str]:
    """Fold names ('0', …, 'all') of ``config_dir`` that have ``checkpoint_{checkpoint}.pt``."""
    if not config_dir.is_dir():
        return []
    folds = [m.group(1) for p in config_dir.iterdir() if (m := FOLD_RE.match(p.name))
             and (p / f"checkpoint_{checkpoint}.pt").is_file()]
    return sorted(folds, key=lambda f: (f == "all", int(f) if f.isdigit() else 0))


def trained_configurations(model_dir: Path, checkpoint: str = "final") -> list[str]:
    if not model_dir.is_dir():
        return []
    return sorted(p.name for p in model_dir.iterdir() if p.is_dir() and trained_folds(p, checkpoint))


def _load_stage(model_dir: Path, name: str, folds: list[str] | None, checkpoint: str, device: str,
                first_stage: str | None = None) -> StageModel:
    from autoliver.training.checkpoint import load_trained_model

    config_dir = model_dir / name
    if not trained_folds(config_dir, checkpoint):  # a bare configuration name: its only recipe folder
        others = [p.name for p in sorted(model_dir.glob(f"{name}__*")) if trained_folds(p, checkpoint)]
        if "__" not in name and len(others) == 1:
            name, config_dir = others[0], model_dir / others[0]
    available = trained_folds(config_dir, checkpoint)
    if not available:
        have = trained_configurations(model_dir, checkpoint)
        raise UserError(f"-c {name}: no trained folds with checkpoint_{checkpoint}.pt in {config_dir} "
                        f"(trained configurations: {', '.join(have) or 'none'}). Train it with "
                        f"`autoliver train {name} FOLD` first.")
    if folds is None:
        folds = [f for f in available if f != "all"] or available
    missing = [f for f in folds if f not in available]
    if missing:
        raise UserError(f"-f: fold(s) {', '.join(missing)} of {name} are not trained (checkpoint_{checkpoint}.pt); "
                        f"trained: {', '.join(available)}.")
    networks, plan, config = [], None, None
    for f in folds:
        net, plan, config = load_trained_model(config_dir / f"fold_{f}", device=device, which=checkpoint)
        networks.append(net)
    previous = None
    if config.roi_margin_mm > 0:  # a liver-ROI stage: any trained configuration finds the liver
        first = first_stage_folder(model_dir, name, first_stage or config.previous_stage, checkpoint)
        first_folds = trained_folds(model_dir / first, checkpoint)
        use = folds if all(f in first_folds for f in folds) else None
        previous = _load_stage(model_dir, first, use, checkpoint, device)
    elif config.previous_stage:
        previous = _load_stage(model_dir, previous_stage_folder(name, config.previous_stage), folds, checkpoint,
                               device)
    return StageModel(plan, config, networks, list(folds), previous, folder=name)


def first_stage_folder(model_dir: Path, roi_folder: str, first: str, checkpoint: str) -> str:
    """The results folder of a liver-ROI stage's first stage ``first`` (a configuration, or a folder
    name with its recipe): trained with the ROI stage's recipe, else the default, else its only one."""
    if "__" in first:
        return first
    _, _, recipe = roi_folder.partition("__")
    candidates = ([f"{first}__{recipe}"] if recipe else []) + [first] + \
        sorted(p.name for p in model_dir.glob(f"{first}__*"))
    for c in candidates:
        if trained_folds(model_dir / c, checkpoint):
            return c
    have = trained_configurations(model_dir, checkpoint)
    raise UserError(f"{roi_folder}: its first stage {first} is not trained (checkpoint_{checkpoint}.pt; trained: "
                    f"{', '.join(have) or 'none'}). Train it (`autoliver train {first} FOLD`) or choose another "
                    "trained configuration with --first-stage.")


def load_model(model_dir: str | os.PathLike, configurations: list[str] | None = None, folds: list[str] | None = None,
               checkpoint: str | None = None, device: str = "cpu", postprocessing: Postprocessing | None = None,
               fast: bool = False, first_stage: str | None = None) -> Model:
    """Load the networks named by the arguments, falling back to ``inference_choice.json``, then to
    the only trained configuration.

    fast: one fold, and ``3d_lowres`` in place of a full-resolution 3D configuration when it is trained.
    first_stage: the configuration (or results folder) that finds the liver for a liver-ROI stage
    (default: the one its plan names).
    An nnU-Net v2 training output folder (plans.json, dataset.json, fold_*/checkpoint_*.pth) loads
    through :mod:`autoliver.inference.nnunet_model`.
    """
    model_dir = Path(model_dir)
    from autoliver.inference.nnunet_model import is_nnunet_model_folder, load_nnunet_model

    if is_nnunet_model_folder(model_dir):  # nnUNet_results/DatasetXXX/Trainer__Plans__configuration
        return load_nnunet_model(model_dir, configurations, folds, checkpoint, device=device, fast=fast)
    choice = read_choice(model_dir)
    if checkpoint is None:
        checkpoint = choice.checkpoint if choice and not configurations else "final"
    if not configurations:
        if choice:
            configurations = list(choice.configurations)
            folds = folds or list(choice.folds)
        else:
            trained = trained_configurations(model_dir, checkpoint)
            if len(trained) != 1:
                raise UserError(
                    f"{model_dir}: {'no' if not trained else 'several'} trained configurations "
                    f"({', '.join(trained) or 'none'}) and no {CHOICE_FILE}. Pass -c CONFIGURATION or run "
                    "`autoliver find_best_configuration` first.")
            configurations = trained
    if postprocessing is None:
        same = choice is not None and list(choice.configurations) == list(configurations)
        postprocessing = choice.postprocessing if same else NONE
    if fast:
        configurations = [_fast_configuration(model_dir, configurations, checkpoint)]
        available = trained_folds(model_dir / configurations[0], checkpoint)
        pick = [f for f in (folds or []) if f in available] or (["all"] if "all" in available else available[:1])
        folds = pick[:1]
    stages = [_load_stage(model_dir, c, folds, checkpoint, device, first_stage) for c in configurations]
    labels = stages[0].plan.labels
    for s in stages[1:]:
        if s.plan.labels != labels:
            raise UserError(f"-c: configurations {stages[0].name} and {s.name} have different labels "
                            f"({labels} vs {s.plan.labels}); they cannot be ensembled.")
    return Model(stages, postprocessing)


def configuration_of(folder_name: str) -> str:
    """The plan configuration of a results folder: ``3d_fullres__adam`` (a non-default recipe) → ``3d_fullres``."""
    return folder_name.split("__", 1)[0]


def previous_stage_folder(folder_name: str, previous_stage: str) -> str:
    """The folder of a cascade's first stage: trained with the cascade's recipe, because the cascade
    learnt from that stage's predictions (``3d_cascade_fullres__adam`` → ``3d_lowres__adam``)."""
    _, _, recipe = folder_name.partition("__")
    return previous_stage + (f"__{recipe}" if recipe else "")


def _fast_configuration(model_dir: Path, configurations: list[str], checkpoint: str) -> str:
    """The low-resolution model trained with the same recipe, when the first choice is full resolution."""
    first = configurations[0]
    config, _, recipe = first.partition("__")
    lowres = "3d_lowres" + (f"__{recipe}" if recipe else "")
    if config in ("3d_fullres", "3d_cascade_fullres") and trained_folds(model_dir / lowres, checkpoint):
        return lowres
    return first
