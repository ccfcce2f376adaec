"""Data-parallel training with PyTorch's own tools: ``torch.distributed.run`` (torchrun) + DDP.

``autoliver train … --num-gpus N`` re-runs the same command under ``torch.distributed.run`` with
N processes; each process finds ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in its environment (as
torchrun sets them), trains on its own GPU with its share of the batch and its own sampling seed,
and DDP averages the gradients. Rank 0 writes the files.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import torch

from autoliver.errors import UserError


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available to PyTorch here. Use --device cpu.")
    if name not in ("cpu", "cuda"):
        raise UserError(f"--device must be cpu or cuda, got {name!r}")
    return torch.device(name)


def setup(device_name: str | None) -> Context:
    """Join the process group when launched by torchrun, else a single-process context."""
    device = resolve_device(device_name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context(0, 1, device)
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(rank, world, device)


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        dist.barrier()


def all_sum(ctx: Context, tensor: torch.Tensor) -> torch.Tensor:
    if ctx.distributed:
        import torch.distributed as dist

        t = tensor.to(ctx.device)
        dist.all_reduce(t)
        return t.to(tensor.device)
    return tensor


def all_min(ctx: Context, tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise minimum over all processes (what every rank can agree to)."""
    if ctx.distributed:
        import torch.distributed as dist

        t = tensor.to(ctx.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return t.to(tensor.device)
    return tensor


def gather_objects(ctx: Context, obj) -> list:
    if not ctx.distributed:
        return [obj]
    import torch.distributed as dist

    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def teardown(ctx: Context) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def relaunch(argv: list[str], num_processes: int) -> int:
    """Run ``python -m autoliver <argv>`` as ``num_processes`` torchrun workers on this machine."""
    if num_processes < 1:
        raise UserError(f"--num-gpus must be >= 1, got {num_processes}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}",
           "-m", "autoliver", *argv]
    return subprocess.call(cmd)
