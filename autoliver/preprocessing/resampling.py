"""Resampling volumes to a target spacing or shape: fast, exact to one convention, memory-bounded.

Convention (the one of ``torch.nn.functional.interpolate`` with ``align_corners=False``, and of
nnU-Net/scikit-image): voxel centres map as ``src = (dst + 0.5) * n_in / n_out - 0.5``; borders are
clamped (edge voxels repeat). Orders: 0 nearest (``nearest-exact``), 1 linear, 3 cubic convolution
(Keys, a = -0.75, torch's bicubic). No anti-aliasing by default, as in nnU-Net; with
``anti_aliasing`` an image is smoothed along each axis it is made coarser on first (a Gaussian of
σ = (f − 1) / 2 input voxels for a factor f, scikit-image's rule), inside the same streamed passes.

Images go in two separable passes, each streamed over bounded chunks: an in-plane 2D pass by
torch's CPU kernels (the two axes other than the through-plane axis) and a 1D pass along the
through-plane axis, where each output slice is a weighted sum of at most four whole input slices
(weights from :func:`interpolation_matrix`, identical to torch's). The cheaper order of the two
passes runs; only the input, one intermediate volume and the output are ever whole in memory.
nnU-Net's default (scikit-image per slice in float64 plus ``map_coordinates``) is an order of
magnitude slower and peaks at several times the volume's size.

Label maps are resampled as nnU-Net does with order > 0: each foreground class is interpolated as
a one-hot mask and the voxel takes the most probable class (background = 1 - sum of the others,
which is exact because the interpolation weights sum to one). Each class is computed only inside
its own bounding box, by dense per-axis interpolation matrices (:func:`interpolation_matrix`,
the same convention as above) applied with matrix products, so the cost follows the size of the
liver, not of the scan. The matrices are also the plain reference that the tests compare the
torch path against.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from autoliver.errors import UserError

SUPPORTED_ORDERS = (0, 1, 3)
CUBIC_A = -0.75  # torch's bicubic (and OpenCV's); Keys' kernel
# Voxels per chunk of the streamed passes: ~64 MB of float32, small next to one CT.
CHUNK_VOXELS = 1 << 24

_MODES_2D = {0: "nearest-exact", 1: "bilinear", 3: "bicubic"}


def empty(shape: Sequence[int], dtype=torch.float32) -> np.ndarray:
    """A large uninitialised NumPy array whose memory comes from torch's allocator.

    torch asks the kernel for huge pages on large blocks; first writes into such memory are several
    times faster than into NumPy's own (page faults dominate on some virtual machines).
    """
    return torch.empty(tuple(int(n) for n in shape), dtype=dtype).numpy()


def check_order(order: int, where: str) -> int:
    if order not in SUPPORTED_ORDERS:
        raise UserError(f"{where}: interpolation order must be one of {SUPPORTED_ORDERS} (0 nearest, 1 linear, "
                        f"3 cubic), got {order!r}. Fix the plan's resampling section.")
    return order


def shape_for_spacing(shape_zyx: Sequence[int], spacing_zyx_mm: Sequence[float],
                      new_spacing_zyx_mm: Sequence[float]) -> tuple[int, int, int]:
    """The voxel count that covers the same extent at the new spacing (nnU-Net's rounding)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape_zyx, spacing_zyx_mm, new_spacing_zyx_mm))


def through_plane_axis(spacing_zyx_mm: Sequence[float], new_spacing_zyx_mm: Sequence[float]) -> int:
    """The axis to treat separately: the coarsest axis of the case, or of the target when the case
    is isotropic (ties → the first such axis, z for (z, y, x) arrays)."""
    for spacing in (spacing_zyx_mm, new_spacing_zyx_mm):
        s = np.asarray(spacing, dtype=float)
        if s.max() / max(s.min(), 1e-12) > 1.0 + 1e-6:
            return int(np.argmax(s))
    return 0


def axis_orders(order: int, order_through: int, separate: bool, axis: int) -> tuple[int, int, int]:
    """Interpolation order per (z, y, x) axis."""
    orders = [order] * 3
    if separate:
        orders[axis] = order_through
    return tuple(orders)


# ----------------------------------------------------------------------------------------------
# The reference: one dense matrix per axis (also used for label blocks, where it is fast enough)
# ----------------------------------------------------------------------------------------------

def _cubic_weights(t: np.ndarray) -> np.ndarray:
    a = CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def interpolation_matrix(n_in: int, n_out: int, order: int) -> np.ndarray:
    """(n_out, n_in) float64 weights such that ``out = M @ in`` along one axis (torch's convention)."""
    check_order(order, "interpolation_matrix")
    m = np.zeros((n_out, n_in), dtype=np.float64)
    scale = n_in / n_out
    dst = np.arange(n_out, dtype=np.float64)
    rows = np.arange(n_out)
    if order == 0:
        src = np.minimum(np.floor((dst + 0.5) * scale).astype(np.int64), n_in - 1)
        m[rows, src] = 1.0
    elif order == 1:
        src = np.maximum((dst + 0.5) * scale - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        w1 = src - i0
        np.add.at(m, (rows, i0), 1.0 - w1)
        np.add.at(m, (rows, i1), w1)
    else:
        src = (dst + 0.5) * scale - 0.5
        i = np.floor(src).astype(np.int64)
        w = _cubic_weights(src - i)
        for k in range(4):
            np.add.at(m, (rows, np.clip(i - 1 + k, 0, n_in - 1)), w[:, k])
    return m


def resample_reference(volume: np.ndarray, new_shape: Sequence[int], orders: Sequence[int]) -> np.ndarray:
    """Plain separable resampling by dense matrices (float64); for tests and small arrays."""
    out = np.asarray(volume, dtype=np.float64)
    for axis, (n_out, order) in enumerate(zip(new_shape, orders)):
        m = interpolation_matrix(out.shape[axis], int(n_out), order)
        out = np.moveaxis(np.tensordot(m, np.moveaxis(out, axis, 0), axes=(1, 0)), 0, axis)
    return out


# ----------------------------------------------------------------------------------------------
# Images: torch kernels, two streamed passes
# ----------------------------------------------------------------------------------------------

def _rows_per_chunk(voxels_per_row: int) -> int:
    return max(1, CHUNK_VOXELS // max(1, voxels_per_row))


def smoothing_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) float64 matrix of a 1D Gaussian filter of ``sigma`` voxels with edge voxels repeated:
    ``S @ v`` equals ``scipy.ndimage.gaussian_filter1d(v, sigma, mode="nearest")``."""
    if sigma <= 0:
        return np.eye(n)
    return ndimage.gaussian_filter1d(np.eye(n), sigma, axis=0, mode="nearest")


def _plane_pass(src: np.ndarray, dst: np.ndarray, order: int, transform: Callable | None,
                sigmas: Sequence[float] = (0.0, 0.0)) -> None:
    """dst[a] = 2D resample of src[a] for every slice a (axis 0 is the through-plane axis), each
    slice first smoothed in-plane by a Gaussian of ``sigmas`` (axes 1, 2) where they are > 0."""
    a, b, c = src.shape
    _, b2, c2 = dst.shape
    step = _rows_per_chunk(max(b * c, b2 * c2))
    for a0 in range(0, a, step):
        x = torch.from_numpy(np.ascontiguousarray(src[a0:a0 + step])).to(torch.float32)
        if transform is not None:
            x = transform(x)
        if any(s > 0 for s in sigmas):  # a new array: the chunk may be a view of the caller's volume
            x = torch.from_numpy(ndimage.gaussian_filter(x.numpy(), (0.0, *sigmas), mode="nearest"))
        if (b2, c2) != (b, c):
            x = F.interpolate(x[None], size=(b2, c2), mode=_MODES_2D[order],
                              **({} if order == 0 else {"align_corners": False}))[0]
        dst[a0:a0 + step] = x.numpy()


def _through_pass(src: np.ndarray, dst: np.ndarray, order: int, transform: Callable | None,
                  sigma: float = 0.0) -> None:
    """dst[j] = sum_i M[j, i] * src[i] along axis 0, one output slice at a time.

    Each output slice is a weighted sum of at most four whole input slices (contiguous rows), so
    this pass runs at memory speed and needs only a handful of slices besides ``dst``. Each input
    slice is converted (and transformed) once, kept while later output slices still read it. A
    Gaussian of ``sigma`` > 0 along the axis is folded into M (M = interpolation @ smoothing), so
    each output slice then reads the few more slices under the Gaussian instead of a smoothed copy.
    """
    a = src.shape[0]
    m = interpolation_matrix(a, dst.shape[0], order)
    if sigma > 0:
        m = m @ smoothing_matrix(a, sigma)
    cache: dict[int, torch.Tensor] = {}
    for j in range(dst.shape[0]):
        cols = np.flatnonzero(m[j])
        for i in [i for i in cache if i < cols[0]]:
            del cache[i]
        for i in cols:
            if i not in cache:
                x = torch.from_numpy(np.ascontiguousarray(src[i])).to(torch.float32)
                cache[i] = transform(x) if transform is not None else x
        o = torch.from_numpy(dst[j])
        torch.mul(cache[cols[0]], float(m[j, cols[0]]), out=o)
        for i in cols[1:]:
            o.add_(cache[i], alpha=float(m[j, i]))


# Relative cost per output voxel of torch's 2D kernels, and per input tap of the through-plane pass
# (measured on one core: bicubic ~30 ns, bilinear ~3 ns, one tap ~1.6 ns per voxel).
_PLANE_COST = {0: 1.0, 1: 2.0, 3: 20.0}
_TAPS = {0: 1, 1: 2, 3: 4}


def anti_aliasing_sigmas(shape: Sequence[int], new_shape: Sequence[int]) -> tuple[float, ...]:
    """Gaussian σ per axis, in input voxels, before resampling ``shape`` to ``new_shape``:
    (f − 1) / 2 along an axis made f times coarser, 0 along the others (scikit-image's
    ``resize(anti_aliasing=True)`` rule)."""
    return tuple(max(0.0, (int(n) / int(m) - 1.0) / 2.0) for n, m in zip(shape, new_shape))


def resample_image(volume: np.ndarray, new_shape: Sequence[int], orders: Sequence[int], *,
                   through_axis: int = 0, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   out: np.ndarray | None = None, anti_aliasing: bool = False) -> np.ndarray:
    """Resample a (z, y, x) volume (any real dtype) to ``new_shape``; returns float32.

    ``orders`` per (z, y, x) axis; the two axes other than ``through_axis`` must share one order.
    ``transform`` (a pointwise function of float32 torch chunks, e.g. the normalisation) is applied
    on the fly before interpolation, so the normalised volume never exists whole. ``out`` may be a
    preallocated float32 array of ``new_shape`` (e.g. one channel of the case's output). With
    ``anti_aliasing`` the transformed volume is smoothed along each axis made coarser
    (:func:`anti_aliasing_sigmas`) before it is sampled, so that a coarse voxel averages the noise
    of the fine voxels it covers instead of picking it up: in-plane per chunk, through-plane inside
    the interpolation matrix, so no smoothed copy of the volume is ever whole in memory.
    """
    if volume.ndim != 3:
        raise ValueError(f"resample_image: volume must be (z, y, x), got shape {volume.shape}")
    new_shape = tuple(int(n) for n in new_shape)
    sigmas = anti_aliasing_sigmas(volume.shape, new_shape) if anti_aliasing else (0.0, 0.0, 0.0)
    plane_axes = [ax for ax in range(3) if ax != through_axis]
    order_plane, order_through = orders[plane_axes[0]], orders[through_axis]
    if orders[plane_axes[1]] != order_plane:
        raise ValueError(f"resample_image: in-plane orders must match, got {tuple(orders)} with through axis "
                         f"{through_axis}")
    for o in (order_plane, order_through):
        check_order(o, "resample_image")
    if out is None:
        out = empty(new_shape)
    elif out.shape != new_shape or out.dtype != np.float32:
        raise ValueError(f"resample_image: out must be float32 {new_shape}, got {out.dtype} {out.shape}")

    # Work with the through-plane axis first; views only (no copies of the input).
    src = np.moveaxis(volume, through_axis, 0)
    dst = np.moveaxis(out, through_axis, 0)
    a, b, c = src.shape
    a2, b2, c2 = dst.shape
    sigma_through, sigmas_plane = sigmas[through_axis], [sigmas[ax] for ax in plane_axes]
    plane_changes, through_changes = (b2, c2) != (b, c), a2 != a
    if not through_changes:  # (when nothing changes this only copies and transforms)
        _plane_pass(src, dst, order_plane, transform, sigmas_plane)
    elif not plane_changes:
        _through_pass(src, dst, order_through, transform, sigma_through)
    elif (a2 * _TAPS[order_through] * b * c + a2 * b2 * c2 * _PLANE_COST[order_plane]
          <= a * b2 * c2 * _PLANE_COST[order_plane] + a2 * _TAPS[order_through] * b2 * c2):
        # Through-plane first is cheaper (it shrinks, or the in-plane pass is the costly one).
        mid = empty((a2, b, c))
        _through_pass(src, mid, order_through, transform, sigma_through)
        _plane_pass(mid, dst, order_plane, None, sigmas_plane)
    else:
        mid = empty((a, b2, c2))
        _plane_pass(src, mid, order_plane, transform, sigmas_plane)
        _through_pass(mid, dst, order_through, None, sigma_through)
    return out


# ----------------------------------------------------------------------------------------------
# Label maps: one-hot per class inside its bounding box, dense matrices, most probable class
# ----------------------------------------------------------------------------------------------

def _support(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each output row of an interpolation matrix, the first and last input column it reads."""
    nz = m != 0
    first = nz.argmax(axis=1)
    last = m.shape[1] - 1 - nz[:, ::-1].argmax(axis=1)
    return first, last


def _rows_touching(m: np.ndarray, lo: int, hi: int) -> tuple[int, int]:
    """Output rows [r0, r1) whose support meets input columns [lo, hi)."""
    first, last = _support(m)
    rows = np.flatnonzero((last >= lo) & (first < hi))
    if rows.size == 0:
        return 0, 0
    return int(rows[0]), int(rows[-1]) + 1


def _apply_matrices(block: torch.Tensor, mats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Separable resampling of a (z, y, x) float32 block by per-axis (out, in) matrices."""
    mz, my, mx = mats
    z, y, x = block.shape
    out = (mz @ block.reshape(z, y * x)).reshape(mz.shape[0], y, x)
    out = torch.matmul(my, out)  # broadcast over z
    return out @ mx.T


def bounding_box(array: np.ndarray, value: int | None = None) -> tuple[tuple[int, int], ...] | None:
    """Half-open (start, stop) per axis of the voxels equal to ``value`` (or non-zero); None if none."""
    if value is not None:
        m = (array == value).view(np.uint8)
    elif array.dtype == np.bool_:
        m = array.view(np.uint8)
    elif array.dtype == np.uint8:
        m = array
    else:
        m = (array != 0).view(np.uint8)
    if m.ndim != 3:
        raise ValueError(f"bounding_box: expected a 3D array, got shape {array.shape}")
    # Projections by max over uint8 (much faster than boolean any over several axes).
    zy = m.max(axis=2)
    z = np.flatnonzero(zy.max(axis=1))
    if z.size == 0:
        return None
    y = np.flatnonzero(zy.max(axis=0))
    x = np.flatnonzero(m.max(axis=0).max(axis=0))
    return tuple((int(v[0]), int(v[-1]) + 1) for v in (z, y, x))


def resample_labels(seg: np.ndarray, new_shape: Sequence[int], orders: Sequence[int],
                    labels: Sequence[int] | None = None) -> np.ndarray:
    """Resample a (z, y, x) label map (values 0..127, 0 background) to ``new_shape``; returns uint8.

    Order 0 on every axis: nearest neighbour. Otherwise one-hot interpolation with the given order
    per axis and the most probable class per voxel (ties go to the background, then to the lower
    label). ``labels``: the foreground values to consider (default: those present).
    """
    if seg.ndim != 3:
        raise ValueError(f"resample_labels: seg must be (z, y, x), got shape {seg.shape}")
    new_shape = tuple(int(n) for n in new_shape)
    for o in orders:
        check_order(o, "resample_labels")
    if seg.dtype != np.uint8:
        if seg.size and (int(seg.min()) < 0 or int(seg.max()) > 255):
            raise ValueError(f"resample_labels: label values must lie in 0..255, got {seg.min()}..{seg.max()}")
        seg = seg.astype(np.uint8)
    if tuple(seg.shape) == new_shape:
        return np.array(seg, copy=True, order="C")
    if all(o == 0 for o in orders):
        t = torch.from_numpy(np.ascontiguousarray(seg))[None, None]
        return F.interpolate(t, size=new_shape, mode="nearest-exact")[0, 0].numpy()

    if labels is None:
        counts = torch.bincount(torch.from_numpy(np.ascontiguousarray(seg)).reshape(-1)).numpy()
        labels = [int(v) for v in np.flatnonzero(counts) if v != 0]
    labels = [int(v) for v in labels if int(v) != 0]
    out = torch.zeros(new_shape, dtype=torch.uint8).numpy()
    mats64 = [interpolation_matrix(n_in, n_out, o) for n_in, n_out, o in zip(seg.shape, new_shape, orders)]
    fg_box = bounding_box(seg)
    if fg_box is None or not labels:
        return out
    boxes = {}
    for v in labels:
        box = bounding_box(seg[tuple(slice(a, b) for a, b in fg_box)], v)
        if box is not None:
            box = tuple((a + o, b + o) for (a, b), (o, _) in zip(box, fg_box))
            rows = tuple(_rows_touching(m, lo, hi) for m, (lo, hi) in zip(mats64, box))
            if all(r0 < r1 for r0, r1 in rows):  # else no output voxel reads the class: it vanishes
                boxes[v] = rows
    if not boxes:
        return out
    # The union of the classes' output boxes, processed in slabs along z to bound memory.
    union = tuple((min(b[ax][0] for b in boxes.values()), max(b[ax][1] for b in boxes.values())) for ax in range(3))
    mats = [torch.from_numpy(m.astype(np.float32)) for m in mats64]
    supports = [_support(m) for m in mats64]
    (z0, z1), (y0, y1), (x0, x1) = union
    slab = max(1, CHUNK_VOXELS // 4 // max(1, (y1 - y0) * (x1 - x0)))
    for s0 in range(z0, z1, slab):
        s1 = min(z1, s0 + slab)
        shape = (s1 - s0, y1 - y0, x1 - x0)
        best = torch.zeros(shape, dtype=torch.float32)
        total = torch.zeros(shape, dtype=torch.float32)
        winner = torch.zeros(shape, dtype=torch.uint8)
        for v, box in boxes.items():
            rz = (max(s0, box[0][0]), min(s1, box[0][1]))
            if rz[0] >= rz[1]:
                continue
            out_box = (rz, box[1], box[2])
            # The input block these output rows read from.
            in_box = [(int(sup[0][r0:r1].min()), int(sup[1][r0:r1].max()) + 1)
                      for sup, (r0, r1) in zip(supports, out_box)]
            block = seg[tuple(slice(a, b) for a, b in in_box)]
            onehot = torch.from_numpy(block == v).to(torch.float32)
            sub = [m[r0:r1, i0:i1] for m, (r0, r1), (i0, i1) in zip(mats, out_box, in_box)]
            p = _apply_matrices(onehot, sub)
            region = (slice(rz[0] - s0, rz[1] - s0), slice(box[1][0] - y0, box[1][1] - y0),
                      slice(box[2][0] - x0, box[2][1] - x0))
            total[region] += p
            better = p > best[region]
            best[region] = torch.where(better, p, best[region])
            winner[region] = torch.where(better, torch.tensor(v, dtype=torch.uint8), winner[region])
        # The background's probability is what the classes leave.
        winner[best <= 1.0 - total] = 0
        out[s0:s1, y0:y1, x0:x1] = winner.numpy()
    return out


def resample_probabilities(probabilities: np.ndarray, new_shape: Sequence[int], orders: Sequence[int],
                           through_axis: int = 0) -> np.ndarray:
    """Resample (K, z, y, x) class probabilities channel by channel; returns float32."""
    out = empty((probabilities.shape[0], *new_shape))
    for k in range(probabilities.shape[0]):
        resample_image(probabilities[k], new_shape, orders, through_axis=through_axis, out=out[k])
    return out

