"""Reproduce the nnU-Net v2 reference plans used in tests/test_planning_nnunet.py.

Run with an environment that has nnunetv2 (never autoliver's own environment; see ANCHORS):

    python -m venv nnunet_env && . nnunet_env/bin/activate
    pip install torch==2.13.0
    pip install --no-deps nnunetv2 dynamic-network-architectures acvl-utils batchgenerators batchgeneratorsv2
    pip install -c constraints.txt numpy scipy SimpleITK nibabel blosc2 einops tqdm yacs scikit-image \
        scikit-learn pandas matplotlib requests tifffile graphviz imagecodecs seaborn dicom2nifti threadpoolctl
    python benchmarks/nnunet_planner_reference.py ../shared/data/lits_geometry.json --gb 8
    python benchmarks/nnunet_planner_reference.py thick --gb 8

It writes a throw-away nnU-Net raw/preprocessed folder (empty image files, a fabricated
dataset_fingerprint.json with LiTS-like CT foreground statistics, no cropping) into a temporary
directory, runs ``ExperimentPlanner(...).plan_experiment()`` and prints the configurations as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

STATS = {"max": 1500.0, "mean": 99.4, "median": 101.0, "min": -1000.0, "percentile_00_5": -17.0,
         "percentile_99_5": 201.0, "std": 39.4}
THICK_Z = [5.0] * 22 + [2.5] * 5 + [1.25] * 3


def cases_of(source: str) -> list[dict]:
    if source == "thick":
        return [{"case": str(i), "shape_xyz": [512, 512, round(220 / z)], "spacing_xyz_mm": [0.78, 0.78, z]}
                for i, z in enumerate(THICK_Z)]
    return json.loads(Path(source).read_text())["cases"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="lits_geometry.json, or 'thick' for the thick-slice test set")
    ap.add_argument("--gb", type=float, default=8.0, help="nnU-Net's gpu_memory_target_in_gb")
    args = ap.parse_args()
    cases = cases_of(args.source)
    root = Path(tempfile.mkdtemp(prefix="nnunet_reference_"))
    raw, pre = root / "raw" / "Dataset003_LiTS", root / "pre" / "Dataset003_LiTS"
    for d in (raw / "imagesTr", raw / "labelsTr", pre):
        d.mkdir(parents=True)
    os.environ.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "pre"), nnUNet_results=str(root / "res"))
    for c in cases:
        (raw / "imagesTr" / f"lits_{int(c['case']):03d}_0000.nii.gz").touch()
        (raw / "labelsTr" / f"lits_{int(c['case']):03d}.nii.gz").touch()
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2}, "numTraining": len(cases),
        "file_ending": ".nii.gz", "overwrite_image_reader_writer": "SimpleITKIO"}))
    (pre / "dataset_fingerprint.json").write_text(json.dumps({
        "foreground_intensity_properties_per_channel": {"0": STATS}, "median_relative_size_after_cropping": 1.0,
        "shapes_after_crop": [list(reversed(c["shape_xyz"])) for c in cases],
        "spacings": [list(reversed(c["spacing_xyz_mm"])) for c in cases]}))
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    t0 = time.perf_counter()
    plans = ExperimentPlanner("Dataset003_LiTS", gpu_memory_target_in_gb=args.gb).plan_experiment()
    seconds = time.perf_counter() - t0
    out = {}
    for name, c in plans["configurations"].items():
        if "patch_size" not in c:
            out[name] = c
            continue
        a = c["architecture"]["arch_kwargs"]
        out[name] = {"patch_size": [int(x) for x in c["patch_size"]], "batch_size": int(c["batch_size"]),
                     "spacing": [float(x) for x in c["spacing"]],
                     "median_image_size_in_voxels": [float(x) for x in c["median_image_size_in_voxels"]],
                     "features_per_stage": list(a["features_per_stage"]), "strides": [list(s) for s in a["strides"]],
                     "kernel_sizes": [list(k) for k in a["kernel_sizes"]]}
    print(json.dumps({"transpose_forward": plans["transpose_forward"], "planning_seconds": seconds,
                      "configurations": out}, indent=1))


if __name__ == "__main__":
    main()
