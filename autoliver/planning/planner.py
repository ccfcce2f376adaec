"""The planner: fingerprint + preset + budget → plan. A pure function (no disk, no environment, no
printing); every decision carries a one-line reason.

The rules are nnU-Net v2's ExperimentPlanner, with these deliberate differences:

- memory is an estimate in bytes of the network autoliver trains (``memory.py``, checked against
  measurement), compared with the real budget — nnU-Net compares a count of feature-map elements
  with a reference value tuned for 8 GB GPUs;
- on a CPU a time model bounds the patch too, so a CPU plan can be trained on that CPU;
- the patch never exceeds the median image (rounded *down* to the pooling divisor; nnU-Net pads up);
- axes stay (z, y, x); nnU-Net transposes the coarsest axis first, which for (z, y, x) scans with
  the coarsest spacing along z is the same thing. 2d slices along z;
- the batch is the largest that fits the memory (and CPU time) budget, then capped at 5 % of the
  dataset's voxels — nnU-Net scales a reference batch by its reference value.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from autoliver.errors import UserError
from autoliver.fingerprint.fingerprint import Fingerprint
from autoliver.planning import memory
from autoliver.planning.budget import DEFAULT_CPU_SPEED, Budget
from autoliver.planning.plan import (
    CONFIGURATION_NAMES,
    LIVER_ROI_NAMES,
    SCHEMA_VERSION,
    ChannelNormalization,
    Configuration,
    Denoise,
    NetworkSpec,
    Plan,
    Resampling,
)
from autoliver.planning.presets import PlannerPreset
from autoliver.planning.topology import Topology, fit_patch, initial_patch, shrink_patch

GIB = 2**30


def _fmt(values, digits: int = 3) -> str:
    return "×".join(f"{round(float(v), digits):g}" for v in values)


def fullres_spacing(spacings: np.ndarray, shapes: np.ndarray, threshold: float) -> tuple[tuple[float, ...], str]:
    """Median spacing per axis; an axis > ``threshold``× coarser than the others that also has
    ``threshold``× fewer voxels takes its 10th percentile instead (nnU-Net's anisotropy rule)."""
    target = np.percentile(spacings, 50, axis=0)
    size = np.percentile(shapes, 50, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(3) if i != worst]
    aniso_spacing = target[worst] > threshold * max(target[i] for i in others)
    aniso_voxels = size[worst] * threshold < min(size[i] for i in others)
    reason = f"median spacing {_fmt(target)} mm"
    if aniso_spacing and aniso_voxels:
        p10 = float(np.percentile(spacings[:, worst], 10))
        floor = max(target[i] for i in others)
        new = max(p10, floor + 1e-5) if p10 < floor else p10
        axis = "zyx"[worst]
        reason += (f"; axis {axis} is > {threshold:g}× coarser with > {threshold:g}× fewer voxels, so it takes its "
                   f"10th percentile {new:.3g} mm (less interpolation loss on the thin-slice cases)")
        target[worst] = new
    return tuple(float(t) for t in target), reason


def resampled_shapes(spacings: np.ndarray, shapes: np.ndarray, target) -> np.ndarray:
    return np.rint(shapes * spacings / np.asarray(target)).astype(np.int64)


def patch_coverage(config: Configuration) -> float:
    """The fraction of the configuration's median image one patch covers."""
    return math.prod(config.patch_size) / math.prod(config.median_shape_zyx)


def orientation_reason(fp: Fingerprint) -> str:
    """What the plan says about voxel order: the files' orientations and that all go to one."""
    counts: dict[str, int] = {}
    for c in fp.cases:
        counts[c.orientation] = counts.get(c.orientation, 0) + 1
    stored = ", ".join(f"{n} {o}" for o, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return ("canonical: every case is turned to one voxel order (axial slices first, then front→back and "
            "right→left: ITK's identity direction) by axis permutations and flips only, and predictions are "
            f"turned back to each file's own order; the files are stored {stored or 'in no known order'}")


def _is_anisotropic(spacing, threshold: float) -> bool:
    return max(spacing) / min(spacing) > threshold


class _Planner:
    """One planning run; holds what all configurations share."""

    def __init__(self, fingerprint: Fingerprint, preset: PlannerPreset, budget: Budget):
        if not fingerprint.cases:
            raise UserError("fingerprint: has no cases; a plan needs at least one labelled training case.")
        if budget.device not in ("cuda", "cpu"):
            raise UserError(f"budget.device: must be 'cuda' or 'cpu', got {budget.device!r}")
        self.fp, self.preset, self.budget = fingerprint, preset, budget
        self.spacings = np.array([c.spacing_zyx_mm for c in fingerprint.cases], dtype=np.float64)
        self.shapes = np.array([c.shape_after_crop_zyx for c in fingerprint.cases], dtype=np.float64)
        if (self.spacings <= 0).any() or (self.shapes <= 0).any():
            raise UserError("fingerprint: every case needs positive spacings and a non-empty crop; "
                            "re-run autoliver extract_fingerprint --overwrite.")
        self.num_classes = len(fingerprint.labels)
        self.channels = len(fingerprint.channel_names)
        self.cuda = budget.device == "cuda"
        if self.cuda:
            usable = budget.memory_bytes * preset.gpu_memory_fraction - preset.gpu_reserve_gb * GIB
        else:
            usable = budget.memory_bytes * preset.cpu_memory_fraction
        self.usable = int(usable)
        if self.usable <= 0:
            raise UserError(f"budget: {budget.describe()} leaves no memory for training after the preset's "
                            f"reserve; use --gpu-memory-gb with more memory or a preset with a smaller reserve.")
        self.speed = budget.cpu_speed or DEFAULT_CPU_SPEED
        self.mixed = preset.mixed_precision_gpu if self.cuda else False

    # ---- costs -------------------------------------------------------------------------------
    def cost(self, config: Configuration) -> tuple[int, float]:
        mem = memory.estimate_training_bytes(config, device=self.budget.device, mixed_precision=self.mixed,
                                             optimizer_states=self.preset.optimizer_states)
        secs = 0.0 if self.cuda else memory.estimate_seconds_per_iteration(config, self.speed)
        return mem, secs

    def fits(self, config: Configuration, time_too: bool = True) -> bool:
        mem, secs = self.cost(config)
        if mem > self.usable:
            return False
        return self.cuda or not time_too or secs <= self.preset.cpu_seconds_per_iteration

    # ---- pieces of a configuration -----------------------------------------------------------
    def network(self, topo: Topology, dims: int, architecture: str, in_channels: int) -> NetworkSpec:
        cap = self.preset.max_features_3d if dims == 3 else self.preset.max_features_2d
        feats = tuple(min(cap, self.preset.base_features * 2**i) for i in range(topo.num_stages))
        return NetworkSpec(architecture=architecture, dims=dims, in_channels=in_channels, num_classes=self.num_classes,
                           features_per_stage=feats, kernel_sizes=topo.kernel_sizes, strides=topo.strides,
                           convs_per_stage=self.preset.convs_per_stage, downsampling=self.preset.downsampling,
                           deep_supervision=self.preset.deep_supervision)

    def normalization(self) -> tuple[tuple[ChannelNormalization, ...], str]:
        p, fp = self.preset, self.fp
        scheme = p.normalization_ct if fp.modality == "CT" else p.normalization_mri
        norms, reasons = [], []
        for name, st in zip(fp.channel_names, fp.foreground_intensity):
            if scheme == "ct":
                if not st.std > 0:
                    raise UserError(f"fingerprint: channel {name!r} has no foreground intensity statistics (no "
                                    "labelled voxels?); the 'ct' normalisation needs them. Check labelsTr.")
                norms.append(ChannelNormalization("ct", st.percentile_00_5, st.percentile_99_5, st.mean, st.std))
                reasons.append(f"{name}: clip to foreground p0.5/p99.5 [{st.percentile_00_5:.4g}, "
                               f"{st.percentile_99_5:.4g}], z-score with foreground mean {st.mean:.4g} / std {st.std:.4g}")
            elif scheme in ("hu_window", "liver_zscore", "histeq"):
                lo, hi = (p.hu_window if fp.modality == "CT" else (st.percentile_00_5, st.percentile_99_5))
                norms.append(ChannelNormalization(scheme, float(lo), float(hi)))
                what = {"hu_window": "scale to [0, 1]",
                        "liver_zscore": "z-score with the case's label-free liver estimate (median, IQR of the "
                                        "body voxels in the window), the same in training and prediction",
                        "histeq": "histogram equalisation to [0, 1]"}[scheme]
                src = "preset window" if fp.modality == "CT" else "foreground p0.5/p99.5"
                reasons.append(f"{name}: clip to {src} [{lo:.4g}, {hi:.4g}], {what}")
            elif scheme == "zscore":
                norms.append(ChannelNormalization("zscore"))
                reasons.append(f"{name}: per-case z-score over the body ({fp.modality} intensities have no fixed scale)")
            else:
                norms.append(ChannelNormalization("none"))
                reasons.append(f"{name}: none (preset)")
        return tuple(norms), "; ".join(reasons) + f" [preset {p.name}: {fp.modality} → {scheme}]"

    def resampling(self, target) -> tuple[Resampling, str]:
        t = self.preset.anisotropy_threshold
        median = tuple(np.median(self.spacings, axis=0))
        sep = _is_anisotropic(median, t) or _is_anisotropic(target, t)
        aa = self.preset.anti_aliasing
        why_aa = (f"; images smoothed before they are made coarser (σ = (f − 1) / 2 voxels along an axis made f "
                  f"times coarser; preset {self.preset.name}, anti_aliasing)" if aa else "")
        if sep:
            return (Resampling(order_image=3, order_label=1, separate_z=True, order_z_image=0, order_z_label=0,
                               anti_aliasing=aa),
                    f"spacing ratio > {t:g} (median {_fmt(median)} → {_fmt(target)} mm): in-plane cubic / linear, "
                    "through-plane nearest, so thick slices are not smeared into each other" + why_aa)
        return (Resampling(order_image=3, order_label=1, anti_aliasing=aa),
                f"near-isotropic (median {_fmt(median)} → {_fmt(target)} mm): cubic for images, linear for labels"
                + why_aa)

    def denoise(self, target) -> tuple[Denoise, str]:
        p, fp = self.preset, self.fp
        noise = float(fp.noise_sigma[0]) if fp.noise_sigma else 0.0
        domain = round(max(1.0, float(min(target))), 3)
        strength = round(2.0 * noise, 3) if noise > 0 else 50.0
        if p.denoise == "off":
            return Denoise(enabled=False), f"off (preset {p.name}); noise σ {noise:.3g}"
        if p.denoise == "on":
            return (Denoise(True, domain, strength),
                    f"on (preset {p.name}): bilateral, domain σ {domain:g} mm, range σ {strength:g} (2 × noise σ)")
        if noise <= 0:
            return Denoise(enabled=False), "off: no noise estimate (no homogeneous liver region was measurable)"
        if fp.modality == "CT":
            on = noise > p.denoise_min_noise_ct_hu
            rule = f"liver noise σ {noise:.3g} HU {'>' if on else '≤'} {p.denoise_min_noise_ct_hu:g} HU"
        else:
            level = float(np.median([c.liver_mean[0] for c in fp.cases if c.liver_mean])) if fp.cases else 0.0
            rel = noise / abs(level) if level else 0.0
            on = rel > p.denoise_min_noise_mri_relative
            rule = f"liver noise σ / mean {rel:.3g} {'>' if on else '≤'} {p.denoise_min_noise_mri_relative:g}"
        if not on:
            return Denoise(enabled=False), f"off: {rule}"
        return (Denoise(True, domain, strength),
                f"on: {rule}; bilateral, domain σ {domain:g} mm (≥ 1 mm, one finest voxel), range σ {strength:g} "
                "(2 × noise σ: smooths noise, keeps edges of larger contrast)")

    # ---- one configuration -------------------------------------------------------------------
    def configuration(self, name: str, spacing3, median3, approx_voxels: float, *, architecture: str,
                      in_channels: int, phases: int = 1, previous_stage: str = "") -> Configuration:
        p = self.preset
        dims = 2 if name.startswith("2d") else 3
        spacing = tuple(spacing3[-dims:])
        median = tuple(int(m) for m in median3[-dims:])
        target_voxels = p.initial_patch_pixels_2d if dims == 2 else p.initial_patch_voxels_3d
        patch, topo = fit_patch(spacing, initial_patch(spacing, median, target_voxels), p.min_feature_map_edge,
                                p.max_pools_per_axis)
        context_key = {"2d": "context_slices_2d", "2d_liver_roi": "context_slices_2d_liver_roi"}.get(name)
        context = getattr(p, context_key) if context_key else 0
        in_channels += 2 * context * self.channels  # 2.5D: the neighbours of every image channel
        norms, norm_reason = self.normalization()
        resampling, resampling_reason = self.resampling(spacing3)
        denoise, denoise_reason = self.denoise(spacing3)

        def build(patch, topo, batch) -> Configuration:
            return Configuration(
                name=name, data_identifier="", spacing_zyx_mm=tuple(float(s) for s in spacing3),
                median_shape_zyx=tuple(int(m) for m in median3), patch_size=tuple(int(x) for x in patch),
                batch_size=int(batch), normalization=norms, resampling=resampling, denoise=denoise,
                network=self.network(topo, dims, architecture, in_channels), phases=phases,
                previous_stage=previous_stage, context_slices=context)

        floor = tuple(min(m, 2 * p.min_feature_map_edge) for m in median)
        shrunk = 0
        while not self.fits(build(patch, topo, p.min_batch_size)):
            step = shrink_patch(spacing, patch, median, p.min_feature_map_edge, p.max_pools_per_axis, floor)
            if step is None or any(a < f for a, f in zip(step[0], floor)):
                break
            patch, topo = step
            shrunk += 1
        config = build(patch, topo, p.min_batch_size)
        mem, secs = self.cost(config)
        if mem > self.usable:
            raise UserError(f"{name}: even a {_fmt(patch)} patch with batch {p.min_batch_size} needs "
                            f"{mem / GIB:.2f} GiB, more than the {self.usable / GIB:.2f} GiB usable "
                            f"({self.budget.describe()}). Use --preset lowmem or cpu, or more memory.")
        time_note = ""
        if not self.fits(config):
            time_note = (f"; even the smallest patch takes ≈ {secs:.2f} s per iteration, over the "
                         f"{p.cpu_seconds_per_iteration:g} s budget")

        # Batch: the largest that fits, at most max_dataset_fraction of the dataset's voxels.
        cap = round(approx_voxels * p.max_dataset_fraction_per_batch / math.prod(patch))
        cap = max(p.min_batch_size, min(p.max_batch_size, cap))
        lo, hi = p.min_batch_size, cap
        while lo < hi:  # memory and time both grow with the batch: binary search
            mid = (lo + hi + 1) // 2
            if self.fits(replace(config, batch_size=mid)):
                lo = mid
            else:
                hi = mid - 1
        config = replace(config, batch_size=lo)
        mem, secs = self.cost(config)
        limit = ("memory" if not self.fits(replace(config, batch_size=lo + 1), time_too=False)
                 else "time per iteration" if not self.cuda else "")
        if lo == cap and cap > p.min_batch_size:
            batch_reason = f"{lo}: capped so one batch covers ≤ {p.max_dataset_fraction_per_batch:.0%} of the dataset's voxels"
        elif lo == p.min_batch_size:
            batch_reason = f"{lo}: the minimum ({'the patch was shrunk to fit' if shrunk else 'the patch fills the budget'})"
        else:
            batch_reason = f"{lo}: the most that fits the {limit or 'budget'}"

        net = config.network
        axes = "zyx"[-dims:]
        pools = [sum(1 for s in net.strides if s[a] == 2) for a in range(dims)]
        reasons = {
            "spacing": f"{_fmt(spacing3)} mm (z, y, x)",
            "patch_size": (f"{_fmt(patch)} ({axes}): aspect 1/spacing from {_fmt(initial_patch(spacing, median, target_voxels))}, "
                           f"clipped to the median image {_fmt(median)}, divisible by {_fmt(2**n for n in pools)}"
                           + (f", shrunk {shrunk}× (largest axis relative to the median first) to fit the budget" if shrunk else "")),
            "pooling": (f"{len(net.strides) - 1} stages; pools per axis {dict(zip(axes, pools))}: an axis is pooled while "
                        f"it keeps ≥ {2 * p.min_feature_map_edge} voxels and its spacing is within 2× of the finest"),
            "kernel_sizes": "3 along axes within 2× of the finest spacing, 1 across thicker ones until pooling catches up",
            **({"context_slices": (f"{context}: each slice with {context} neighbour(s) on each side as extra channels "
                                   f"(2.5D, {2 * context + 1} slices = {(2 * context + 1) * spacing3[0]:.3g} mm; "
                                   f"preset {p.name}, {context_key})")} if context else {}),
            "features": f"{_fmt(net.features_per_stage, 0)}: {p.base_features}·2^stage, capped at "
                        f"{p.max_features_3d if dims == 3 else p.max_features_2d}",
            "batch_size": batch_reason,
            "normalization": norm_reason,
            "resampling": resampling_reason,
            "denoise": denoise_reason,
            "memory": (f"≈ {mem / GIB:.2f} GiB estimated of {self.usable / GIB:.2f} GiB usable on "
                       f"{'the GPU (16-bit activations)' if self.cuda and self.mixed else self.budget.device}"),
            "time": ("GPU: not modelled" if self.cuda else
                     f"≈ {secs:.2f} s per iteration on this CPU (budget {p.cpu_seconds_per_iteration:g} s){time_note}"),
        }
        return replace(config, estimated_memory_bytes=int(mem), estimated_seconds_per_iteration=round(float(secs), 4),
                       reasons=reasons)

    # ---- the whole plan ----------------------------------------------------------------------
    def plan(self) -> Plan:
        p, fp = self.preset, self.fp
        wanted = set(p.configurations)
        plan_reasons: dict[str, str] = {}
        target, plan_reasons["target_spacing"] = fullres_spacing(self.spacings, self.shapes, p.anisotropy_threshold)
        new_shapes = resampled_shapes(self.spacings, self.shapes, target)
        median = tuple(int(round(m)) for m in np.median(new_shapes, axis=0))
        approx_voxels = float(math.prod(median)) * fp.num_cases
        plan_reasons["median_shape"] = (f"{_fmt(median)} voxels (z, y, x) after cropping ({fp.crop_rule}) and "
                                        f"resampling {fp.num_cases} case(s)")
        plan_reasons["orientation"] = orientation_reason(fp)
        arch = p.architecture
        configs: dict[str, Configuration] = {}
        is3d = median[0] > 1
        if not is3d:
            plan_reasons["3d"] = "skipped: the images are 2D (median of one slice)"
        fullres = None
        if is3d and ("3d_fullres" in wanted or "3d_lowres" in wanted):
            fullres, why = self.full_resolution("3d_fullres", target, median, approx_voxels, architecture=arch,
                                                in_channels=self.channels)
            if "3d_fullres" in wanted:
                configs["3d_fullres"] = replace(fullres, reasons={"configuration": f"3D U-Net {why}", **fullres.reasons})
        if fullres is not None and "3d_lowres" in wanted:
            lowres = self.lowres(fullres, plan_reasons)
            if lowres is not None:
                configs["3d_lowres"] = lowres
                if "3d_cascade_fullres" in wanted:
                    cascade = self.configuration("3d_cascade_fullres", fullres.spacing_zyx_mm,
                                                 fullres.median_shape_zyx, approx_voxels,
                                                 architecture=arch, in_channels=self.channels + self.num_classes - 1,
                                                 previous_stage="3d_lowres")
                    configs["3d_cascade_fullres"] = replace(cascade, reasons={
                        "configuration": "second stage of the cascade: 3d_fullres with 3d_lowres's prediction "
                                         f"(one-hot, {self.num_classes - 1} foreground channel(s)) as extra input",
                        **cascade.reasons})
        if "2d" in wanted:
            c2 = self.configuration("2d", target, median, approx_voxels, architecture=arch, in_channels=self.channels)
            configs["2d"] = replace(c2, reasons={"configuration": "2D U-Net on axial (z) slices at the target in-plane spacing",
                                                 **c2.reasons})
        if "3d_convlstm" in wanted:
            if fp.num_phases > 1 and self.channels != fp.num_phases:
                plan_reasons["3d_convlstm"] = (f"skipped: {self.channels} channels for {fp.num_phases} phases; the "
                                               "ConvLSTM network takes one channel per phase")
            elif fp.num_phases > 1 and is3d:
                # The network's input channels are the phases, one image channel each.
                try:
                    cl, why = self.full_resolution("3d_convlstm", target, median, approx_voxels,
                                                   architecture="convlstm_unet", in_channels=fp.num_phases,
                                                   phases=fp.num_phases)
                except UserError as e:  # an extra configuration that does not fit is skipped, not fatal
                    plan_reasons["3d_convlstm"] = f"skipped: {e}"
                else:
                    configs["3d_convlstm"] = replace(cl, reasons={
                        "configuration": f"{fp.num_phases} time phases: a shared 3D encoder per phase, ConvLSTM "
                                         f"over the phases, one decoder; {why}", **cl.reasons})
            else:
                plan_reasons["3d_convlstm"] = "skipped: the dataset has one time phase" if fp.num_phases <= 1 else \
                    "skipped: 2D images"
        if any(n in wanted for n in LIVER_ROI_NAMES):
            if is3d:
                configs.update(self.liver_roi(configs, target, median, plan_reasons))
            else:
                for n in LIVER_ROI_NAMES:
                    plan_reasons[n] = "skipped: 2D images"
        configs = self.assign_data_identifiers(configs)
        ordered = {n: configs[n] for n in CONFIGURATION_NAMES if n in configs}
        skipped = [n for n in p.configurations if n not in ordered and n not in plan_reasons
                   and not (n == "3d_cascade_fullres" and "3d_lowres" in plan_reasons)]
        for n in skipped:
            plan_reasons.setdefault(n, "skipped: does not apply to this dataset")
        return Plan(schema_version=SCHEMA_VERSION, dataset_name=fp.dataset_name, preset=p.name, modality=fp.modality,
                    channel_names=tuple(fp.channel_names), labels=dict(fp.labels), num_phases=fp.num_phases,
                    device=self.budget.device, memory_budget_bytes=self.usable, configurations=ordered,
                    reasons=plan_reasons, phases_in_file=fp.phases_in_file, orientation="canonical")

    def coarsened(self, name: str, target, median, threshold: float, **kwargs) -> tuple[Configuration | None, bool]:
        """nnU-Net's 3d_lowres search: coarsen the spacing by ``lowres_spacing_step`` — only the axes more
        than 2× finer than the coarsest while there are such, then all — and plan ``name`` again at
        the coarser grid, until its patch covers ≥ ``threshold`` of the median image there or the
        spacing would pass ``lowres_max_spacing_factor`` × ``target``. (configuration or None, capped)."""
        p = self.preset
        spacing = np.array(target, dtype=np.float64)
        config = None
        for _ in range(200):
            if config is not None and patch_coverage(config) >= threshold:
                return config, False
            fine = spacing.max() / spacing > 2
            step = np.where(fine, p.lowres_spacing_step, 1.0) if fine.any() else np.full(3, p.lowres_spacing_step)
            if (spacing * step / np.asarray(target)).max() > p.lowres_max_spacing_factor:
                break
            spacing = spacing * step
            shape = np.asarray(target) / spacing * np.asarray(median)
            config = self.configuration(name, tuple(float(s) for s in spacing), tuple(int(round(s)) for s in shape),
                                        float(np.prod(shape)) * self.fp.num_cases, **kwargs)
        return config, config is not None

    def full_resolution(self, name: str, target, median, approx_voxels: float, **kwargs) -> tuple[Configuration, str]:
        """``name`` at the target spacing — or, where the preset asks for a minimum patch coverage
        (``min_patch_coverage_3d``, the ``cpu`` preset) that the budget's patch misses there, at the
        coarser spacing whose patch covers it. Returns (configuration, why this spacing)."""
        config = self.configuration(name, target, median, approx_voxels, **kwargs)
        want = self.preset.min_patch_coverage_3d
        coverage = patch_coverage(config)
        if coverage >= want:
            return config, "at the target spacing"
        coarse, capped = self.coarsened(name, target, median, want, **kwargs)
        if coarse is None:
            return config, "at the target spacing"
        factor = max(a / b for a, b in zip(coarse.spacing_zyx_mm, target))
        return coarse, (f"at a spacing up to {factor:.2f}× coarser than the target: there the patch the budget allows "
                        f"covers only {coverage:.1%} of the median image, here {patch_coverage(coarse):.0%} (preset "
                        f"{self.preset.name}: min_patch_coverage_3d {want:.0%}"
                        + (f", coarsening stopped at {self.preset.lowres_max_spacing_factor:g}×" if capped else "") + ")")

    def lowres(self, fullres: Configuration, plan_reasons) -> Configuration | None:
        """3d_lowres: while the 3d_fullres patch covers < ``lowres_creation_threshold`` of the median
        image, plan at a coarser spacing (:meth:`coarsened`) — nnU-Net's first cascade stage."""
        p = self.preset
        coverage = patch_coverage(fullres)
        if coverage >= p.lowres_creation_threshold:
            plan_reasons["3d_lowres"] = (f"skipped: the 3d_fullres patch covers {coverage:.0%} of the median image "
                                         f"(≥ {p.lowres_creation_threshold:.0%})")
            return None
        target, median = fullres.spacing_zyx_mm, fullres.median_shape_zyx
        lowres, capped = self.coarsened("3d_lowres", target, median, p.lowres_creation_threshold,
                                        architecture=p.architecture, in_channels=self.channels)
        if lowres is None:
            plan_reasons["3d_lowres"] = "skipped: the spacing cannot be coarsened within lowres_max_spacing_factor"
            return None
        ratio = math.prod(median) / math.prod(lowres.median_shape_zyx)
        if ratio < p.lowres_min_shape_ratio:
            plan_reasons["3d_lowres"] = (f"skipped: its images would be only {ratio:.2f}× smaller than 3d_fullres's "
                                         f"(< {p.lowres_min_shape_ratio:g}×)")
            return None
        note = (f" (coarsening stopped at {p.lowres_max_spacing_factor:g}× the fullres spacing)" if capped else "")
        return replace(lowres, reasons={
            "configuration": (f"the 3d_fullres patch covers only {coverage:.1%} of the median image (< "
                              f"{p.lowres_creation_threshold:.0%}): first cascade stage at a coarser spacing, whose "
                              f"patch covers {patch_coverage(lowres):.0%}{note}"), **lowres.reasons})

    def liver_roi(self, configs: dict[str, Configuration], target, median, plan_reasons) -> dict[str, Configuration]:
        """The lesion stages: planned on the liver's box (+ margin) at the target spacing, proposed when
        that box is much smaller than the body crop; their first stage is a configuration of this plan
        (3d_fullres, else 2d), and any trained configuration can stand in for it at prediction."""
        p, fp = self.preset, self.fp
        wanted = [n for n in LIVER_ROI_NAMES if n in p.configurations]
        boxes = [(c, c.liver_bbox_zyx) for c in fp.cases if c.liver_bbox_zyx is not None]
        first = next((n for n in ("3d_fullres", "2d", "3d_lowres") if n in configs), "")

        def skip(why: str) -> dict:
            for n in wanted:
                plan_reasons[n] = f"skipped: {why}"
            return {}

        if not boxes:
            return skip("the fingerprint has no liver boxes (no labelled voxels, or a fingerprint from an older "
                        "autoliver: re-run extract_fingerprint --overwrite)")
        if not first:
            return skip("no first stage to find the liver (plan 3d_fullres or 2d too)")
        margin = p.liver_roi_margin_mm
        floor = p.liver_roi_min_spacing_mm
        spacing = (float(target[0]), *(max(float(t), floor) for t in target[1:]))
        shapes = []
        for case, box in boxes:  # the box in mm, grown by the margin, within the body crop
            crop_mm = np.asarray(case.shape_after_crop_zyx) * np.asarray(case.spacing_zyx_mm)
            mm = np.array([b - a for a, b in box]) * np.asarray(case.spacing_zyx_mm) + 2 * margin
            shapes.append(np.minimum(mm, crop_mm) / np.asarray(spacing))
        box_median = tuple(max(1, int(round(m))) for m in np.median(np.array(shapes), axis=0))
        at_target = np.median(np.array(shapes), axis=0) * np.asarray(spacing) / np.asarray(target)
        fraction = math.prod(at_target) / math.prod(median)
        if fraction > p.liver_roi_max_box_fraction:
            return skip(f"the liver box (+ {margin:g} mm) holds {fraction:.0%} of the median body crop's voxels "
                        f"(> {p.liver_roi_max_box_fraction:.0%}): cropping to it saves little")
        recipe, recipe_reason = self.lesion_recipe()
        approx_voxels = float(math.prod(box_median)) * fp.num_cases
        out = {}
        for name in wanted:
            try:
                c = self.configuration(name, spacing, box_median, approx_voxels, architecture=p.architecture,
                                       in_channels=self.channels + 1, previous_stage=first)
            except UserError as e:  # does not fit the budget: skipped, the first stages stand
                plan_reasons[name] = f"skipped: {e}"
                continue
            dims = "3D" if name.startswith("3d") else "2D (axial slices)"
            out[name] = replace(c, roi_margin_mm=float(margin), recipe=recipe, reasons={
                "configuration": (f"lesion stage, {dims} U-Net on the liver's box + {margin:g} mm at "
                                  + ("the target spacing " if spacing == tuple(target) else
                                     f"{_fmt(spacing)} mm (in-plane at least {floor:g} mm, preset {p.name}) ")
                                  + f"(median box {_fmt(box_median)} voxels, {fraction:.0%} of the median body crop "
                                  f"{_fmt(median)}; ≤ {p.liver_roi_max_box_fraction:.0%}); input: the image and the "
                                  f"liver mask of a first stage ({first} planned; any trained configuration can be "
                                  "used), trained on the reference liver made to look like a first stage's"),
                "recipe": recipe_reason, **c.reasons})
        return out

    def lesion_recipe(self) -> tuple[str, str]:
        """The training recipe for the lesion stages, from the fingerprint's tumour statistics."""
        p, fp = self.preset, self.fp
        diameters = [d for c in fp.cases for d in c.labels.tumour_diameters_mm]
        if not diameters:
            return "", "default: the dataset has no tumours"
        tumour = sum(v for c in fp.cases for k, v in c.labels.voxels.items()
                     if k.lower() in ("tumour", "tumor", "lesion", "liver_tumour", "liver_tumor", "cancer"))
        organ = sum(c.labels.liver_ml / max(float(np.prod(c.spacing_zyx_mm)) / 1000.0, 1e-12) for c in fp.cases)
        share = tumour / organ if organ > 0 else 0.0
        small = float(np.median(diameters))
        counts = [c.labels.tumour_count for c in fp.cases]
        facts = (f"{len(diameters)} lesions in {sum(1 for n in counts if n)} of {len(counts)} cases, median diameter "
                 f"{small:.1f} mm, {sum(d < 10 for d in diameters)} under 10 mm, tumour {share:.1%} of the liver volume")
        if small <= p.lesion_recipe_max_median_diameter_mm or share <= p.lesion_recipe_max_tumour_fraction:
            return p.lesion_recipe, (f"{p.lesion_recipe}: {facts} (median ≤ {p.lesion_recipe_max_median_diameter_mm:g} mm "
                                     f"or share ≤ {p.lesion_recipe_max_tumour_fraction:.0%}): small, imbalanced targets")
        return "", f"default: {facts}: lesions large enough for nnU-Net's sampling and loss"

    def assign_data_identifiers(self, configs: dict[str, Configuration]) -> dict[str, Configuration]:
        """Configurations with identical preprocessing share one preprocessed folder."""
        groups: dict[tuple, str] = {}
        out = {}
        for name in ("3d_fullres", "3d_lowres", "2d", "3d_cascade_fullres", "3d_convlstm", *LIVER_ROI_NAMES):
            if name not in configs:
                continue
            c = configs[name]
            key = (c.spacing_zyx_mm, c.normalization, c.resampling, c.denoise, c.roi_margin_mm)
            ident = groups.setdefault(key, f"{self.preset.name}_{name}")
            out[name] = replace(c, data_identifier=ident)
        return out


def plan_experiment(fingerprint: Fingerprint, preset: PlannerPreset, budget: Budget) -> Plan:
    """Plan every configuration that applies to ``fingerprint`` under ``preset`` and ``budget``."""
    return _Planner(fingerprint, preset, budget).plan()
