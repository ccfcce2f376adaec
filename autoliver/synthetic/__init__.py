"""Synthetic abdominal phantoms (CT and 4-phase DCE-MRI) with liver and tumour labels.

``make_synthetic_dataset`` writes a raw dataset; ``make_case`` renders one case in memory.
Imported lazily, so that ``autoliver --help`` does not load SciPy.
"""
# Generator versions of ``make_synthetic --randomize`` (``randomize.py``); version 1 is the default.
VERSIONS = (2, 3)
LATEST = 3

_EXPORTS = {
    "make_synthetic_dataset": "autoliver.synthetic.dataset",
    "make_case": "autoliver.synthetic.phantom",
    "render_case": "autoliver.synthetic.phantom",
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'autoliver.synthetic' has no attribute {name!r}")


__all__ = list(_EXPORTS)
