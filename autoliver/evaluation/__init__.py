"""Evaluation, pictures and follow-up scans.

- :mod:`metrics` — Dice, IoU/VOE, precision, recall, specificity, RVD, ASSD, MSD, HD95, NSD (pure);
- :mod:`lesions` — lesion-wise detection (6-connected components, one-to-one matching; pure);
- :mod:`measurements` — volumes and RECIST 1.1 longest axial diameters (pure);
- :mod:`statistics` — ``write_statistics(seg, geometry, path_json, path_csv)`` for predict/report;
- :mod:`evaluate` — ``autoliver evaluate`` (files/folders → summary JSON, overview PNGs, HTML);
- :mod:`report` — ``autoliver report`` (orthogonal overlays + measurements of one case);
- :mod:`track` + :mod:`recist` — ``autoliver track`` (baseline vs follow-up, RECIST 1.1).

Importing this package is cheap; the names below load their module on first use.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "dice": "metrics", "region_metrics": "metrics", "global_dice": "metrics", "surface_distances": "metrics",
    "evaluate_lesions": "lesions", "write_statistics": "statistics", "segmentation_statistics": "statistics",
    "evaluate": "evaluate", "evaluate_case": "evaluate", "summarise": "evaluate", "make_report": "report",
    "track": "track", "recist_response": "recist",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"autoliver.evaluation.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'autoliver.evaluation' has no attribute {name!r}")
