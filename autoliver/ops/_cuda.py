"""CUDA kernels: ``csrc/cuda/<op>.cu`` built with nvcc on first use on a GPU machine.

The .cu files expose plain ``extern "C"`` launchers that take device pointers, sizes and a
``cudaStream_t``; they include no torch or Python headers, so they compile anywhere nvcc exists
(CI compiles them; see ``autoliver.ops.cuda_check``) and are called through ctypes with
``tensor.data_ptr()`` and torch's current stream. Built libraries are cached per source hash in
``$AUTOLIVER_CACHE`` (default ``~/.cache/autoliver``).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

from autoliver.resources import resource_dir

NVCC_FLAGS = ["-O3", "--use_fast_math", "-std=c++17", "-Xcompiler", "-fPIC"]


def cuda_sources() -> list[Path]:
    return sorted((resource_dir("csrc") / "cuda").glob("*.cu"))


def nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    cand = Path(home) / "bin" / "nvcc"
    return str(cand) if cand.exists() else None


def compile_source(src: Path, out: Path, *, shared: bool, arch: str | None = None) -> subprocess.CompletedProcess:
    cmd = [nvcc(), *NVCC_FLAGS, "-I", str(src.parent.parent)]
    if arch:
        cmd += [f"-arch={arch}"]
    cmd += (["-shared"] if shared else ["-c"]) + [str(src), "-o", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True)


@functools.lru_cache(maxsize=None)
def load_cuda(name: str) -> ctypes.CDLL:
    """Build (once, cached) and load ``csrc/cuda/<name>.cu`` as a shared library."""
    src = resource_dir("csrc") / "cuda" / f"{name}.cu"
    if nvcc() is None:
        raise RuntimeError(f"autoliver: the CUDA kernel {name!r} needs nvcc to build on first use; "
                           "install the CUDA toolkit or set CUDA_HOME")
    digest = hashlib.sha256(src.read_bytes() + (resource_dir("csrc") / "common.h").read_bytes()
                            if (resource_dir("csrc") / "common.h").exists() else src.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("AUTOLIVER_CACHE", Path.home() / ".cache" / "autoliver")) / "cuda"
    lib = cache / f"{name}-{digest}.so"
    if not lib.exists():
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
        os.close(fd)
        result = compile_source(src, Path(tmp), shared=True, arch="native")
        if result.returncode != 0:
            Path(tmp).unlink(missing_ok=True)
            raise RuntimeError(f"autoliver: building {src} failed:\n{result.stderr[-4000:]}")
        os.replace(tmp, lib)
    return ctypes.CDLL(str(lib))


_UNAVAILABLE: set[str] = set()


def try_load_cuda(name: str, fallback: str) -> ctypes.CDLL | None:
    """``load_cuda(name)``, or None after one warning that says what runs instead (``fallback``);
    a kernel that failed to build is not rebuilt on every call."""
    if name in _UNAVAILABLE:
        return None
    try:
        return load_cuda(name)
    except (RuntimeError, OSError) as e:
        _UNAVAILABLE.add(name)
        warnings.warn(f"autoliver: CUDA {name} kernel unavailable ({e}); {fallback}", RuntimeWarning, stacklevel=3)
        return None


def current_stream_ptr(device) -> ctypes.c_void_p:
    import torch

    return ctypes.c_void_p(torch.cuda.current_stream(device).cuda_stream)
