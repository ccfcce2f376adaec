"""``autoliver export``: a trained model as one self-contained zip, and ``predict -m`` to use it.

The zip holds a model folder (see :mod:`autoliver.inference.model`): for every configuration
needed (a cascade brings its previous stage) ``plans.json`` and the chosen folds' checkpoints,
which carry their plan and recipe, plus ``inference_choice.json`` naming configurations, folds and
post-processing. Nothing else is needed to predict: not the raw, preprocessed or results folders.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
import zipfile
from pathlib import Path, PurePosixPath

from autoliver.errors import UserError
from autoliver.inference.model import (CHOICE_FILE, CHOICE_SCHEMA_VERSION, InferenceChoice, configuration_of,
                                       first_stage_folder, previous_stage_folder, read_choice, trained_configurations,
                                       trained_folds)
from autoliver.postprocessing import NONE
from autoliver.schema import dumps


def _stage_closure(model_dir: Path, configurations: list[str]) -> list[str]:
    """The configurations plus the previous stages their cascades need."""
    from autoliver.planning.plan import read_plan

    out: list[str] = []
    todo = list(configurations)
    while todo:
        name = todo.pop(0)
        if name in out:
            continue
        out.append(name)
        plans = model_dir / name / "plans.json"
        if plans.is_file():
            config = read_plan(plans).configurations.get(configuration_of(name))
            if config is not None and config.roi_margin_mm > 0:  # a liver-ROI stage: its trained first stage
                todo.append(first_stage_folder(model_dir, name, config.previous_stage, "final"))
            elif config is not None and config.previous_stage:
                todo.append(previous_stage_folder(name, config.previous_stage))
    return out


def export_model(model_dir: str | os.PathLike, output_zip: str | os.PathLike, configurations: list[str] | None = None,
                 folds: list[str] | None = None, checkpoint: str = "final") -> Path:
    """Write ``output_zip`` (atomically) with what predicting needs; returns its path."""
    model_dir = Path(model_dir)
    output_zip = Path(output_zip)
    if output_zip.suffix.lower() != ".zip":
        raise UserError(f"-o {output_zip}: must end in .zip")
    choice = read_choice(model_dir)
    if not configurations:
        if choice is not None:
            configurations, folds, checkpoint = list(choice.configurations), folds or list(choice.folds), choice.checkpoint
        else:
            trained = trained_configurations(model_dir, checkpoint)
            if len(trained) != 1:
                raise UserError(f"{model_dir}: {len(trained)} trained configurations ({', '.join(trained) or 'none'}); "
                                "pass -c CONFIGURATION or run find_best_configuration first.")
            configurations = trained
    stages = _stage_closure(model_dir, configurations)
    members: list[tuple[Path, str]] = []
    chosen_folds: list[str] = []
    for name in stages:
        available = trained_folds(model_dir / name, checkpoint)
        use = list(folds) if folds else ([f for f in available if f != "all"] or available)
        missing = [f for f in use if f not in available]
        if not available or missing:
            raise UserError(f"-c {name}: fold(s) {', '.join(missing or ['any'])} have no checkpoint_{checkpoint}.pt "
                            f"in {model_dir / name} (trained: {', '.join(available) or 'none'}).")
        if name in configurations and not chosen_folds:
            chosen_folds = use
        if (model_dir / name / "plans.json").is_file():
            members.append((model_dir / name / "plans.json", f"{name}/plans.json"))
        for f in use:
            members.append((model_dir / name / f"fold_{f}" / f"checkpoint_{checkpoint}.pt",
                            f"{name}/fold_{f}/checkpoint_{checkpoint}.pt"))
    same = choice is not None and list(choice.configurations) == list(configurations)
    exported_choice = InferenceChoice(
        schema_version=CHOICE_SCHEMA_VERSION, dataset_name=choice.dataset_name if choice else model_dir.name,
        configurations=tuple(configurations), folds=tuple(chosen_folds), checkpoint=checkpoint,
        postprocessing=choice.postprocessing if same else NONE, cv_dice=dict(choice.cv_dice) if same else {},
        candidates=dict(choice.candidates) if same else {},
        predict_command=f"autoliver predict -m {output_zip.name} -i INPUT -o OUTPUT")
    output_zip.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output_zip.name}.", suffix=".tmp", dir=output_zip.parent)
    os.close(fd)
    try:
        # Checkpoints are already compressed tensors; storing them avoids minutes of deflate.
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
            z.writestr(CHOICE_FILE, dumps(exported_choice))
            for src, arc in members:
                z.write(src, arc)
        os.replace(tmp, output_zip)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return output_zip


def _safe_members(z: zipfile.ZipFile, path: Path) -> list[zipfile.ZipInfo]:
    members = z.infolist()
    for m in members:
        p = PurePosixPath(m.filename)
        if p.is_absolute() or ".." in p.parts:
            raise UserError(f"-m {path}: refuses the member {m.filename!r} (absolute or '..' path); "
                            "the zip was not made by autoliver export.")
    if not any(PurePosixPath(m.filename).name.startswith("checkpoint_") for m in members):
        raise UserError(f"-m {path}: holds no checkpoints; make it with `autoliver export -d DATASET -o model.zip`.")
    return members


def open_model(path: str | os.PathLike, stack: contextlib.ExitStack) -> Path:
    """A model folder for ``path``: the folder itself, or a zip unpacked into a temporary folder
    that lives as long as ``stack``."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"-m {path}: does not exist; give a model .zip (autoliver export) or a model folder.")
    if path.is_dir():
        if (path / "plans.json").is_file() and trained_folds(path, "final") + trained_folds(path, "best"):
            raise UserError(f"-m {path}: is one configuration's folder; give its parent ({path.parent}) and "
                            f"-c {path.name}.")
        return path
    if not zipfile.is_zipfile(path):
        raise UserError(f"-m {path}: is neither a folder nor a zip file.")
    target = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="autoliver_model_")))
    with zipfile.ZipFile(path) as z:
        z.extractall(target, members=_safe_members(z, path))
    if (target / CHOICE_FILE).is_file():
        read_choice(target)  # validate now, naming the zip if it is broken
    return target


def onnx_network(model_dir: str | os.PathLike, configuration: str | None = None, folds: list[str] | None = None,
                 checkpoint: str = "final") -> tuple[str, str, str]:
    """Which one network ``export --onnx`` writes: (configuration folder, fold, why that one).

    -c, else the chosen configuration (``inference_choice.json``), else the only trained one; -f's
    first fold, else the choice's first fold, else the configuration's first trained fold. Raises
    a UserError naming what to pass when nothing decides.
    """
    model_dir = Path(model_dir)
    choice = read_choice(model_dir)
    from_choice = not configuration and choice is not None
    if from_choice:
        configuration = choice.configurations[0]
    elif not configuration:
        trained = trained_configurations(model_dir, checkpoint)
        if len(trained) != 1:
            raise UserError(f"--onnx: {model_dir} has {len(trained)} trained configurations "
                            f"({', '.join(trained) or 'none'}) and no {CHOICE_FILE}; pass -c CONFIGURATION or run "
                            "find_best_configuration first.")
        configuration = trained[0]
    available = trained_folds(model_dir / configuration, checkpoint)
    if folds:
        fold, why = folds[0], "the first fold of -f" if len(folds) > 1 else "-f"
    elif from_choice and choice.folds:
        fold = choice.folds[0]
        why = ("the chosen ensemble's first configuration and fold" if len(choice.configurations) > 1
               else "the chosen configuration's first fold")
    elif available:
        fold, why = available[0], "its first trained fold"
    else:
        raise UserError(f"--onnx: {model_dir / configuration} has no fold with checkpoint_{checkpoint}.pt; "
                        f"train it first or pass -c with a trained configuration.")
    if fold not in available:
        raise UserError(f"--onnx: fold {fold} of {configuration} has no checkpoint_{checkpoint}.pt "
                        f"(trained: {', '.join(available) or 'none'}); pass -f with one of them.")
    return configuration, fold, why


def onnx_metadata(plan, config, recipe, configuration: str, fold: str, checkpoint: str) -> dict[str, str]:
    """What a runtime needs to use the exported network without autoliver: how to prepare the input
    (grid, normalisation, channels, patch), what the output means (labels), and where it came from.
    Values are JSON text (ONNX metadata is string → string)."""
    import json

    from autoliver import __version__
    from autoliver.schema import to_jsonable

    kind = ("log-probabilities of nested regions (sigmoid outputs: liver = labels >= 1, tumour = label 2)"
            if recipe.region else "logits of the classes (softmax over axis 1; argmax gives the label)")
    k = config.context_slices
    context = (f"; 2.5D: the first {len(plan.channel_names)} image channel(s) × {2 * k + 1} slices of C: slice z "
               f"with its neighbours z-{k}..z+{k} (the nearest slice repeated past the first and last), image "
               f"channel c at slice z+d as input channel c*{2 * k + 1} + d + {k}") if k else ""
    return {
        "autoliver.version": __version__,
        "autoliver.model": json.dumps({"dataset": plan.dataset_name, "configuration": configuration, "fold": fold,
                                       "checkpoint": checkpoint, "recipe": recipe.name}),
        "input": ("float32 (1, C, z, y, x) for a 3D network, (1, C, y, x) for a 2D one: the scan resampled to "
                  "spacing_zyx_mm and normalised per channel as 'normalization'; any spatial size divisible by "
                  "the network's total stride; slide a window of patch_size over larger scans" + context),
        "context_slices": str(k),
        "output": f"float32 (1, K, ...) {kind}",
        "spacing_zyx_mm": json.dumps(list(config.spacing_zyx_mm)),
        "patch_size": json.dumps(list(config.patch_size)),
        "channel_names": json.dumps(list(plan.channel_names)),
        "modality": plan.modality,
        "normalization": json.dumps(to_jsonable(list(config.normalization))),
        "labels": json.dumps(dict(plan.labels)),
        "autoliver.configuration": json.dumps(to_jsonable(config)),
    }


def export_onnx(model_dir: str | os.PathLike, configuration: str, fold: str, output: str | os.PathLike,
                checkpoint: str = "final") -> Path:
    """One fold's network as ONNX (input (1, C, *patch), dynamic spatial size) with the metadata a
    runtime needs (:func:`onnx_metadata`), written atomically."""
    import torch

    from autoliver.training.checkpoint import checkpoint_path, load_checkpoint, load_trained_model
    from autoliver.training.recipes import recipe_from_dict

    fold_dir = Path(model_dir) / configuration / f"fold_{fold}"
    network, plan, config = load_trained_model(fold_dir, device="cpu", which=checkpoint)
    recipe = recipe_from_dict(load_checkpoint(checkpoint_path(fold_dir, checkpoint))["recipe"])
    x = torch.zeros((1, config.network.in_channels, *config.patch_size))
    spatial = {i + 2: f"s{i}" for i in range(len(config.patch_size))}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    try:
        import onnx

        with warnings.catch_warnings():  # the tracer's notes on shape checks do not concern the user
            warnings.simplefilter("ignore")
            torch.onnx.export(network, (x,), tmp, input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": spatial, "logits": spatial}, dynamo=False)
        proto = onnx.load(tmp)
        for key, value in onnx_metadata(plan, config, recipe, configuration, fold, checkpoint).items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, tmp)
        os.replace(tmp, output)
    except (ImportError, ModuleNotFoundError) as e:
        raise UserError(f"--onnx: ONNX export needs the onnx package ({e}); pip install onnx") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return output
