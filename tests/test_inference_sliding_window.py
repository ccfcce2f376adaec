"""Sliding-window prediction: tiling, Gaussian weighting, slab aggregation, mirroring, 2D."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage, stats

from autoliver.inference.sliding_window import (gaussian_1d, importance_map, predict_logits, tile_starts,
                                                weight_sum_1d)


class Channels(torch.nn.Module):
    """Output channels = input channels and twice them: a pure voxel-wise map."""

    def forward(self, x):
        return torch.cat([x, 2 * x], 1)


class PositionDependent(torch.nn.Module):
    """Output depends on the voxel's position inside the patch, so overlapping tiles disagree and
    the Gaussian weighting decides the result."""

    def __init__(self, dims: int):
        super().__init__()
        torch.manual_seed(0)
        conv = torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d
        self.conv = conv(1, 3, 3, padding=1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        ramp = torch.linspace(-1, 1, x.shape[-1]).expand_as(x[:, :1])
        return self.conv(x) + ramp


def nnunet_steps(size: int, patch: int, step_size: float) -> list[int]:
    """Tile starts by nnU-Net v2's rule (compute_steps_for_sliding_window), written out here so the
    tests do not check tile_starts against itself."""
    num = int(np.ceil((size - patch) / (step_size * patch))) + 1
    if num == 1:
        return [0]
    step = (size - patch) / (num - 1)
    return [int(np.round(step * i)) for i in range(num)]


def scipy_importance_map(patch, sigma_scale: float = 1.0 / 8) -> np.ndarray:
    """The Gaussian importance map from scipy: for odd patch sizes nnU-Net's own construction (a
    delta at the centre blurred by gaussian_filter, peak scaled to 1); for even sizes the normal
    density centred between the two middle voxels (autoliver's map is symmetric; nnU-Net centres
    at patch // 2, half a voxel off)."""
    if all(p % 2 for p in patch):
        delta = np.zeros(patch)
        delta[tuple(p // 2 for p in patch)] = 1
        g = ndimage.gaussian_filter(delta, [p * sigma_scale for p in patch], 0, mode="constant", cval=0, truncate=8)
        return g / g.max()
    out = np.ones(())
    for p in patch:
        d = stats.norm.pdf(np.arange(p), loc=(p - 1) / 2, scale=p * sigma_scale)
        out = np.multiply.outer(out, d / d.max())
    return out


def reference_logits(network, data: np.ndarray, patch, step_size: float, flips=()) -> np.ndarray:
    """Plain full-volume aggregation (nnU-Net's way): weighted sum and weight volume, then divide."""
    c, *shape = data.shape
    dims = len(patch)
    gmap = scipy_importance_map(patch)
    if dims == 2:
        per_slice = [reference_logits(network, data[:, z][:, None], (1, *patch), step_size, flips)[:, 0]
                     for z in range(shape[0])]
        return np.stack(per_slice, 1)
    starts = [nnunet_steps(s, p, step_size) for s, p in zip(shape, patch)]
    num, den = None, np.zeros(shape)
    flip_sets = [f for r in range(len(flips) + 1) for f in itertools.combinations([a + 2 for a in flips], r)]
    for z0, y0, x0 in itertools.product(*starts):
        sl = (slice(z0, z0 + patch[0]), slice(y0, y0 + patch[1]), slice(x0, x0 + patch[2]))
        x = torch.from_numpy(data[(slice(None), *sl)][None]).float()
        if patch[0] == 1:  # 2D network fed one slice
            outs = []
            for f in flip_sets:
                f2 = f  # flips name (B, C, y, x) dims of the 2D batch
                xi = torch.flip(x[:, :, 0], f2) if f2 else x[:, :, 0]
                y = network(xi)
                outs.append(torch.flip(y, f2) if f2 else y)
            y = torch.stack(outs).mean(0)[:, :, None]
        else:
            outs = []
            for f in flip_sets:
                y = network(torch.flip(x, f) if f else x)
                outs.append(torch.flip(y, f) if f else y)
            y = torch.stack(outs).mean(0)
        y = y[0].double().numpy()
        if num is None:
            num = np.zeros((y.shape[0], *shape))
        num[(slice(None), *sl)] += y * gmap
        den[sl] += gmap
    return num / den


@settings(max_examples=200, deadline=None)
@given(patch=st.integers(1, 40), extra=st.integers(0, 200), step=st.floats(0.05, 1.0))
def test_tiles_cover_every_voxel_exactly_once_or_more_and_stay_inside(patch, extra, step):
    size = patch + extra
    starts = tile_starts(size, patch, step)
    assert starts[0] == 0 and starts[-1] == size - patch
    nnunet = nnunet_steps(size, patch, step)
    if len(set(nnunet)) == len(nnunet):  # nnU-Net repeats starts when step × patch < 1 voxel; we do not
        assert starts == nnunet
    assert starts == sorted(set(starts))
    cover = np.zeros(size, int)
    for s in starts:
        cover[s:s + patch] += 1
    assert cover.min() >= 1
    # neighbours are never further apart than the requested step (rounded)
    assert max(np.diff(starts), default=0) <= int(np.ceil(step * patch)) + 1
    # the separable normaliser is positive everywhere: no voxel is left without weight
    assert weight_sum_1d(size, patch, starts).min() > 0


@settings(max_examples=25, deadline=None)
@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 30), st.integers(1, 30), st.integers(1, 30)),
       patch=st.tuples(st.integers(2, 12), st.integers(2, 12), st.integers(2, 12)),
       step=st.sampled_from([0.25, 0.5, 0.9, 1.0]))
def test_voxelwise_network_is_reproduced_exactly_3d(shape, patch, step):
    """Every voxel gets weights that sum to one: a voxel-wise map comes through unchanged, for any
    shape, including volumes smaller than the patch (padded) and awkward sizes."""
    data = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out = predict_logits(Channels(), data, patch, step_size=step)
    assert out.shape == (2 * shape[0], *shape[1:]) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.concatenate([data, 2 * data]), rtol=1e-5, atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(shape=st.tuples(st.integers(1, 2), st.integers(1, 9), st.integers(1, 40), st.integers(1, 40)),
       patch=st.tuples(st.integers(2, 16), st.integers(2, 16)), batch=st.sampled_from([None, 1, 4]))
def test_voxelwise_network_is_reproduced_exactly_2d(shape, patch, batch):
    data = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    out = predict_logits(Channels(), data, patch, step_size=0.5, batch_size=batch)
    np.testing.assert_allclose(out, np.concatenate([data, 2 * data]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [None, 1, 3])
def test_context_slices_feed_each_slice_with_its_neighbours_as_training_does(batch):
    """2.5D: slice i goes in as (i-k .. i+k of the context channels, nearest slice beyond the ends,
    channel-major) followed by the other channels of slice i alone: the order training's sampler
    stacks them in (``context_indices``)."""
    from autoliver.inference.sliding_window import context_indices

    z, k = 7, 2
    rng = np.random.default_rng(2)
    data = rng.standard_normal((3, z, 9, 11)).astype(np.float32)  # channels 0, 1 with context; 2 alone
    out = predict_logits(Channels(), data, (5, 6), step_size=0.5, batch_size=batch, context_slices=k,
                         context_channels=2)
    assert out.shape == (2 * (2 * (2 * k + 1) + 1), z, 9, 11)
    for i in range(z):
        expected = np.concatenate([data[:2, context_indices(i, k, z)].reshape(-1, 9, 11), data[2:, i]])
        np.testing.assert_allclose(out[:11, i], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="2D patches"):
        predict_logits(Channels(), data, (4, 5, 6), context_slices=1)


@pytest.mark.parametrize("shape,patch,step", [((1, 23, 31, 29), (8, 12, 10), 0.5), ((1, 16, 20, 24), (16, 8, 12), 0.33),
                                              ((1, 9, 17, 40), (4, 16, 16), 1.0)])
def test_gaussian_weighted_average_matches_full_volume_reference_3d(shape, patch, step):
    """The slab-wise aggregation with separable normalisers equals the plain full-volume one."""
    net = PositionDependent(3).eval()
    data = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        expected = reference_logits(net, data, patch, step)
    out = predict_logits(net, data, patch, step_size=step)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    # overlapping tiles really disagree here, so the weighting was exercised
    assert np.abs(out - reference_logits_unweighted(net, data, patch, step)).max() > 1e-3


def reference_logits_unweighted(net, data, patch, step):
    shape = data.shape[1:]
    starts = [tile_starts(s, p, step) for s, p in zip(shape, patch)]
    num, den = None, np.zeros(shape)
    with torch.no_grad():
        for z0, y0, x0 in itertools.product(*starts):
            sl = (slice(z0, z0 + patch[0]), slice(y0, y0 + patch[1]), slice(x0, x0 + patch[2]))
            y = net(torch.from_numpy(data[(slice(None), *sl)][None]))[0].double().numpy()
            num = np.zeros((y.shape[0], *shape)) if num is None else num
            num[(slice(None), *sl)] += y
            den[sl] += 1
    return num / den


def test_gaussian_weighted_average_matches_reference_2d_with_mirroring():
    net = PositionDependent(2).eval()
    data = np.random.default_rng(3).standard_normal((1, 5, 37, 29)).astype(np.float32)
    with torch.no_grad():
        expected = reference_logits(net, data, (16, 12), 0.5, flips=(0, 1))
    out = predict_logits(net, data, (16, 12), step_size=0.5, mirror_axes=(0, 1), batch_size=2)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_mirroring_on_reference_with_3d_flips():
    net = PositionDependent(3).eval()
    data = np.random.default_rng(4).standard_normal((1, 10, 14, 18)).astype(np.float32)
    with torch.no_grad():
        expected = reference_logits(net, data, (8, 8, 8), 0.5, flips=(1, 2))
    out = predict_logits(net, data, (8, 8, 8), step_size=0.5, mirror_axes=(1, 2))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


class SymmetricConv(torch.nn.Module):
    """A network that commutes with every flip: convolutions with mirror-symmetric kernels."""

    def __init__(self, dims: int):
        super().__init__()
        torch.manual_seed(1)
        conv = torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d
        self.a, self.b = conv(2, 4, 3, padding=1), conv(4, 3, 3, padding=1)
        with torch.no_grad():
            for c in (self.a, self.b):
                w = c.weight
                for axis in range(2, w.ndim):
                    w.copy_((w + torch.flip(w, (axis,))) / 2)

    def forward(self, x):
        return self.b(torch.nn.functional.leaky_relu(self.a(x)))


@pytest.mark.parametrize("dims,patch,axes", [(3, (8, 12, 12), (0, 1, 2)), (2, (16, 16), (0, 1))])
def test_mirroring_a_mirror_symmetric_model_changes_nothing(dims, patch, axes):
    net = SymmetricConv(dims).eval()
    data = np.random.default_rng(5).standard_normal((2, 11, 21, 19)).astype(np.float32)
    plain = predict_logits(net, data, patch, step_size=0.5)
    mirrored = predict_logits(net, data, patch, step_size=0.5, mirror_axes=axes)
    np.testing.assert_allclose(mirrored, plain, rtol=1e-4, atol=1e-5)
    # … whereas for a model that is not symmetric, mirroring does change the logits
    other = PositionDependent(dims).eval()
    d1 = data[:1]
    assert np.abs(predict_logits(other, d1, patch, mirror_axes=axes) - predict_logits(other, d1, patch)).max() > 1e-3


class CountingTiles(PositionDependent):
    def forward(self, x):
        self.tiles = getattr(self, "tiles", 0) + x.shape[0]
        return super().forward(x)


def test_every_tile_and_mirror_combination_runs_once():
    net = CountingTiles(3).eval()
    data = np.zeros((1, 20, 20, 20), np.float32)
    predict_logits(net, data, (10, 10, 10), step_size=0.5, batch_size=1)  # 3 starts per axis
    assert net.calls == 27 and net.tiles == 27
    net.calls = net.tiles = 0
    predict_logits(net, data, (10, 10, 10), step_size=0.5, mirror_axes=(0, 2), batch_size=1)
    assert net.calls == 27 * 4 and net.tiles == 27 * 4
    net.calls = net.tiles = 0
    predict_logits(net, data, (10, 10, 10), step_size=0.5, batch_size=4)  # 9 tiles per z start: 4 + 4 + 1
    assert net.calls == 3 * 3 and net.tiles == 27


@pytest.mark.parametrize("batch", [1, 2, 5, None])
def test_batching_tiles_changes_nothing(batch):
    net = PositionDependent(3).eval()
    data = np.random.default_rng(7).standard_normal((1, 19, 26, 23)).astype(np.float32)
    one = predict_logits(net, data, (8, 10, 12), step_size=0.5, batch_size=1)
    np.testing.assert_allclose(predict_logits(net, data, (8, 10, 12), step_size=0.5, batch_size=batch), one,
                               rtol=1e-5, atol=1e-5)


def test_float16_output_and_tensor_in_tensor_out():
    data = torch.randn(1, 12, 20, 20)
    out = predict_logits(Channels(), data, (8, 8, 8), out_dtype=torch.float16)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float16
    np.testing.assert_allclose(out.float().numpy()[:1], data.numpy(), atol=2e-3)


@pytest.mark.parametrize("patch", [(9, 9, 9), (5, 17, 33), (4, 6, 5), (16, 128, 128), (1, 7, 8)])
def test_importance_map_equals_scipy_gaussian(patch):
    m = importance_map(patch)
    assert m.shape == patch and m.dtype == np.float32 and m.max() == pytest.approx(1.0)
    np.testing.assert_allclose(m, scipy_importance_map(patch), rtol=1e-5, atol=1e-7)
    # centre voxels count most: a corner of a 128-voxel axis weighs exp(-0.5 × 4²) of the centre
    np.testing.assert_allclose(gaussian_1d(129)[[0, 64]], [np.exp(-0.5 * (64 / (129 / 8)) ** 2), 1.0], rtol=1e-9)


class RecordsTiles(torch.nn.Module):
    """Input channels are the voxel coordinates (z, y, x); records where each tile starts."""

    def __init__(self):
        super().__init__()
        self.origins = []

    def forward(self, x):
        for tile in x:
            self.origins.append(tuple(int(v) for v in tile[:, 0, 0, 0]))
        return x[:, :1] * 0


@pytest.mark.parametrize("shape,patch,step", [((23, 31, 29), (8, 12, 10), 0.5), ((40, 17, 65), (16, 16, 16), 0.33),
                                              ((12, 12, 12), (12, 12, 12), 0.5), ((57, 20, 31), (10, 7, 30), 0.9)])
def test_tiles_are_placed_where_nnunet_places_them(shape, patch, step):
    coords = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")).astype(np.float32)
    net = RecordsTiles()
    predict_logits(net, coords, patch, step_size=step, batch_size=3)
    expected = list(itertools.product(*[nnunet_steps(s, p, step) for s, p in zip(shape, patch)]))
    assert net.origins == expected  # every tile once, in z-major order, at nnU-Net's starts


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mirror_axes"):
        predict_logits(Channels(), np.zeros((1, 4, 4, 4), np.float32), (4, 4, 4), mirror_axes=(3,))
    with pytest.raises(ValueError, match=r"\(C, z, y, x\)"):
        predict_logits(Channels(), np.zeros((4, 4, 4), np.float32), (4, 4, 4))
    with pytest.raises(ValueError, match="step_size"):
        tile_starts(10, 4, 0.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    net = SymmetricConv(3).eval()
    data = np.random.default_rng(6).standard_normal((2, 20, 40, 36)).astype(np.float32)
    cpu = predict_logits(net, data, (16, 16, 16), mirror_axes=(0, 1, 2))
    gpu = predict_logits(net.cuda(), data, (16, 16, 16), mirror_axes=(0, 1, 2), device="cuda")
    np.testing.assert_allclose(gpu, cpu, rtol=1e-2, atol=1e-2)  # autocast float16 on the GPU
