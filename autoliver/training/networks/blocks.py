"""Building blocks shared by every network: conv-norm-act, residual blocks, downsampling.

All blocks work in 2D and 3D (``dims``); arrays are (B, C, z, y, x) or (B, C, y, x). The choices
follow nnU-Net's plain U-Net: instance norm with affine parameters, LeakyReLU(0.01), bias in the
convolutions, padding ``k // 2`` so a stride-1 convolution keeps the shape.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from autoliver.ops.mixed_pool import MixedPool

DOWNSAMPLING = ("conv", "max", "avg", "mixed_random", "mixed_learned")


def conv_class(dims: int) -> type[nn.Module]:
    return {2: nn.Conv2d, 3: nn.Conv3d}[dims]


def transposed_conv_class(dims: int) -> type[nn.Module]:
    return {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dims]


def norm(dims: int, channels: int) -> nn.Module:
    return {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dims](channels, eps=1e-5, affine=True)


def activation() -> nn.Module:
    return nn.LeakyReLU(negative_slope=0.01, inplace=True)


def padding(kernel: Sequence[int]) -> tuple[int, ...]:
    return tuple(k // 2 for k in kernel)


class ConvNormAct(nn.Sequential):
    def __init__(self, dims: int, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int] | int = 1):
        super().__init__(
            conv_class(dims)(cin, cout, tuple(kernel), stride=stride, padding=padding(kernel)),
            norm(dims, cout),
            activation(),
        )


def make_pool(kind: str, dims: int, stride: Sequence[int], channels: int) -> nn.Module:
    """A pooling layer with kernel = stride (non-overlapping windows, as strided convs see them)."""
    stride = tuple(stride)
    if kind == "max":
        return {2: nn.MaxPool2d, 3: nn.MaxPool3d}[dims](stride, stride)
    if kind == "avg":
        return {2: nn.AvgPool2d, 3: nn.AvgPool3d}[dims](stride, stride)
    if kind == "mixed_random":
        return MixedPool(dims, stride, stride, mode="random")
    if kind == "mixed_learned":
        return MixedPool(dims, stride, stride, mode="learned", channels=channels, per_channel=True)
    raise ValueError(f"downsampling must be one of {', '.join(DOWNSAMPLING)}, got {kind!r}")


class ResidualBlock(nn.Module):
    """ResNet basic block, variant D (He et al. 2019, as in nnU-Net's residual encoder): the
    shortcut average-pools before its 1×1 convolution instead of striding it, so no input voxel
    is skipped."""

    def __init__(self, dims: int, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int]):
        super().__init__()
        conv = conv_class(dims)
        self.conv1 = ConvNormAct(dims, cin, cout, kernel, stride)
        self.conv2 = nn.Sequential(conv(cout, cout, tuple(kernel), padding=padding(kernel)), norm(dims, cout))
        shortcut = []
        if any(s != 1 for s in stride):
            shortcut.append({2: nn.AvgPool2d, 3: nn.AvgPool3d}[dims](tuple(stride), tuple(stride)))
        if cin != cout:
            shortcut += [conv(cin, cout, 1, bias=False), norm(dims, cout)]
        self.shortcut = nn.Sequential(*shortcut)
        self.act = activation()

    def forward(self, x):
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))
