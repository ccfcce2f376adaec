"""The plan: a typed, versioned, fully resolved JSON document (``plans.json``).

Everything downstream (preprocessing, training, prediction) reads its decisions from here, and a
checkpoint carries a copy, so a model folder describes itself. Components are named by registry
keys (``network.architecture``), never import paths. No inheritance at run time: each
configuration is complete on its own.

Axis conventions: ``spacing_zyx_mm`` and 3D ``patch_size`` are (z, y, x); a 2D configuration's
``patch_size`` is (y, x) and its ``spacing_zyx_mm`` keeps the z spacing of the data it slices.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from autoliver.schema import dumps, read_document, write_json

SCHEMA_VERSION = 1
CONFIGURATION_NAMES = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres", "3d_convlstm", "3d_liver_roi",
                       "2d_liver_roi")
# Lesion stages: cases are crops of the liver's box (+ margin) at full resolution, the liver mask of a
# first stage (any trained configuration) one extra input channel.
LIVER_ROI_NAMES = ("3d_liver_roi", "2d_liver_roi")


@dataclass(frozen=True)
class ChannelNormalization:
    """How one input channel is normalised.

    scheme: ``ct`` (clip to [lower, upper], then (x − mean) / std with dataset foreground stats),
    ``zscore`` (per case, over the body), ``hu_window`` (clip to [lower, upper], scale to [0, 1]),
    ``liver_zscore`` (clip to [lower, upper], z-score with a label-free estimate of the case's liver
    statistics, the same in training and prediction; fixed ``mean``/``std`` when not 0, 1),
    ``histeq`` (clip, then histogram equalisation to [0, 1]), ``none``.
    """

    scheme: str
    lower: float = 0.0
    upper: float = 0.0
    mean: float = 0.0
    std: float = 1.0


@dataclass(frozen=True)
class Resampling:
    """Interpolation orders; with ``separate_z`` the through-plane axis uses its own order
    (anisotropic data: in-plane cubic, through-plane nearest/linear, as nnU-Net does)."""

    order_image: int = 3
    order_label: int = 1
    separate_z: bool = False
    order_z_image: int = 0
    order_z_label: int = 0
    # Images made coarser along an axis are first Gaussian-smoothed along it (σ = (f − 1) / 2 source
    # voxels for f times coarser, scikit-image's resize rule), so the coarse voxel averages the
    # noise instead of sampling it; off (nnU-Net's way) by default.
    anti_aliasing: bool = False


@dataclass(frozen=True)
class Denoise:
    """Optional 3D bilateral denoising before normalisation (raw intensity units)."""

    enabled: bool = False
    domain_sigma_mm: float = 1.0
    range_sigma: float = 50.0


@dataclass(frozen=True)
class NetworkSpec:
    """Enough to build the network; ``architecture`` is a key of the network registry."""

    architecture: str  # "unet" | "residual_unet" | "nested_unet" | "convlstm_unet"
    dims: int  # 2 or 3
    in_channels: int  # image channels (+ one-hot previous stage for the cascade)
    num_classes: int  # including background
    features_per_stage: tuple[int, ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]  # strides[0] is all ones
    convs_per_stage: int = 2
    downsampling: str = "conv"  # "conv" | "max" | "avg" | "mixed_random" | "mixed_learned"
    deep_supervision: bool = True


@dataclass(frozen=True)
class Configuration:
    name: str
    data_identifier: str  # preprocessed subfolder, shared by configurations with equal preprocessing
    spacing_zyx_mm: tuple[float, float, float]
    median_shape_zyx: tuple[int, int, int]  # after cropping and resampling
    patch_size: tuple[int, ...]
    batch_size: int
    normalization: tuple[ChannelNormalization, ...]  # one per image channel
    resampling: Resampling
    denoise: Denoise
    network: NetworkSpec
    phases: int = 1  # >1: the channels are time phases (3d_convlstm)
    previous_stage: str = ""  # cascade: configuration whose predictions are an extra input
    # Liver-ROI lesion stage (> 0): each case is cropped to the liver's bounding box grown by this
    # margin (training: the reference liver; prediction: ``previous_stage``'s), and the liver mask is
    # one extra input channel. 0: the body crop, as every other configuration.
    roi_margin_mm: float = 0.0
    # 2D configurations (> 0, "2.5D"): each slice is seen with this many neighbouring slices on each
    # side as extra channels of every image channel (the liver mask of a lesion stage: the slice alone).
    context_slices: int = 0
    recipe: str = ""  # the training recipe the planner chose from the data ("" = default)
    estimated_memory_bytes: int = 0
    estimated_seconds_per_iteration: float = 0.0
    reasons: dict[str, str] = field(default_factory=dict)  # decision → why, for humans


@dataclass(frozen=True)
class Plan:
    schema_version: int
    dataset_name: str
    preset: str
    modality: str  # "CT" | "MRI"
    channel_names: tuple[str, ...]
    labels: dict[str, int]
    num_phases: int
    device: str  # "cuda" | "cpu": what the budget below was planned for
    memory_budget_bytes: int
    configurations: dict[str, Configuration]
    reasons: dict[str, str] = field(default_factory=dict)  # plan-wide decisions (target spacing, skipped configurations)
    # How a case's channels are stored (dataset.json "phases_in_file"): 0 = one 3D file per channel
    # ({case}_0000, _0001, …); N > 0 = one 4D file ({case}_0000) holding the N phases. Prediction
    # asks for the same files as training had.
    phases_in_file: int = 0
    # Voxel order inside the pipeline: "canonical" (autoliver.io.orientation: axial slices first,
    # then front→back, right→left, whatever each file's order; predictions go back to it exactly) or
    # "as_stored" (each file's own order: plans written before this field, nnU-Net's models).
    orientation: str = "as_stored"

    def configuration(self, name: str) -> Configuration:
        from autoliver.errors import choose

        return self.configurations[choose("configuration", name, self.configurations)]


def write_plan(path: str | os.PathLike, plan: Plan) -> None:
    write_json(path, plan)


def read_plan(path: str | os.PathLike) -> Plan:
    return read_document(Plan, path, schema_version=SCHEMA_VERSION)


def plan_to_text(plan: Plan) -> str:
    return dumps(plan)
