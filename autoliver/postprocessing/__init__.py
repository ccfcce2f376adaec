"""Post-processing of predicted liver / tumour segmentations (largest component, tumours inside the
liver, small lesions, dense CRF, Otsu thresholding). ``Postprocessing`` is the recipe that
``find_best_configuration`` chooses on cross-validation and ``predict`` applies."""
from autoliver.postprocessing.apply import (NONE, Postprocessing, labels_from_probabilities, postprocess,
                                            postprocess_labels)

__all__ = ["NONE", "Postprocessing", "labels_from_probabilities", "postprocess", "postprocess_labels"]
