"""Mixed pooling, forward + backward: autoliver's fused kernel vs PyTorch's max_pool3d + avg_pool3d.

The problem of the issue: a 2×32×128×128×128 float32 feature map, 2×2×2 windows, stride 2,
α = 0.3 per channel (as in learned mode, so the α gradient is computed too), and a second row
with α drawn 0/1 per channel (random mode: no α gradient). One round = forward, then backward of
a fixed upstream gradient, on the CPU threads torch and autoliver are given (2 on the reference
machine). A table with median seconds and the ratio prints at the end.

On a CUDA machine the same two rows run on the GPU too (PyTorch's cuDNN pooling against
autoliver's CUDA kernel, tensors already on the GPU, timed to completion).

Run:  python -m pytest benchmarks/bench_mixed_pool.py --benchmark-only
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gpu import cuda, device_name  # noqa: E402

from autoliver.ops import _ext  # noqa: E402
from autoliver.ops.mixed_pool import mixed_pool, mixed_pool_reference  # noqa: E402

SHAPE = (2, 32, 128, 128, 128)
RESULTS: dict[str, float] = {}


@functools.lru_cache(maxsize=2)
def inputs(device: str = "cpu"):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=gen)
    grad = torch.randn((SHAPE[0], SHAPE[1]) + tuple(s // 2 for s in SHAPE[2:]), generator=gen)
    learned = torch.full((SHAPE[1],), 0.3)
    drawn = (torch.rand(SHAPE[1], generator=gen) < 0.5).float()
    return tuple(t.to(device) for t in (x, grad, learned, drawn))


def step(fn, alpha_value, needs_alpha_grad):
    x, grad, _, _ = inputs(alpha_value.device.type)
    x = x.detach().requires_grad_(True)
    alpha = alpha_value.detach().requires_grad_(needs_alpha_grad)
    y = fn(x, alpha, 2)
    y.backward(grad)
    if x.is_cuda:
        torch.cuda.synchronize()
    return x.grad


@pytest.fixture(scope="module", autouse=True)
def table(request):
    yield
    if not RESULTS:
        return
    lines = []
    write = lines.append
    write("")
    write(f"mixed pooling {'×'.join(map(str, SHAPE))} float32, 2×2×2 stride 2, forward+backward, "
          f"torch threads {torch.get_num_threads()}, autoliver threads {_ext.num_threads()}, torch {torch.__version__}")
    write("| device | mode | PyTorch max_pool3d + avg_pool3d (s) | autoliver fused (s) | speed-up |")
    write("|---|---|---|---|---|")
    for device in ("cpu", "cuda"):
        for mode in ("learned α", "random α"):
            ref, ours = RESULTS.get(f"reference {mode} {device}"), RESULTS.get(f"fused {mode} {device}")
            if ref and ours:
                where = device_name() if device == "cuda" else "CPU"
                write(f"| {where} | {mode} | {ref:.4f} | {ours:.4f} | {ref / ours:.2f}× |")
    # Module teardown output is captured unless capture is switched off around it.
    capture = request.config.pluginmanager.getplugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    with capture.global_and_fixture_disabled():
        for line in lines:
            reporter.write_line(line)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("impl", ["reference", "fused"])
@pytest.mark.parametrize("mode", ["learned α", "random α"])
def test_forward_backward(benchmark, impl, mode, device):
    if device == "cuda":
        cuda()
    x, grad, learned, drawn = inputs(device)
    fn = mixed_pool_reference if impl == "reference" else mixed_pool
    alpha, needs = (learned, True) if mode == "learned α" else (drawn, False)
    rounds = 5 if device == "cpu" else 50
    gx = benchmark.pedantic(step, args=(fn, alpha, needs), rounds=rounds, iterations=1, warmup_rounds=2)
    expected = step(mixed_pool_reference, alpha, needs) if impl == "fused" else gx
    torch.testing.assert_close(gx, expected, rtol=1e-5, atol=1e-6)  # measured the right thing
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        RESULTS[f"{impl} {mode} {device}"] = stats.stats.median
