"""Exact 3D (or 2D) bilateral filter with ITK's semantics, spacing-aware.

``bilateral_filter(volume, spacing_zyx_mm, domain_sigma_mm, range_sigma)`` smooths a CT or MR
volume while keeping edges: each voxel becomes the average of its window, weighted by a Gaussian
of the physical distance (``domain_sigma_mm``) times a Gaussian of the intensity difference
(``range_sigma``, in the image's units, e.g. HU). The window radius per axis is
``ceil(2.5 * domain_sigma_mm / spacing_mm)`` and voxels outside the volume repeat the nearest
border voxel, exactly as ITK's ``BilateralImageFilter`` (SimpleITK) does. ITK evaluates the range
Gaussian from a 100-entry table and drops differences beyond 4 sigma; this filter evaluates the
Gaussian itself (see ``bilateral_reference(range_samples=...)`` for ITK's table).

Dispatch: NumPy arrays (and CPU torch tensors) run the compiled kernel ``csrc/cpu/bilateral.cpp``
with ``autoliver.ops._ext.num_threads()`` threads (``AUTOLIVER_NUM_THREADS``, default all cores);
CUDA torch tensors run ``csrc/cuda/bilateral.cu``. Without the compiled kernel the NumPy reference
runs instead (after one warning). Arrays are (z, y, x); the result is float32 of the same shape.
"""
from __future__ import annotations

import ctypes
import math
import numbers

import numpy as np

from autoliver.errors import UserError
from autoliver.ops import _ext

DOMAIN_MU = 2.5  # ITK's BilateralImageFilter: window radius = ceil(DOMAIN_MU * sigma / spacing)
ITK_RANGE_MU = 4.0  # ITK drops intensity differences beyond RANGE_MU * range_sigma
SUPPORTED_DTYPES = ("int16", "float32", "uint8", "int8", "uint16", "int32", "float64")

__all__ = ["bilateral_filter", "bilateral_reference", "window_radius", "DOMAIN_MU", "SUPPORTED_DTYPES"]


def window_radius(spacing_mm, domain_sigma_mm) -> tuple[int, ...]:
    """Per-axis window radius in voxels, computed with ITK's expression (same rounding)."""
    return tuple(int(math.ceil(DOMAIN_MU * float(s) / float(sp))) for sp, s in zip(spacing_mm, domain_sigma_mm))


# --------------------------------------------------------------------------------------------
# validation


def _is_torch(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def _positive_tuple(where: str, value, n: int, allow_scalar: bool) -> tuple[float, ...]:
    if allow_scalar and isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = (value,) * n
    try:
        vals = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: must be {'a number or ' if allow_scalar else ''}{n} numbers (z, y, x order), "
                        f"got {value!r}") from None
    if len(vals) != n:
        raise UserError(f"{where}: must have {n} values, one per array axis (z, y, x order), got {len(vals)}: "
                        f"{value!r}. Pass one value per axis of the volume")
    if not all(math.isfinite(v) and v > 0 for v in vals):
        raise UserError(f"{where}: every value must be a finite number > 0, got {value!r}")
    return vals


def _check_params(ndim: int, spacing_zyx_mm, domain_sigma_mm, range_sigma):
    spacing = _positive_tuple("bilateral_filter: spacing_zyx_mm", spacing_zyx_mm, ndim, allow_scalar=False)
    sigma = _positive_tuple("bilateral_filter: domain_sigma_mm", domain_sigma_mm, ndim, allow_scalar=True)
    if isinstance(range_sigma, bool) or not isinstance(range_sigma, numbers.Real) or \
            not (math.isfinite(float(range_sigma)) and float(range_sigma) > 0):
        raise UserError(f"bilateral_filter: range_sigma must be a finite number > 0 (intensity units, e.g. HU), "
                        f"got {range_sigma!r}")
    return spacing, sigma, float(range_sigma)


def _check_ndim_dtype(shape, dtype_name: str):
    problems = []
    if len(shape) not in (2, 3):
        problems.append(f"must be 2D (y, x) or 3D (z, y, x), got {len(shape)} dimensions with shape {tuple(shape)}")
    if dtype_name not in SUPPORTED_DTYPES:
        problems.append(f"dtype must be one of {', '.join(SUPPORTED_DTYPES)}, got {dtype_name}")
    if problems:
        raise UserError("bilateral_filter: volume " + "; ".join(problems) +
                        ". Convert it first, e.g. volume.astype(np.float32)")


def _as_native_contiguous(volume: np.ndarray) -> np.ndarray:
    """The same values, C-contiguous in native byte order; copies only when needed."""
    if not volume.dtype.isnative:
        volume = volume.astype(volume.dtype.newbyteorder("="))
    return np.ascontiguousarray(volume)


# --------------------------------------------------------------------------------------------
# public API


def bilateral_filter(volume, spacing_zyx_mm, domain_sigma_mm, range_sigma):
    """Exact bilateral filter of a (z, y, x) or (y, x) volume; returns float32 of the same shape.

    volume: NumPy array or torch tensor (CPU or CUDA) of int16, float32, uint8, int8, uint16, int32
        or float64 (float inputs must be finite); never modified.
    spacing_zyx_mm: voxel spacing per array axis, in mm.
    domain_sigma_mm: spatial Gaussian sigma in mm (one number, or one per axis).
    range_sigma: intensity Gaussian sigma in the volume's units (HU for CT).
    """
    if _is_torch(volume):
        return _bilateral_torch(volume, spacing_zyx_mm, domain_sigma_mm, range_sigma)
    if not isinstance(volume, np.ndarray):
        raise UserError(f"bilateral_filter: volume must be a NumPy array or a torch tensor, got "
                        f"{type(volume).__name__}. Wrap it with np.asarray(...)")
    _check_ndim_dtype(volume.shape, volume.dtype.name)
    spacing, sigma, range_sigma = _check_params(volume.ndim, spacing_zyx_mm, domain_sigma_mm, range_sigma)
    volume = _as_native_contiguous(volume)
    if volume.dtype.kind == "f" and volume.size and not np.isfinite(volume).all():
        raise UserError("bilateral_filter: volume contains NaN or infinite values; the filter needs finite "
                        "intensities. Replace them first, e.g. np.nan_to_num(volume, nan=-1000)")
    if volume.size == 0:
        return np.zeros(volume.shape, np.float32)
    ext = _ext.load("bilateral")
    if ext is None:
        return bilateral_reference(volume, spacing, sigma, range_sigma).astype(np.float32)
    vol3, spacing3, sigma3, radius3 = _as_3d(volume, spacing, sigma)
    out = ext.bilateral3d(vol3, list(radius3), list(spacing3), list(sigma3), range_sigma, _ext.num_threads())
    return out.reshape(volume.shape)


def _as_3d(volume, spacing, sigma):
    radius = window_radius(spacing, sigma)
    if len(volume.shape) == 2:
        return volume.reshape((1, *volume.shape)), (1.0, *spacing), (1.0, *sigma), (0, *radius)
    return volume, spacing, sigma, radius


# --------------------------------------------------------------------------------------------
# reference


def bilateral_reference(volume, spacing_zyx_mm, domain_sigma_mm, range_sigma, *, range_samples: int | None = None,
                        chunk_voxels: int = 4_000_000) -> np.ndarray:
    """Plain NumPy bilateral filter in float64, offset by offset (the oracle for the kernels).

    range_samples: None evaluates the range Gaussian exactly (what ``bilateral_filter`` computes);
    an integer reproduces ITK's table instead: differences are floored onto ``range_samples`` steps
    over [0, 4 sigma) and larger differences get weight 0 (SimpleITK's default is 100).
    """
    volume = np.asarray(volume)
    spacing, sigma, range_sigma = _check_params(volume.ndim, spacing_zyx_mm, domain_sigma_mm, range_sigma)
    radius = window_radius(spacing, sigma)
    vol = volume.astype(np.float64)
    if vol.size == 0:
        return vol
    pad = np.pad(vol, [(r, r) for r in radius], mode="edge")
    offsets = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in radius], indexing="ij"), -1).reshape(-1, vol.ndim)
    spatial = np.exp(-0.5 * (((offsets * np.array(spacing)) / np.array(sigma)) ** 2).sum(1))
    if range_samples is not None:
        used = ITK_RANGE_MU * range_sigma
        table = np.exp(-0.5 * (np.arange(range_samples) * (used / range_samples)) ** 2 / range_sigma ** 2)
    out = np.empty_like(vol)
    plane = int(np.prod(vol.shape[1:]))
    step = max(1, chunk_voxels // max(plane, 1))
    for z0 in range(0, vol.shape[0], step):
        z1 = min(vol.shape[0], z0 + step)
        centre = vol[z0:z1]
        num = np.zeros_like(centre)
        den = np.zeros_like(centre)
        for off, ws in zip(offsets, spatial):
            idx = [slice(z0 + radius[0] + off[0], z1 + radius[0] + off[0])]
            idx += [slice(r + o, r + o + n) for r, o, n in zip(radius[1:], off[1:], vol.shape[1:])]
            nb = pad[tuple(idx)]
            d = np.abs(nb - centre)
            if range_samples is None:
                w = ws * np.exp(-0.5 * (d / range_sigma) ** 2)
            else:
                k = np.floor(d * (range_samples / used)).astype(np.int64)
                w = np.where(d < used, ws * table[np.minimum(k, range_samples - 1)], 0.0)
            num += w * nb
            den += w
        out[z0:z1] = num / den
    return out


# --------------------------------------------------------------------------------------------
# torch: CPU tensors through NumPy, CUDA tensors through csrc/cuda/bilateral.cu



def _bilateral_torch(volume, spacing_zyx_mm, domain_sigma_mm, range_sigma):
    import torch

    dtype_name = str(volume.dtype).replace("torch.", "")
    _check_ndim_dtype(tuple(volume.shape), dtype_name)
    spacing, sigma, range_sigma = _check_params(volume.dim(), spacing_zyx_mm, domain_sigma_mm, range_sigma)
    if not volume.is_cuda:
        out = bilateral_filter(volume.detach().contiguous().numpy(), spacing, sigma, range_sigma)
        return torch.from_numpy(out)
    if volume.is_floating_point() and volume.numel() and not bool(torch.isfinite(volume).all()):
        raise UserError("bilateral_filter: volume contains NaN or infinite values; the filter needs finite "
                        "intensities. Replace them first, e.g. torch.nan_to_num(volume, nan=-1000)")
    if volume.numel() == 0:
        return torch.zeros(volume.shape, dtype=torch.float32, device=volume.device)
    lib = _load_cuda()
    if lib is None:
        out = bilateral_filter(volume.detach().cpu().contiguous().numpy(), spacing, sigma, range_sigma)
        return torch.from_numpy(out).to(volume.device)
    src = volume.detach()
    if src.dtype not in (torch.int16, torch.float32):
        src = src.to(torch.float32)
    src = src.contiguous()
    shape3 = (1, *src.shape) if src.dim() == 2 else tuple(src.shape)
    _, spacing3, sigma3, radius3 = _as_3d(np.empty((0,) * src.dim()), spacing, sigma)
    out = torch.empty(src.shape, dtype=torch.float32, device=src.device)
    log2e = 1.4426950408889634
    a = [log2e * 0.5 * (sp / sg) ** 2 for sp, sg in zip(spacing3, sigma3)]
    c = log2e / (2.0 * range_sigma ** 2)
    fn = lib.autoliver_bilateral3d_i16 if src.dtype == torch.int16 else lib.autoliver_bilateral3d_f32
    from autoliver.ops._cuda import current_stream_ptr

    with torch.cuda.device(src.device):
        err = fn(ctypes.c_void_p(src.data_ptr()), ctypes.c_void_p(out.data_ptr()),
                 *[ctypes.c_int(int(n)) for n in shape3], *[ctypes.c_int(r) for r in radius3],
                 ctypes.c_float(c), *[ctypes.c_float(v) for v in a], current_stream_ptr(src.device))
    if err != 0:
        raise RuntimeError(f"bilateral_filter: CUDA kernel failed with error code {err}")
    return out


def _load_cuda():
    from autoliver.ops._cuda import try_load_cuda

    lib = try_load_cuda("bilateral", "filtering on the CPU instead")
    if lib is None:
        return None
    for name in ("autoliver_bilateral3d_i16", "autoliver_bilateral3d_f32"):
        getattr(lib, name).restype = ctypes.c_int
    return lib
