"""3D fully connected CRF (Krähenbühl & Koltun 2011) for refining liver and lesion probabilities.

Model. Voxel i takes a label l of K classes. Unary energy U_il = -log p_il (the network's
probability, floored at ``probability_floor``); pairwise energy is Potts, weighted by two
Gaussian kernels on voxel features:

* smoothness: position only, σ ``smoothness_sigma_mm``, weight ``smoothness_weight``;
* appearance: position (σ ``appearance_sigma_mm``) and intensity (σ ``appearance_intensity_sigma``
  on the image scaled to [0, 1]), weight ``appearance_weight``.

Units: every spatial σ is in millimetres. Positions are voxel index × ``spacing_zyx_mm``, so the
same parameters mean the same physical neighbourhood on a 0.7 mm and a 5 mm scan, and on a scan
before and after resampling. (The defaults' numbers come without units; they are read as mm.)
The intensity is scaled to [0, 1] by ``intensity_window`` (clip to that window, e.g. HU) or, when
None, by the image's own minimum and maximum.

Each kernel k is used symmetrically normalised, N = D^-1/2 k D^-1/2 with D = k·1 (row sums), as
in pydensecrf's default: it makes a weight mean "how strongly a voxel follows its
neighbourhood" whatever σ and spacing are, and keeps N symmetric positive semi-definite.

Inference: mean field, Q ← softmax(-U + Σ_m w_m N_m Q) for ``iterations`` parallel updates, the
kernel sums including each voxel's own term. With N PSD this update is exactly one step of the
concave-convex procedure on the mean-field free energy

    F(Q) = Σ_i Σ_l Q_il (U_il + log Q_il) - ½ Σ_m w_m Σ_l Q_l·N_m Q_l,

(equal, up to a constant, to the Potts energy with the i = j terms included), so F never increases
(Krähenbühl & Koltun 2013, "Parameter learning and convergent inference for dense random
fields"). ``mean_field_energy`` computes F.

Fast filtering (compiled CPU kernel, CUDA kernel, NumPy fallback — all three do the same
arithmetic; the geometry is computed once here and handed down):

* smoothness kernel: exact separable Gaussian sums over the voxels inside the volume, truncated
  at 4σ (relative error < 1e-4);
* appearance kernel: a 4D bilateral grid (z, y, x, intensity) instead of a permutohedral lattice:
  multilinear splat, a binomial blur on the grid, multilinear slice. With cells of σ/√(n/2+1/3)
  and a binomial of variance n/2 cells², the splat+blur+slice kernel has the Gaussian's variance
  in every dimension; it is W·B·Wᵀ with B PSD, so the convergence argument above holds for it
  too. Per voxel it costs 4 multiply-adds per channel in each of splat and slice.
* with Potts, Σ_l Q_l = 1 makes the last label's message a known total minus the others, so K
  classes need K-1 filterings per kernel and iteration.

``dense_crf_reference`` does the same inference with the exact Gaussian sums (dense N×N matrices,
float64) for tiny volumes; the tests bound the fast version's distance from it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from autoliver.errors import UserError, UserErrors
from autoliver.ops import _ext

# The binomial blur on the bilateral grid has variance n/2 cells² (2n+1 taps). Finer cells (larger
# n) make the multilinear splat/slice less shift-variant. Worst-voxel message error per unit weight
# against the exact Gaussians, measured on random fields and volumes: n=128 0.1 %, 64 0.23 %,
# 32 0.5 %, 16 1.1 %, 8 1.9 %, 4 2.8 %. The largest n whose blur work (cells × taps) stays within
# one pass over the voxels is used: for the liver parameters (σ 60 mm) on a CT that is n=64 or 128
# with a grid of a few ten thousand cells.
BLUR_STEPS_CHOICES = (128, 64, 32, 16, 8, 4)
# What the tests hold the fast kernel to (the measured errors above with a margin).
MESSAGE_ERROR_PER_WEIGHT = {128: 0.003, 64: 0.005, 32: 0.008, 16: 0.015, 8: 0.025, 4: 0.035}
GRID_BUDGET_MIN_WORK = 1 << 22
SMOOTH_TRUNCATE = 4.0  # smoothness kernel truncated at 4σ: dropped tail mass < 7e-5 per axis
MAX_GRID_CELLS = 64_000_000
MAX_REFERENCE_VOXELS = 4096


@dataclass(frozen=True)
class CRFParams:
    """Dense CRF parameters; defaults are Christ et al.'s for liver CT (MICCAI 2016).

    Spatial σ in millimetres; intensity σ in units of the image scaled to [0, 1].

    Caution: an intensity σ of 20 on a [0, 1] image makes the appearance kernel blind to
    intensity — a second, 60 mm wide smoothness kernel with weight 10 that pulls each voxel to the
    majority label of its surroundings. On the test suite's liver phantom (liver = 16 % of the
    volume, noisy probabilities) it erases the liver (Dice 0.49 → 0.00; pydensecrf does the same
    with the same numbers), while ``appearance_intensity_sigma=0.05`` (Krähenbühl & Koltun's 13/255)
    improves it (0.49 → 0.85). Choose these values by cross-validation before enabling the CRF.
    """

    iterations: int = 10
    smoothness_sigma_mm: float = 3.0
    smoothness_weight: float = 3.0
    appearance_sigma_mm: float = 60.0
    appearance_intensity_sigma: float = 20.0
    appearance_weight: float = 10.0
    # (low, high) in image units (e.g. HU) clipped and mapped to [0, 1]; None: image min..max.
    intensity_window: tuple[float, float] | None = None
    probability_floor: float = 1e-5

    def problems(self) -> list[str]:
        out = []
        if not isinstance(self.iterations, (int, np.integer)) or isinstance(self.iterations, bool) or self.iterations < 0:
            out.append(f"CRFParams.iterations: must be an integer >= 0, got {self.iterations!r}")
        for name in ("smoothness_sigma_mm", "appearance_sigma_mm", "appearance_intensity_sigma"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                out.append(f"CRFParams.{name}: must be a finite number > 0, got {v!r}")
        for name in ("smoothness_weight", "appearance_weight"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                out.append(f"CRFParams.{name}: must be a finite number >= 0 (a negative weight "
                           f"rewards label changes and breaks convergence), got {v!r}")
        w = self.intensity_window
        if w is not None and not (len(w) == 2 and all(math.isfinite(float(t)) for t in w) and float(w[0]) < float(w[1])):
            out.append(f"CRFParams.intensity_window: must be None or (low, high) with low < high, got {w!r}")
        f = self.probability_floor
        if not (isinstance(f, (int, float)) and 0 < f < 1):
            out.append(f"CRFParams.probability_floor: must be in (0, 1), got {f!r}")
        return out


# --------------------------------------------------------------------------- geometry (shared)


@dataclass(frozen=True)
class _Geometry:
    """Everything the kernels need besides the arrays; computed here once for all backends."""

    shape: tuple[int, int, int]
    smooth_taps: tuple[np.ndarray, np.ndarray, np.ndarray]  # per axis z, y, x: exp(-k²/2σ²), k=-r..r
    smooth_weight: float
    grid_scale: np.ndarray  # (4,) float64: grid cells per voxel step (z, y, x) and per unit intensity
    grid_shape: np.ndarray  # (4,) int64
    blur_taps: np.ndarray  # binomial, 2n+1 taps, float32
    blur_steps: int
    appearance_weight: float


def _grid_layout(shape, spacing_zyx_mm, params: CRFParams):
    """(blur steps n, grid cells per voxel step / per unit intensity, grid shape) of the appearance grid."""
    budget = max(GRID_BUDGET_MIN_WORK, int(np.prod(shape)))
    extent = np.array([n - 1 for n in shape] + [1.0], dtype=np.float64)
    for n in BLUR_STEPS_CHOICES:
        # tent splat + tent slice add s²/3 to the blur's n/2 cells²: cells of σ/√(n/2+1/3) match σ.
        factor = math.sqrt(n / 2 + 1 / 3)
        cell_mm = params.appearance_sigma_mm / factor
        cell_intensity = params.appearance_intensity_sigma / factor
        scale = np.array([sp / cell_mm for sp in spacing_zyx_mm] + [1.0 / cell_intensity], dtype=np.float64)
        gshape = np.floor(extent * scale).astype(np.int64) + 2
        if int(np.prod(gshape)) * (2 * n + 1) <= budget:
            break
    return n, scale, gshape


def _geometry(shape, spacing_zyx_mm, params: CRFParams) -> _Geometry:
    taps = []
    for n, sp in zip(shape, spacing_zyx_mm):
        sigma_vox = params.smoothness_sigma_mm / sp
        r = min(int(math.ceil(SMOOTH_TRUNCATE * sigma_vox)), n - 1)
        k = np.arange(-r, r + 1, dtype=np.float64)
        taps.append(np.exp(-0.5 * (k / sigma_vox) ** 2).astype(np.float32))
    blur_steps, scale, gshape = _grid_layout(shape, spacing_zyx_mm, params)
    if params.appearance_weight > 0 and int(np.prod(gshape)) > MAX_GRID_CELLS:
        raise UserError(
            f"dense_crf: the appearance kernel's grid would have {int(np.prod(gshape)):,} cells "
            f"(shape {tuple(int(g) for g in gshape)}), more than {MAX_GRID_CELLS:,}; appearance_sigma_mm="
            f"{params.appearance_sigma_mm} and appearance_intensity_sigma={params.appearance_intensity_sigma} "
            "are too small for this volume. Use larger sigmas or crop the volume first."
        )
    binom = np.array([math.comb(2 * blur_steps, j) for j in range(2 * blur_steps + 1)], dtype=np.float64)
    return _Geometry(
        shape=tuple(int(s) for s in shape),
        smooth_taps=tuple(taps),
        smooth_weight=float(params.smoothness_weight),
        grid_scale=scale,
        grid_shape=gshape,
        blur_taps=(binom / binom.sum()).astype(np.float32),
        blur_steps=int(blur_steps),
        appearance_weight=float(params.appearance_weight),
    )


# --------------------------------------------------------------------------- validation


def _as_numpy(a):
    try:
        import torch

        if isinstance(a, torch.Tensor):
            return a.detach().cpu().numpy()
    except ImportError:  # torch is a dependency, but the NumPy face must not need it
        pass
    return np.asarray(a)


def _validate(probabilities, image, spacing_zyx_mm, params) -> tuple[tuple[float, float, float], list[str]]:
    problems = []
    if not isinstance(params, CRFParams):
        raise UserError(f"dense_crf: params must be a CRFParams, got {type(params).__name__}")
    problems += params.problems()
    pshape, ishape = tuple(probabilities.shape), tuple(image.shape)
    if len(pshape) != 4 or pshape[0] < 1:
        problems.append(f"dense_crf: probabilities must have shape (K, z, y, x) with K >= 1, got {pshape}")
    elif len(ishape) != 3 or pshape[1:] != ishape:
        problems.append(f"dense_crf: image must have shape (z, y, x) = {pshape[1:]} to match the "
                        f"probabilities, got {ishape}")
    elif min(ishape) < 1:
        problems.append(f"dense_crf: the volume is empty, shape {ishape}")
    try:
        spacing = tuple(float(s) for s in spacing_zyx_mm)
    except (TypeError, ValueError):
        spacing = ()
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        problems.append(f"dense_crf: spacing_zyx_mm must be three finite numbers > 0 (mm), got {spacing_zyx_mm!r}")
    return spacing, problems


def _scaled_image(image: np.ndarray, params: CRFParams) -> np.ndarray:
    """The image mapped to [0, 1] (float32) by the intensity window or its own range."""
    img = np.asarray(image)
    if params.intensity_window is not None:
        lo, hi = (float(t) for t in params.intensity_window)
    else:
        lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        return np.zeros(img.shape, dtype=np.float32)
    out = img.astype(np.float32)  # a copy: the caller's array is never modified
    if params.intensity_window is not None:
        np.clip(out, np.float32(lo), np.float32(hi), out=out)
    out -= np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    return out


def _check_values(p: np.ndarray, img: np.ndarray) -> list[str]:
    problems = []
    if not np.isfinite(p).all() or (p < 0).any():
        problems.append("dense_crf: probabilities must be finite and >= 0 (softmax output), found "
                        "negative, NaN or infinite values")
    if not np.isfinite(img).all():
        problems.append("dense_crf: image has NaN or infinite values; fill them first")
    return problems


def _unary_start(p: np.ndarray, floor: float, dtype) -> tuple[np.ndarray, np.ndarray]:
    """U = -log(max(p, floor)) and the starting marginals softmax(-U) (= p renormalised)."""
    unary = -np.log(np.maximum(p.astype(dtype), floor))
    q = _softmax(-unary)
    return unary, q


def _softmax(logits: np.ndarray) -> np.ndarray:
    m = logits.max(axis=0, keepdims=True)
    e = np.exp(logits - m)
    return e / e.sum(axis=0, keepdims=True)


# --------------------------------------------------------------------------- public face


def dense_crf(probabilities, image, spacing_zyx_mm, params: CRFParams = CRFParams()):
    """Refine class probabilities (K, z, y, x) with a 3D dense CRF; returns marginals, float32.

    ``image`` (z, y, x) is the scan (e.g. HU); ``spacing_zyx_mm`` its voxel size. NumPy arrays and
    CPU tensors run on the CPU (compiled kernel, or the NumPy fallback without it); CUDA tensors
    run on their GPU. The result has the input's kind (NumPy array or tensor on the same device).
    Probabilities that do not sum to 1 are renormalised after flooring.
    """
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    is_tensor = torch is not None and isinstance(probabilities, torch.Tensor)
    if is_tensor and probabilities.is_cuda:
        return _dense_crf_cuda(probabilities, image, spacing_zyx_mm, params)

    p, img = _as_numpy(probabilities), _as_numpy(image)
    spacing, problems = _validate(p, img, spacing_zyx_mm, params)
    if problems:
        raise UserErrors(problems, "dense_crf: invalid input")
    problems = _check_values(p, img)
    if problems:
        raise UserErrors(problems, "dense_crf: invalid input")
    out = _dense_crf_cpu(np.ascontiguousarray(p, dtype=np.float32), img, spacing, params)
    if is_tensor:
        return torch.from_numpy(out)
    return out


def _dense_crf_cpu(p: np.ndarray, img: np.ndarray, spacing, params: CRFParams) -> np.ndarray:
    K = p.shape[0]
    if K == 1:
        return np.ones_like(p, dtype=np.float32)
    image01 = _scaled_image(img, params)
    geom = _geometry(p.shape[1:], spacing, params)
    mod = _ext.load("crf")
    if mod is None:
        return _mean_field_numpy(p, image01, geom, params.iterations, params.probability_floor)
    out = np.empty_like(p)
    mod.mean_field(
        p, image01, out, *geom.smooth_taps, geom.smooth_weight, geom.grid_scale,
        geom.grid_shape, geom.blur_taps, geom.appearance_weight, int(params.iterations),
        float(params.probability_floor), _ext.num_threads(),
    )
    return out


def _pairwise_messages(values: np.ndarray, image01: np.ndarray, spacing, params: CRFParams,
                       use_ext: bool = True) -> np.ndarray:
    """Σ_m w_m N_m · values for C fields (C, z, y, x), by the fast filtering (compiled or NumPy).

    Exposed for tests: filtering unit vectors gives the fast kernel as a matrix."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    geom = _geometry(values.shape[1:], spacing, params)
    mod = _ext.load("crf") if use_ext else None
    if mod is None:
        return _messages_numpy(values, image01, geom).astype(np.float32)
    out = np.empty_like(values)
    mod.messages(values, np.ascontiguousarray(image01, dtype=np.float32), out, *geom.smooth_taps,
                 geom.smooth_weight, geom.grid_scale, geom.grid_shape, geom.blur_taps,
                 geom.appearance_weight, _ext.num_threads())
    return out


# --------------------------------------------------------------------------- NumPy fallback (fast algorithm)


def _smooth_numpy(values: np.ndarray, geom: _Geometry) -> np.ndarray:
    from scipy.ndimage import correlate1d

    out = values.astype(np.float64)
    for axis, taps in zip((1, 2, 3), geom.smooth_taps):
        out = correlate1d(out, taps.astype(np.float64), axis=axis, mode="constant", cval=0.0)
    return out


class _GridNumpy:
    """The bilateral grid's splat/blur/slice in NumPy: the same arithmetic as the kernels."""

    def __init__(self, image01: np.ndarray, geom: _Geometry):
        shape = image01.shape
        self.gshape = tuple(int(g) for g in geom.grid_shape)
        self.taps = geom.blur_taps.astype(np.float64)
        coords = [np.arange(n, dtype=np.float64) * geom.grid_scale[d] for d, n in enumerate(shape)]
        coords = [c.reshape([-1 if d == j else 1 for j in range(3)]) for d, c in enumerate(coords)]
        coords.append(image01.astype(np.float64) * geom.grid_scale[3])
        self.base, self.frac = [], []
        for d, c in enumerate(coords):
            c = np.broadcast_to(c, shape)
            c0 = np.minimum(np.floor(c), self.gshape[d] - 2).astype(np.int64)
            self.base.append(c0.ravel())
            self.frac.append((c - c0).ravel())

    def _corners(self):
        for corner in range(16):
            bits = [(corner >> (3 - d)) & 1 for d in range(4)]
            idx = np.zeros_like(self.base[0])
            w = np.ones(self.base[0].shape, dtype=np.float64)
            for d in range(4):
                idx = idx * self.gshape[d] + self.base[d] + bits[d]
                w = w * (self.frac[d] if bits[d] else 1.0 - self.frac[d])
            yield idx, w

    def _splat_matrix(self):
        """W (voxels × cells), sparse: worth building when many fields share one image."""
        from scipy.sparse import csr_matrix

        corners = list(self._corners())
        rows = np.tile(np.arange(self.base[0].size), len(corners))
        cols = np.concatenate([idx for idx, _ in corners])
        vals = np.concatenate([w for _, w in corners])
        return csr_matrix((vals, (rows, cols)), shape=(self.base[0].size, int(np.prod(self.gshape))))

    def apply(self, values: np.ndarray) -> np.ndarray:
        C = values.shape[0]
        flat = values.reshape(C, -1).astype(np.float64)
        size = int(np.prod(self.gshape))
        many = C > 4
        if many:
            w_matrix = self._splat_matrix()
            grid = np.asarray((w_matrix.T @ flat.T).T)
        else:
            corners = list(self._corners())
            grid = np.zeros((C, size))
            for idx, w in corners:
                for c in range(C):
                    grid[c] += np.bincount(idx, weights=w * flat[c], minlength=size)
        grid = grid.reshape((C,) + self.gshape)
        r = len(self.taps) // 2
        for axis in range(1, 5):
            # The blur along one axis as a banded n×n matrix (axes are short): one BLAS call.
            n = grid.shape[axis]
            k = np.arange(n)
            offset = k[None, :] - k[:, None]
            band = np.where(np.abs(offset) <= r, self.taps[np.clip(offset + r, 0, 2 * r)], 0.0)
            grid = np.moveaxis(np.tensordot(band, grid, axes=([1], [axis])), 0, axis)
        grid = grid.reshape(C, -1)
        if many:
            return np.asarray((w_matrix @ grid.T).T).reshape(values.shape)
        out = np.zeros_like(flat)
        for idx, w in corners:
            out += w * grid[:, idx]
        return out.reshape(values.shape)


class _NormalisedKernels:
    """Σ_m w_m D_m^-1/2 k_m D_m^-1/2 with the fast kernels (NumPy)."""

    def __init__(self, image01: np.ndarray, geom: _Geometry):
        self.geom = geom
        ones = np.ones((1,) + image01.shape)
        self.terms = []
        if geom.smooth_weight > 0:
            norm = 1.0 / np.sqrt(_smooth_numpy(ones, geom)[0])
            self.terms.append((geom.smooth_weight, norm, lambda v: _smooth_numpy(v, geom)))
        if geom.appearance_weight > 0:
            grid = _GridNumpy(image01, geom)
            norm = 1.0 / np.sqrt(grid.apply(ones)[0])
            self.terms.append((geom.appearance_weight, norm, grid.apply))

    def __call__(self, values: np.ndarray) -> np.ndarray:
        out = np.zeros(values.shape, dtype=np.float64)
        for w, norm, apply in self.terms:
            out += w * norm * apply(values * norm)
        return out


def _messages_numpy(values, image01, geom):
    return _NormalisedKernels(image01, geom)(values)


def _mean_field_numpy(p, image01, geom, iterations, floor):
    unary, q = _unary_start(p, floor, np.float64)
    kernels = _NormalisedKernels(image01, geom)
    K = p.shape[0]
    total = kernels(np.ones((1,) + p.shape[1:]))[0] if iterations else None
    for _ in range(iterations):
        msg = np.empty_like(q)
        msg[: K - 1] = kernels(q[: K - 1])
        msg[K - 1] = total - msg[: K - 1].sum(axis=0)
        q = _softmax(-unary + msg)
    return q.astype(np.float32)


# --------------------------------------------------------------------------- exact reference


def _exact_kernels(shape, spacing, image01, params: CRFParams) -> list[tuple[float, np.ndarray]]:
    """[(w_m, N_m)] with N_m = D^-1/2 k_m D^-1/2 as dense float64 matrices (exact Gaussians)."""
    n = int(np.prod(shape))
    if n > MAX_REFERENCE_VOXELS:
        raise UserError(f"dense_crf_reference: the exact reference is for tiny volumes (<= "
                        f"{MAX_REFERENCE_VOXELS} voxels), got {n}. Use dense_crf for real volumes.")
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) * sp for s, sp in zip(shape, spacing)], indexing="ij")
    pos = np.stack([g.ravel() for g in grids], axis=1)
    inten = image01.astype(np.float64).reshape(-1, 1)
    out = []
    for w, feats in (
        (params.smoothness_weight, pos / params.smoothness_sigma_mm),
        (params.appearance_weight, np.concatenate(
            [pos / params.appearance_sigma_mm, inten / params.appearance_intensity_sigma], axis=1)),
    ):
        if w <= 0:
            continue
        sq = (feats ** 2).sum(1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * feats @ feats.T, 0.0)
        k = np.exp(-0.5 * d2)
        norm = 1.0 / np.sqrt(k.sum(1))
        out.append((float(w), norm[:, None] * k * norm[None, :]))
    return out


def dense_crf_reference(probabilities, image, spacing_zyx_mm, params: CRFParams = CRFParams()) -> np.ndarray:
    """The same inference with exact Gaussian sums (dense matrices, float64, returned as float64);
    tiny volumes only."""
    p, img = _as_numpy(probabilities), _as_numpy(image)
    spacing, problems = _validate(p, img, spacing_zyx_mm, params)
    problems += [] if problems else _check_values(p, img)
    if problems:
        raise UserErrors(problems, "dense_crf_reference: invalid input")
    K = p.shape[0]
    unary, q = _unary_start(p, params.probability_floor, np.float64)
    kernels = _exact_kernels(p.shape[1:], spacing, _scaled_image(img, params), params)
    q = q.reshape(K, -1)
    unary = unary.reshape(K, -1)
    for _ in range(params.iterations):
        msg = sum((w * (q @ n) for w, n in kernels), np.zeros_like(q))
        q = _softmax(-unary + msg)
    return q.reshape(p.shape)  # float64: the reference keeps its precision


def mean_field_energy(marginals, probabilities, image, spacing_zyx_mm, params: CRFParams = CRFParams(),
                      kernels: list[tuple[float, np.ndarray]] | None = None) -> float:
    """F(Q) = Σ Q(U + log Q) - ½ Σ_m w_m Σ_l Q_l·N_m Q_l, exact (tiny volumes); see the module doc.

    ``kernels`` ([(w_m, N_m)], dense) replaces the exact Gaussians, e.g. by the fast kernels as matrices.
    """
    q = _as_numpy(marginals).astype(np.float64)
    p, img = _as_numpy(probabilities), _as_numpy(image)
    spacing, problems = _validate(p, img, spacing_zyx_mm, params)
    if problems:
        raise UserErrors(problems, "mean_field_energy: invalid input")
    K = p.shape[0]
    unary = -np.log(np.maximum(p.astype(np.float64), params.probability_floor)).reshape(K, -1)
    q = q.reshape(K, -1)
    if kernels is None:
        kernels = _exact_kernels(p.shape[1:], spacing, _scaled_image(img, params), params)
    entropy_term = np.sum(q * np.log(np.maximum(q, 1e-300)))
    pairwise = sum(w * np.einsum("li,ij,lj->", q, n, q) for w, n in kernels)
    return float(np.sum(q * unary) + entropy_term - 0.5 * pairwise)


# --------------------------------------------------------------------------- CUDA


def _dense_crf_cuda(probabilities, image, spacing_zyx_mm, params: CRFParams):
    import ctypes

    import torch

    from autoliver.ops._cuda import current_stream_ptr, try_load_cuda

    if not isinstance(image, torch.Tensor):
        image = torch.as_tensor(np.asarray(image))
    spacing, problems = _validate(probabilities, image, spacing_zyx_mm, params)
    if problems:
        raise UserErrors(problems, "dense_crf: invalid input")
    dev = probabilities.device
    p = probabilities.detach().to(dtype=torch.float32).contiguous()
    if not bool(torch.isfinite(p).all()) or bool((p < 0).any()):
        raise UserError("dense_crf: probabilities must be finite and >= 0 (softmax output), found "
                        "negative, NaN or infinite values")
    K = p.shape[0]
    if K == 1:
        return torch.ones_like(p)
    img = image.detach().to(device=dev, dtype=torch.float64)
    if not bool(torch.isfinite(img).all()):
        raise UserError("dense_crf: image has NaN or infinite values; fill them first")
    if params.intensity_window is not None:
        lo, hi = (float(t) for t in params.intensity_window)
        img = img.clamp(lo, hi)
    else:
        lo, hi = float(img.min()), float(img.max())
    img01 = ((img - lo) / (hi - lo)).float().contiguous() if hi > lo else torch.zeros_like(img, dtype=torch.float32)
    geom = _geometry(tuple(p.shape[1:]), spacing, params)
    lib = try_load_cuda("crf", "running the CRF on the CPU instead")
    if lib is None:
        out = _dense_crf_cpu(p.cpu().numpy(), image.detach().cpu().numpy(), spacing, params)
        return torch.from_numpy(out).to(dev)
    fn = lib.autoliver_crf_mean_field
    fn.restype = ctypes.c_int
    out = torch.empty_like(p)
    taps = [np.ascontiguousarray(t, dtype=np.float32) for t in geom.smooth_taps]
    scale = np.ascontiguousarray(geom.grid_scale, dtype=np.float64)
    gshape = np.ascontiguousarray(geom.grid_shape, dtype=np.int64)
    blur = np.ascontiguousarray(geom.blur_taps, dtype=np.float32)
    fp = ctypes.POINTER(ctypes.c_float)
    with torch.cuda.device(dev):
        err = fn(
            ctypes.c_void_p(p.data_ptr()), ctypes.c_void_p(img01.data_ptr()), ctypes.c_void_p(out.data_ptr()),
            ctypes.c_int(K), ctypes.c_int(p.shape[1]), ctypes.c_int(p.shape[2]), ctypes.c_int(p.shape[3]),
            taps[0].ctypes.data_as(fp), ctypes.c_int(len(taps[0]) // 2),
            taps[1].ctypes.data_as(fp), ctypes.c_int(len(taps[1]) // 2),
            taps[2].ctypes.data_as(fp), ctypes.c_int(len(taps[2]) // 2),
            ctypes.c_float(geom.smooth_weight),
            scale.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
            gshape.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)),
            blur.ctypes.data_as(fp), ctypes.c_int(len(blur) // 2),
            ctypes.c_float(geom.appearance_weight), ctypes.c_int(int(params.iterations)),
            ctypes.c_float(float(params.probability_floor)), current_stream_ptr(dev),
        )
    if err != 0:
        raise RuntimeError(f"dense_crf: the CUDA kernel failed with CUDA error {err}")
    return out


__all__ = ["CRFParams", "dense_crf", "dense_crf_reference", "mean_field_energy"]
