"""Networks built from a plan's :class:`~autoliver.planning.plan.NetworkSpec`, registered by name.

``unet`` (plain convolutions, 2D/3D), ``residual_unet`` (ResNet-style encoder), ``nested_unet``
(UNet++ skips), ``convlstm_unet`` (shared 3D encoder per DCE-MRI phase + ConvLSTM over phases).
"""
from autoliver.training.networks.registry import NETWORKS, RegionOutputs, build_network, check_spec

__all__ = ["NETWORKS", "RegionOutputs", "build_network", "check_spec"]
