"""Hand-made plans and tiny untrained models for the inference tests (geometry, not accuracy)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from autoliver.planning.plan import (SCHEMA_VERSION, ChannelNormalization, Configuration, Denoise, NetworkSpec, Plan,
                                     Resampling, write_plan)
from autoliver.schema import to_jsonable

LABELS = {"background": 0, "liver": 1, "tumour": 2}


def tiny_spec(dims: int = 3, in_channels: int = 1, num_classes: int = 3) -> NetworkSpec:
    k = (3,) * dims
    return NetworkSpec(architecture="unet", dims=dims, in_channels=in_channels, num_classes=num_classes,
                       features_per_stage=(4, 8), kernel_sizes=(k, k), strides=((1,) * dims, (2,) * dims),
                       convs_per_stage=1, deep_supervision=False)


def tiny_configuration(name: str = "3d_fullres", spacing=(3.0, 3.0, 3.0), patch=(16, 32, 32), dims: int = 3,
                       data_identifier: str | None = None, previous_stage: str = "", in_channels: int = 1,
                       modality: str = "CT") -> Configuration:
    norm = (ChannelNormalization("ct", lower=-200.0, upper=300.0, mean=50.0, std=80.0) if modality == "CT"
            else ChannelNormalization("zscore"),)
    return Configuration(
        name=name, data_identifier=data_identifier or f"plans_{name}", spacing_zyx_mm=tuple(spacing),
        median_shape_zyx=(40, 60, 60), patch_size=tuple(patch), batch_size=2, normalization=norm * 1,
        resampling=Resampling(order_image=1, order_label=1), denoise=Denoise(),
        network=tiny_spec(dims, in_channels), previous_stage=previous_stage)


def tiny_plan(configurations: list[Configuration], modality: str = "CT", labels=None, channels=("CT",)) -> Plan:
    return Plan(schema_version=SCHEMA_VERSION, dataset_name="Dataset001_Tiny", preset="cpu", modality=modality,
                channel_names=tuple(channels), labels=dict(labels or LABELS), num_phases=1, device="cpu",
                memory_budget_bytes=1 << 30, configurations={c.name: c for c in configurations})


def save_model(model_dir: Path, plan: Plan, name: str, folds=("0",), seed: int = 0, network_fn=None,
               recipe: str = "default") -> Path:
    """A results-style folder {model_dir}/{name}/fold_k/checkpoint_final.pt with random weights
    (``{name}__{recipe}`` for a non-default recipe, as training names it)."""
    from autoliver.training.checkpoint import save_checkpoint
    from autoliver.training.networks import build_network
    from autoliver.training.recipes import get_recipe, recipe_to_dict
    from autoliver.training.trainer import model_folder

    config = plan.configurations[name]
    folder = model_folder(model_dir, name, recipe)
    write_plan(folder / "plans.json", plan)
    for i, f in enumerate(folds):
        torch.manual_seed(seed + i)
        net = (network_fn or build_network)(config.network)
        save_checkpoint(folder / f"fold_{f}" / "checkpoint_final.pt",
                        {"network": net.state_dict(), "plan": to_jsonable(plan), "configuration": name,
                         "recipe": recipe_to_dict(get_recipe(recipe)), "fold": f, "epoch": 1, "epochs": 1})
    return folder


def with_config(plan: Plan, config: Configuration) -> Plan:
    return dataclasses.replace(plan, configurations={**plan.configurations, config.name: config})
