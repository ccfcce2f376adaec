"""Smooth random fields laid out in millimetres, and correlated image noise.

A smooth field is a cubic B-spline over a coarse lattice of independent N(0, 1) coefficients
placed in patient millimetres. A voxel grid is separable (one coordinate vector per axis), so
evaluating the field on it is three passes of 4-tap interpolation, one per axis — and,
because the lattice lives in millimetres, the same draw describes the same anatomy at any voxel
size. Basis rows are normalised so that the field has unit variance everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


def bspline_basis(coords_mm: np.ndarray, start_mm: float, step_mm: float, n_ctrl: int):
    """Cubic B-spline taps of ``coords_mm``: ``(index, weight)``, both (len(coords), 4): the four
    control points each coordinate depends on and their weights (0 beyond the lattice). Rows have
    unit L2 norm, so a field of independent N(0, 1) coefficients has unit variance everywhere."""
    t = np.clip((np.asarray(coords_mm, np.float64) - start_mm) / step_mm, 0.0, n_ctrl - 1.0)
    index = np.floor(t).astype(np.int64)[:, None] + np.arange(-1, 3)[None, :]
    d = np.abs(t[:, None] - index)
    w = np.where(d < 1.0, (4.0 - 6.0 * d**2 + 3.0 * d**3) / 6.0, np.where(d < 2.0, (2.0 - d) ** 3 / 6.0, 0.0))
    outside = (index < 0) | (index >= n_ctrl)
    w[outside] = 0.0
    w /= np.sqrt((w**2).sum(axis=1, keepdims=True))
    return np.clip(index, 0, n_ctrl - 1), w.astype(np.float32)


def _contract(values: np.ndarray, axis: int, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Apply 4-tap interpolation along ``axis``: sum_k weight[:, k] * values[index[:, k]].

    Element-wise NumPy only (no BLAS): the same bits on any thread count, and no thread
    oversubscription on a busy machine."""
    shape = [1] * values.ndim
    shape[axis] = len(index)
    out = None
    for k in range(index.shape[1]):
        term = np.take(values, index[:, k], axis=axis)
        term *= weight[:, k].reshape(shape)
        if out is None:
            out = term
        else:
            out += term
    return out


@dataclass(frozen=True, eq=False)
class SmoothField:
    """A unit-variance random field: B-spline lattice ``coeffs`` (Kz, Ky, Kx) starting at ``start_xyz`` mm."""

    coeffs: np.ndarray
    start_xyz: tuple[float, float, float]
    step_mm: float

    def sample(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Values on the grid spanned by 1D coordinates (mm), shaped (len(z), len(y), len(x)), float32."""
        kz, ky, kx = self.coeffs.shape
        t = _contract(self.coeffs, 2, *bspline_basis(x, self.start_xyz[0], self.step_mm, kx))
        t = _contract(t, 1, *bspline_basis(y, self.start_xyz[1], self.step_mm, ky))
        return _contract(t, 0, *bspline_basis(z, self.start_xyz[2], self.step_mm, kz))


def random_field(rng: np.random.Generator, lo_xyz, hi_xyz, step_mm: float) -> SmoothField:
    """A field covering the box ``lo_xyz``..``hi_xyz`` (mm) with correlation length ~``step_mm``."""
    lo = np.asarray(lo_xyz, np.float64) - step_mm
    n = np.ceil((np.asarray(hi_xyz, np.float64) - lo) / step_mm).astype(int) + 2
    coeffs = rng.standard_normal((int(n[2]), int(n[1]), int(n[0])), dtype=np.float32)
    return SmoothField(coeffs, tuple(float(v) for v in lo), float(step_mm))


def random_curve(rng: np.random.Generator, lo_mm: float, hi_mm: float, step_mm: float):
    """A 1D unit-variance random function of one coordinate (mm): returns ``f(coords) -> float32``."""
    start = lo_mm - step_mm
    n = int(np.ceil((hi_mm - start) / step_mm)) + 2
    coeffs = rng.standard_normal(n).astype(np.float32)

    def curve(coords):
        return _contract(coeffs, 0, *bspline_basis(coords, start, step_mm, n))

    return curve


def smooth3(volume: np.ndarray, axis: int, sigma: float) -> np.ndarray:
    """In place: a 3-tap Gaussian (``sigma`` voxels, <= ~0.7) along ``axis``, edges replicated.

    Cheaper than a general filter along the slowest axis, and enough for partial-volume blur."""
    side = float(np.exp(-0.5 / sigma**2))
    w_side, w_mid = np.float32(side / (1 + 2 * side)), np.float32(1 / (1 + 2 * side))
    v = np.moveaxis(volume, axis, 0)
    if v.shape[0] < 2:
        return volume
    src = v.copy()
    v *= w_mid
    v[1:] += w_side * src[:-1]
    v[:1] += w_side * src[:1]
    v[:-1] += w_side * src[1:]
    v[-1:] += w_side * src[-1:]
    return volume


def correlate_noise(white: np.ndarray, sigma_vox_yx: float, sigma_vox_z: float = 0.5) -> np.ndarray:
    """Unit-variance noise with the texture of CT noise: ``white`` (not modified) blurred in-plane by
    a Gaussian of ``sigma_vox_yx`` voxels and slightly along z."""
    noise = ndimage.gaussian_filter1d(white, sigma_vox_yx, axis=2, mode="reflect", truncate=3.0)
    ndimage.gaussian_filter1d(noise, sigma_vox_yx, axis=1, output=noise, mode="reflect", truncate=3.0)
    if sigma_vox_z > 0:
        smooth3(noise, 0, sigma_vox_z)
    noise *= np.float32(1.0 / max(float(noise.std(dtype=np.float64)), 1e-12))
    return noise
