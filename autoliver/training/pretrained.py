"""Start a training from another model's weights (``autoliver train ... --pretrained``).

The source is a checkpoint file (an autoliver checkpoint, or a bare ``state_dict``), a fold
folder holding ``checkpoint_final.pt``, a model folder (its ``fold_all``, else its first fold), or
``builtin`` (the starter model shipped in the package, when there is one). It is read with
``torch.load(weights_only=True)``: no code from the file runs.

Every tensor whose name and shape match the new network's is copied; the rest keep their fresh
initialisation, and the report names them (typically the first convolution when the number of
input channels differs, and the output layers when the labels do). Like nnU-Net's
``-pretrained_weights``, a network that shares too little with the source is refused: a source
planned for another spacing or patch usually has other kernel sizes or stages, so less than
``MIN_SHARED`` of the new network's parameters would start from it. Plan the new dataset with the
source's configuration then (same preset and target spacing).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from autoliver.errors import UserError

MIN_SHARED = 0.5  # share of the new network's parameters (by count) that must come from the source
BUILTIN = Path(__file__).resolve().parents[1] / "models" / "builtin_liver_ct.pt"


@dataclass(frozen=True)
class Transfer:
    source: Path
    copied: tuple[str, ...]
    skipped: tuple[str, ...]  # "name: why"
    shared_fraction: float  # of the new network's parameters, by count

    def describe(self) -> str:
        text = (f"pretrained weights from {self.source}: {len(self.copied)} tensors copied "
                f"({self.shared_fraction:.1%} of the parameters)")
        if self.skipped:
            text += "; kept fresh: " + "; ".join(self.skipped[:6]) + (" …" if len(self.skipped) > 6 else "")
        return text


def resolve_source(spec: str | Path) -> Path:
    """The checkpoint file ``spec`` names (see the module docstring)."""
    if str(spec) == "builtin":
        if not BUILTIN.is_file():
            raise UserError("--pretrained builtin: this version of autoliver ships no starter model yet (it is "
                            "shipped once a model trained only on generated data segments real CTs well enough; "
                            "see README, 'Phantoms for real scans'). Give a checkpoint file or a model folder.")
        return BUILTIN
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        candidates = [path / "checkpoint_final.pt", path / "fold_all" / "checkpoint_final.pt",
                      *sorted(path.glob("fold_*/checkpoint_final.pt"))]
        for c in candidates:
            if c.is_file():
                return c
        raise UserError(f"--pretrained {path}: no checkpoint_final.pt in it, its fold_all/ or any fold_*/ folder. "
                        "Give a trained model folder or a checkpoint file.")
    raise UserError(f"--pretrained {spec}: no such file or folder. Give a checkpoint file, a model folder or 'builtin'.")


def source_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # foreign, torn or code-carrying files
        raise UserError(f"--pretrained {path}: not a weights-only PyTorch checkpoint ({type(e).__name__}: {e}).") from None
    weights = state.get("network", state) if isinstance(state, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise UserError(f"--pretrained {path}: holds no network weights (expected an autoliver checkpoint or a "
                        "state_dict of tensors).")
    # networks saved from DistributedDataParallel or torch.compile carry a prefix
    for prefix in ("module.", "_orig_mod."):
        if weights and all(k.startswith(prefix) for k in weights):
            weights = {k[len(prefix):]: v for k, v in weights.items()}
    return weights


def load_pretrained(network: torch.nn.Module, spec: str | Path) -> Transfer:
    """Copy the matching weights of ``spec`` into ``network`` (in place); raises UserError when less
    than ``MIN_SHARED`` of its parameters would come from the source."""
    path = resolve_source(spec)
    source = source_weights(path)
    target = network.state_dict()
    copied, skipped, shared, total = [], [], 0, 0
    for name, tensor in target.items():
        counted = tensor.is_floating_point()
        total += tensor.numel() if counted else 0
        if name not in source:
            skipped.append(f"{name}: not in the source")
        elif tuple(source[name].shape) != tuple(tensor.shape):
            skipped.append(f"{name}: shape {tuple(source[name].shape)} there, {tuple(tensor.shape)} here")
        else:
            copied.append(name)
            shared += tensor.numel() if counted else 0
    fraction = shared / max(total, 1)
    if fraction < MIN_SHARED:
        raise UserError(f"--pretrained {path}: only {fraction:.0%} of this network's parameters match the source "
                        f"(first differences: {'; '.join(skipped[:3])}). The source was planned differently; plan "
                        "this dataset with the source's preset and spacing, or train from scratch.")
    with torch.no_grad():
        for name in copied:
            target[name].copy_(source[name].to(target[name].dtype))
    network.load_state_dict(target)
    return Transfer(path, tuple(copied), tuple(skipped), fraction)
