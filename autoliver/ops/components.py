"""Connected components: labelling, clean-up filters and per-label statistics, for 2D and 3D.

``label(array, connectivity=26) -> (labels, n)``: voxels are connected when they are neighbours
and hold the same nonzero value (a bool mask is the usual binary case; integer label maps give
one set of components per value). Labels are uint32, numbered 1..n in raster-scan (C) order of
each component's first voxel; for a bool mask the result equals ``scipy.ndimage.label`` with the
matching structuring element, numbers included.

Connectivity: 6, 18 or 26 in 3D (faces / +edges / +corners); 4 or 8 in 2D, where 6 also means
4 and 18 or 26 mean 8 (the in-plane part of the 3D neighbourhood), so the default works for both.

``largest_component``, ``remove_small_components`` and ``component_stats`` build on it.
Dispatch: NumPy arrays (and CPU torch tensors) run ``csrc/cpu/components.cpp`` with
``autoliver.ops._ext.num_threads()`` threads; CUDA torch tensors run ``csrc/cuda/components.cu``
(labels come back as int32 tensors there, since torch supports few uint32 operations). Without
the compiled kernel the SciPy references below run instead (after one warning). Inputs are
never modified.
"""
from __future__ import annotations

import ctypes
import math
import numbers
from dataclasses import dataclass

import numpy as np

from autoliver.errors import UserError
from autoliver.ops import _ext

__all__ = [
    "label", "largest_component", "remove_small_components", "component_stats", "ComponentStats",
    "label_reference", "largest_component_reference", "remove_small_components_reference",
    "component_stats_reference",
]

_MAX_VOXELS = 2**32 - 1  # labels and run indices are 32-bit


# --------------------------------------------------------------------------------------------
# validation


def _is_torch(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _connectivity(where: str, ndim: int, connectivity) -> int:
    """The 3D connectivity code (6, 18, 26) the kernels use for this input."""
    if isinstance(connectivity, bool) or not isinstance(connectivity, numbers.Integral):
        raise UserError(f"{where}: connectivity must be an integer (6, 18, 26 in 3D; 4, 8 in 2D), got {connectivity!r}")
    c = int(connectivity)
    if ndim == 3 and c in (6, 18, 26):
        return c
    if ndim == 2 and c in (4, 6):
        return 6
    if ndim == 2 and c in (8, 18, 26):
        return 26
    allowed = "6, 18 or 26 for 3D arrays" if ndim == 3 else "4 or 8 for 2D arrays (6, 18, 26 also accepted)"
    raise UserError(f"{where}: connectivity must be {allowed}, got {c}")


def _check_array(where: str, array, *, allow_signed: bool = True) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise UserError(f"{where}: expected a NumPy array or a torch tensor, got {type(array).__name__}. "
                        "Wrap it with np.asarray(...)")
    problems = []
    if array.ndim not in (2, 3):
        problems.append(f"must be 2D (y, x) or 3D (z, y, x), got {array.ndim} dimensions with shape {array.shape}")
    if array.dtype.kind not in "biu":
        problems.append(f"dtype must be bool or an integer type, got {array.dtype}")
    if array.size > _MAX_VOXELS:
        problems.append(f"must have fewer than 2**32 voxels, got {array.size}")
    if problems:
        raise UserError(f"{where}: array " + "; ".join(problems) + ". Convert it first, e.g. (probabilities > 0.5)")
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    array = np.ascontiguousarray(array)
    if not allow_signed and array.dtype.kind == "i" and array.size and array.min() < 0:
        raise UserError(f"{where}: labels must be >= 0, got a minimum of {array.min()}. Pass a label image "
                        "such as the one label() returns")
    return array


def _as_3d(array: np.ndarray) -> np.ndarray:
    return array.reshape((1, *array.shape)) if array.ndim == 2 else array


def _spacing(where: str, spacing_zyx_mm, ndim: int) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in spacing_zyx_mm)
    except (TypeError, ValueError):
        raise UserError(f"{where}: spacing_zyx_mm must be {ndim} numbers in mm (z, y, x order), "
                        f"got {spacing_zyx_mm!r}") from None
    if len(vals) != ndim or not all(math.isfinite(v) and v > 0 for v in vals):
        raise UserError(f"{where}: spacing_zyx_mm must be {ndim} finite numbers > 0 (one per array axis), "
                        f"got {spacing_zyx_mm!r}")
    return vals


def _min_size_voxels(where: str, min_voxels, min_ml, spacing, ndim) -> int:
    if isinstance(min_voxels, bool) or not isinstance(min_voxels, numbers.Integral) or min_voxels < 0:
        raise UserError(f"{where}: min_voxels must be an integer >= 0, got {min_voxels!r}")
    if isinstance(min_ml, bool) or not isinstance(min_ml, numbers.Real) or not (math.isfinite(min_ml) and min_ml >= 0):
        raise UserError(f"{where}: min_ml must be a finite number >= 0 (millilitres), got {min_ml!r}")
    threshold = int(min_voxels)
    if min_ml > 0:
        if spacing is None:
            raise UserError(f"{where}: min_ml={min_ml} needs spacing_zyx_mm to convert voxels to mL. "
                            "Pass spacing_zyx_mm=image.geometry.spacing_zyx_mm")
        voxel_ml = float(np.prod(_spacing(where, spacing, ndim))) / 1000.0
        count = max(0, math.ceil(min_ml / voxel_ml))
        while count > 0 and (count - 1) * voxel_ml >= min_ml:  # guard against rounding in the division
            count -= 1
        while count * voxel_ml < min_ml:
            count += 1
        threshold = max(threshold, count)
    return threshold


def _kernel():
    return _ext.load("components")


# --------------------------------------------------------------------------------------------
# public API


def label(array, connectivity: int = 26):
    """Connected components of a bool mask or integer label map: (labels uint32, n).

    Components are numbered 1..n in scan order of their first voxel; background (0) stays 0.
    """
    if _is_torch(array):
        return _torch_label(array, connectivity)
    array = _check_array("label", array)
    conn = _connectivity("label", array.ndim, connectivity)
    ext = _kernel()
    if ext is None:
        return label_reference(array, connectivity)
    labels, n = ext.label(_as_3d(array), conn, array.dtype == np.bool_, _ext.num_threads())
    return labels.reshape(array.shape), int(n)


def largest_component(mask, connectivity: int = 26):
    """The largest connected component of the nonzero voxels, as a bool mask (all False if empty).

    Ties go to the component that comes first in scan order.
    """
    if _is_torch(mask):
        return _torch_largest(mask, connectivity)
    mask = _check_array("largest_component", mask)
    conn = _connectivity("largest_component", mask.ndim, connectivity)
    ext = _kernel()
    if ext is None:
        return largest_component_reference(mask, connectivity)
    return ext.keep_components(_as_3d(mask), conn, True, 0, 0, _ext.num_threads()).reshape(mask.shape)


def remove_small_components(mask, min_voxels: int = 0, min_ml: float = 0.0, spacing_zyx_mm=None,
                            connectivity: int = 26):
    """Drop the components smaller than ``min_voxels`` voxels or ``min_ml`` millilitres.

    mask: bool mask, or integer label map (components per value; kept ones keep their values).
    Returns an array of the input's dtype; ``min_ml`` needs ``spacing_zyx_mm``.
    """
    if _is_torch(mask):
        return _torch_remove_small(mask, min_voxels, min_ml, spacing_zyx_mm, connectivity)
    mask = _check_array("remove_small_components", mask)
    conn = _connectivity("remove_small_components", mask.ndim, connectivity)
    threshold = _min_size_voxels("remove_small_components", min_voxels, min_ml, spacing_zyx_mm, mask.ndim)
    ext = _kernel()
    if ext is None:
        return remove_small_components_reference(mask, threshold, connectivity=connectivity)
    binary = mask.dtype == np.bool_
    out = ext.keep_components(_as_3d(mask), conn, binary, 1, threshold, _ext.num_threads())
    return out.reshape(mask.shape)


@dataclass(frozen=True)
class ComponentStats:
    """Per-label statistics; row k describes label k + 1 (labels 1..n, n = labels.max()).

    voxel_count: (n,) int64 (0 for labels that do not occur).
    bbox: (n, 2 * ndim) int64: start indices (z, y, x), then stop indices (exclusive); zeros for
        absent labels. ``slices(label)`` turns a row into a tuple of slices.
    centroid_mm: (n, ndim) float64: mean voxel position times spacing, in mm along the array axes
        from the centre of voxel (0, 0, 0) (add the image origin/direction for world coordinates);
        NaN for absent labels.
    """

    voxel_count: np.ndarray
    bbox: np.ndarray
    centroid_mm: np.ndarray
    spacing_zyx_mm: tuple[float, ...]

    @property
    def num_labels(self) -> int:
        return int(self.voxel_count.shape[0])

    @property
    def volume_ml(self) -> np.ndarray:
        return self.voxel_count * (float(np.prod(self.spacing_zyx_mm)) / 1000.0)

    def slices(self, label: int) -> tuple[slice, ...]:
        if not 1 <= label <= self.num_labels:
            raise UserError(f"ComponentStats.slices: label must be in 1..{self.num_labels}, got {label}")
        row = self.bbox[label - 1]
        d = len(row) // 2
        return tuple(slice(int(row[k]), int(row[d + k])) for k in range(d))


def component_stats(labels, spacing_zyx_mm) -> ComponentStats:
    """Voxel count, bounding box and centroid (mm) of every label 1..labels.max(), in one pass."""
    if _is_torch(labels):
        return _torch_stats(labels, spacing_zyx_mm)
    labels = _check_array("component_stats", labels, allow_signed=False)
    spacing = _spacing("component_stats", spacing_zyx_mm, labels.ndim)
    ext = _kernel()
    if ext is None:
        return component_stats_reference(labels, spacing)
    n = int(labels.max()) if labels.size else 0
    count, bbox, sums = ext.component_stats(_as_3d(labels), n, _ext.num_threads())
    return _finish_stats(count, bbox, sums, spacing, labels.ndim)


def _finish_stats(count, bbox, sums, spacing, ndim) -> ComponentStats:
    if ndim == 2:  # the kernel saw (1, y, x): drop the z columns
        bbox = bbox[:, [1, 2, 4, 5]]
        sums = sums[:, 1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        centroid = sums / count[:, None] * np.asarray(spacing, np.float64)
    centroid[count == 0] = np.nan
    return ComponentStats(count.astype(np.int64), bbox.astype(np.int64), centroid, tuple(spacing))


# --------------------------------------------------------------------------------------------
# references (SciPy / NumPy): the oracles the kernels are tested against, and the fallback


def _structure(ndim: int, connectivity) -> np.ndarray:
    from scipy import ndimage

    conn = _connectivity("label_reference", ndim, connectivity)
    rank = {6: 1, 18: 2, 26: 3}[conn] if ndim == 3 else {6: 1, 26: 2}[conn]
    return ndimage.generate_binary_structure(ndim, rank)


def label_reference(array, connectivity: int = 26):
    """scipy.ndimage.label per distinct nonzero value, renumbered in scan order of first voxels."""
    from scipy import ndimage

    array = np.asarray(array)
    structure = _structure(array.ndim, connectivity)
    if array.dtype == np.bool_:
        labels, n = ndimage.label(array, structure)
        return labels.astype(np.uint32), int(n)
    labels = np.zeros(array.shape, np.int64)
    n = 0
    for value in np.unique(array):
        if value == 0:
            continue
        lab, k = ndimage.label(array == value, structure)
        labels[lab > 0] = lab[lab > 0] + n
        n += k
    if n == 0:
        return labels.astype(np.uint32), 0
    flat = labels.ravel()
    provisional, first = np.unique(flat, return_index=True)
    order = np.argsort(first[provisional > 0])
    mapping = np.zeros(n + 1, np.uint32)
    mapping[provisional[provisional > 0][order]] = np.arange(1, n + 1, dtype=np.uint32)
    return mapping[labels], int(n)


def largest_component_reference(mask, connectivity: int = 26) -> np.ndarray:
    labels, n = label_reference(np.asarray(mask) != 0, connectivity)
    if n == 0:
        return np.zeros(labels.shape, bool)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def remove_small_components_reference(mask, min_voxels: int, connectivity: int = 26) -> np.ndarray:
    mask = np.asarray(mask)
    labels, n = label_reference(mask, connectivity)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    return np.where(keep[labels], mask, np.zeros((), mask.dtype)).astype(mask.dtype)


def component_stats_reference(labels, spacing_zyx_mm) -> ComponentStats:
    from scipy import ndimage

    labels = np.asarray(labels)
    spacing = _spacing("component_stats_reference", spacing_zyx_mm, labels.ndim)
    n = int(labels.max()) if labels.size else 0
    flat = labels.ravel().astype(np.int64)
    count = np.bincount(flat, minlength=n + 1)[1:]
    coords = np.indices(labels.shape).reshape(labels.ndim, -1)
    sums = np.stack([np.bincount(flat, weights=c, minlength=n + 1)[1:] for c in coords], 1)
    bbox = np.zeros((n, 2 * labels.ndim), np.int64)
    for k, obj in enumerate(ndimage.find_objects(labels.astype(np.int64), max_label=n)):
        if obj is not None:
            bbox[k] = [s.start for s in obj] + [s.stop for s in obj]
    with np.errstate(invalid="ignore", divide="ignore"):
        centroid = sums / count[:, None] * np.asarray(spacing)
    centroid[count == 0] = np.nan
    return ComponentStats(count.astype(np.int64), bbox, centroid, spacing)


# --------------------------------------------------------------------------------------------
# torch: CPU tensors through NumPy, CUDA tensors through csrc/cuda/components.cu

_TORCH_KERNEL_DTYPES = {"bool": "u8", "uint8": "u8", "int8": "i8", "int16": "i16", "int32": "i32", "int64": "i64"}


def _torch_check(where: str, t):
    import torch

    problems = []
    if t.dim() not in (2, 3):
        problems.append(f"must be 2D (y, x) or 3D (z, y, x), got {t.dim()} dimensions with shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex():
        problems.append(f"dtype must be bool or an integer type, got {t.dtype}")
    if t.numel() >= 2**31:
        problems.append(f"must have fewer than 2**31 voxels, got {t.numel()}")
    if problems:
        raise UserError(f"{where}: tensor " + "; ".join(problems) + ". Convert it first, e.g. (probabilities > 0.5)")
    return torch


def _load_cuda():
    from autoliver.ops._cuda import try_load_cuda

    lib = try_load_cuda("components", "labelling on the CPU instead")
    if lib is None:
        return None
    lib.autoliver_cc_workspace_bytes.restype = ctypes.c_size_t
    lib.autoliver_cc_workspace_bytes.argtypes = [ctypes.c_longlong]
    for suffix in set(_TORCH_KERNEL_DTYPES.values()):
        getattr(lib, f"autoliver_cc_label_{suffix}").restype = ctypes.c_int
    return lib


def _torch_label(t, connectivity, *, binary: bool = False):
    """(int32 labels, n) for a torch tensor; CUDA kernel on CUDA tensors."""
    torch = _torch_check("label", t)
    conn = _connectivity("label", t.dim(), connectivity)
    if binary and t.dtype != torch.bool:
        t = t != 0
    if not t.is_cuda:
        labels, n = label(t.detach().cpu().contiguous().numpy(), connectivity)
        return torch.from_numpy(labels.astype(np.int32)), n
    lib = _load_cuda()
    if lib is None:
        labels, n = label(t.detach().cpu().contiguous().numpy(), connectivity)
        return torch.from_numpy(labels.astype(np.int32)).to(t.device), n
    from autoliver.ops._cuda import current_stream_ptr

    src = t.detach()
    if str(src.dtype).replace("torch.", "") not in _TORCH_KERNEL_DTYPES:
        src = src.to(torch.int64)
    src = src.contiguous()
    shape3 = (1, *src.shape) if src.dim() == 2 else tuple(src.shape)
    labels = torch.empty(src.shape, dtype=torch.int32, device=src.device)
    count = torch.zeros(1, dtype=torch.int32, device=src.device)
    if src.numel() == 0:
        return labels, 0
    ws = torch.empty(int(lib.autoliver_cc_workspace_bytes(src.numel())), dtype=torch.uint8, device=src.device)
    fn = getattr(lib, "autoliver_cc_label_" + _TORCH_KERNEL_DTYPES[str(src.dtype).replace("torch.", "")])
    with torch.cuda.device(src.device):
        err = fn(ctypes.c_void_p(src.data_ptr()), ctypes.c_void_p(labels.data_ptr()), ctypes.c_void_p(count.data_ptr()),
                 *[ctypes.c_int(int(n)) for n in shape3], ctypes.c_int(conn), ctypes.c_void_p(ws.data_ptr()),
                 ctypes.c_size_t(ws.numel()), current_stream_ptr(src.device))
    if err != 0:
        raise RuntimeError(f"label: CUDA kernel failed with error code {err}")
    return labels, int(count.item())


def _cuda_stats(labels, n: int, *, counts_only: bool = False):
    """(count (n + 1,) int32, box (n + 1, 6) int32 or None, sums (n + 1, 3) int64 or None) of CUDA
    int32-able labels, by ``autoliver_cc_stats``; None when the kernel is unavailable."""
    import torch

    lib = _load_cuda()
    if lib is None:
        return None
    from autoliver.ops._cuda import current_stream_ptr

    src = labels.detach()
    src = (src if src.dtype == torch.int32 else src.to(torch.int32)).contiguous()
    shape3 = (1, *src.shape) if src.dim() == 2 else tuple(src.shape)
    dev = src.device
    count = torch.zeros(n + 1, dtype=torch.int32, device=dev)
    box = sums = None
    if not counts_only:
        box = torch.empty((n + 1, 6), dtype=torch.int32, device=dev)
        box[:, :3] = 2**31 - 1
        box[:, 3:] = -1
        sums = torch.zeros((n + 1, 3), dtype=torch.int64, device=dev)
    lib.autoliver_cc_stats.restype = ctypes.c_int
    with torch.cuda.device(dev):
        err = lib.autoliver_cc_stats(_cptr(src), *[ctypes.c_int(int(v)) for v in shape3], _cptr(count), _cptr(box),
                                     _cptr(sums), current_stream_ptr(dev))
    if err != 0:
        raise RuntimeError(f"component_stats: CUDA kernel failed with error code {err}")
    return count, box, sums


def _cptr(t):
    return ctypes.c_void_p(t.data_ptr() if t is not None else 0)


def _torch_sizes(labels, n):
    """Voxels per label 0..n (0 for the background) of CUDA labels."""
    import torch

    stats = _cuda_stats(labels, n, counts_only=True)
    if stats is not None:
        return stats[0]
    sizes = torch.bincount(labels.reshape(-1).to(torch.int64), minlength=n + 1)
    sizes[0] = 0
    return sizes


def _torch_largest(mask, connectivity):
    torch = _torch_check("largest_component", mask)
    if not mask.is_cuda:
        return torch.from_numpy(largest_component(mask.detach().cpu().contiguous().numpy(), connectivity))
    labels, n = _torch_label(mask, connectivity, binary=True)
    if n == 0:
        return torch.zeros(mask.shape, dtype=torch.bool, device=mask.device)
    return labels == torch.argmax(_torch_sizes(labels, n)).to(torch.int32)


def _torch_remove_small(mask, min_voxels, min_ml, spacing_zyx_mm, connectivity):
    torch = _torch_check("remove_small_components", mask)
    threshold = _min_size_voxels("remove_small_components", min_voxels, min_ml, spacing_zyx_mm, mask.dim())
    if not mask.is_cuda:
        out = remove_small_components(mask.detach().cpu().contiguous().numpy(), threshold, connectivity=connectivity)
        return torch.from_numpy(out)
    labels, n = _torch_label(mask, connectivity)
    keep = _torch_sizes(labels, n) >= threshold
    keep[0] = False
    return torch.where(keep[labels.to(torch.int64)], mask, torch.zeros((), dtype=mask.dtype, device=mask.device))


def _torch_stats(labels, spacing_zyx_mm) -> ComponentStats:
    _torch_check("component_stats", labels)
    spacing = _spacing("component_stats", spacing_zyx_mm, labels.dim())
    if not labels.is_cuda:
        return component_stats(labels.detach().cpu().contiguous().numpy(), spacing)
    if labels.numel() and int(labels.min()) < 0:
        raise UserError(f"component_stats: labels must be >= 0, got a minimum of {int(labels.min())}")
    n = int(labels.max()) if labels.numel() else 0
    stats = _cuda_stats(labels, n) if n < 2**31 and max(labels.shape) < 2**26 else None
    if stats is None:  # no kernel, or sums per warp that could overflow 32 bits: on the CPU
        return component_stats(labels.detach().cpu().contiguous().numpy(), spacing)
    count, box, sums = (t[1:].cpu().numpy().astype(np.int64) for t in stats)
    bbox = np.concatenate([box[:, :3], box[:, 3:] + 1], 1)
    bbox[count == 0] = 0
    return _finish_stats(count, bbox, sums.astype(np.float64), spacing, labels.dim())
