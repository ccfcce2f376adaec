"""Training recipes: everything about *how* a configuration is trained, as data.

A :class:`Recipe` is a frozen dataclass of JSON primitives registered by name; the checkpoint
stores it as a JSON dict, so a model folder says how it was made. Variation is a new entry in
:data:`RECIPES`, never a trainer subclass.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from autoliver.errors import UserError, choose
from autoliver.schema import from_jsonable, to_jsonable


@dataclass(frozen=True)
class Augmentation:
    """batchgenerators augmentation, nnU-Net's defaults. ``p_*`` are per-sample probabilities.

    Rotation angles are in degrees about each axis for 3D patches; 2D patches and anisotropic 3D
    patches (z much coarser than y, x) rotate in-plane by up to ``rotation_2d_deg``.
    """

    enabled: bool = True
    p_rotation: float = 0.2
    rotation_3d_deg: float = 30.0
    rotation_2d_deg: float = 180.0
    p_scale: float = 0.2
    scale_range: tuple[float, float] = (0.7, 1.4)
    p_elastic: float = 0.0  # elastic deformation is optional (0 = off, as nnU-Net v2)
    elastic_alpha: tuple[float, float] = (0.0, 200.0)
    elastic_sigma: tuple[float, float] = (9.0, 13.0)
    order_data: int = 3  # spline order of the image resampling (labels: nearest)
    p_noise: float = 0.1
    noise_variance: tuple[float, float] = (0.0, 0.1)
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    p_brightness: float = 0.15
    brightness_range: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    p_low_resolution: float = 0.25
    low_resolution_zoom: tuple[float, float] = (0.5, 1.0)
    p_gamma: float = 0.3
    p_gamma_inverted: float = 0.1
    gamma_range: tuple[float, float] = (0.7, 1.5)
    mirror: bool = True
    p_cascade_morphology: float = 0.4  # cascade: dilate/erode the previous stage's mask
    # Liver-ROI stage: its liver channel is made to look like a first stage's (see data.perturb_liver):
    # each of coarsening, dilation / erosion and notches with this probability, and the channel
    # dropped (all zero) with p_liver_dropout so the network also reads the liver from the image.
    p_liver_perturbation: float = 0.5
    p_liver_dropout: float = 0.2
    # Synthetic lesions (see synthetic_lesions.py; datasets with liver and tumour labels, CT): with
    # this probability per sample, a number (inclusive range) of distorted ellipsoids of the drawn
    # diameter, darker than the liver by the drawn HU, painted into the liver and labelled tumour.
    p_synthetic_lesion: float = 0.0
    synthetic_lesion_count: tuple[int, int] = (1, 3)
    synthetic_lesion_diameter_mm: tuple[float, float] = (4.0, 20.0)
    synthetic_lesion_hu: tuple[float, float] = (-50.0, -10.0)


@dataclass(frozen=True)
class Recipe:
    name: str
    optimizer: str = "sgd"  # "sgd" (Nesterov) | "adam" (AdamW)
    learning_rate: float = 1e-2
    momentum: float = 0.99
    weight_decay: float = 3e-5
    schedule: str = "poly"  # "poly": lr·(1 − epoch/epochs)^0.9 | "constant"
    poly_exponent: float = 0.9
    epochs: int = 1000
    iterations_per_epoch: int = 250
    validation_fraction: float = 0.2  # pseudo-Dice batches per epoch, per training iteration (nnU-Net: 50 / 250)
    grad_clip_norm: float = 12.0
    loss: dict[str, float] = field(default_factory=lambda: {"dice": 1.0, "ce": 1.0})
    region: bool = False  # sigmoid outputs for nested regions (liver ⊃ tumour) instead of softmax classes
    oversample_foreground: float = 1 / 3  # share of patches forced to contain a foreground class
    oversample_lesions: float = 0.0  # a further share centred on a lesion picked lesion by lesion
    augmentation: Augmentation = Augmentation()
    ema_pseudo_dice: float = 0.9  # smoothing of the pseudo-Dice that selects checkpoint_best
    description: str = ""


RECIPES: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    # Checked when used (get_recipe), not here: the loss check imports torch, and registering runs
    # on every `autoliver --help`.
    RECIPES[recipe.name] = recipe
    return recipe


def check_recipe(r: Recipe) -> None:
    from autoliver.training.losses import check_terms

    choose(f"recipe {r.name}: optimizer", r.optimizer, ("sgd", "adam"))
    choose(f"recipe {r.name}: schedule", r.schedule, ("poly", "constant"))
    check_terms(r.loss)
    for name in ("epochs", "iterations_per_epoch"):
        if getattr(r, name) < 1:
            raise UserError(f"recipe {r.name}: {name} must be >= 1, got {getattr(r, name)}")
    for name in ("oversample_foreground", "oversample_lesions"):
        if not 0 <= getattr(r, name) <= 1:
            raise UserError(f"recipe {r.name}: {name} must be in [0, 1], got {getattr(r, name)}")
    a = r.augmentation
    if not 0 <= a.p_synthetic_lesion <= 1:
        raise UserError(f"recipe {r.name}: p_synthetic_lesion must be in [0, 1], got {a.p_synthetic_lesion}")
    for name, low in (("synthetic_lesion_count", 0), ("synthetic_lesion_diameter_mm", 1e-3),
                      ("synthetic_lesion_hu", -math.inf)):
        lo, hi = getattr(a, name)
        if not low <= lo <= hi:
            raise UserError(f"recipe {r.name}: {name} must be a range (low <= high) from {low:g}, got {(lo, hi)}")


def get_recipe(name: str) -> Recipe:
    recipe = RECIPES[choose("--recipe", name, RECIPES)]
    check_recipe(recipe)
    return recipe


def recipe_to_dict(recipe: Recipe) -> dict:
    return to_jsonable(recipe)


def recipe_from_dict(data: dict) -> Recipe:
    return from_jsonable(Recipe, data, "recipe")


DEFAULT = register(Recipe(
    "default", description="nnU-Net's: SGD Nesterov 0.99, lr 1e-2 poly, Dice + CE, 1000 × 250 iterations"))
register(dataclasses.replace(
    DEFAULT, name="adam", optimizer="adam", learning_rate=3e-4, weight_decay=1e-5,
    description="AdamW lr 3e-4 with poly decay, Dice + CE (the seed papers' optimizer)"))
register(dataclasses.replace(
    DEFAULT, name="dice_bce_focal_tversky", loss={"dice": 0.3, "bce": 0.3, "focal_tversky": 0.4},
    description="0.3 Dice + 0.3 BCE + 0.4 focal Tversky, for small, imbalanced tumours"))
register(dataclasses.replace(
    DEFAULT, name="lesion", oversample_foreground=0.2, oversample_lesions=0.15,
    description="for small, imbalanced tumours: nnU-Net's Dice + CE and its third of forced patches, of which 0.15 "
                "(of all patches) are centred on a lesion chosen lesion by lesion, so a 5 mm metastasis is drawn "
                "as often as a 60 mm one (the planner's choice for lesion stages of datasets with small or few "
                "tumours)"))
register(dataclasses.replace(
    RECIPES["lesion"], name="lesion_blob", loss={"dice": 1.0, "ce": 1.0, "blob_dice": 1.0},
    description="`lesion` plus blob Dice (Kofler et al. 2023): every lesion of a batch weighs alike in the loss, "
                "not by its voxels. On the accuracy benchmark it found one lesion more than `lesion` (the 68 mm "
                "one) and marked five times the false lesions, most under 0.5 ml, so the planner does not choose "
                "it; a choice for datasets where missing a lesion costs more than a false alarm"))
register(dataclasses.replace(
    RECIPES["lesion"], name="lesion_synthetic",
    augmentation=dataclasses.replace(DEFAULT.augmentation, p_synthetic_lesion=0.3),
    description="`lesion` plus synthetic lesions (Hu et al. 2023): in 0.3 of the patches 1-3 distorted ellipsoids "
                "of 4-20 mm, 10-50 HU darker than the liver, are painted into the liver label and labelled tumour"))
register(dataclasses.replace(
    DEFAULT, name="dice_focal", loss={"dice": 0.8, "focal": 0.2}, description="0.8 Dice + 0.2 focal"))
register(dataclasses.replace(
    DEFAULT, name="region", region=True,
    description="region-based: sigmoid outputs for liver (labels >= 1) and tumour (label 2), Dice + BCE"))
