"""Training data: lazy patch sampling, foreground oversampling, 2D slices, cascade channels, splits.

Also home of the tiny preprocessed phantoms and hand-made plans the other training tests import.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from autoliver.errors import UserError
from autoliver.planning.plan import ChannelNormalization, Configuration, Denoise, NetworkSpec, Plan, Resampling
from autoliver.preprocessing import storage
from autoliver.training.data import PatchBatches, batch_loader, read_region
from autoliver.training.recipes import Augmentation
from autoliver.training.splits import SPLITS_FILE, fold_cases, make_splits

LABELS = {"background": 0, "liver": 1, "tumour": 2}
DATASET = "Dataset001_Phantom"
# as preprocessing records it: the phantoms' units read as CT normalised at 50 HU per unit
CT_NORMALIZATION = {"scheme": "ct", "lower": -100.0, "upper": 250.0, "mean": 100.0, "std": 50.0}


# ---- phantoms and plans shared by the training tests -------------------------------------------
def phantom(shape=(24, 32, 32), channels=1, seed=0):
    """(C, z, y, x) image, (1, z, y, x) labels: a liver ellipsoid (1) holding a tumour ball (2),
    intensities liver 1, tumour −0.5, background −1, noise σ 0.3; properties with class locations."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
    centre = np.array(shape) / 2 + rng.uniform(-2, 2, 3)
    radii = np.array(shape) * 0.32
    liver = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1
    tumour = sum((g - c) ** 2 for g, c in zip(grid, centre + rng.uniform(-1.5, 1.5, 3))) <= (min(shape) * 0.12) ** 2
    seg = liver.astype(np.int8) + (tumour & liver).astype(np.int8)
    seg[:, :1] = -1  # a rim outside the body crop, as preprocessing marks it
    base = np.select([seg == 1, seg == 2], [1.0, -0.5], -1.0)
    image = np.stack([base * (1 + 0.2 * c) for c in range(channels)]) + rng.normal(0, 0.3, (channels, *shape))
    locations = {str(k): np.argwhere(seg == k)[:: max(1, int((seg == k).sum()) // 300)].tolist() for k in (1, 2)}
    return image.astype(np.float32), seg[None], {"class_locations": locations}


def write_phantoms(folder, n=4, shape=(24, 32, 32), channels=1):
    cases = []
    for i in range(n):
        image, seg, props = phantom(shape, channels, seed=i)
        case = f"case_{i:03d}"
        storage.write_case(folder, case, image, seg, {"case": case, "normalization": [CT_NORMALIZATION] * channels,
                                                      **props})
        cases.append(case)
    return cases


def make_configuration(name, patch, *, features=(4, 8), arch="unet", in_channels=1, batch_size=2, downsampling="conv",
                       previous_stage="", phases=1, data_identifier="data_3d", deep_supervision=True):
    dims, n = len(patch), len(features)
    kernels = tuple([(3,) * dims] * n)
    strides = tuple([(1,) * dims] + [(2,) * dims] * (n - 1))
    spec = NetworkSpec(arch, dims, in_channels, 3, tuple(features), kernels, strides, downsampling=downsampling,
                       deep_supervision=deep_supervision)
    return Configuration(name, data_identifier, (1.0, 1.0, 1.0), (24, 32, 32), tuple(patch), batch_size,
                         (ChannelNormalization("zscore"),) * max(1, phases), Resampling(), Denoise(), spec,
                         phases=phases, previous_stage=previous_stage)


def make_plan(*configurations, num_phases=1):
    return Plan(1, DATASET, "cpu", "CT", ("CT",), dict(LABELS), num_phases, "cpu", 2 ** 30,
                {c.name: c for c in configurations})


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread is faster


# ---- tests -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cases_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pre") / "data_3d"
    return folder, write_phantoms(folder, 3)


def test_read_region_pads_outside_and_matches_inside():
    a = np.arange(2 * 4 * 5 * 6, dtype=np.float32).reshape(2, 4, 5, 6)
    r = read_region(a, (-1, 2, 3), (3, 4, 4), fill=-7)
    assert r.shape == (2, 3, 4, 4)
    np.testing.assert_array_equal(r[:, 1:, :3, :3], a[:, 0:2, 2:5, 3:6])
    assert (r[:, 0] == -7).all() and (r[:, :, 3:] == -7).all() and (r[:, :, :, 3:] == -7).all()
    assert (read_region(a, (10, 0, 0), (2, 2, 2), fill=5) == 5).all()


def test_batches_are_a_function_of_the_index(cases_dir):
    folder, cases = cases_dir
    ds = PatchBatches(folder, cases, (16, 16, 16), 3, 3, augmentation=Augmentation(p_rotation=1, p_scale=1), seed=7)
    a, b, c = ds[5], ds[5], ds[6]
    assert a["data"].shape == (3, 1, 16, 16, 16) and a["target"].shape == (3, 1, 16, 16, 16)
    assert a["data"].dtype == torch.float32 and a["target"].dtype == torch.int8
    assert torch.equal(a["data"], b["data"]) and torch.equal(a["target"], b["target"])
    assert not torch.equal(a["data"], c["data"])
    # another rank draws other batches; the global generators are left as they were
    state = np.random.get_state()[1].copy()
    other = PatchBatches(folder, cases, (16, 16, 16), 3, 3, augmentation=None, seed=7, rank=1)[5]
    assert not torch.equal(other["data"], a["data"])
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    assert set(np.unique(a["target"].numpy())) <= {0, 1, 2}  # -1 (outside the crop) became background


def test_worker_processes_give_the_same_batches_in_order(cases_dir):
    folder, cases = cases_dir
    ds = PatchBatches(folder, cases, (8, 16, 16), 2, 3, augmentation=Augmentation(), seed=3)
    got = list(batch_loader(ds, 4, 9, num_workers=2))
    assert [b["index"] for b in got] == [4, 5, 6, 7, 8]
    for b in got:
        assert torch.equal(b["data"], ds[b["index"]]["data"])


def test_foreground_oversampling_rate_and_tumour_share(cases_dir):
    folder, cases = cases_dir
    # patches small enough that a random one often misses the liver
    ds = PatchBatches(folder, cases, (4, 6, 6), 3, 3, augmentation=None, oversample_foreground=1 / 3, seed=1)
    forced = PatchBatches(folder, cases, (4, 6, 6), 3, 3, augmentation=None, oversample_foreground=1.0, seed=1)
    never = PatchBatches(folder, cases, (4, 6, 6), 3, 3, augmentation=None, oversample_foreground=0.0, seed=1)

    def share(d, label_min):
        t = torch.cat([d[i]["target"] for i in range(60)]).flatten(1)
        return (t >= label_min).any(1).float().mean().item()

    assert share(forced, 1) == 1.0
    base, mixed = share(never, 1), share(ds, 1)
    # expected: 1/3 forced + 2/3 × base
    assert abs(mixed - (1 / 3 + 2 / 3 * base)) < 0.12, (base, mixed)
    # forced samples pick liver or tumour uniformly: about half contain tumour
    assert 0.35 < share(forced, 2) < 0.8


def test_2d_configurations_sample_single_slices(cases_dir):
    folder, cases = cases_dir
    ds = PatchBatches(folder, cases, (32, 32), 4, 3, augmentation=Augmentation(p_rotation=1), seed=0,
                      oversample_foreground=1.0)
    b = ds[0]
    assert b["data"].shape == (4, 1, 32, 32) and b["target"].shape == (4, 1, 32, 32)
    assert (b["target"] > 0).flatten(1).any(1).all()
    # without augmentation a 2D sample is exactly one stored slice
    plain = PatchBatches(folder, cases[:1], (32, 32), 1, 3, augmentation=None, seed=0)[0]
    image = storage.load_case(folder, cases[0])[0][0]
    assert any(np.array_equal(plain["data"][0, 0].numpy(), image[z]) for z in range(image.shape[0]))


def _slice_numbered(folder, shape=(6, 16, 16)):
    """One case whose channel c at slice z holds 100·c + z everywhere (2 channels)."""
    z = np.arange(shape[0], dtype=np.float32)[:, None, None] * np.ones(shape, np.float32)
    seg = np.zeros((1, *shape), np.int8)
    seg[0, :, 4:12, 4:12] = 1
    locations = {"1": np.argwhere(seg[0] == 1)[::7].tolist()}
    storage.write_case(folder, "case_000", np.stack([z, 100 + z]), seg, {"case": "case_000", "class_locations": locations})
    return ["case_000"]


def test_2d_context_slices_come_channel_major_with_the_ends_repeated(tmp_path):
    cases = _slice_numbered(tmp_path)
    ds = PatchBatches(tmp_path, cases, (16, 16), 8, 2, augmentation=None, seed=0, context_slices=2)
    seen = set()
    for i in range(6):
        data = ds[i]["data"].numpy()
        assert data.shape == (8, 10, 16, 16)
        for sample in data:
            z = int(sample[2, 0, 0])  # channel 0, the slice itself
            seen.add(z)
            expected = [100 * c + min(max(z + d, 0), 5) for c in (0, 1) for d in (-2, -1, 0, 1, 2)]
            assert sample[:, 8, 8].tolist() == expected
    assert {0, 5} <= seen  # both ends were drawn (and repeated, above)
    with pytest.raises(ValueError, match="2D patches"):
        PatchBatches(tmp_path, cases, (4, 16, 16), 2, 2, augmentation=None, context_slices=1)


def test_2d_context_slices_are_augmented_together(tmp_path):
    """Brightness drawn once per sample: channel 1 minus channel 0 is the same multiple of 100 on
    every neighbouring slice (per channel, as for modalities, it would differ)."""
    cases = _slice_numbered(tmp_path)
    aug = Augmentation(p_rotation=0, p_scale=0, p_elastic=0, p_noise=0, p_blur=0, p_brightness=1, p_contrast=0,
                       p_low_resolution=0, p_gamma=0, p_gamma_inverted=0, mirror=False)
    data = PatchBatches(tmp_path, cases, (16, 16), 8, 2, augmentation=aug, seed=3, context_slices=2)[0]["data"].numpy()
    step = data[:, 5:, 8, 8] - data[:, :5, 8, 8]  # (B, 5 slices)
    assert np.allclose(step, step[:, :1], rtol=1e-5) and not np.allclose(step, 100.0)


def test_cascade_adds_one_hot_previous_stage_channels(cases_dir, tmp_path):
    import blosc2

    folder, cases = cases_dir
    prev_dir = tmp_path / "prev"
    prev_dir.mkdir()
    for c in cases:  # the "previous stage" predicted the reference labels
        seg = np.maximum(storage.load_case(folder, c)[1], 0)
        blosc2.asarray(seg, urlpath=str(prev_dir / f"{c}.b2nd"), mode="w")
    ds = PatchBatches(folder, cases, (8, 16, 16), 2, 3, augmentation=Augmentation(p_cascade_morphology=0.0),
                      previous_stage=prev_dir, seed=2, oversample_foreground=1.0)
    b = ds[0]
    assert b["data"].shape == (2, 3, 8, 16, 16)
    onehot, target = b["data"][:, 1:], b["target"][:, 0].long()
    for k in (1, 2):
        assert torch.equal(onehot[:, k - 1].bool(), target == k)
    with pytest.raises(UserError, match="previous stage"):
        PatchBatches(folder, cases, (8, 16, 16), 2, 3, augmentation=None, previous_stage=tmp_path / "missing")


def test_anisotropic_patches_rotate_in_plane_only(cases_dir):
    folder, cases = cases_dir
    ds = PatchBatches(folder, cases, (4, 16, 16), 1, 3, augmentation=Augmentation(p_rotation=1, p_scale=0), seed=0)
    assert ds.anisotropic
    np.random.seed(0)
    coords = ds._spatial_coords((0, 0, 0))
    # the z coordinate of every sample point is untouched by the rotation
    for z in range(4):
        np.testing.assert_allclose(coords[0][z], z, atol=1e-9)


def test_splits_are_seeded_saved_once_and_cover_every_case(tmp_path):
    cases = [f"c{i}" for i in range(12)]
    splits = make_splits(cases)
    assert splits == make_splits(list(reversed(cases)))
    assert len(splits) == 5
    assert sorted(c for s in splits for c in s["val"]) == sorted(cases)
    for s in splits:
        assert not set(s["train"]) & set(s["val"]) and len(s["train"]) + len(s["val"]) == 12
    train, val = fold_cases(tmp_path, cases, "2")
    saved = json.loads((tmp_path / SPLITS_FILE).read_text())
    assert saved == splits and val == splits[2]["val"]
    # once saved, the file is the truth (hand edits are kept)
    saved[0]["val"] = ["c0"]
    (tmp_path / SPLITS_FILE).write_text(json.dumps(saved))
    assert fold_cases(tmp_path, cases, 0)[1] == ["c0"]
    assert fold_cases(tmp_path, cases, "all") == (sorted(cases), sorted(cases))
    with pytest.raises(UserError, match="FOLD must be"):
        fold_cases(tmp_path, cases, "7")
    with pytest.raises(UserError, match="not preprocessed"):
        fold_cases(tmp_path, cases[:5], 0)


def test_every_augmentation_runs_and_keeps_labels_valid(cases_dir):
    folder, cases = cases_dir
    everything = Augmentation(p_rotation=1, p_scale=1, p_elastic=1, p_noise=1, p_blur=1, p_brightness=1, p_contrast=1,
                              p_low_resolution=1, p_gamma=1, p_gamma_inverted=1)
    for patch in ((8, 16, 16), (2, 16, 16), (16, 16)):  # 3D, anisotropic 3D (in-plane only), 2D
        ds = PatchBatches(folder, cases, patch, 2, 3, augmentation=everything, seed=4, oversample_foreground=1.0)
        plain = PatchBatches(folder, cases, patch, 2, 3, augmentation=None, seed=4, oversample_foreground=1.0)
        b, p = ds[0], plain[0]
        assert b["data"].shape == p["data"].shape and torch.isfinite(b["data"]).all()
        assert not torch.equal(b["data"], p["data"])
        assert set(np.unique(b["target"].numpy())) <= {0, 1, 2}
