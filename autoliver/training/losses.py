"""Segmentation losses: weighted sums of named terms, deep supervision, region-based targets.

A recipe names its loss as ``{term: weight}`` (``{"dice": 1, "ce": 1}`` is nnU-Net's default).
Terms, for softmax outputs (one channel per class) or, with ``region=True``, for sigmoid outputs
(one channel per nested region ``label >= k``, k = 1 … K−1: liver ⊃ tumour):

  dice           1 − soft Dice, foreground channels, summed over the batch ("batch Dice")
  ce             cross-entropy (softmax) / binary cross-entropy with logits (regions)
  bce            binary cross-entropy of every channel's probability against its one-hot target
  focal_tversky  (1 − Tversky index)^0.75, α = 0.7 on false negatives, β = 0.3 on false positives
                 (Abraham & Khan 2019)
  focal          focal loss, γ = 2 (Lin et al. 2017)
  blob_dice      1 − soft Dice of every connected component ("blob") of a foreground channel's
                 target, on its own, averaged over the channel's blobs in the batch, each blob equal,
                 then over the channels that have blobs (the "blob loss" of Kofler et al. 2023,
                 per class): a 5 mm lesion weighs as much as a 60 mm one,
                 where batch Dice and cross-entropy weigh them by their voxels. A blob's Dice counts
                 the prediction on its own voxels and on every voxel of its sample that belongs to no
                 blob (so false alarms cost), not on the other blobs. Components are 26-connected
                 (8 in 2D) and labelled on the full-resolution target by the compiled kernel
                 (``autoliver.ops.components``); coarser outputs take them by nearest-neighbour
                 sampling, and a blob too small to survive there is left out of that output's term.

Deep supervision: output ``i`` (full resolution first) gets weight 1/2^i, the coarsest gets 0,
and the weights are normalised to sum to 1 (nnU-Net's choice); the target is reduced to each
output's size by nearest-neighbour sampling.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from autoliver.errors import UserError, did_you_mean

TERMS = ("dice", "ce", "bce", "focal_tversky", "focal", "blob_dice")
SMOOTH = 1e-5


def deep_supervision_weights(n: int) -> list[float]:
    if n == 1:
        return [1.0]
    w = [1.0 / 2 ** i for i in range(n)]
    w[-1] = 0.0
    total = sum(w)
    return [v / total for v in w]


def check_terms(terms: dict[str, float]) -> None:
    if not terms:
        raise UserError("recipe.loss: must name at least one term, got {}")
    for name, weight in terms.items():
        if name not in TERMS:
            raise UserError(f"recipe.loss: terms must be among {', '.join(TERMS)}, got {name!r}.{did_you_mean(name, TERMS)}")
        if not weight >= 0:
            raise UserError(f"recipe.loss.{name}: weight must be >= 0, got {weight}")


def _probabilities(logits, region: bool):
    return torch.sigmoid(logits) if region else torch.softmax(logits, dim=1)


def targets(seg: torch.Tensor, num_outputs: int, region: bool) -> torch.Tensor:
    """(B, 1, …) integer labels → (B, C, …) float one-hot (softmax) or nested regions (sigmoid)."""
    labels = seg[:, 0].long()
    if region:
        return torch.stack([(labels >= k) for k in range(1, num_outputs + 1)], dim=1).float()
    return F.one_hot(labels.clamp(0, num_outputs - 1), num_outputs).movedim(-1, 1).float()


def _sum_dims(x):
    return x.sum(dim=[0, *range(2, x.ndim)])  # over batch and space: one value per channel


def soft_dice(probs, onehot, foreground: slice):
    tp = _sum_dims(probs * onehot)[foreground]
    size = _sum_dims(probs)[foreground] + _sum_dims(onehot)[foreground]
    return 1 - ((2 * tp + SMOOTH) / (size + SMOOTH).clamp_min(1e-8)).mean()


def focal_tversky(probs, onehot, foreground: slice, alpha=0.7, beta=0.3, exponent=0.75):
    tp = _sum_dims(probs * onehot)[foreground]
    fn = _sum_dims((1 - probs) * onehot)[foreground]
    fp = _sum_dims(probs * (1 - onehot))[foreground]
    tversky = (tp + SMOOTH) / (tp + alpha * fn + beta * fp + SMOOTH)
    return ((1 - tversky).clamp_min(0) ** exponent).mean()


def blobs(target: torch.Tensor, foreground: slice) -> torch.Tensor:
    """(B, C, …) one-hot or region targets → (B, C', …) int64 blob numbers for the foreground
    channels: every connected component of every channel of every sample numbered 1…n, unique in
    the batch; 0 on voxels of no blob."""
    from autoliver.ops.components import label

    masks = (target[:, foreground] > 0.5).cpu().numpy()
    shape = masks.shape
    spatial = masks.reshape(-1, *shape[2:])
    if spatial.ndim == 3:  # 2D patches: one slice each
        spatial = spatial[:, None]
    # one labelling for the batch: the masks one after another along z, a blank slice between them
    gap = np.zeros((1, *spatial.shape[2:]), bool)
    stack = np.concatenate([a for m in spatial for a in (m, gap)][:-1])
    ids, _ = label(stack, connectivity=26)
    depth = spatial.shape[1]
    ids = np.stack([ids[k * (depth + 1):k * (depth + 1) + depth] for k in range(len(spatial))]).astype(np.int64)
    return torch.from_numpy(ids.reshape(shape)).to(target.device)


def blob_dice(probs, ids: torch.Tensor, foreground: slice):
    """Mean over blobs of 1 − soft Dice of each blob alone (see the module's docstring)."""
    p = probs[:, foreground]
    n = int(ids.max()) if ids.numel() else 0
    if n == 0:
        return p.sum() * 0.0  # no blob in the batch: no term, but the graph stays whole
    flat_ids = ids.reshape(-1)
    channels = p.shape[0] * p.shape[1]  # one group per sample and channel
    groups = torch.arange(channels, device=p.device).repeat_interleave(p[0, 0].numel())
    mass = torch.zeros(n + 1, dtype=p.dtype, device=p.device).index_add_(0, flat_ids, p.reshape(-1))
    size = torch.bincount(flat_ids, minlength=n + 1).to(p.dtype)
    owner = torch.zeros(n + 1, dtype=torch.long, device=p.device).scatter_(0, flat_ids, groups)
    # the prediction on each sample-channel's voxels of no blob (its false alarms)
    outside = torch.zeros(channels, dtype=p.dtype, device=p.device).index_add_(
        0, groups, p.reshape(-1) * (flat_ids == 0))
    present = size[1:] > 0
    group = owner[1:][present]
    tp, sz, fa = mass[1:][present], size[1:][present], outside[group]
    loss = 1 - (2 * tp + SMOOTH) / (tp + fa + sz + SMOOTH)
    # mean over the blobs of each channel (class), then over the channels that have blobs
    channel = group % p.shape[1]
    sums = torch.zeros(p.shape[1], dtype=p.dtype, device=p.device).index_add_(0, channel, loss)
    counts = torch.bincount(channel, minlength=p.shape[1])
    return (sums[counts > 0] / counts[counts > 0]).mean()


def _log_probs(logits, region: bool):
    """log p and log(1 − p) per channel, computed stably from the logits."""
    if region:
        return F.logsigmoid(logits), F.logsigmoid(-logits)
    logp = torch.log_softmax(logits, dim=1)
    return logp, torch.log1p(-logp.exp().clamp(max=1 - 1e-6))


def term_value(name: str, logits, seg, target, region: bool, foreground: slice, ids=None):
    if name == "dice":
        return soft_dice(_probabilities(logits, region), target, foreground)
    if name == "focal_tversky":
        return focal_tversky(_probabilities(logits, region), target, foreground)
    if name == "ce":
        if region:
            return F.binary_cross_entropy_with_logits(logits, target)
        return F.cross_entropy(logits, seg[:, 0].long())
    if name == "bce":
        logp, log1mp = _log_probs(logits, region)
        return -(target * logp + (1 - target) * log1mp).mean()
    if name == "focal":
        logp, log1mp = _log_probs(logits, region)
        if region:  # binary focal loss per region channel
            log_pt = target * logp + (1 - target) * log1mp
        else:
            log_pt = (target * logp).sum(1, keepdim=True)
        return (-(1 - log_pt.exp()) ** 2 * log_pt).mean()
    if name == "blob_dice":
        return blob_dice(_probabilities(logits, region), ids, foreground)
    raise UserError(f"loss term {name!r} is unknown")


class SegmentationLoss(torch.nn.Module):
    """Σ_outputs w_i · Σ_terms weight · term(output_i, target at output_i's size)."""

    def __init__(self, terms: dict[str, float], region: bool = False):
        super().__init__()
        check_terms(terms)
        self.terms = {k: float(v) for k, v in terms.items() if v > 0}
        self.region = region

    def forward(self, outputs, seg: torch.Tensor) -> torch.Tensor:
        """outputs: logits (B, C, …) or a list of them (full resolution first); seg (B, 1, …) labels."""
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        weights = deep_supervision_weights(len(outputs))
        foreground = slice(0, None) if self.region else slice(1, None)
        ids = None
        if "blob_dice" in self.terms:  # blobs of the full-resolution target, once per batch
            ids = blobs(targets(seg, outputs[0].shape[1], self.region), foreground)
        total = 0.0
        for w, logits in zip(weights, outputs):
            if w == 0:  # keep the head in the graph with a zero gradient: DDP insists every parameter gets one
                total = total + 0.0 * logits.float().sum()
                continue
            logits = logits.float()  # losses in float32 even under autocast
            s = seg if seg.shape[2:] == logits.shape[2:] else F.interpolate(seg.float(), size=logits.shape[2:], mode="nearest")
            target = targets(s, logits.shape[1], self.region)
            ids_here = ids if ids is None or ids.shape[2:] == logits.shape[2:] else \
                F.interpolate(ids.double(), size=logits.shape[2:], mode="nearest").long()
            total = total + w * sum(weight * term_value(name, logits, s, target, self.region, foreground, ids_here)
                                    for name, weight in self.terms.items())
        return total


def predicted_classes(logits: torch.Tensor, region: bool) -> torch.Tensor:
    """(B, C, …) logits → (B, …) class labels: argmax, or nested region thresholds at 0.5."""
    if region:
        return (logits > 0).long().cumprod(dim=1).sum(dim=1)
    return logits.argmax(dim=1)


def dice_counts(pred: torch.Tensor, seg: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K−1, 3) true positives, false positives, false negatives of each foreground class."""
    labels = seg[:, 0].long()
    rows = []
    for k in range(1, num_classes):
        p, t = pred == k, labels == k
        rows.append(torch.stack([(p & t).sum(), (p & ~t).sum(), (~p & t).sum()]))
    return torch.stack(rows).double()
