"""extract_fingerprint on a tiny raw dataset written here: parallel workers, caching, 4D phases,
and the extract_fingerprint / plan commands."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from autoliver.cli import main
from autoliver.datasets.dataset import parse_dataset_json
from autoliver.fingerprint.api import FINGERPRINT_FILE, extract_fingerprint
from autoliver.fingerprint.fingerprint import read_fingerprint
from autoliver.io.images import Geometry, write_image
from autoliver.planning.plan import read_plan

SHAPE = (12, 48, 40)
SPACING_XYZ = (0.9, 0.9, 2.5)


def phantom(rng, tumour: bool, phases: int = 0):
    z, y, x = np.indices(SHAPE)
    body = ((y - 24) / 20.0) ** 2 + ((x - 20) / 17.0) ** 2 <= 1
    liver = body & (((y - 22) / 10.0) ** 2 + ((x - 16) / 9.0) ** 2 <= 1) & (z >= 2) & (z < 10)
    seg = liver.astype(np.uint8)
    if tumour:
        seg[(liver) & (((z - 6) / 2.0) ** 2 + ((y - 22) / 3.0) ** 2 + ((x - 16) / 3.0) ** 2 <= 1)] = 2
    base = np.where(body, 40.0, -1000.0)
    base[seg == 1] = 60.0
    base[seg == 2] = 20.0
    if phases:
        imgs = np.stack([np.where(body, 100.0 + 50 * t * (seg > 0), 0.0) + rng.normal(0, 5, SHAPE) * body
                         for t in range(phases)])
        return imgs.astype(np.float32), seg
    return (base + rng.normal(0, 15.0, SHAPE)).astype(np.int16), seg


def write_dataset(root, rng, num_cases=3, phases=0, name="Dataset001_Tiny"):
    folder = root / name
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    geo = Geometry(spacing=SPACING_XYZ, origin=(0.0, 0.0, 0.0), direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), shape_zyx=SHAPE)
    for i in range(num_cases):
        img, seg = phantom(rng, tumour=i != 1, phases=phases)
        write_image(folder / "imagesTr" / f"case_{i:03d}_0000.nii.gz", img, geo)
        write_image(folder / "labelsTr" / f"case_{i:03d}.nii.gz", seg, geo)
    meta = {"channel_names": {"0": "DCE" if phases else "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2},
            "numTraining": num_cases, "file_ending": ".nii.gz"}
    if phases:
        meta["phases_in_file"] = phases
    (folder / "dataset.json").write_text(json.dumps(meta))
    return parse_dataset_json(folder)


def test_extract_parallel_then_cached_then_recomputed(tmp_path, rng):
    info = write_dataset(tmp_path / "raw", rng)
    pre = tmp_path / "pre"
    fp = extract_fingerprint(info, pre, num_processes=2)
    path = pre / info.name / FINGERPRINT_FILE
    assert read_fingerprint(path) == fp
    assert [c.case for c in fp.cases] == ["case_000", "case_001", "case_002"]
    c0 = fp.cases[0]
    assert c0.shape_zyx == SHAPE and c0.spacing_zyx_mm == pytest.approx((2.5, 0.9, 0.9)) and c0.orientation == "LPS"
    # the body is 35 × 41 voxels of a 48 × 40 field of view; z keeps every slice
    assert c0.crop_bbox_zyx[0] == (0, 12) and c0.shape_after_crop_zyx[1] < SHAPE[1]
    assert fp.modality == "CT" and fp.crop_rule == "body_ct" and fp.num_phases == 1
    st = fp.foreground_intensity[0]
    assert 40 < st.mean < 62 and st.percentile_00_5 < st.median < st.percentile_99_5
    assert fp.noise_sigma[0] == pytest.approx(15.0, rel=0.25)
    assert fp.cases[1].labels.tumour_count == 0 and fp.cases[0].labels.tumour_count == 1
    assert fp.cases[0].labels.liver_ml > 0
    # same numbers in one process as in the workers (per-case seeds)
    assert extract_fingerprint(info, tmp_path / "pre_serial", num_processes=1) == fp
    # cached: not rewritten
    stamp = path.stat().st_mtime_ns
    assert extract_fingerprint(info, pre, num_processes=1) == fp and path.stat().st_mtime_ns == stamp
    # overwrite recomputes; a changed case list recomputes too
    os.utime(path, ns=(0, 0))
    extract_fingerprint(info, pre, num_processes=1, overwrite=True)
    assert path.stat().st_mtime_ns != 0
    for f in (info.folder / "imagesTr" / "case_002_0000.nii.gz", info.folder / "labelsTr" / "case_002.nii.gz"):
        f.unlink()
    assert [c.case for c in extract_fingerprint(info, pre, num_processes=1).cases] == ["case_000", "case_001"]


def test_4d_phases(tmp_path, rng):
    info = write_dataset(tmp_path / "raw", rng, num_cases=2, phases=3, name="Dataset002_Dce")
    fp = extract_fingerprint(info, tmp_path / "pre", num_processes=1)
    assert fp.modality == "MRI" and fp.num_phases == 3 and fp.crop_rule == "nonzero"
    assert fp.channel_names == ("DCE_t0", "DCE_t1", "DCE_t2")
    means = [s.mean for s in fp.foreground_intensity]
    assert means[0] < means[1] < means[2]  # contrast arrives
    assert all(n == pytest.approx(5.0, rel=0.3) for n in fp.noise_sigma)


def test_commands_extract_and_plan(autoliver_dirs, rng, capsys):
    write_dataset(autoliver_dirs["raw"], rng)
    assert main(["extract_fingerprint", "-d", "1", "-np", "1"]) == 0
    out = capsys.readouterr().out
    assert "Dataset001_Tiny: 3 cases, CT" in out and "noise σ" in out
    assert main(["plan", "-d", "Tiny", "--gpu-memory-gb", "8", "--brief"]) == 0
    out = capsys.readouterr().out
    plan = read_plan(autoliver_dirs["preprocessed"] / "Dataset001_Tiny" / "plans.json")
    assert plan.device == "cuda" and plan.preset == "default" and "3d_fullres" in plan.configurations
    assert "patch" in out and "3d_fullres" in out
    assert main(["plan", "-d", "1", "--preset", "lowmen", "--gpu-memory-gb", "8"]) == 2
    assert "Did you mean 'lowmem'" in capsys.readouterr().err


def test_plan_computes_a_missing_fingerprint(autoliver_dirs, rng):
    from autoliver.planning.api import plan_dataset
    from autoliver.planning.budget import Budget

    write_dataset(autoliver_dirs["raw"], rng, num_cases=2)
    plan = plan_dataset("Dataset001_Tiny", autoliver_dirs["preprocessed"], "cpu", 2.0, num_processes=1)
    assert (autoliver_dirs["preprocessed"] / "Dataset001_Tiny" / FINGERPRINT_FILE).is_file()
    assert plan.preset == "cpu" and plan.memory_budget_bytes < Budget("cuda", 2 * 2**30).memory_bytes
