"""Data shipped with the package: planner presets (``planners/``) and kernel sources (``csrc/``).

In a wheel they are the sub-packages ``autoliver.planners`` and ``autoliver.csrc``; in a source
checkout or an editable install they are the top-level folders next to ``autoliver/``.
"""
from __future__ import annotations

import importlib.resources
from pathlib import Path


def resource_dir(name: str) -> Path:
    """The folder of ``planners`` or ``csrc``, wherever this installation keeps it."""
    here = Path(__file__).resolve().parent.parent / name
    if here.is_dir():
        return here
    try:
        return Path(str(importlib.resources.files(f"autoliver.{name}")))
    except ModuleNotFoundError:
        raise FileNotFoundError(f"autoliver installation is missing its {name}/ folder; reinstall autoliver") from None
