"""Build the compiled kernels: one pybind11 module per file in csrc/cpu (autoliver._ext.<name>).

The extensions are optional: when a compiler or OpenMP is missing the install still succeeds and
every op falls back to its reference implementation (with one warning at first use).
Set AUTOLIVER_PORTABLE_BUILD=1 to build without -march=native (for wheels copied between machines).
CUDA sources in csrc/cuda are not built here: nvcc compiles them on first use on a GPU machine
into a cached shared library that ctypes loads (see autoliver/ops/_cuda.py).
"""
import glob
import os

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import find_packages, setup

ParallelCompile("AUTOLIVER_BUILD_JOBS", default=0).install()


def _flags():
    flags = ["-O3", "-fopenmp", "-fno-math-errno"]
    if os.environ.get("AUTOLIVER_PORTABLE_BUILD", "0") != "1":
        flags.append("-march=native")
    return flags


extensions = [
    Pybind11Extension(
        f"autoliver._ext.{os.path.splitext(os.path.basename(src))[0]}",
        [src],
        include_dirs=["csrc"],
        extra_compile_args=_flags(),
        extra_link_args=["-fopenmp"],
        cxx_std=17,
        optional=True,
    )
    for src in sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
]

setup(
    ext_modules=extensions,
    cmdclass={"build_ext": build_ext},
    # planners/ (preset data) and csrc/ (sources for the CUDA JIT build) ship inside the package.
    packages=find_packages(include=["autoliver", "autoliver.*"]) + ["autoliver.planners", "autoliver.csrc"],
    package_dir={"autoliver.planners": "planners", "autoliver.csrc": "csrc"},
)
