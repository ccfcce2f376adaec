"""U-Net topology from spacing and patch size: pooling per axis, kernel sizes, divisibility.

These are nnU-Net v2's rules (``get_pool_and_conv_props``), restated:

- an axis is pooled (stride 2) at a stage only while its feature map keeps at least
  ``2 · min_edge`` voxels and its current spacing is within 2× of the finest current spacing — so a
  5 mm axis waits until the 0.8 mm axes have been pooled to ≥ 2.5 mm before it is pooled too;
  a lone poolable axis needs ``3 · min_edge`` voxels (a single-axis pool is not worth a stage);
- a kernel is 3 along an axis once that axis's spacing is within 2× of the finest, 1 before
  (no mixing across thick slices at full resolution); the bottleneck is always 3 along every axis;
- the patch must be divisible by 2^(number of pools) per axis.

All shapes here are in the configuration's own axis order ((z, y, x) in 3D, (y, x) in 2D).
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Topology:
    strides: tuple[tuple[int, ...], ...]  # per stage; strides[0] is all ones
    kernel_sizes: tuple[tuple[int, ...], ...]  # per stage
    pools_per_axis: tuple[int, ...]

    @property
    def num_stages(self) -> int:
        return len(self.strides)

    @property
    def divisor(self) -> tuple[int, ...]:
        """The patch must be a multiple of this per axis (2^pools)."""
        return tuple(2**n for n in self.pools_per_axis)


def pool_and_kernel_topology(spacing: tuple[float, ...], patch: tuple[int, ...], min_edge: int = 4,
                             max_pools: int = 8) -> Topology:
    dim = len(spacing)
    current_spacing = [float(s) for s in spacing]
    current_size = [float(p) for p in patch]
    strides = [tuple([1] * dim)]
    kernels = []
    pools = [0] * dim
    kernel = [1] * dim
    while True:
        valid = [i for i in range(dim) if current_size[i] >= 2 * min_edge]
        if not valid:
            break
        finest_valid = min(current_spacing[i] for i in valid)
        valid = [i for i in valid if current_spacing[i] / finest_valid < 2 and pools[i] < max_pools]
        if not valid or (len(valid) == 1 and current_size[valid[0]] < 3 * min_edge):
            break
        finest = min(current_spacing)
        for d in range(dim):
            if kernel[d] != 3 and current_spacing[d] / finest < 2:
                kernel[d] = 3
        stride = [1] * dim
        for v in valid:
            stride[v] = 2
            pools[v] += 1
            current_spacing[v] *= 2
            current_size[v] = math.ceil(current_size[v] / 2)
        strides.append(tuple(stride))
        kernels.append(tuple(kernel))
    kernels.append(tuple([3] * dim))
    return Topology(tuple(strides), tuple(kernels), tuple(pools))


def fit_patch(spacing: tuple[float, ...], patch: tuple[int, ...], min_edge: int, max_pools: int
              ) -> tuple[tuple[int, ...], Topology]:
    """Round ``patch`` *down* to a multiple of its pooling divisor, re-deriving the topology until
    stable (fewer voxels can mean fewer pools). Never grows the patch beyond what was asked for —
    nnU-Net pads up instead, which can make the patch larger than the median image."""
    patch = tuple(max(1, int(p)) for p in patch)
    for _ in range(16):
        topo = pool_and_kernel_topology(spacing, patch, min_edge, max_pools)
        rounded = tuple(max(d, (p // d) * d) for p, d in zip(patch, topo.divisor))
        if rounded == patch:
            return patch, topo
        patch = rounded
    return patch, pool_and_kernel_topology(spacing, patch, min_edge, max_pools)


def initial_patch(spacing: tuple[float, ...], median_shape: tuple[int, ...], target_voxels: int) -> tuple[int, ...]:
    """A patch whose aspect ratio follows 1/spacing (isotropic in mm) with ``target_voxels`` voxels,
    clipped to the median image shape."""
    inv = [1.0 / s for s in spacing]
    scale = (target_voxels / math.prod(inv)) ** (1.0 / len(spacing))
    return tuple(max(1, min(round(i * scale), int(m))) for i, m in zip(inv, median_shape))


def shrink_patch(spacing: tuple[float, ...], patch: tuple[int, ...], median_shape: tuple[int, ...], min_edge: int,
                 max_pools: int, floor: tuple[int, ...] | None = None) -> tuple[tuple[int, ...], Topology] | None:
    """One step of nnU-Net's patch reduction: shrink the axis that is largest relative to the
    median shape by its current divisor (re-derived after the cut, so valid sizes such as 224 are
    not skipped); an axis that would fall below ``floor`` is passed over for the next one. Returns
    None when no axis can shrink further."""
    topo = pool_and_kernel_topology(spacing, patch, min_edge, max_pools)
    # Ties go to the last axis, as np.argsort(...)[-1] does in nnU-Net.
    order = sorted(range(len(patch)), key=lambda a: (patch[a] / max(median_shape[a], 1), a), reverse=True)
    for axis in order:
        step = topo.divisor[axis]
        if patch[axis] - step < 1:
            continue
        trial = list(patch)
        trial[axis] -= step
        step = pool_and_kernel_topology(spacing, tuple(trial), min_edge, max_pools).divisor[axis]
        new = list(patch)
        new[axis] = patch[axis] - step
        if new[axis] < max(1, floor[axis] if floor else 1):
            continue
        return fit_patch(spacing, tuple(new), min_edge, max_pools)
    return None
