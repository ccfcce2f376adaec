"""U-Net with nested, densely connected skips (UNet++, Zhou et al. 2018; the "fused" skips).

Node X[i][j] sits at resolution level i (0 = full) after j decoding steps: X[i][0] is encoder
stage i, and X[i][j] = convs(concat(X[i][0], …, X[i][j−1], up(X[i+1][j−1]))). The plain U-Net is
the special case that keeps only X[i][0] and the diagonal X[i][n−1−i]. Deep-supervision heads
sit on that diagonal, so the outputs have the same scales as the plain U-Net's (full resolution
first) and the same loss applies unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from autoliver.planning.plan import NetworkSpec
from autoliver.training.networks.blocks import ConvNormAct, conv_class, transposed_conv_class
from autoliver.training.networks.unet import Encoder, check_input, init_weights


class NestedUNet(nn.Module):
    def __init__(self, spec: NetworkSpec):
        super().__init__()
        self.spec = spec
        self.deep_supervision = spec.deep_supervision
        dims, feats, n = spec.dims, spec.features_per_stage, len(spec.features_per_stage)
        self.encoder = Encoder(spec, spec.in_channels)
        self.ups, self.nodes = nn.ModuleDict(), nn.ModuleDict()
        for j in range(1, n):
            for i in range(n - j):
                st = tuple(spec.strides[i + 1])
                self.ups[f"{i}_{j}"] = transposed_conv_class(dims)(feats[i + 1], feats[i], st, stride=st)
                k = spec.kernel_sizes[i]
                self.nodes[f"{i}_{j}"] = nn.Sequential(
                    ConvNormAct(dims, (j + 1) * feats[i], feats[i], k),
                    *[ConvNormAct(dims, feats[i], feats[i], k) for _ in range(spec.convs_per_stage - 1)])
        self.heads = nn.ModuleList(conv_class(dims)(feats[i], spec.num_classes, 1) for i in range(n - 1))
        init_weights(self)

    def forward(self, x):
        check_input(self.spec, x, self.spec.in_channels)
        n = len(self.spec.features_per_stage)
        grid = [[s] for s in self.encoder(x)]  # grid[i][j] = X[i][j]
        for j in range(1, n):
            for i in range(n - j):
                up = self.ups[f"{i}_{j}"](grid[i + 1][j - 1])
                grid[i].append(self.nodes[f"{i}_{j}"](torch.cat([*grid[i][:j], up], dim=1)))
        if self.training and self.deep_supervision:
            return [head(grid[i][n - 1 - i]) for i, head in enumerate(self.heads)]
        return self.heads[0](grid[0][n - 1])
