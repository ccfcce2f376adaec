"""Seconds and peak memory of ``autoliver predict`` on a 512×512×200 CT with the CPU plan, normal
and ``--fast``; and the peak memory of a 512×512×1000 CT (must stay within 8 GB).

    python -m pytest benchmarks/bench_predict.py --benchmark-only -s

The scan is the fixed synthetic CT of ``_synthetic_ct.py`` (200×512×512 at 2.5×0.78×0.78 mm). The
plan comes from the planner's ``cpu`` preset fitted to that data (two copies of the scan form a
tiny raw dataset) for the target machine's budget (24 GiB, the planner's reference CPU speed), so
it does not change with the load of the machine running the benchmark; the networks are untrained (speed and memory do not depend on the weights):
five folds of 3d_fullres for the normal mode, one fold of 3d_lowres (when the plan has it) for
``--fast``. Each prediction runs in its own process, started through the real CLI, so the peak
resident memory (VmHWM) is that of one ``autoliver predict`` and nothing else.

Set AUTOLIVER_BENCH_THREADS to change the torch threads (default 2, the machine this targets).

With AUTOLIVER_NNUNET_PYTHON (a Python with nnU-Net v2, see ANCHORS.md) two more rows run one
nnU-Net v2 model folder with the same network, fold and settings: nnU-Net's own predictor, and
autoliver's (``predict -m`` on that folder; needs ``autoliver[nnunet]`` in this Python).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _synthetic_ct import SHAPE_ZYX, SPACING_ZYX_MM, synthetic_ct  # noqa: E402

THREADS = os.environ.get("AUTOLIVER_BENCH_THREADS", "2")
DATASET = "Dataset950_BenchCT"
RUNNER = r"""
import resource, sys, time
from autoliver.cli import main
t = time.perf_counter()
code = main(sys.argv[1:])
seconds = time.perf_counter() - t
usage = resource.getrusage(resource.RUSAGE_SELF)
cpu = usage.ru_utime + usage.ru_stime
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child of a big pytest
# process would report the parent's size; VmHWM belongs to this process's own memory map.
status = open("/proc/self/status").read().split("VmHWM:")[1].split()
peak = int(status[0]) * 1024
print(f"BENCH seconds={seconds:.3f} cpu_seconds={cpu:.3f} peak_bytes={peak} code={code}", file=sys.stderr)
"""


def _geometry(shape):
    from autoliver.io.images import Geometry

    return Geometry(spacing=tuple(reversed(SPACING_ZYX_MM)), origin=(0.0, 0.0, 0.0),
                    direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), shape_zyx=tuple(shape))


def _write_scan(path: Path, shape) -> Path:
    from autoliver.io.images import write_image

    if not path.is_file():
        ct, liver = synthetic_ct(tuple(shape))
        write_image(path, np.asarray(ct), _geometry(shape), compress=False)
    return path


def _save_untrained(model: Path, plan, folds: dict[str, int]) -> None:
    from autoliver.planning.plan import write_plan
    from autoliver.schema import to_jsonable
    from autoliver.training.checkpoint import save_checkpoint
    from autoliver.training.networks import build_network
    from autoliver.training.recipes import DEFAULT, recipe_to_dict

    for name, n in folds.items():
        if name not in plan.configurations:
            continue
        write_plan(model / name / "plans.json", plan)
        net = build_network(plan.configurations[name].network)
        for f in range(n):
            save_checkpoint(model / name / f"fold_{f}" / "checkpoint_final.pt",
                            {"network": net.state_dict(), "plan": to_jsonable(plan), "configuration": name,
                             "recipe": recipe_to_dict(DEFAULT), "fold": str(f), "epoch": 0, "epochs": 0})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Raw dataset → fingerprint → CPU plan → untrained model folder; and the scans to predict."""
    pytest.importorskip("autoliver.planning.api", reason="the planner is needed for the CPU plan")
    from autoliver.datasets.dataset import parse_dataset_json
    from autoliver.fingerprint.api import extract_fingerprint
    from autoliver.io.images import write_image
    from autoliver.planning.budget import DEFAULT_CPU_SPEED, Budget
    from autoliver.planning.planner import plan_experiment
    from autoliver.planning.presets import load_preset

    root = tmp_path_factory.mktemp("bench_predict")
    raw = root / "raw" / DATASET
    ct, liver = synthetic_ct(SHAPE_ZYX)
    for case in ("a", "b"):
        write_image(raw / "imagesTr" / f"{case}_0000.nii.gz", np.asarray(ct), _geometry(SHAPE_ZYX))
        write_image(raw / "labelsTr" / f"{case}.nii.gz", np.asarray(liver).astype(np.uint8), _geometry(SHAPE_ZYX))
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {
        "background": 0, "liver": 1, "tumour": 2}, "numTraining": 2, "file_ending": ".nii.gz"}))
    preprocessed = root / "preprocessed"
    fingerprint = extract_fingerprint(parse_dataset_json(raw), preprocessed)
    # The target machine (2 cores AVX-512, 24 GiB), not this one's current load: planning measures
    # CPU speed, and a busy shared machine would plan smaller patches from run to run.
    budget = Budget("cpu", 24 * 2 ** 30, DEFAULT_CPU_SPEED)
    plan = plan_experiment(fingerprint, load_preset("cpu"), budget)
    model = root / "model"
    _save_untrained(model, plan, {"3d_fullres": 5, "3d_lowres": 1})
    # For the 1000-slice memory test: the same plan and grid, a network with 1/8 of the features.
    # Peak memory is the volumes' (input, logits, output), not the network's, and the small network
    # keeps that test to minutes on 2 cores.
    full = plan.configurations["3d_fullres"]
    slim_net = dataclasses.replace(full.network, features_per_stage=tuple(max(2, f // 8)
                                                                          for f in full.network.features_per_stage))
    slim = dataclasses.replace(plan, configurations={"3d_fullres": dataclasses.replace(full, network=slim_net)})
    _save_untrained(root / "model_slim", slim, {"3d_fullres": 1})
    scans = root / "scans"
    scans.mkdir()
    _write_scan(scans / "ct200_0000.nii.gz", SHAPE_ZYX)
    described = {n: {"spacing": c.spacing_zyx_mm, "patch": c.patch_size, "features": c.network.features_per_stage}
                 for n, c in plan.configurations.items()}
    print(f"\nCPU plan: {json.dumps(described)}")
    return {"root": root, "model": model, "scans": scans, "plan": plan}


def _tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def _run_measured(cmd: list[str], env: dict) -> dict:
    """Wall seconds and the peak resident memory of the whole process tree (sampled every 0.1 s;
    a worker pool's processes count together)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss_bytes(proc.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return {"wall": seconds, "tree_peak_gib": peak[0] / 2 ** 30, "stderr": stderr}


def _predict(args: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": THREADS, "AUTOLIVER_NO_PROGRESS": "1"}
    r = _run_measured([sys.executable, "-c", RUNNER, "predict", *args, "--num-threads", THREADS, "--no-progress"], env)
    line = next((l for l in r["stderr"].splitlines() if l.startswith("BENCH ")), None)
    if line is None or "code=0" not in line:
        raise RuntimeError(f"predict failed:\n{r['stderr'][-3000:]}")
    fields = dict(kv.split("=") for kv in line.split()[1:])
    return {"seconds": float(fields["seconds"]), "cpu_seconds": float(fields["cpu_seconds"]),
            "peak_gib": int(fields["peak_bytes"]) / 2 ** 30, "tree_peak_gib": r["tree_peak_gib"],
            "process_wall": r["wall"]}


def _run_mode(benchmark, workspace, extra: list[str], tag: str):
    out = workspace["root"] / f"out_{tag}"
    results = []

    def once():
        for p in out.glob("*"):
            p.unlink()
        results.append(_predict(["-i", str(workspace["scans"]), "-o", str(out), "-m", str(workspace["model"]), *extra]))

    benchmark.pedantic(once, rounds=1, iterations=1)
    r = results[-1]
    benchmark.extra_info.update({"peak_rss_gib": round(r["peak_gib"], 2), "seconds_in_process": round(r["seconds"], 1),
                                 "cpu_seconds": round(r["cpu_seconds"], 1), "tree_peak_rss_gib": round(r["tree_peak_gib"], 2)})
    print(f"\n{tag}: {r['seconds']:.1f} s wall ({r['process_wall']:.1f} s with interpreter start and imports), "
          f"{r['cpu_seconds']:.1f} s CPU, peak RSS {r['peak_gib']:.2f} GiB ({THREADS} threads)")
    assert (out / "ct200.nii.gz").is_file()
    return r


def test_predict_512x512x200_fast(benchmark, workspace):
    """--fast: one fold, no TTA, step 0.9, 3d_lowres when the plan has it (target: < 60 s)."""
    _run_mode(benchmark, workspace, ["-c", "3d_fullres", "--fast"], "fast")


def test_predict_512x512x200_one_fullres_pass(benchmark, workspace):
    """One network pass of 3d_fullres (one fold, no mirroring, step 0.5). The normal mode is 5 folds
    × 8 mirrorings = 40 such passes (plus one preprocessing and one export)."""
    r = _run_mode(benchmark, workspace, ["-c", "3d_fullres", "-f", "0", "--disable-tta"], "one_pass")
    print(f"normal mode ≈ 40 passes: about {40 * r['seconds'] / 60:.0f} min on this machine")


@pytest.mark.skipif(os.environ.get("AUTOLIVER_BENCH_FULL") != "1",
                    reason="5 folds x 8 mirrorings of a full-resolution 3D network takes hours on 2 CPU cores; "
                           "set AUTOLIVER_BENCH_FULL=1 to run it")
def test_predict_512x512x200_normal(benchmark, workspace):
    """nnU-Net's defaults: 5 folds of 3d_fullres, mirroring TTA, step 0.5."""
    _run_mode(benchmark, workspace, ["-c", "3d_fullres"], "normal")


def test_peak_memory_512x512x1000(benchmark, workspace):
    """A 1000-slice CT must predict within 8 GB of resident memory: full-resolution grid, one fold,
    no TTA, step 1 (the network is the slim one and the tiles do not overlap: memory is the
    volumes', and neither changes it)."""
    scans = workspace["root"] / "scans_1000"
    scans.mkdir(exist_ok=True)
    _write_scan(scans / "ct1000_0000.nii.gz", (1000, 512, 512))
    out = workspace["root"] / "out_1000"
    results = []
    benchmark.pedantic(lambda: results.append(_predict(["-i", str(scans), "-o", str(out), "-m",
                                                        str(workspace["root"] / "model_slim"), "-c", "3d_fullres",
                                                        "-f", "0", "--disable-tta", "--step-size", "1"])),
                       rounds=1, iterations=1)
    r = results[-1]
    benchmark.extra_info.update({"peak_rss_gib": round(r["peak_gib"], 2), "cpu_seconds": round(r["cpu_seconds"], 1)})
    print(f"\n512x512x1000: {r['seconds']:.1f} s wall, {r['cpu_seconds']:.1f} s CPU, peak RSS {r['peak_gib']:.2f} GiB")
    assert r["peak_gib"] < 8.0


NNUNET_PYTHON = os.environ.get("AUTOLIVER_NNUNET_PYTHON")
needs_nnunet = pytest.mark.skipif(not NNUNET_PYTHON, reason="set AUTOLIVER_NNUNET_PYTHON to a Python with nnU-Net v2 "
                                  "installed (see ANCHORS.md) to compare with its predictor")
# The same settings on both sides: one fold, no mirroring, step 0.9 (what --fast runs).
SAME_SETTINGS = {"nnunet": ["-f", "0", "-step_size", "0.9", "--disable_tta"],
                 "autoliver": ["-f", "0", "--step-size", "0.9", "--disable-tta"]}


@pytest.fixture(scope="module")
def nnunet_model(workspace):
    """An nnU-Net v2 model folder whose network equals the plan's (PlainConvUNet, the plan's
    stages/kernels/strides, random weights), for the configuration ``--fast`` picks (3d_lowres
    when the plan has it); built by nnU-Net's Python (see _nnunet_model.py)."""
    plan = workspace["plan"]
    configuration = "3d_lowres" if "3d_lowres" in plan.configurations else "3d_fullres"
    root = workspace["root"]
    model = root / f"nnunet_{configuration}"
    if not model.is_dir():
        plans_json = root / "model" / configuration / "plans.json"
        subprocess.run([NNUNET_PYTHON, str(HERE / "_nnunet_model.py"), str(plans_json), configuration, str(model),
                        "0"], check=True)
    return configuration, model


@needs_nnunet
def test_nnunet_v2_predictor_same_network(benchmark, workspace, nnunet_model):
    """nnU-Net v2's predictor on the same scan with an equal network, as ``--fast`` runs it: the
    configuration ``--fast`` picks, one fold, no mirroring, step 0.9."""
    configuration, model = nnunet_model
    root = workspace["root"]
    out = root / f"out_nnunet_{configuration}"
    env = {**os.environ, "OMP_NUM_THREADS": THREADS, "nnUNet_raw": str(root), "nnUNet_preprocessed": str(root),
           "nnUNet_results": str(root)}
    cmd = [NNUNET_PYTHON, "-c", "import sys, torch; torch.set_num_threads(int(sys.argv[1])); "
           "from nnunetv2.inference.predict_from_raw_data import predict_entry_point_modelfolder as m; "
           "sys.argv = ['nnUNetv2_predict_from_modelfolder'] + sys.argv[2:]; m()", THREADS,
           "-i", str(workspace["scans"]), "-o", str(out), "-m", str(model), *SAME_SETTINGS["nnunet"],
           "-device", "cpu", "-npp", "1", "-nps", "1", "--disable_progress_bar"]
    results = []
    benchmark.pedantic(lambda: results.append(_run_measured(cmd, env)), rounds=1, iterations=1)
    r = results[-1]
    benchmark.extra_info.update({"tree_peak_rss_gib": round(r["tree_peak_gib"], 2)})
    print(f"\nnnU-Net v2 {configuration}, 1 fold, no TTA, step 0.9: {r['wall']:.1f} s wall, "
          f"peak RSS of its processes {r['tree_peak_gib']:.2f} GiB")
    assert (out / "ct200.nii.gz").is_file()


@needs_nnunet
@pytest.mark.skipif(importlib.util.find_spec("dynamic_network_architectures") is None,
                    reason="autoliver needs dynamic-network-architectures to run nnU-Net models: "
                           'pip install "autoliver[nnunet]"')
def test_autoliver_runs_the_nnunet_model(benchmark, workspace, nnunet_model):
    """autoliver's predictor on the same nnU-Net model folder (``predict -m``: nnU-Net's
    preprocessing and export, autoliver's sliding window), same settings as the row above."""
    configuration, model = nnunet_model
    out = workspace["root"] / f"out_autoliver_nnunet_{configuration}"
    results = []

    def once():
        for p in out.glob("*"):
            p.unlink()
        results.append(_predict(["-i", str(workspace["scans"]), "-o", str(out), "-m", str(model),
                                 *SAME_SETTINGS["autoliver"]]))

    benchmark.pedantic(once, rounds=1, iterations=1)
    r = results[-1]
    benchmark.extra_info.update({"peak_rss_gib": round(r["peak_gib"], 2), "tree_peak_rss_gib": round(r["tree_peak_gib"], 2)})
    print(f"\nautoliver on nnU-Net's {configuration} folder, 1 fold, no TTA, step 0.9: {r['seconds']:.1f} s wall "
          f"({r['process_wall']:.1f} s with interpreter start and imports), peak RSS {r['peak_gib']:.2f} GiB")
    assert (out / "ct200.nii.gz").is_file()
