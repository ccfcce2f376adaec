"""Checkpoints: plain dicts of tensors and JSON-compatible values, written atomically.

A checkpoint loads with ``torch.load(path, weights_only=True)`` — no pickled code, so opening a
model from somewhere else cannot run anything — and describes itself::

    {"network": state_dict, "optimizer": state_dict, "grad_scaler": state_dict,
     "plan": plan as a JSON dict, "configuration": name, "recipe": recipe as a JSON dict,
     "fold": "0" … "4" | "all", "epoch": epochs completed, "epochs": epochs planned,
     "iterations_per_epoch": int, "rng": {"python", "numpy", "torch", "cuda"},
     "ema_pseudo_dice": float | None, "best_ema_pseudo_dice": float | None, "autoliver_version": str}

Files in a fold folder: ``checkpoint_latest.pt`` (every epoch, for ``--c``),
``checkpoint_best.pt`` (best smoothed pseudo-Dice), ``checkpoint_final.pt`` (end of training).
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from autoliver.errors import UserError, choose
from autoliver.planning.plan import Configuration, Plan
from autoliver.schema import atomic_write, from_jsonable

CHECKPOINTS = ("final", "best", "latest")


def checkpoint_path(fold_dir: str | os.PathLike, which: str) -> Path:
    return Path(fold_dir) / f"checkpoint_{choose('checkpoint', which, CHECKPOINTS)}.pt"


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """Written atomically: a crash never leaves a torn checkpoint under the final name."""
    atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found. Train this fold first (autoliver train CONFIG FOLD).")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torn, foreign or code-carrying files
        raise UserError(f"{path}: not a readable autoliver checkpoint ({type(e).__name__}: {e}).") from None


def rng_state() -> dict:
    """Python, NumPy and torch generator states, as weights-only-loadable values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _as_tuple(v):
    return tuple(_as_tuple(x) for x in v) if isinstance(v, (list, tuple)) else v


def plan_of(checkpoint: dict) -> tuple[Plan, Configuration]:
    plan = from_jsonable(Plan, checkpoint["plan"], "checkpoint.plan")
    return plan, plan.configuration(checkpoint["configuration"])


def load_trained_model(fold_dir: str | os.PathLike, device: str | torch.device = "cpu", which: str = "final"):
    """(network in eval mode on ``device``, Plan, Configuration) of a trained fold.

    The network's eval-mode output is (B, K, *patch) logits (class log-probabilities for region
    recipes), ready for :func:`autoliver.inference.sliding_window.predict_logits`.
    """
    from autoliver.training.networks import build_network
    from autoliver.training.recipes import recipe_from_dict

    ckpt = load_checkpoint(checkpoint_path(fold_dir, which))
    plan, config = plan_of(ckpt)
    recipe = recipe_from_dict(ckpt["recipe"])
    network = build_network(config.network, region=recipe.region)
    network.load_state_dict(ckpt["network"])
    return network.to(device).eval(), plan, config
