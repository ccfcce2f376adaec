"""Planner presets: the planner's policy as data files in ``planners/NAME.json``.

A preset says *how* to plan (base feature width, what normalisation, how much of the memory to use,
how long a CPU iteration may take); the fingerprint and the budget say *what* there is. A preset
file lists only the keys it changes from :class:`PlannerPreset`'s defaults, which are nnU-Net v2's
choices; ``planners/default.json`` spells all of them out. Loading is strict: an unknown key, a
wrong type or a value out of range is reported with the file and key path (and a "did you mean").
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from autoliver.errors import UserError, UserErrors, did_you_mean
from autoliver.planning.plan import CONFIGURATION_NAMES
from autoliver.schema import from_jsonable, read_json

NORMALIZATION_SCHEMES = ("ct", "zscore", "hu_window", "liver_zscore", "histeq", "none")
ARCHITECTURES = ("unet", "residual_unet", "nested_unet")
DOWNSAMPLING = ("conv", "max", "avg", "mixed_random", "mixed_learned")
DENOISE_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class PlannerPreset:
    """Every knob of the planner. Defaults reproduce nnU-Net v2's ExperimentPlanner."""

    name: str = "default"
    description: str = ""
    # Which configurations to plan (those that do not apply to a dataset are skipped with a reason).
    configurations: tuple[str, ...] = CONFIGURATION_NAMES
    # Network family for 2d / 3d_* (3d_convlstm always uses "convlstm_unet").
    architecture: str = "unet"
    downsampling: str = "conv"
    convs_per_stage: int = 2
    deep_supervision: bool = True
    base_features: int = 32  # features of stage i: base · 2^i, capped below
    max_features_3d: int = 320
    max_features_2d: int = 512
    # Pool an axis only while its feature map keeps at least 2× this edge (nnU-Net: 4 → ≥ 8 voxels).
    min_feature_map_edge: int = 4
    max_pools_per_axis: int = 8
    # The patch search starts from a patch of this size (shape following 1/spacing) and shrinks.
    initial_patch_voxels_3d: int = 256**3
    initial_patch_pixels_2d: int = 2048**2
    min_batch_size: int = 2
    max_batch_size: int = 512
    max_dataset_fraction_per_batch: float = 0.05  # overfitting guard: a batch sees at most this much
    anisotropy_threshold: float = 3.0
    lowres_creation_threshold: float = 0.25  # 3d_lowres when the fullres patch covers less than this
    lowres_spacing_step: float = 1.03
    lowres_min_shape_ratio: float = 2.0  # drop 3d_lowres when its images are not this much smaller
    # Stop coarsening 3d_lowres at this multiple of the fullres spacing even if its patch still covers
    # less than the threshold (only tiny CPU patches get there: a 10 mm grid shows no liver detail).
    lowres_max_spacing_factor: float = 4.0
    # Coarsen the spacing of the full-resolution 3D configurations (3d_fullres, 3d_convlstm) the way
    # 3d_lowres is coarsened until their patch covers at least this fraction of the median image.
    # 0 keeps nnU-Net's rule (always the median spacing). For a CPU, whose time budget only affords
    # a patch that sees a few per cent of an abdomen at full resolution: a network that sees the
    # liver beside the spleen, spine and stomach learns in minutes what a small patch does not.
    min_patch_coverage_3d: float = 0.0
    # Liver-ROI lesion stage (3d_liver_roi / 2d_liver_roi): proposed when the median liver box (with
    # its margin) holds at most this fraction of the median body crop's voxels; planned at the target
    # spacing on the box, never coarsened (its point is resolution where the lesions are).
    liver_roi_max_box_fraction: float = 0.5
    liver_roi_margin_mm: float = 15.0
    # ... at an in-plane spacing of at least this (0: the target spacing). A CPU's lesion stage
    # (cpu preset: 1.5 mm) averages the voxel noise that hides low-contrast lesions at 0.7 mm and
    # sees four times the area per patch.
    liver_roi_min_spacing_mm: float = 0.0
    # The whole-image 2d configuration sees each slice with this many neighbours on each side as
    # extra input channels (2.5D; 0 = nnU-Net's single slice): context across slices at the cost of
    # the first convolution only, for scans whose 3D patch a CPU cannot afford at full resolution.
    # The lesion stage 2d_liver_roi has its own key: the two were measured (and decided) apart.
    context_slices_2d: int = 0
    context_slices_2d_liver_roi: int = 0
    # Smooth images before making them coarser (Resampling.anti_aliasing): without it a 0.7 mm scan
    # resampled to 1.5 mm keeps nearly all of its voxel noise (cubic interpolation samples, it does
    # not average). false = nnU-Net's resampling, every preset's: in a paired run on the accuracy
    # benchmark the smoothed lesion stage found fewer lesions and marked more false ones.
    anti_aliasing: bool = False
    # Training recipe chosen from the fingerprint: datasets whose tumours are small (median lesion
    # diameter ≤ this) or a small share of the liver (≤ lesion_recipe_max_tumour_fraction) are
    # trained with ``lesion_recipe`` (Dice + BCE + focal Tversky, lesion-centred patches).
    lesion_recipe: str = "lesion"
    lesion_recipe_max_median_diameter_mm: float = 30.0
    lesion_recipe_max_tumour_fraction: float = 0.1
    normalization_ct: str = "ct"
    normalization_mri: str = "zscore"
    hu_window: tuple[float, float] = (-100.0, 400.0)  # hu_window / liver_zscore / histeq on CT
    denoise: str = "auto"
    denoise_min_noise_ct_hu: float = 30.0  # "auto": denoise CT whose liver noise σ exceeds this
    denoise_min_noise_mri_relative: float = 0.1  # "auto": denoise MRI with noise σ / liver mean above this
    # Memory: usable GPU bytes = free × fraction − reserve (CUDA context, cuDNN handles, fragmentation).
    gpu_memory_fraction: float = 1.0
    gpu_reserve_gb: float = 0.75
    mixed_precision_gpu: bool = True  # activations in 16 bit on a GPU (nnU-Net trains with AMP)
    optimizer_states: int = 1  # per-parameter optimizer buffers (SGD momentum: 1, Adam: 2)
    # CPU: usable RAM = available × fraction (the rest is for data loading and the system), and the
    # time one training iteration may take, so a CPU plan is trainable on the CPU.
    cpu_memory_fraction: float = 0.5
    cpu_seconds_per_iteration: float = 2.0


def preset_dir() -> Path:
    from autoliver.resources import resource_dir

    return resource_dir("planners")


def available_presets() -> list[str]:
    return sorted(p.stem for p in preset_dir().glob("*.json"))


def _validate(preset: PlannerPreset, where: str) -> list[str]:
    p = preset
    problems = []

    def need(ok: bool, key: str, rule: str, got) -> None:
        if not ok:
            problems.append(f"{where}.{key}: must be {rule}, got {got!r}")

    for name in p.configurations:
        if name not in CONFIGURATION_NAMES:
            problems.append(f"{where}.configurations: unknown configuration {name!r}.{did_you_mean(name, CONFIGURATION_NAMES)}"
                            f" Known: {', '.join(CONFIGURATION_NAMES)}")
    need(len(set(p.configurations)) == len(p.configurations), "configurations", "without repeats", list(p.configurations))
    if "3d_cascade_fullres" in p.configurations and "3d_lowres" not in p.configurations:
        problems.append(f"{where}.configurations: 3d_cascade_fullres needs 3d_lowres (its first stage); add it or drop the cascade")
    for key, choices in (("architecture", ARCHITECTURES), ("downsampling", DOWNSAMPLING), ("denoise", DENOISE_MODES),
                         ("normalization_ct", NORMALIZATION_SCHEMES), ("normalization_mri", NORMALIZATION_SCHEMES)):
        value = getattr(p, key)
        if value not in choices:
            problems.append(f"{where}.{key}: must be one of {', '.join(choices)}, got {value!r}.{did_you_mean(value, choices)}")
    for key in ("convs_per_stage", "base_features", "max_features_3d", "max_features_2d", "min_feature_map_edge",
                "max_pools_per_axis", "min_batch_size", "initial_patch_voxels_3d", "initial_patch_pixels_2d"):
        need(getattr(p, key) >= 1, key, "≥ 1", getattr(p, key))
    need(p.max_batch_size >= p.min_batch_size, "max_batch_size", f"≥ min_batch_size ({p.min_batch_size})", p.max_batch_size)
    need(p.max_features_3d >= p.base_features, "max_features_3d", f"≥ base_features ({p.base_features})", p.max_features_3d)
    need(p.max_features_2d >= p.base_features, "max_features_2d", f"≥ base_features ({p.base_features})", p.max_features_2d)
    need(0 < p.max_dataset_fraction_per_batch <= 1, "max_dataset_fraction_per_batch", "in (0, 1]", p.max_dataset_fraction_per_batch)
    need(p.anisotropy_threshold > 1, "anisotropy_threshold", "> 1", p.anisotropy_threshold)
    need(0 < p.lowres_creation_threshold < 1, "lowres_creation_threshold", "in (0, 1)", p.lowres_creation_threshold)
    need(1 < p.lowres_spacing_step <= 2, "lowres_spacing_step", "in (1, 2]", p.lowres_spacing_step)
    need(p.lowres_min_shape_ratio >= 1, "lowres_min_shape_ratio", "≥ 1", p.lowres_min_shape_ratio)
    need(p.lowres_max_spacing_factor > 1, "lowres_max_spacing_factor", "> 1", p.lowres_max_spacing_factor)
    need(0 <= p.min_patch_coverage_3d < 1, "min_patch_coverage_3d", "in [0, 1)", p.min_patch_coverage_3d)
    need(0 < p.liver_roi_max_box_fraction <= 1, "liver_roi_max_box_fraction", "in (0, 1]", p.liver_roi_max_box_fraction)
    need(p.liver_roi_margin_mm >= 0, "liver_roi_margin_mm", "≥ 0", p.liver_roi_margin_mm)
    for key in ("context_slices_2d", "context_slices_2d_liver_roi"):
        need(0 <= getattr(p, key) <= 8, key, "in 0..8", getattr(p, key))
    need(p.liver_roi_min_spacing_mm >= 0, "liver_roi_min_spacing_mm", "≥ 0", p.liver_roi_min_spacing_mm)
    need(p.lesion_recipe_max_median_diameter_mm >= 0, "lesion_recipe_max_median_diameter_mm", "≥ 0",
         p.lesion_recipe_max_median_diameter_mm)
    need(0 <= p.lesion_recipe_max_tumour_fraction <= 1, "lesion_recipe_max_tumour_fraction", "in [0, 1]",
         p.lesion_recipe_max_tumour_fraction)
    need(p.hu_window[0] < p.hu_window[1], "hu_window", "[lower, upper] with lower < upper", list(p.hu_window))
    need(p.denoise_min_noise_ct_hu > 0, "denoise_min_noise_ct_hu", "> 0", p.denoise_min_noise_ct_hu)
    need(p.denoise_min_noise_mri_relative > 0, "denoise_min_noise_mri_relative", "> 0", p.denoise_min_noise_mri_relative)
    need(0 < p.gpu_memory_fraction <= 1, "gpu_memory_fraction", "in (0, 1]", p.gpu_memory_fraction)
    need(p.gpu_reserve_gb >= 0, "gpu_reserve_gb", "≥ 0", p.gpu_reserve_gb)
    need(p.optimizer_states >= 0, "optimizer_states", "≥ 0", p.optimizer_states)
    need(0 < p.cpu_memory_fraction <= 1, "cpu_memory_fraction", "in (0, 1]", p.cpu_memory_fraction)
    need(p.cpu_seconds_per_iteration > 0, "cpu_seconds_per_iteration", "> 0", p.cpu_seconds_per_iteration)
    return problems


def preset_from_dict(data: dict, where: str = "preset") -> PlannerPreset:
    """Build and validate a preset from a JSON object of overrides (all problems reported together)."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: must be a JSON object of planner settings, got {type(data).__name__}")
    defaults = dataclasses.asdict(PlannerPreset())
    merged = {**defaults, **data}
    try:
        preset = from_jsonable(PlannerPreset, merged, where)
    except UserError as e:
        raise UserError(f"{e}. Valid keys are the fields of PlannerPreset (see planners/default.json).") from None
    problems = _validate(preset, where)
    if problems:
        raise UserErrors(problems, headline=f"{where}: invalid planner preset")
    return preset


def load_preset(name: str | os.PathLike) -> PlannerPreset:
    """The preset called ``name`` (a file in ``planners/``), or a path to a preset ``.json`` file."""
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        source = path
    else:
        source = preset_dir() / f"{name}.json"
        if not source.is_file():
            names = available_presets()
            raise UserError(f"--preset: must be one of {', '.join(names)} or a path to a .json file, got {str(name)!r}."
                            f"{did_you_mean(str(name), names)}")
    data = read_json(source)
    preset = preset_from_dict(data, where=str(source))
    if source.parent == preset_dir() and preset.name != source.stem:
        raise UserError(f"{source}: name must match the file name ({source.stem!r}), got {preset.name!r}")
    return preset
