"""Planner presets: shipped data files, strict validation with clear errors."""
from __future__ import annotations

import json

import pytest

from autoliver.errors import UserError
from autoliver.planning.presets import PlannerPreset, available_presets, load_preset, preset_dir, preset_from_dict
from autoliver.resources import resource_dir


def test_shipped_presets_load_and_differ():
    assert preset_dir() == resource_dir("planners")
    assert {"default", "lowmem", "cpu"} <= set(available_presets())
    default, lowmem, cpu = (load_preset(n) for n in ("default", "lowmem", "cpu"))
    assert default == PlannerPreset(name="default", description=default.description)  # default.json = nnU-Net's values
    assert lowmem.max_features_3d < default.max_features_3d and lowmem.gpu_memory_fraction < 1
    assert cpu.base_features < default.base_features and cpu.cpu_seconds_per_iteration < default.cpu_seconds_per_iteration
    for name in available_presets():
        assert load_preset(name).name == name


def test_default_json_spells_out_every_field():
    data = json.loads((preset_dir() / "default.json").read_text())
    assert set(data) == set(PlannerPreset.__dataclass_fields__)


def test_unknown_preset_name_suggests_the_closest():
    with pytest.raises(UserError, match="Did you mean 'lowmem'") as e:
        load_preset("lowmen")
    assert "default" in str(e.value) and "cpu" in str(e.value)


def test_unknown_key_names_the_file_and_suggests(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"name": "mine", "base_feature": 16}))
    with pytest.raises(UserError, match=r"mine\.json.*unknown key 'base_feature'.*Did you mean 'base_features'"):
        load_preset(str(path))


def test_bad_values_are_reported_together():
    with pytest.raises(UserError) as e:
        preset_from_dict({"name": "x", "base_features": 0, "normalization_ct": "zscor", "configurations": ["2d", "3d_fulres"],
                          "hu_window": [400, -100], "cpu_seconds_per_iteration": -1})
    text = str(e.value)
    for needle in ("base_features: must be ≥ 1, got 0", "normalization_ct", "Did you mean 'zscore'", "3d_fulres",
                   "Did you mean '3d_fullres'", "hu_window", "cpu_seconds_per_iteration"):
        assert needle in text


def test_wrong_type_names_the_key():
    with pytest.raises(UserError, match=r"preset\.min_batch_size: must be an integer"):
        preset_from_dict({"min_batch_size": "two"})


def test_cascade_needs_lowres():
    with pytest.raises(UserError, match="3d_cascade_fullres needs 3d_lowres"):
        preset_from_dict({"configurations": ["3d_fullres", "3d_cascade_fullres"]})
