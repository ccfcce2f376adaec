"""GPU rows of the benchmarks: skipped (with the reason) where no CUDA device is visible.

Timings of GPU work wait for the device to finish (``synchronized``), so pytest-benchmark's host
clock measures the kernels, not their launch. Inputs are moved to the GPU before timing: the
figures are for data already there, as in prediction on a GPU.
"""
from __future__ import annotations

import functools

import pytest


def cuda():
    """torch, or skip the test when there is no CUDA device."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch


def synchronized(fn):
    """``fn``, then wait until the GPU has finished everything it queued."""
    import torch

    @functools.wraps(fn)
    def run(*args, **kwargs):
        out = fn(*args, **kwargs)
        torch.cuda.synchronize()
        return out

    return run


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name()


def on_gpu(row_name: str) -> bool:
    """Whether a benchmark table row ran on the GPU (its name says CUDA or GPU)."""
    return "CUDA" in row_name or "GPU" in row_name
