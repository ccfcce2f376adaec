"""autoliver: self-configuring liver and liver-tumour segmentation for CT and DCE-MRI.

Arrays inside the pipeline are (z, y, x) — or (channel, z, y, x) — and spacings are given in mm in
the same order (``spacing_zyx_mm``) unless a name says otherwise. Geometry read from files keeps
ITK's (x, y, z) order in :class:`autoliver.io.Geometry` so it can be written back exactly.

The Python API (imported on first use, so ``import autoliver`` stays light):

- :class:`Predictor` / :class:`Prediction`: segment arrays, files and folders with a trained model;
- :func:`evaluate` (folders or files) and :func:`evaluate_case` (arrays): LiTS-style metrics;
- :func:`report` (pictures and statistics of one case) and :func:`track` (baseline vs follow-up);
- :func:`read_image` / :func:`write_image`: scans with their exact geometry.

Status lines go to the ``autoliver`` logger (nothing is printed unless logging is configured).
"""
__version__ = "0.1.0"

_API = {
    "Predictor": "autoliver.inference.api",
    "Prediction": "autoliver.inference.api",
    "evaluate": "autoliver.evaluation.evaluate",
    "evaluate_case": "autoliver.evaluation.evaluate",
    "report": "autoliver.evaluation.report",
    "track": "autoliver.evaluation.track",
    "read_image": "autoliver.io.images",
    "write_image": "autoliver.io.images",
    "UserError": "autoliver.errors",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'autoliver' has no attribute {name!r}")
