"""Networks registered by name: ``NetworkSpec.architecture`` is a key of :data:`NETWORKS`."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from autoliver.errors import UserErrors, did_you_mean
from autoliver.planning.plan import NetworkSpec
from autoliver.training.networks.blocks import DOWNSAMPLING
from autoliver.training.networks.convlstm import ConvLSTMUNet
from autoliver.training.networks.nested import NestedUNet
from autoliver.training.networks.unet import UNet

NETWORKS: dict[str, Callable[[NetworkSpec], nn.Module]] = {
    "unet": UNet,
    "residual_unet": lambda spec: UNet(spec, residual=True),
    "nested_unet": NestedUNet,
    "convlstm_unet": ConvLSTMUNet,
}


def check_spec(spec: NetworkSpec) -> None:
    """All problems of a spec at once, each naming the field, the rule and the value."""
    problems = []
    if spec.architecture not in NETWORKS:
        problems.append(f"network.architecture must be one of {', '.join(NETWORKS)}, got {spec.architecture!r}."
                        f"{did_you_mean(spec.architecture, NETWORKS)}")
    if spec.dims not in (2, 3):
        problems.append(f"network.dims must be 2 or 3, got {spec.dims}")
    if spec.downsampling not in DOWNSAMPLING:
        problems.append(f"network.downsampling must be one of {', '.join(DOWNSAMPLING)}, got {spec.downsampling!r}."
                        f"{did_you_mean(spec.downsampling, DOWNSAMPLING)}")
    n = len(spec.features_per_stage)
    if n < 2:
        problems.append(f"network.features_per_stage must have at least 2 stages, got {list(spec.features_per_stage)}")
    for name in ("kernel_sizes", "strides"):
        value = getattr(spec, name)
        if len(value) != n:
            problems.append(f"network.{name} must have one entry per stage ({n}), got {len(value)}")
        elif any(len(v) != spec.dims for v in value):
            problems.append(f"network.{name} entries must have {spec.dims} values (dims), got {[list(v) for v in value]}")
    if spec.strides and any(s != 1 for s in spec.strides[0]):
        problems.append(f"network.strides[0] must be all ones (the first stage keeps the resolution), got {list(spec.strides[0])}")
    if any(k % 2 == 0 for ks in spec.kernel_sizes for k in ks):
        problems.append(f"network.kernel_sizes must be odd (same-size padding), got {[list(k) for k in spec.kernel_sizes]}")
    for name in ("in_channels", "num_classes", "convs_per_stage"):
        if getattr(spec, name) < 1:
            problems.append(f"network.{name} must be >= 1, got {getattr(spec, name)}")
    if any(f < 1 for f in spec.features_per_stage):
        problems.append(f"network.features_per_stage must be positive, got {list(spec.features_per_stage)}")
    if problems:
        raise UserErrors(problems, headline="the plan's network cannot be built")


class RegionOutputs(nn.Module):
    """Region-based training (liver ⊃ tumour): the network predicts one sigmoid per nested region
    ``label >= k`` (k = 1 … K−1). In training the raw region logits come out (for the loss); at
    evaluation they are turned into K class log-probabilities, so prediction code that applies a
    softmax and an argmax to "logits" works unchanged:

        p(0) = 1 − σ(r1),  p(k) = σ(r1)…σ(rk)·(1 − σ(r(k+1))),  p(K−1) = σ(r1)…σ(r(K−1)).
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x):
        out = self.network(x)
        return out if self.training else region_log_probabilities(out)


def region_log_probabilities(region_logits: torch.Tensor) -> torch.Tensor:
    """(B, K−1, …) nested-region logits → (B, K, …) class log-probabilities (sum of probs = 1)."""
    inside = torch.cumsum(F.logsigmoid(region_logits), dim=1)  # log σ(r1)…σ(rk)
    outside = F.logsigmoid(-region_logits)  # log(1 − σ(rk))
    first = outside[:, :1]
    middle = inside[:, :-1] + outside[:, 1:]
    return torch.cat((first, middle, inside[:, -1:]), dim=1)


def build_network(spec: NetworkSpec, *, region: bool = False) -> nn.Module:
    """The network a spec describes (random weights). Eval mode: (B, K, *patch) logits; train mode
    with deep supervision: a list of logits, full resolution first.

    ``region``: built with K−1 sigmoid region outputs and wrapped in :class:`RegionOutputs`.
    """
    check_spec(spec)
    if region:
        if spec.num_classes < 2:
            raise UserErrors([f"network.num_classes must be >= 2 for region-based training, got {spec.num_classes}"])
        return RegionOutputs(NETWORKS[spec.architecture](dataclasses.replace(spec, num_classes=spec.num_classes - 1)))
    return NETWORKS[spec.architecture](spec)
