"""What the accuracy benchmarks share: their working folder and running the CLI in its own process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def bench_root(tmp_path_factory, name: str) -> Path:
    """AUTOLIVER_BENCH_DIR (kept between runs), else a pytest temporary folder."""
    base = os.environ.get("AUTOLIVER_BENCH_DIR")
    folder = Path(base) if base else tmp_path_factory.mktemp(name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def run_autoliver(root: Path, *args: str) -> float:
    """One CLI command in its own process, with raw/preprocessed/results under ``root``; returns its wall seconds."""
    env = {**os.environ, "AUTOLIVER_RAW": str(root / "raw"), "AUTOLIVER_PREPROCESSED": str(root / "preprocessed"),
           "AUTOLIVER_RESULTS": str(root / "results")}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "autoliver", *args, "--no-progress"], env=env, text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    sys.stdout.write(r.stdout[-4000:])
    if r.returncode:
        raise RuntimeError(f"autoliver {' '.join(args)} failed ({r.returncode})")
    return seconds


def cpu_preset_with(root: Path, name: str, **overrides) -> Path:
    """The cpu preset with ``overrides``, saved as ``{name}.json`` under ``root`` (a --preset file)."""
    from autoliver.resources import resource_dir

    keys = json.loads((resource_dir("planners") / "cpu.json").read_text())
    path = root / f"{name}.json"
    path.write_text(json.dumps({**keys, **overrides, "name": name}, indent=2))
    return path


def context_preset(root: Path, context: int, key: str = "context_slices_2d") -> tuple[str, Path]:
    """(name, file) of the cpu preset with 2.5D context ``key`` (``context_slices_2d``: the whole-image
    ``2d``; ``context_slices_2d_liver_roi``: the lesion stage) set to ``context`` slices per side."""
    name = f"cpu_{key.removeprefix('context_slices_')}_context{context}"
    return name, cpu_preset_with(root, name, **{key: context})
