"""Loading the compiled kernels, with a reference fallback and thread control.

``load(name)`` imports ``autoliver._ext.<name>`` (built from ``csrc/cpu/<name>.cpp``). When it is
missing — no compiler at install time, or ``AUTOLIVER_DISABLE_EXT=1`` — it returns None and warns
once, and the op's Python face uses its reference implementation instead.
``AUTOLIVER_REQUIRE_EXT=1`` turns a missing kernel into an error (CI sets it: a build that lost its
kernels must fail, not quietly test the reference against itself).

Threads: ``AUTOLIVER_NUM_THREADS`` (default: all cores the process may use) or ``set_num_threads``.
"""
from __future__ import annotations

import importlib
import os
import warnings

_WARNED: set[str] = set()
_NUM_THREADS: int | None = None


def load(name: str):
    if os.environ.get("AUTOLIVER_DISABLE_EXT", "0") == "1":
        return None
    try:
        return importlib.import_module(f"autoliver._ext.{name}")
    except ImportError as e:
        if os.environ.get("AUTOLIVER_REQUIRE_EXT", "0") == "1":
            raise RuntimeError(
                f"autoliver: compiled kernel {name!r} is not available ({e}) and AUTOLIVER_REQUIRE_EXT=1 "
                "requires it. Reinstall with a C++ compiler and OpenMP (pip install -e .) and read the build log."
            ) from e
        if name not in _WARNED:
            _WARNED.add(name)
            warnings.warn(
                f"autoliver: compiled kernel {name!r} is not available ({e}); using the slower "
                "reference implementation. Reinstall with a C++ compiler (pip install -e .) to build it.",
                RuntimeWarning,
                stacklevel=3,
            )
        return None


def num_threads() -> int:
    if _NUM_THREADS is not None:
        return _NUM_THREADS
    env = os.environ.get("AUTOLIVER_NUM_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def set_num_threads(n: int | None) -> None:
    """Threads used by the compiled CPU kernels; None restores the default."""
    global _NUM_THREADS
    _NUM_THREADS = None if n is None else max(1, int(n))
