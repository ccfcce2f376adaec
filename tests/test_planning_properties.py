"""Properties of every plan, over random fingerprints and budgets (hypothesis)."""
from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoliver.fingerprint.fingerprint import fingerprint_from_geometry
from autoliver.planning.budget import Budget
from autoliver.planning.memory import CpuSpeed, estimate_seconds_per_iteration, estimate_training_bytes
from autoliver.planning.planner import plan_experiment
from autoliver.planning.presets import load_preset

SPEED = CpuSpeed(1.5e11, 5e9)

case = st.tuples(
    st.tuples(st.integers(8, 300), st.integers(16, 512), st.integers(16, 512)),
    st.tuples(st.sampled_from([0.7, 1.0, 1.5, 2.5, 3.0, 5.0]), st.floats(0.5, 1.6), st.floats(0.5, 1.6)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases=st.lists(case, min_size=1, max_size=6), phases=st.sampled_from([1, 1, 3]),
       target=st.sampled_from([("cuda", 4), ("cuda", 8), ("cuda", 40), ("cpu", 8)]),
       preset=st.sampled_from(["default", "lowmem", "cpu"]))
def test_plan_properties(cases, phases, target, preset):
    shapes = [c[0] for c in cases]
    spacings = [(c[1][0], c[1][1], c[1][1]) for c in cases]  # square in-plane pixels, as scanners make them
    names = tuple(f"phase{i}" for i in range(phases)) if phases > 1 else ("CT",)
    fp = fingerprint_from_geometry("Dataset009_Prop", shapes, spacings, num_phases=phases, channel_names=names,
                                   modality="MRI" if phases > 1 else "CT")
    device, gb = target
    budget = Budget(device, gb * 2**30, SPEED if device == "cpu" else None)
    p = load_preset(preset)
    plan = plan_experiment(fp, p, budget)
    assert plan.configurations
    for c in plan.configurations.values():
        net = c.network
        assert len(c.patch_size) == net.dims
        for axis in range(net.dims):
            divisor = math.prod(s[axis] for s in net.strides)
            assert c.patch_size[axis] % divisor == 0  # patch divisible by the total pooling
            assert c.patch_size[axis] <= max(c.median_shape_zyx[-net.dims:][axis], divisor)
        assert net.strides[0] == (1,) * net.dims and len(net.kernel_sizes) == len(net.strides)
        assert c.batch_size >= p.min_batch_size >= 2
        mem = estimate_training_bytes(c, device=device, optimizer_states=p.optimizer_states)
        assert mem == c.estimated_memory_bytes <= plan.memory_budget_bytes  # estimate within budget
        if device == "cpu" and "even the smallest patch" not in c.reasons["time"]:
            assert estimate_seconds_per_iteration(c, SPEED) <= p.cpu_seconds_per_iteration * (1 + 1e-6)
        assert max(net.features_per_stage) <= (p.max_features_3d if net.dims == 3 else p.max_features_2d)
