"""Training speed on the CPU: seconds per iteration of small plans, and the data pipeline.

Side by side:
* one training step (forward, Dice + CE with deep supervision, backward, SGD) of autoliver's
  U-Net and of nnU-Net's ``PlainConvUNet`` (dynamic_network_architectures) built with the same
  stages, kernels, strides and widths;
* one augmented batch from autoliver's sampler (reads only the transformed patch's bounding box
  from the Blosc2 file) and from nnU-Net's way (the enlarged patch that covers any rotation and
  scaling is cut from the whole case in memory, then batchgenerators' SpatialTransform), with the
  same augmentation probabilities.

    python -m pytest benchmarks/bench_training.py --benchmark-only
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from autoliver.planning.plan import NetworkSpec  # noqa: E402
from autoliver.preprocessing import storage  # noqa: E402
from autoliver.training.data import PatchBatches, read_region  # noqa: E402
from autoliver.training.losses import SegmentationLoss  # noqa: E402
from autoliver.training.networks import build_network  # noqa: E402
from autoliver.training.recipes import DEFAULT  # noqa: E402
from autoliver.training.trainer import make_optimizer, train_step  # noqa: E402

# name: patch, features per stage, strides, batch size
PLANS = {
    "3d_32x64x64_f16-128_b2": ((32, 64, 64), (16, 32, 64, 128), [(1, 1, 1)] + [(2, 2, 2)] * 3, 2),
    "3d_48x96x96_f16-256_b2": ((48, 96, 96), (16, 32, 64, 128, 256), [(1, 1, 1)] + [(2, 2, 2)] * 3 + [(1, 2, 2)], 2),
    "2d_128x128_f16-256_b8": ((128, 128), (16, 32, 64, 128, 256), [(1, 1)] + [(2, 2)] * 4, 8),
}
CASE_SHAPE = (96, 192, 192)


def spec_of(plan) -> NetworkSpec:
    patch, feats, strides, _ = PLANS[plan]
    dims = len(patch)
    return NetworkSpec("unet", dims, 1, 3, feats, tuple([(3,) * dims] * len(feats)), tuple(strides))


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    from test_training_data import phantom

    folder = tmp_path_factory.mktemp("bench") / "data"
    names = []
    for i in range(3):
        image, seg, props = phantom(CASE_SHAPE, seed=i)
        storage.write_case(folder, f"c{i}", image, seg, {"case": f"c{i}", **props})
        names.append(f"c{i}")
    return folder, names


@pytest.mark.parametrize("plan", list(PLANS))
def test_train_step_autoliver(benchmark, plan):
    patch, _, _, bs = PLANS[plan]
    torch.manual_seed(0)
    net = build_network(spec_of(plan)).train()
    _step(benchmark, net, patch, bs)


@pytest.mark.parametrize("plan", list(PLANS))
def test_train_step_nnunet_plainconvunet(benchmark, plan):
    arch = pytest.importorskip("dynamic_network_architectures.architectures.unet")
    patch, feats, strides, bs = PLANS[plan]
    dims = len(patch)
    torch.manual_seed(0)
    net = arch.PlainConvUNet(
        1, len(feats), list(feats), torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d, [(3,) * dims] * len(feats),
        strides, [2] * len(feats), 3, [2] * (len(feats) - 1), conv_bias=True,
        norm_op=torch.nn.InstanceNorm3d if dims == 3 else torch.nn.InstanceNorm2d,
        norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True},
        deep_supervision=True).train()
    _step(benchmark, net, patch, bs)


def _step(benchmark, net, patch, bs):
    loss_fn = SegmentationLoss(DEFAULT.loss)
    opt = make_optimizer(DEFAULT, net.parameters())
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    x = torch.randn(bs, 1, *patch)
    y = (torch.rand(bs, 1, *patch) * 3).to(torch.int8)
    benchmark.pedantic(lambda: train_step(net, loss_fn, opt, scaler, x, y, 12.0), rounds=3, iterations=1,
                       warmup_rounds=1)


@pytest.mark.parametrize("plan", list(PLANS))
def test_augmented_batch_autoliver(benchmark, plan, cases):
    folder, names = cases
    patch, _, _, bs = PLANS[plan]
    ds = PatchBatches(folder, names, patch, bs, 3, augmentation=DEFAULT.augmentation, seed=0)
    counter = itertools.count()
    ds[next(counter)]
    benchmark.pedantic(lambda: ds[next(counter)], rounds=20, iterations=1)


@pytest.mark.parametrize("plan", list(PLANS))
def test_augmented_batch_nnunet_style(benchmark, plan, cases):
    """nnU-Net v2's pipeline: enlarged patch (get_patch_size) from the case in memory, then
    SpatialTransform (centre crop to the patch) and the same intensity transforms."""
    from batchgenerators.augmentations.utils import rotate_coords_2d, rotate_coords_3d
    from batchgenerators.transforms.abstract_transforms import Compose
    from batchgenerators.transforms.spatial_transforms import SpatialTransform

    from autoliver.training.data import _intensity_transforms

    folder, names = cases
    patch, _, _, bs = PLANS[plan]
    a = DEFAULT.augmentation
    loaded = [storage.load_case(folder, n)[:2] for n in names]  # nnU-Net keeps cases in memory
    dims = len(patch)
    angle = np.deg2rad(a.rotation_3d_deg if dims == 3 else a.rotation_2d_deg)
    enlarged = np.array(patch, dtype=float)
    for rot in ([(angle, 0, 0), (0, angle, 0), (0, 0, angle)] if dims == 3 else [(angle,)]):
        coords = np.array(patch, dtype=float)
        r = rotate_coords_3d(coords, *rot) if dims == 3 else rotate_coords_2d(coords, rot[0])
        enlarged = np.maximum(enlarged, np.abs(r))
    enlarged = np.ceil(enlarged / a.scale_range[0]).astype(int)
    rangle = (-angle, angle)
    spatial = SpatialTransform(patch, patch_center_dist_from_border=None, do_elastic_deform=False, do_rotation=True,
                               angle_x=rangle, angle_y=rangle if dims == 3 else (0, 0),
                               angle_z=rangle if dims == 3 else (0, 0), p_rot_per_axis=1, do_scale=True,
                               scale=a.scale_range, border_mode_data="constant", border_cval_data=0, order_data=3,
                               border_mode_seg="constant", border_cval_seg=0, order_seg=0, random_crop=False,
                               p_el_per_sample=0, p_scale_per_sample=a.p_scale, p_rot_per_sample=a.p_rotation)
    pipeline = Compose([spatial, *_intensity_transforms(a, dims, False).transforms])
    rng = np.random.default_rng(0)

    def batch():
        data, segs = [], []
        for _ in range(bs):
            image, seg = loaded[int(rng.integers(len(loaded)))]
            shape = image.shape[1:]
            if dims == 2:
                z = int(rng.integers(shape[0]))
                image, seg = image[:, z:z + 1], seg[:, z:z + 1]
                size = (1, *enlarged)
            else:
                size = tuple(enlarged)
            start = [int(rng.integers(-s // 4, max(1, d - s // 2))) for d, s in zip(image.shape[1:], size)]
            d, s = read_region(image, start, size), read_region(seg, start, size)
            data.append(d[:, 0] if dims == 2 else d)
            segs.append(s[:, 0] if dims == 2 else s)
        return pipeline(data=np.stack(data), seg=np.stack(segs).astype(np.float32))

    batch()
    benchmark.pedantic(batch, rounds=20, iterations=1)
