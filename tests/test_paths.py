from __future__ import annotations

import pytest

from autoliver import paths
from autoliver.errors import UserError


def _make(root, *names):
    for n in names:
        (root / n).mkdir(parents=True)


def test_dataset_accepts_id_full_name_and_name(tmp_path):
    _make(tmp_path, "Dataset003_LiTS", "Dataset010_Demo")
    for spec in ("3", "003", "Dataset003_LiTS", "LiTS", "lits"):
        assert paths.resolve_dataset(spec, tmp_path) == "Dataset003_LiTS"


def test_unknown_or_ambiguous_dataset_lists_what_exists(tmp_path):
    _make(tmp_path, "Dataset003_LiTS", "Dataset004_LiTS")
    with pytest.raises(UserError, match="several datasets match.*Dataset003_LiTS, Dataset004_LiTS"):
        paths.resolve_dataset("LiTS", tmp_path)
    with pytest.raises(UserError, match=r"no dataset matches.*found: Dataset003_LiTS, Dataset004_LiTS"):
        paths.resolve_dataset("7", tmp_path)
    with pytest.raises(UserError, match="several found"):
        paths.resolve_dataset(None, tmp_path)


def test_only_dataset_is_chosen_without_a_name(tmp_path):
    _make(tmp_path / "raw", "Dataset001_Demo")
    assert paths.resolve_dataset(None, tmp_path / "raw", tmp_path / "missing") == "Dataset001_Demo"


def test_roots_follow_flag_then_environment_then_default(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOLIVER_RAW", str(tmp_path / "env"))
    assert paths.root("raw", str(tmp_path / "flag")) == tmp_path / "flag"
    assert paths.root("raw") == tmp_path / "env"
    monkeypatch.delenv("AUTOLIVER_RESULTS", raising=False)
    assert paths.root("results").name == "results"


def test_dataset_folder_name_validates():
    assert paths.dataset_folder_name(3, "LiTS") == "Dataset003_LiTS"
    with pytest.raises(UserError):
        paths.dataset_folder_name(1000, "X")
    with pytest.raises(UserError):
        paths.dataset_folder_name(1, "bad name")
