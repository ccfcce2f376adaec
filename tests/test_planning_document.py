"""plans.json as a document: round trip, strict reading, golden plans, the CLI table."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from autoliver.errors import UserError
from autoliver.fingerprint.fingerprint import IntensityStats, fingerprint_from_geometry
from autoliver.planning.budget import Budget
from autoliver.planning.memory import CpuSpeed
from autoliver.planning.plan import plan_to_text, read_plan, write_plan
from autoliver.planning.planner import plan_experiment
from autoliver.planning.presets import load_preset
from autoliver.planning.report import plan_table

GOLDEN = Path(__file__).parent / "golden"
# Fixed machine numbers so the golden CPU plan does not depend on where the test runs.
SPEED = CpuSpeed(conv_flops_per_s=1.5e11, elementwise_bytes_per_s=5e9)


def ct_fingerprint():
    shapes = [(90 + 7 * i, 300 + 4 * i, 320 - 3 * i) for i in range(8)]
    spacings = [(2.5 if i % 3 else 1.25, 0.7 + 0.02 * i, 0.7 + 0.02 * i) for i in range(8)]
    return fingerprint_from_geometry("Dataset007_Golden", shapes, spacings, noise_sigma=35.0,
                                     intensity=IntensityStats(98.0, 100.0, 41.0, -990.0, 1400.0, -15.0, 205.0, 10000))


def ct_lesion_fingerprint():
    """The golden CT dataset with what the lesion stage is planned from: each case's liver box
    (about a third of the body crop's extent in-plane, 60 % of its slices) and small tumours."""
    shapes = [(90 + 7 * i, 300 + 4 * i, 320 - 3 * i) for i in range(8)]
    spacings = [(2.5 if i % 3 else 1.25, 0.7 + 0.02 * i, 0.7 + 0.02 * i) for i in range(8)]
    boxes = [((10 + i, 10 + i + int(0.6 * z)), (60, 60 + y // 2), (40, 40 + x // 2)) for i, (z, y, x) in enumerate(shapes)]
    tumours = [(22.0, 8.0, 6.5) if i % 2 else (35.0, 12.0) for i in range(8)]
    return fingerprint_from_geometry("Dataset009_GoldenLesions", shapes, spacings, noise_sigma=35.0,
                                     intensity=IntensityStats(98.0, 100.0, 41.0, -990.0, 1400.0, -15.0, 205.0, 10000),
                                     liver_voxels=[400_000 + 1000 * i for i in range(8)], liver_boxes_zyx=boxes,
                                     tumour_diameters_mm=tumours)


def dce_fingerprint():
    return fingerprint_from_geometry("Dataset008_DCE", [(40, 160, 160)] * 6, [(3.0, 1.4, 1.4)] * 6, modality="MRI",
                                     channel_names=("pre", "arterial", "portal", "delayed"), num_phases=4,
                                     noise_sigma=12.0)


CASES = {
    "plan_ct_default_gpu8.json": (ct_fingerprint, "default", Budget("cuda", 8 * 2**30)),
    "plan_ct_cpu.json": (ct_fingerprint, "cpu", Budget("cpu", 16 * 2**30, SPEED)),
    "plan_dce_lowmem_gpu6.json": (dce_fingerprint, "lowmem", Budget("cuda", 6 * 2**30)),
    "plan_ct_lesions_cpu.json": (ct_lesion_fingerprint, "cpu", Budget("cpu", 16 * 2**30, SPEED)),
    "plan_ct_lesions_default_gpu8.json": (ct_lesion_fingerprint, "default", Budget("cuda", 8 * 2**30)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_plans(name):
    make, preset, budget = CASES[name]
    text = plan_to_text(plan_experiment(make(), load_preset(preset), budget))
    path = GOLDEN / name
    if os.environ.get("AUTOLIVER_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.is_file(), f"{path} missing: run with AUTOLIVER_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"plan differs from {path}; if intended, regenerate with AUTOLIVER_UPDATE_GOLDEN=1"


def test_round_trip_is_exact(tmp_path):
    for make, preset, budget in CASES.values():
        plan = plan_experiment(make(), load_preset(preset), budget)
        write_plan(tmp_path / "plans.json", plan)
        again = read_plan(tmp_path / "plans.json")
        assert again == plan
        assert plan_to_text(again) == (tmp_path / "plans.json").read_text()


def test_strict_reading_names_the_key_path(tmp_path):
    plan = plan_experiment(ct_fingerprint(), load_preset("default"), Budget("cuda", 8 * 2**30))
    path = tmp_path / "plans.json"
    write_plan(path, plan)
    data = json.loads(path.read_text())
    data["configurations"]["3d_fullres"]["patch_size"][1] = "96"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"configurations\.3d_fullres\.patch_size\[1\]: must be an integer"):
        read_plan(path)
    data = json.loads(plan_to_text(plan))
    data["configurations"]["2d"]["batchsize"] = 3
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"configurations\.2d: unknown key 'batchsize'.*batch_size"):
        read_plan(path)
    data = json.loads(plan_to_text(plan))
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="schema_version must be 1"):
        read_plan(path)


def test_table_lists_every_configuration_and_reason():
    plan = plan_experiment(ct_fingerprint(), load_preset("default"), Budget("cuda", 8 * 2**30))
    table = plan_table(plan)
    for name, c in plan.configurations.items():
        assert name in table
        assert "×".join(map(str, c.patch_size)) in table
        assert c.reasons["batch_size"] in table
