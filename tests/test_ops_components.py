"""Connected components: compiled kernel vs SciPy (numbers included), filters, statistics, edge cases."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from autoliver.errors import UserError
from autoliver.ops import _ext
from autoliver.ops import components as cc

STRUCT3 = {6: 1, 18: 2, 26: 3}
STRUCT2 = {4: 1, 8: 2}


@pytest.fixture(autouse=True)
def _restore_threads():
    yield
    _ext.set_num_threads(None)


@pytest.fixture
def kernel():
    mod = _ext.load("components")
    if mod is None:
        pytest.skip("compiled components kernel not built (the reference path is tested separately)")
    return mod


def _scipy(mask, connectivity):
    rank = STRUCT3[connectivity] if mask.ndim == 3 else STRUCT2[connectivity]
    labels, n = ndimage.label(mask, ndimage.generate_binary_structure(mask.ndim, rank))
    return labels, n


def _random_masks(seed, count, max_side=28):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        shape = tuple(int(s) for s in rng.integers(1, max_side, 3))
        yield rng.random(shape) < rng.uniform(0.05, 0.75)


@pytest.mark.parametrize("threads", [1, 2, 5])
@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_binary_equals_scipy_including_numbers(kernel, connectivity, threads):
    _ext.set_num_threads(threads)
    for mask in _random_masks(connectivity + threads, 12):
        labels, n = cc.label(mask, connectivity)
        expected, n_expected = _scipy(mask, connectivity)
        assert labels.dtype == np.uint32 and n == n_expected
        np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("connectivity", [4, 8])
def test_2d_equals_scipy(kernel, connectivity):
    rng = np.random.default_rng(connectivity)
    for threads in (1, 3):
        _ext.set_num_threads(threads)
        for _ in range(6):
            mask = rng.random(tuple(int(s) for s in rng.integers(1, 700, 2))) < rng.uniform(0.1, 0.7)
            labels, n = cc.label(mask, connectivity)
            expected, n_expected = _scipy(mask, connectivity)
            assert n == n_expected
            np.testing.assert_array_equal(labels, expected)
    mask = rng.random((50, 60)) < 0.4
    np.testing.assert_array_equal(cc.label(mask, 26)[0], cc.label(mask, 8)[0])  # 26 means 8 in 2D
    np.testing.assert_array_equal(cc.label(mask, 6)[0], cc.label(mask, 4)[0])


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16", "int32", "uint32", "int64", "uint64"])
def test_multilabel_equals_reference(kernel, dtype):
    rng = np.random.default_rng(3)
    _ext.set_num_threads(2)
    for connectivity in (6, 18, 26):
        values = rng.integers(0, 4, (17, 21, 26)).astype(dtype)
        values[values == 3] = np.iinfo(dtype).max  # large values and runs of touching labels
        labels, n = cc.label(values, connectivity)
        expected, n_expected = cc.label_reference(values, connectivity)
        assert n == n_expected
        np.testing.assert_array_equal(labels, expected)


def test_reference_numbering_is_scan_order():
    values = np.array([[0, 2, 2, 0, 1], [1, 0, 0, 0, 1], [1, 1, 0, 2, 0]], np.int16)
    labels, n = cc.label_reference(values, 4)
    assert n == 4
    np.testing.assert_array_equal(labels, [[0, 1, 1, 0, 2], [3, 0, 0, 0, 2], [3, 3, 0, 4, 0]])


def test_connectivity_semantics(kernel):
    corner = np.zeros((2, 2, 2), bool)
    corner[0, 0, 0] = corner[1, 1, 1] = True
    edge = np.zeros((2, 2, 2), bool)
    edge[0, 0, 0] = edge[1, 1, 0] = True
    assert [cc.label(corner, c)[1] for c in (6, 18, 26)] == [2, 2, 1]
    assert [cc.label(edge, c)[1] for c in (6, 18, 26)] == [2, 1, 1]
    # touching runs of different labels are different components
    assert cc.label(np.array([[[1, 1, 2, 2]]], np.uint8), 26)[1] == 2


def test_long_rows_and_byte_boundaries(kernel):
    # runs starting/ending at every offset around the 8-byte steps of the byte scanner: one row
    # per (start, stop) pattern, blank rows in between, plus touching runs of another label
    for width in range(1, 41):
        patterns = [(a, b) for a in range(width) for b in range(a + 1, width + 1)]
        rows = np.zeros((1, 2 * len(patterns), width), np.uint8)
        for k, (a, b) in enumerate(patterns):
            rows[0, 2 * k, a:b] = 1
            rows[0, 2 * k, b:b + 2] = 7
        for c in (6, 26):
            labels, n = cc.label(rows, c)
            expected, n_expected = cc.label_reference(rows, c)
            assert n == n_expected
            np.testing.assert_array_equal(labels, expected)
        labels, n = cc.label(rows == 1, 26)
        assert n == len(patterns)
    # the most runs a row can hold: every voxel a different label
    distinct = np.arange(1, 4001, dtype=np.uint16).reshape(4, 10, 100)
    labels, n = cc.label(distinct, 6)
    assert n == 4000
    np.testing.assert_array_equal(labels, distinct)


def test_empty_full_single_voxel_and_thin(kernel):
    assert cc.label(np.zeros((0, 4, 5), bool))[1] == 0
    labels, n = cc.label(np.zeros((3, 4, 5), bool))
    assert n == 0 and not labels.any()
    labels, n = cc.label(np.ones((3, 4, 5), bool), 6)
    assert n == 1 and (labels == 1).all()
    one = np.zeros((5, 6, 7), bool)
    one[2, 3, 4] = True
    labels, n = cc.label(one)
    assert n == 1 and labels[2, 3, 4] == 1 and labels.sum() == 1
    rng = np.random.default_rng(4)
    for shape in [(1, 40, 50), (30, 1, 40), (30, 40, 1), (1, 1, 300), (300, 1, 1)]:
        mask = rng.random(shape) < 0.5
        for c in (6, 18, 26):
            labels, n = cc.label(mask, c)
            expected, n_expected = _scipy(mask, c)
            assert n == n_expected
            np.testing.assert_array_equal(labels, expected)


def test_checkerboard_huge_label_count(kernel):
    board = (np.indices((64, 64, 64)).sum(0) % 2).astype(bool)
    _ext.set_num_threads(2)
    labels, n = cc.label(board, 6)
    assert n == board.sum() == 131072
    np.testing.assert_array_equal(labels, _scipy(board, 6)[0])
    assert cc.label(board, 18)[1] == 1  # edge contacts join all voxels of one colour
    stats = cc.component_stats(labels, (1, 1, 1))
    assert stats.num_labels == n and (stats.voxel_count == 1).all()
    np.testing.assert_array_equal(stats.bbox[:, 3:] - stats.bbox[:, :3], 1)


def test_non_contiguous_and_big_endian_not_modified(kernel):
    rng = np.random.default_rng(5)
    values = rng.integers(0, 3, (12, 30, 40)).astype(np.int16)
    view = values[:, ::2, ::-1]
    before = view.copy()
    expected, n_expected = cc.label_reference(np.ascontiguousarray(view), 26)
    labels, n = cc.label(view)
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_array_equal(view, before)
    big = np.ascontiguousarray(view).astype(">i2")
    big_before = big.copy()
    np.testing.assert_array_equal(cc.label(big)[0], expected)
    np.testing.assert_array_equal(big, big_before)
    np.testing.assert_array_equal(cc.remove_small_components(big, 4), cc.remove_small_components(view, 4))


def test_largest_component(kernel):
    for mask in _random_masks(6, 10):
        for c in (6, 26):
            out = cc.largest_component(mask, c)
            assert out.dtype == np.bool_
            np.testing.assert_array_equal(out, cc.largest_component_reference(mask, c))
    tie = np.zeros((1, 3, 7), bool)
    tie[0, 2, 0:2] = tie[0, 0, 5:7] = True  # equal sizes: the first in scan order wins
    np.testing.assert_array_equal(np.nonzero(cc.largest_component(tie)), ([0, 0], [0, 0], [5, 6]))
    assert not cc.largest_component(np.zeros((4, 4, 4), bool)).any()
    multilabel = np.zeros((4, 4, 4), np.int16)
    multilabel[0, 0, :3], multilabel[0, 0, 3] = 1, 2  # touching labels form one foreground component
    assert cc.largest_component(multilabel).sum() == 4


def test_remove_small_components(kernel):
    rng = np.random.default_rng(7)
    for mask in _random_masks(7, 8):
        for threshold in (0, 1, 2, 5, 40):
            out = cc.remove_small_components(mask, threshold, connectivity=18)
            assert out.dtype == np.bool_
            np.testing.assert_array_equal(out, cc.remove_small_components_reference(mask, threshold, 18))
    values = rng.integers(0, 4, (10, 20, 20)).astype(np.uint16)
    out = cc.remove_small_components(values, 6, connectivity=6)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, cc.remove_small_components_reference(values, 6, 6))
    assert set(np.unique(out)) <= {0, 1, 2, 3}


def test_remove_small_components_in_ml():
    mask = np.zeros((10, 10, 10), bool)
    mask[0, 0, :4] = True  # 4 voxels of 2 mm^3 = 0.008 mL
    mask[5:7, 5:7, 5:7] = True  # 8 voxels = 0.016 mL
    spacing = (2.0, 1.0, 1.0)
    out = cc.remove_small_components(mask, min_ml=0.016, spacing_zyx_mm=spacing)
    assert out.sum() == 8 and out[5, 5, 5]
    assert cc.remove_small_components(mask, min_ml=0.008, spacing_zyx_mm=spacing).sum() == 12
    assert cc.remove_small_components(mask, min_voxels=9, min_ml=0.001, spacing_zyx_mm=spacing).sum() == 0
    with pytest.raises(UserError, match="needs spacing_zyx_mm"):
        cc.remove_small_components(mask, min_ml=0.1)
    with pytest.raises(UserError, match="min_voxels must be"):
        cc.remove_small_components(mask, min_voxels=-1)


def test_component_stats(kernel):
    rng = np.random.default_rng(8)
    labels, _ = cc.label(rng.random((15, 22, 31)) < 0.3, 6)
    labels[labels == 3] = 0  # an absent label
    for threads in (1, 3):
        _ext.set_num_threads(threads)
        s = cc.component_stats(labels, (2.5, 0.8, 0.7))
        r = cc.component_stats_reference(labels, (2.5, 0.8, 0.7))
        np.testing.assert_array_equal(s.voxel_count, r.voxel_count)
        np.testing.assert_array_equal(s.bbox, r.bbox)
        np.testing.assert_allclose(s.centroid_mm, r.centroid_mm, rtol=1e-12, equal_nan=True)
    assert s.voxel_count[2] == 0 and np.isnan(s.centroid_mm[2]).all()
    # hand-made: a 2x3x4 block at (1, 2, 3)
    block = np.zeros((5, 6, 9), np.uint8)
    block[1:3, 2:5, 3:7] = 2
    s = cc.component_stats(block, (2.0, 1.0, 0.5))
    assert s.num_labels == 2 and list(s.voxel_count) == [0, 24]
    np.testing.assert_array_equal(s.bbox[1], [1, 2, 3, 3, 5, 7])
    np.testing.assert_allclose(s.centroid_mm[1], [1.5 * 2.0, 3.0 * 1.0, 4.5 * 0.5])
    np.testing.assert_allclose(s.volume_ml, [0, 24 * 1.0 / 1000])
    assert s.slices(2) == (slice(1, 3), slice(2, 5), slice(3, 7))
    s2 = cc.component_stats(block[1], (1.0, 0.5))  # 2D
    np.testing.assert_array_equal(s2.bbox[1], [2, 3, 5, 7])
    np.testing.assert_allclose(s2.centroid_mm[1], [3.0, 4.5 * 0.5])
    with pytest.raises(UserError, match=">= 0"):
        cc.component_stats(-block.astype(np.int8), (1, 1, 1))


def test_fallback_without_extension(monkeypatch):
    rng = np.random.default_rng(9)
    mask = rng.random((10, 12, 14)) < 0.4
    monkeypatch.setenv("AUTOLIVER_DISABLE_EXT", "1")
    labels, n = cc.label(mask, 18)
    expected, n_expected = _scipy(mask, 18)
    assert n == n_expected and labels.dtype == np.uint32
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_array_equal(cc.largest_component(mask), cc.largest_component_reference(mask))
    np.testing.assert_array_equal(cc.remove_small_components(mask, 3), cc.remove_small_components_reference(mask, 3))
    assert cc.component_stats(labels, (1, 1, 1)).num_labels == n


def test_cc3d_agrees(kernel):
    cc3d = pytest.importorskip("cc3d")
    rng = np.random.default_rng(10)
    values = rng.integers(0, 3, (30, 40, 50)).astype(np.uint8)
    for c in (6, 18, 26):
        np.testing.assert_array_equal(cc.label(values, c)[0], cc3d.connected_components(values, connectivity=c))


def test_torch_cpu_tensor(kernel):
    torch = pytest.importorskip("torch")
    mask = np.random.default_rng(11).random((8, 9, 10)) < 0.4
    labels, n = cc.label(torch.from_numpy(mask))
    assert labels.dtype == torch.int32
    np.testing.assert_array_equal(labels.numpy(), cc.label(mask)[0])
    assert cc.largest_component(torch.from_numpy(mask)).dtype == torch.bool


@pytest.mark.parametrize("call,match", [
    (lambda: cc.label(np.zeros((3, 3, 3), np.float32)), "bool or an integer"),
    (lambda: cc.label(np.zeros((2, 3, 3, 3), bool)), "2D .* or 3D"),
    (lambda: cc.label(np.zeros((3, 3, 3), bool), 8), "6, 18 or 26"),
    (lambda: cc.label(np.zeros((3, 3), bool), 5), "4 or 8"),
    (lambda: cc.label(np.zeros((3, 3), bool), 8.0), "must be an integer"),
    (lambda: cc.label([[1, 0]]), "NumPy array or a torch tensor"),
    (lambda: cc.component_stats(np.zeros((3, 3, 3), np.uint8), (1, 1)), "spacing_zyx_mm"),
])
def test_invalid_inputs_are_user_errors(call, match):
    with pytest.raises(UserError, match=match):
        call()


# ---------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)


def _cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bool", "uint8", "int8", "int16", "int32", "int64"])
def test_cuda_label_matches_cpu(dtype):
    torch = _cuda()
    rng = np.random.default_rng(12)
    for c in (6, 18, 26):
        values = rng.integers(0, 3, (23, 37, 41))
        values = (values > 0) if dtype == "bool" else values.astype(dtype)
        labels, n = cc.label(torch.from_numpy(values).cuda(), c)
        expected, n_expected = cc.label(values, c)
        assert labels.is_cuda and labels.dtype == torch.int32 and n == n_expected
        np.testing.assert_array_equal(labels.cpu().numpy(), expected)


@pytest.mark.gpu
def test_cuda_filters_and_stats_match_cpu():
    torch = _cuda()
    rng = np.random.default_rng(13)
    mask = rng.random((30, 60, 70)) < 0.35
    t = torch.from_numpy(mask).cuda()
    np.testing.assert_array_equal(cc.largest_component(t).cpu().numpy(), cc.largest_component(mask))
    np.testing.assert_array_equal(cc.remove_small_components(t, 5).cpu().numpy(), cc.remove_small_components(mask, 5))
    labels, _ = cc.label(mask)
    s = cc.component_stats(torch.from_numpy(labels.astype(np.int32)).cuda(), (2.0, 1.0, 0.5))
    r = cc.component_stats(labels, (2.0, 1.0, 0.5))
    np.testing.assert_array_equal(s.voxel_count, r.voxel_count)
    np.testing.assert_array_equal(s.bbox, r.bbox)
    np.testing.assert_allclose(s.centroid_mm, r.centroid_mm, rtol=1e-12, equal_nan=True)
    # 2D int64 labels with a gap (label 3 absent), and a whole-slice component (warp-combined sums)
    lab2 = cc.label(mask[3])[0].astype(np.int64)
    lab2[lab2 == 3] = 0
    lab2[0, :] = lab2.max() + 1
    s2 = cc.component_stats(torch.from_numpy(lab2).cuda(), (1.0, 0.5))
    r2 = cc.component_stats(lab2, (1.0, 0.5))
    np.testing.assert_array_equal(s2.voxel_count, r2.voxel_count)
    np.testing.assert_array_equal(s2.bbox, r2.bbox)
    np.testing.assert_allclose(s2.centroid_mm, r2.centroid_mm, rtol=1e-12, equal_nan=True)
    board = torch.from_numpy((np.indices((40, 40, 40)).sum(0) % 2).astype(bool)).cuda()
    assert cc.label(board, 6)[1] == 32000
    assert cc.label(torch.zeros((5, 5), dtype=torch.bool, device="cuda"))[1] == 0
