"""Planning benchmarks: how long planning takes, and whether a CPU plan's predicted seconds per
training iteration hold on this machine.

    python -m pytest benchmarks/bench_planning.py --benchmark-only -s

nnU-Net v2's planner (run in its own environment, see tests/test_planning_nnunet.py) instantiates
a PyTorch network for every candidate patch; autoliver's planner walks the layer list in Python.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoliver.fingerprint.fingerprint import fingerprint_from_geometry
from autoliver.planning import memory
from autoliver.planning.budget import Budget, measure_cpu_speed
from autoliver.planning.planner import plan_experiment
from autoliver.planning.presets import load_preset

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "lits_geometry.json"


def lits_fingerprint():
    if not SHARED.is_file():
        pytest.skip(f"{SHARED} is absent")
    cases = json.loads(SHARED.read_text())["cases"]
    return fingerprint_from_geometry("Dataset003_LiTS", [tuple(reversed(c["shape_xyz"])) for c in cases],
                                     [tuple(reversed(c["spacing_xyz_mm"])) for c in cases])


def test_plan_lits_for_an_8gb_gpu(benchmark):
    fp = lits_fingerprint()
    plan = benchmark(plan_experiment, fp, load_preset("default"), Budget("cuda", 8 * 2**30))
    assert plan.configurations["3d_fullres"].patch_size == (64, 192, 192)


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_cpu_plan_training_iteration(benchmark, configuration):
    """One training iteration (forward, Dice + CE on every deep-supervision output, backward,
    SGD step) of the cpu preset's plan for LiTS geometry on this machine, next to the estimate."""
    torch = pytest.importorskip("torch")
    networks = pytest.importorskip("autoliver.training.networks")
    speed = measure_cpu_speed()
    plan = plan_experiment(lits_fingerprint(), load_preset("cpu"), Budget("cpu", 16 * 2**30, speed))
    c = plan.configurations[configuration]
    net = networks.build_network(c.network).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    x = torch.randn(c.batch_size, c.network.in_channels, *c.patch_size)
    target = torch.randint(0, c.network.num_classes, (c.batch_size, *c.patch_size))

    def step():
        loss = 0.0
        for o in net(x):
            t = torch.nn.functional.interpolate(target[:, None].float(), size=o.shape[2:], mode="nearest")[:, 0].long()
            p = torch.softmax(o, 1)
            onehot = torch.nn.functional.one_hot(t, c.network.num_classes).movedim(-1, 1).float()
            loss = loss + torch.nn.functional.cross_entropy(o, t) + 1 - (2 * (p * onehot).sum() + 1) / ((p + onehot).sum() + 1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    benchmark.pedantic(step, rounds=5, iterations=1)
    estimate = memory.estimate_seconds_per_iteration(c, speed)
    print(f"\n{configuration}: patch {c.patch_size} batch {c.batch_size}: estimated {estimate:.2f} s, "
          f"measured median {benchmark.stats.stats.median:.2f} s per iteration")
