"""Intensity normalisation per channel, as the plan's :class:`ChannelNormalization` says.

Two steps so that a big scan is never normalised as a whole copy: :func:`resolve_normalization`
measures what a scheme needs from the case (statistics, a histogram) and returns plain numbers;
:func:`make_transform` turns them into a pointwise function that the resampler applies to each
chunk on the fly.

Schemes (raw intensities in, float32 out):

- ``ct``: clip to [lower, upper], then (x - mean) / std with the dataset's foreground statistics
  from the plan (nnU-Net's CT scheme).
- ``zscore``: (x - mean) / std with the case's own statistics over the body (see cropping).
- ``hu_window``: clip to [lower, upper] and scale to [0, 1].
- ``liver_zscore``: clip to [lower, upper], then z-score with a label-free estimate of the
  case's liver statistics: median and interquartile spread (/ 1.349) of the body voxels inside the
  window, where the liver dominates the soft tissue of an abdominal CT. The reference label is never
  used, so training (label known) and prediction (no label) normalise a case identically; with
  the label, the network would learn on intensities that prediction cannot reproduce. If the plan
  sets ``mean``/``std`` (other than the defaults 0, 1), those fixed numbers are used instead, in
  both. Which one was used is recorded in the case's properties (``source``).
- ``histeq``: clip to [lower, upper], then histogram equalisation over the body voxels to [0, 1].
- ``none``: unchanged (as float32).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from autoliver.errors import UserError, choose
from autoliver.planning.plan import ChannelNormalization

SCHEMES = ("ct", "zscore", "hu_window", "liver_zscore", "histeq", "none")
CLIPPING_SCHEMES = ("ct", "hu_window", "liver_zscore", "histeq")
HISTOGRAM_BINS = 2048
MIN_STD = 1e-8
_CHUNK_VOXELS = 1 << 24


@dataclass(frozen=True)
class NormalizationParams:
    """A scheme resolved for one channel of one case: only numbers, applied pointwise."""

    scheme: str
    lower: float = 0.0
    upper: float = 0.0
    mean: float = 0.0
    std: float = 1.0
    source: str = "plan"  # where mean/std came from: plan | case | case_estimate
    cdf: tuple[float, ...] = field(default=(), repr=False)  # histeq lookup table over [lower, upper]

    def summary(self) -> dict:
        """What the properties file records (the histogram table is left out)."""
        return {"scheme": self.scheme, "lower": self.lower, "upper": self.upper, "mean": self.mean,
                "std": self.std, "source": self.source}


def check_normalization(norm: ChannelNormalization, where: str) -> None:
    choose(f"{where}.scheme", norm.scheme, SCHEMES)
    if norm.scheme in CLIPPING_SCHEMES and not norm.lower < norm.upper:
        raise UserError(f"{where}: scheme {norm.scheme!r} needs lower < upper, got lower={norm.lower}, "
                        f"upper={norm.upper}. Fix the plan (e.g. lower=-100, upper=400 for a liver HU window).")
    if norm.scheme in ("ct",) and not norm.std > 0:
        raise UserError(f"{where}: scheme 'ct' needs std > 0 (dataset foreground statistics), got {norm.std}.")


def _chunks(volume: np.ndarray, mask: np.ndarray | None) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    step = max(1, _CHUNK_VOXELS // max(1, volume[0].size))
    for z0 in range(0, volume.shape[0], step):
        x = torch.from_numpy(np.ascontiguousarray(volume[z0:z0 + step])).to(torch.float32)
        m = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask[z0:z0 + step]))
        yield x, m


def _moments(volume: np.ndarray, mask: np.ndarray | None) -> tuple[int, float, float]:
    n, s, ss = 0, 0.0, 0.0
    for x, m in _chunks(volume, mask):
        v = x[m] if m is not None else x.reshape(-1)
        v = v.to(torch.float64)
        n += v.numel()
        s += float(v.sum())
        ss += float((v * v).sum())
    if n == 0:
        return 0, 0.0, 1.0
    mean = s / n
    std = max(ss / n - mean * mean, 0.0) ** 0.5
    return n, mean, std


def _histogram(volume: np.ndarray, mask: np.ndarray | None, lower: float, upper: float) -> np.ndarray:
    counts = torch.zeros(HISTOGRAM_BINS, dtype=torch.float64)
    for x, m in _chunks(volume, mask):
        x.clamp_(lower, upper)
        v = x[m] if m is not None else x.reshape(-1)
        if v.numel():
            counts += torch.histc(v, bins=HISTOGRAM_BINS, min=lower, max=upper).to(torch.float64)
    return counts.numpy()


def _quantile_from_histogram(counts: np.ndarray, lower: float, upper: float, q: float) -> float:
    cdf = np.cumsum(counts) / max(counts.sum(), 1.0)
    i = int(np.searchsorted(cdf, q))
    return lower + (min(i, len(counts) - 1) + 0.5) * (upper - lower) / len(counts)


def resolve_normalization(volume: np.ndarray, norm: ChannelNormalization, *,
                          body: np.ndarray | None = None) -> NormalizationParams:
    """Measure what ``norm`` needs from one (z, y, x) channel of a cropped case.

    ``body``: bool mask of the body (for ``zscore``, ``histeq`` and ``liver_zscore``). No scheme
    looks at the label: what training measures, prediction must be able to measure too.
    """
    check_normalization(norm, "normalization")
    lo, hi = float(norm.lower), float(norm.upper)
    if norm.scheme == "none":
        return NormalizationParams("none")
    if norm.scheme == "hu_window":
        return NormalizationParams("hu_window", lo, hi, source="plan")
    if norm.scheme == "ct":
        return NormalizationParams("ct", lo, hi, float(norm.mean), float(norm.std), "plan")
    if norm.scheme == "zscore":
        n, mean, std = _moments(volume, body if body is not None and body.any() else None)
        return NormalizationParams("zscore", mean=mean, std=max(std, MIN_STD), source="case")
    if norm.scheme == "histeq":
        counts = _histogram(volume, body if body is not None and body.any() else None, lo, hi)
        cdf = np.cumsum(counts)
        cdf = cdf / cdf[-1] if cdf[-1] > 0 else np.linspace(0.0, 1.0, len(cdf))
        return NormalizationParams("histeq", lo, hi, source="case", cdf=tuple(float(c) for c in cdf))
    # liver_zscore
    if (norm.mean, norm.std) != (0.0, 1.0):
        return NormalizationParams("liver_zscore", lo, hi, float(norm.mean), float(norm.std), "plan")
    # Robust estimate: soft tissue inside the window; the liver dominates it in an abdominal CT.
    inside = _histogram(volume, body if body is not None and body.any() else None, lo, hi)
    inside[0] = inside[-1] = 0  # clipped voxels are outside the window, not tissue in it
    median = _quantile_from_histogram(inside, lo, hi, 0.5)
    iqr = _quantile_from_histogram(inside, lo, hi, 0.75) - _quantile_from_histogram(inside, lo, hi, 0.25)
    return NormalizationParams("liver_zscore", lo, hi, median, max(iqr / 1.349, MIN_STD), "case_estimate")


def make_transform(params: NormalizationParams) -> Callable[[torch.Tensor], torch.Tensor]:
    """A pointwise, in-place function of float32 tensors that applies ``params``."""
    s = params.scheme
    lo, hi = params.lower, params.upper
    if s == "none":
        return lambda x: x
    if s == "hu_window":
        return lambda x: x.clamp_(lo, hi).sub_(lo).div_(hi - lo)
    if s == "zscore":
        return lambda x: x.sub_(params.mean).div_(params.std)
    if s in ("ct", "liver_zscore"):
        return lambda x: x.clamp_(lo, hi).sub_(params.mean).div_(max(params.std, MIN_STD))
    if s == "histeq":
        cdf = torch.tensor(params.cdf, dtype=torch.float32)
        n = len(params.cdf)

        def histeq(x: torch.Tensor) -> torch.Tensor:
            # Position between bin centres, then linear interpolation of the cumulative histogram.
            pos = x.clamp_(lo, hi).sub_(lo).mul_(n / (hi - lo)).sub_(0.5).clamp_(0, n - 1)
            i0 = pos.floor().to(torch.int64)
            frac = pos - i0
            i1 = (i0 + 1).clamp_(max=n - 1)
            return torch.lerp(cdf[i0], cdf[i1], frac)

        return histeq
    raise UserError(f"normalization: unknown scheme {s!r}")


def normalize(volume: np.ndarray, params: NormalizationParams) -> np.ndarray:
    """Whole-volume convenience (small arrays, tests): float32 copy of ``volume`` normalised."""
    x = torch.from_numpy(np.ascontiguousarray(volume)).to(torch.float32, copy=True)
    return make_transform(params)(x).numpy()
