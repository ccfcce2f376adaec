"""Accuracy at equal compute: autoliver's liver-ROI lesion cascade, autoliver before it, and nnU-Net v2.

A fixed LiTS-like phantom set: 40 portal-phase CTs from ``autoliver make_synthetic`` (seed 11,
512 × 512 in-plane at 0.6-0.9 mm, 100 slices of 2-5 mm, the generator's tumours of 5-80 mm, up to
several per liver, some livers without), the first 30 for training, the last 10 held out
(``imagesTs``/``labelsTs``). Every step runs through a CLI in its own process, on the CPU, and every
row is scored on the same 10 test cases by ``autoliver evaluate``: liver Dice, tumour Dice per case
and global, lesion recall and precision under the Dice > 0.2 and LiTS IoU > 0.5 rules, recall of
lesions < 10 mm, 10-20 mm and > 20 mm (longest axial diameter of the reference lesion), and the
training minutes. All rows train on the 30 training cases (fold ``all``) and predict without
mirroring (test-time augmentation off for every framework: on 2 cores nnU-Net's default network
would need hours for the 10 cases with it), with a sliding-window step of 0.5.

Rows (``AUTOLIVER_BENCH_ROWS``, comma-separated, default all of them):

* ``cascade``: ``3d_fullres`` (cpu preset) for a third of the minutes finds the liver, then the
  liver-ROI lesion stage (``AUTOLIVER_BENCH_ROI``, default ``2d_liver_roi``) for the rest, both as
  the cpu preset plans them (its 2D lesion stage sees five slices: 2.5D context, k = 2); with
  ``AUTOLIVER_BENCH_CONTEXT`` k the cpu preset's ``context_slices_2d_liver_roi`` is set to k instead
  (0: one slice); ``AUTOLIVER_BENCH_RECIPE`` trains the lesion stage with that
  recipe instead of the plan's (e.g. ``lesion_blob``); ``AUTOLIVER_BENCH_PRECISION`` is autoliver's
  training ``--precision`` (default ``fp32``; ``bf16`` on a CPU with native
  bfloat16 trains about twice the iterations in the same minutes); ``AUTOLIVER_BENCH_ANTI_ALIASING``
  0 or 1 sets the cpu preset's ``anti_aliasing`` (images smoothed before they are made coarser; the
  preset's own: off); ``AUTOLIVER_BENCH_REUSE_FIRST=1`` keeps a first stage that an earlier row of
  the same ``AUTOLIVER_BENCH_DIR`` and plan trained (its minutes still count), so two lesion stages
  are compared on the same liver; ``AUTOLIVER_BENCH_TAG`` appends ``_{tag}`` to the row's name and
  prediction folder, so a variant run by hand does not overwrite an earlier row. The row is saved
  as ``cascade``, or ``cascade_{ROI}`` /
  ``cascade_{ROI}_context{k}`` / ``cascade_{recipe}`` / ``..._bf16`` / ``..._no_anti_aliasing`` for
  the others;
* ``before``: ``3d_fullres`` alone for all the minutes (autoliver before the lesion stage);
* ``nnunet_default``: nnU-Net v2's own plan (3d_fullres), epochs cut to the same minutes;
* ``nnunet_autoliver_plan``: nnU-Net v2's trainer on the network of autoliver's cpu ``3d_fullres``.

The nnU-Net rows need ``AUTOLIVER_NNUNET_PYTHON``, a Python with nnU-Net v2 (see ANCHORS.md), and
skip without it; ``AUTOLIVER_BENCH_NNUNET_STEP`` (default 0.5) is their sliding-window step (1.0
makes nnU-Net's default plan predict in minutes per case on 2 cores instead of a quarter hour, at
some cost to its accuracy, and the row says so). ``AUTOLIVER_BENCH_MINUTES`` (default 30) is each row's training budget, all of its
stages together; ``AUTOLIVER_BENCH_DIR`` keeps the data, models and ``accuracy.json`` (the rows)
between runs. Run on an idle machine, alone:

    python -m pytest benchmarks/bench_accuracy.py --benchmark-only -s

The targets (the lesion-cascade issue's, for the cascade row): tumour global Dice ≥ 0.60, lesion
recall (Dice > 0.2) ≥ 0.80 for lesions ≥ 10 mm and ≥ 0.50 under 10 mm, liver Dice ≥ 0.93, and no
worse than nnU-Net v2 on any of them where its rows were run.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _cli import bench_root, cpu_preset_with, run_autoliver  # noqa: E402

DATASET = "Dataset970_AccuracyCT"
CASES, TEST_CASES, SEED, SHAPE = 40, 10, 11, ("100", "512", "512")
MINUTES = float(os.environ.get("AUTOLIVER_BENCH_MINUTES", "30"))
ROI = os.environ.get("AUTOLIVER_BENCH_ROI", "2d_liver_roi")
CONTEXT = int(os.environ["AUTOLIVER_BENCH_CONTEXT"]) if os.environ.get("AUTOLIVER_BENCH_CONTEXT") else None
RECIPE = os.environ.get("AUTOLIVER_BENCH_RECIPE", "")  # the lesion stage's, when not the plan's
REUSE_FIRST = os.environ.get("AUTOLIVER_BENCH_REUSE_FIRST", "") == "1"  # keep a trained 3d_fullres
TAG = os.environ.get("AUTOLIVER_BENCH_TAG", "")  # appended to the cascade row's name (and its predictions)
PRECISION = os.environ.get("AUTOLIVER_BENCH_PRECISION", "fp32")  # autoliver's training --precision
# The cpu preset's anti_aliasing, when not its own (0 or 1)
ANTI_ALIASING = bool(int(os.environ["AUTOLIVER_BENCH_ANTI_ALIASING"])) \
    if os.environ.get("AUTOLIVER_BENCH_ANTI_ALIASING") else None
ROWS = [r.strip() for r in os.environ.get("AUTOLIVER_BENCH_ROWS", "cascade,before,nnunet_default,"
                                                                   "nnunet_autoliver_plan").split(",") if r.strip()]
NNUNET_PYTHON = os.environ.get("AUTOLIVER_NNUNET_PYTHON")
NNUNET_STEP = float(os.environ.get("AUTOLIVER_BENCH_NNUNET_STEP", "0.5"))
ITERS = 50  # iterations per epoch: a checkpoint about every minute on a CPU
SIZE_BINS = (("< 10 mm", 0.0, 10.0), ("10-20 mm", 10.0, 20.0), ("> 20 mm", 20.0, float("inf")))
TARGETS = {"tumour_dice_global": 0.60, "recall_10mm_and_up": 0.80, "recall_under_10mm": 0.50, "liver_dice": 0.93}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return bench_root(tmp_path_factory, "accuracy")


def autoliver(root: Path, *args: str) -> float:
    return run_autoliver(root, *args)


def dataset(root: Path) -> Path:
    """The raw dataset, generated once: 30 training cases, the last 10 moved to imagesTs/labelsTs."""
    raw = root / "raw" / DATASET
    if (raw / "labelsTs").is_dir() and len(list((raw / "labelsTs").glob("*.nii.gz"))) == TEST_CASES:
        return raw
    labels = sorted((raw / "labelsTr").glob("*.nii.gz"))
    if len(labels) != CASES or (raw / "labelsTs").exists():  # not generated, or a split cut short
        shutil.rmtree(raw, ignore_errors=True)
        autoliver(root, "make_synthetic", "-d", DATASET, "--cases", str(CASES), "--seed", str(SEED), "--shape", *SHAPE)
        labels = sorted((raw / "labelsTr").glob("*.nii.gz"))
    (raw / "imagesTs").mkdir()
    (raw / "labelsTs").mkdir()
    for label in labels[CASES - TEST_CASES:]:
        case = label.name[: -len(".nii.gz")]
        shutil.move(raw / "imagesTr" / f"{case}_0000.nii.gz", raw / "imagesTs" / f"{case}_0000.nii.gz")
        shutil.move(label, raw / "labelsTs" / label.name)
    meta = json.loads((raw / "dataset.json").read_text())
    meta["numTraining"] = CASES - TEST_CASES
    (raw / "dataset.json").write_text(json.dumps(meta, indent=2))
    return raw


def preset(root: Path, context: int | None = None, anti_aliasing: bool | None = None) -> tuple[str, str]:
    """(name, --preset argument): the cpu preset, or, as a file, the cpu preset with the lesion
    stage's 2.5D context set to ``context`` slices per side and/or its ``anti_aliasing`` set."""
    overrides = {**({"context_slices_2d_liver_roi": context} if context is not None else {}),
                 **({"anti_aliasing": anti_aliasing} if anti_aliasing is not None else {})}
    if not overrides:
        return "cpu", "cpu"
    name = "cpu" + (f"_2d_liver_roi_context{context}" if context is not None else "") \
        + ("" if anti_aliasing is None else "_anti_aliasing" if anti_aliasing else "_no_anti_aliasing")
    return name, str(cpu_preset_with(root, name, **overrides))


def planned(root: Path, *configurations: str, context: int | None = None, anti_aliasing: bool | None = None) -> None:
    dataset(root)
    name, argument = preset(root, context, anti_aliasing)
    plans = root / "preprocessed" / DATASET / "plans.json"
    if not plans.is_file() or json.loads(plans.read_text())["preset"] != name:
        autoliver(root, "plan_and_preprocess", "-d", DATASET, "--preset", argument, "-c", *configurations)
    else:  # complete cases are skipped
        autoliver(root, "preprocess", "-d", DATASET, "-c", *configurations)


def train(root: Path, configuration: str, minutes: float, recipe: str = "", reuse: bool = False) -> float:
    """Train ``configuration`` on every training case for ``minutes`` (fold ``all``: no validation
    cases, so no full-case validation, as nnU-Net's rows skip theirs), with ``recipe`` when given
    (results in ``{configuration}__{recipe}``); returns the training minutes (the epochs' own
    seconds, from metrics.jsonl). ``reuse``: a model already trained there is kept."""
    fold = root / "results" / DATASET / (f"{configuration}__{recipe}" if recipe else configuration) / "fold_all"
    if reuse and (fold / "checkpoint_final.pt").is_file():
        print(f"reusing {fold.parent.name}, trained by an earlier row (AUTOLIVER_BENCH_REUSE_FIRST)")
    else:
        shutil.rmtree(fold, ignore_errors=True)
        autoliver(root, "train", configuration, "all", "-d", DATASET, "--minutes", f"{minutes:g}",
                  "--iters", str(ITERS), "--device", "cpu", "--no-validation", "--precision", PRECISION,
                  *(("--recipe", recipe) if recipe else ()))
    rows = [json.loads(line) for line in (fold / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return sum(r["epoch_seconds"] for r in rows) / 60


def predict(root: Path, out: Path, *args: str) -> float:
    shutil.rmtree(out, ignore_errors=True)
    return autoliver(root, "predict", "-i", str(root / "raw" / DATASET / "imagesTs"), "-o", str(out), "-d", DATASET,
                     "-f", "all", "--disable-tta", "--step-size", "0.5", "--postprocessing", "none", *args)


def score(root: Path, predictions: Path) -> dict:
    """``autoliver evaluate`` of a prediction folder against labelsTs, reduced to the table's columns."""
    out = predictions.with_suffix(".evaluation.json")
    autoliver(root, "evaluate", "-ref", str(root / "raw" / DATASET / "labelsTs"), "-pred", str(predictions),
              "-o", str(out))
    ev = json.loads(out.read_text())
    regions, detection = ev["regions"], ev["lesion_detection"]
    reference = [row for case in ev["cases"] for row in case["lesions"]["lesions"] if row["source"] == "reference"]

    def recall(lo, hi, rule="dice>0.2"):
        rows = [r for r in reference if lo <= r["diameter_mm"] < hi]
        return (float(np.mean([r["detected"][rule] for r in rows])) if rows else None), len(rows)

    bins = {name: recall(lo, hi) for name, lo, hi in SIZE_BINS}
    contrast = lesion_contrast(root, ev)
    return {
        "liver_dice": regions["liver"]["dice_per_case"], "tumour_dice_per_case": regions["tumour"]["dice_per_case"],
        "tumour_dice_global": regions["tumour"]["dice_global"],
        **{f"{k}_{rule}": detection[rule]["all"][k] for rule in ("dice>0.2", "iou>0.5") for k in ("recall", "precision")},
        "recall_by_size": {name: r for name, (r, _) in bins.items()},
        "lesions_by_size": {name: n for name, (_, n) in bins.items()},
        "recall_under_10mm": bins["< 10 mm"][0], "recall_10mm_and_up": recall(10.0, float("inf"))[0],
        "missed_10mm_and_up": [c for c in contrast if not c["detected"] and c["diameter_mm"] >= 10.0],
        "found_10mm_and_up": [c for c in contrast if c["detected"] and c["diameter_mm"] >= 10.0],
    }


def lesion_contrast(root: Path, ev: dict) -> list[dict]:
    """Every reference lesion's visibility: its mean HU minus that of the liver within 3 voxels
    around it, and the HU standard deviation of that liver ring (the noise it hides under), with
    its diameter and whether the prediction found it (Dice > 0.2) — what tells a lesion no reader
    would see from one the network should have found."""
    from scipy import ndimage

    from autoliver.io import read_image

    raw, rows = root / "raw" / DATASET, []
    for case in ev["cases"]:
        lesions = [r for r in case["lesions"]["lesions"] if r["source"] == "reference"]
        if not lesions:
            continue
        label = read_image(raw / "labelsTs" / f"{case['case']}.nii.gz").array
        image = read_image(raw / "imagesTs" / f"{case['case']}_0000.nii.gz").array.astype(np.float32)
        components, n = ndimage.label(label == 2, structure=np.ones((3, 3, 3)))
        centres = np.array(ndimage.center_of_mass(np.ones(label.shape), components, range(1, n + 1)))
        for r in lesions:  # the evaluation's lesion: the component nearest its centroid
            mask = components == 1 + int(np.argmin(((centres - np.array(r["centroid_zyx"])) ** 2).sum(1)))
            ring = ndimage.binary_dilation(mask, iterations=3) & (label == 1)
            rows.append({"case": case["case"], "diameter_mm": round(r["diameter_mm"], 1),
                         "contrast_hu": round(float(image[mask].mean() - image[ring].mean()), 1) if ring.any() else None,
                         "noise_hu": round(float(image[ring].std()), 1) if ring.any() else None,
                         "detected": bool(r["detected"]["dice>0.2"])})
    return rows


def save_row(root: Path, name: str, row: dict) -> None:
    path = root / "accuracy.json"
    rows = json.loads(path.read_text()) if path.is_file() else {}
    rows[name] = row
    path.write_text(json.dumps(rows, indent=2))
    print("\n" + table(rows))
    for kind in ("missed", "found"):
        print(f"{name}: lesions >= 10 mm {kind} (diameter mm, contrast to the liver around it HU, that liver's "
              "noise HU): " + ", ".join(f"{c['diameter_mm']:g}/{c['contrast_hu']}/{c['noise_hu']}"
                                       for c in row.get(f"{kind}_10mm_and_up", [])))


def table(rows: dict) -> str:
    head = ("| row | training min | liver Dice | tumour Dice per case / global | lesion recall / precision "
            "(Dice > 0.2) | recall / precision (IoU > 0.5) | recall < 10 mm | 10-20 mm | > 20 mm |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def f(v):
        return "–" if v is None else f"{v:.3f}"

    for name, r in rows.items():
        by = r["recall_by_size"]
        n = r["lesions_by_size"]
        lines.append(f"| {name}: {r['what']} | {r['train_minutes']:.1f} | {f(r['liver_dice'])} | "
                     f"{f(r['tumour_dice_per_case'])} / {f(r['tumour_dice_global'])} | "
                     f"{f(r['recall_dice>0.2'])} / {f(r['precision_dice>0.2'])} | "
                     f"{f(r['recall_iou>0.5'])} / {f(r['precision_iou>0.5'])} | "
                     + " | ".join(f"{f(by[k])} ({n[k]})" for k, _, _ in SIZE_BINS) + " |")
    return "\n".join(lines)


def run_row(benchmark, root: Path, name: str, make, key: str | None = None) -> dict:
    """Run row ``name`` (when AUTOLIVER_BENCH_ROWS wants it) and save it in accuracy.json as ``key`` (default: name)."""
    if name not in ROWS:
        pytest.skip(f"row {name} not in AUTOLIVER_BENCH_ROWS")
    rows = []
    benchmark.pedantic(lambda: rows.append(make()), rounds=1, iterations=1)
    row = rows[-1]
    save_row(root, key or name, row)
    benchmark.extra_info.update({k: v for k, v in row.items() if isinstance(v, (int, float, str))})
    return row


def test_cascade(benchmark, root):
    key = "cascade" if ROI == "2d_liver_roi" and CONTEXT is None else \
        f"cascade_{ROI}" + (f"_context{CONTEXT}" if CONTEXT is not None else "")
    key += (f"_{RECIPE}" if RECIPE else "") + (f"_{PRECISION}" if PRECISION != "fp32" else "")
    key += "" if ANTI_ALIASING is None else "_anti_aliasing" if ANTI_ALIASING else "_no_anti_aliasing"
    key += f"_{TAG}" if TAG else ""

    def make():
        planned(root, "3d_fullres", ROI, context=CONTEXT, anti_aliasing=ANTI_ALIASING)
        first = train(root, "3d_fullres", MINUTES / 3, reuse=REUSE_FIRST)
        second = train(root, ROI, MINUTES * 2 / 3, RECIPE)
        pred = root / "predictions" / key
        seconds = predict(root, pred, "-c", f"{ROI}__{RECIPE}" if RECIPE else ROI)
        plan = json.loads((root / "preprocessed" / DATASET / "plans.json").read_text())["configurations"]
        c1, c2 = plan["3d_fullres"], plan[ROI]
        return {"what": (f"3d_fullres {'×'.join(f'{s:.2g}' for s in c1['spacing_zyx_mm'])} mm → {ROI} "
                         f"{'×'.join(f'{s:.2g}' for s in c2['spacing_zyx_mm'])} mm, patch {c2['patch_size']}, "
                         f"batch {c2['batch_size']}, recipe {RECIPE or c2['recipe'] or 'default'}"
                         + (f", {c2['context_slices']} context slices each side" if c2.get("context_slices") else "")
                         + (f", trained in {PRECISION}" if PRECISION != "fp32" else "")
                         + (", images anti-aliased" if c2["resampling"].get("anti_aliasing") else "")),
                "train_minutes": first + second, "predict_seconds_per_case": seconds / TEST_CASES,
                **score(root, pred)}

    row = run_row(benchmark, root, "cascade", make, key)
    missed = {k: (row[k], t) for k, t in TARGETS.items() if row[k] is None or row[k] < t}
    assert not missed, f"targets missed (value, target): {missed}"


def test_before(benchmark, root):
    def make():
        planned(root, "3d_fullres")
        minutes = train(root, "3d_fullres", MINUTES)
        pred = root / "predictions" / "before"
        seconds = predict(root, pred, "-c", "3d_fullres")
        return {"what": "3d_fullres alone (cpu preset), autoliver before the lesion stage",
                "train_minutes": minutes, "predict_seconds_per_case": seconds / TEST_CASES, **score(root, pred)}

    run_row(benchmark, root, "before", make)


def nnunet_row(root: Path, variant: str) -> dict:
    from _nnunet_accuracy import nnunet_predictions

    raw = dataset(root)
    pred = root / "predictions" / f"nnunet_{variant}"
    kwargs = {}
    if variant == "autoliver_plan":
        planned(root, "3d_fullres")
        kwargs = {"autoliver_plans": root / "preprocessed" / DATASET / "plans.json",
                  "autoliver_configuration": "3d_fullres"}
    info = nnunet_predictions(NNUNET_PYTHON, raw, root / "nnunet" / variant, variant, MINUTES, pred,
                              mirror=False, step_size=NNUNET_STEP, **kwargs)
    return {"what": f"nnU-Net v2 {variant.replace('_', ' ')}: {info.get('plan', '')}, {info['epochs']} epochs × "
                    f"{info['iterations_per_epoch']} iterations, sliding-window step {NNUNET_STEP}",
            "train_minutes": info["train_seconds"] / 60, **score(root, pred)}


@pytest.mark.skipif(not NNUNET_PYTHON, reason="set AUTOLIVER_NNUNET_PYTHON to a Python with nnU-Net v2 (ANCHORS.md)")
@pytest.mark.parametrize("variant", ["default", "autoliver_plan"])
def test_nnunet(benchmark, root, variant):
    sys.path.insert(0, str(Path(__file__).parent))
    run_row(benchmark, root, f"nnunet_{variant}", lambda: nnunet_row(root, variant))


def test_cascade_at_least_equals_nnunet(root):
    path = root / "accuracy.json"
    rows = json.loads(path.read_text()) if path.is_file() else {}
    if "cascade" not in rows or not any(k.startswith("nnunet") for k in rows):
        pytest.skip("needs the cascade row and an nnU-Net row in accuracy.json")
    worse = {f"{k} vs {name}": (rows["cascade"][k], r[k]) for name, r in rows.items() if name.startswith("nnunet")
             for k in TARGETS if r[k] is not None and (rows["cascade"][k] or 0) < r[k]}
    assert not worse, f"autoliver below nnU-Net v2 (autoliver, nnU-Net): {worse}"
