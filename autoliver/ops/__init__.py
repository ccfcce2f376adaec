"""Compiled operators with validated Python faces and plain reference implementations.

Each op has: a reference (NumPy / SciPy / torch) next to it, a CPU kernel (``csrc/cpu/<op>.cpp``,
module ``autoliver._ext.<op>``) and a CUDA kernel (``csrc/cuda/<op>.cu``), dispatched by the
input's device. See ``autoliver.ops._ext`` for the fallback and thread settings.
"""
