"""Hand-made plans and tiny untrained models for the inference tests (geometry, not accuracy), and
"oracle" networks: modules that compute their logits voxel by voxel from the input's Hounsfield
units, so what the pipeline does with geometry is checked exactly, whatever a trained network
would have learnt."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from autoliver.inference.model import Model, StageModel
from autoliver.io.images import Geometry, Image
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


BODY_HU, LIVER_HU, LESION_HU = 0, 100, 200


def abdomen(shape=(40, 64, 64), spacing=(3.0, 3.0, 3.0), lesion_radius_mm=9.0):
    """CT (HU) and labels of a body (0 HU) holding a liver block (100 HU) with a hyperdense lesion
    (200 HU) centred on the liver's right edge: half of it lies outside the liver block."""
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    ct = np.full(shape, -1000, np.int16)
    ct[:, 4:-4, 4:-4] = BODY_HU
    liver = (z >= 30) & (z < 90) & (y >= 45) & (y < 120) & (x >= 30) & (x < 110)
    lesion = (z - 60) ** 2 + (y - 80) ** 2 + (x - 110) ** 2 <= lesion_radius_mm ** 2
    ct[liver] = LIVER_HU
    ct[lesion] = LESION_HU
    label = np.zeros(shape, np.uint8)
    label[liver] = 1
    label[lesion] = 2
    geometry = Geometry(spacing=tuple(reversed(spacing)), origin=(-12.0, 30.0, 7.5),
                        direction=(-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0), shape_zyx=shape)
    return Image(ct, geometry, path="abdomen.nii.gz"), label


class Oracle(torch.nn.Module):
    """Logits from Hounsfield units (the tiny plan's CT normalisation undone): liver where the scan
    is liver-like; the first stage sees no lesions at all (it misses the edge lesion, as a coarse
    liver model might), the lesion stage marks 200 HU as tumour and keeps the liver inside the
    first stage's mask (its extra channel)."""

    def __init__(self, lesion_stage: bool):
        super().__init__()
        self.lesion_stage = lesion_stage
        self.register_buffer("unused", torch.zeros(1))

    def forward(self, x):
        hu = x[:, :1] * 80.0 + 50.0  # tiny_configuration: clip [-200, 300], mean 50, std 80
        liver = ((hu > 80) & (hu < 120)).float()
        tumour = torch.zeros_like(liver)
        if self.lesion_stage:
            liver = liver * (x[:, 1:2] > 0.5).float()
            tumour = (hu > 150).float()
        background = 1.0 - torch.maximum(liver, tumour)
        return 20.0 * torch.cat([background, liver, tumour], dim=1)


def cascade(margin_mm=15.0, spacing=(3.0, 3.0, 3.0), first_spacing=(3.0, 3.0, 3.0), dims=3,
            orientation="as_stored"):
    """3d_fullres (Oracle, no lesions) → liver-ROI lesion stage (Oracle, lesions), untrained."""
    first = tiny_configuration("3d_fullres", spacing=first_spacing, patch=(16, 32, 32))
    roi_patch = (16, 32, 32) if dims == 3 else (32, 32)
    roi = dataclasses.replace(tiny_configuration("3d_liver_roi" if dims == 3 else "2d_liver_roi", spacing=spacing,
                                                 patch=roi_patch, dims=dims, in_channels=2,
                                                 previous_stage="3d_fullres"),
                              roi_margin_mm=margin_mm)
    plan = dataclasses.replace(tiny_plan([first, roi]), orientation=orientation)
    stage1 = StageModel(plan, first, [Oracle(False)], ["0"], folder="3d_fullres")
    stage2 = StageModel(plan, roi, [Oracle(True)], ["0"], previous=stage1, folder=roi.name)
    return Model([stage2])
