"""Preprocessing speed and memory: autoliver against nnU-Net v2 on the same cases and configuration.

    python -m pytest benchmarks/bench_preprocessing.py --benchmark-only -s
    python benchmarks/bench_preprocessing.py compare --cases 4 -np 2     # the same, as a script
    python benchmarks/bench_preprocessing.py large -np 2                 # 512x512x900 CT, peak memory

``compare``: synthetic abdominal CTs (air -1000, body 40, liver 60, tumours 20, bone 700 HU, noise
sigma 20, int16; 512 x 512 in-plane, spacings that differ from case to case as in real data) in
nnU-Net v2's raw layout. nnU-Net fingerprints and plans them (not timed); autoliver gets a plan with
nnU-Net's 3d_fullres target spacing, CT normalisation statistics and interpolation orders (images
cubic, labels linear one-hot). Then both preprocess the same cases with the same number of worker
processes, each timed as its user would run it (``nnUNetv2_preprocess`` and ``autoliver preprocess``),
while a sampler records the memory of the whole process tree (sum of RSS, which counts shared
library pages once per process, and sum of PSS, which does not).

nnU-Net must live in its own throw-away environment, never in autoliver's: set ``NNUNET_PYTHON``
to its interpreter (default: ``$TMPDIR/nnunet_venv/bin/python``); without it only autoliver runs.

``large``: two 512 x 512 x 900 CTs at 0.7 mm, preprocessed to LiTS's 3d_fullres spacing
(1.0, 0.77, 0.77) mm with ``-np 2``, so two workers each hold one such case at the same time.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = Path(os.environ.get("AUTOLIVER_BENCH_DIR", Path(tempfile.gettempdir()) / "autoliver_bench"))
NNUNET_PYTHON = Path(os.environ.get("NNUNET_PYTHON", Path(tempfile.gettempdir()) / "nnunet_venv" / "bin" / "python"))
LABELS = {"background": 0, "liver": 1, "tumour": 2}
# Case spacings (z, y, x) mm of the comparison: thin and thick slices, different in-plane sizes.
COMPARE_SPACINGS = [(1.0, 0.70, 0.70), (1.5, 0.78, 0.78), (2.5, 0.66, 0.66), (5.0, 0.86, 0.86),
                    (2.0, 0.74, 0.74), (1.25, 0.80, 0.80)]
EXTENT_Z_MM = 200.0


# ----------------------------------------------------------------------------------------------
# Synthetic CTs
# ----------------------------------------------------------------------------------------------

def synthetic_ct(shape_zyx, spacing_zyx, seed=0):
    """An abdominal CT phantom built slice by slice (bounded memory): int16 HU and uint8 labels."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape_zyx
    sz, sy, sx = spacing_zyx
    y = (np.arange(ny) - ny / 2) * sy
    x = (np.arange(nx) - nx / 2) * sx
    Y, X = np.meshgrid(y, x, indexing="ij")
    img = np.empty(shape_zyx, np.int16)
    seg = np.zeros(shape_zyx, np.uint8)
    zc = nz * sz / 2
    tumours = [(rng.uniform(-30, 30), rng.uniform(-40, 10), rng.uniform(-110, -50), rng.uniform(6, 22))
               for _ in range(3)]
    body = (Y / 120) ** 2 + (X / 165) ** 2 < 1
    spine = ((Y - 75) / 18) ** 2 + (X / 18) ** 2 < 1
    for k in range(nz):
        z = k * sz - zc
        s = np.full((ny, nx), -1000.0, np.float32)
        s[body] = 40
        s[spine] = 700
        r2 = 1 - (z / 90) ** 2
        if r2 > 0:
            liver = ((Y + 10) / (75 * np.sqrt(r2))) ** 2 + ((X + 80) / (85 * np.sqrt(r2))) ** 2 < 1
            s[liver] = 60
            seg[k][liver] = 1
            for tz, ty, tx, tr in tumours:
                t = (z - tz) ** 2 + (Y - ty) ** 2 + (X - tx) ** 2 < tr ** 2
                t &= liver
                s[t] = 20
                seg[k][t] = 2
        s += rng.normal(0, 20, (ny, nx)).astype(np.float32)
        img[k] = np.round(s).astype(np.int16)
    return img, seg


def write_raw_dataset(folder: Path, cases: list[tuple[tuple[int, int, int], tuple[float, float, float]]]) -> Path:
    """An nnU-Net v2 raw dataset (read by both tools); kept between runs (writing is slow)."""
    import SimpleITK as sitk

    marker = folder / "dataset.json"
    if marker.is_file():
        return folder
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i, (shape, spacing) in enumerate(cases):
        img, seg = synthetic_ct(shape, spacing, seed=i)
        for arr, path in ((img, folder / "imagesTr" / f"case_{i:03d}_0000.nii.gz"),
                          (seg, folder / "labelsTr" / f"case_{i:03d}.nii.gz")):
            im = sitk.GetImageFromArray(arr)
            im.SetSpacing(tuple(float(s) for s in reversed(spacing)))
            sitk.WriteImage(im, str(path), useCompression=True)
        del img, seg
    marker.write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": len(cases),
                                  "file_ending": ".nii.gz"}, indent=2))
    return folder


# ----------------------------------------------------------------------------------------------
# Measuring a process tree
# ----------------------------------------------------------------------------------------------

def _tree(root: int) -> list[int]:
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += [c for c, pp in parents.items() if pp == p]
    return out


def _memory_kb(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def run_measured(cmd: list[str], env: dict, log: Path) -> dict:
    """Run ``cmd``; wall seconds and the peak of the process tree's summed RSS and PSS (GB)."""
    peak = {"rss": 0, "pss": 0}
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample():
            while not done.is_set():
                rss = pss = 0
                for p in _tree(proc.pid):
                    r, s = _memory_kb(p)
                    rss, pss = rss + r, pss + s
                peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rc = proc.wait()
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {rc}); see {log}")
    return {"seconds": wall, "peak_rss_gb": peak["rss"] / 2**20, "peak_pss_gb": peak["pss"] / 2**20}


# ----------------------------------------------------------------------------------------------
# The two tools
# ----------------------------------------------------------------------------------------------

def _plan(spacing, norm_stats, name: str):
    from autoliver.planning.plan import (ChannelNormalization, Configuration, Denoise, NetworkSpec, Plan,
                                         Resampling)

    net = NetworkSpec("unet", 3, 1, 3, (32, 64), ((3, 3, 3), (3, 3, 3)), ((1, 1, 1), (2, 2, 2)))
    cfg = Configuration(name="3d_fullres", data_identifier="autoliverPlans_3d_fullres",
                        spacing_zyx_mm=tuple(float(s) for s in spacing), median_shape_zyx=(128, 128, 128),
                        patch_size=(128, 128, 128), batch_size=2,
                        normalization=(ChannelNormalization("ct", *norm_stats),),
                        resampling=Resampling(order_image=3, order_label=1, separate_z=False),
                        denoise=Denoise(), network=net)
    return Plan(schema_version=1, dataset_name=name, preset="benchmark", modality="CT", channel_names=("CT",),
                labels=dict(LABELS), num_phases=1, device="cpu", memory_budget_bytes=8 * 2**30,
                configurations={"3d_fullres": cfg})


def run_autoliver(raw: Path, name: str, plan, num_processes: int, out: Path) -> dict:
    from autoliver.planning.plan import write_plan

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    plan_path = out / "plan.json"
    write_plan(plan_path, plan)
    env = {**os.environ, "AUTOLIVER_RAW": str(raw), "AUTOLIVER_PREPROCESSED": str(out / "preprocessed")}
    cmd = [sys.executable, "-m", "autoliver", "preprocess", "-d", name, "-c", "3d_fullres",
           "-np", str(num_processes), "--plan", str(plan_path), "--no-progress"]
    return run_measured(cmd, env, out / "autoliver.log")


def _nnunet_env(raw: Path, out: Path, threads: int = 1) -> dict:
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(out / "preprocessed"),
           "nnUNet_results": str(out / "results"), "OMP_NUM_THREADS": str(threads)}
    env.pop("PYTHONPATH", None)
    return env


def _nnunet(tool: str) -> list[str]:
    """An nnU-Net v2 console script of the throw-away environment (next to its interpreter)."""
    return [str(NNUNET_PYTHON.parent / f"nnUNetv2_{tool}")]


def nnunet_plan(raw: Path, dataset_id: int, out: Path) -> tuple[tuple, tuple, dict]:
    """nnU-Net's own fingerprint and plan (not timed): its 3d_fullres spacing and CT statistics."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = _nnunet_env(raw, out)
    for step, args in (("extract_fingerprint", ["-d", str(dataset_id), "-np", "2"]),
                       ("plan_experiment", ["-d", str(dataset_id)])):
        subprocess.run(_nnunet(step) + args, env=env, check=True, stdout=subprocess.DEVNULL)
    name = next(p.name for p in (out / "preprocessed").iterdir() if p.name.startswith(f"Dataset{dataset_id:03d}"))
    plans = json.loads((out / "preprocessed" / name / "nnUNetPlans.json").read_text())
    if plans["transpose_forward"] != [0, 1, 2]:
        raise RuntimeError(f"nnU-Net transposed the axes ({plans['transpose_forward']}); the comparison assumes none")
    stats = plans["foreground_intensity_properties_per_channel"]["0"]
    norm = (stats["percentile_00_5"], stats["percentile_99_5"], stats["mean"], stats["std"])
    return tuple(plans["configurations"]["3d_fullres"]["spacing"]), norm, plans


def run_nnunet(raw: Path, dataset_id: int, num_processes: int, out: Path) -> dict:
    env = _nnunet_env(raw, out)
    name = next(p.name for p in (out / "preprocessed").iterdir() if p.name.startswith(f"Dataset{dataset_id:03d}"))
    shutil.rmtree(out / "preprocessed" / name / "nnUNetPlans_3d_fullres", ignore_errors=True)
    cmd = _nnunet("preprocess") + ["-d", str(dataset_id), "-c", "3d_fullres", "-np", str(num_processes)]
    return run_measured(cmd, env, out / "nnunet.log")


# ----------------------------------------------------------------------------------------------
# The two measurements
# ----------------------------------------------------------------------------------------------

def compare(num_cases: int = 4, num_processes: int = 2) -> dict:
    dataset_id = 901
    name = f"Dataset{dataset_id:03d}_BenchCT{num_cases}"
    raw = WORK / "raw"
    cases = [(((int(round(EXTENT_Z_MM / sp[0]))), 512, 512), sp) for sp in COMPARE_SPACINGS[:num_cases]]
    # nnU-Net resolves datasets by id: keep one dataset of this id in the raw folder.
    for old in raw.glob(f"Dataset{dataset_id:03d}_*") if raw.is_dir() else []:
        if old.name != name:
            shutil.rmtree(old)
    write_raw_dataset(raw / name, cases)
    result = {"cases": num_cases, "workers": num_processes,
              "shapes_zyx": [c[0] for c in cases], "spacings_zyx_mm": [c[1] for c in cases]}
    if NNUNET_PYTHON.is_file():
        spacing, norm, _ = nnunet_plan(raw, dataset_id, WORK / "nnunet")
        result["nnunet"] = run_nnunet(raw, dataset_id, num_processes, WORK / "nnunet")
    else:  # the same settings nnU-Net's planner picks here: median spacing, foreground statistics
        spacing = tuple(float(np.median([c[1][a] for c in cases])) for a in range(3))
        norm = (-985.0, 705.0, 58.0, 160.0)
        result["nnunet"] = None
    result["target_spacing_zyx_mm"] = list(spacing)
    result["autoliver"] = run_autoliver(raw, name, _plan(spacing, norm, name), num_processes, WORK / "autoliver")
    for tool in ("autoliver", "nnunet"):
        if result[tool]:
            result[tool]["seconds_per_case"] = result[tool]["seconds"] / num_cases
    if result["nnunet"]:
        result["speedup"] = result["nnunet"]["seconds"] / result["autoliver"]["seconds"]
    return result


def large(num_processes: int = 2, num_cases: int = 2) -> dict:
    name = "Dataset902_LargeCT"
    raw = WORK / "raw"
    write_raw_dataset(raw / name, [((900, 512, 512), (0.7, 0.7, 0.7))] * num_cases)
    plan = _plan((1.0, 0.767578125, 0.767578125), (-985.0, 705.0, 58.0, 160.0), name)
    result = run_autoliver(raw, name, plan, num_processes, WORK / "autoliver_large")
    result.update(cases=num_cases, workers=num_processes, seconds_per_case=result["seconds"] / num_cases)
    return result


def _table(r: dict) -> str:
    rows = ["| tool | s per case | peak RSS (sum, GB) | peak PSS (sum, GB) |", "|---|---|---|---|"]
    for tool in ("autoliver", "nnunet"):
        m = r.get(tool)
        if m:
            rows.append(f"| {tool} | {m['seconds_per_case']:.2f} | {m['peak_rss_gb']:.2f} | {m['peak_pss_gb']:.2f} |")
    return "\n".join(rows)


# ----------------------------------------------------------------------------------------------
# pytest-benchmark entry points
# ----------------------------------------------------------------------------------------------

def test_preprocessing_vs_nnunet(benchmark):
    result = benchmark.pedantic(compare, kwargs={"num_cases": 4, "num_processes": 2}, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print("\n" + json.dumps(result, indent=1) + "\n" + _table(result))


def test_large_ct_peak_memory(benchmark):
    result = benchmark.pedantic(large, kwargs={"num_processes": 2}, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print("\n" + json.dumps(result, indent=1))
    assert result["peak_rss_gb"] < 8.0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("compare", "large"))
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("-np", "--num-processes", type=int, default=2)
    a = ap.parse_args()
    if a.what == "compare":
        res = compare(a.cases, a.num_processes)
        print(json.dumps(res, indent=1))
        print(_table(res))
    else:
        print(json.dumps(large(a.num_processes), indent=1))
