"""The streamed way back to the original grid equals preprocessing's revert_to_original."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from autoliver.inference import original_grid as og
from autoliver.preprocessing.pipeline import revert_to_original


def properties(net_shape, full, box, orders, through_axis=None):
    crop = tuple(b - a for a, b in box)
    return {"crop_bbox_zyx": [list(b) for b in box], "shape_after_crop_zyx": list(crop),
            "shape_before_crop_zyx": list(full), "shape_after_resampling_zyx": list(net_shape),
            "resampling": {"orders_label_zyx": list(orders), "orders_image_zyx": list(orders),
                           "through_plane_axis": through_axis}}


def random_probabilities(rng, k, shape):
    p = rng.random((k, *shape)).astype(np.float32) ** 3
    return p / p.sum(0)


CASES = [  # network grid, full grid, crop box, label orders, through-plane axis
    ((7, 20, 18), (30, 50, 44), ((3, 25), (5, 45), (2, 40)), (1, 1, 1), None),  # upsampling
    ((40, 60, 50), (30, 50, 44), ((0, 30), (0, 50), (0, 44)), (1, 1, 1), None),  # downsampling, no crop
    ((9, 33, 31), (12, 64, 60), ((2, 11), (3, 60), (1, 59)), (0, 1, 1), 0),  # separate z, nearest
    ((10, 25, 22), (16, 40, 37), ((1, 15), (2, 38), (4, 36)), (3, 3, 3), None),  # cubic
    ((10, 25, 22), (16, 40, 37), ((1, 15), (2, 38), (4, 36)), (1, 0, 1), 1),  # through-plane axis y
]


@pytest.mark.parametrize("net,full,box,orders,axis", CASES)
def test_streamed_probabilities_and_labels_equal_revert_to_original(net, full, box, orders, axis, monkeypatch, rng):
    monkeypatch.setattr(og, "SLAB_BYTES", 3 * 4 * full[1] * full[2] * 3)  # 3 slices per slab: many slabs
    p = random_probabilities(rng, 3, net)
    props = properties(net, full, box, orders, axis)
    expected = revert_to_original(p, props, None, is_label=False)
    stages = [(torch.from_numpy(p), props, None)]
    got = og.probabilities_on_original_grid(stages, dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=2e-6)
    labels = og.labels_on_original_grid(stages)
    assert labels.dtype == np.uint8 and labels.shape == full
    np.testing.assert_array_equal(labels, np.argmax(expected, 0))


def test_float16_network_probabilities_are_accepted(rng):
    net, full, box = (6, 10, 12), (12, 20, 24), ((0, 12), (0, 20), (0, 24))
    p = random_probabilities(rng, 2, net)
    props = properties(net, full, box, (1, 1, 1))
    got = og.probabilities_on_original_grid([(torch.from_numpy(p).half(), props, None)])
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), revert_to_original(p, props, None, False), atol=2e-3)


def test_ensemble_of_two_grids_is_the_mean_on_the_original_grid(rng):
    full = (20, 30, 28)
    a_net, b_net = (10, 15, 14), (20, 30, 28)
    box_a, box_b = ((0, 20), (2, 28), (0, 28)), ((0, 20), (0, 30), (0, 28))
    pa, pb = random_probabilities(rng, 3, a_net), random_probabilities(rng, 3, b_net)
    props_a, props_b = properties(a_net, full, box_a, (1, 1, 1)), properties(b_net, full, box_b, (1, 1, 1))
    stages = [(torch.from_numpy(pa), props_a, None), (torch.from_numpy(pb), props_b, None)]
    expected = (revert_to_original(pa, props_a, None, False) + revert_to_original(pb, props_b, None, False)) / 2
    np.testing.assert_allclose(og.probabilities_on_original_grid(stages, np.float32), expected, atol=2e-6)
    np.testing.assert_array_equal(og.labels_on_original_grid(stages), np.argmax(expected, 0))


def test_outside_the_crop_is_background(rng):
    net, full, box = (4, 5, 6), (10, 12, 14), ((3, 7), (4, 9), (5, 11))
    p = random_probabilities(rng, 3, net)
    labels = og.labels_on_original_grid([(torch.from_numpy(p), properties(net, full, box, (1, 1, 1)), None)])
    inside = np.zeros(full, bool)
    inside[3:7, 4:9, 5:11] = True
    assert (labels[~inside] == 0).all()
