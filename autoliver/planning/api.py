"""Plan a dataset on disk: read (or first compute) its fingerprint, measure the machine, plan,
write ``{preprocessed}/{dataset}/plans.json``."""
from __future__ import annotations

from pathlib import Path

from autoliver import paths
from autoliver.errors import UserError
from autoliver.planning.plan import Plan, write_plan

PLANS_FILE = "plans.json"


def load_or_extract_fingerprint(dataset_name: str, preprocessed_dir: Path, raw_dir: str | Path | None = None,
                                num_processes: int = 2):
    from autoliver.datasets.dataset import parse_dataset_json
    from autoliver.fingerprint.api import FINGERPRINT_FILE, extract_fingerprint
    from autoliver.fingerprint.fingerprint import read_fingerprint

    path = Path(preprocessed_dir) / dataset_name / FINGERPRINT_FILE
    folder = paths.root("raw", raw_dir) / dataset_name
    if path.is_file():
        cached = read_fingerprint(path)
        # A fingerprint written before it recorded phases_in_file: the dataset says how its phases
        # are stored (prediction must ask for the same files), so extract_fingerprint checks it.
        if cached.num_phases > 1 and not cached.phases_in_file and (folder / "dataset.json").is_file():
            return extract_fingerprint(parse_dataset_json(folder), Path(preprocessed_dir),
                                       num_processes=num_processes)
        return cached
    if not folder.is_dir():
        raise UserError(f"{path}: missing, and the raw dataset {folder} to compute it from does not exist. "
                        f"Run autoliver extract_fingerprint -d {dataset_name} first.")
    return extract_fingerprint(parse_dataset_json(folder), Path(preprocessed_dir), num_processes=num_processes)


def plan_dataset(dataset_name: str, preprocessed_dir: Path, preset: str | None = None,
                 gpu_memory_gb: float | None = None, *, raw_dir: str | Path | None = None,
                 num_processes: int = 2, device: str | None = None, recalibrate: bool = False) -> Plan:
    """Plan ``dataset_name`` and write its plans.json. ``preset`` None: "default" when planning for
    a GPU (one present, or ``gpu_memory_gb`` given), "cpu" otherwise. ``device="cpu"`` plans for
    the CPU even when a GPU is present; ``recalibrate`` re-measures the CPU's speed (cached
    otherwise: measure when the machine is idle)."""
    from autoliver.planning.budget import detect_budget
    from autoliver.planning.planner import plan_experiment
    from autoliver.planning.presets import load_preset

    fingerprint = load_or_extract_fingerprint(dataset_name, preprocessed_dir, raw_dir, num_processes)
    budget = detect_budget(gpu_memory_gb, device=device, recalibrate=recalibrate)
    chosen = load_preset(preset or ("default" if budget.device == "cuda" else "cpu"))
    plan = plan_experiment(fingerprint, chosen, budget)
    write_plan(Path(preprocessed_dir) / dataset_name / PLANS_FILE, plan)
    return plan
