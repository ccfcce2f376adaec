"""Sliding-window prediction of one preprocessed case, with bounded memory.

The case (C, z, y, x) is covered by patch-sized tiles whose starts are spread evenly, nnU-Net's
way: ``ceil((size - patch) / (step_size * patch)) + 1`` tiles per axis, the first at 0 and the
last flush with the end, so every voxel is covered and no tile leaves the volume. Each tile's
logits are weighted by a Gaussian importance map (centre voxels are more reliable than border
voxels) and the weighted logits are averaged.

Two properties keep memory bounded on scans of any size:

* The Gaussian map is separable (a product of 1D Gaussians) and the tiles form a Cartesian grid,
  so the sum of weights at a voxel is the product of three 1D sums. No weight volume is stored;
  each tile is divided by its normaliser before it is added.
* Tiles run in z order. Once every tile starting at some z has run, all slices before the next
  start are final; they leave the float32 accumulator (one patch deep) for the output, which may
  be float16. Peak memory is about ``K × patch_z × y × x × 4`` bytes plus the output.

2D networks (patch (y, x)) slide over the slices: several slices go through the network as one
batch, and each slab of slices is finished before the next. A 2.5D network (``context_slices`` k)
gets each slice with its k neighbours on each side as channels, stacked slab by slab as training
stacked them (:func:`context_indices`).

Mirroring test-time augmentation averages the logits of every combination of flips along
``mirror_axes`` (patch axes: 0, 1, 2 = z, y, x for a 3D patch; 0, 1 = y, x for a 2D patch).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from autoliver import progress

SIGMA_SCALE = 1.0 / 8  # σ of the importance map, as a fraction of the patch size (nnU-Net's value)
# Input voxels per forward pass when tiles (3D) or slices (2D) are batched: ~4 MB of float32.
BATCH_INPUT_VOXELS = 1 << 20


def tile_starts(size: int, patch: int, step_size: float) -> list[int]:
    """Start indices of the tiles along one axis (``size >= patch``).

    The first start is 0, the last ``size - patch``, and neighbours are at most ``step_size × patch``
    apart, so the tiles cover ``[0, size)`` without leaving it.
    """
    if patch <= 0 or size < patch:
        raise ValueError(f"tile_starts: need 0 < patch <= size, got patch={patch}, size={size}")
    if not 0 < step_size <= 1:
        raise ValueError(f"tile_starts: step_size must be in (0, 1], got {step_size}")
    target_step = step_size * patch
    # At most one tile per possible start: a step below one voxel would only repeat tiles.
    num = min(int(math.ceil((size - patch) / target_step)) + 1, size - patch + 1)
    if num == 1:
        return [0]
    actual = (size - patch) / (num - 1)
    return [int(round(actual * i)) for i in range(num)]


def gaussian_1d(patch: int, sigma_scale: float = SIGMA_SCALE) -> np.ndarray:
    """Normalised 1D Gaussian over one patch axis (max 1, symmetric about the patch centre)."""
    centre = (patch - 1) / 2.0
    sigma = max(patch * sigma_scale, 1e-6)
    x = np.arange(patch, dtype=np.float64)
    g = np.exp(-0.5 * ((x - centre) / sigma) ** 2)
    return g / g.max()


def importance_map(patch_size: Sequence[int], sigma_scale: float = SIGMA_SCALE) -> np.ndarray:
    """The full Gaussian importance map (float32, ``patch_size``): outer product of 1D Gaussians."""
    out = np.ones((), dtype=np.float64)
    for p in patch_size:
        out = np.multiply.outer(out, gaussian_1d(int(p), sigma_scale))
    return out.astype(np.float32)


def weight_sum_1d(size: int, patch: int, starts: Sequence[int], sigma_scale: float = SIGMA_SCALE,
                  weights: np.ndarray | None = None) -> np.ndarray:
    """Sum over tiles of the 1D Gaussian (or ``weights``) at every index of one axis (float64, > 0 where covered)."""
    g = gaussian_1d(patch, sigma_scale) if weights is None else weights
    total = np.zeros(size, dtype=np.float64)
    for s in starts:
        total[s:s + patch] += g
    return total


def _mirror_combinations(mirror_axes: Iterable[int] | None, dims: int) -> list[tuple[int, ...]]:
    """Every subset of the mirror axes, as tensor dims of a (B, C, *patch) batch."""
    if not mirror_axes:
        return [()]
    axes = sorted(set(int(a) for a in mirror_axes))
    for a in axes:
        if not 0 <= a < dims:
            raise ValueError(f"predict_logits: mirror_axes must be patch axes in 0..{dims - 1}, got {tuple(mirror_axes)}")
    dims_t = [a + 2 for a in axes]
    return [c for r in range(len(dims_t) + 1) for c in itertools.combinations(dims_t, r)]


def _forward(network, batch: torch.Tensor, flips: list[tuple[int, ...]], device: torch.device) -> torch.Tensor:
    """Logits of ``batch`` averaged over the mirror combinations (float32)."""
    use_amp = device.type == "cuda"
    total = None
    for f in flips:
        x = torch.flip(batch, f) if f else batch
        with torch.autocast(device.type, enabled=use_amp):
            y = network(x)
        if isinstance(y, (list, tuple)):  # a network left in deep-supervision mode: full resolution first
            y = y[0]
        y = y.float()
        if f:
            y = torch.flip(y, f)
        total = y if total is None else total.add_(y)
    if len(flips) > 1:
        total.div_(len(flips))
    return total


def _as_tensor(data) -> tuple[torch.Tensor, bool]:
    if isinstance(data, torch.Tensor):
        return data, True
    return torch.from_numpy(np.ascontiguousarray(data)), False


def _pad_to_patch(data: torch.Tensor, patch: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad the trailing spatial axes up to ``patch`` (centred, zeros); return the crop that undoes it."""
    spatial = data.shape[-len(patch):]
    pads, crop = [], []
    for s, p in zip(spatial, patch):
        total = max(0, p - s)
        before = total // 2
        pads.append((before, total - before))
        crop.append(slice(before, before + s))
    if not any(a or b for a, b in pads):
        return data, tuple(slice(None) for _ in patch)
    flat = [v for pair in reversed(pads) for v in pair]
    return torch.nn.functional.pad(data, flat), tuple(crop)


@torch.inference_mode()
def predict_logits(network, data, patch_size: Sequence[int], *, step_size: float = 0.5,
                   mirror_axes: Sequence[int] | None = None, device: str | torch.device = "cpu",
                   progress: bool = False, out_dtype=torch.float32, batch_size: int | None = None,
                   sigma_scale: float = SIGMA_SCALE, num_classes: int | None = None, weights_1d=None,
                   context_slices: int = 0, context_channels: int | None = None):
    """Gaussian-weighted sliding-window logits of one case.

    network: in eval mode, maps (B, C, *patch) to (B, K, *patch) logits (a 3D patch (z, y, x) or a
        2D patch (y, x); 2D networks slide over the z slices).
    data: (C, z, y, x) float32, NumPy array or torch tensor (on the CPU).
    step_size: tile step as a fraction of the patch (0.5 = half-overlapping tiles; larger = faster).
    mirror_axes: patch axes to mirror for test-time augmentation (None or () = no mirroring).
    out_dtype: dtype of the returned logits (float16 halves the memory of big cases; the
        aggregation itself is float32).
    batch_size: tiles (3D) or slices (2D) per forward pass (default: as many as fit ~1 M input
        voxels, at most 64 3D tiles; results do not depend on it).
    weights_1d: patch length → 1D tile weights along that axis (default: :func:`gaussian_1d`);
        models trained elsewhere may bring their own (nnU-Net's map is centred on ``patch // 2``).
    context_slices: 2D only: the network takes each slice with this many neighbours on each side
        (2.5D), for the first ``context_channels`` channels (default: all; the rest, e.g. a liver
        mask, as the slice alone).

    Returns (K, z, y, x) logits: a NumPy array for NumPy input, a CPU torch tensor for tensor input.
    """
    tensor, was_tensor = _as_tensor(data)
    if tensor.ndim != 4:
        raise ValueError(f"predict_logits: data must be (C, z, y, x), got shape {tuple(tensor.shape)}")
    patch = tuple(int(p) for p in patch_size)
    if len(patch) not in (2, 3):
        raise ValueError(f"predict_logits: patch_size must have 2 or 3 entries, got {patch_size}")
    device = torch.device(device)
    tensor = tensor.float()
    flips = _mirror_combinations(mirror_axes, len(patch))
    weight_fn = weights_1d or (lambda p: gaussian_1d(p, sigma_scale))
    if context_slices and len(patch) != 2:
        raise ValueError(f"predict_logits: context_slices is for 2D patches, got patch {patch}")
    if len(patch) == 3:
        out = _slide_3d(network, tensor, patch, step_size, flips, device, progress, out_dtype, weight_fn, num_classes,
                        batch_size)
    else:
        out = _slide_2d(network, tensor, patch, step_size, flips, device, progress, out_dtype, weight_fn,
                        batch_size, num_classes, int(context_slices),
                        tensor.shape[0] if context_channels is None else int(context_channels))
    return out if was_tensor else out.numpy()


def _infer_num_classes(network, sample: torch.Tensor, device, flips) -> int:
    return int(_forward(network, sample.to(device), flips[:1], device).shape[1])


def _tiles_per_batch(patch_voxels: int, channels: int, batch_size: int | None) -> int:
    """Tiles per forward pass: small patches go through the network together (one call per tile
    is mostly overhead on a CPU); large ones one at a time."""
    if batch_size is not None:
        return max(1, int(batch_size))
    return max(1, min(64, BATCH_INPUT_VOXELS // max(1, channels * patch_voxels)))


def _slide_3d(network, data, patch, step_size, flips, device, show, out_dtype, weight_fn, num_classes, batch_size):
    padded, crop = _pad_to_patch(data, patch)
    shape = tuple(padded.shape[1:])
    starts = [tile_starts(s, p, step_size) for s, p in zip(shape, patch)]
    gauss = [torch.from_numpy(np.asarray(weight_fn(p), dtype=np.float64)) for p in patch]
    norms = [weight_sum_1d(s, p, st, weights=g.numpy()) for s, p, st, g in zip(shape, patch, starts, gauss)]
    pz, py, px = patch
    per_batch = _tiles_per_batch(pz * py * px, padded.shape[0], batch_size)
    out = None
    acc = None  # float32 (K, pz, Y, X): slices [acc_z, acc_z + pz) of the padded volume
    acc_z = 0
    written = 0  # padded slices already moved to ``out``
    tiles_total = len(starts[0]) * len(starts[1]) * len(starts[2])
    bar = progress_bar(show, tiles_total)
    # The in-plane weight of a tile divided by the in-plane normaliser; the z part is per z start.
    inv_norm_yx = torch.from_numpy(1.0 / np.multiply.outer(norms[1], norms[2]))
    g_yx = torch.outer(gauss[1], gauss[2])
    positions = [(y0, x0) for y0 in starts[1] for x0 in starts[2]]
    for zi, z0 in enumerate(starts[0]):
        wz = (gauss[0] / torch.from_numpy(norms[0][z0:z0 + pz])).float().to(device)
        for b in range(0, len(positions), per_batch):
            chunk = positions[b:b + per_batch]
            tiles = torch.stack([padded[:, z0:z0 + pz, y0:y0 + py, x0:x0 + px] for y0, x0 in chunk]).to(device)
            logits = _forward(network, tiles, flips, device)  # (B, K, pz, py, px)
            if acc is None:
                k = num_classes or logits.shape[1]
                out = torch.empty((k, *shape), dtype=out_dtype)
                acc = torch.zeros((k, pz, shape[1], shape[2]), dtype=torch.float32, device=device)
            for (y0, x0), tile_logits in zip(chunk, logits):
                w_yx = (g_yx * inv_norm_yx[y0:y0 + py, x0:x0 + px]).float().to(device)
                w = wz[:, None, None] * w_yx[None]
                acc[:, z0 - acc_z:z0 - acc_z + pz, y0:y0 + py, x0:x0 + px].addcmul_(tile_logits, w[None])
            bar.update(len(chunk))
        # Slices before the next start are final: move them out and slide the accumulator.
        next_z = starts[0][zi + 1] if zi + 1 < len(starts[0]) else shape[0]
        done = next_z - acc_z
        out[:, written:next_z] = acc[:, written - acc_z:done].to("cpu", out_dtype)
        written = next_z
        if done > 0 and zi + 1 < len(starts[0]):
            keep = pz - done
            if keep > 0:
                acc[:, :keep] = acc[:, done:done + keep].clone()
            acc[:, max(keep, 0):].zero_()
            acc_z = next_z
    bar.close()
    return out[(slice(None), *crop)].contiguous() if any(c != slice(None) for c in crop) else out


def context_indices(z, context: int, slices: int) -> np.ndarray:
    """The slices z - context .. z + context of a 2.5D input (for each z of an array: one row each),
    the nearest slice beyond the first and last; training and prediction both stack by it."""
    return np.clip(np.asarray(z)[..., None] + np.arange(-context, context + 1), 0, slices - 1)


def context_slab(data: torch.Tensor, b0: int, b1: int, context: int, channels: int) -> torch.Tensor:
    """Slices [b0, b1) of (C, z, Y, X) as a (B, C', Y, X) batch: the first ``channels`` channels with
    ``context`` neighbours on each side (channel-major, the nearest slice beyond the ends), the rest alone."""
    if not context:
        return data[:, b0:b1].transpose(0, 1)
    idx = torch.from_numpy(context_indices(np.arange(b0, b1), context, data.shape[1]))  # (B, 2k + 1)
    stacked = data[:channels][:, idx]  # (channels, B, 2k + 1, Y, X)
    stacked = stacked.transpose(0, 1).reshape(b1 - b0, channels * (2 * context + 1), *data.shape[2:])
    return torch.cat((stacked, data[channels:, b0:b1].transpose(0, 1)), dim=1)


def _slide_2d(network, data, patch, step_size, flips, device, show, out_dtype, weight_fn, batch_size, num_classes,
              context=0, context_channels=0):
    c, z = data.shape[0] + 2 * context * context_channels, data.shape[1]
    padded, crop = _pad_to_patch(data, patch)  # pads y, x only
    shape_yx = tuple(padded.shape[2:])
    py, px = patch
    starts = [tile_starts(s, p, step_size) for s, p in zip(shape_yx, patch)]
    gauss = [torch.from_numpy(np.asarray(weight_fn(p), dtype=np.float64)) for p in patch]
    norms = [weight_sum_1d(s, p, st, weights=g.numpy()) for s, p, st, g in zip(shape_yx, patch, starts, gauss)]
    inv_norm = torch.from_numpy(1.0 / np.multiply.outer(norms[0], norms[1]))
    if batch_size is None:
        batch_size = max(1, min(z, BATCH_INPUT_VOXELS // max(1, c * py * px)))
    out = None
    tiles_total = math.ceil(z / batch_size) * len(starts[0]) * len(starts[1])
    bar = progress_bar(show, tiles_total)
    for b0 in range(0, z, batch_size):
        b1 = min(z, b0 + batch_size)
        slab = context_slab(padded, b0, b1, context, context_channels)  # (B, C', Y, X)
        acc = None
        for y0 in starts[0]:
            for x0 in starts[1]:
                tile = slab[:, :, y0:y0 + py, x0:x0 + px].contiguous().to(device)
                logits = _forward(network, tile, flips, device)  # (B, K, py, px)
                if acc is None:
                    k = num_classes or logits.shape[1]
                    if out is None:
                        out = torch.empty((k, z, *shape_yx), dtype=out_dtype)
                    acc = torch.zeros((b1 - b0, k, *shape_yx), dtype=torch.float32, device=device)
                w = (torch.outer(gauss[0], gauss[1]) * inv_norm[y0:y0 + py, x0:x0 + px]).float().to(device)
                acc[:, :, y0:y0 + py, x0:x0 + px].addcmul_(logits, w)
                bar.update(1)
        out[:, b0:b1] = acc.transpose(0, 1).to("cpu", out_dtype)
    bar.close()
    crop_full = (slice(None), slice(None), *crop)
    return out[crop_full].contiguous() if any(c != slice(None) for c in crop) else out


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def progress_bar(show: bool, total: int):
    """A per-tile bar when asked for (and progress is enabled), else a silent stand-in."""
    if not show or not progress.enabled():
        return _NoBar()
    return progress.bar(total=total, desc="tiles", unit="tile", leave=False)
