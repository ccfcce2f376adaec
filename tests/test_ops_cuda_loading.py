"""CUDA kernels that cannot be built fall back with exactly one warning and are not rebuilt."""
from __future__ import annotations

import warnings

import pytest

from autoliver.ops import _cuda


def test_unbuildable_kernel_warns_once_and_is_not_retried(monkeypatch):
    calls = []

    def failing(name):
        calls.append(name)
        raise RuntimeError("nvcc missing")

    monkeypatch.setattr(_cuda, "load_cuda", failing)
    monkeypatch.setattr(_cuda, "_UNAVAILABLE", set())
    with pytest.warns(RuntimeWarning, match="CUDA demo kernel unavailable \\(nvcc missing\\); on the CPU"):
        assert _cuda.try_load_cuda("demo", "on the CPU") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _cuda.try_load_cuda("demo", "on the CPU") is None
    assert calls == ["demo"]


def test_every_cuda_source_is_found():
    names = {p.stem for p in _cuda.cuda_sources()}
    assert {"bilateral", "components", "crf", "mixed_pool"} <= names
