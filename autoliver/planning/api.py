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


def plan_like(dataset_name: str, preprocessed_dir: Path, source: str | Path, *,
              raw_dir: str | Path | None = None) -> Plan:
    """Plan ``dataset_name`` with another model's configurations (nnU-Net's move of plans between
    datasets): same spacings, patches, networks and normalisation, so ``train --pretrained`` can
    start from that model's weights. Labels and channels come from this dataset's dataset.json; the
    networks' output layers follow its labels. ``source``: a plans.json or a model folder with one."""
    import dataclasses

    from autoliver.datasets.dataset import parse_dataset_json
    from autoliver.planning.plan import read_plan

    src = Path(source).expanduser()
    candidates = [src] if src.is_file() else [src / PLANS_FILE, src.parent / PLANS_FILE]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise UserError(f"--plans-from {source}: no plans.json there (give a plans.json, or a trained model "
                        "folder, which holds its plan).")
    base = read_plan(found)
    info = parse_dataset_json(paths.root("raw", raw_dir) / dataset_name)
    if len(info.channel_names) != len(base.channel_names) or info.modality != base.modality:
        raise UserError(f"--plans-from {found}: planned for {len(base.channel_names)} {base.modality} channel(s) "
                        f"{list(base.channel_names)}; {dataset_name} has {list(info.channel_names)}. Its networks "
                        "cannot read this dataset's images.")
    classes = len(info.labels)
    configs = {name: dataclasses.replace(c, network=dataclasses.replace(c.network, num_classes=classes))
               for name, c in base.configurations.items()}
    reasons = {**base.reasons, "plans_from": (
        f"configurations copied from {found} (dataset {base.dataset_name}: spacing, patch, network and "
        "normalisation), so that train --pretrained can start from its weights; plan without --plans-from "
        "for a plan fitted to this dataset")}
    plan = dataclasses.replace(base, dataset_name=dataset_name, channel_names=tuple(info.channel_names),
                               labels=dict(info.labels), configurations=configs, reasons=reasons)
    write_plan(Path(preprocessed_dir) / dataset_name / PLANS_FILE, plan)
    return plan
