"""CUDA kernels: ``csrc/cuda/<op>.cu`` built with nvcc and ninja on first use on a GPU machine.

The .cu files expose plain ``extern "C"`` launchers that take device pointers, sizes and a
``cudaStream_t``; they include no torch or Python headers, so they compile anywhere nvcc exists
(CI compiles them; see ``autoliver.ops.cuda_check``) and are called through ctypes with
``tensor.data_ptr()`` and torch's current stream.

Why at first use and not at install time: the machine code must match the GPU, which the install
(often on a machine without one, or in a container image) does not see. Why ninja, like the CPU
build (CMakeLists.txt): the first use builds every kernel in parallel in one call, and a later
change rebuilds only what changed. The build file is written here rather than by CMake so that a
GPU machine needs nvcc and the small ``ninja`` package, not CMake, at run time (the same choice as
``torch.utils.cpp_extension.load``).

The cache (``$AUTOLIVER_CACHE/cuda``, default ``~/.cache/autoliver/cuda``) has one folder per
toolchain — GPU architectures, nvcc version and flags — and in it one library per source content
(``<op>-<hash>.so``). A new driver-visible GPU, a new nvcc, other flags or an edited source thus
build afresh, and a library that a running process has loaded is never overwritten.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

from autoliver.resources import resource_dir

NVCC_FLAGS = ("-O3", "--use_fast_math", "-std=c++17", "-Xcompiler", "-fPIC")


def cuda_sources() -> list[Path]:
    return sorted((resource_dir("csrc") / "cuda").glob("*.cu"))


def nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    cand = Path(home) / "bin" / "nvcc"
    return str(cand) if cand.exists() else None


def ninja() -> str | None:
    """The ninja executable: on PATH, or the one the ``ninja`` package ships."""
    found = shutil.which("ninja")
    if found:
        return found
    try:
        import ninja as ninja_package
    except ImportError:
        return None
    cand = Path(ninja_package.BIN_DIR) / "ninja"
    return str(cand) if cand.exists() else None


@functools.lru_cache(maxsize=None)
def nvcc_version(nvcc_path: str) -> str:
    """nvcc's own description of itself (release and build), part of the cache key."""
    out = subprocess.run([nvcc_path, "--version"], capture_output=True, text=True, check=True).stdout
    return " ".join(out.split())


def gpu_architectures() -> tuple[str, ...]:
    """``sm_XY`` of every GPU this process sees, sorted, without repeats."""
    import torch

    found = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
    return tuple(f"sm_{major}{minor}" for major, minor in sorted(found))


def arch_flags(archs: tuple[str, ...]) -> list[str]:
    """Machine code for each architecture plus PTX, so a driver can also run it on a newer GPU."""
    flags = []
    for arch in archs:
        cc = arch.removeprefix("sm_")
        flags.append(f"-gencode=arch=compute_{cc},code=[sm_{cc},compute_{cc}]")
    return flags


@dataclass(frozen=True)
class Toolchain:
    """Everything that makes two builds of the same source differ."""

    nvcc: str
    nvcc_version: str
    archs: tuple[str, ...]
    flags: tuple[str, ...] = NVCC_FLAGS

    def key(self) -> str:
        # The nvcc path is left out: the same compiler found by another path builds the same code.
        blob = json.dumps([self.nvcc_version, list(self.archs), list(self.flags)])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def command(self) -> list[str]:
        return [self.nvcc, *self.flags, *arch_flags(self.archs)]


def source_digest(src: Path) -> str:
    """Content hash of a kernel source and the headers next to it (csrc/*.h, csrc/cuda/*.h)."""
    h = hashlib.sha256(src.read_bytes())
    for header in sorted([*src.parent.glob("*.h"), *src.parent.parent.glob("*.h")]):
        h.update(header.name.encode() + b"\0" + header.read_bytes())
    return h.hexdigest()[:16]


def build_dir(cache_root: Path, toolchain: Toolchain) -> Path:
    return cache_root / "cuda" / f"{'-'.join(toolchain.archs) or 'noarch'}-{toolchain.key()}"


def library_path(cache_root: Path, toolchain: Toolchain, src: Path) -> Path:
    return build_dir(cache_root, toolchain) / f"{src.stem}-{source_digest(src)}.so"


def _ninja_path(path: Path | str) -> str:
    # '$', ' ' and ':' are special in a ninja build line.
    return str(path).replace("$", "$$").replace(" ", "$ ").replace(":", "$:")


def ninja_file(toolchain: Toolchain, targets: dict[Path, Path], *, shared: bool = True) -> str:
    """The text of a build.ninja that builds each source into its target (``{src: out}``).

    ``shared``: a loadable library (``-shared``), else an object (``-c``, the compile-only check).
    Each output is written to ``<out>.tmp`` and renamed, so an interrupted build never leaves a
    half-written library that a later run would load.
    """
    compile_flag = "-shared" if shared else "-c"
    nvcc_cmd = " ".join(shlex.quote(part) for part in toolchain.command())
    lines = [
        "# Written by autoliver.ops._cuda; rewritten on every build.",
        "ninja_required_version = 1.3",
        "rule nvcc",
        f"  command = {nvcc_cmd.replace('$', '$$')} -I $include {compile_flag} $src -o $tmp && mv -f $tmp $out",
        "  description = nvcc $src",
        "",
    ]
    for src, out in sorted(targets.items()):
        lines += [
            f"build {_ninja_path(out)}: nvcc {_ninja_path(src)}",
            f"  src = {shlex.quote(str(src)).replace('$', '$$')}",
            f"  tmp = {shlex.quote(str(out) + '.tmp').replace('$', '$$')}",
            f"  include = {shlex.quote(str(src.parent.parent)).replace('$', '$$')}",
        ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class BuildResult:
    built: dict[str, Path]  # op name -> library (or object) that exists now
    failed: dict[str, str]  # op name -> the tail of the build log that names it
    log: str


def run_ninja(folder: Path, toolchain: Toolchain, targets: dict[Path, Path], *, shared: bool = True,
              jobs: int | None = None) -> BuildResult:
    """Write ``folder/build.ninja`` and build every target, in parallel, keeping going past a
    failure so that one broken kernel does not cost the others."""
    exe = ninja()
    if exe is None:
        raise RuntimeError("autoliver: building the CUDA kernels needs ninja; pip install ninja")
    folder.mkdir(parents=True, exist_ok=True)
    text = ninja_file(toolchain, targets, shared=shared)
    build_file = folder / "build.ninja"
    if not build_file.exists() or build_file.read_text() != text:
        tmp = build_file.with_suffix(".ninja.tmp")
        tmp.write_text(text)
        os.replace(tmp, build_file)
    cmd = [exe, "-C", str(folder), "-k", "0"]
    if jobs:
        cmd += ["-j", str(jobs)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    built, failed = {}, {}
    for src, out in targets.items():
        if out.exists():
            built[src.stem] = out
        else:
            failed[src.stem] = _log_for(log, src.name)
    return BuildResult(built, failed, log)


def _log_for(log: str, source_name: str) -> str:
    """ninja prints 'FAILED: <out>' then the command and the compiler's output; keep the block
    that concerns this source (all of the log when none is found, e.g. ninja itself failed)."""
    blocks = log.split("FAILED: ")
    mine = [b for b in blocks[1:] if source_name in b]
    return ("FAILED: " + "FAILED: ".join(mine) if mine else log)[-4000:]


def cache_root() -> Path:
    return Path(os.environ.get("AUTOLIVER_CACHE", Path.home() / ".cache" / "autoliver"))


@contextlib.contextmanager
def _locked(folder: Path):
    """One build at a time per cache folder: processes that start together (DataLoader workers,
    parallel predictions) wait for the first build instead of racing it."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, the temp-and-rename outputs still stay whole
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@functools.lru_cache(maxsize=None)
def load_cuda(name: str) -> ctypes.CDLL:
    """Load ``csrc/cuda/<name>.cu`` as a shared library, building it first when the cache lacks
    it for this GPU, nvcc, flags and source (the first build does every kernel at once)."""
    src = resource_dir("csrc") / "cuda" / f"{name}.cu"
    compiler = nvcc()
    if compiler is None:
        raise RuntimeError(f"autoliver: the CUDA kernel {name!r} needs nvcc to build on first use; "
                           "install the CUDA toolkit or set CUDA_HOME")
    toolchain = Toolchain(compiler, nvcc_version(compiler), gpu_architectures())
    lib = library_path(cache_root(), toolchain, src)
    if not lib.exists():
        folder = build_dir(cache_root(), toolchain)
        with _locked(folder):
            if not lib.exists():
                targets = {s: library_path(cache_root(), toolchain, s) for s in cuda_sources()}
                result = run_ninja(folder, toolchain, targets)
                if name in result.failed:
                    raise RuntimeError(f"autoliver: building {src} failed:\n{result.failed[name]}")
    return ctypes.CDLL(str(lib))


_UNAVAILABLE: set[str] = set()


def try_load_cuda(name: str, fallback: str) -> ctypes.CDLL | None:
    """``load_cuda(name)``, or None after one warning that says what runs instead (``fallback``);
    a kernel that failed to build is not rebuilt on every call."""
    if name in _UNAVAILABLE:
        return None
    try:
        return load_cuda(name)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        _UNAVAILABLE.add(name)
        warnings.warn(f"autoliver: CUDA {name} kernel unavailable ({e}); {fallback}", RuntimeWarning, stacklevel=3)
        return None


def current_stream_ptr(device) -> ctypes.c_void_p:
    import torch

    return ctypes.c_void_p(torch.cuda.current_stream(device).cuda_stream)
