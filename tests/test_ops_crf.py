"""3D dense CRF: fast filtering against exact Gaussian sums, convergence, inputs, backends.

How close the fast version must be, and why. Let B be the exact pairwise operator Σ_m w_m N_m and
B' the fast one (both are matrices on tiny volumes: B' is read off by filtering unit vectors).
One mean-field step is Q ← softmax(-U + B Q); softmax moves each output by at most ½ of the
largest change of its inputs (Σ_j |∂q_l/∂z_j| = 2 q_l (1 - q_l) ≤ ½). Starting both from the
same Q_0, the error e_t = max |Q_t - Q'_t| therefore obeys
    e_{t+1} ≤ ½ max_i Σ_j |B - B'|_ij + ½ ‖B‖_∞ e_t,
so after T steps e_T ≤ δ (1 - L^T) / (1 - L) with δ = ½ max row-sum |B - B'| and L = ½ ‖B‖_∞.
``test_marginals_within_the_propagated_kernel_error`` checks exactly that bound, computed from
the matrices; the strong-coupling cases (where L > 1 and the bound is loose) are held to label
agreement instead.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from autoliver.errors import UserError
from autoliver.ops import _ext
from autoliver.ops import crf as crf_mod
from autoliver.ops.crf import CRFParams, dense_crf, dense_crf_reference, mean_field_energy

HAVE_EXT = _ext.load("crf") is not None
needs_ext = pytest.mark.skipif(not HAVE_EXT, reason="compiled crf kernel not built (reference fallback in use)")


def phantom(rng, shape, spacing, classes=2, noise=1.2):
    """A ball (and a core for 3 classes) with noisy image and noisy network probabilities."""
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    centre = [rng.uniform(0.35, 0.65) * n * s for n, s in zip(shape, spacing)]
    radius = 0.3 * min(n * s for n, s in zip(shape, spacing))
    r = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre)))
    labels = (r < radius).astype(np.int64)
    if classes == 3:
        labels[r < 0.5 * radius] = 2
    image = 40.0 * labels + rng.normal(0, 15, shape)
    logits = 2.0 * np.eye(classes)[labels].transpose(3, 0, 1, 2) + rng.normal(0, noise, (classes,) + shape)
    p = np.exp(logits)
    p /= p.sum(0)
    return p.astype(np.float32), image, labels


def fast_matrix(shape, spacing, image, params):
    """The fast pairwise operator B' as a dense matrix (filter every unit vector)."""
    n = int(np.prod(shape))
    eye = np.eye(n, dtype=np.float32).reshape((n,) + tuple(shape))
    image01 = crf_mod._scaled_image(image, params)
    cols = crf_mod._pairwise_messages(eye, image01, spacing, params)
    return cols.reshape(n, n).T.astype(np.float64)  # column j = B' e_j


def exact_matrix(shape, spacing, image, params):
    image01 = crf_mod._scaled_image(image, params)
    return sum(w * n for w, n in crf_mod._exact_kernels(shape, spacing, image01, params))


SMALL_CASES = [
    # shape, spacing (mm), params
    ((5, 8, 9), (2.5, 0.8, 0.8), CRFParams(smoothness_sigma_mm=2.0, smoothness_weight=0.8,
                                           appearance_sigma_mm=6.0, appearance_intensity_sigma=0.15,
                                           appearance_weight=1.0)),
    ((5, 8, 12), (1.0, 1.0, 1.0), CRFParams(smoothness_sigma_mm=1.5, smoothness_weight=0.5,
                                           appearance_sigma_mm=10.0, appearance_intensity_sigma=0.3,
                                           appearance_weight=1.2)),
    ((1, 16, 18), (3.0, 0.7, 0.7), CRFParams(smoothness_sigma_mm=1.0, smoothness_weight=1.0,
                                            appearance_sigma_mm=4.0, appearance_intensity_sigma=0.1,
                                            appearance_weight=0.8)),
]


def test_defaults_are_christ_et_al():
    p = CRFParams()
    assert (p.iterations, p.smoothness_sigma_mm, p.smoothness_weight) == (10, 3.0, 3.0)
    assert (p.appearance_sigma_mm, p.appearance_intensity_sigma, p.appearance_weight) == (60.0, 20.0, 10.0)


@pytest.mark.parametrize("shape,spacing,params", SMALL_CASES)
def test_fast_operator_is_symmetric_and_close_to_exact(shape, spacing, params, rng):
    _, image, _ = phantom(rng, shape, spacing)
    fast, exact = fast_matrix(shape, spacing, image, params), exact_matrix(shape, spacing, image, params)
    assert np.abs(fast - fast.T).max() <= 1e-5 * np.abs(fast).max()
    # Worst message error for any field in [0, 1]: the largest row sum of |B - B'|.
    steps = crf_mod._geometry(shape, spacing, params).blur_steps
    bound = params.smoothness_weight * 1e-3 + params.appearance_weight * crf_mod.MESSAGE_ERROR_PER_WEIGHT[steps]
    q = rng.random((3,) + shape)
    err_random = np.abs(q.reshape(3, -1) @ (fast - exact).T).max()
    assert err_random <= bound
    assert np.abs(fast - exact).sum(1).max() <= 4 * bound  # worst case over all fields, not just random ones


@pytest.mark.parametrize("shape,spacing,params", SMALL_CASES)
@pytest.mark.parametrize("classes", [2, 3])
def test_marginals_within_the_propagated_kernel_error(shape, spacing, params, classes, rng):
    p, image, _ = phantom(rng, shape, spacing, classes)
    fast_b, exact_b = fast_matrix(shape, spacing, image, params), exact_matrix(shape, spacing, image, params)
    delta = 0.5 * np.abs(fast_b - exact_b).sum(1).max()
    lip = 0.5 * np.abs(exact_b).sum(1).max()
    T = params.iterations
    bound = delta * (1 - lip ** T) / (1 - lip) + 1e-5
    fast, ref = dense_crf(p, image, spacing, params), dense_crf_reference(p, image, spacing, params)
    assert np.abs(fast - ref).max() <= bound
    assert bound < 0.05  # the bound itself is tight enough to mean something
    assert np.abs(ref - p).max() > 0.05  # and the CRF did change the probabilities


@pytest.mark.parametrize("seed", range(4))
def test_strong_coupling_labels_agree_with_reference(seed):
    """Christ-like weights (L > 1: errors may grow, so compare labels and the mean difference)."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(5, 11, 3))
    spacing = tuple(float(v) for v in rng.uniform(0.7, 2.5, 3))
    p, image, _ = phantom(rng, shape, spacing, classes=2 + seed % 2)
    params = CRFParams(smoothness_sigma_mm=float(rng.uniform(1, 3)), appearance_sigma_mm=float(rng.uniform(4, 30)),
                       appearance_intensity_sigma=float(rng.uniform(0.1, 0.5)))
    fast, ref = dense_crf(p, image, spacing, params), dense_crf_reference(p, image, spacing, params)
    assert (fast.argmax(0) == ref.argmax(0)).mean() >= 0.99
    assert np.abs(fast - ref).mean() <= 0.01


def test_energy_never_increases(rng):
    """Mean-field updates are CCCP steps on F (module docstring): F(Q_t) is non-increasing, for the
    exact kernels and for the fast kernels (a different PSD matrix, its own energy)."""
    shape, spacing = (5, 8, 9), (2.0, 1.0, 1.0)
    p, image, _ = phantom(rng, shape, spacing, classes=3, noise=2.0)
    params = CRFParams(smoothness_sigma_mm=2.0, appearance_sigma_mm=8.0, appearance_intensity_sigma=0.2)
    fast_b = fast_matrix(shape, spacing, image, params)
    assert np.linalg.eigvalsh(0.5 * (fast_b + fast_b.T)).min() > -1e-4 * np.abs(fast_b).max()
    exact_f, fast_f = [], []
    for t in range(9):
        at_t = dataclasses.replace(params, iterations=t)
        exact_f.append(mean_field_energy(dense_crf_reference(p, image, spacing, at_t), p, image, spacing, params))
        fast_f.append(mean_field_energy(dense_crf(p, image, spacing, at_t), p, image, spacing, params,
                                        kernels=[(1.0, fast_b)]))
    # float64 reference: no slack beyond rounding; float32 fast kernel: its rounding.
    for energies, slack in ((exact_f, 1e-9), (fast_f, 1e-5)):
        steps = np.diff(energies)
        assert (steps <= slack * abs(energies[0])).all(), energies
        assert energies[-1] < energies[0] - 1.0  # it did descend


def liver_phantom(rng, shape=(16, 40, 40), spacing=(2.5, 0.8, 0.8)):
    """An ellipsoid 'liver' (16 % of the volume), 60 HU over a 0 HU background, noise 20 HU; the
    network's probabilities are right on average but noisy (about one voxel in four is wrong)."""
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    labels = ((((z - 20) / 14) ** 2 + ((y - 16) / 11) ** 2 + ((x - 15) / 10) ** 2) < 1).astype(np.int64)
    image = 60.0 * labels + rng.normal(0, 20, shape)
    logit = (2 * labels - 1) + rng.normal(0, 1.5, shape)
    p1 = 1 / (1 + np.exp(-logit))
    return np.stack([1 - p1, p1]).astype(np.float32), image, labels


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_refines_a_noisy_segmentation(rng):
    p, image, labels = liver_phantom(rng)
    edge_aware = CRFParams(appearance_intensity_sigma=0.05)  # Krähenbühl's 13/255
    before = dice(p.argmax(0) == 1, labels == 1)
    after = dice(dense_crf(p, image, (2.5, 0.8, 0.8), edge_aware).argmax(0) == 1, labels == 1)
    assert before < 0.55 and after > 0.8


def test_agrees_with_pydensecrf(rng):
    """Same model as pydensecrf's DenseCRF with symmetric normalisation and Potts weights."""
    dcrf = pytest.importorskip("pydensecrf.densecrf")
    spacing = (2.5, 0.8, 0.8)
    p, image, _ = liver_phantom(rng)
    for params in (CRFParams(iterations=5), CRFParams(iterations=5, appearance_intensity_sigma=0.05)):
        crf = dcrf.DenseCRF(p[0].size, 2)
        crf.setUnaryEnergy(np.ascontiguousarray(-np.log(np.maximum(p, params.probability_floor)).reshape(2, -1)))
        pos = np.stack([g.ravel() * s for g, s in zip(np.indices(p.shape[1:]), spacing)]).astype(np.float32)
        image01 = crf_mod._scaled_image(image, params).reshape(1, -1)
        crf.addPairwiseEnergy(np.ascontiguousarray(pos / params.smoothness_sigma_mm), compat=params.smoothness_weight)
        crf.addPairwiseEnergy(np.ascontiguousarray(np.concatenate(
            [pos / params.appearance_sigma_mm, image01 / params.appearance_intensity_sigma]), dtype=np.float32),
            compat=params.appearance_weight)
        theirs = np.array(crf.inference(params.iterations)).reshape(p.shape)
        ours = dense_crf(p, image, spacing, params)
        # Their permutohedral lattice and our grid are different approximations of the same sums.
        assert (theirs.argmax(0) == ours.argmax(0)).mean() > 0.995
        assert np.abs(theirs - ours).mean() < 0.005


@needs_ext
def test_compiled_kernel_matches_numpy_fallback(rng, monkeypatch):
    shape, spacing = (7, 20, 23), (2.0, 0.9, 0.9)
    p, image, _ = phantom(rng, shape, spacing, classes=3)
    params = CRFParams(iterations=5, appearance_sigma_mm=12.0, appearance_intensity_sigma=0.05)
    compiled = dense_crf(p, image, spacing, params)
    monkeypatch.setenv("AUTOLIVER_DISABLE_EXT", "1")
    fallback = dense_crf(p, image, spacing, params)
    assert np.abs(compiled - fallback).max() < 1e-3


@needs_ext
def test_threads_do_not_change_the_result(rng):
    shape, spacing = (20, 64, 64), (2.0, 1.0, 1.0)  # large enough for the kernel to use threads
    p, image, _ = phantom(rng, shape, spacing)
    try:
        _ext.set_num_threads(1)
        one = dense_crf(p, image, spacing)
        _ext.set_num_threads(2)
        two = dense_crf(p, image, spacing)
    finally:
        _ext.set_num_threads(None)
    np.testing.assert_array_equal(one, two)


def test_edge_cases(rng):
    spacing = (1.0, 1.0, 1.0)
    # One class: certainty.
    np.testing.assert_array_equal(dense_crf(np.full((1, 3, 4, 5), 0.7, np.float32), np.zeros((3, 4, 5)), spacing),
                                  np.ones((1, 3, 4, 5), np.float32))
    # One voxel, constant image, zero iterations (= renormalised, floored probabilities).
    p = np.array([0.2, 0.6], np.float32).reshape(2, 1, 1, 1)
    np.testing.assert_allclose(dense_crf(p, np.zeros((1, 1, 1)), spacing, CRFParams(iterations=0)).ravel(),
                               [0.25, 0.75], rtol=1e-6)
    one_voxel = dense_crf(p, np.zeros((1, 1, 1)), spacing)
    np.testing.assert_allclose(one_voxel, dense_crf_reference(p, np.zeros((1, 1, 1)), spacing), atol=1e-5)
    # Certain inputs stay certain wherever the image is flat.
    certain = np.zeros((2, 4, 5, 6), np.float32)
    certain[0] = 1
    out = dense_crf(certain, np.full((4, 5, 6), 7.0), spacing)
    assert (out[0] > 0.99).all()
    # No pairwise term: the result is the input.
    p, image, _ = phantom(rng, (4, 6, 7), spacing)
    off = CRFParams(smoothness_weight=0.0, appearance_weight=0.0)
    np.testing.assert_allclose(dense_crf(p, image, spacing, off), p, atol=1e-6)


def test_layouts_and_types_give_the_same_result(rng):
    shape, spacing = (6, 10, 11), (2.0, 1.0, 0.8)
    p, image, _ = phantom(rng, shape, spacing)
    params = CRFParams(appearance_sigma_mm=10.0, appearance_intensity_sigma=0.2)
    base = dense_crf(p, image, spacing, params)
    # Non-contiguous and big-endian NumPy inputs, int16 image.
    p_nc = np.asfortranarray(p.astype(np.float64))
    np.testing.assert_allclose(dense_crf(p_nc, image.astype(">f8"), spacing, params), base, atol=1e-6)
    # torch tensors in, a tensor out.
    out = dense_crf(torch.from_numpy(p), torch.from_numpy(image), spacing, params)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), base, atol=1e-6)
    # Anisotropic spacing matters (sigmas are in mm).
    other = dense_crf(p, image, (0.5, 1.0, 0.8), params)
    assert np.abs(other - base).max() > 1e-3
    # An intensity window is the same as pre-clipping the image.
    win = dataclasses.replace(params, intensity_window=(0.0, 30.0))
    np.testing.assert_allclose(dense_crf(p, image, spacing, win),
                               dense_crf(p, np.clip(image, 0.0, 30.0), spacing, params), atol=1e-6)


@pytest.mark.parametrize("call,message", [
    (lambda: dense_crf(np.ones((2, 3, 4), np.float32), np.zeros((3, 4)), (1, 1, 1)), "(K, z, y, x)"),
    (lambda: dense_crf(np.ones((2, 3, 4, 5), np.float32), np.zeros((3, 4, 6)), (1, 1, 1)), "image must have shape"),
    (lambda: dense_crf(-np.ones((2, 3, 4, 5), np.float32), np.zeros((3, 4, 5)), (1, 1, 1)), ">= 0"),
    (lambda: dense_crf(np.ones((2, 3, 4, 5), np.float32), np.full((3, 4, 5), np.nan), (1, 1, 1)), "NaN"),
    (lambda: dense_crf(np.ones((2, 3, 4, 5), np.float32), np.zeros((3, 4, 5)), (1, 0, 1)), "spacing_zyx_mm"),
    (lambda: dense_crf(np.ones((2, 3, 4, 5), np.float32), np.zeros((3, 4, 5)), (1, 1, 1),
                       CRFParams(appearance_weight=-1.0, smoothness_sigma_mm=0.0)), "appearance_weight"),
    (lambda: dense_crf(np.ones((2, 3, 4, 5), np.float32), np.zeros((3, 4, 5)), (1, 1, 1),
                       CRFParams(iterations=2.5)), "iterations"),
    (lambda: dense_crf_reference(np.ones((2, 20, 20, 20), np.float32), np.zeros((20, 20, 20)), (1, 1, 1)),
     "tiny volumes"),
])
def test_invalid_input_is_reported(call, message):
    with pytest.raises(UserError, match=None) as info:
        call()
    assert message in str(info.value)


def test_invalid_params_are_reported_together():
    with pytest.raises(UserError) as info:
        dense_crf(np.ones((2, 3, 4, 5), np.float32), np.zeros((3, 4, 5)), (1, 1, 1),
                  CRFParams(appearance_weight=-1.0, smoothness_sigma_mm=0.0))
    assert "appearance_weight" in str(info.value) and "smoothness_sigma_mm" in str(info.value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(rng):
    shape, spacing = (10, 30, 28), (2.5, 0.8, 0.8)
    for classes, params in ((2, CRFParams()), (3, CRFParams(appearance_sigma_mm=8.0, appearance_intensity_sigma=0.1))):
        p, image, _ = phantom(rng, shape, spacing, classes)
        cpu = dense_crf(p, image, spacing, params)
        gpu = dense_crf(torch.from_numpy(p).cuda(), torch.from_numpy(image).cuda(), spacing, params)
        assert gpu.is_cuda and gpu.shape == p.shape
        np.testing.assert_allclose(gpu.cpu().numpy(), cpu, atol=2e-3)
