"""Prediction: sliding window, fold and configuration ensembling, cascade, export, model choice.

Modules, in the order the data flows:

- ``sliding_window``: ``predict_logits`` (Gaussian-weighted tiles, mirroring, bounded memory).
- ``model``: which trained configurations/folds a prediction uses (``load_model``) and
  ``inference_choice.json``.
- ``predictor``: one case end to end, and ``predict_cases`` (reader/writer threads).
- ``original_grid``: network-grid probabilities → the scan's grid, a slab at a time.
- ``inputs`` / ``run``: the ``predict`` edge (which files, which output folder, --continue, parts).
- ``ensemble``, ``find_best``, ``export``: the other commands; ``cli`` registers them.
"""
