"""Compile-only check of every CUDA source (``python -m autoliver.ops.cuda_check``).

Run by CI where nvcc exists but no GPU does: the kernels must at least compile. Exits non-zero
and prints nvcc's errors when one does not.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from autoliver.ops._cuda import compile_source, cuda_sources, nvcc


def main() -> int:
    if nvcc() is None:
        print("cuda_check: nvcc not found; nothing checked")
        return 0
    sources = cuda_sources()
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for src in sources:
            t = time.perf_counter()
            r = compile_source(src, Path(tmp) / (src.stem + ".o"), shared=False, arch="sm_90")
            status = "ok" if r.returncode == 0 else "FAILED"
            print(f"cuda_check: {src.name}: {status} ({time.perf_counter() - t:.1f} s)")
            if r.returncode != 0:
                failed += 1
                print(r.stderr[-4000:], file=sys.stderr)
    print(f"cuda_check: {len(sources) - failed} of {len(sources)} CUDA sources compile")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
