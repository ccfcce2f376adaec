"""Shared fixtures: the real scans in ../shared/data (skipped with a reason when absent), isolated
autoliver folders, and tiny synthetic volumes."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from autoliver import progress

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
# Status lines go to stderr as the command line shows them, so tests of the API read them too.
progress.log_to_stderr()


def shared_data_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test (with the reason) when it is absent."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real scans not available: {p} is absent (they live in the project's shared/data folder)")
    return p


@pytest.fixture
def shared_data() -> Path:
    return shared_data_path()


@pytest.fixture
def autoliver_dirs(tmp_path, monkeypatch):
    """Point AUTOLIVER_RAW/PREPROCESSED/RESULTS at fresh temporary folders."""
    dirs = {k: tmp_path / k for k in ("raw", "preprocessed", "results")}
    for k, v in dirs.items():
        v.mkdir()
        monkeypatch.setenv(f"AUTOLIVER_{k.upper()}", str(v))
    monkeypatch.setenv("AUTOLIVER_NO_PROGRESS", "1")
    return dirs


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def pytest_configure(config):
    os.environ.setdefault("AUTOLIVER_NO_PROGRESS", "1")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one torch thread is faster, and far faster on a busy machine (no spinning
    barriers). Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
