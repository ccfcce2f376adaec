"""nnU-Net v2 beside autoliver in bench_accuracy.py: same raw data, same wall-clock training minutes.

Runs in autoliver's own Python and never imports nnunetv2: every nnU-Net step runs in a separate
process with the Python of a throw-away environment where nnU-Net v2 is installed (see ANCHORS.md
for installing it without replacing torch). One public function::

    from _nnunet_accuracy import nnunet_predictions
    info = nnunet_predictions(NNUNET_PYTHON, raw / "Dataset990_Smoke", work, "default", 30.0, out_dir,
                              mirror=False, step_size=0.5)

Variants (both train fold ``all``, i.e. every case of imagesTr, with nnU-Net's own
``nnUNetTrainer`` on the CPU for ``minutes`` of wall clock, see nnunet_timed_train.py):

* ``"default"``: nnU-Net's own planning and preprocessing (``nnUNetv2_plan_and_preprocess -c
  3d_fullres``, plans ``nnUNetPlans``), configuration 3d_fullres.
* ``"autoliver_plan"``: nnU-Net's preprocessing and trainer on the plan autoliver made for this
  machine: plans ``nnUNetPlansAutoliver`` built by ``_nnunet_model.nnunet_plans`` from one
  configuration of autoliver's plans.json (spacing, patch, batch, network stages, features,
  kernels, strides, CT clipping and z-score numbers), stored as nnU-Net's 3d_fullres and
  preprocessed by ``nnUNetv2_preprocess``. This separates planning from the training loop.

The test images are then predicted on the CPU with nnU-Net's predictor (Gaussian-weighted sliding
window, ``step_size``; mirroring over the axes the trainer allows when ``mirror``), written as
``out_dir/{case}.nii.gz``. Steps whose outputs exist with the same settings are skipped.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS = ("default", "autoliver_plan")
PLANS_IDENTIFIER = {"default": "nnUNetPlans", "autoliver_plan": "nnUNetPlansAutoliver"}
CONFIGURATION = "3d_fullres"
TRAINER = "nnUNetTrainer"
FOLD = "all"

_ENTRY = ("import sys; from {module} import {function} as entry; sys.argv[0] = {name!r}; "
          "sys.exit(entry())")
_ENTRIES = {
    "nnUNetv2_plan_and_preprocess": ("nnunetv2.experiment_planning.plan_and_preprocess_entrypoints",
                                     "plan_and_preprocess_entry"),
    "nnUNetv2_extract_fingerprint": ("nnunetv2.experiment_planning.plan_and_preprocess_entrypoints",
                                     "extract_fingerprint_entry"),
    "nnUNetv2_preprocess": ("nnunetv2.experiment_planning.plan_and_preprocess_entrypoints", "preprocess_entry"),
}

# Run by the nnU-Net Python: predicts a folder of {case}_0000.nii.gz on the CPU, times the prediction alone.
_PREDICT = r"""
import json, multiprocessing, sys, time
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
model, images, out, mirror, step, report = sys.argv[1:7]
torch.set_num_threads(multiprocessing.cpu_count())
t0 = time.perf_counter()
predictor = nnUNetPredictor(tile_step_size=float(step), use_gaussian=True, use_mirroring=mirror == "1",
                            perform_everything_on_device=True, device=torch.device("cpu"), verbose=False,
                            verbose_preprocessing=False, allow_tqdm=False)
predictor.initialize_from_trained_model_folder(model, ("all",), checkpoint_name="checkpoint_final.pth")
t1 = time.perf_counter()
predictor.predict_from_files_sequential(images, out, save_probabilities=False, overwrite=True,
                                        folder_with_segs_from_prev_stage=None)
t2 = time.perf_counter()
axes = predictor.allowed_mirroring_axes if mirror == "1" else None
json.dump({"load_seconds": t1 - t0, "predict_seconds": t2 - t1,
           "mirror_axes": list(axes) if axes is not None else None,
           "torch_threads": torch.get_num_threads()}, open(report, "w"))
"""


def _nnunet_model():
    spec = importlib.util.spec_from_file_location("_nnunet_model", HERE / "_nnunet_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _say(msg: str) -> None:
    print(f"nnunet[{time.strftime('%H:%M:%S')}]: {msg}", flush=True)


def _run(cmd: list[str], env: dict, what: str) -> float:
    shown = [Path(c).name if os.sep in c else c for c in cmd[:2]]
    shown += [c if "\n" not in c and len(c) < 80 else "..." for c in cmd[2:]]
    _say(f"{what}: {' '.join(shown)}")
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    return time.perf_counter() - t


def _entry(python: str, name: str, *args) -> list[str]:
    module, function = _ENTRIES[name]
    return [python, "-c", _ENTRY.format(module=module, function=function, name=name), *map(str, args)]


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _training_cases(raw_dataset: Path) -> list[str]:
    dataset = json.loads((raw_dataset / "dataset.json").read_text())
    ending = dataset.get("file_ending", ".nii.gz")
    return sorted(p.name[: -len(ending)] for p in (raw_dataset / "labelsTr").iterdir() if p.name.endswith(ending))


def _test_cases(test_images: Path, ending: str = ".nii.gz") -> list[str]:
    suffix = "_0000" + ending
    return sorted(p.name[: -len(suffix)] for p in test_images.iterdir() if p.name.endswith(suffix))


def _link_raw(raw_dataset: Path, nnunet_raw: Path) -> None:
    nnunet_raw.mkdir(parents=True, exist_ok=True)
    link = nnunet_raw / raw_dataset.name
    if link.is_symlink() and link.resolve() == raw_dataset.resolve():
        return
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.exists():
        shutil.rmtree(link)
    try:
        link.symlink_to(raw_dataset.resolve(), target_is_directory=True)
    except OSError:
        shutil.copytree(raw_dataset, link)


def describe_plan(plans: dict, configuration: str = CONFIGURATION) -> dict:
    """The numbers of one nnU-Net plans configuration that set the cost of training and prediction."""
    cfg = plans["configurations"][configuration]
    arch = cfg["architecture"]["arch_kwargs"]
    spacing = [round(float(v), 3) for v in cfg["spacing"]]
    patch = [int(v) for v in cfg["patch_size"]]
    features = [int(v) for v in arch["features_per_stage"]]
    text = (f"spacing {'×'.join(f'{v:g}' for v in spacing)} mm, patch {'×'.join(map(str, patch))}, "
            f"batch {cfg['batch_size']}, features {'-'.join(map(str, features))} ({len(features)} stages), "
            f"{arch['n_conv_per_stage'][0]} convs per stage")
    return {"text": text, "spacing_zyx_mm": spacing, "patch_size": patch, "batch_size": int(cfg["batch_size"]),
            "features_per_stage": features, "kernel_sizes": arch["kernel_sizes"], "strides": arch["strides"],
            "normalization": cfg["normalization_schemes"][0]}


def nnunet_predictions(nnunet_python: str, raw_dataset: Path, work: Path, variant: str, minutes: float,
                       out_dir: Path, *, autoliver_plans: Path | None = None,
                       autoliver_configuration: str = "3d_fullres", test_images: Path | None = None,
                       mirror: bool = False, step_size: float = 0.5, iterations_per_epoch: int = 50,
                       val_iterations_per_epoch: int = 2, min_epochs: int = 10, num_processes: int = 1) -> dict:
    """Plan, preprocess and train nnU-Net v2 (``variant``, ``minutes`` of CPU wall clock, fold
    ``all``) on ``raw_dataset`` (``.../DatasetNNN_Name`` in nnU-Net v2's layout) under ``work``,
    then predict ``test_images`` (default ``raw_dataset/imagesTs``) into ``out_dir/{case}.nii.gz``.

    ``autoliver_plans`` (autoliver's ``plans.json``) and ``autoliver_configuration`` are needed for
    the variant ``"autoliver_plan"``. ``iterations_per_epoch`` is a maximum: nnunet_timed_train.py
    lowers it when fewer than ``min_epochs`` epochs would fit. ``num_processes`` is for nnU-Net's
    fingerprint and preprocessing workers (its resampling of large CTs takes several GiB each).

    Returns ``{"train_seconds", "epochs", "iterations_per_epoch", "seconds_per_iteration",
    "predict_seconds", "plan", ...}`` where ``plan`` is a one-line description (spacing, patch,
    batch, features) and ``plan_details``, ``training`` and ``prediction`` hold the rest.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
    raw_dataset = Path(raw_dataset).resolve()
    match = re.fullmatch(r"Dataset(\d{3})_.+", raw_dataset.name)
    if not match:
        raise ValueError(f"{raw_dataset.name}: the raw dataset folder must be named DatasetNNN_Name")
    dataset_id, name = int(match.group(1)), raw_dataset.name
    work, out_dir = Path(work).resolve(), Path(out_dir).resolve()
    test_images = Path(test_images).resolve() if test_images is not None else raw_dataset / "imagesTs"
    plans_id = PLANS_IDENTIFIER[variant]
    folders = {k: work / k for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    _link_raw(raw_dataset, folders["nnUNet_raw"])
    env = {**os.environ, **{k: str(v) for k, v in folders.items()}, "nnUNet_n_proc_DA": "1",
           "nnUNet_compile": "false", "PYTHONUNBUFFERED": "1"}
    pre = folders["nnUNet_preprocessed"] / name
    plans_file = pre / f"{plans_id}.json"
    cases = _training_cases(raw_dataset)
    steps: dict[str, float] = {}

    # 0. another dataset under the same name in this work folder: start again from scratch
    dataset_file = work / f".bench_dataset_{name}.json"
    dataset_stamp = {"raw": str(raw_dataset), "cases": cases,
                     "dataset_json": _digest((raw_dataset / "dataset.json").read_text())}
    if _read_json(dataset_file) != dataset_stamp:
        if dataset_file.exists() or pre.exists():
            _say(f"{name}: the raw dataset changed; removing nnU-Net's preprocessed data and models of it")
        shutil.rmtree(pre, ignore_errors=True)
        shutil.rmtree(folders["nnUNet_results"] / name, ignore_errors=True)
        for old in [*work.glob(f"training_{name}_*.json"), *work.glob(f"prediction_{name}_*.json")]:
            old.unlink()
        dataset_file.write_text(json.dumps(dataset_stamp))

    # 1. plans (and the fingerprint that nnU-Net's preprocessing and trainer read)
    if variant == "default":
        if not plans_file.is_file():
            steps["plan"] = _run(_entry(
                nnunet_python, "nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", CONFIGURATION,
                "-np", num_processes, "-npfp", num_processes, "--no_pp"), env, "nnU-Net planning")
    else:
        if autoliver_plans is None:
            raise ValueError("variant 'autoliver_plan' needs autoliver_plans (autoliver's plans.json)")
        if not (pre / "dataset_fingerprint.json").is_file():
            steps["fingerprint"] = _run(_entry(nnunet_python, "nnUNetv2_extract_fingerprint", "-d", dataset_id,
                                               "-np", num_processes), env, "nnU-Net fingerprint")
        shutil.copyfile(raw_dataset / "dataset.json", pre / "dataset.json")  # as nnU-Net's planner does
        ours = json.loads(Path(autoliver_plans).read_text())
        plans, _ = _nnunet_model().nnunet_plans(ours, autoliver_configuration, plans_name=plans_id,
                                                data_identifier=f"{plans_id}_{CONFIGURATION}")
        plans["dataset_name"] = name
        plans["configurations"] = {CONFIGURATION: plans["configurations"][autoliver_configuration]}
        network = ours["configurations"][autoliver_configuration]["network"]
        if network.get("architecture", "unet") != "unet" or network.get("downsampling", "conv") != "conv":
            _say(f"note: autoliver's network is {network.get('architecture')} with {network.get('downsampling')} "
                 "downsampling; nnU-Net trains its PlainConvUNet (strided convolutions) with the same stages")
        if _read_json(plans_file) != plans:
            plans_file.write_text(json.dumps(plans, indent=2))
    plans = json.loads(plans_file.read_text())
    plan = describe_plan(plans)
    plans_digest = _digest(plans["configurations"][CONFIGURATION],
                           plans.get("foreground_intensity_properties_per_channel"))
    _say(f"{variant}: plans {plans_id}, {plan['text']}")

    # 2. preprocessing of the training cases with those plans
    marker = pre / f".bench_preprocessed_{plans_id}.json"
    stamp = {"plans": plans_digest, "cases": cases}
    if _read_json(marker) != stamp:
        steps["preprocess"] = _run(_entry(nnunet_python, "nnUNetv2_preprocess", "-d", dataset_id, "-plans_name",
                                          plans_id, "-c", CONFIGURATION, "-np", num_processes),
                                   env, "nnU-Net preprocessing")
        marker.write_text(json.dumps(stamp))

    # 3. training for `minutes` of wall clock
    model = folders["nnUNet_results"] / name / f"{TRAINER}__{plans_id}__{CONFIGURATION}"
    checkpoint = model / f"fold_{FOLD}" / "checkpoint_final.pth"
    timing_file = work / f"training_{name}_{variant}.json"
    train_stamp = {**stamp, "minutes": minutes, "iterations": iterations_per_epoch,
                   "val_iterations": val_iterations_per_epoch, "min_epochs": min_epochs,
                   "script": _digest((HERE / "nnunet_timed_train.py").read_text())}
    timing = _read_json(timing_file)
    if not (checkpoint.is_file() and timing and timing.get("stamp") == train_stamp):
        shutil.rmtree(model / f"fold_{FOLD}", ignore_errors=True)
        _run([nnunet_python, str(HERE / "nnunet_timed_train.py"), "-d", str(dataset_id), "-c", CONFIGURATION,
              "-f", FOLD, "-p", plans_id, "--minutes", str(minutes), "--iterations", str(iterations_per_epoch),
              "--val-iterations", str(val_iterations_per_epoch), "--min-epochs", str(min_epochs),
              "-o", str(timing_file)], env, f"nnU-Net training ({minutes:g} min)")
        timing = {**json.loads(timing_file.read_text()), "stamp": train_stamp}
        timing_file.write_text(json.dumps(timing, indent=2))
    else:
        _say(f"training: reusing {checkpoint.relative_to(work)}")

    # 4. prediction of the test images
    test_cases = _test_cases(test_images)
    if not test_cases:
        raise FileNotFoundError(f"{test_images}: no {{case}}_0000.nii.gz images to predict")
    pred_stamp = {"training": _digest(timing), "images": str(test_images), "cases": test_cases,
                  "mirror": bool(mirror), "step_size": float(step_size), "out": str(out_dir)}
    report = work / f"prediction_{name}_{variant}_{_digest(pred_stamp)}.json"
    prediction = _read_json(report)
    outputs = [out_dir / f"{c}.nii.gz" for c in test_cases]
    if not (prediction and prediction.get("stamp") == pred_stamp and all(p.is_file() for p in outputs)):
        tmp = work / f"prediction_{name}_{variant}_tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        wall = _run([nnunet_python, "-c", _PREDICT, str(model), str(test_images), str(tmp), "1" if mirror else "0",
                     str(step_size), str(report)], env,
                    f"nnU-Net prediction of {len(test_cases)} case(s), mirror {bool(mirror)}, step {step_size}")
        prediction = {**json.loads(report.read_text()), "wall_seconds": wall, "stamp": pred_stamp}
        out_dir.mkdir(parents=True, exist_ok=True)
        for case in test_cases:
            shutil.move(str(tmp / f"{case}.nii.gz"), str(out_dir / f"{case}.nii.gz"))
        shutil.rmtree(tmp, ignore_errors=True)
        report.write_text(json.dumps(prediction, indent=2))
    else:
        _say(f"prediction: reusing {len(outputs)} file(s) in {out_dir}")

    result = {
        "variant": variant, "plans_identifier": plans_id, "configuration": CONFIGURATION, "fold": FOLD,
        "train_seconds": timing["train_seconds"], "epochs": timing["epochs"],
        "iterations_per_epoch": timing["iterations_per_epoch"],
        "seconds_per_iteration": timing["seconds_per_iteration"],
        "compute_seconds_per_iteration": timing.get("compute_seconds_per_iteration"),
        "predict_seconds": prediction["predict_seconds"], "predict_cases": len(test_cases),
        "mirror_axes": prediction.get("mirror_axes"), "step_size": float(step_size),
        "plan": plan["text"], "plan_details": plan, "training": timing, "prediction": prediction,
        "preprocessing_seconds": steps, "model_folder": str(model),
    }
    _say(f"{variant}: {timing['epochs']} epochs × {timing['iterations_per_epoch']} iterations in "
         f"{timing['train_seconds']:.0f} s ({timing['seconds_per_iteration']:.2f} s per iteration); "
         f"prediction {prediction['predict_seconds']:.1f} s for {len(test_cases)} case(s)")
    return result


if __name__ == "__main__":  # python _nnunet_accuracy.py NNUNET_PYTHON RAW_DATASET WORK VARIANT MINUTES OUT [PLANS]
    a = sys.argv[1:]
    info = nnunet_predictions(a[0], Path(a[1]), Path(a[2]), a[3], float(a[4]), Path(a[5]),
                              autoliver_plans=Path(a[6]) if len(a) > 6 else None)
    print(json.dumps({k: v for k, v in info.items() if k not in ("training", "prediction")}, indent=2))
