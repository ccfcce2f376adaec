"""Build an nnU-Net v2 model folder whose network equals one configuration of an autoliver plan.

Run with the Python of an environment where nnU-Net v2 is installed (never autoliver's own: see
ANCHORS.md for installing it without replacing torch):

    NNUNET_PYTHON _nnunet_model.py PLANS_JSON CONFIGURATION OUT_FOLDER FOLDS

It writes ``OUT_FOLDER/{dataset.json, plans.json, fold_k/checkpoint_final.pth}`` with nnU-Net's
PlainConvUNet (same stages, features, kernels, strides, two convolutions per stage, instance
norm, LeakyReLU), random weights, nnU-Net's CT normalisation with the plan's intensity numbers and
its default resampling (cubic data, separate z for anisotropic spacing), so that
``nnUNetv2_predict_from_modelfolder`` predicts the same scan with the same network as autoliver.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def nnunet_plans(ours: dict, configuration: str, plans_name: str = "nnUNetPlans",
                 data_identifier: str | None = None) -> tuple[dict, dict]:
    """nnU-Net v2 plans (one configuration, named ``configuration``) and the PlainConvUNet keyword
    arguments equal to ``ours["configurations"][configuration]`` of an autoliver plans.json.

    Pure dictionaries (no nnU-Net import), so autoliver's own Python can write the plans file too:
    ``_nnunet_accuracy.py`` trains nnU-Net with it under another ``plans_name``; the preprocessed
    folder is ``data_identifier`` (default ``{plans_name}_{configuration}``)."""
    cfg = ours["configurations"][configuration]
    net = cfg["network"]
    norm = cfg["normalization"][0]
    n = len(net["features_per_stage"])
    arch_kwargs = {
        "n_stages": n, "features_per_stage": net["features_per_stage"], "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": net["kernel_sizes"], "strides": net["strides"], "n_conv_per_stage": [net["convs_per_stage"]] * n,
        "n_conv_per_stage_decoder": [net["convs_per_stage"]] * (n - 1), "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    plans = {
        "dataset_name": ours["dataset_name"], "plans_name": plans_name,
        "original_median_spacing_after_transp": cfg["spacing_zyx_mm"],
        "original_median_shape_after_transp": cfg["median_shape_zyx"], "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": norm["upper"], "mean": norm["mean"], "median": norm["mean"], "min": norm["lower"],
            "percentile_00_5": norm["lower"], "percentile_99_5": norm["upper"], "std": norm["std"]}},
        "configurations": {configuration: {
            "data_identifier": data_identifier or f"{plans_name}_{configuration}",
            "preprocessor_name": "DefaultPreprocessor",
            "batch_size": cfg["batch_size"], "patch_size": cfg["patch_size"],
            "median_image_size_in_voxels": cfg["median_shape_zyx"], "spacing": cfg["spacing_zyx_mm"],
            "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": resampling,
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
            "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                             "arch_kwargs": arch_kwargs,
                             "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
            "batch_dice": False}},
    }
    return plans, arch_kwargs


def main(plans_json: str, configuration: str, out: str, folds: str) -> None:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    ours = json.loads(Path(plans_json).read_text())
    plans, arch_kwargs = nnunet_plans(ours, configuration)
    labels = ours["labels"]
    dataset = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "plans.json").write_text(json.dumps(plans, indent=2))
    (out_dir / "dataset.json").write_text(json.dumps(dataset, indent=2))
    network = PlainConvUNet(input_channels=1, num_classes=len(labels), deep_supervision=False,
                            **{**arch_kwargs, "conv_op": torch.nn.Conv3d, "norm_op": torch.nn.InstanceNorm3d,
                               "nonlin": torch.nn.LeakyReLU})
    for f in folds.split(","):
        (out_dir / f"fold_{f}").mkdir(exist_ok=True)
        torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainer",
                    "init_args": {"plans": plans, "configuration": configuration, "fold": int(f),
                                  "dataset_json": dataset},
                    "inference_allowed_mirroring_axes": (0, 1, 2)},
                   out_dir / f"fold_{f}" / "checkpoint_final.pth")


if __name__ == "__main__":
    main(*sys.argv[1:5])
