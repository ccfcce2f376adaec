"""The CMake build of the CPU kernels (CMakeLists.txt) keeps them optional: without a C++ compiler
or without OpenMP it configures, warns and installs the pure Python package, so that
`pip install` still succeeds and the ops fall back (AUTOLIVER_REQUIRE_EXT=1 makes that an error at
run time; tests/test_ops_ext.py). The full build itself is what every install runs, and CI's
AUTOLIVER_REQUIRE_EXT=1 checks that it produced every kernel."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

cmake = shutil.which("cmake")
needs_cmake = pytest.mark.skipif(cmake is None, reason="cmake not on PATH (pip install cmake)")


def _configure(build: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([cmake, "-S", str(ROOT), "-B", str(build), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def _words(text: str) -> str:
    return " ".join(text.split())  # CMake wraps its warnings at 80 columns


def _built_modules(build: Path, prefix: Path) -> list[str]:
    """Build and install the configured tree; the names of the modules it installed."""
    for cmd in ([cmake, "--build", str(build)], [cmake, "--install", str(build), "--prefix", str(prefix)]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
    return sorted(p.name for p in prefix.rglob("*.so"))


@needs_cmake
def test_without_a_compiler_the_build_installs_no_kernels_and_succeeds(tmp_path):
    r = _configure(tmp_path / "b", env={"CXX": str(tmp_path / "no-such-compiler")})
    assert r.returncode == 0, r.stderr
    assert "autoliver: no working C++ compiler found; installing without the compiled kernels" in _words(r.stderr)
    assert _built_modules(tmp_path / "b", tmp_path / "out") == []


@needs_cmake
@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler here")
def test_without_openmp_the_build_installs_no_kernels_and_succeeds(tmp_path):
    # CMAKE_DISABLE_FIND_PACKAGE_OpenMP is CMake's own switch for "this package is not there".
    r = _configure(tmp_path / "b", "-DCMAKE_DISABLE_FIND_PACKAGE_OpenMP=TRUE")
    assert r.returncode == 0, r.stderr
    assert "has no OpenMP; installing without the compiled kernels" in _words(r.stderr)
    assert _built_modules(tmp_path / "b", tmp_path / "out") == []
