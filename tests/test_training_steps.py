"""Every registered network × recipe trains on a tiny phantom; losses behave as documented."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autoliver.errors import UserError
from autoliver.training.data import PatchBatches
from autoliver.training.losses import (SegmentationLoss, blob_dice, blobs, deep_supervision_weights, dice_counts,
                                       predicted_classes, soft_dice, targets)
from autoliver.training.networks import NETWORKS, build_network
from autoliver.training.recipes import RECIPES, Recipe, get_recipe, recipe_from_dict, recipe_to_dict
from autoliver.training.trainer import learning_rate, make_optimizer, train_step
from test_training_data import make_configuration, write_phantoms


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread is faster


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pre") / "data_3d"
    return folder, write_phantoms(folder, 2, shape=(16, 24, 24), channels=2)


def setup_run(arch, recipe: Recipe, phantom_dir, patch=(8, 16, 16), downsampling="conv"):
    folder, cases = phantom_dir
    torch.manual_seed(0)
    config = make_configuration("x", patch, arch=arch, in_channels=2, downsampling=downsampling)
    net = build_network(config.network, region=recipe.region).train()
    data = PatchBatches(folder, cases, patch, 2, 3, augmentation=recipe.augmentation,
                        oversample_foreground=recipe.oversample_foreground, seed=0, liver_label=1, tumour_label=2)
    parts = (net, SegmentationLoss(recipe.loss, recipe.region), make_optimizer(recipe, net.parameters()),
             torch.amp.GradScaler("cuda", enabled=False))
    return parts, data


@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("arch", sorted(NETWORKS))
def test_every_network_and_recipe_trains_two_iterations(arch, recipe, phantom_dir):
    r = get_recipe(recipe)
    (net, loss_fn, opt, scaler), data = setup_run(arch, r, phantom_dir)
    before = [p.detach().clone() for p in net.parameters()]
    for i in range(2):
        b = data[i]
        loss, stepped = train_step(net, loss_fn, opt, scaler, b["data"], b["target"], r.grad_clip_norm)
        assert torch.isfinite(loss) and loss > 0 and stepped
    assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters()))


@pytest.mark.parametrize("arch,recipe,downsampling", [
    *[(a, "default", "conv") for a in sorted(NETWORKS)],
    *[("unet", r, "conv") for r in sorted(RECIPES) if r != "default"],
    ("unet", "default", "mixed_learned"), ("unet", "default", "max"),
])
def test_loss_decreases_on_a_fixed_batch(arch, recipe, downsampling, phantom_dir):
    r = dataclasses.replace(get_recipe(recipe), oversample_foreground=1.0)
    (net, loss_fn, opt, scaler), data = setup_run(arch, r, phantom_dir, downsampling=downsampling)
    if r.optimizer == "adam":  # AdamW at its recipe rate needs more than 30 steps to show
        for g in opt.param_groups:
            g["lr"] = 3e-3
    b = data[0]
    losses = [train_step(net, loss_fn, opt, scaler, b["data"], b["target"], r.grad_clip_norm)[0].item()
              for _ in range(30)]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


def test_deep_supervision_weights():
    assert deep_supervision_weights(1) == [1.0]
    w = deep_supervision_weights(4)
    assert w[-1] == 0 and abs(sum(w) - 1) < 1e-12
    assert w[0] == pytest.approx(2 * w[1]) and w[1] == pytest.approx(2 * w[2])


def test_loss_terms_on_perfect_and_wrong_predictions():
    seg = torch.zeros(2, 1, 4, 8, 8, dtype=torch.int8)
    seg[:, :, 1:3, 2:6, 2:6] = 1
    seg[:, :, 2, 3:5, 3:5] = 2
    onehot = targets(seg, 3, region=False)
    good, bad = onehot * 40 - 20, (1 - onehot) * 40 - 20
    for terms in ({"dice": 1}, {"ce": 1}, {"bce": 1}, {"focal_tversky": 1}, {"focal": 1}):
        lf = SegmentationLoss(terms)
        assert lf(good, seg).item() < 1e-3 and lf(bad, seg).item() > 0.5, terms
    regions = targets(seg, 2, region=True)
    assert torch.equal(regions[:, 0].bool(), seg[:, 0] >= 1) and torch.equal(regions[:, 1].bool(), seg[:, 0] == 2)
    lf = SegmentationLoss({"dice": 1, "ce": 1}, region=True)
    assert lf(regions * 40 - 20, seg).item() < 1e-3
    assert torch.equal(predicted_classes(regions * 40 - 20, region=True), seg[:, 0].long())
    # with deep supervision the target is reduced to each output's size
    lf = SegmentationLoss({"dice": 1, "ce": 1})
    low = F.interpolate(good, scale_factor=0.5, mode="nearest")
    assert lf([good, low, low[:, :, ::2]], seg).item() < 0.05


def test_focal_tversky_weighs_misses_more_than_false_alarms():
    seg = torch.zeros(1, 1, 1, 10, 10, dtype=torch.int8)
    seg[..., :5, :] = 1
    onehot = targets(seg, 2, region=False)
    half = onehot.clone()
    half[:, 1, :, :2, :] = 0  # predicts only 3 of 5 rows: misses
    half[:, 0] = 1 - half[:, 1]
    extra = onehot.clone()
    extra[:, 1, :, 5:7, :] = 1  # 2 extra rows: false alarms
    extra[:, 0] = 1 - extra[:, 1]
    lf = SegmentationLoss({"focal_tversky": 1})
    assert lf(half * 40 - 20, seg) > lf(extra * 40 - 20, seg)


def test_dice_counts():
    pred = torch.tensor([[[0, 1, 1, 2]]])
    seg = torch.tensor([[[[0, 1, 2, 2]]]])
    counts = dice_counts(pred, seg, 3)
    assert counts.tolist() == [[1, 1, 0], [1, 0, 1]]


def test_recipes_round_trip_as_json_and_validate():
    for r in RECIPES.values():
        assert recipe_from_dict(recipe_to_dict(r)) == r
    with pytest.raises(UserError, match="Did you mean 'default'"):
        get_recipe("defualt")
    with pytest.raises(UserError, match="focal_tversky"):
        SegmentationLoss({"focal_tverski": 1})
    r = get_recipe("default")
    assert learning_rate(r, 0, 10) == r.learning_rate and learning_rate(r, 5, 10) < r.learning_rate / 1.8


def test_a_step_with_non_finite_gradients_is_skipped():
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 3, 1)
    opt = make_optimizer(get_recipe("default"), net.parameters())
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    x, y = torch.randn(1, 1, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2, dtype=torch.int8)
    before = [p.detach().clone() for p in net.parameters()]
    loss, stepped = train_step(net, lambda out, target: out.sum() * float("nan"), opt, scaler, x, y, 12.0)
    assert not stepped and torch.isnan(loss)
    assert all(torch.equal(a, p) for a, p in zip(before, net.parameters()))
    loss, stepped = train_step(net, lambda out, target: out.square().mean(), opt, scaler, x, y, 12.0)
    assert stepped and not all(torch.equal(a, p) for a, p in zip(before, net.parameters()))


def test_precision_choice():
    from autoliver.training.trainer import autocast_dtype

    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "auto") is None and autocast_dtype(cpu, "fp32") is None
    assert autocast_dtype(cpu, "bf16") == torch.bfloat16
    with pytest.raises(UserError, match="fp16 needs --device cuda"):
        autocast_dtype(cpu, "fp16")


def test_blob_dice_weighs_each_lesion_alike():
    """Two lesions in one batch, 64 and 1 voxel: missing the small one costs half the blob loss,
    while batch Dice barely notices; false alarms off the lesions cost too."""
    seg = torch.zeros(2, 1, 1, 12, 12, dtype=torch.int8)
    seg[0, :, :, 2:10, 2:10] = 1  # liver
    seg[0, 0, 0, 1:9, 1:9] = 2  # large lesion, 64 voxels
    seg[1, 0, 0, 5, 5] = 2  # small lesion, 1 voxel
    onehot = targets(seg, 3, region=False)
    ids = blobs(onehot, slice(2, None))
    assert ids.max() == 2 and (ids == 1).sum() == 64 and (ids == 2).sum() == 1
    perfect = onehot.clone()
    miss = onehot.clone()
    miss[1, 2, 0, 5, 5], miss[1, 0, 0, 5, 5] = 0, 1  # the small lesion called background
    assert blob_dice(perfect, ids, slice(2, None)).item() < 1e-4
    assert blob_dice(miss, ids, slice(2, None)).item() == pytest.approx(0.5, abs=1e-3)
    assert soft_dice(miss, onehot, slice(2, None)).item() < 0.01  # batch Dice: 1 voxel of 65
    alarm = onehot.clone()
    alarm[0, 2, 0, 11, 11] = 1  # a false voxel beside the large lesion: Dice 2·64 / (64 + 1 + 64), the other 1
    assert blob_dice(alarm, ids, slice(2, None)).item() == pytest.approx((1 - 128 / 129) / 2, abs=1e-4)
    # the loss term: perfect logits ~0, every output of deep supervision works, gradients reach the small lesion
    lf = SegmentationLoss({"blob_dice": 1})
    assert lf(perfect * 40 - 20, seg).item() < 1e-3
    logits = torch.zeros(2, 3, 1, 12, 12, requires_grad=True)
    low = F.interpolate(logits, scale_factor=(1, 0.5, 0.5), mode="nearest")
    lf([logits, low, low], seg).backward()  # the 1-voxel blob vanishes at half size: left out there
    assert logits.grad[1, 2, 0, 5, 5] < 0  # raising the tumour logit there lowers the loss
    assert torch.isfinite(logits.grad).all()
    # a batch without blobs: zero, graph intact; 2D patches and 3D patches both
    empty = torch.zeros(2, 1, 6, 6, dtype=torch.int8)
    z = torch.zeros(2, 3, 6, 6, requires_grad=True)
    out = lf(z, empty)
    out.backward()
    assert out.item() == 0 and z.grad is not None
    seg2d = seg[:, :, 0]
    assert blobs(targets(seg2d, 3, region=False), slice(1, None)).max() == 3  # liver, two lesions
    regions = targets(seg, 2, region=True)
    assert SegmentationLoss({"blob_dice": 1}, region=True)(regions * 40 - 20, seg).item() < 1e-3
