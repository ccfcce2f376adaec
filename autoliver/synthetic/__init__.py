"""Synthetic abdominal phantoms (CT and 4-phase DCE-MRI) with liver and tumour labels.

``make_synthetic_dataset`` writes a raw dataset; ``make_case`` renders one case in memory.
"""
from autoliver.synthetic.dataset import make_synthetic_dataset  # noqa: F401
from autoliver.synthetic.phantom import make_case, render_case  # noqa: F401
