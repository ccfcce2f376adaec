"""The planner's rules on hand-made fingerprints: spacing, topology, configurations, batch,
normalisation, resampling, denoising, budgets."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest

from autoliver.errors import UserError
from autoliver.fingerprint.fingerprint import IntensityStats, fingerprint_from_geometry
from autoliver.planning import memory
from autoliver.planning.budget import DEFAULT_CPU_SPEED, Budget
from autoliver.planning.planner import patch_coverage, plan_experiment
from autoliver.planning.presets import PlannerPreset, load_preset, preset_from_dict
from autoliver.planning.topology import fit_patch, pool_and_kernel_topology

GPU8 = Budget("cuda", 8 * 2**30)
CPU = Budget("cpu", 16 * 2**30, DEFAULT_CPU_SPEED)


def fp(shapes, spacings, **kw):
    return fingerprint_from_geometry("Dataset001_Test", shapes, spacings, **kw)


def divisible(c) -> bool:
    dims = c.network.dims
    for a in range(dims):
        div = math.prod(s[a] for s in c.network.strides)
        if c.patch_size[a] % div:
            return False
    return True


def test_isotropic_ct_gets_cubic_patches_and_3x3x3_kernels():
    plan = plan_experiment(fp([(160, 160, 160)] * 5, [(1.0, 1.0, 1.0)] * 5), PlannerPreset(), GPU8)
    c = plan.configurations["3d_fullres"]
    assert c.spacing_zyx_mm == (1.0, 1.0, 1.0)
    assert c.patch_size[0] == c.patch_size[1] == c.patch_size[2]
    assert all(k == (3, 3, 3) for k in c.network.kernel_sizes)
    assert all(s in ((1, 1, 1), (2, 2, 2)) for s in c.network.strides)
    assert c.network.features_per_stage[:3] == (32, 64, 128) and max(c.network.features_per_stage) <= 320
    assert not c.resampling.separate_z
    assert divisible(c) and c.batch_size >= 2
    assert set(plan.configurations) == {"2d", "3d_fullres"}  # 160³ patch covers the image: no lowres
    assert "3d_lowres" in plan.reasons and "convlstm" in plan.reasons["3d_convlstm"] or "phase" in plan.reasons["3d_convlstm"]


def test_five_mm_slices_anisotropy_rule_kernels_and_separate_z():
    # 9 cases with 5 mm slices, 3 with 1.5 mm: z is > 3× coarser and has > 3× fewer voxels, so the
    # target takes the 10th percentile of the z spacings (1.5 mm), not the median (5 mm).
    spacings = [(5.0, 0.8, 0.8)] * 9 + [(1.5, 0.8, 0.8)] * 3
    shapes = [(40, 512, 512)] * 9 + [(133, 512, 512)] * 3
    plan = plan_experiment(fp(shapes, spacings), PlannerPreset(), GPU8)
    c = plan.configurations["3d_fullres"]
    assert c.spacing_zyx_mm[0] == pytest.approx(1.5)
    assert c.spacing_zyx_mm[1:] == (0.8, 0.8)
    assert "10th percentile" in plan.reasons["target_spacing"]
    assert c.resampling.separate_z and c.resampling.order_z_image == 0 and c.resampling.order_image == 3
    # z at 1.5 mm is within 2× of 0.8 mm: pooled from the start; at 5 mm it would wait.
    only_5mm = plan_experiment(fp([(40, 512, 512)] * 4, [(5.0, 0.8, 0.8)] * 4), PlannerPreset(), GPU8)
    c5 = only_5mm.configurations["3d_fullres"]
    assert c5.spacing_zyx_mm[0] == pytest.approx(5.0)
    assert c5.network.kernel_sizes[0] == (1, 3, 3)
    assert c5.network.strides[1] == (1, 2, 2)
    assert c5.resampling.separate_z and divisible(c5)


def test_pooling_rule_matches_nnunet_example():
    # spacing (3, 0.75, 0.75): in-plane pooled twice before z (1.5 → 3 within 2× of 3) joins.
    topo = pool_and_kernel_topology((3.0, 0.75, 0.75), (32, 256, 256), 4, 99)
    assert topo.strides[1:3] == ((1, 2, 2), (1, 2, 2))
    assert topo.strides[3] == (2, 2, 2)
    assert topo.kernel_sizes[0] == (1, 3, 3) and topo.kernel_sizes[-1] == (3, 3, 3)
    # an axis is pooled while it has ≥ 8 voxels (min edge 4): z 32 → 16 → 8 → 4, y/x 256 → … → 4
    assert topo.pools_per_axis == (3, 6, 6)
    patch, t = fit_patch((1.0, 1.0, 1.0), (100, 100, 100), 4, 99)
    assert patch == (96, 96, 96) and t.divisor == (16, 16, 16)


def test_tiny_images_patch_stays_inside_and_no_lowres():
    plan = plan_experiment(fp([(12, 20, 24)] * 3, [(2.0, 1.0, 1.0)] * 3), PlannerPreset(), GPU8)
    c = plan.configurations["3d_fullres"]
    assert all(p <= m for p, m in zip(c.patch_size, c.median_shape_zyx))
    assert divisible(c) and c.batch_size >= 2
    assert "3d_lowres" not in plan.configurations
    c2 = plan.configurations["2d"]
    assert all(p <= m for p, m in zip(c2.patch_size, c2.median_shape_zyx[1:]))
    # The batch cap: at most 5 % of the dataset's voxels per batch — but never below 2.
    assert c.batch_size == 2


def test_large_images_get_lowres_and_cascade():
    plan = plan_experiment(fp([(400, 512, 512)] * 20, [(0.8, 0.8, 0.8)] * 20), PlannerPreset(), GPU8)
    assert {"3d_lowres", "3d_cascade_fullres"} <= set(plan.configurations)
    full, low, cas = (plan.configurations[n] for n in ("3d_fullres", "3d_lowres", "3d_cascade_fullres"))
    assert math.prod(full.patch_size) / math.prod(full.median_shape_zyx) < 0.25
    assert all(lo > f for lo, f in zip(low.spacing_zyx_mm, full.spacing_zyx_mm))
    assert math.prod(low.patch_size) / math.prod(low.median_shape_zyx) >= 0.25
    assert cas.previous_stage == "3d_lowres" and cas.network.in_channels == 1 + 2
    assert cas.data_identifier == full.data_identifier == plan.configurations["2d"].data_identifier
    assert low.data_identifier != full.data_identifier


def test_phases_give_a_convlstm_configuration():
    f = fp([(64, 128, 128)] * 4, [(2.0, 1.0, 1.0)] * 4, modality="MRI", channel_names=("pre", "art", "pv", "del"),
           num_phases=4)
    plan = plan_experiment(f, PlannerPreset(), GPU8)
    c = plan.configurations["3d_convlstm"]
    assert c.network.architecture == "convlstm_unet" and c.phases == 4 and c.network.in_channels == 4
    assert [n.scheme for n in c.normalization] == ["zscore"] * 4
    assert divisible(c)
    # the phases cost memory: the convlstm patch is no larger than the plain 3D one
    assert math.prod(c.patch_size) <= math.prod(plan.configurations["3d_fullres"].patch_size)


def test_one_case_and_empty_tumour_class():
    f = fp([(80, 200, 200)], [(2.5, 0.8, 0.8)])
    assert all(c.labels.tumour_count == 0 for c in f.cases)
    plan = plan_experiment(f, PlannerPreset(), GPU8)
    for c in plan.configurations.values():
        assert c.batch_size >= 2 and c.network.num_classes == 3 and divisible(c)


def test_normalisation_schemes():
    stats = IntensityStats(mean=90.0, median=95.0, std=40.0, min=-900.0, max=1500.0, percentile_00_5=-20.0,
                           percentile_99_5=210.0, num_samples=1000)
    f = fp([(100, 256, 256)] * 3, [(1.0, 0.8, 0.8)] * 3, intensity=stats)
    n = plan_experiment(f, PlannerPreset(), GPU8).configurations["3d_fullres"].normalization[0]
    assert (n.scheme, n.lower, n.upper, n.mean, n.std) == ("ct", -20.0, 210.0, 90.0, 40.0)
    for scheme in ("hu_window", "liver_zscore", "histeq"):
        preset = preset_from_dict({"name": "x", "normalization_ct": scheme, "hu_window": [-100, 300]})
        n = plan_experiment(f, preset, GPU8).configurations["2d"].normalization[0]
        assert (n.scheme, n.lower, n.upper) == (scheme, -100.0, 300.0)
    mri = fp([(60, 256, 256)] * 3, [(3.0, 1.0, 1.0)] * 3, modality="MRI", channel_names=("T1",), intensity=stats)
    assert plan_experiment(mri, PlannerPreset(), GPU8).configurations["2d"].normalization[0].scheme == "zscore"


def test_denoise_follows_the_noise_estimate():
    quiet = fp([(100, 256, 256)] * 3, [(1.0, 0.8, 0.8)] * 3, noise_sigma=10.0)
    noisy = fp([(100, 256, 256)] * 3, [(1.0, 0.8, 0.8)] * 3, noise_sigma=45.0)
    assert not plan_experiment(quiet, PlannerPreset(), GPU8).configurations["3d_fullres"].denoise.enabled
    d = plan_experiment(noisy, PlannerPreset(), GPU8).configurations["3d_fullres"].denoise
    assert d.enabled and d.range_sigma == pytest.approx(90.0) and d.domain_sigma_mm == pytest.approx(1.0)
    off = preset_from_dict({"name": "x", "denoise": "off"})
    assert not plan_experiment(noisy, off, GPU8).configurations["3d_fullres"].denoise.enabled


def test_cpu_plan_fits_time_and_memory():
    f = fp([(120, 256, 256)] * 10, [(1.5, 0.8, 0.8)] * 10)
    preset = load_preset("cpu")
    plan = plan_experiment(f, preset, CPU)
    assert plan.device == "cpu"
    for c in plan.configurations.values():
        assert 0 < c.estimated_seconds_per_iteration <= preset.cpu_seconds_per_iteration
        assert c.estimated_memory_bytes <= plan.memory_budget_bytes
        assert c.estimated_seconds_per_iteration == pytest.approx(
            memory.estimate_seconds_per_iteration(c, DEFAULT_CPU_SPEED), rel=1e-3)
    gpu = plan_experiment(f, PlannerPreset(), GPU8).configurations["3d_fullres"]
    assert math.prod(plan.configurations["3d_fullres"].patch_size) < math.prod(gpu.patch_size)


def test_more_memory_never_gives_a_smaller_patch_or_batch():
    f = fp([(200, 400, 400)] * 10, [(1.0, 0.8, 0.8)] * 10)
    small = plan_experiment(f, PlannerPreset(), Budget("cuda", 4 * 2**30)).configurations["3d_fullres"]
    big = plan_experiment(f, PlannerPreset(), Budget("cuda", 24 * 2**30)).configurations["3d_fullres"]
    assert math.prod(big.patch_size) * big.batch_size > math.prod(small.patch_size) * small.batch_size


def test_budget_too_small_is_a_clear_error():
    f = fp([(200, 400, 400)] * 3, [(1.0, 0.8, 0.8)] * 3)
    # A small budget shrinks the patch (and with it the network's depth) rather than failing …
    tight = plan_experiment(f, PlannerPreset(), Budget("cuda", int(0.8 * 2**30)))  # 51 MiB after the reserve
    assert all(c.estimated_memory_bytes <= tight.memory_budget_bytes for c in tight.configurations.values())
    # … until not even the smallest patch fits,
    with pytest.raises(UserError, match="GiB usable"):
        plan_experiment(f, PlannerPreset(), Budget("cuda", int(0.75 * 2**30) + 2**18))
    # or nothing is left after the reserve.
    with pytest.raises(UserError, match="leaves no memory"):
        plan_experiment(f, PlannerPreset(), Budget("cuda", int(0.5 * 2**30)))
    with pytest.raises(UserError, match="no cases"):
        plan_experiment(replace(f, cases=()), PlannerPreset(), GPU8)


def test_every_decision_has_a_reason():
    plan = plan_experiment(fp([(400, 512, 512)] * 5, [(0.8, 0.8, 0.8)] * 5), PlannerPreset(), CPU)
    for c in plan.configurations.values():
        for key in ("configuration", "spacing", "patch_size", "pooling", "kernel_sizes", "features", "batch_size",
                    "normalization", "resampling", "denoise", "memory", "time"):
            assert c.reasons.get(key), (c.name, key)


def test_lowres_coarsening_stops_at_the_spacing_cap():
    # a CPU with a tight time budget: the fullres patch is tiny, and 25 % coverage would need a
    # 10 mm grid; the search stops at 4× the fullres spacing instead
    f = fp([(200, 300, 300)] * 6, [(1.0, 0.8, 0.8)] * 6)
    preset = preset_from_dict({"name": "slow", "base_features": 16, "max_features_3d": 128,
                               "cpu_seconds_per_iteration": 0.3})
    plan = plan_experiment(f, preset, CPU)
    full, low = plan.configurations["3d_fullres"], plan.configurations["3d_lowres"]
    factor = max(lo / fu for lo, fu in zip(low.spacing_zyx_mm, full.spacing_zyx_mm))
    assert 3.5 < factor <= 4.0
    assert "coarsening stopped" in low.reasons["configuration"]


def test_cpu_preset_coarsens_3d_until_the_patch_sees_half_the_image():
    f = fp([(120, 256, 256)] * 10, [(1.5, 0.8, 0.8)] * 10)
    preset = load_preset("cpu")
    assert preset.min_patch_coverage_3d == 0.5
    cpu = plan_experiment(f, preset, CPU)
    nnunet_rule = plan_experiment(f, replace(preset, min_patch_coverage_3d=0.0), CPU)
    full, at_target = cpu.configurations["3d_fullres"], nnunet_rule.configurations["3d_fullres"]
    assert at_target.spacing_zyx_mm == (1.5, 0.8, 0.8) and patch_coverage(at_target) < 0.1
    assert patch_coverage(full) >= 0.5
    assert all(c > t for c, t in zip(full.spacing_zyx_mm, at_target.spacing_zyx_mm))
    assert max(c / t for c, t in zip(full.spacing_zyx_mm, at_target.spacing_zyx_mm)) <= preset.lowres_max_spacing_factor
    assert full.estimated_seconds_per_iteration <= preset.cpu_seconds_per_iteration and divisible(full)
    assert "min_patch_coverage_3d 50%" in full.reasons["configuration"]
    # the coarse 3d_fullres already sees enough: no cascade; 2d keeps the target spacing
    assert "3d_lowres" not in cpu.configurations and "3d_cascade_fullres" not in cpu.configurations
    assert "covers" in cpu.reasons["3d_lowres"]
    assert {"3d_lowres", "3d_cascade_fullres"} <= set(nnunet_rule.configurations)
    assert cpu.configurations["2d"].spacing_zyx_mm == at_target.spacing_zyx_mm
    # the GPU presets keep nnU-Net's rule: always the median spacing
    assert plan_experiment(f, PlannerPreset(), GPU8).configurations["3d_fullres"].spacing_zyx_mm == (1.5, 0.8, 0.8)
    with pytest.raises(UserError, match="min_patch_coverage_3d"):
        preset_from_dict({"name": "bad", "min_patch_coverage_3d": 1.0})


def test_cpu_preset_coarsens_the_convlstm_plan_too():
    f = fp([(40, 128, 128)] * 6, [(3.0, 1.5, 1.5)] * 6, modality="MRI", channel_names=("pre", "art", "pv", "del"),
           num_phases=4)
    c = plan_experiment(f, load_preset("cpu"), CPU).configurations["3d_convlstm"]
    assert c.network.architecture == "convlstm_unet" and patch_coverage(c) >= 0.5
    assert c.spacing_zyx_mm[1] > 1.5 and "min_patch_coverage_3d" in c.reasons["configuration"]
    # where even 4× coarser is not enough, the search stops there and says so
    big = fp([(64, 192, 192)] * 6, [(2.0, 1.2, 1.2)] * 6, modality="MRI", channel_names=("pre", "art", "pv", "del"),
             num_phases=4)
    capped = plan_experiment(big, load_preset("cpu"), CPU).configurations["3d_convlstm"]
    assert patch_coverage(capped) < 0.5 and "coarsening stopped at 4×" in capped.reasons["configuration"]
    assert max(s / t for s, t in zip(capped.spacing_zyx_mm, (2.0, 1.2, 1.2))) <= 4.0
