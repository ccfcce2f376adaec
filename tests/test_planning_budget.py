"""The machine's budget: explicit GPU memory, the CPU fallback and the cached CPU calibration."""
from __future__ import annotations

import json

import pytest

from autoliver.errors import UserError
from autoliver.planning import budget as budget_mod
from autoliver.planning.memory import CpuSpeed


def test_gpu_memory_flag_plans_for_that_gpu():
    b = budget_mod.detect_budget(11.0)
    assert b.device == "cuda" and b.memory_bytes == 11 * 2**30
    with pytest.raises(UserError, match="--gpu-memory-gb: must be a positive"):
        budget_mod.detect_budget(0.0)


def test_cpu_budget_uses_ram_and_a_cached_calibration(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []

    def fake_measure(repeats: int = 3) -> CpuSpeed:
        calls.append(1)
        return CpuSpeed(1.0e11, 4.0e9)

    monkeypatch.setattr(budget_mod, "measure_cpu_speed", fake_measure)
    b = budget_mod.detect_budget(None, device="cpu")
    assert b.device == "cpu" and 0 < b.memory_bytes and b.cpu_speed == CpuSpeed(1.0e11, 4.0e9)
    assert budget_mod.calibrate_cpu() == CpuSpeed(1.0e11, 4.0e9)
    assert len(calls) == 1  # the second call read the cache
    cache = json.loads((tmp_path / "autoliver" / "cpu_speed.json").read_text())
    assert len(cache) == 1 and "threads=" in next(iter(cache))
    budget_mod.calibrate_cpu(refresh=True)
    assert len(calls) == 2
    (tmp_path / "autoliver" / "cpu_speed.json").write_text("not json")
    assert budget_mod.calibrate_cpu() == CpuSpeed(1.0e11, 4.0e9) and len(calls) == 3  # a broken cache is re-made


def test_measured_cpu_speed_is_plausible():
    s = budget_mod.measure_cpu_speed(repeats=1)
    assert 1e8 < s.conv_flops_per_s < 1e14 and 1e7 < s.elementwise_bytes_per_s < 1e12
    assert "GFLOP/s" in budget_mod.Budget("cpu", 2**30, s).describe()
