"""Surface metrics of a liver-sized mask: autoliver (all of ASSD, MSD, HD95 and NSD from one pair of
distance transforms on the masks' bounding box) against medpy (assd + hd + hd95, each on the whole
volume) and DeepMind's surface-distance (distances + ASSD, HD, HD95, NSD).

    python -m pytest benchmarks/bench_evaluation.py --benchmark-only

The volume is a CT-like grid of 120×384×384 voxels at 2.5×0.9×0.9 mm with a 1.6 L ellipsoid liver;
the prediction is the liver moved by 2 voxels and grown by one, with a 15 mm bite taken out.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from autoliver.evaluation.metrics import region_metrics

SHAPE = (120, 384, 384)
SPACING = (2.5, 0.9, 0.9)


@pytest.fixture(scope="module")
def masks():
    z, y, x = np.meshgrid(*[(np.arange(n) - n / 2) * s for n, s in zip(SHAPE, SPACING)], indexing="ij", sparse=True)
    ref = (z / 90) ** 2 + ((y + 20) / 80) ** 2 + ((x + 30) / 110) ** 2 <= 1
    pred = ndimage.binary_dilation(np.roll(ref, 2, axis=2))
    pred &= ~(((z - 30) / 15) ** 2 + ((y + 20) / 15) ** 2 + ((x - 70) / 15) ** 2 <= 1)
    return ref, pred


def test_autoliver_surface_metrics(benchmark, masks):
    ref, pred = masks
    m = benchmark.pedantic(region_metrics, args=(ref, pred, SPACING), rounds=3, iterations=1)
    assert m.hd95_mm > 0


def test_medpy_assd_hd_hd95(benchmark, masks):
    medpy = pytest.importorskip("medpy.metric.binary")
    ref, pred = masks

    def run():
        return (medpy.assd(pred, ref, SPACING, 2), medpy.hd(pred, ref, SPACING, 2), medpy.hd95(pred, ref, SPACING, 2),
                medpy.dc(pred, ref))

    values = benchmark.pedantic(run, rounds=1, iterations=1)
    m = region_metrics(ref, pred, SPACING)
    assert values[0] == pytest.approx(m.assd_mm, rel=1e-6) and values[2] == pytest.approx(m.hd95_mm, rel=1e-6)


def test_deepmind_surface_distance(benchmark, masks):
    sd = pytest.importorskip("surface_distance")
    ref, pred = masks

    def run():
        s = sd.compute_surface_distances(ref, pred, SPACING)
        return (sd.compute_average_surface_distance(s), sd.compute_robust_hausdorff(s, 100),
                sd.compute_robust_hausdorff(s, 95), sd.compute_surface_dice_at_tolerance(s, 2.0),
                sd.compute_dice_coefficient(ref, pred))

    benchmark.pedantic(run, rounds=3, iterations=1)
