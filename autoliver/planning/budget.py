"""What the machine offers the planner: memory, and on a CPU how fast it computes.

This is the edge of planning that looks at the machine (GPU free memory, RAM, a short timing of
convolutions); :func:`autoliver.planning.planner.plan_experiment` itself only receives the
resulting :class:`Budget`, so a plan can be made for another machine (``--gpu-memory-gb``).
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from autoliver.errors import UserError
from autoliver.planning.memory import CpuSpeed
from autoliver.schema import atomic_write_text

# Used when a calibration cannot run; measured on a 2-core AVX-512 machine (see README).
DEFAULT_CPU_SPEED = CpuSpeed(conv_flops_per_s=1.5e11, elementwise_bytes_per_s=5e9)


@dataclass(frozen=True)
class Budget:
    """``memory_bytes``: free GPU memory ("cuda") or available RAM ("cpu"), before the preset's
    fractions and reserves. ``cpu_speed`` feeds the CPU time model (needed on "cpu")."""

    device: str
    memory_bytes: int
    cpu_speed: CpuSpeed | None = None

    def describe(self) -> str:
        gb = self.memory_bytes / 2**30
        if self.device == "cuda":
            return f"GPU with {gb:.1f} GiB free"
        s = self.cpu_speed or DEFAULT_CPU_SPEED
        return (f"CPU with {gb:.1f} GiB available, conv {s.conv_flops_per_s / 1e9:.0f} GFLOP/s, "
                f"elementwise {s.elementwise_bytes_per_s / 1e9:.1f} GB/s")


def available_ram_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "autoliver" / "cpu_speed.json"


def _machine_key(threads: int) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}|threads={threads}|torch={torch.__version__}"


# How much each extra thread adds, measured on a 2-core AVX-512 machine (idle wall-clock speed with
# 2 threads over 1): convolutions scale well, elementwise passes are bound by memory bandwidth.
PARALLEL_EFFICIENCY_CONV = 0.7
PARALLEL_EFFICIENCY_ELEMENTWISE = 0.3


def measure_cpu_speed(repeats: int = 3, threads: int | None = None) -> CpuSpeed:
    """This CPU's speed for ``threads`` (default: torch's) training threads, in about a second.

    Times a 3D conv (32 → 32 channels, 3³, forward + backward) and an instance norm + LeakyReLU
    (forward + backward) on one thread, in process CPU time, then scales by the thread count with
    the parallel efficiencies above. CPU time, not wall time: on a machine shared with other jobs
    the wall time says how busy it is today, while the plan is for training on the machine (and
    the result is cached). Best of ``repeats``.
    """
    import torch
    import torch.nn.functional as F

    threads = threads or max(1, torch.get_num_threads())
    previous = torch.get_num_threads()

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.process_time()
            fn()
            times.append(time.process_time() - t0)
        return max(min(times), 1e-9)

    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            x = torch.randn(2, 32, 24, 24, 24, requires_grad=True)
            w = torch.randn(32, 32, 3, 3, 3, requires_grad=True)

            def conv():
                F.conv3d(x, w, padding=1).sum().backward()

            t_conv = best(conv)
            a = torch.randn(2, 32, 32, 32, 32, requires_grad=True)
            g = torch.ones(32, requires_grad=True)

            def norm():
                y = F.leaky_relu(F.instance_norm(a, weight=g, bias=torch.zeros(32)), 0.01, inplace=True)
                y.backward(torch.ones_like(y))

            t_norm = best(norm)
    finally:
        torch.set_num_threads(previous)
    from autoliver.planning.memory import ELEMENTWISE_ACCESSES

    conv_flops = 3 * 2 * 32 * 32 * 27 * 2 * 24**3
    norm_bytes = ELEMENTWISE_ACCESSES * a.numel() * 4
    return CpuSpeed(conv_flops_per_s=conv_flops / t_conv * (1 + (threads - 1) * PARALLEL_EFFICIENCY_CONV),
                    elementwise_bytes_per_s=norm_bytes / t_norm * (1 + (threads - 1) * PARALLEL_EFFICIENCY_ELEMENTWISE))


def calibrate_cpu(refresh: bool = False) -> CpuSpeed:
    """This machine's :class:`CpuSpeed`, measured once and cached per CPU model, thread count and
    torch version (``$XDG_CACHE_HOME/autoliver/cpu_speed.json``)."""
    import torch

    key = _machine_key(torch.get_num_threads())
    path = _cache_file()
    cache = {}
    if path.is_file():
        try:
            cache = json.loads(path.read_text())
        except (OSError, ValueError):
            cache = {}
    if not refresh and isinstance(cache.get(key), dict):
        entry = cache[key]
        try:
            return CpuSpeed(float(entry["conv_flops_per_s"]), float(entry["elementwise_bytes_per_s"]))
        except (KeyError, TypeError, ValueError):
            pass
    speed = measure_cpu_speed()
    old = cache.get(key)
    if isinstance(old, dict):
        # A busy machine measures slow: keep the fastest this machine has shown.
        try:
            speed = CpuSpeed(max(speed.conv_flops_per_s, float(old["conv_flops_per_s"])),
                             max(speed.elementwise_bytes_per_s, float(old["elementwise_bytes_per_s"])))
        except (KeyError, TypeError, ValueError):
            pass
    cache[key] = {"conv_flops_per_s": speed.conv_flops_per_s, "elementwise_bytes_per_s": speed.elementwise_bytes_per_s}
    try:
        atomic_write_text(path, json.dumps(cache, indent=2, sort_keys=True) + "\n")
    except OSError:
        pass  # a read-only home only costs a re-measurement next time
    return speed


def detect_budget(gpu_memory_gb: float | None = None, device: str | None = None, recalibrate: bool = False) -> Budget:
    """The budget of this machine: ``gpu_memory_gb`` when given (plan for such a GPU), else the
    free memory of the current CUDA device, else the CPU (available RAM and measured speed;
    ``recalibrate`` measures again instead of using the cached speed)."""
    if gpu_memory_gb is not None:
        if not gpu_memory_gb > 0:
            raise UserError(f"--gpu-memory-gb: must be a positive number of GB, got {gpu_memory_gb}")
        return Budget("cuda", int(gpu_memory_gb * 2**30))
    import torch

    if device != "cpu" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info()
        return Budget("cuda", int(free))
    return Budget("cpu", available_ram_bytes(), calibrate_cpu(refresh=recalibrate))
