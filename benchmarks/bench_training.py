"""Training speed: seconds per iteration of small CPU plans and of the LiTS 3d_fullres plan on a GPU,
and the data pipeline.

Side by side:
* one training step (forward, Dice + CE with deep supervision, backward, SGD) of autoliver's
  U-Net and of nnU-Net's ``PlainConvUNet`` (dynamic_network_architectures) built with the same
  stages, kernels, strides and widths;
* one augmented batch from autoliver's sampler (reads only the transformed patch's bounding box
  from the Blosc2 file) and from nnU-Net's way (the enlarged patch that covers any rotation and
  scaling is cut from the whole case in memory, then batchgenerators' SpatialTransform), with the
  same augmentation probabilities;
* on a CUDA machine: one mixed-precision training step of the ``3d_fullres`` plan the default
  preset makes for LiTS's geometry (``../shared/data/lits_geometry.json``), planned for 8 GiB (the
  GPU nnU-Net plans for) and for the free memory of the GPU at hand, autoliver's U-Net beside
  nnU-Net's ``PlainConvUNet``; iterations per second and peak GPU memory against the planner's
  estimate.

    python -m pytest benchmarks/bench_training.py --benchmark-only -s
"""
from __future__ import annotations

import functools
import gc
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _gpu import cuda, device_name  # noqa: E402
from bench_planning import lits_fingerprint  # noqa: E402

from autoliver.planning.budget import Budget, detect_budget  # noqa: E402
from autoliver.planning.plan import NetworkSpec  # noqa: E402
from autoliver.planning.planner import plan_experiment  # noqa: E402
from autoliver.planning.presets import load_preset  # noqa: E402
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
    torch.manual_seed(0)
    net = plain_conv_unet(spec_of(plan)).train()
    patch, _, _, bs = PLANS[plan]
    _step(benchmark, net, patch, bs)


def plain_conv_unet(spec: NetworkSpec):
    """nnU-Net's PlainConvUNet with the stages, kernels, strides and widths of ``spec``."""
    arch = pytest.importorskip("dynamic_network_architectures.architectures.unet")
    n, three_d = len(spec.features_per_stage), spec.dims == 3
    return arch.PlainConvUNet(
        spec.in_channels, n, list(spec.features_per_stage), torch.nn.Conv3d if three_d else torch.nn.Conv2d,
        [list(k) for k in spec.kernel_sizes], [list(s) for s in spec.strides], [spec.convs_per_stage] * n,
        spec.num_classes, [spec.convs_per_stage] * (n - 1), conv_bias=True,
        norm_op=torch.nn.InstanceNorm3d if three_d else torch.nn.InstanceNorm2d,
        norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True},
        deep_supervision=True)


def _step(benchmark, net, patch, bs, device="cpu", amp_dtype=None, rounds=3):
    loss_fn = SegmentationLoss(DEFAULT.loss)
    opt = make_optimizer(DEFAULT, net.parameters())
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    x = torch.randn(bs, net_in_channels(net), *patch, device=device)
    y = (torch.rand(bs, 1, *patch, device=device) * 3).to(torch.int8)
    # train_step returns the loss on the CPU, which waits for the GPU: the host clock times the step
    benchmark.pedantic(lambda: train_step(net, loss_fn, opt, scaler, x, y, 12.0, amp_dtype), rounds=rounds,
                       iterations=1, warmup_rounds=1 if device == "cpu" else 3)


def net_in_channels(net) -> int:
    return next(m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))).in_channels


GPU_BUDGETS_GIB = {"8 GiB": 8.0, "free GPU memory": None}


@functools.lru_cache(maxsize=None)
def _lits_gpu_configuration(budget: str):
    """The 3d_fullres configuration for LiTS; planned once per budget, so both networks get the same
    plan (the free memory is read before anything is allocated)."""
    gib = GPU_BUDGETS_GIB[budget]
    if gib is None:
        gc.collect()
        torch.cuda.empty_cache()
    plan = plan_experiment(lits_fingerprint(), load_preset("default"),
                           Budget("cuda", int(gib * 2**30)) if gib else detect_budget())
    return plan.configurations["3d_fullres"]


@pytest.mark.parametrize("impl", ["autoliver", "nnU-Net PlainConvUNet"])
@pytest.mark.parametrize("budget", list(GPU_BUDGETS_GIB))
def test_lits_3d_fullres_step_cuda(benchmark, budget, impl):
    cuda()
    c = _lits_gpu_configuration(budget)
    torch.manual_seed(0)
    net = (build_network(c.network) if impl == "autoliver" else plain_conv_unet(c.network)).cuda().train()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    _step(benchmark, net, c.patch_size, c.batch_size, "cuda", torch.bfloat16, rounds=20)
    peak = torch.cuda.max_memory_allocated()
    median = benchmark.stats.stats.median if benchmark.stats is not None else float("nan")
    print(f"\n{impl}, LiTS 3d_fullres planned for {budget} on {device_name()}: patch {c.patch_size} batch "
          f"{c.batch_size}, features {c.network.features_per_stage}: {median:.3f} s per step = {1 / median:.2f} it/s, "
          f"peak GPU memory {peak / 2**30:.1f} GiB (planner's estimate {c.estimated_memory_bytes / 2**30:.1f} GiB)")


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
