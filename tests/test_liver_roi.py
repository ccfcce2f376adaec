"""The liver-ROI lesion cascade: the box, crop → predict → paste back, lesion-centred sampling,
the lesion stage's plan and recipe.

The cascade tests run the real predictor (preprocessing, sliding window, original grid) with
"oracle" networks: modules that compute their logits voxel by voxel from the input's Hounsfield
units, so what the pipeline does with geometry is checked exactly, whatever a trained network
would have learnt.
"""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from autoliver.fingerprint.fingerprint import IntensityStats, fingerprint_from_geometry
from autoliver.inference.predictor import PredictOptions, predict_case
from autoliver.planning.budget import Budget
from autoliver.planning.memory import CpuSpeed
from autoliver.planning.planner import plan_experiment
from autoliver.planning.presets import load_preset
from autoliver.preprocessing import cropping, storage
from autoliver.preprocessing.pipeline import lesion_locations, preprocess_case, revert_to_original
from autoliver.training.data import PatchBatches
from inference_helpers import LABELS, abdomen, cascade

def test_liver_box_keeps_big_components_and_grows_by_the_margin():
    mask = np.zeros((20, 40, 40), bool)
    mask[5:15, 10:30, 10:20] = True  # the liver
    mask[6:12, 12:28, 24:30] = True  # a lobe the first stage cut off: 576 voxels ≥ 10 % of 2000
    mask[0, 0, 39] = True  # a stray speck
    box = cropping.liver_box(mask, (2.0, 1.0, 1.0), margin_mm=4.0)
    assert box == ((3, 17), (6, 34), (6, 34))
    assert cropping.liver_box(np.zeros((4, 4, 4), bool), (1, 1, 1), 5.0) is None


@pytest.mark.parametrize("dims", [3, 2])
def test_cascade_keeps_a_lesion_at_the_liver_edge_and_pastes_back_exactly(dims):
    image, label = abdomen()
    result = predict_case(cascade(dims=dims), [image], PredictOptions(mirror=False))
    seg = result.segmentation
    assert seg.shape == image.array.shape
    # the first stage never labelled the lesion; its box (+ 15 mm) still holds it, and the lesion
    # stage's labels land on exactly the scan's voxels: same grid, every voxel in its place
    np.testing.assert_array_equal(seg == 2, label == 2)
    np.testing.assert_array_equal(seg == 1, label == 1)


def test_without_the_margin_the_edge_lesion_is_cut():
    """The test above can fail: a box without a margin loses the half of the lesion outside the liver."""
    image, label = abdomen()
    seg = predict_case(cascade(margin_mm=0.001), [image], PredictOptions(mirror=False)).segmentation
    kept = (seg == 2)[label == 2].mean()
    assert 0.3 < kept < 0.8


def test_crop_and_paste_back_on_another_grid_keeps_the_geometry():
    """Network grid 4.5 × 4 × 4 mm on a 3 mm scan: the pasted-back labels are on the scan's grid,
    background outside the box, and the lesion survives the two resamplings."""
    image, label = abdomen()
    model = cascade(spacing=(4.5, 4.0, 4.0), first_spacing=(6.0, 6.0, 6.0))
    seg = predict_case(model, [image], PredictOptions(mirror=False)).segmentation
    assert seg.shape == label.shape and seg.dtype == np.uint8
    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    assert dice(label > 0, seg > 0) > 0.85  # 0.89: blurred edges leave the oracle's HU band; a shifted paste-back < 0.5
    assert dice(label == 2, seg == 2) > 0.7  # an 18 mm lesion through a 4 mm grid and back (0.78)
    box = cropping.liver_box(label > 0, (3.0, 3.0, 3.0), 15.0)
    outside = np.ones(label.shape, bool)
    outside[tuple(slice(a, b) for a, b in box)] = False
    assert not seg[outside & (label == 0)].any()


def test_preprocessing_crops_to_the_reference_liver_and_reverts_exactly():
    image, label = abdomen()
    _, roi = cascade().stages[0].plan.configurations.values()
    plan = cascade().stages[0].plan
    data, seg, props = preprocess_case([image], plan, roi, seg=label, case="abdomen")
    box = cropping.liver_box(label > 0, (3.0, 3.0, 3.0), 15.0)
    assert [tuple(b) for b in props["crop_bbox_zyx"]] == list(box)
    assert data.shape[1:] == tuple(b - a for a, b in box) and props["liver_roi"] is True
    assert len(props["lesion_locations"]) == 1
    np.testing.assert_array_equal(revert_to_original(seg, props, roi, is_label=True), label)


def test_lesion_locations_list_every_lesion_once():
    seg = np.zeros((10, 30, 30), np.uint8)
    seg[2:8, 2:28, 2:28] = 1
    seg[4, 5, 5] = 2  # a one-voxel lesion
    seg[3:7, 10:20, 10:20] = 2  # a large one: 400 voxels, 50 kept
    lesions = lesion_locations(seg, LABELS, seed=0)
    assert sorted(len(v) for v in lesions) == [1, 50]
    assert all(seg[tuple(p)] == 2 for v in lesions for p in v)
    assert lesion_locations(seg, {"background": 0, "liver": 1}, seed=0) is None


def _lesion_cases(folder, n=6):
    """Cases of a big liver, half of them with one small (27-voxel) lesion far from the centre."""
    cases = []
    for i in range(n):
        image = np.random.default_rng(i).normal(0, 1, (1, 24, 48, 48)).astype(np.float32)
        seg = np.zeros((1, 24, 48, 48), np.int8)
        seg[0, 2:22, 4:44, 4:44] = 1
        if i % 2:
            seg[0, 3:6, 5:8, 5:8] = 2
        locations = {"1": np.argwhere(seg[0] == 1)[::50].tolist(), "2": np.argwhere(seg[0] == 2).tolist()}
        props = {"case": f"c{i}", "class_locations": locations,
                 "lesion_locations": lesion_locations(seg[0].astype(np.uint8), LABELS, seed=i)}
        storage.write_case(folder, f"c{i}", image, seg, props)
        cases.append(f"c{i}")
    return cases


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.5])
def test_lesion_centred_sampling_draws_lesions_at_the_configured_rate(tmp_path, rate):
    cases = _lesion_cases(tmp_path)
    data = PatchBatches(tmp_path, cases, (8, 8, 8), batch_size=4, num_classes=3, augmentation=None,
                        oversample_foreground=0.0, oversample_lesions=rate, seed=3)
    with_lesion = [bool((b["target"][k] == 2).any()) for i in range(200) for b in [data[i]] for k in range(4)]
    share = float(np.mean(with_lesion))
    # an 8³ patch at a random place holds the 3³ lesion of a lesion case about 1 % of the time
    assert rate <= share <= rate + 0.05, share
    again = PatchBatches(tmp_path, cases, (8, 8, 8), batch_size=4, num_classes=3, augmentation=None,
                         oversample_foreground=0.0, oversample_lesions=rate, seed=3)
    assert torch.equal(data[17]["data"], again[17]["data"])  # seeded: the same batches


def test_liver_roi_sampler_adds_the_liver_channel(tmp_path):
    from autoliver.training.recipes import Augmentation

    cases = _lesion_cases(tmp_path, n=2)
    plain = PatchBatches(tmp_path, cases, (8, 16, 16), batch_size=2, num_classes=3, augmentation=None,
                         liver_channel=True, seed=0)
    b = plain[0]
    assert b["data"].shape == (2, 2, 8, 16, 16)
    np.testing.assert_array_equal(b["data"][:, 1].numpy(), (b["target"][:, 0] > 0).float().numpy())
    perturbed = PatchBatches(tmp_path, cases, (8, 16, 16), batch_size=2, num_classes=3, liver_channel=True, seed=0,
                             augmentation=Augmentation(p_cascade_morphology=1.0, p_rotation=0, p_scale=0))
    differs = [not torch.equal(perturbed[i]["data"][:, 1] > 0, perturbed[i]["target"][:, 0] > 0) for i in range(10)]
    assert any(differs)


SPEED = CpuSpeed(conv_flops_per_s=1.5e11, elementwise_bytes_per_s=5e9)


def _fingerprint(box_fraction: float, diameters=(22.0, 8.0)):
    shapes = [(100, 300, 300)] * 6
    boxes = [((10, 10 + int(100 * box_fraction)), (50, 50 + int(300 * box_fraction)), (40, 40 + int(300 * box_fraction)))] * 6
    return fingerprint_from_geometry("Dataset009_Boxes", shapes, [(2.5, 0.8, 0.8)] * 6, liver_boxes_zyx=boxes,
                                     liver_voxels=[500_000] * 6, tumour_diameters_mm=[diameters] * 6,
                                     intensity=IntensityStats(98.0, 100.0, 41.0, -990.0, 1400.0, -15.0, 205.0, 1000))


def test_planner_plans_the_lesion_stage_from_the_liver_box():
    plan = plan_experiment(_fingerprint(0.5), load_preset("default"), Budget("cuda", 8 * 2**30))
    roi = plan.configurations["3d_liver_roi"]
    # the box (50 × 150 × 150 voxels at 2.5 × 0.8 × 0.8 mm) + 15 mm each side, at the target spacing
    assert roi.median_shape_zyx == (62, 188, 188)
    assert roi.spacing_zyx_mm == (2.5, 0.8, 0.8)
    cpu = plan_experiment(_fingerprint(0.5), load_preset("cpu"), Budget("cpu", 16 * 2**30, SPEED))
    # the cpu preset: at least 1.5 mm in-plane (liver_roi_min_spacing_mm), still finer than its 3d_fullres
    assert cpu.configurations["3d_liver_roi"].spacing_zyx_mm == (2.5, 1.5, 1.5)
    assert cpu.configurations["3d_liver_roi"].median_shape_zyx == (62, 100, 100)
    assert cpu.configurations["3d_fullres"].spacing_zyx_mm[1] > 1.5
    assert roi.previous_stage == "3d_fullres" and roi.roi_margin_mm == 15.0 and roi.network.in_channels == 2
    assert roi.recipe == "lesion" and "median diameter 15.0 mm" in roi.reasons["recipe"]
    assert plan.configurations["2d_liver_roi"].data_identifier == roi.data_identifier
    assert "box" in roi.reasons["configuration"]


def test_context_slices_widen_the_2d_input_only():
    """context_slices_2d / context_slices_2d_liver_roi k: each 2D configuration takes 2k + 1 slices
    per image channel (the lesion stage its liver mask besides), each from its own key, the plan says
    so; 3D configurations are unchanged."""
    base = replace(load_preset("cpu"), context_slices_2d=0, context_slices_2d_liver_roi=0)
    wide = replace(base, context_slices_2d=2, context_slices_2d_liver_roi=2)
    plain = plan_experiment(_fingerprint(0.5), base, Budget("cpu", 16 * 2**30, SPEED))
    plan = plan_experiment(_fingerprint(0.5), wide, Budget("cpu", 16 * 2**30, SPEED))
    two, roi = plan.configurations["2d"], plan.configurations["2d_liver_roi"]
    assert (two.context_slices, two.network.in_channels) == (2, 5)
    assert (roi.context_slices, roi.network.in_channels) == (2, 6)
    assert two.reasons["context_slices"].startswith("2: each slice with 2 neighbour(s) on each side")
    assert "12.5 mm" in two.reasons["context_slices"]  # 5 slices of 2.5 mm
    for name in ("3d_fullres", "3d_liver_roi"):
        assert plan.configurations[name] == plain.configurations[name]
    assert plain.configurations["2d"].context_slices == 0 and "context_slices" not in plain.configurations["2d"].reasons
    whole_only = plan_experiment(_fingerprint(0.5), replace(base, context_slices_2d=1), Budget("cpu", 16 * 2**30, SPEED))
    assert whole_only.configurations["2d"].context_slices == 1
    assert whole_only.configurations["2d_liver_roi"] == plain.configurations["2d_liver_roi"]
    assert "context_slices_2d)" in whole_only.configurations["2d"].reasons["context_slices"]


def test_the_cpu_preset_gives_both_2d_networks_context():
    plan = plan_experiment(_fingerprint(0.5), load_preset("cpu"), Budget("cpu", 16 * 2**30, SPEED))
    assert plan.configurations["2d"].context_slices == 2 and plan.configurations["2d"].network.in_channels == 5
    roi = plan.configurations["2d_liver_roi"]
    assert roi.context_slices == 2 and roi.network.in_channels == 6  # five slices and the slice's liver mask
    assert "context_slices_2d_liver_roi)" in roi.reasons["context_slices"]
    assert plan.configurations["3d_liver_roi"].network.in_channels == 2
    # nnU-Net's resampling (the smoothed lesion stage did worse in a paired run); the key turns it on
    assert not any(c.resampling.anti_aliasing or "anti_aliasing" in c.reasons["resampling"]
                   for c in plan.configurations.values())
    smooth = plan_experiment(_fingerprint(0.5), replace(load_preset("cpu"), anti_aliasing=True),
                             Budget("cpu", 16 * 2**30, SPEED))
    for name, c in smooth.configurations.items():
        assert c.resampling.anti_aliasing and "anti_aliasing" in c.reasons["resampling"], name


def test_planner_skips_the_lesion_stage_when_the_liver_fills_the_body():
    plan = plan_experiment(_fingerprint(0.9), load_preset("cpu"), Budget("cpu", 16 * 2**30, SPEED))
    assert "3d_liver_roi" not in plan.configurations
    assert plan.reasons["3d_liver_roi"].startswith("skipped: the liver box (+ 15 mm) holds")


def test_recipe_follows_the_tumour_sizes():
    big = plan_experiment(_fingerprint(0.5, diameters=(60.0, 45.0)), load_preset("default"), Budget("cuda", 8 * 2**30))
    assert big.configurations["3d_liver_roi"].recipe == ""  # large lesions: nnU-Net's recipe
    none = plan_experiment(_fingerprint(0.5, diameters=()), load_preset("default"), Budget("cuda", 8 * 2**30))
    assert none.configurations["3d_liver_roi"].reasons["recipe"] == "default: the dataset has no tumours"


def test_the_cascade_through_the_cli(autoliver_dirs, tmp_path):
    """plan (the stage proposed, with its recipe) → train both stages → predict with the plan's
    first stage and with another one → export; the segmentation is on the scan's grid."""
    from autoliver.cli import main
    from autoliver.io import read_image
    from autoliver.planning.plan import read_plan

    assert main(["make_synthetic", "-d", "Roi", "--cases", "4", "--seed", "2", "--shape", "32", "96", "96"]) == 0
    assert main(["plan_and_preprocess", "-d", "1", "--preset", "cpu", "-c", "3d_fullres", "2d", "2d_liver_roi"]) == 0
    plan = read_plan(autoliver_dirs["preprocessed"] / "Dataset001_Roi" / "plans.json")
    assert plan.configurations["2d_liver_roi"].recipe == "lesion"
    for configuration in ("3d_fullres", "2d", "2d_liver_roi"):
        assert main(["train", configuration, "all", "-d", "1", "--epochs", "1", "--iters", "2", "-np", "0",
                     "--no-validation"]) == 0
    results = autoliver_dirs["results"] / "Dataset001_Roi"
    state = torch.load(results / "2d_liver_roi" / "fold_all" / "checkpoint_final.pt", weights_only=False)
    assert state["recipe"]["name"] == "lesion"  # the plan's recipe, in the plain folder
    scan = autoliver_dirs["raw"] / "Dataset001_Roi" / "imagesTr" / "phantom_000_0000.nii.gz"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / scan.name).symlink_to(scan)
    for first, out in ((None, "out"), ("2d", "out_2d")):
        extra = ["--first-stage", first] if first else []
        assert main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / out), "-d", "1", "-c", "2d_liver_roi",
                     "--disable-tta", *extra]) == 0
        seg, image = read_image(tmp_path / out / "phantom_000.nii.gz"), read_image(scan)
        assert seg.array.shape == image.array.shape and seg.geometry.matches(image.geometry)
    assert main(["export", "-d", "1", "-c", "2d_liver_roi", "-o", str(tmp_path / "model.zip")]) == 0
    import zipfile

    names = zipfile.ZipFile(tmp_path / "model.zip").namelist()
    assert any(n.startswith("2d_liver_roi/") for n in names) and any(n.startswith("3d_fullres/") for n in names)


def test_context_slices_through_the_cli(autoliver_dirs, tmp_path):
    """A preset with 2.5D context: plan → train 2d (with its validation) and the 2D lesion stage →
    predict; the networks take 5 slices, the segmentation is on the scan's grid."""
    from autoliver.cli import main
    from autoliver.io import read_image
    from autoliver.planning.plan import read_plan

    preset = tmp_path / "context.json"
    from autoliver.planning.presets import preset_dir

    keys = json.loads((preset_dir() / "cpu.json").read_text())
    preset.write_text(json.dumps({**keys, "name": "cpu_context", "context_slices_2d": 2,
                                  "context_slices_2d_liver_roi": 2,
                                  "liver_roi_max_box_fraction": 1.0}))
    assert main(["make_synthetic", "-d", "Context", "--cases", "4", "--seed", "3", "--shape", "24", "80", "80"]) == 0
    assert main(["plan_and_preprocess", "-d", "1", "--preset", str(preset), "-c", "2d", "2d_liver_roi"]) == 0
    plan = read_plan(autoliver_dirs["preprocessed"] / "Dataset001_Context" / "plans.json")
    assert plan.configurations["2d"].network.in_channels == 5 and plan.configurations["2d_liver_roi"].context_slices == 2
    assert main(["train", "2d", "0", "-d", "1", "--epochs", "1", "--iters", "2", "-np", "0"]) == 0
    results = autoliver_dirs["results"] / "Dataset001_Context"
    assert json.loads((results / "2d" / "fold_0" / "validation" / "summary.json").read_text())["cases"]
    assert main(["train", "2d_liver_roi", "all", "-d", "1", "--epochs", "1", "--iters", "2", "-np", "0",
                 "--no-validation"]) == 0
    scan = autoliver_dirs["raw"] / "Dataset001_Context" / "imagesTr" / "phantom_000_0000.nii.gz"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / scan.name).symlink_to(scan)
    assert main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-d", "1", "-c", "2d_liver_roi",
                 "--first-stage", "2d", "--disable-tta"]) == 0
    seg, image = read_image(tmp_path / "out" / "phantom_000.nii.gz"), read_image(scan)
    assert seg.array.shape == image.array.shape and seg.geometry.matches(image.geometry)


def test_perturbed_liver_masks_look_like_a_first_stage():
    """Coarsened, dilated / eroded, notched, spilt over or dropped at the configured rates; never a
    copy when p = 1; spills claim tissue farther out than any dilation (a first stage's overreach)."""
    from autoliver.training.data import perturb_liver

    mask = np.zeros((8, 64, 64), bool)
    mask[1:7, 10:50, 12:54] = True
    rng = np.random.default_rng(0)
    dropped = [not perturb_liver(mask, rng, 0.0, 0.25).any() for _ in range(400)]
    assert 0.2 < np.mean(dropped) < 0.3
    from scipy import ndimage

    outside = ndimage.distance_transform_edt(~mask)
    reach = []
    for _ in range(40):
        m = perturb_liver(mask, rng, 1.0, 0.0)
        assert m.shape == mask.shape and not np.array_equal(m, mask)
        assert 2 * (m & mask).sum() / (m.sum() + mask.sum()) > 0.6  # still the liver, roughly
        reach.append(outside[m].max())
    assert max(reach) > 8 and np.mean(np.array(reach) > 5) > 0.5  # dilation alone reaches 4 voxels
    assert max(outside[perturb_liver(mask, rng, 0.0, 0.0)]) == 0
    lesion = np.zeros_like(mask)
    lesion[2:6, 40:50, 40:50] = True  # at the liver's edge
    cut = [perturb_liver(mask, rng, 1.0, 0.0, lesion)[lesion].mean() < 0.5 for _ in range(200)]
    assert 0.4 < np.mean(cut) < 0.8  # each lesion cut with probability p / 2 (the other steps rarely cut half)
    assert perturb_liver(mask, rng, 0.0, 0.0, lesion)[lesion].all()
    np.testing.assert_array_equal(perturb_liver(mask, rng, 0.0, 0.0), mask)
