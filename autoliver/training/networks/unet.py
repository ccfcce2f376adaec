"""The plain-convolution U-Net (2D and 3D) and its residual-encoder variant, built from a
:class:`~autoliver.planning.plan.NetworkSpec`.

Encoder stage ``s`` has ``features_per_stage[s]`` channels, convolution kernel
``kernel_sizes[s]`` and reduces the resolution by ``strides[s]`` (``strides[0]`` is all ones);
the downsampling is the first convolution's stride (``"conv"``) or a pooling layer in front of
the stage (``"max"``, ``"avg"``, ``"mixed_random"``, ``"mixed_learned"``). The decoder mirrors it
with transposed convolutions (kernel = stride) and concatenated skips. Every decoder stage has a
1×1 segmentation head; in training with deep supervision the forward pass returns the logits of
all of them, full resolution first, otherwise only the full-resolution logits (B, K, *patch).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from autoliver.planning.plan import NetworkSpec
from autoliver.training.networks.blocks import ConvNormAct, ResidualBlock, conv_class, make_pool, transposed_conv_class


def init_weights(module: nn.Module) -> None:
    """He initialisation for LeakyReLU(0.01), zero biases (nnU-Net's InitWeights_He)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(m.weight, a=1e-2)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def total_strides(spec: NetworkSpec) -> tuple[int, ...]:
    """Product of the strides per axis: the input's spatial size must be a multiple of it."""
    return tuple(math.prod(s[d] for s in spec.strides) for d in range(spec.dims))


def check_input(spec: NetworkSpec, x: torch.Tensor, channels: int) -> None:
    if x.ndim != spec.dims + 2 or x.shape[1] != channels:
        raise ValueError(f"{spec.architecture}: input must be (B, {channels}, {'z, y, x' if spec.dims == 3 else 'y, x'}), "
                         f"got shape {tuple(x.shape)}")
    multiple = total_strides(spec)
    if any(s % m for s, m in zip(x.shape[2:], multiple)):
        raise ValueError(f"{spec.architecture}: spatial shape must be a multiple of {multiple} (the product of the "
                         f"strides), got {tuple(x.shape[2:])}; pad the input or use the plan's patch size")


class Encoder(nn.Module):
    """Stages of convolutions; returns the output of every stage (the skips), finest first.

    ``residual``: a stem convolution, then ResNet basic blocks (``ceil(convs_per_stage / 2)`` per
    stage, two convolutions each) instead of plain conv-norm-act layers.
    """

    def __init__(self, spec: NetworkSpec, in_channels: int, residual: bool = False):
        super().__init__()
        dims, feats = spec.dims, spec.features_per_stage
        self.stem = ConvNormAct(dims, in_channels, feats[0], spec.kernel_sizes[0]) if residual else nn.Identity()
        cin = feats[0] if residual else in_channels
        self.stages = nn.ModuleList()
        for f, k, st in zip(feats, spec.kernel_sizes, spec.strides):
            downsamples = any(s != 1 for s in st)
            layers = []
            if downsamples and spec.downsampling != "conv":
                layers.append(make_pool(spec.downsampling, dims, st, cin))
            first_stride = tuple(st) if spec.downsampling == "conv" else (1,) * dims
            if residual:
                blocks = max(1, math.ceil(spec.convs_per_stage / 2))
                layers.append(ResidualBlock(dims, cin, f, k, first_stride))
                layers += [ResidualBlock(dims, f, f, k, (1,) * dims) for _ in range(blocks - 1)]
            else:
                layers.append(ConvNormAct(dims, cin, f, k, first_stride))
                layers += [ConvNormAct(dims, f, f, k) for _ in range(spec.convs_per_stage - 1)]
            self.stages.append(nn.Sequential(*layers))
            cin = f

    def forward(self, x):
        x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class Decoder(nn.Module):
    """Transposed-conv upsampling, skip concatenation, convolutions, a 1×1 head per stage."""

    def __init__(self, spec: NetworkSpec):
        super().__init__()
        dims, feats = spec.dims, spec.features_per_stage
        self.ups, self.blocks, self.heads = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for s in reversed(range(len(feats) - 1)):  # coarse to fine
            st = tuple(spec.strides[s + 1])
            self.ups.append(transposed_conv_class(dims)(feats[s + 1], feats[s], st, stride=st))
            k = spec.kernel_sizes[s]
            self.blocks.append(nn.Sequential(ConvNormAct(dims, 2 * feats[s], feats[s], k),
                                             *[ConvNormAct(dims, feats[s], feats[s], k)
                                               for _ in range(spec.convs_per_stage - 1)]))
            self.heads.append(conv_class(dims)(feats[s], spec.num_classes, 1))

    def forward(self, skips, all_scales: bool):
        x = skips[-1]
        outputs = []
        last = len(self.ups) - 1
        for i, (up, block, head) in enumerate(zip(self.ups, self.blocks, self.heads)):
            x = block(torch.cat((up(x), skips[-2 - i]), dim=1))
            if all_scales or i == last:
                outputs.append(head(x))
        return outputs[::-1]  # full resolution first


class UNet(nn.Module):
    def __init__(self, spec: NetworkSpec, residual: bool = False):
        super().__init__()
        self.spec = spec
        self.deep_supervision = spec.deep_supervision
        self.encoder = Encoder(spec, spec.in_channels, residual)
        self.decoder = Decoder(spec)
        init_weights(self)

    def forward(self, x):
        check_input(self.spec, x, self.spec.in_channels)
        deep = self.training and self.deep_supervision
        outputs = self.decoder(self.encoder(x), all_scales=deep)
        return outputs if deep else outputs[0]
