"""nnU-Net v2's preprocessing rules, for predicting with models that nnU-Net trained.

A network trained by nnU-Net has only seen data made by nnU-Net's ``DefaultPreprocessor``; where
its arithmetic differs from autoliver's own pipeline, this module follows nnU-Net so that the
network sees the same numbers:

* crop: to the bounding box of the voxels that are non-zero in any channel (nnU-Net's
  ``crop_to_nonzero``; its hole filling does not change a bounding box). autoliver's own rule
  (CT above -500 HU) would give another box and so another grid.
* normalisation before resampling, on the cropped channel: ``CTNormalization`` (clip to the
  dataset's 0.5 / 99.5 foreground percentiles, then (x − mean) / std), ``ZScoreNormalization``
  (the case's mean and std, over the non-zero mask when the plan says ``use_mask_for_norm``),
  ``RescaleTo01Normalization`` and ``NoNormalization``.
* resampling: scikit-image's ``resize`` as nnU-Net calls it (scipy spline zoom, half-voxel grid,
  edge mode, output clipped to the input's range), slice by slice along the through-plane axis
  when one spacing is more than 3× another (its "separate z" rule), then order ``order_z``
  (nearest by default) along that axis. autoliver's torch kernels use Keys' cubic, not a
  B-spline, so they are not used here. Slices are done one at a time in float64, which bounds
  memory where nnU-Net holds the whole volume in float64.

Arrays are (z, y, x) in the file's voxel order. nnU-Net transposes the axes first
(``transpose_forward``); every rule here treats the axes alike given their spacings, so running
them in file order gives the same voxels, transposed (the caller transposes patch and network).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from autoliver.errors import UserError

ANISO_THRESHOLD = 3.0  # nnU-Net's: spacings differing by more than this factor are resampled separately
NORMALIZATION_SCHEMES = ("CTNormalization", "ZScoreNormalization", "RescaleTo01Normalization", "NoNormalization")


@dataclass(frozen=True)
class ChannelRule:
    """How nnU-Net normalises one channel (its plans' scheme and the dataset's intensity numbers)."""

    scheme: str
    use_mask: bool = False
    mean: float = 0.0
    std: float = 1.0
    lower: float = 0.0  # percentile_00_5
    upper: float = 0.0  # percentile_99_5


@dataclass(frozen=True)
class ResampleRule:
    """nnU-Net's ``resample_data_or_seg_to_shape`` keyword arguments."""

    order: int = 3
    order_z: int = 0
    force_separate_z: bool | None = None


def nonzero_box(channels: Sequence[np.ndarray]) -> tuple[tuple[int, int], ...]:
    """Half-open (z, y, x) box of the voxels non-zero in any channel; the whole array if none is."""
    shape = channels[0].shape
    along = [np.zeros(n, dtype=bool) for n in shape]
    step = max(1, (1 << 24) // max(1, shape[1] * shape[2]))
    for z0 in range(0, shape[0], step):  # slab by slab: no whole-volume mask
        m = np.asarray(channels[0][z0:z0 + step]) != 0
        for c in channels[1:]:
            m |= np.asarray(c[z0:z0 + step]) != 0
        along[0][z0:z0 + step] |= m.any(axis=(1, 2))
        along[1] |= m.any(axis=(0, 2))
        along[2] |= m.any(axis=(0, 1))
    if not along[0].any():
        return tuple((0, n) for n in shape)
    return tuple((int(np.flatnonzero(a)[0]), int(np.flatnonzero(a)[-1]) + 1) for a in along)


def new_shape_for(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> tuple[int, ...]:
    """nnU-Net's ``compute_new_shape`` (its operand order: the rounding of ties must match)."""
    return tuple(int(round(s / t * n)) for s, t, n in zip(spacing, new_spacing, shape))


def separate_axis(rule: ResampleRule, spacing: Sequence[float], new_spacing: Sequence[float]) -> int | None:
    """The axis nnU-Net resamples on its own (``determine_do_sep_z_and_axis``), or None.

    Anisotropic current spacing first, else anisotropic target spacing; the axis is the one with
    the largest spacing, and none when two or three axes share that largest spacing.
    """
    def lowres(s):
        s = np.asarray(s, dtype=float)
        return np.flatnonzero(s.max() / s == 1)

    def anisotropic(s):
        s = np.asarray(s, dtype=float)
        return s.max() / s.min() > ANISO_THRESHOLD

    if rule.force_separate_z is not None:
        axes = lowres(spacing) if rule.force_separate_z else None
    elif anisotropic(spacing):
        axes = lowres(spacing)
    elif anisotropic(new_spacing):
        axes = lowres(new_spacing)
    else:
        axes = None
    return int(axes[0]) if axes is not None and len(axes) == 1 else None


def skimage_resize(image: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """``skimage.transform.resize(image, shape, order, mode='edge', anti_aliasing=False)`` for
    float input: scipy's spline zoom on the half-voxel grid, clipped to the input's range."""
    image = np.asarray(image, dtype=np.float64)
    factors = np.divide(image.shape, shape)
    out = ndimage.zoom(image, [1 / f for f in factors], order=order, mode="nearest", cval=0, grid_mode=True)
    np.clip(out, image.min(), image.max(), out=out)
    return out


def _through_taps(n_in: int, n_out: int, order: int) -> list[list[tuple[int, float]]]:
    """Per output slice, (input slice, weight) pairs of ``map_coordinates`` along one axis with
    the half-voxel mapping and mode 'nearest' (orders 0 and 1)."""
    scale = n_in / n_out
    taps = []
    for j in range(n_out):
        c = scale * (j + 0.5) - 0.5
        if order == 0:
            taps.append([(int(min(max(np.floor(c + 0.5), 0), n_in - 1)), 1.0)])
            continue
        c = min(max(c, 0.0), n_in - 1.0)
        i0 = int(np.floor(c))
        i1 = min(i0 + 1, n_in - 1)
        w = c - i0
        taps.append([(i0, 1.0 - w)] + ([(i1, w)] if w > 0 else []))
    return taps


def resample_volume(volume: np.ndarray, new_shape: Sequence[int], rule: ResampleRule, spacing: Sequence[float],
                    new_spacing: Sequence[float]) -> np.ndarray:
    """One (z, y, x) channel to ``new_shape`` as nnU-Net's ``resample_data_or_seg`` does; float32."""
    new_shape = tuple(int(n) for n in new_shape)
    if tuple(volume.shape) == new_shape:
        return np.asarray(volume, dtype=np.float32)
    axis = separate_axis(rule, spacing, new_spacing)
    if axis is None:
        return skimage_resize(volume, new_shape, rule.order).astype(np.float32)
    src = np.moveaxis(volume, axis, 0)
    out = np.empty(new_shape, dtype=np.float32)
    dst = np.moveaxis(out, axis, 0)
    plane = dst.shape[1:]
    n_in, n_out = src.shape[0], dst.shape[0]
    if n_in == n_out:
        for i in range(n_in):
            dst[i] = skimage_resize(src[i], plane, rule.order)
        return out
    if rule.order_z not in (0, 1):
        # Higher orders: nnU-Net's own arithmetic on the whole volume (rare, and memory-hungry).
        mid = np.stack([skimage_resize(src[i], plane, rule.order) for i in range(n_in)])
        coords = np.meshgrid(*[(n_i / n_o) * (np.arange(n_o) + 0.5) - 0.5
                               for n_i, n_o in zip(mid.shape, dst.shape)], indexing="ij")
        dst[...] = ndimage.map_coordinates(mid, np.array(coords), order=rule.order_z, mode="nearest")
        return out
    cache: dict[int, np.ndarray] = {}  # in-plane resized input slices still needed (float64, as nnU-Net)
    for j, taps in enumerate(_through_taps(n_in, n_out, rule.order_z)):
        for i in [i for i in cache if i < taps[0][0]]:
            del cache[i]
        acc = None
        for i, w in taps:
            if i not in cache:
                cache[i] = skimage_resize(src[i], plane, rule.order)
            acc = cache[i] * w if acc is None else acc + cache[i] * w
        dst[j] = acc
    return out


def normalize_channel(channel: np.ndarray, rule: ChannelRule, mask: np.ndarray | None = None) -> np.ndarray:
    """nnU-Net's normalisation of one cropped channel (float32 copy).

    mask: nnU-Net's filled non-zero mask of the cropped case (``ZScoreNormalization`` with
    ``use_mask_for_norm``).
    """
    x = np.array(channel, dtype=np.float32)
    if rule.scheme == "CTNormalization":
        np.clip(x, rule.lower, rule.upper, out=x)
        x -= rule.mean
        x /= max(rule.std, 1e-8)
    elif rule.scheme == "ZScoreNormalization":
        if rule.use_mask and mask is not None:
            mean, std = x[mask].mean(), x[mask].std()
            x[mask] = (x[mask] - mean) / max(std, 1e-8)
        else:
            x -= x.mean()
            x /= max(x.std(), 1e-8)
    elif rule.scheme == "RescaleTo01Normalization":
        x -= x.min()
        x /= np.clip(x.max(), a_min=1e-8, a_max=None)
    elif rule.scheme != "NoNormalization":
        raise UserError(f"plans.json normalization_schemes: must be one of {', '.join(NORMALIZATION_SCHEMES)}, got "
                        f"{rule.scheme!r}. A model with a custom normaliser needs nnU-Net's own predictor.")
    return x


def filled_nonzero_mask(channels: Sequence[np.ndarray]) -> np.ndarray:
    """nnU-Net's non-zero mask with holes filled (only the masked z-score needs it)."""
    m = np.asarray(channels[0]) != 0
    for c in channels[1:]:
        m |= np.asarray(c) != 0
    return ndimage.binary_fill_holes(m)
