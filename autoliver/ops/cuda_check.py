"""Compile-only check of every CUDA source (``python -m autoliver.ops.cuda_check``).

Run by CI where nvcc exists but no GPU does: the kernels must at least compile. It goes through
the same ninja build as the first use on a GPU (all sources in parallel, for ``sm_90`` unless
``--arch`` says otherwise), exits non-zero and prints nvcc's errors when one does not compile.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from autoliver.ops._cuda import Toolchain, cuda_sources, nvcc, nvcc_version, run_ninja


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autoliver.ops.cuda_check", description=__doc__)
    parser.add_argument("--arch", default="sm_90", help="GPU architecture to compile for (default: sm_90)")
    args = parser.parse_args(argv)
    compiler = nvcc()
    if compiler is None:
        print("cuda_check: nvcc not found; nothing checked")
        return 0
    toolchain = Toolchain(compiler, nvcc_version(compiler), (args.arch,))
    sources = cuda_sources()
    with tempfile.TemporaryDirectory() as tmp:
        targets = {src: Path(tmp) / f"{src.stem}.o" for src in sources}
        t = time.perf_counter()
        result = run_ninja(Path(tmp), toolchain, targets, shared=False)
        seconds = time.perf_counter() - t
    for src in sources:
        print(f"cuda_check: {src.name}: {'FAILED' if src.stem in result.failed else 'ok'}")
    for log in result.failed.values():
        print(log, file=sys.stderr)
    print(f"cuda_check: {len(sources) - len(result.failed)} of {len(sources)} CUDA sources compile "
          f"for {args.arch} with {toolchain.nvcc_version.rsplit(' ', 1)[-1]} ({seconds:.1f} s, ninja)")
    return 1 if result.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
