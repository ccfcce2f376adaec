"""Compiled kernels built from csrc/cpu (one module per op); see autoliver.ops for the faces."""
